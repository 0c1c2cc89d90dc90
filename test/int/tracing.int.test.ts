/**
 * One submit, one trace: every service runs as its own process with tracing on (the
 * standard OTEL_* variables pointing at a local OTLP/HTTP receiver), and the spans they
 * export are decoded with the official OpenTelemetry protobuf definitions. The run (a mode-0
 * step writing audit-first, then a mode-2 step behind the tenant's policy with a leased
 * secret, in a Docker sandbox) must give one trace, continuing the caller's traceparent, that
 * holds every hop — submit, orchestrator checkpoints, policy evaluation, dispatch, worker,
 * lease issue and redemption, the sandbox's tool call, the audit writes — each with the
 * right parent. Derived spans carry the ids derived from the run, and worker log lines
 * written inside a span carry its ids.
 */
import { randomBytes } from 'node:crypto';
import { mkdtempSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, inject, it } from 'vitest';
import type Docker from 'dockerode';
import { createLogger, hopSpanId, migrate, openDatabase, PROJECT_ROOT, putSecret, setPolicy } from '@capstan/kit';
import { INPUT_EVENT_TYPES, Role, type RunEvent, type RunId, type TenantId } from '@capstan/schemas';
import { connect, eventsOf, eventually, issueCreds, provision, spawnService, type Harness, type ServiceProcess } from '../harness/fixtures.js';
import { dockerOrSkip, sandboxImage } from '../harness/docker.js';
import { scratchDatabase } from '../harness/postgres.js';
import { Labels } from '@capstan/sandbox';
import { startOtlpReceiver, type OtlpReceiver, type ReceivedSpan } from '../harness/otlp.js';
import { freePort, scrapeMetrics, total } from '../harness/metrics.js';

const url = inject('natsUrl');
const docker = await dockerOrSkip();
const fixtures = join(PROJECT_ROOT, 'test', 'dist', 'fixtures', 'workflows.js');

const policyFor = (t: TenantId) => `
@id("traced-steps")
permit(principal in Workflow::"${t}/test.traced", action == Action::"run-step", resource) when { resource.level <= 2 };
@id("trace-token")
permit(principal in Workflow::"${t}/test.traced", action == Action::"lease-secret", resource == Secret::"${t}/TRACE_TOKEN");
`;

describe.skipIf(!docker)('tracing: one submit, one trace of every hop', () => {
  let h: Harness;
  let t: TenantId;
  let otlp: OtlpReceiver;
  let scratch: Awaited<ReturnType<typeof scratchDatabase>>;
  const procs: ServiceProcess[] = [];
  const node = `tr${randomBytes(4).toString('hex')}`;
  const ports = { policy: 0, secrets: 0, sandbox: 0 };

  beforeAll(async () => {
    await sandboxImage(docker as Docker);
    h = await connect(url);
    t = await provision(h, 'trace');
    otlp = await startOtlpReceiver();
    scratch = await scratchDatabase('trace');
    const d = await openDatabase({ url: scratch.url, log: createLogger('db', 'silent') });
    await migrate(d);
    await d.close();
    const env = {
      NATS_URL: url,
      CAPSTAN_TENANTS: t,
      CAPSTAN_WORKFLOWS: fixtures,
      CAPSTAN_HANDLERS: fixtures,
      DATABASE_URL: scratch.url,
      OTEL_EXPORTER_OTLP_ENDPOINT: otlp.url,
      OTEL_BSP_SCHEDULE_DELAY: '100',
    };
    for (const k of Object.keys(ports) as (keyof typeof ports)[]) ports[k] = await freePort();
    procs.push(
      spawnService('policy', { ...env, METRICS_PORT: String(ports.policy) }),
      spawnService('secrets-lease', { ...env, SECRETS_MASTER_KEY: randomBytes(32).toString('base64'), METRICS_PORT: String(ports.secrets) }),
      spawnService('sandbox', {
        ...env,
        METRICS_PORT: String(ports.sandbox),
        SANDBOX_NODE: node,
        SANDBOX_ARTIFACTS_DIR: mkdtempSync(join(tmpdir(), 'capstan-trace-')),
        SANDBOX_POOL_MIN: '1',
        SANDBOX_POOL_MAX: '2',
      }),
      spawnService('orchestrator', { ...env, ORCH_POLICY: 'on' }),
      spawnService('worker', { ...env, NATS_CREDS: await issueCreds(url, t, Role.Worker, 'trace-w'), WORKER_LEASES: 'on', AUDIT_DATABASE_URL: scratch.url, LOG_LEVEL: 'debug' }),
      spawnService('projector', { ...env, PROJECTOR_DISCOVERY_MS: '200' }),
    );
    // The services answer once they are up: the policy and secrets services by taking these.
    await eventually('the policy service', async () => setPolicy(await h.nc(t), t, { text: policyFor(t), by: 'sec-team' }).catch(() => undefined), 60_000, 250);
    await eventually(
      'the secrets-lease service',
      async () =>
        putSecret(await h.nc(t), t, 'TRACE_TOKEN', `tok-${randomBytes(8).toString('hex')}`, { by: 'sec-team', signer: (await h.tenant(t)).signer }).catch(() => undefined),
      60_000,
      250,
    );
  }, 240_000);

  afterAll(async () => {
    await Promise.all(procs.map((p) => p.kill('SIGTERM')));
    const left = docker ? await docker.listContainers({ all: true, filters: { label: [`${Labels.Node}=${node}`] } }) : [];
    for (const c of left)
      await (docker as Docker)
        .getContainer(c.Id)
        .remove({ force: true })
        .catch(() => {});
    await otlp?.stop();
    await h?.close();
    await scratch?.drop();
  });

  it('continues the caller’s trace through every hop, each under the right parent', async () => {
    // The caller's own span: the run must continue its trace, under it.
    const traceId = randomBytes(16).toString('hex');
    const callerSpan = randomBytes(8).toString('hex');
    const runId = await h.client.submit(t, 'test.traced', { traceparent: `00-${traceId}-${callerSpan}-01` });
    const diagnose = async (why: string) =>
      new Error(
        `${why}: ${JSON.stringify((await eventsOf(h, t, runId)).map((e) => [e.type, e.data]))}\n${procs.map((p) => `--- ${p.name}\n${p.output().slice(-3000)}`).join('\n')}`,
      );
    const end = await h.client.waitForEnd(t, runId, 90_000).catch(async (e: unknown) => {
      throw await diagnose(String(e));
    });
    const events: RunEvent[] = await eventsOf(h, t, runId as RunId);
    if (end.type !== 'run.completed') throw await diagnose(`run ended ${end.type}`);

    const started = events[0];
    expect(started?.type === 'run.started' && started.data.trace).toEqual({ id: traceId, parent: callerSpan, sampled: true });
    expect(started?.type === 'run.started' && started.data.fingerprint).toMatch(/^[0-9a-f]{64}$/);

    const policyDecided = events.find((e) => e.type === 'policy.decided') as RunEvent;
    const spanOf = (all: readonly ReceivedSpan[], pred: (s: ReceivedSpan) => boolean, what: string) => {
      const found = all.filter(pred);
      if (found.length !== 1) throw new Error(`${found.length} spans for ${what}; got: ${all.map((s) => `${s.service}/${s.name}`).join(', ')}`);
      return found[0] as ReceivedSpan;
    };
    const wanted = [
      'run ',
      'checkpoint ',
      'policy leased#1',
      'policy.ask',
      'policy.decide',
      'step note#1',
      'step leased#1',
      'dispatch ',
      'worker note#1',
      'worker leased#1',
      'audit.intent',
      'secrets.lease',
      'secrets.redeem',
      'sandbox leased#1',
      'tool sh',
      'audit policy.decided',
    ];
    const spans = await eventually(
      'every hop exported',
      () => {
        const mine = otlp.spans().filter((s) => s.traceId === traceId);
        return wanted.every((w) => mine.some((s) => s.name.startsWith(w))) &&
          mine.filter((s) => s.name.startsWith('checkpoint ')).length === events.filter((e) => INPUT_EVENT_TYPES.has(e.type)).length
          ? Promise.resolve(mine)
          : Promise.resolve(undefined);
      },
      60_000,
      200,
    );

    const run = spanOf(spans, (s) => s.name === 'run test.traced@1', 'the run');
    const policyHop = spanOf(spans, (s) => s.name === 'policy leased#1', 'the policy hop');
    const policyAsk = spanOf(spans, (s) => s.name === 'policy.ask', 'the policy question');
    const policyDecide = spanOf(spans, (s) => s.name === 'policy.decide', 'the policy decision');
    const note = spanOf(spans, (s) => s.name === 'step note#1', 'step note');
    const leased = spanOf(spans, (s) => s.name === 'step leased#1', 'step leased');
    const dispatchNote = spanOf(spans, (s) => s.name.startsWith('dispatch ') && s.attributes['capstan.step'] === 'note', 'dispatch of note');
    const dispatchLeased = spanOf(spans, (s) => s.name.startsWith('dispatch ') && s.attributes['capstan.step'] === 'leased', 'dispatch of leased');
    const workerNote = spanOf(spans, (s) => s.name === 'worker note#1', 'worker of note');
    const workerLeased = spanOf(spans, (s) => s.name === 'worker leased#1', 'worker of leased');
    const intent = spanOf(spans, (s) => s.name === 'audit.intent', 'the audit intent');
    const issue = spanOf(spans, (s) => s.name === 'secrets.lease', 'the lease issue');
    const redeem = spanOf(spans, (s) => s.name === 'secrets.redeem', 'the lease redemption');
    const sandbox = spanOf(spans, (s) => s.name === 'sandbox leased#1', 'the sandbox');
    const tool = spanOf(spans, (s) => s.name === 'tool sh', 'the tool call');
    const audit = spanOf(spans, (s) => s.name === 'audit policy.decided', 'the audit write of the policy decision');
    const checkpoint = (seq: number) => spanOf(spans, (s) => s.name.startsWith('checkpoint ') && s.attributes['capstan.seq'] === seq, `the checkpoint of event ${seq}`);

    // Who exported what: each service its own hops.
    const services = new Map<string, number>();
    for (const s of spans) services.set(s.service, (services.get(s.service) ?? 0) + 1);
    process.stdout.write(
      `trace ${traceId}: ${spans.length} spans from ${[...services].map(([k, v]) => `${k} ${v}`).join(', ')}; ${otlp.stats().requests} OTLP requests, ${otlp.stats().bytes} bytes\n`,
    );
    expect(run.service).toBe('capstan-orchestrator');
    expect([policyDecide.service, issue.service, redeem.service, sandbox.service, tool.service, workerLeased.service, audit.service]).toEqual([
      'capstan-policy',
      'capstan-secrets-lease',
      'capstan-secrets-lease',
      'capstan-sandbox',
      'capstan-sandbox',
      'capstan-worker',
      'capstan-projector',
    ]);

    // Parent links: the caller → the run → its hops → each service's hop.
    const parentOf = (child: ReceivedSpan, parent: ReceivedSpan | string, what: string) =>
      expect(child.parentSpanId, what).toBe(typeof parent === 'string' ? parent : parent.spanId);
    parentOf(run, callerSpan, 'run ← caller');
    parentOf(checkpoint(1), run, 'checkpoint run.started ← run');
    parentOf(note, run, 'step note ← run');
    parentOf(dispatchNote, note, 'dispatch ← step note');
    parentOf(workerNote, dispatchNote, 'worker ← dispatch (note)');
    parentOf(intent, workerNote, 'audit intent ← worker');
    parentOf(policyHop, run, 'policy hop ← run');
    parentOf(policyAsk, policyHop, 'policy question ← policy hop');
    parentOf(policyDecide, policyAsk, 'policy decision ← question');
    parentOf(checkpoint(policyDecided.seq), policyHop, 'checkpoint policy.decided ← policy hop');
    parentOf(audit, checkpoint(policyDecided.seq), 'audit write ← checkpoint policy.decided');
    parentOf(leased, run, 'step leased ← run');
    parentOf(dispatchLeased, leased, 'dispatch ← step leased');
    parentOf(workerLeased, dispatchLeased, 'worker ← dispatch (leased)');
    parentOf(issue, workerLeased, 'lease issue ← worker');
    parentOf(sandbox, workerLeased, 'sandbox ← worker');
    parentOf(redeem, sandbox, 'lease redemption ← sandbox');
    parentOf(tool, sandbox, 'tool call ← sandbox');

    // Every span's parent is in the trace, except the run's (the caller's, not exported here).
    const ids = new Set(spans.map((s) => s.spanId));
    expect(spans.filter((s) => !ids.has(s.parentSpanId)).map((s) => s.name)).toEqual([run.name]);
    expect(ids.size, 'no span exported twice').toBe(spans.length);

    // Derived spans have the ids derived from the run, and the record's times.
    expect(run.spanId).toBe(hopSpanId(runId, 'run'));
    expect(leased.spanId).toBe(hopSpanId(runId, 'step:leased:1'));
    expect(run.start).toBe(started?.at);
    expect(run.end).toBe(end.at);
    const scheduled = events.find((e) => e.type === 'step.scheduled' && e.data.step === 'leased') as RunEvent;
    expect(leased.start).toBe(scheduled.at);
    for (const s of spans) expect(s.end, `${s.name} ends after it starts`).toBeGreaterThanOrEqual(s.start);
    expect(tool.start).toBeGreaterThanOrEqual(sandbox.start);
    expect(tool.end).toBeLessThanOrEqual(sandbox.end);
    expect(run.status).toBe(1);

    // The worker's log lines inside the step carry the step's trace and span ids.
    const worker = procs.find((p) => p.name === 'worker') as ServiceProcess;
    const lines = worker
      .output()
      .split('\n')
      .filter((l) => l.includes(runId) || l.includes('noting the run'));
    const noted = lines.map((l) => JSON.parse(l) as Record<string, unknown>).find((l) => l['msg'] === 'noting the run');
    expect(noted?.['traceId']).toBe(traceId);
    expect(noted?.['spanId']).toBe(workerNote.spanId);

    // The same hops, counted: one decision (allow), one lease issued and redeemed, one sandbox claimed.
    const [policyMetrics, secretsMetrics, sandboxMetrics] = await Promise.all([scrapeMetrics(ports.policy), scrapeMetrics(ports.secrets), scrapeMetrics(ports.sandbox)]);
    expect({
      allow: total(policyMetrics, 'capstan_policy_decisions_total', { tenant: t, verdict: 'allow' }),
      decisions: total(policyMetrics, 'capstan_policy_decisions_total', { tenant: t }),
      issued: total(secretsMetrics, 'capstan_leases_total', { tenant: t, event: 'issued' }),
      redeemed: total(secretsMetrics, 'capstan_leases_total', { tenant: t, event: 'redeemed' }),
      denied: total(secretsMetrics, 'capstan_leases_total', { tenant: t, event: 'denied' }),
      claims: total(sandboxMetrics, 'capstan_sandbox_claims_total', { tenant: t }),
    }).toEqual({ allow: 1, decisions: 1, issued: 1, redeemed: 1, denied: 0, claims: 1 });
    expect(sandboxMetrics.some((m) => m.name === 'capstan_sandbox_pool_idle')).toBe(true);
  }, 180_000);
});

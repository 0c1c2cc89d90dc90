/**
 * Policy, approvals, leases and just-in-time credentials end to end, on real servers: the
 * policy service (Cedar), the secrets-lease service (Postgres), the orchestrator with policy
 * checks on, a worker issuing leases, the sandbox service on Docker redeeming them, and the
 * projector. The dev-style demos run under a tenant policy: `demo.approval` waits for a person
 * (approve → continues; deny → fails with the reason; no decision → expires; a second decision
 * is an error), `demo.jit` gets its credential at run time, a step the policy does not allow
 * fails with `policy_denied`, and a tenant with no policy is denied everything. Everything is
 * on the run's record and in the audit log; `capstan replay --recheck-policy` agrees with the
 * record. 50 canary values planted as secrets (leased in mode 2, requested in 3b) appear in no
 * log, no stream, no table and no error, in any encoding.
 */
import { createHash, randomBytes } from 'node:crypto';
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { Writable } from 'node:stream';
import { afterAll, beforeAll, describe, expect, inject, it } from 'vitest';
import type Docker from 'dockerode';
import { sql } from 'drizzle-orm';
import { createRegistry } from '@capstan/actors';
import { createLogger, migrate, newRunId, openDatabase, putSecret, queryRows, setPolicy, type Database, type Logger } from '@capstan/kit';
import { createOrchestrator, loadConfig as orchestratorConfig } from '@capstan/orchestrator';
import { createPolicyService, loadConfig as policyConfig } from '@capstan/policy';
import { createProjector, loadConfig as projectorConfig, type ProjectorApp } from '@capstan/projector';
import { createSecretsLease, loadConfig as secretsConfig, type SecretsLeaseService } from '@capstan/secrets-lease';
import { createWorker, loadConfig as workerConfig } from '@capstan/worker';
import { CapstanError, Streams, type RunEvent, type RunId, type TenantId, Role } from '@capstan/schemas';
import { accessAs, connect, eventsOf, eventually, provision, runCli, type Harness, serviceEnv, issueCreds } from '../harness/fixtures.js';
import { dockerOrSkip } from '../harness/docker.js';
import { scratchDatabase } from '../harness/postgres.js';
import { startSandboxes, type TestSandboxes } from '../harness/sandbox.js';
import { handlers, workflows } from '../fixtures/workflows.js';

const url = inject('natsUrl');
const docker = await dockerOrSkip();
const sha = (s: string) => createHash('sha256').update(s).digest('hex');

/** A logger whose every line is kept, to search for canaries. */
function capturing(name: string): { log: Logger; text: () => string } {
  let text = '';
  const sink = new Writable({
    write(chunk: Buffer, _e, cb) {
      text += chunk.toString();
      cb();
    },
  });
  return { log: createLogger(name, 'debug', sink), text: () => text };
}

const policyFor = (t: TenantId) => `
@id("sandboxed-demos")
permit(principal in Workflow::"${t}/demo.approval", action == Action::"run-step", resource) when { resource.level <= 2 };
@id("canary-run")
permit(principal in Workflow::"${t}/test.canary", action == Action::"run-step", resource) when { resource.level <= 2 };
@id("jit-agent")
permit(principal in Workflow::"${t}/demo.jit", action == Action::"run-step", resource) when { resource.level == 3 };
@id("demo-token-needs-approval")
@approval("operators")
permit(principal in Workflow::"${t}/demo.approval", action == Action::"lease-secret", resource == Secret::"${t}/DEMO_TOKEN");
@id("canaries")
permit(principal in Workflow::"${t}/test.canary", action == Action::"lease-secret", resource);
@id("jit-api-key")
permit(principal in Workflow::"${t}/demo.jit", action == Action::"request-credential", resource == Credential::"${t}/DEMO_API_KEY");
`;

describe.skipIf(!docker)('governed runs: policy, approvals, leases, 3b', () => {
  let h: Harness;
  let t: TenantId;
  let scratch: Awaited<ReturnType<typeof scratchDatabase>>;
  let d: Database;
  let projector: ProjectorApp;
  let sb: TestSandboxes;
  let secrets: SecretsLeaseService;
  const stops: (() => Promise<void>)[] = [];
  const logs: (() => string)[] = [];
  const canaries = Array.from({ length: 48 }, (_, i) => `cnry-${i}-${randomBytes(9).toString('hex')}`);
  const demoToken = `tok-${randomBytes(12).toString('hex')}`;
  const apiKey = `key-${randomBytes(12).toString('hex')}`;

  beforeAll(async () => {
    h = await connect(url);
    t = await provision(h, 'gov');
    scratch = await scratchDatabase('gov');
    d = await openDatabase({ url: scratch.url, log: createLogger('db', 'silent') });
    await migrate(d);
    const env = { NATS_URL: url, CAPSTAN_TENANTS: t, DATABASE_URL: scratch.url };
    const policyLog = capturing('policy');
    // Every tenant's policy questions (the bare tenant below has no policy at all).
    const policy = await createPolicyService(policyConfig({ ...env, ...(await serviceEnv(url, Role.Policy)), CAPSTAN_TENANTS: '' }), policyLog.log);
    await policy.start();
    const secretsLog = capturing('secrets-lease');
    secrets = await createSecretsLease(
      secretsConfig({ ...env, ...(await serviceEnv(url, Role.SecretsLease)), SECRETS_MASTER_KEY: randomBytes(32).toString('base64') }),
      secretsLog.log,
      { database: d },
    );
    await secrets.start();
    sb = await startSandboxes(h, url, docker as Docker, [t], { SANDBOX_SECRETS_FILE: '' });
    const orchLog = capturing('orchestrator');
    const orch = await createOrchestrator(
      orchestratorConfig({ ...env, ...(await serviceEnv(url, Role.Orchestrator)), ORCH_POLICY: 'on', ORCH_APPROVAL_TTL_MS: '4000' }),
      orchLog.log,
      { registry: createRegistry(workflows) },
    );
    await orch.start();
    const workerLog = capturing('worker');
    const worker = await createWorker(
      workerConfig({ ...env, NATS_CREDS: await issueCreds(url, t, Role.Worker, 'gov-w'), WORKER_ADMISSION: 'auto', WORKER_LEASES: 'on' }),
      workerLog.log,
      { handlers },
    );
    await worker.start();
    projector = await createProjector(projectorConfig({ ...env, ...(await serviceEnv(url, Role.Projector)), PROJECTOR_DISCOVERY_MS: '200' }), createLogger('projector', 'silent'), {
      database: d,
    });
    await projector.start();
    stops.push(
      () => projector.stop(),
      () => worker.stop(),
      () => orch.stop(),
      () => sb.stop(),
      () => secrets.stop(),
      () => policy.stop(),
    );
    logs.push(policyLog.text, secretsLog.text, orchLog.text, workerLog.text, () => sb.logs());

    await setPolicy(await h.nc(t), t, { text: policyFor(t), by: 'sec-team', reason: 'demo policy' });
    const admin = { by: 'sec-team', signer: (await h.tenant(t)).signer };
    await putSecret(await h.nc(t), t, 'DEMO_TOKEN', demoToken, admin);
    await putSecret(await h.nc(t), t, 'DEMO_API_KEY', apiKey, admin);
    for (const [i, c] of canaries.entries()) await putSecret(await h.nc(t), t, `CANARY_${i}`, c, admin);
  }, 300_000);

  afterAll(async () => {
    for (const stop of stops) await stop().catch(() => {});
    await h?.close();
    await d?.close();
    await scratch?.drop();
  });

  const types = (events: readonly RunEvent[]) => events.map((e) => e.type);
  async function waitFor(runId: RunId, type: RunEvent['type']): Promise<RunEvent[]> {
    return eventually(
      `${type} on ${runId}`,
      async () => {
        const events = await eventsOf(h, t, runId);
        return events.some((e) => e.type === type) ? events : undefined;
      },
      60_000,
      100,
    );
  }

  it('demo.approval waits for a person; approve → the mode-2 step runs with its leased credential', async () => {
    const runId = await h.client.submit(t, 'demo.approval', { input: {} });
    const waiting = await waitFor(runId, 'approval.requested');
    const decided = waiting.find((e) => e.type === 'policy.decided');
    expect(decided?.type === 'policy.decided' && decided.data).toMatchObject({
      step: 'deliver',
      decision: 'needs-approval',
      version: 1,
      approvers: 'operators',
      policies: expect.arrayContaining(['demo-token-needs-approval']),
    });
    await eventually('the approval projected', async () => {
      const rows = await queryRows<{ status: string; approvers: string; policy_version: number }>(
        d,
        sql`select status, approvers, policy_version from approvals where tenant = ${t} and run_id = ${runId}`,
      );
      return rows[0]?.status === 'waiting' ? rows[0] : undefined;
    });
    await h.client.approve(t, runId, 'deliver', { by: 'ann', reason: 'release day' });
    const end = await h.client.waitForEnd(t, runId, 60_000);
    expect(end.type).toBe('run.completed');
    const events = await eventsOf(h, t, runId);
    expect(types(events)).toEqual(expect.arrayContaining(['policy.requested', 'policy.decided', 'approval.requested', 'approval.decided', 'step.scheduled', 'step.completed']));
    const done = events.find((e) => e.type === 'step.completed' && e.data.step === 'deliver');
    const dest = (done?.type === 'step.completed' ? (done.data.result as { destination: string }).destination : '') ?? '';
    expect(readFileSync(join(fileURLToPath(dest), 'out/delivered.txt'), 'utf8').trim()).toBe(sha(demoToken).slice(0, 12));
    // A second decision is refused, and records nothing.
    const before = events.length;
    await expect(h.client.approve(t, runId, 'deliver', { by: 'bob' })).rejects.toSatisfy(
      (e: unknown) => CapstanError.is(e) && ['approval_not_waiting', 'event_rejected'].includes(e.code),
    );
    expect((await eventsOf(h, t, runId)).length).toBe(before);
  });

  it('deny fails the run with the reason; no decision before the approval expires fails it too', async () => {
    const denied = await h.client.submit(t, 'demo.approval', { input: {} });
    await waitFor(denied, 'approval.requested');
    await h.client.deny(t, denied, 'deliver', { by: 'bob', reason: 'not today' });
    const end = await h.client.waitForEnd(t, denied, 30_000);
    expect(end.type === 'run.failed' && end.data.error).toMatchObject({ code: 'approval_denied' });
    expect(end.type === 'run.failed' && end.data.error.message).toContain('not today');

    const expired = await h.client.submit(t, 'demo.approval', { input: {} });
    const end2 = await h.client.waitForEnd(t, expired, 30_000);
    expect(end2.type === 'run.failed' && end2.data.error.code).toBe('approval_expired');
    await eventually('approval rows', async () => {
      const rows = await queryRows<{ run_id: string; status: string; decided_by: string | null }>(
        d,
        sql`select run_id, status, decided_by from approvals where tenant = ${t} and run_id in (${denied}, ${expired})`,
      );
      const by = new Map(rows.map((r) => [r.run_id, r]));
      return by.get(denied)?.status === 'denied' && by.get(expired)?.status === 'expired' ? rows : undefined;
    });
  });

  it('demo.jit asks for a credential at run time; the policy allows it; the request and answer are on the record', async () => {
    const runId = await h.client.submit(t, 'demo.jit', { input: {} });
    const end = await h.client.waitForEnd(t, runId, 60_000);
    const events = await eventsOf(h, t, runId);
    if (end.type !== 'run.completed') process.stdout.write(`${events.map((e) => `${e.seq} ${e.type} ${JSON.stringify(e.data)}`).join('\n')}\n`);
    expect(end.type).toBe('run.completed');
    const cred = events.find((e) => e.type === 'credential.decided');
    expect(cred?.type === 'credential.decided' && cred.data).toMatchObject({ name: 'DEMO_API_KEY', decision: 'allow', version: 1, policies: ['jit-api-key'] });
    const done = events.find((e) => e.type === 'step.completed');
    const dest = done?.type === 'step.completed' ? (done.data.result as { destination: string }).destination : '';
    expect(readFileSync(join(fileURLToPath(dest), 'out/api-key-digest.txt'), 'utf8').trim()).toBe(sha(apiKey).slice(0, 12));
    // replay --recheck-policy asks the recorded version again and agrees.
    const r = await runCli(['replay', runId, '--tenant', t, '--recheck-policy', '--nats', url], {
      CAPSTAN_WORKFLOWS: join(fileURLToPath(new URL('.', import.meta.url)), '..', 'dist', 'fixtures', 'workflows.js'),
    });
    if (r.code !== 0) process.stdout.write(`${r.out}\n${r.err}\n`);
    expect(r.code).toBe(0);
    expect(r.out).toMatch(/policy at event \d+: credential DEMO_API_KEY → allow again under version 1/);
  });

  it('a step the policy does not allow fails with policy_denied; a tenant with no policy is denied everything', async () => {
    // demo.sandboxed is in no permit of this tenant's policy.
    const runId = await h.client.submit(t, 'demo.sandboxed', { input: {} });
    const end = await h.client.waitForEnd(t, runId, 30_000);
    expect(end.type === 'run.failed' && end.data.error.code).toBe('policy_denied');
    expect(end.type === 'run.failed' && end.data.error.message).toMatch(/policy version 1 \(no policy allows it: default deny\)/);

    const bare = await provision(h, 'gov-bare');
    const orch = await createOrchestrator(
      orchestratorConfig({ ...(await serviceEnv(url, Role.Orchestrator)), CAPSTAN_TENANTS: bare, ORCH_POLICY: 'on' }),
      createLogger('o', 'silent'),
      { registry: createRegistry(workflows) },
    );
    const worker = await createWorker(
      workerConfig({ NATS_URL: url, NATS_CREDS: await issueCreds(url, bare, Role.Worker, 'bare-w'), WORKER_ADMISSION: 'auto' }),
      createLogger('w', 'silent'),
      { handlers },
    );
    await orch.start();
    await worker.start();
    try {
      const run = await h.client.submit(bare, 'demo.sandboxed', { input: {} });
      const e = await h.client.waitForEnd(bare, run, 30_000).catch(async (err: unknown) => {
        process.stdout.write(`${(await eventsOf(h, bare, run)).map((x) => `${x.seq} ${x.type} ${JSON.stringify(x.data)}`).join('\n')}\n`);
        throw err;
      });
      expect(e.type === 'run.failed' && e.data.error.message).toMatch(/policy version 0/);
    } finally {
      await worker.stop();
      await orch.stop();
    }
  });

  it('a lease that waited longer than its TTL for a sandbox is still claimed and redeemed: its TTL counts from the claim; a lapsed one is retryable', async () => {
    const runId = newRunId();
    // Issued by the ledger itself (the run's record is not what this checks), bound to the sandbox service.
    const sandboxKey = (await (await accessAs(url, Role.Sandbox)).tenant(t)).signer?.publicKey;
    const lease = await secrets.ledger.issue(t, { runId, step: 'queued', attempt: 1 }, ['DEMO_TOKEN'], 300, 60_000, sandboxKey);
    // The step waits for a sandbox slot and a cold start, longer than the lease's TTL.
    await new Promise((r) => setTimeout(r, 1000));
    const out = await sb.exec(
      t,
      2,
      { secrets: ['DEMO_TOKEN'], command: ['sh', '-c', 'printf %s "$DEMO_TOKEN" | sha256sum | cut -c1-64'] },
      { runId, step: 'queued', leaseId: lease.leaseId },
    );
    expect(out.error).toBeUndefined();
    expect(sb.stdout(out).trim()).toBe(sha(demoToken));
    const rows = await queryRows<{ kind: string; detail: Record<string, unknown> }>(
      d,
      sql`select kind, detail from audit_log where tenant = ${t} and run_id = ${runId} order by id`,
    );
    expect(rows.map((r) => r.kind)).toEqual(['lease.issued', 'lease.claimed', 'lease.redeemed']);
    expect(rows[1]?.detail).toMatchObject({ leaseId: lease.leaseId, sandbox: `cap-${runId}-queued-1`, keys: ['DEMO_TOKEN'] });
    // Never claimed within its claim window: expired, and retryable (a new attempt gets a new lease).
    const lapsed = await secrets.ledger.issue(t, { runId, step: 'lapsed', attempt: 1 }, ['DEMO_TOKEN'], 300, 300, sandboxKey);
    await new Promise((r) => setTimeout(r, 800));
    const late = await sb.exec(t, 2, { secrets: ['DEMO_TOKEN'], command: ['true'] }, { runId, step: 'lapsed', leaseId: lapsed.leaseId });
    expect(late.error).toMatchObject({ code: 'lease_expired', retryable: true });
  });

  it('audit rows: the policy change, each decision, the approval and every lease by key name', async () => {
    await eventually(
      'audit rows',
      async () => {
        const rows = await queryRows<{ kind: string }>(d, sql`select distinct kind from audit_log where tenant = ${t}`);
        const kinds = new Set(rows.map((r) => r.kind));
        const want = ['policy.decided', 'approval.decided'];
        return want.every((k) => kinds.has(k)) && [...kinds].some((k) => k.startsWith('lease.')) && [...kinds].some((k) => k.startsWith('policy.') && k !== 'policy.decided')
          ? kinds
          : undefined;
      },
      20_000,
    );
  });

  it('50 canaries (48 secrets leased in mode 2, the 3b key, the approval secret) appear nowhere else', async () => {
    const runId = await h.client.submit(t, 'test.canary', { input: {} });
    const end = await h.client.waitForEnd(t, runId, 60_000);
    expect(end.type).toBe('run.completed');
    const all = [...canaries, demoToken, apiKey];
    const forms = (c: string) => [c, Buffer.from(c).toString('base64'), Buffer.from(c).toString('base64url'), Buffer.from(c).toString('hex'), encodeURIComponent(c)];
    const places: [string, string][] = logs.map((text, i) => [`service log ${i}`, text()]);
    const tables = await queryRows<{ table_name: string }>(d, sql`select table_name from information_schema.tables where table_schema = 'public'`);
    for (const { table_name } of tables) places.push([`table ${table_name}`, JSON.stringify(await queryRows(d, sql.raw(`select * from "${table_name}"`)))]);
    const jsm = await h.jsm(t);
    const streams = await jsm.streams.names().next();
    for (const name of streams.filter((n) => n.endsWith(`_${t}`) && n.startsWith(Streams.runs(t).slice(0, 4)))) {
      const info = await jsm.streams.info(name);
      let text = '';
      for (let seq = info.state.first_seq; seq <= info.state.last_seq && seq > 0; seq++) {
        const m = await jsm.streams.getMessage(name, { seq }).catch(() => undefined);
        if (m) text += Buffer.from(m.data).toString('latin1') + JSON.stringify(m.header ? [...m.header.keys()].map((k) => m.header?.get(k)) : []);
      }
      places.push([`stream ${name}`, text]);
    }
    const found = all.flatMap((c) => forms(c).flatMap((f) => places.filter(([, hay]) => hay.includes(f)).map(([where]) => where)));
    process.stdout.write(
      `canaries: ${all.length} planted, searched ${places.length} places (${places.reduce((n, [, s]) => n + s.length, 0)} chars), found ${found.length}${found.length ? `: ${[...new Set(found)].join(', ')}` : ''}\n`,
    );
    expect(found).toEqual([]);
  });
});

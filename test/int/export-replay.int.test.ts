/**
 * Incident review offline: runs recorded on real services (policy checks on, a sandboxed
 * step allowed by one policy version and another denied by the next) are exported with
 * `capstan export`, then replayed by `capstan replay --from` in a fresh process that can
 * reach no NATS, Postgres or service. The offline replay must give the same timeline and
 * the same policy decisions as the online one; a changed byte, a cut file and a file with a
 * record taken out are typed errors naming the first bad record; and a workflow version
 * edited in place shows its divergence as a diff, with the fingerprint that says why.
 */
import { mkdtempSync, readFileSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { gunzipSync } from 'node:zlib';
import { afterAll, beforeAll, describe, expect, inject, it } from 'vitest';
import type Docker from 'dockerode';
import { createRegistry } from '@capstan/actors';
import { createLogger, PROJECT_ROOT, readExport, setPolicy, workflowFingerprint } from '@capstan/kit';
import { createOrchestrator, loadConfig as orchestratorConfig } from '@capstan/orchestrator';
import { createPolicyService, loadConfig as policyConfig } from '@capstan/policy';
import { createWorker, loadConfig as workerConfig } from '@capstan/worker';
import type { ReplayReport } from '@capstan/cli';
import { ErrorCode, Role, type RunId, type TenantId } from '@capstan/schemas';
import { connect, issueCreds, provision, runCli, serviceEnv, type Harness } from '../harness/fixtures.js';
import { dockerOrSkip } from '../harness/docker.js';
import { startSandboxes } from '../harness/sandbox.js';
import { workflows } from '../fixtures/workflows.js';

const url = inject('natsUrl');
const docker = await dockerOrSkip();
const fixtures = join(PROJECT_ROOT, 'test', 'dist', 'fixtures');
const WORKFLOWS = join(fixtures, 'workflows.js');
const silent = createLogger('test', 'silent');
/** A port nothing listens on: the offline replay must not need a server. */
const NO_SERVER = { NATS_URL: 'nats://127.0.0.1:9', DATABASE_URL: 'postgres://nobody@127.0.0.1:9/none', CAPSTAN_API_URL: 'http://127.0.0.1:9' };

const allow = (t: TenantId) => `
@id("sandboxed-work")
permit(principal in Workflow::"${t}/test.sandboxed", action == Action::"run-step", resource) when { resource.level <= 1 };
`;
// The next version allows something else only: test.sandboxed is denied by default.
const denyAll = (t: TenantId) => `
@id("agents-only")
permit(principal in Workflow::"${t}/demo.jit", action == Action::"run-step", resource) when { resource.level == 3 };
`;

describe.skipIf(!docker)('export and offline replay', () => {
  let h: Harness;
  let t: TenantId;
  const stops: (() => Promise<void>)[] = [];
  const dir = mkdtempSync(join(tmpdir(), 'capstan-export-'));
  const pipelines: RunId[] = [];
  let allowed: RunId;
  let denied: RunId;
  let since: string;

  beforeAll(async () => {
    h = await connect(url);
    t = await provision(h, 'review');
    since = new Date(Date.now() - 1000).toISOString();
    const env = { NATS_URL: url, CAPSTAN_TENANTS: t };
    const policy = await createPolicyService(policyConfig({ ...env, ...(await serviceEnv(url, Role.Policy)) }), silent);
    await policy.start();
    const sb = await startSandboxes(h, url, docker as Docker, [t]);
    const orch = await createOrchestrator(orchestratorConfig({ ...env, ...(await serviceEnv(url, Role.Orchestrator)), ORCH_POLICY: 'on' }), silent, {
      registry: createRegistry(workflows),
    });
    await orch.start();
    const worker = await createWorker(
      workerConfig({ ...env, NATS_CREDS: await issueCreds(url, t, Role.Worker, 'review-w'), WORKER_ADMISSION: 'auto', WORKER_LEASES: 'off' }),
      silent,
      { handlers: (await import('../fixtures/workflows.js')).handlers },
    );
    await worker.start();
    stops.push(
      () => worker.stop(),
      () => orch.stop(),
      () => sb.stop(),
      () => policy.stop(),
    );

    await setPolicy(await h.nc(t), t, { text: allow(t), by: 'sec-team' });
    for (let i = 0; i < 12; i++) pipelines.push(await h.client.submit(t, 'demo.pipeline', { input: { customer: `c${i}` } }));
    allowed = await h.client.submit(t, 'test.sandboxed');
    for (const r of [...pipelines, allowed]) await h.client.waitForEnd(t, r, 60_000);
    await setPolicy(await h.nc(t), t, { text: denyAll(t), by: 'sec-team', reason: 'lockdown' });
    denied = await h.client.submit(t, 'test.sandboxed');
    const end = await h.client.waitForEnd(t, denied, 60_000);
    expect(end.type === 'run.failed' && end.data.error.code).toBe(ErrorCode.PolicyDenied);
  }, 240_000);

  afterAll(async () => {
    for (const stop of stops) await stop().catch(() => {});
    await h?.close();
  });

  const capstan = (args: string[], env: Record<string, string> = {}) => runCli(args, { NATS_URL: url, CAPSTAN_WORKFLOWS: WORKFLOWS, ...env });
  const offline = (args: string[], workflowsModule = WORKFLOWS) => runCli(args, { ...NO_SERVER, CAPSTAN_WORKFLOWS: workflowsModule });

  it('replays a window of runs offline with the timeline and policy decisions of the online replay', async () => {
    const file = join(dir, 'window.jsonl');
    const ex = await capstan(['export', '--tenant', t, '--since', since, '--out', file, '--json']);
    expect(ex.code, ex.err).toBe(0);
    const summary = JSON.parse(ex.out) as { runs: number; events: number; policies: number; bytes: number };
    expect(summary.runs).toBe(pipelines.length + 2);
    // Both versions were in force while the runs ran, and both are named by a decision.
    expect(summary.policies).toBe(2);

    const contents = readExport(readFileSync(file));
    expect(contents.workflows.find((w) => w.id === 'demo.pipeline')?.fingerprint).toBe(workflowFingerprint(createRegistry(workflows).get('demo.pipeline', 1)));
    expect(contents.policies.get(2)?.record.text).toBe(denyAll(t));

    const r = await offline(['replay', '--from', file, '--recheck-policy', '--json']);
    expect(r.code, r.err + r.out.slice(0, 2000)).toBe(0);
    const report = JSON.parse(r.out) as ReplayReport;
    expect(report.ok).toBe(true);
    expect(report.runs.length).toBe(pipelines.length + 2);
    expect(report.runs.every((x) => x.fingerprint.same === true)).toBe(true);

    // The same timeline and decisions as replaying each run from the live stream.
    let compared = 0;
    for (const runId of [allowed, denied, ...pipelines.slice(0, 2)]) {
      const online = await capstan(['replay', runId, '--tenant', t, '--recheck-policy', '--json']);
      expect(online.code, online.err).toBe(0);
      const o = JSON.parse(online.out) as { timeline: unknown[]; status: string; policy: unknown[] };
      const mine = report.runs.find((x) => x.runId === runId);
      expect(mine?.timeline).toEqual(o.timeline);
      expect(mine?.status).toBe(o.status);
      expect(mine?.policy).toEqual(o.policy);
      compared++;
    }
    const decisions = report.runs.flatMap((x) => x.policy ?? []);
    expect(decisions.map((d) => [d.version, d.recorded, d.now])).toEqual([
      [1, 'allow', 'allow'],
      [2, 'deny', 'deny'],
    ]);
    process.stdout.write(
      `offline replay of ${report.runs.length} runs (${report.file.events} events, ${contents.policies.size} policy versions); ${compared} compared with the online replay; ${decisions.length} policy decisions re-decided in-process\n`,
    );
  }, 120_000);

  it('exports one run (gzip) and replays it offline', async () => {
    const file = join(dir, 'one.jsonl.gz');
    const ex = await capstan(['export', '--tenant', t, '--run', allowed, '--out', file]);
    expect(ex.code, ex.err).toBe(0);
    expect(readFileSync(file).subarray(0, 2)).toEqual(Buffer.from([0x1f, 0x8b]));
    const r = await offline(['replay', '--from', file, '--recheck-policy']);
    expect(r.code, r.err).toBe(0);
    expect(r.out).toContain('replay reproduces all 1 runs');
    expect(r.out).toContain('allow again under version 1');
  }, 60_000);

  it('names the first bad record of a changed, cut or reordered file', async () => {
    const file = join(dir, 'tamper.jsonl');
    expect((await capstan(['export', '--tenant', t, '--run', pipelines[0] as string, '--run', denied, '--out', file])).code).toBe(0);
    const lines = readFileSync(file, 'utf8').split('\n');
    const at = lines.findIndex((l) => l.includes('"type":"step.completed"'));
    const bad = (text: string, name: string) => {
      const p = join(dir, name);
      writeFileSync(p, text);
      return offline(['replay', '--from', p]);
    };
    const results: Record<string, { code: number | null; err: string }> = {};

    // One event's recorded bytes changed (its result says n: 9), checksums left as they were.
    const record = JSON.parse(lines[at] as string) as { data: string };
    const tamperedData = Buffer.from(Buffer.from(record.data, 'base64').toString('latin1').replace('\xa1n\x01', '\xa1n\x09'), 'latin1').toString('base64');
    expect(tamperedData).not.toBe(record.data);
    results['changed event'] = await bad(lines.map((l, i) => (i === at ? l.replace(record.data, tamperedData) : l)).join('\n'), 'changed.jsonl');
    expect(results['changed event']?.err).toContain(`export_damaged: export file damaged at record ${at + 1}: the record does not match its checksum`);

    // Cut in the middle of a record, and cut at a record's end (the end record lost).
    const text = lines.join('\n');
    const cutAt = text.indexOf(lines[at + 1] as string) + 20;
    results['cut mid-record'] = await bad(text.slice(0, cutAt), 'cut.jsonl');
    expect(results['cut mid-record']?.err).toContain(`damaged at record ${at + 2}: the record is cut short`);
    const whole = lines.filter(Boolean);
    results['end record lost'] = await bad(`${whole.slice(0, -1).join('\n')}\n`, 'noend.jsonl');
    expect(results['end record lost']?.err).toContain(`damaged at record ${whole.length}: the file ends after record ${whole.length - 1} without its end record`);

    // A record taken out: the next one no longer chains.
    results['record removed'] = await bad(`${whole.filter((_, i) => i !== at).join('\n')}\n`, 'removed.jsonl');
    expect(results['record removed']?.err).toContain(`damaged at record ${at + 1}: the record does not match its checksum`);

    // A gzip file cut short.
    const gz = join(dir, 'cut.jsonl.gz');
    expect((await capstan(['export', '--tenant', t, '--since', since, '--out', gz])).code).toBe(0);
    const zipped = readFileSync(gz);
    const plainLines = gunzipSync(zipped).toString('utf8').split('\n').length;
    writeFileSync(gz, zipped.subarray(0, Math.floor(zipped.length / 2)));
    results['gzip cut'] = await offline(['replay', '--from', gz]);
    expect(results['gzip cut']?.err).toMatch(/export_damaged: export file damaged at record \d+/);
    const named = Number(/at record (\d+)/.exec(results['gzip cut']?.err ?? '')?.[1]);
    expect(named).toBeLessThan(plainLines);

    for (const [k, v] of Object.entries(results)) expect(v.code, `${k}: ${v.err}`).toBe(1);
    process.stdout.write(
      `damaged files detected: ${Object.keys(results).length} of 5 (${Object.entries(results)
        .map(([k, v]) => `${k} → ${/record \d+/.exec(v.err)?.[0] ?? '?'}`)
        .join(', ')})\n`,
    );
  }, 90_000);

  it('shows the divergence of a workflow version edited after the runs, with its fingerprint', async () => {
    const file = join(dir, 'edited.jsonl');
    expect((await capstan(['export', '--tenant', t, '--run', pipelines[1] as string, '--out', file])).code).toBe(0);
    const r = await offline(['replay', '--from', file], join(fixtures, 'workflows-changed.js'));
    expect(r.code).toBe(1);
    expect(r.out).toContain(`${pipelines[1]}  demo.pipeline@1: diverges from its record at event`);
    expect(r.out).toMatch(/step\.scheduled: data\.timeoutMs: recorded 30000, replay 45000/);
    expect(r.out).toContain('workflow demo.pipeline@1 here is not the definition the run recorded');
    const json = await offline(['replay', '--from', file, '--json'], join(fixtures, 'workflows-changed.js'));
    const report = JSON.parse(json.out) as ReplayReport;
    expect(report.ok).toBe(false);
    expect(report.runs[0]?.fingerprint.same).toBe(false);
    expect(report.runs[0]?.diff?.length).toBeGreaterThan(0);
  }, 60_000);
});

/**
 * `npm run bench:governed`: what policy decisions and leases add to a run. One workflow with
 * a mode-2 step that leases one secret (`bench.gated`), run end to end (orchestrator, worker,
 * policy service, secrets-lease service, sandbox service on Docker, private nats-server,
 * scratch Postgres), `BENCH_RUNS` (100) runs, 4 at a time, twice:
 *
 *   governed   policy checks on (the step asks, the answer is recorded), a lease issued by
 *              the worker and redeemed by the sandbox
 *   ungoverned policy checks off (an allow recorded without asking), the secret from a file
 *
 * Reports run latency p50/p99 for both, and from the governed runs' own records the time from
 * `policy.requested` to `policy.decided` (ask, answer, record). Section `governed` in
 * docs/benchmarks.md, or `BENCH_OUT`.
 */
import { randomBytes } from 'node:crypto';
import { mkdtempSync, writeFileSync } from 'node:fs';
import { cpus, loadavg, tmpdir, totalmem } from 'node:os';
import { join } from 'node:path';
import Docker from 'dockerode';
import { createRegistry, defineWorkflow } from '@capstan/actors';
import { createClient, createLogger, findNatsServer, migrate, openDatabase, PROJECT_ROOT, putSecret, readRun, setPolicy } from '@capstan/kit';
import { createOrchestrator, loadConfig as orchestratorConfig } from '@capstan/orchestrator';
import { createPolicyService, loadConfig as policyConfig } from '@capstan/policy';
import { createSandboxService, ensureSandboxImage, loadConfig as sandboxConfig } from '@capstan/sandbox';
import { createSecretsLease, loadConfig as secretsConfig } from '@capstan/secrets-lease';
import { createWorker, loadConfig as workerConfig } from '@capstan/worker';
import { parseTenantId, Role, type RunId, type ServiceRole, type TenantId } from '@capstan/schemas';
import { startBenchNats } from './stack.js';
import { scratchDatabase } from '../harness/postgres.js';
import { percentile, writeSection } from './report.js';

const env = process.env;
const RUNS = Number(env['BENCH_RUNS'] ?? 100);
const OUT = env['BENCH_OUT'] ?? join(PROJECT_ROOT, 'docs', 'benchmarks.md');
const say = (s: string) => process.stderr.write(`${s}\n`);
const LOAD = loadavg()[0]?.toFixed(1) ?? '?';
const silent = createLogger('bench', 'silent');
const fmt = (ms: number) => ms.toFixed(1);

const gated = defineWorkflow({
  id: 'bench.gated',
  version: 1,
  steps: [{ name: 'use', mode: 2, timeoutMs: 30_000, sandbox: { command: ['sh', '-c', 'test -n "$BENCH_TOKEN"'], secrets: ['BENCH_TOKEN'] } }],
});
const registry = createRegistry([gated]);

const docker = new Docker();
await docker.ping();
const image = (await ensureSandboxImage(docker, { log: createLogger('bench', 'info', process.stderr) })).ref;
const nats = await startBenchNats({ binary: findNatsServer() });
const scratch = await scratchDatabase('bench_governed');
const db = await openDatabase({ url: scratch.url, log: silent });
await migrate(db);
const artifacts = mkdtempSync(join(tmpdir(), 'capstan-bench-governed-'));
const token = randomBytes(24).toString('base64url');
const secretsFile = join(artifacts, 'secrets.json');

/** Runs the workload on a fresh tenant with the given settings; returns run latencies and the records' policy delays. */
async function workload(label: string, governed: boolean): Promise<{ latency: number[]; policy: number[]; failed: number; seconds: number }> {
  const t: TenantId = parseTenantId(`${label}${process.pid}`);
  await nats.provision(t);
  const admin = await nats.connect(t, Role.Admin);
  const nc = admin.nc;
  const client = await createClient(admin);
  const base = { NATS_URL: nats.url, CAPSTAN_TENANTS: t, DATABASE_URL: scratch.url };
  const as = (role: ServiceRole) => ({ ...base, ...nats.env(role) });
  const stops: (() => Promise<void>)[] = [];
  if (governed) {
    const policy = await createPolicyService(policyConfig(as(Role.Policy)), silent);
    await policy.start();
    const secrets = await createSecretsLease(secretsConfig({ ...as(Role.SecretsLease), SECRETS_MASTER_KEY: randomBytes(32).toString('base64') }), silent, { database: db });
    await secrets.start();
    stops.push(
      () => secrets.stop(),
      () => policy.stop(),
    );
    await setPolicy(nc, t, {
      by: 'bench',
      text: `permit(principal in Workflow::"${t}/bench.gated", action == Action::"run-step", resource) when { resource.level == 2 };\npermit(principal in Workflow::"${t}/bench.gated", action == Action::"lease-secret", resource == Secret::"${t}/BENCH_TOKEN");\n`,
    });
    await putSecret(nc, t, 'BENCH_TOKEN', token, { by: 'bench', signer: admin.signer });
  } else {
    writeFileSync(secretsFile, JSON.stringify({ [t]: { BENCH_TOKEN: token } }));
  }
  const sandboxes = await createSandboxService(
    sandboxConfig({
      ...as(Role.Sandbox),
      SANDBOX_NODE: `${label}${process.pid}`,
      SANDBOX_POOL_MIN: '4',
      SANDBOX_POOL_MAX: '4',
      SANDBOX_ARTIFACTS_DIR: artifacts,
      SANDBOX_SECRETS_FILE: governed ? '' : secretsFile,
    }),
    silent,
    { image },
  );
  await sandboxes.start();
  await sandboxes.ready;
  const orch = await createOrchestrator(orchestratorConfig({ ...as(Role.Orchestrator), ORCH_POLICY: governed ? 'on' : 'off' }), silent, { registry });
  const worker = await createWorker(
    workerConfig({ ...base, NATS_CREDS: await nats.workerCreds(t, `w-${label}`), WORKER_ADMISSION: 'auto', WORKER_LEASES: governed ? 'on' : 'off' }),
    silent,
    { demo: true },
  );
  await orch.start();
  await worker.start();
  stops.unshift(
    () => worker.stop(),
    () => orch.stop(),
    () => sandboxes.stop(),
  );
  await new Promise((r) => setTimeout(r, 3000));

  const latency: number[] = [];
  const ids: RunId[] = [];
  let failed = 0;
  let next = 0;
  const t0 = performance.now();
  await Promise.all(
    Array.from({ length: 4 }, async () => {
      while (next < RUNS) {
        next++;
        const s0 = performance.now();
        const runId = await client.submit(t, 'bench.gated', { input: {} });
        const end = await client.waitForEnd(t, runId, 60_000);
        latency.push(performance.now() - s0);
        ids.push(runId);
        if (end.type !== 'run.completed') failed++;
      }
    }),
  );
  const seconds = (performance.now() - t0) / 1000;
  const policy: number[] = [];
  for (const id of ids) {
    const { events } = await readRun(admin.jsm, t, id);
    const asked = events.find((e) => e.type === 'policy.requested');
    const decided = events.find((e) => e.type === 'policy.decided');
    if (governed && asked && decided) policy.push(decided.at - asked.at);
  }
  for (const stop of stops) await stop();
  say(`${label}: ${RUNS} runs in ${seconds.toFixed(1)} s, p50 ${fmt(percentile(latency, 50))} ms, ${failed} failed`);
  return { latency, policy, failed, seconds };
}

const off = await workload('ungoverned', false);
const on = await workload('governed', true);
await db.close();
await scratch.drop();
await nats.stop();

const md = [
  '## Governed runs: what policy and leases add (`npm run bench:governed`)',
  '',
  `Machine: ${cpus().length} × ${cpus()[0]?.model ?? 'cpu'}, ${Math.round(totalmem() / 2 ** 30)} GiB, node ${process.version}; everything in one process but nats-server, Postgres and the containers. Measured ${new Date().toISOString().slice(0, 16).replace('T', ' ')} UTC, load average ${LOAD} at the start (other work on the machine moves these figures).`,
  `Workload: \`bench.gated\`, one mode-2 step leasing one secret (\`test -n "$BENCH_TOKEN"\` in a warm sandbox), ${RUNS} runs, 4 at a time.`,
  '',
  '| | run latency p50 | p99 | runs/s | failed |',
  '| --- | --- | --- | --- | --- |',
  `| policy checks off, secret from a file | ${fmt(percentile(off.latency, 50))} ms | ${fmt(percentile(off.latency, 99))} ms | ${(RUNS / off.seconds).toFixed(1)} | ${off.failed} |`,
  `| policy asked and recorded, lease issued and redeemed | ${fmt(percentile(on.latency, 50))} ms | ${fmt(percentile(on.latency, 99))} ms | ${(RUNS / on.seconds).toFixed(1)} | ${on.failed} |`,
  '',
  `Added per run at the median: **${fmt(percentile(on.latency, 50) - percentile(off.latency, 50))} ms**. From the governed runs' records, \`policy.requested\` → \`policy.decided\` (ask the service, publish the answer, record it): p50 ${fmt(percentile(on.policy, 50))} ms, p99 ${fmt(percentile(on.policy, 99))} ms (decision clock, whole milliseconds).`,
  'The policy decision alone and lease issue + redeem alone: sections `policy` and `secrets`.',
].join('\n');
writeSection(OUT, 'governed', md);
say(md);

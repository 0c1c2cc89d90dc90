/**
 * `npm run bench:cluster`: W3 (three sequential mode-0 steps per run) on a 3-node JetStream
 * cluster on loopback, the tenant's streams at three replicas (every append acknowledged once
 * two nodes hold it), the orchestrator and a worker as separate processes given all three
 * nodes' URLs.
 *
 *   throughput: 2000 runs, 64 in flight   → completed runs/s
 *   latency:    200 runs, one at a time   → submit-to-completion p50/p99
 *
 * The three nodes share the machine's cores with the services and the load client, so the
 * figures are the replication's cost on one machine, not a cluster of three; take them on a
 * quiet machine. Results go to docs/benchmarks.md (section `cluster`).
 *
 * Options (env): BENCH_RUNS (2000), BENCH_INFLIGHT (64), BENCH_LAT_RUNS (200), BENCH_REPS (3),
 * BENCH_REPLICAS (3), BENCH_OUT.
 */
import { mkdtempSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { connectNats, createLogger, issueCredential, openAuthStore, parseCredentials, PROJECT_ROOT, provisionTenant, startNatsCluster, tenantConnection } from '@capstan/kit';
import { parseTenantId, Role, type TenantPlacement } from '@capstan/schemas';
import { median, percentile, writeSection } from './report.js';
import { createW3Load } from './w3-load.js';
import { spawnService, type ServiceProcess } from '../harness/fixtures.js';

const env = process.env;
const RUNS = Number(env['BENCH_RUNS'] ?? 2000);
const INFLIGHT = Number(env['BENCH_INFLIGHT'] ?? 64);
const LAT_RUNS = Number(env['BENCH_LAT_RUNS'] ?? 200);
const REPS = Number(env['BENCH_REPS'] ?? 3);
const REPLICAS = Number(env['BENCH_REPLICAS'] ?? 3) as TenantPlacement['replicas'];
const OUT = env['BENCH_OUT'] ?? join(PROJECT_ROOT, 'docs', 'benchmarks.md');
const fixtures = join(PROJECT_ROOT, 'test', 'dist', 'fixtures', 'workflows.js');
const quiet = createLogger('bench', 'silent');
const say = (s: string) => process.stderr.write(`${s}\n`);

interface Rep {
  readonly runsPerSec: number;
  readonly p50: number;
  readonly p99: number;
}

async function rep(n: number): Promise<Rep> {
  const dir = mkdtempSync(join(tmpdir(), 'capstan-bench-cluster-'));
  const store = await openAuthStore(join(dir, 'auth'), { create: true });
  // Services spawned through the test harness find their credentials here.
  process.env['CAPSTAN_AUTH_DIR'] = store.dir;
  const cluster = await startNatsCluster({ auth: store, storeDir: join(dir, 'nats') });
  const admin = { servers: cluster.urls, store, log: quiet };
  const t = parseTenantId('bench');
  await provisionTenant(admin, t, { placement: { replicas: REPLICAS, tags: [] } });
  const procs: ServiceProcess[] = [];
  const connect = async (creds: Uint8Array, name: string) =>
    tenantConnection(t, await connectNats(cluster.urls, name, quiet, { credentials: await parseCredentials(creds, name) }));
  const watcher = await connect(await store.adminCreds(t), 'bench-admin');
  const submitter = await connect(await store.mintUser(t, Role.Client, 'bench-client'), 'bench-client');
  try {
    const { creds } = await issueCredential(admin, t, Role.Worker, 'bench-worker');
    const workerCreds = join(dir, 'worker.creds');
    writeFileSync(workerCreds, creds, { mode: 0o600 });
    const svcEnv = { NATS_URL: cluster.urls, CAPSTAN_TENANTS: t, CAPSTAN_WORKFLOWS: fixtures, CAPSTAN_HANDLERS: fixtures, LOG_LEVEL: 'warn' };
    procs.push(spawnService('orchestrator', svcEnv), spawnService('worker', { ...svcEnv, NATS_CREDS: workerCreds, WORKER_CONCURRENCY: '256' }));
    const load = await createW3Load(submitter, watcher.nc, t);
    await new Promise((r) => setTimeout(r, 1000));
    await load.run(Math.min(200, RUNS), Math.min(200, INFLIGHT * 2));

    const start = performance.now();
    await load.run(RUNS, INFLIGHT);
    const runsPerSec = RUNS / ((performance.now() - start) / 1000);
    const lat: number[] = [];
    for (let i = 0; i < LAT_RUNS; i++) {
      const t1 = performance.now();
      await load.runOne();
      lat.push(performance.now() - t1);
    }
    await load.close();
    const r = { runsPerSec, p50: percentile(lat, 50), p99: percentile(lat, 99) };
    say(`  rep ${n}: ${r.runsPerSec.toFixed(0)} runs/s, p50 ${r.p50.toFixed(2)} ms, p99 ${r.p99.toFixed(2)} ms`);
    return r;
  } finally {
    await Promise.all(procs.map((p) => p.kill('SIGTERM')));
    await Promise.allSettled([watcher.nc.close(), submitter.nc.close()]);
    await cluster.stop();
  }
}

async function main(): Promise<void> {
  say(`W3 on a 3-node cluster, tenant streams R${REPLICAS}:`);
  const reps: Rep[] = [];
  for (let i = 1; i <= REPS; i++) reps.push(await rep(i));
  const f = (xs: number[], digits: number) => {
    const g = (x: number) => x.toLocaleString('en-US', { maximumFractionDigits: digits, minimumFractionDigits: digits });
    return `**${g(median(xs))}** (${g(Math.min(...xs))}–${g(Math.max(...xs))})`;
  };
  const md = [
    '## W3 on a 3-node JetStream cluster',
    '',
    `Measured ${new Date().toISOString().slice(0, 16).replace('T', ' ')} UTC with \`npm run bench:cluster\` (\`test/bench/cluster.ts\`), **median (min–max)**`,
    `over ${REPS} repetitions, each on a fresh cluster. Three nats-server nodes on loopback (default sync), the tenant's streams at`,
    `${REPLICAS} replica(s); orchestrator, worker and load client as separate processes on the same machine as the W3 section`,
    `above, so the nodes compete with them for its cores. Throughput: ${RUNS} runs, ${INFLIGHT} in flight; latency: ${LAT_RUNS} runs one at a time.`,
    '',
    '| layout | W3 runs/s | p50 ms | p99 ms |',
    '| --- | --- | --- | --- |',
    `| 3 nodes, R${REPLICAS} | ${f(
      reps.map((r) => r.runsPerSec),
      0,
    )} | ${f(
      reps.map((r) => r.p50),
      2,
    )} | ${f(
      reps.map((r) => r.p99),
      2,
    )} |`,
    '',
  ].join('\n');
  writeSection(OUT, 'cluster', md);
  process.stdout.write(md);
}

await main();

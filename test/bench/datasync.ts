/**
 * `node test/dist/bench/datasync.js`: data-sync pipelines over a generated source (the
 * tests' four tables; `BENCH_SIZES` rows in the largest, default `250000,1000000`), the
 * datasync service as its own process (so its memory is its own), the other services in
 * this process, a private nats-server and the machine's Postgres.
 *
 * Per size, a fresh datasync process runs: a full pipeline run into a Postgres schema, one
 * into JSONL files, then 1 % of the largest table changes and both pipelines run again.
 * Reported: run time and rows/s source → destination, each step's time, the datasync
 * process's peak resident memory (VmHWM; it must not grow with the table), and the
 * incremental run time. Results go to docs/benchmarks.md (section `datasync`), or `BENCH_OUT`.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { cpus, loadavg, tmpdir, totalmem } from 'node:os';
import { join } from 'node:path';
import { createClient, findNatsServer, listEntities, PROJECT_ROOT, type CapstanClient } from '@capstan/kit';
import { parseStepResult, parseTenantId, PIPELINE_WORKFLOW, Role, type DatasyncStepResult, type TenantId } from '@capstan/schemas';
import { scratchDatabase } from '../harness/postgres.js';
import { createSource, defineCatalog, startStack } from '../harness/datasync.js';
import { writeSection } from './report.js';
import { startBenchNats } from './stack.js';

const env = process.env;
const SIZES = (env['BENCH_SIZES'] ?? '250000,1000000').split(',').map(Number);
const OUT = env['BENCH_OUT'] ?? join(PROJECT_ROOT, 'docs', 'benchmarks.md');
const say = (s: string) => process.stderr.write(`${s}\n`);
const load0 = loadavg()[0] ?? 0;

// The bench's own key store (its CAPSTAN_AUTH_DIR is what the test harness's services use).
const nats = await startBenchNats({ binary: findNatsServer() });

function peakKiB(pid: number): number {
  const m = /VmHWM:\s+(\d+) kB/.exec(readFileSync(`/proc/${pid}/status`, 'utf8'));
  return Number(m?.[1] ?? 0);
}

function startDatasync(t: TenantId, databaseUrl: string, filesRoot: string): ChildProcess {
  return spawn(process.execPath, [join(PROJECT_ROOT, 'services', 'datasync', 'dist', 'main.js')], {
    env: { ...process.env, ...nats.env(Role.Datasync), CAPSTAN_TENANTS: t, DATABASE_URL: databaseUrl, DATASYNC_FILES_ROOT: filesRoot, LOG_LEVEL: 'warn' },
    stdio: ['ignore', 'inherit', 'inherit'],
  });
}

async function run(client: CapstanClient, t: TenantId, destination: string): Promise<{ ms: number; steps: Record<string, DatasyncStepResult> }> {
  const t0 = performance.now();
  const runId = await client.submit(t, PIPELINE_WORKFLOW, { input: { connection: 'shop', model: 'shop-model', destination } });
  const end = await client.waitForEnd(t, runId, 30 * 60_000);
  const ms = performance.now() - t0;
  if (end.type !== 'run.completed') throw new Error(`run ${runId} ended ${end.type}: ${JSON.stringify(end.data)}`);
  const steps: Record<string, DatasyncStepResult> = {};
  for (const e of await client.events(t, runId))
    if (e.type === 'step.completed') steps[(e.data as { step: string }).step] = parseStepResult((e.data as { result: unknown }).result);
  return { ms, steps };
}

interface Row {
  size: number;
  total: number;
  full: Record<string, { ms: number; steps: Record<string, DatasyncStepResult> }>;
  incremental: Record<string, { ms: number; steps: Record<string, DatasyncStepResult> }>;
  changed: number;
  peakMiB: number;
}

const rows: Row[] = [];
for (const size of SIZES) {
  const t = parseTenantId(`bench-ds-${randomBytes(3).toString('hex')}`);
  await nats.provision(t);
  const tc = await nats.connect(t, Role.Admin);
  const nc = tc.nc;
  const client = await createClient(tc);
  say(`size ${size}: generating the source …`);
  const [state, src] = await Promise.all([scratchDatabase('bench_dsstate'), createSource('bench_dssrc', size, 'bench-row')]);
  const filesRoot = mkdtempSync(join(tmpdir(), 'capstan-bench-ds-'));
  const stack = await startStack(nats.url, t, state.url, filesRoot, { datasync: false });
  const proc = startDatasync(t, state.url, filesRoot);
  for (let i = 0; ; i++) {
    try {
      await listEntities(nc, t);
      break;
    } catch (e) {
      if (i > 200) throw e;
      await new Promise((r) => setTimeout(r, 100));
    }
  }
  await defineCatalog(nc, t, src, {
    signer: tc.signer,
    password: 'bench',
    destinations: { warehouse: { type: 'postgres', connection: 'shop', schema: 'warehouse' }, lake: { type: 'files', path: 'lake', format: 'jsonl' } },
  });
  const total = Number(
    (
      await src.query<{ n: string }>(
        'select (select count(*) from customers) + (select count(*) from products) + (select count(*) from orders) + (select count(*) from order_items) as n',
      )
    )[0]?.n,
  );
  const row: Row = { size, total, full: {}, incremental: {}, changed: 0, peakMiB: 0 };
  for (const d of ['warehouse', 'lake']) {
    say(`size ${size}: full run into ${d} …`);
    row.full[d] = await run(client, t, d);
  }
  row.changed = Number(
    (
      await src.query<{ n: string }>(
        `with u as (update order_items set qty = qty + 1, updated_at = now() where (order_id * 5 + line) % 100 = 0 returning 1) select count(*) as n from u`,
      )
    )[0]?.n,
  );
  for (const d of ['warehouse', 'lake']) {
    say(`size ${size}: incremental run into ${d} after ${row.changed} changes …`);
    row.incremental[d] = await run(client, t, d);
  }
  row.peakMiB = peakKiB(proc.pid as number) / 1024;
  rows.push(row);
  proc.kill('SIGTERM');
  await new Promise((r) => proc.once('exit', r));
  await stack.stop();
  await src.drop();
  await state.drop();
  rmSync(filesRoot, { recursive: true, force: true });
  await nc.close();
}

await nats.stop();

const s = (ms: number) => (ms / 1000).toFixed(1);
const stepsOf = (r: { steps: Record<string, DatasyncStepResult> }) => ['retrieve', 'refresh', 'build', 'resolve', 'load'].map((k) => s(r.steps[k]?.durationMs ?? NaN)).join(' / ');
const lines: string[] = [];
for (const r of rows) {
  for (const d of ['warehouse', 'lake']) {
    const f = r.full[d] as Row['full'][string];
    const i = r.incremental[d] as Row['full'][string];
    lines.push(
      `| ${r.size.toLocaleString('en')} | ${d === 'warehouse' ? 'Postgres schema' : 'JSONL files'} | ${r.total.toLocaleString('en')} | ${s(f.ms)} s | **${Math.round(r.total / (f.ms / 1000)).toLocaleString('en')}** | ${stepsOf(f)} | ${s(i.ms)} s (${(i.steps['load']?.rows ?? 0).toLocaleString('en')} rows) | ${r.peakMiB.toFixed(0)} MiB |`,
    );
  }
}
const md = [
  '## Data sync: pipeline runs (`node test/dist/bench/datasync.js`)',
  '',
  `Machine: ${cpus().length} × ${cpus()[0]?.model ?? 'cpu'}, ${Math.round(totalmem() / 2 ** 30)} GiB, node ${process.version}, load average ${load0.toFixed(2)} at the start. Source, data-plane state and Postgres destination on the machine's Postgres; nats-server on loopback; the datasync service as its own process, the orchestrator, worker, projector and secrets-lease in the benchmark's.`,
  `Measured ${new Date().toISOString().slice(0, 16).replace('T', ' ')} UTC. The source is the tests' generated one: order items (the largest table), orders (1/5), customers (1/20), products (1/200), with foreign keys; the model maps the four tables to four entities with three associations. A run's time is from submit to its last event, every step and the orchestration between them included. The incremental run follows an update of 1 % of the order items.`,
  '',
  '| items | destination | rows moved | full run | rows/s | retrieve / refresh / build / resolve / load (s) | incremental run after 1 % | datasync peak RSS |',
  '| --- | --- | --- | --- | --- | --- | --- | --- |',
  ...lines,
].join('\n');
writeSection(OUT, 'datasync', md);
say(md);

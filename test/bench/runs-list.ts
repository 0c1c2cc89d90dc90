/**
 * `npm run bench:queries`: `listRuns` at 100,000 runs of one tenant on Postgres.
 *
 * Seeds a scratch database (the machine's Postgres, or `CAPSTAN_TEST_PG`) with 100k runs
 * spread over 30 days, 20 workflows and a realistic status mix, a `customer` search field
 * per run (1,000 customers) plus a `region` one, and 10k runs of a second tenant as
 * neighbours. Then measures, after warm-up, the latency of:
 *
 *   first page        no filter, limit 50
 *   status+workflow   status=failed, workflow=wf-07 (about 1,000 matches)
 *   where             customer=42 (about 100 matches)
 *   page 50           the 50th page of the unfiltered list, through its cursor
 *
 * Target: p95 < 150 ms for each. Results go to docs/benchmarks.md (section `runs-list`).
 *
 * Options (env): BENCH_RUNS (100000), BENCH_ITER (200), BENCH_OUT.
 */
import { cpus, totalmem } from 'node:os';
import { join } from 'node:path';
import { sql } from 'drizzle-orm';
import { listRuns, migrate, openDatabase, PROJECT_ROOT, queryRows, type Database, type ListRunsOptions } from '@capstan/kit';
import type { RunStatus } from '@capstan/schemas';
import { db as schema, parseTenantId, type TenantId } from '@capstan/schemas';
import { scratchDatabase } from '../harness/postgres.js';
import { insertBatched, runIdAt, runRow, type RunInsert } from '../harness/projections.js';
import { percentile, writeSection } from './report.js';

const env = process.env;
const RUNS = Number(env['BENCH_RUNS'] ?? 100_000);
const ITER = Number(env['BENCH_ITER'] ?? 200);
const OUT = env['BENCH_OUT'] ?? join(PROJECT_ROOT, 'docs', 'benchmarks.md');
const TARGET_P95_MS = 150;
const say = (s: string) => process.stderr.write(`${s}\n`);

const T = parseTenantId('bench');
const NEIGHBOUR = parseTenantId('neighbour');
const DAY = 86_400_000;
const NOW = Date.now();

/** Mostly finished runs, as a live system has: 70% completed, 10% failed, and the rest. */
const STATUS_MIX: [RunStatus, number][] = [
  ['completed', 70],
  ['failed', 10],
  ['running', 10],
  ['waiting', 5],
  ['pending', 3],
  ['cancelled', 2],
];

function statusOf(i: number): RunStatus {
  let x = (i * 7919) % 100;
  for (const [s, w] of STATUS_MIX) {
    if (x < w) return s;
    x -= w;
  }
  return 'completed';
}

async function seed(d: Database, t: TenantId, n: number): Promise<void> {
  const batch = 1000;
  for (let i0 = 0; i0 < n; i0 += batch) {
    const runs: RunInsert[] = [];
    const search: (typeof schema.runSearch.$inferInsert)[] = [];
    for (let i = i0; i < Math.min(n, i0 + batch); i++) {
      // Spread over 30 days, newest first by index, with occasional identical start times.
      const startedAt = new Date(NOW - Math.floor((i * 30 * DAY) / n / 10) * 10);
      const status = statusOf(i);
      const done = status === 'completed' || status === 'failed' || status === 'cancelled';
      const run = runRow(t, runIdAt(startedAt), {
        startedAt,
        updatedAt: startedAt,
        status,
        workflow: `wf-${String(i % 20).padStart(2, '0')}`,
        endedAt: done ? new Date(startedAt.getTime() + 500) : null,
        ...(status === 'failed' ? { errorCode: 'step_failed', errorMessage: 'handler threw' } : {}),
      });
      runs.push(run);
      search.push({ tenant: t, key: 'customer', value: String((i * 31) % 1000), runId: run.runId });
      search.push({ tenant: t, key: 'region', value: ['eu', 'us', 'ap'][i % 3] as string, runId: run.runId });
    }
    await insertBatched(d, schema.runs, runs, batch);
    await insertBatched(d, schema.runSearch, search, batch * 2);
    if ((i0 / batch) % 20 === 0) say(`  ${t}: ${Math.min(n, i0 + batch).toLocaleString('en-US')} runs`);
  }
}

interface Result {
  readonly name: string;
  readonly rows: number;
  readonly p50: number;
  readonly p95: number;
  readonly p99: number;
  readonly max: number;
}

async function measure(d: Database, name: string, o: ListRunsOptions): Promise<Result> {
  let rows = 0;
  for (let i = 0; i < 20; i++) rows = (await listRuns(d, T, o)).runs.length;
  const xs: number[] = [];
  for (let i = 0; i < ITER; i++) {
    const t0 = performance.now();
    await listRuns(d, T, o);
    xs.push(performance.now() - t0);
  }
  const r = { name, rows, p50: percentile(xs, 50), p95: percentile(xs, 95), p99: percentile(xs, 99), max: Math.max(...xs) };
  say(`  ${name.padEnd(44)} p50 ${r.p50.toFixed(2)} ms  p95 ${r.p95.toFixed(2)} ms  p99 ${r.p99.toFixed(2)} ms  (${rows} rows)`);
  return r;
}

async function main(): Promise<void> {
  const scratch = await scratchDatabase('bench_runs');
  const d = await openDatabase({ url: scratch.url });
  try {
    await migrate(d);
    say(`seeding ${RUNS.toLocaleString('en-US')} runs (+${Math.round(RUNS / 10).toLocaleString('en-US')} of a neighbour tenant)`);
    const s0 = performance.now();
    await seed(d, T, RUNS);
    await seed(d, NEIGHBOUR, Math.round(RUNS / 10));
    // What autovacuum would have done by the time a projector had written this much.
    await d.db.execute(sql`analyze`);
    const seedS = (performance.now() - s0) / 1000;
    say(`seeded in ${seedS.toFixed(1)} s`);

    // The cursor of page 50: walk 49 pages of 50.
    let cursor: string | undefined;
    for (let p = 1; p < 50; p++) cursor = (await listRuns(d, T, { limit: 50, ...(cursor ? { cursor } : {}) })).nextCursor;
    if (!cursor) throw new Error('fewer than 50 pages of runs');
    const w0 = performance.now();
    let walked: string | undefined;
    for (let p = 1; p < 50; p++) walked = (await listRuns(d, T, { limit: 50, ...(walked ? { cursor: walked } : {}) })).nextCursor;
    const walkMs = performance.now() - w0;

    say(`listRuns, ${ITER} iterations each after 20 warm-up:`);
    const results = [
      await measure(d, 'first page, no filter', { limit: 50 }),
      await measure(d, 'status=failed + workflow=wf-07', { status: 'failed', workflow: 'wf-07', limit: 50 }),
      await measure(d, 'where customer=42', { where: { customer: '42' }, limit: 50 }),
      await measure(d, 'where customer=42 + region=eu', { where: { customer: '42', region: 'eu' }, limit: 50 }),
      await measure(d, 'status=running, last 24 h', { status: 'running', since: new Date(NOW - DAY), limit: 50 }),
      await measure(d, 'page 50 through its cursor', { limit: 50, cursor }),
    ];
    say(`walking pages 1–49 one after the other: ${walkMs.toFixed(0)} ms (${(walkMs / 49).toFixed(2)} ms a page)`);

    const worst = Math.max(...results.map((r) => r.p95));
    const met = worst < TARGET_P95_MS;
    say(met ? `target met: worst p95 ${worst.toFixed(2)} ms < ${TARGET_P95_MS} ms` : `TARGET MISSED: worst p95 ${worst.toFixed(2)} ms >= ${TARGET_P95_MS} ms`);

    const [pgVersion] = await queryRows<{ v: string }>(d, sql`select current_setting('server_version') as v`);
    const counts = await queryRows<{ runs: string; search: string }>(d, sql`select (select count(*) from runs)::text as runs, (select count(*) from run_search)::text as search`);
    const ms = (x: number) => x.toFixed(2);
    const md = [
      `## Query API: \`listRuns\` at ${RUNS.toLocaleString('en-US')} runs`,
      '',
      `Measured ${new Date().toISOString().slice(0, 16).replace('T', ' ')} UTC with \`npm run bench:queries\` (\`test/bench/runs-list.ts\`): ${ITER} calls per`,
      'case after 20 warm-up calls, one at a time, through `listRuns` (drizzle over `pg`, one pooled connection in use), on a',
      `scratch database holding ${Number(counts[0]?.runs).toLocaleString('en-US')} runs (${RUNS.toLocaleString('en-US')} in the measured tenant, the rest a neighbour tenant) and`,
      `${Number(counts[0]?.search).toLocaleString('en-US')} search rows (\`customer\`: 1,000 values; \`region\`: 3), after \`ANALYZE\`. Statuses: 70% completed, 10% failed,`,
      '10% running, 5% waiting, 3% pending, 2% cancelled; 20 workflows; start times over 30 days. Target: p95 < 150 ms.',
      '',
      `| item | value |`,
      '| --- | --- |',
      `| CPU | ${cpus().length} × ${cpus()[0]?.model ?? 'unknown'} |`,
      `| memory | ${Math.round(totalmem() / 2 ** 30)} GiB |`,
      `| Node | ${process.version} |`,
      `| PostgreSQL | ${pgVersion?.v ?? 'unknown'} (same machine, loopback) |`,
      `| seeding | ${seedS.toFixed(1)} s (batched inserts of 1,000 rows) |`,
      '',
      '| case | rows | p50 ms | p95 ms | p99 ms | max ms |',
      '| --- | --- | --- | --- | --- | --- |',
      ...results.map((r) => `| ${r.name} | ${r.rows} | ${ms(r.p50)} | **${ms(r.p95)}** | ${ms(r.p99)} | ${ms(r.max)} |`),
      '',
      `Walking pages 1–49 in turn took ${walkMs.toFixed(0)} ms (${(walkMs / 49).toFixed(2)} ms a page): keyset pages cost the same at any depth.`,
      met ? `Worst p95: ${ms(worst)} ms, within the target.` : `Worst p95: ${ms(worst)} ms, **over the target**.`,
    ].join('\n');
    writeSection(OUT, 'runs-list', md);
    say(`written to ${OUT}`);
    process.stdout.write(`${md}\n`);
    if (!met) process.exitCode = 1;
  } finally {
    await d.close();
    await scratch.drop();
  }
}

await main();

/**
 * What the runs-list benchmarks share: their data (`n` runs of one tenant written straight
 * into the projections, spread over 30 days, 20 workflows, a realistic status mix, and two
 * search fields per run: `customer`, 1,000 values, and `region`, 3) and how a case is timed.
 */
import { cpus, totalmem } from 'node:os';
import { join } from 'node:path';
import { sql } from 'drizzle-orm';
import { PROJECT_ROOT, queryRows, type Database } from '@capstan/kit';
import { db as schema, parseTenantId, type RunStatus, type TenantId } from '@capstan/schemas';
import { insertBatched, runIdAt, runRow, type RunInsert } from '../harness/projections.js';
import { percentile } from './report.js';

const env = process.env;
/** Options (env): BENCH_RUNS (100000), BENCH_ITER (200), BENCH_OUT (docs/benchmarks.md). */
export const RUNS = Number(env['BENCH_RUNS'] ?? 100_000);
export const ITER = Number(env['BENCH_ITER'] ?? 200);
export const OUT = env['BENCH_OUT'] ?? join(PROJECT_ROOT, 'docs', 'benchmarks.md');
export const TARGET_P95_MS = 150;
export const say = (s: string) => process.stderr.write(`${s}\n`);
/** The measured tenant, and a neighbour with a tenth of its runs. */
export const T = parseTenantId('bench');
export const NEIGHBOUR = parseTenantId('neighbour');

export const DAY = 86_400_000;

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

/** Seeds `n` runs of `t`, the newest started at `now`; `say` hears progress. */
export async function seed(d: Database, t: TenantId, n: number, now: number, say: (s: string) => void): Promise<void> {
  const batch = 1000;
  for (let i0 = 0; i0 < n; i0 += batch) {
    const runs: RunInsert[] = [];
    const search: (typeof schema.runSearch.$inferInsert)[] = [];
    for (let i = i0; i < Math.min(n, i0 + batch); i++) {
      // Spread over 30 days, newest first by index, with occasional identical start times.
      const startedAt = new Date(now - Math.floor((i * 30 * DAY) / n / 10) * 10);
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

export interface CaseResult {
  readonly name: string;
  readonly rows: number;
  readonly p50: number;
  readonly p95: number;
  readonly p99: number;
  readonly max: number;
}

/** Times `once` (which answers how many rows it got) `iter` times after 20 warm-up calls, one at a time. */
export async function measureCase(name: string, iter: number, once: () => Promise<number>, say: (s: string) => void): Promise<CaseResult> {
  let rows = 0;
  for (let i = 0; i < 20; i++) rows = await once();
  const xs: number[] = [];
  for (let i = 0; i < iter; i++) {
    const t0 = performance.now();
    await once();
    xs.push(performance.now() - t0);
  }
  const r = { name, rows, p50: percentile(xs, 50), p95: percentile(xs, 95), p99: percentile(xs, 99), max: Math.max(...xs) };
  say(`  ${name.padEnd(44)} p50 ${r.p50.toFixed(2)} ms  p95 ${r.p95.toFixed(2)} ms  p99 ${r.p99.toFixed(2)} ms  (${rows} rows)`);
  return r;
}

/** Seeds both tenants as of `now` and analyses the tables; answers the seconds it took. */
export async function seedBoth(d: Database, now: number): Promise<number> {
  say(`seeding ${RUNS.toLocaleString('en-US')} runs (+${Math.round(RUNS / 10).toLocaleString('en-US')} of a neighbour tenant)`);
  const s0 = performance.now();
  await seed(d, T, RUNS, now, say);
  await seed(d, NEIGHBOUR, Math.round(RUNS / 10), now, say);
  // What autovacuum would have done by the time a projector had written this much.
  await d.db.execute(sql`analyze`);
  const seconds = (performance.now() - s0) / 1000;
  say(`seeded in ${seconds.toFixed(1)} s`);
  return seconds;
}

/** The worst p95 and whether it meets the target, said on stderr. */
export function verdict(results: readonly CaseResult[]): { worst: number; met: boolean } {
  const worst = Math.max(...results.map((r) => r.p95));
  const met = worst < TARGET_P95_MS;
  say(met ? `target met: worst p95 ${worst.toFixed(2)} ms < ${TARGET_P95_MS} ms` : `TARGET MISSED: worst p95 ${worst.toFixed(2)} ms >= ${TARGET_P95_MS} ms`);
  return { worst, met };
}

/** The machine table of a report (markdown lines). */
export async function machineTable(d: Database, seedSeconds: number): Promise<string[]> {
  const [pgVersion] = await queryRows<{ v: string }>(d, sql`select current_setting('server_version') as v`);
  return [
    `| item | value |`,
    '| --- | --- |',
    `| CPU | ${cpus().length} × ${cpus()[0]?.model ?? 'unknown'} |`,
    `| memory | ${Math.round(totalmem() / 2 ** 30)} GiB |`,
    `| Node | ${process.version} |`,
    `| PostgreSQL | ${pgVersion?.v ?? 'unknown'} (same machine, loopback) |`,
    `| seeding | ${seedSeconds.toFixed(1)} s (batched inserts of 1,000 rows) |`,
  ];
}

/** The results table of a report (markdown lines). */
export function resultTable(results: readonly CaseResult[]): string[] {
  const ms = (x: number) => x.toFixed(2);
  return [
    '| case | rows | p50 ms | p95 ms | p99 ms | max ms |',
    '| --- | --- | --- | --- | --- | --- |',
    ...results.map((r) => `| ${r.name} | ${r.rows} | ${ms(r.p50)} | **${ms(r.p95)}** | ${ms(r.p99)} | ${ms(r.max)} |`),
  ];
}

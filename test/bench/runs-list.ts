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
import { sql } from 'drizzle-orm';
import { listRuns, migrate, openDatabase, queryRows, type Database, type ListRunsOptions } from '@capstan/kit';
import { scratchDatabase } from '../harness/postgres.js';
import { DAY, ITER, machineTable, measureCase, OUT, resultTable, RUNS, say, seedBoth, T, verdict, type CaseResult } from './runs-bench.js';
import { writeSection } from './report.js';

const NOW = Date.now();

function measure(d: Database, name: string, o: ListRunsOptions): Promise<CaseResult> {
  return measureCase(name, ITER, async () => (await listRuns(d, T, o)).runs.length, say);
}

async function main(): Promise<void> {
  const scratch = await scratchDatabase('bench_runs');
  const d = await openDatabase({ url: scratch.url });
  try {
    await migrate(d);
    const seedS = await seedBoth(d, NOW);

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

    const { worst, met } = verdict(results);

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
      ...(await machineTable(d, seedS)),
      '',
      ...resultTable(results),
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

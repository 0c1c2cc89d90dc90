/**
 * The console's runs list over HTTP at 100,000 runs of one tenant on Postgres: what an
 * operator's browser waits for, sign-in check, tenant check, query and JSON included.
 *
 * Seeds a scratch database like `runs-list.ts` (100k runs over 30 days, 20 workflows, a
 * realistic status mix, `customer` and `region` search fields; 10k runs of a neighbour
 * tenant), starts the console on a free loopback port, signs in through a one-time link,
 * then measures, after warm-up, `GET /api/tenants/bench/runs` with:
 *
 *   first page        no filter, limit 50
 *   status+workflow   status=failed, workflow=wf-07
 *   where             customer=42, and customer=42 + region=eu
 *   last 24 h         status=running, since=24h
 *   page 50           the 50th page through its cursor
 *
 * and one run's detail page. Target: p95 < 150 ms for each. Results go to
 * docs/benchmarks.md (section `console`).
 *
 * Options (env): BENCH_RUNS (100000), BENCH_ITER (200), BENCH_OUT (see runs-bench.ts).
 */
import { createConsole, loadConfig, type RunsPageResponse } from '@capstan/console';
import { createLogger, migrate, openDatabase } from '@capstan/kit';
import { ConsoleClient } from '../harness/console.js';
import { scratchDatabase } from '../harness/postgres.js';
import { writeSection } from './report.js';
import { ITER, machineTable, measureCase, OUT, resultTable, RUNS, say, seedBoth, T, verdict, type CaseResult } from './runs-bench.js';

function measure(c: ConsoleClient, name: string, path: string): Promise<CaseResult> {
  return measureCase(
    name,
    ITER,
    async () => {
      const r = await c.get<RunsPageResponse>(path);
      if (r.status !== 200) throw new Error(`${path}: ${r.status} ${r.text.slice(0, 200)}`);
      return Array.isArray(r.body.runs) ? r.body.runs.length : 1;
    },
    say,
  );
}

async function main(): Promise<void> {
  const scratch = await scratchDatabase('bench_console');
  const d = await openDatabase({ url: scratch.url });
  const log = createLogger('console', 'warn', process.stderr);
  const app = createConsole({
    db: d,
    config: loadConfig({ CONSOLE_PORT: '0', LOG_LEVEL: 'warn' }, { dev: true }),
    log,
    users: [{ userId: 'bench', orgId: 'bench', role: 'viewer', tenants: [T] }],
  });
  try {
    await migrate(d);
    const seedS = await seedBoth(d, Date.now());

    await app.start();
    const c = new ConsoleClient(app.url);
    await c.signInWithLink(app.signInLink('bench'));
    const runs = `/api/tenants/${T}/runs`;

    // Page 50 at full size; the last full page of a smaller data set.
    const deep = Math.min(50, Math.floor(RUNS / 50));
    let cursor: string | undefined;
    for (let p = 1; p < deep; p++) {
      cursor = (await c.get<RunsPageResponse>(`${runs}?limit=50${cursor ? `&cursor=${cursor}` : ''}`)).body.nextCursor;
      if (!cursor) throw new Error(`the runs list ended before page ${deep}`);
    }
    const first = (await c.get<RunsPageResponse>(`${runs}?limit=1&status=failed`)).body.runs[0]?.runId;
    if (!first) throw new Error('no failed run to open');

    say(`GET ${runs}, ${ITER} requests each after 20 warm-up, one at a time:`);
    const results = [
      await measure(c, 'first page, no filter', `${runs}?limit=50`),
      await measure(c, 'status=failed + workflow=wf-07', `${runs}?status=failed&workflow=wf-07&limit=50`),
      await measure(c, 'where customer=42', `${runs}?where=customer%3D42&limit=50`),
      await measure(c, 'where customer=42 + region=eu', `${runs}?where=customer%3D42&where=region%3Deu&limit=50`),
      await measure(c, 'status=running, since=24h', `${runs}?status=running&since=24h&limit=50`),
      await measure(c, `page ${deep} through its cursor`, `${runs}?limit=50${cursor ? `&cursor=${cursor}` : ''}`),
      await measure(c, 'one run in detail', `${runs}/${first}`),
    ];
    const { worst, met } = verdict(results);
    const md = [
      `## Console: runs list over HTTP at ${RUNS.toLocaleString('en-US')} runs`,
      '',
      `Measured ${new Date().toISOString().slice(0, 16).replace('T', ' ')} UTC with \`node test/dist/bench/console.js\` (\`test/bench/console.ts\`): ${ITER} requests per`,
      'case after 20 warm-up requests, one at a time, from a signed-in session over loopback HTTP to the console (Fastify;',
      'session check, tenant check, `listRuns` over `pg`, JSON), on the data set of the `runs-list` benchmark',
      `(${RUNS.toLocaleString('en-US')} runs in the measured tenant, ${Math.round(RUNS / 10).toLocaleString('en-US')} in a neighbour, two search fields per run, after \`ANALYZE\`). Target: p95 < 150 ms.`,
      '',
      ...(await machineTable(d, seedS)),
      '',
      ...resultTable(results),
      '',
      met ? `Worst p95: ${worst.toFixed(2)} ms, within the target.` : `Worst p95: ${worst.toFixed(2)} ms, **over the target**.`,
    ].join('\n');
    writeSection(OUT, 'console', md);
    say(`written to ${OUT}`);
    process.stdout.write(`${md}\n`);
    if (!met) process.exitCode = 1;
  } finally {
    await app.stop();
    await d.close();
    await scratch.drop();
  }
}

await main();

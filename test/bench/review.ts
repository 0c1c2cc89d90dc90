/**
 * `npm run bench:review`: incident review at scale. 10,000 W3 runs are recorded by an
 * orchestrator and a worker (processes, private nats-server), then:
 *
 *   export:  `capstan export --since …` of all of them, plain and gzip → wall time, file size
 *   replay:  `capstan replay --from <file>` in a fresh process that reaches no server → wall time
 *
 * Both are timed as a person runs them (the CLI as a process, its start included).
 *
 * Options (env): BENCH_REVIEW_RUNS (10000), BENCH_REPS (3), BENCH_OUT.
 */
import { cpus } from 'node:os';
import { statSync, mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { PROJECT_ROOT } from '@capstan/kit';
import { parseTenantId } from '@capstan/schemas';
import { startBenchNats, startW3Services, type W3Services } from './stack.js';
import { runCli } from '../harness/fixtures.js';
import { median, writeSection } from './report.js';

const env = process.env;
const RUNS = Number(env['BENCH_REVIEW_RUNS'] ?? 10_000);
const REPS = Number(env['BENCH_REPS'] ?? 3);
const OUT = env['BENCH_OUT'] ?? join(PROJECT_ROOT, 'docs', 'benchmarks.md');
const fixtures = join(PROJECT_ROOT, 'test', 'dist', 'fixtures', 'workflows.js');
const say = (s: string) => process.stderr.write(`${s}\n`);
const NO_SERVER = { NATS_URL: 'nats://127.0.0.1:9', DATABASE_URL: 'postgres://nobody@127.0.0.1:9/none', CAPSTAN_WORKFLOWS: fixtures };

async function timed(args: string[], e: Record<string, string>, check: (out: string) => void): Promise<number> {
  const t0 = performance.now();
  const r = await runCli(args, e);
  const ms = performance.now() - t0;
  if (r.code !== 0) throw new Error(`capstan ${args.join(' ')} exited ${r.code}: ${r.err.slice(0, 2000)}`);
  check(r.out);
  return ms;
}

async function main(): Promise<void> {
  const bench = await startBenchNats();
  let stack: W3Services | undefined;
  const dir = mkdtempSync(join(tmpdir(), 'capstan-review-'));
  try {
    const t = parseTenantId('bench');
    stack = await startW3Services(bench, t);
    const { load } = stack;
    const since = new Date(Date.now() - 1000).toISOString();
    const t0 = performance.now();
    await load.run(RUNS, 64);
    say(`recorded ${RUNS} W3 runs in ${((performance.now() - t0) / 1000).toFixed(1)} s`);
    await stack.stop();
    stack = undefined;

    // The CLI acts with the bench's key store (CAPSTAN_AUTH_DIR, set by startBenchNats).
    const cli = { NATS_URL: bench.url, CAPSTAN_WORKFLOWS: fixtures };
    const plain = join(dir, 'runs.jsonl');
    const gz = join(dir, 'runs.jsonl.gz');
    const res = { exportMs: [] as number[], exportGzMs: [] as number[], replayMs: [] as number[], replayGzMs: [] as number[] };
    const exported = (out: string) => {
      const s = JSON.parse(out) as { runs: number };
      if (s.runs !== RUNS) throw new Error(`exported ${s.runs} runs, not ${RUNS}`);
    };
    const replayed = (out: string) => {
      if (!out.includes(`replay reproduces all ${RUNS} runs`)) throw new Error(`the replay did not reproduce every run: ${out.slice(-500)}`);
    };
    for (let i = 1; i <= REPS; i++) {
      res.exportMs.push(await timed(['export', '--tenant', t, '--since', since, '--out', plain, '--json'], cli, exported));
      res.exportGzMs.push(await timed(['export', '--tenant', t, '--since', since, '--out', gz, '--json'], cli, exported));
      res.replayMs.push(await timed(['replay', '--from', plain], NO_SERVER, replayed));
      res.replayGzMs.push(await timed(['replay', '--from', gz, '--recheck-policy'], NO_SERVER, replayed));
      say(
        `  rep ${i}: export ${res.exportMs.at(-1)?.toFixed(0)} ms (gzip ${res.exportGzMs.at(-1)?.toFixed(0)} ms), offline replay ${res.replayMs.at(-1)?.toFixed(0)} ms (gzip, policy re-check ${res.replayGzMs.at(-1)?.toFixed(0)} ms)`,
      );
    }
    const size = statSync(plain).size;
    const gzSize = statSync(gz).size;
    const s = (xs: number[]) => `**${(median(xs) / 1000).toFixed(2)} s** (${(Math.min(...xs) / 1000).toFixed(2)}–${(Math.max(...xs) / 1000).toFixed(2)})`;
    const mb = (b: number) => `${(b / 2 ** 20).toFixed(1)} MiB (${Math.round(b / RUNS)} bytes a run)`;
    const md = [
      `## Incident review: export and offline replay of ${RUNS.toLocaleString('en-US')} runs`,
      '',
      `Measured ${new Date().toISOString().slice(0, 16).replace('T', ' ')} UTC with \`npm run bench:review\` (\`test/bench/review.ts\`) on ${cpus().length} cores;`,
      `**median (min–max)** over ${REPS} repetitions. ${RUNS.toLocaleString('en-US')} W3 runs (8 events each) recorded by the orchestrator and a worker, then`,
      '`capstan export --since …` (the CLI as a process, reading the run and policy streams) and `capstan replay --from <file>` in',
      'a process that reaches no server (refolding every run through its workflow version). Wall time includes the CLI starting.',
      '',
      '| step | time | file |',
      '| --- | --- | --- |',
      `| export | ${s(res.exportMs)} | ${mb(size)} |`,
      `| export, gzip | ${s(res.exportGzMs)} | ${mb(gzSize)} |`,
      `| offline replay | ${s(res.replayMs)} | |`,
      `| offline replay of the gzip file, with \`--recheck-policy\` | ${s(res.replayGzMs)} | |`,
      '',
    ].join('\n');
    writeSection(OUT, 'review', md);
    process.stdout.write(md);
  } finally {
    await stack?.stop();
    await bench.stop();
    rmSync(dir, { recursive: true, force: true });
  }
}

await main();

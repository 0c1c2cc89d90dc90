/**
 * `npm run bench:across -- <rev> <rev> …`: W3 on several revisions of Capstan, on one machine in
 * one sitting, so a change's cost is measured against its parent rather than against figures
 * from another day or another CPU. Each revision is checked out in its own git worktree under
 * `.capstan/across/`, installed (`npm ci`) and built once; then the revisions take turns, one
 * W3 repetition each per round (`BENCH_ROUNDS`, default 3), so drift over the sitting spreads
 * evenly. Every revision runs its own `test/dist/bench/w3.js` against the same nats-server
 * binary (this checkout's, or `CAPSTAN_NATS_SERVER`), default sync, one orchestrator.
 *
 * `HEAD` (or `.`) means this checkout as it is, uncommitted changes included.
 *
 * Options (env): BENCH_ROUNDS (3), BENCH_RUNS (6000), BENCH_OUT (docs/benchmarks.md),
 * BENCH_LABELS (comma-separated names for the revisions, in order).
 */
import { execFileSync, spawnSync } from 'node:child_process';
import { existsSync, mkdirSync, mkdtempSync, rmSync } from 'node:fs';
import { cpus, tmpdir } from 'node:os';
import { join } from 'node:path';
import { findNatsServer, PROJECT_ROOT } from '@capstan/kit';
import { median, writeSection } from './report.js';

const env = process.env;
const ROUNDS = Number(env['BENCH_ROUNDS'] ?? 3);
const RUNS = Number(env['BENCH_RUNS'] ?? 6000);
const OUT = env['BENCH_OUT'] ?? join(PROJECT_ROOT, 'docs', 'benchmarks.md');
const say = (s: string) => process.stderr.write(`${s}\n`);

interface Figures {
  readonly runsPerSec: number;
  readonly p50: number;
  readonly p99: number;
  readonly cpuMsPerRun: number;
}

interface Revision {
  readonly rev: string;
  readonly label: string;
  readonly commit: string;
  readonly subject: string;
  readonly dir: string;
  readonly reps: Figures[];
}

const git = (...args: string[]) => execFileSync('git', ['-C', PROJECT_ROOT, ...args], { encoding: 'utf8' }).trim();

/** Every W3 version so far prints one line per repetition in this shape. */
const LINE = /(\d+) runs\/s, p50 ([\d.]+) ms, p99 ([\d.]+) ms, raw \d+ acks\/s, ([\d.]+) CPU-ms\/run/;

function prepare(rev: string, label: string): Revision {
  const here = rev === 'HEAD' || rev === '.';
  const commit = git('rev-parse', '--short', here ? 'HEAD' : rev);
  const subject = git('log', '-1', '--format=%s', commit).slice(0, 90);
  if (here) return { rev, label, commit: `${commit}${git('status', '--porcelain') ? '+' : ''}`, subject, dir: PROJECT_ROOT, reps: [] };
  const dir = join(PROJECT_ROOT, '.capstan', 'across', commit);
  if (!existsSync(join(dir, 'test', 'dist', 'bench', 'w3.js'))) {
    say(`${label}: checking out ${commit} and building it (npm ci, npm run build)`);
    rmSync(dir, { recursive: true, force: true });
    git('worktree', 'prune');
    git('worktree', 'add', '--detach', '--force', dir, commit);
    for (const [cmd, args] of [
      ['npm', ['ci', '--no-audit', '--no-fund']],
      ['npm', ['run', 'build']],
    ] as const) {
      const r = spawnSync(cmd, args, { cwd: dir, stdio: ['ignore', 'ignore', 'inherit'], env: { ...env, CAPSTAN_NATS_SERVER: findNatsServer() } });
      if (r.status !== 0) throw new Error(`${label} (${commit}): ${cmd} ${args.join(' ')} failed with exit code ${r.status}`);
    }
  }
  return { rev, label, commit, subject, dir, reps: [] };
}

function rep(r: Revision): Figures {
  const out = join(mkdtempSync(join(tmpdir(), 'capstan-across-')), 'benchmarks.md');
  const res = spawnSync(process.execPath, [join(r.dir, 'test', 'dist', 'bench', 'w3.js')], {
    cwd: r.dir,
    encoding: 'utf8',
    env: { ...env, BENCH_REPS: '1', BENCH_RUNS: String(RUNS), BENCH_MODES: 'default', BENCH_ORCHS: '1', BENCH_OUT: out, CAPSTAN_NATS_SERVER: findNatsServer() },
  });
  const m = LINE.exec(res.stderr ?? '');
  if (res.status !== 0 || !m) throw new Error(`${r.label} (${r.commit}): W3 failed (exit ${res.status}):\n${(res.stderr ?? '').slice(-2000)}`);
  return { runsPerSec: Number(m[1]), p50: Number(m[2]), p99: Number(m[3]), cpuMsPerRun: Number(m[4]) };
}

function main(): void {
  const revs = process.argv.slice(2);
  if (revs.length < 2) throw new Error('usage: npm run bench:across -- <rev> <rev> [<rev> …] (oldest first; HEAD is this checkout)');
  const labels = (env['BENCH_LABELS'] ?? '').split(',').filter(Boolean);
  mkdirSync(join(PROJECT_ROOT, '.capstan', 'across'), { recursive: true });
  const all = revs.map((rev, i) => prepare(rev, labels[i] ?? rev));
  for (let round = 1; round <= ROUNDS; round++) {
    // Rotate the order each round.
    for (let k = 0; k < all.length; k++) {
      const r = all[(k + round - 1) % all.length] as Revision;
      const f = rep(r);
      r.reps.push(f);
      say(`round ${round}/${ROUNDS} ${r.label} (${r.commit}): ${f.runsPerSec} runs/s, p50 ${f.p50} ms, p99 ${f.p99} ms, ${f.cpuMsPerRun} CPU-ms/run`);
    }
  }
  const first = all[0] as Revision;
  const base = { runs: median(first.reps.map((x) => x.runsPerSec)), cpu: median(first.reps.map((x) => x.cpuMsPerRun)) };
  const pct = (x: number, b: number) => `${x >= b ? '+' : '−'}${Math.abs(((x - b) / b) * 100).toFixed(1)} %`;
  const f = (xs: number[], d = 0) => `**${median(xs).toFixed(d)}** (${Math.min(...xs).toFixed(d)}–${Math.max(...xs).toFixed(d)})`;
  const rows = all.map((r, i) => {
    const runs = r.reps.map((x) => x.runsPerSec);
    const cpu = r.reps.map((x) => x.cpuMsPerRun);
    const prev = all[i - 1];
    const vsPrev = prev ? `${pct(median(runs), median(prev.reps.map((x) => x.runsPerSec)))} / ${pct(median(cpu), median(prev.reps.map((x) => x.cpuMsPerRun)))}` : '–';
    return `| ${r.label} | \`${r.commit}\` ${r.subject} | ${f(runs)} | ${f(
      r.reps.map((x) => x.p50),
      1,
    )} | ${f(cpu, 2)} | ${vsPrev} | ${i === 0 ? '–' : `${pct(median(runs), base.runs)} / ${pct(median(cpu), base.cpu)}`} |`;
  });
  const md = [
    '## W3 across revisions (`npm run bench:across`)',
    '',
    `Measured ${new Date().toISOString().slice(0, 16).replace('T', ' ')} UTC on ${cpus().length} × ${cpus()[0]?.model.split(' ').slice(0, 2).join(' ') ?? 'CPU'}, one sitting:`,
    `each revision built in its own worktree and run with its own W3 (${RUNS} runs, 64 in flight, default sync, one orchestrator), the`,
    `revisions taking turns over ${ROUNDS} rounds; **median (min–max)**. Changes are runs/s and CPU-ms per run.`,
    '',
    '| label | revision | W3 runs/s | p50 ms | CPU-ms per run | against the row above | against the first row |',
    '| --- | --- | --- | --- | --- | --- | --- |',
    ...rows,
  ].join('\n');
  writeSection(OUT, 'w3-across', md);
  say(md);
}

main();

/**
 * `npm run bench:engine`: what the run engines themselves cost per W3 run, in process, with
 * no server: `bench.w3` started and decided through its inputs (each step started and
 * completed) under every engine this build keeps, the engines taking turns over
 * BENCH_ROUNDS (6) rounds of BENCH_RUNS (3000) runs. CPU per run (user + system), median
 * (min–max). The orchestrator does this fold for every run it decides; the rest of a run's
 * cost (NATS, signatures, effects) is not in it. Section `engine` in docs/benchmarks.md, or
 * BENCH_OUT.
 */
import { cpus } from 'node:os';
import { join } from 'node:path';
import { CURRENT_ENGINE, decide, startRun } from '@capstan/actors';
import { PROJECT_ROOT } from '@capstan/kit';
import { makeRunId, type InputEventBody } from '@capstan/schemas';
import { benchW3 } from '../fixtures/workflows.js';
import { median, writeSection } from './report.js';

const env = process.env;
const RUNS = Number(env['BENCH_RUNS'] ?? 3000);
const ROUNDS = Number(env['BENCH_ROUNDS'] ?? 6);
const OUT = env['BENCH_OUT'] ?? join(PROJECT_ROOT, 'docs', 'benchmarks.md');
const ENGINES = Array.from({ length: CURRENT_ENGINE }, (_, i) => i + 1);

/** One W3 run through `engine`: start, then each step started and completed. Returns the decisions made. */
function w3(engine: number, i: number): number {
  const runId = makeRunId(
    1_700_000_000_000 + i,
    Uint8Array.from({ length: 10 }, (_, k) => (i >> (k % 4)) & 255),
  );
  let d = startRun(benchW3, { workflow: benchW3.id, version: benchW3.version, input: {}, engine }, runId);
  let decisions = d.decisions.length;
  let n = 0;
  for (const step of ['s1', 's2', 's3']) {
    const started: InputEventBody = { type: 'step.started', data: { step, attempt: 1, worker: 'w' } } as InputEventBody;
    d = decide(d.state, started);
    decisions += d.decisions.length;
    const completed = { type: 'step.completed', data: { step, attempt: 1, worker: 'w', result: { ok: true, n: ++n }, durationMs: 1 } } as InputEventBody;
    d = decide(d.state, completed);
    decisions += d.decisions.length;
  }
  return decisions;
}

const perRun = new Map<number, number[]>(ENGINES.map((e) => [e, []]));
for (const e of ENGINES) {
  // Every engine decides W3 alike: three steps scheduled with their timers, then the end.
  if (w3(e, 0) !== 7) throw new Error(`engine ${e} made ${w3(e, 0)} decisions for a W3 run, not 7`);
  for (let i = 0; i < 500; i++) w3(e, i);
}
for (let round = 0; round < ROUNDS; round++) {
  for (const e of ENGINES) {
    const before = process.cpuUsage();
    for (let i = 0; i < RUNS; i++) w3(e, i);
    const used = process.cpuUsage(before);
    perRun.get(e)?.push((used.user + used.system) / 1000 / RUNS);
  }
}
const f = (xs: number[]) => `**${median(xs).toFixed(3)}** (${Math.min(...xs).toFixed(3)}–${Math.max(...xs).toFixed(3)})`;
const base = median(perRun.get(1) ?? []);
const md = [
  '## The run engines alone (`npm run bench:engine`)',
  '',
  `Measured ${new Date().toISOString().slice(0, 16).replace('T', ' ')} UTC on ${cpus().length} × ${cpus()[0]?.model.trim() ?? 'unknown CPU'}, node ${process.version}, in process:`,
  `\`bench.w3\` started and decided through its six inputs, ${RUNS} runs per round, ${ROUNDS} rounds, engines taking turns. CPU per run.`,
  '',
  '| engine | CPU-ms per W3 run | against engine 1 |',
  '| --- | --- | --- |',
  ...ENGINES.map((e) => {
    const xs = perRun.get(e) ?? [];
    return `| ${e}${e === CURRENT_ENGINE ? ' (new runs)' : ''} | ${f(xs)} | ${e === 1 ? '–' : `+${(median(xs) - base).toFixed(3)} ms`} |`;
  }),
  '',
].join('\n');
writeSection(OUT, 'engine', md);
process.stdout.write(md);

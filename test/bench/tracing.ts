/**
 * `npm run bench:tracing`: what tracing costs W3 (three sequential mode-0 steps per run, the
 * workload of `npm run bench`). The orchestrator and a worker run as processes against a
 * private nats-server (default sync), with tracing off, on at 100 % sampling and on at 1 %
 * (`OTEL_TRACES_SAMPLER=parentbased_traceidratio`), exporting OTLP/HTTP to a receiver in
 * this process that counts and drops what it gets (a collector's cost is not the services').
 * Modes take turns within each repetition, so drift over the run spreads evenly.
 *
 * Options (env): BENCH_RUNS (2000), BENCH_INFLIGHT (64), BENCH_REPS (3), BENCH_TRACE_MODES
 * (off,100,1), BENCH_OUT, BENCH_PROFILE (a directory for the services' CPU profiles).
 */
import { cpus } from 'node:os';
import { join } from 'node:path';
import { PROJECT_ROOT } from '@capstan/kit';
import { parseTenantId } from '@capstan/schemas';
import { startBenchNats, startW3Services, type W3Services } from './stack.js';
import { startOtlpReceiver } from '../harness/otlp.js';
import { cpuOf, median, writeSection } from './report.js';

const env = process.env;
const RUNS = Number(env['BENCH_RUNS'] ?? 2000);
const INFLIGHT = Number(env['BENCH_INFLIGHT'] ?? 64);
const REPS = Number(env['BENCH_REPS'] ?? 3);
const MODES = (env['BENCH_TRACE_MODES'] ?? 'off,100,1').split(',');
const OUT = env['BENCH_OUT'] ?? join(PROJECT_ROOT, 'docs', 'benchmarks.md');
const say = (s: string) => process.stderr.write(`${s}\n`);

interface Rep {
  runsPerSec: number;
  /** orchestrator + worker + nats-server, per run. */
  cpuMsPerRun: number;
  otlpBytesPerRun: number;
  otlpRequests: number;
}

const label = (mode: string) => (mode === 'off' ? 'tracing off' : `tracing on, ${mode} % sampled`);

async function rep(mode: string): Promise<Rep> {
  const bench = await startBenchNats();
  const server = bench.server;
  const sink = await startOtlpReceiver({ decode: false });
  let stack: W3Services | undefined;
  try {
    const t = parseTenantId('bench');
    const tracing: Record<string, string> =
      mode === 'off' ? {} : { OTEL_EXPORTER_OTLP_ENDPOINT: sink.url, OTEL_TRACES_SAMPLER: 'parentbased_traceidratio', OTEL_TRACES_SAMPLER_ARG: String(Number(mode) / 100) };
    // BENCH_PROFILE=<dir>: CPU profiles of both services (where tracing's cost goes).
    const prof: Record<string, string> = env['BENCH_PROFILE'] ? { CAPSTAN_NODE_ARGS: `--cpu-prof --cpu-prof-dir=${env['BENCH_PROFILE']}` } : {};
    stack = await startW3Services(bench, t, { ...tracing, ...prof });
    const { load, procs } = stack;
    await load.run(200, 200);
    const pids = [server.pid, ...procs.map((p) => p.pid)];
    const beforeEach = pids.map(cpuOf);
    const before = { cpu: beforeEach.reduce((n, c) => n + c, 0), otlp: sink.stats() };
    const start = performance.now();
    await load.run(RUNS, INFLIGHT);
    const elapsed = (performance.now() - start) / 1000;
    // Let the batch span processors flush what they hold (their default delay is 5 s).
    if (mode !== 'off') await new Promise((r) => setTimeout(r, 5500));
    const cpu = pids.reduce((n, p) => n + cpuOf(p), 0) - before.cpu;
    // Where it goes: per process, CPU-ms per run (nats-server, orchestrator, worker).
    const each = pids.map((p, i) => `${['nats-server', 'orchestrator', 'worker'][i]} ${(((cpuOf(p) - (beforeEach[i] ?? 0)) * 1000) / RUNS).toFixed(2)}`);
    const otlp = sink.stats();
    const r = {
      runsPerSec: RUNS / elapsed,
      cpuMsPerRun: (cpu * 1000) / RUNS,
      otlpBytesPerRun: (otlp.bytes - before.otlp.bytes) / RUNS,
      otlpRequests: otlp.requests - before.otlp.requests,
    };
    say(
      `  ${label(mode)}: ${r.runsPerSec.toFixed(0)} runs/s, ${r.cpuMsPerRun.toFixed(2)} CPU-ms/run, ${r.otlpBytesPerRun.toFixed(0)} OTLP bytes/run in ${r.otlpRequests} requests (CPU-ms/run: ${each.join(', ')})`,
    );
    if (mode !== 'off' && Number(mode) >= 50 && r.otlpRequests === 0) throw new Error(`${label(mode)}: no span reached the receiver`);
    if (mode === 'off' && otlp.requests > 0) throw new Error('tracing off, yet spans were exported');
    return r;
  } finally {
    await stack?.stop();
    await sink.stop();
    await bench.stop();
  }
}

async function main(): Promise<void> {
  const results = new Map<string, Rep[]>(MODES.map((m) => [m, []]));
  for (let i = 1; i <= REPS; i++) {
    say(`repetition ${i} of ${REPS}:`);
    // Rotate the order each repetition.
    for (let k = 0; k < MODES.length; k++) {
      const mode = MODES[(k + i - 1) % MODES.length] as string;
      results.get(mode)?.push(await rep(mode));
    }
  }
  const base = median((results.get('off') ?? []).map((r) => r.runsPerSec));
  const f = (xs: number[], d = 0) => `**${median(xs).toFixed(d)}** (${Math.min(...xs).toFixed(d)}–${Math.max(...xs).toFixed(d)})`;
  const rows = MODES.map((m) => {
    const rs = results.get(m) ?? [];
    const runs = rs.map((r) => r.runsPerSec);
    const cost = Number.isFinite(base) && m !== 'off' ? `${(((base - median(runs)) / base) * 100).toFixed(1)} %` : '–';
    return `| ${label(m)} | ${f(runs)} | ${cost} | ${f(
      rs.map((r) => r.cpuMsPerRun),
      2,
    )} | ${f(rs.map((r) => r.otlpBytesPerRun))} |`;
  });
  const md = [
    '## W3 with tracing off and on',
    '',
    `Measured ${new Date().toISOString().slice(0, 16).replace('T', ' ')} UTC with \`npm run bench:tracing\` (\`test/bench/tracing.ts\`) on ${cpus().length} cores;`,
    `**median (min–max)** over ${REPS} repetitions, modes taking turns. Each: ${RUNS} W3 runs, ${INFLIGHT} in flight, after 200 warm-up runs, orchestrator and`,
    'worker as processes on a fresh nats-server (default sync). "On" is `OTEL_EXPORTER_OTLP_ENDPOINT` set (OTLP/HTTP protobuf,',
    'batch span processor defaults) and `OTEL_TRACES_SAMPLER=parentbased_traceidratio`; the receiver is in the load process and',
    'drops what it gets. CPU: orchestrator, worker and nats-server per completed run.',
    '',
    '| mode | W3 runs/s | throughput cost | CPU-ms per run | OTLP bytes per run |',
    '| --- | --- | --- | --- | --- |',
    ...rows,
    '',
  ].join('\n');
  writeSection(OUT, 'tracing', md);
  process.stdout.write(md);
}

await main();

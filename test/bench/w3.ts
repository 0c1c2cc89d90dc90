/**
 * `npm run bench`: workload W3 (a run of three sequential mode-0 steps) against a private
 * nats-server, with the orchestrator and a worker as separate processes, as deployed.
 *
 *   throughput: 2000 runs, 64 in flight        → completed runs/s
 *   latency:    200 runs, one at a time        → submit-to-completion p50/p99
 *   raw:        pipelined acked JetStream publishes (window 256) on the same server
 *
 * Each is measured with the server's default sync and with `sync_interval: always`
 * (fsync before every ack). Results go to docs/benchmarks.md.
 *
 * Options (env): BENCH_RUNS (2000), BENCH_INFLIGHT (64), BENCH_LAT_RUNS (200),
 * BENCH_RAW_MSGS (50000), BENCH_REPS (3), BENCH_MODES (default,always), BENCH_OUT,
 * BENCH_ORCHS (orchestrator instances, a list: `1,2,3` measures each; default 1).
 *
 * The latency runs also say where their time went, hop by hop (see `Hops` in w3-load.ts).
 */
import { execFileSync } from 'node:child_process';
import { writeFileSync } from 'node:fs';
import { cpuOf, median, percentile, writeSection } from './report.js';
import { createW3Load, type Hops } from './w3-load.js';
import { cpus, totalmem } from 'node:os';
import { join } from 'node:path';
import { findNatsServer, PROJECT_ROOT } from '@capstan/kit';
import { parseTenantId, Role } from '@capstan/schemas';
import { startBenchNats } from './stack.js';
import { spawnService, type ServiceProcess } from '../harness/fixtures.js';

const env = process.env;
const RUNS = Number(env['BENCH_RUNS'] ?? 2000);
const INFLIGHT = Number(env['BENCH_INFLIGHT'] ?? 64);
const LAT_RUNS = Number(env['BENCH_LAT_RUNS'] ?? 200);
const RAW_MSGS = Number(env['BENCH_RAW_MSGS'] ?? 50_000);
const REPS = Number(env['BENCH_REPS'] ?? 3);
const MODES = (env['BENCH_MODES'] ?? 'default,always').split(',') as ('default' | 'always')[];
const ORCHS = (env['BENCH_ORCHS'] ?? '1').split(',').map(Number);
const OUT = env['BENCH_OUT'] ?? join(PROJECT_ROOT, 'docs', 'benchmarks.md');
const fixtures = join(PROJECT_ROOT, 'test', 'dist', 'fixtures', 'workflows.js');
const say = (s: string) => process.stderr.write(`${s}\n`);

const fmt = (xs: number[], digits = 0) => {
  const f = (x: number) => x.toLocaleString('en-US', { maximumFractionDigits: digits, minimumFractionDigits: digits });
  return `**${f(median(xs))}** (${f(Math.min(...xs))}–${f(Math.max(...xs))})`;
};

interface Rep {
  runsPerSec: number;
  p50: number;
  p99: number;
  rawPerSec: number;
  cpuMsPerRun: number;
  hops: Hops;
}

async function rep(sync: 'default' | 'always', n: number, orchs: number): Promise<Rep> {
  const bench = await startBenchNats({ sync });
  const server = bench.server;
  const procs: ServiceProcess[] = [];
  const t = parseTenantId('bench');
  await bench.provision(t);
  const { nc, jsm, js } = await bench.connect(t, Role.Admin);
  try {
    // Raw ceiling: pipelined acked publishes, window 256, 200-byte payloads, one subject.
    await jsm.streams.add({ name: 'BENCH_RAW', subjects: ['bench.raw'], storage: 'file' as never });
    const payload = new Uint8Array(200);
    let inflight = 0;
    const t0 = performance.now();
    await new Promise<void>((resolve, reject) => {
      let sent = 0;
      let acked = 0;
      const pump = () => {
        while (inflight < 256 && sent < RAW_MSGS) {
          sent++;
          inflight++;
          js.publish('bench.raw', payload).then(() => {
            inflight--;
            if (++acked === RAW_MSGS) resolve();
            else pump();
          }, reject);
        }
      };
      pump();
    });
    const rawPerSec = RAW_MSGS / ((performance.now() - t0) / 1000);
    await jsm.streams.delete('BENCH_RAW');

    const svcEnv = { NATS_URL: server.url, CAPSTAN_TENANTS: t, CAPSTAN_WORKFLOWS: fixtures, CAPSTAN_HANDLERS: fixtures, LOG_LEVEL: 'warn' };
    procs.push(
      spawnService('worker', { ...svcEnv, NATS_CREDS: await bench.workerCreds(t, 'bench-worker'), WORKER_CONCURRENCY: '256' }),
      ...Array.from({ length: orchs }, (_, i) =>
        spawnService('orchestrator', {
          ...svcEnv,
          ORCH_NAME: `bench-o${i + 1}`,
          ...(env['BENCH_PROFILE'] ? { CAPSTAN_NODE_ARGS: `--cpu-prof --cpu-prof-dir=${env['BENCH_PROFILE']}`, LOG_LEVEL: 'debug' } : {}),
        }),
      ),
    );
    const load = await createW3Load(await bench.connect(t, Role.Client), nc, t);
    // Warm up: services attached, JIT warm.
    await new Promise((r) => setTimeout(r, 1000));
    await load.run(200, 200);

    // Throughput: RUNS runs, INFLIGHT at a time.
    const pids = [server.pid, ...procs.map((p) => p.pid)];
    const cpuStart = pids.map(cpuOf);
    const clientStart = process.cpuUsage();
    const cpu0 = pids.reduce((s, p) => s + cpuOf(p), 0) + process.cpuUsage().user / 1e6 + process.cpuUsage().system / 1e6;
    const start = performance.now();
    await load.run(RUNS, INFLIGHT);
    const elapsed = (performance.now() - start) / 1000;
    const cpu1 = pids.reduce((s, p) => s + cpuOf(p), 0) + process.cpuUsage().user / 1e6 + process.cpuUsage().system / 1e6;
    const runsPerSec = RUNS / elapsed;
    const clientCpu = process.cpuUsage(clientStart);
    const orchCpu = procs.slice(1).reduce((sum, p, i) => sum + cpuOf(p.pid) - (cpuStart[i + 2] ?? 0), 0);
    say(
      `    CPU-ms/run: server ${(((cpuOf(server.pid) - (cpuStart[0] ?? 0)) * 1000) / RUNS).toFixed(2)}, orchestrators ${((orchCpu * 1000) / RUNS).toFixed(2)}, worker ${(((cpuOf(procs[0]?.pid ?? 0) - (cpuStart[1] ?? 0)) * 1000) / RUNS).toFixed(2)}, client ${((clientCpu.user + clientCpu.system) / 1000 / RUNS).toFixed(2)}`,
    );

    // Latency: one at a time, each run's hops from its record.
    const lat: number[] = [];
    const hops: Hops[] = [];
    for (let i = 0; i < LAT_RUNS; i++) {
      const t1 = performance.now();
      const h = await load.runOne(true);
      lat.push(performance.now() - t1);
      if (h) hops.push(h);
    }
    await load.close();
    if (env['BENCH_PROFILE']) writeFileSync(join(env['BENCH_PROFILE'], 'orchestrator.log'), procs[0]?.output() ?? '');
    const hop = (k: keyof Hops) => median(hops.map((h) => h[k]));
    const medHops: Hops = {
      commandIn: hop('commandIn'),
      append: hop('append'),
      stepRoundTrip: hop('stepRoundTrip'),
      handler: hop('handler'),
      readBack: hop('readBack'),
      total: hop('total'),
    };
    const r = { runsPerSec, p50: percentile(lat, 50), p99: percentile(lat, 99), rawPerSec, cpuMsPerRun: ((cpu1 - cpu0) * 1000) / RUNS, hops: medHops };
    say(
      `  ${sync} × ${orchs} orchestrator(s) rep ${n}: ${r.runsPerSec.toFixed(0)} runs/s, p50 ${r.p50.toFixed(2)} ms, p99 ${r.p99.toFixed(2)} ms, raw ${r.rawPerSec.toFixed(0)} acks/s, ${r.cpuMsPerRun.toFixed(2)} CPU-ms/run`,
    );
    say(
      `    hops (median ms): ${Object.entries(medHops)
        .map(([k, v]) => `${k} ${v.toFixed(2)}`)
        .join(', ')}`,
    );
    return r;
  } finally {
    await Promise.all(procs.map((p) => p.kill('SIGTERM')));
    await bench.stop();
  }
}

function machine(): string[] {
  const natsVersion = execFileSync(findNatsServer(), ['--version'], { encoding: 'utf8' }).trim();
  const cpu = cpus()[0]?.model ?? 'unknown';
  return [
    `| CPU | ${cpus().length} × ${cpu} |`,
    `| memory | ${(totalmem() / 2 ** 30).toFixed(0)} GiB |`,
    `| Node | ${process.version} |`,
    `| nats-server | ${natsVersion} (private instance, file storage, loopback) |`,
    `| layout | nats-server, orchestrator, worker and the load client as four processes on the same cores |`,
  ];
}

async function main(): Promise<void> {
  const results: { mode: 'default' | 'always'; orchs: number; reps: Rep[] }[] = [];
  for (const mode of MODES) {
    for (const orchs of ORCHS) {
      say(`W3 with sync=${mode}, ${orchs} orchestrator instance(s):`);
      const reps: Rep[] = [];
      for (let i = 1; i <= REPS; i++) reps.push(await rep(mode, i, orchs));
      results.push({ mode, orchs, reps });
    }
  }
  const rows = results.map(({ mode, orchs, reps: rs }) => {
    const runs = rs.map((r) => r.runsPerSec);
    const raw = rs.map((r) => r.rawPerSec);
    return `| ${mode === 'always' ? '`sync_interval: always` (fsync before every ack)' : 'default sync'} | ${orchs} | ${fmt(runs)} | ${fmt(
      rs.map((r) => r.p50),
      2,
    )} | ${fmt(
      rs.map((r) => r.p99),
      2,
    )} | ${fmt(raw)} | ${(median(runs) / median(raw)).toFixed(3)} | ${fmt(
      rs.map((r) => r.cpuMsPerRun),
      2,
    )} |`;
  });
  const hopRows = results.map(({ mode, orchs, reps: rs }) => {
    const h = (k: keyof Hops) =>
      fmt(
        rs.map((r) => r.hops[k]),
        2,
      );
    return `| ${mode} | ${orchs} | ${h('commandIn')} | ${h('append')} | ${h('stepRoundTrip')} | ${h('handler')} | ${h('readBack')} | ${h('total')} |`;
  });
  const md = [
    '## W3 (core): runs end to end',
    '',
    `Measured ${new Date().toISOString().slice(0, 16).replace('T', ' ')} UTC with \`npm run bench\` (\`test/bench/w3.ts\`). Every figure is`,
    `**median (min–max)** over ${REPS} repetitions; each repetition starts a fresh nats-server.`,
    '',
    '### Machine',
    '',
    '| item | value |',
    '| --- | --- |',
    ...machine(),
    '',
    '### W3: three sequential mode-0 steps per run',
    '',
    `Throughput: ${RUNS} runs with ${INFLIGHT} in flight, after 200 warm-up runs. Latency: ${LAT_RUNS} runs one at a time,`,
    'from the submit publish to the terminal event read back from the run stream. Raw: acknowledged JetStream',
    `publishes of 200 bytes, pipelined with 256 in flight (${RAW_MSGS.toLocaleString('en-US')} messages), on the same server, so W3 can be`,
    'read as a ratio of what the broker does alone. CPU: user+system of all four processes per completed run.',
    '',
    '| server sync | orchestrator instances | W3 runs/s | p50 ms | p99 ms | raw appends/s | runs/s ÷ raw appends/s | CPU-ms per run |',
    '| --- | --- | --- | --- | --- | --- | --- | --- |',
    ...rows,
    '',
    "Where a latency run's time goes (median ms over the latency runs; per decision or per step where it says so):",
    'command in = submit to `run.started` decided; append = decision to events stored; step round trip = work',
    'stored to its result decided (work to the worker, the handler, the result back), of which handler is the handler.',
    '',
    '| sync | instances | command in | append (per decision) | step round trip (per step) | handler | read back | total |',
    '| --- | --- | --- | --- | --- | --- | --- | --- |',
    ...hopRows,
    '',
    'Each W3 run records 8 events (start; per step: scheduled, completed; completion) in 4 decisions. Decisions of',
    'many runs share one atomic batch per tick (one sync: the server syncs every atomic commit), while work items and',
    'worker results go out as pipelined publishes. A run moves 4 commands (submit, 3 results) and 3 work items through JetStream; steps this quick',
    'are never reported started and arm no timeout timer (see docs/ARCHITECTURE.md).',
    '',
  ].join('\n');
  writeSection(OUT, 'w3', md);
  process.stdout.write(md);
}

await main();

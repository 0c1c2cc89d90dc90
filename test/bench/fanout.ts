/**
 * `npm run bench:fanout`: one run fanning out over 1,000 items (200 at a time, each an instant
 * mode-0 step), then a summary step, against a private nats-server with the orchestrator and a
 * worker as separate processes. Reports the time from submit to completion, the events the run
 * recorded, the orchestrator's peak memory (VmHWM) and how long a replay of the run takes.
 *
 * Options (env): BENCH_ITEMS (1000), BENCH_REPS (3), BENCH_OUT.
 */
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { loadavg } from 'node:os';
import { createRegistry, foldRun } from '@capstan/actors';
import { createClient, PROJECT_ROOT, readRun } from '@capstan/kit';
import { parseTenantId, Role } from '@capstan/schemas';
import { spawnService, type ServiceProcess } from '../harness/fixtures.js';
import { median, writeSection } from './report.js';
import { startBenchNats } from './stack.js';
import { workflows } from '../fixtures/workflows.js';

const env = process.env;
const ITEMS = Number(env['BENCH_ITEMS'] ?? 1000);
const REPS = Number(env['BENCH_REPS'] ?? 3);
const OUT = env['BENCH_OUT'] ?? join(PROJECT_ROOT, 'docs', 'benchmarks.md');
const fixtures = join(PROJECT_ROOT, 'test', 'dist', 'fixtures', 'workflows.js');
const say = (s: string) => process.stderr.write(`${s}\n`);

/** Peak resident memory of a process, in MiB (VmHWM). */
function peakMiB(pid: number): number {
  const m = /VmHWM:\s+(\d+) kB/.exec(readFileSync(`/proc/${pid}/status`, 'utf8'));
  return m ? Number(m[1]) / 1024 : NaN;
}

interface Rep {
  seconds: number;
  events: number;
  peakMiB: number;
  replayMs: number;
}

async function rep(): Promise<Rep> {
  const bench = await startBenchNats();
  const procs: ServiceProcess[] = [];
  try {
    const t = parseTenantId('bench');
    await bench.provision(t);
    const admin = await bench.connect(t, Role.Admin);
    const jsm = admin.jsm;
    const e = { NATS_URL: bench.url, CAPSTAN_TENANTS: t, CAPSTAN_WORKFLOWS: fixtures, CAPSTAN_HANDLERS: fixtures, ORCH_DISCOVERY_MS: '200' };
    const orch = spawnService('orchestrator', { ...e, ORCH_NAME: 'o1' });
    procs.push(orch, spawnService('worker', { ...e, NATS_CREDS: await bench.workerCreds(t, 'bench-worker'), WORKER_CONCURRENCY: '256' }));
    await new Promise((r) => setTimeout(r, 1500));
    const client = await createClient(admin);
    const t0 = performance.now();
    const runId = await client.submit(t, 'bench.fanout', { input: { items: ITEMS } });
    const end = await client.waitForEnd(t, runId, 600_000);
    const seconds = (performance.now() - t0) / 1000;
    if (end.type !== 'run.completed') throw new Error(`the fan-out ended ${end.type}`);
    const { events } = await readRun(jsm, t, runId);
    const r0 = performance.now();
    foldRun(createRegistry(workflows), events);
    return { seconds, events: events.length, peakMiB: peakMiB(orch.pid), replayMs: performance.now() - r0 };
  } finally {
    await Promise.all(procs.map((p) => p.kill('SIGTERM')));
    await bench.stop();
  }
}

const reps: Rep[] = [];
for (let i = 0; i < REPS; i++) {
  const r = await rep();
  say(`rep ${i + 1}: ${r.seconds.toFixed(2)} s, ${r.events} events, orchestrator peak ${r.peakMiB.toFixed(0)} MiB, replay ${r.replayMs.toFixed(0)} ms`);
  reps.push(r);
}
const load = loadavg()
  .map((x) => x.toFixed(2))
  .join(' ');
const body = `## Fan-out of ${ITEMS.toLocaleString('en-US')} items (engine 2)

One run: a fan-out over ${ITEMS} instant mode-0 items, 200 at a time, then a summary step;
orchestrator and worker as processes, default sync. Median of ${REPS} (min–max). Load average
at the end: ${load}.

| measure | value |
| --- | --- |
| submit to completion | **${median(reps.map((r) => r.seconds)).toFixed(2)} s** (${Math.min(...reps.map((r) => r.seconds)).toFixed(2)}–${Math.max(...reps.map((r) => r.seconds)).toFixed(2)}) |
| events recorded by the run | ${median(reps.map((r) => r.events))} |
| orchestrator peak memory (VmHWM) | ${median(reps.map((r) => r.peakMiB)).toFixed(0)} MiB |
| replay of the run (fold, in process) | ${median(reps.map((r) => r.replayMs)).toFixed(0)} ms |
`;
writeSection(OUT, 'fanout', body);
say(body);
process.exit(0);

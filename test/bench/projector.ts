/**
 * `npm run bench:projector`: the projector against a private nats-server and the machine's
 * Postgres (a scratch database; `CAPSTAN_TEST_PG` to point elsewhere).
 *
 *   live W3:   the W3 load (2000 runs, 64 in flight; orchestrator, worker and projector as
 *              processes) with the lag sampled every 50 ms: stream last seq − checkpoint,
 *              in events and (to the sampling period) in milliseconds
 *   catch-up:  100,000 events already in the stream, a fresh database, a projector process
 *              with each batch size: events applied per second
 *   rebuild:   `rebuildProjections` over the same 100,000 events, and `verifyProjections`
 *
 * The 100,000 events are 12,500 synthetic W3 runs (8 valid events each, as the orchestrator
 * records them) appended with `appendBatch`. Results go to docs/benchmarks.md (`projector`).
 *
 * Options (env): BENCH_RUNS (2000), BENCH_INFLIGHT (64), BENCH_EVENTS (100000),
 * BENCH_BATCHES (64,256,1024), BENCH_OUT.
 */
import { cpus } from 'node:os';
import { join } from 'node:path';
import type { JetStreamManager } from '@nats-io/jetstream';
import { appendBatch, createLogger, migrate, newRunId, openDatabase, PROJECT_ROOT, readCheckpoints, type AppendGroup, type Database, type NatsConnection } from '@capstan/kit';
import { EVENT_ENVELOPE_VERSION, parseTenantId, Role, Streams, type RunEvent, type RunEventBody, type RunId, type TenantId } from '@capstan/schemas';
import { rebuildProjections, verifyProjections } from '@capstan/projector';
import { spawnService, type ServiceProcess } from '../harness/fixtures.js';
import { scratchDatabase } from '../harness/postgres.js';
import { cpuOf, percentile, writeSection } from './report.js';
import { createW3Load } from './w3-load.js';
import { startBenchNats, type BenchNats } from './stack.js';

const env = process.env;
const RUNS = Number(env['BENCH_RUNS'] ?? 2000);
const INFLIGHT = Number(env['BENCH_INFLIGHT'] ?? 64);
const EVENTS = Number(env['BENCH_EVENTS'] ?? 100_000);
const BATCHES = (env['BENCH_BATCHES'] ?? '64,256,1024').split(',').map(Number);
const OUT = env['BENCH_OUT'] ?? join(PROJECT_ROOT, 'docs', 'benchmarks.md');
const fixtures = join(PROJECT_ROOT, 'test', 'dist', 'fixtures', 'workflows.js');
const log = createLogger('bench', 'warn', process.stderr);
const say = (s: string) => process.stderr.write(`${s}\n`);
const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

const f0 = (x: number) => x.toLocaleString('en-US', { maximumFractionDigits: 0 });

async function checkpointOf(d: Database, t: TenantId): Promise<number> {
  return (await readCheckpoints(d, [t])).get(t) ?? 0;
}

async function lastSeqOf(jsm: JetStreamManager, t: TenantId): Promise<number> {
  return (await jsm.streams.info(Streams.runs(t))).state.last_seq;
}

interface Sample {
  readonly t: number;
  readonly last: number;
  readonly checkpoint: number;
}

/** Samples stream last seq and checkpoint every `everyMs` until stopped. */
function sampleLag(jsm: JetStreamManager, d: Database, t: TenantId, everyMs = 50) {
  const samples: Sample[] = [];
  let running = true;
  const done = (async () => {
    while (running) {
      const t0 = performance.now();
      const [last, checkpoint] = await Promise.all([lastSeqOf(jsm, t), checkpointOf(d, t)]);
      samples.push({ t: t0, last, checkpoint });
      await sleep(Math.max(0, everyMs - (performance.now() - t0)));
    }
  })();
  return {
    samples,
    async stop() {
      running = false;
      await done;
    },
  };
}

/**
 * Lag in milliseconds at each sample: how long the oldest unapplied event had been in the
 * stream, i.e. since the first sample whose stream already went past the checkpoint.
 */
function lagMs(samples: readonly Sample[]): number[] {
  return samples.map((s) => {
    if (s.checkpoint >= s.last) return 0;
    const since = samples.find((x) => x.last > s.checkpoint);
    return since ? s.t - since.t : 0;
  });
}

async function waitCaughtUp(jsm: JetStreamManager, d: Database, t: TenantId, timeoutMs = 600_000): Promise<number> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const [last, checkpoint] = await Promise.all([lastSeqOf(jsm, t), checkpointOf(d, t)]);
    if (checkpoint >= last) return performance.now();
    if (Date.now() > deadline) throw new Error(`projector still ${last - checkpoint} events behind after ${timeoutMs} ms`);
    await sleep(20);
  }
}

interface Live {
  runsPerSec: number;
  eventsAppendedPerSec: number;
  eventsAppliedPerSec: number;
  events: number;
  lagEvents: { p50: number; p99: number; max: number };
  lagMs: { p50: number; p99: number; max: number };
  catchUpMs: number;
  projectorCpuUsPerEvent: number;
  samples: number;
}

async function live(bench: BenchNats): Promise<Live> {
  const url = bench.url;
  const t = parseTenantId('bench');
  await bench.provision(t);
  const { nc, jsm } = await bench.connect(t, Role.Admin);
  const scratch = await scratchDatabase('benchproj');
  const d = await openDatabase({ url: scratch.url, log });
  const procs: ServiceProcess[] = [];
  try {
    const svcEnv = { NATS_URL: url, CAPSTAN_TENANTS: t, CAPSTAN_WORKFLOWS: fixtures, CAPSTAN_HANDLERS: fixtures, LOG_LEVEL: 'warn' };
    const projector = spawnService('projector', { ...svcEnv, DATABASE_URL: scratch.url, PROJECTOR_BATCH: '256' });
    procs.push(
      spawnService('orchestrator', svcEnv),
      spawnService('worker', { ...svcEnv, NATS_CREDS: await bench.workerCreds(t, 'bench-worker'), WORKER_CONCURRENCY: '256' }),
      projector,
    );
    const load = await createW3Load(await bench.connect(t, Role.Client), nc, t);
    // Warm up: services attached (the projector has migrated), JIT warm.
    await sleep(1500);
    await load.run(200, 200);
    await waitCaughtUp(jsm, d, t);

    const startSeq = await lastSeqOf(jsm, t);
    const cpu0 = cpuOf(projector.pid);
    const sampler = sampleLag(jsm, d, t);
    const start = performance.now();
    await load.run(RUNS, INFLIGHT);
    const loadEnd = performance.now();
    const caughtUp = await waitCaughtUp(jsm, d, t);
    await sampler.stop();
    await load.close();
    const events = (await lastSeqOf(jsm, t)) - startSeq;
    const lagE = sampler.samples.map((s) => Math.max(0, s.last - s.checkpoint));
    const lagT = lagMs(sampler.samples);
    const r: Live = {
      runsPerSec: RUNS / ((loadEnd - start) / 1000),
      eventsAppendedPerSec: events / ((loadEnd - start) / 1000),
      eventsAppliedPerSec: events / ((caughtUp - start) / 1000),
      events,
      lagEvents: { p50: percentile(lagE, 50), p99: percentile(lagE, 99), max: Math.max(...lagE) },
      lagMs: { p50: percentile(lagT, 50), p99: percentile(lagT, 99), max: Math.max(...lagT) },
      catchUpMs: caughtUp - loadEnd,
      projectorCpuUsPerEvent: ((cpuOf(projector.pid) - cpu0) * 1e6) / events,
      samples: sampler.samples.length,
    };
    say(
      `live W3: ${r.runsPerSec.toFixed(0)} runs/s, ${r.eventsAppendedPerSec.toFixed(0)} events/s appended, ${r.eventsAppliedPerSec.toFixed(0)} applied; ` +
        `lag p50 ${r.lagEvents.p50} / p99 ${r.lagEvents.p99} / max ${r.lagEvents.max} events, p99 ${r.lagMs.p99.toFixed(0)} ms; caught up ${r.catchUpMs.toFixed(0)} ms after the last run; ` +
        `${r.projectorCpuUsPerEvent.toFixed(0)} µs projector CPU per event (${r.samples} samples)`,
    );
    return r;
  } finally {
    await Promise.all(procs.map((p) => p.kill('SIGTERM')));
    await d.close();
    await scratch.drop();
  }
}

/** Appends `EVENTS` valid events as synthetic W3 runs (8 events each), 100 runs per atomic batch. */
async function generate(nc: NatsConnection, t: TenantId): Promise<{ runs: number; events: number; ms: number }> {
  const t0 = performance.now();
  const runs = Math.ceil(EVENTS / 8);
  const at0 = Date.now();
  let made = 0;
  const pending: Promise<unknown>[] = [];
  for (let i = 0; i < runs; i += 100) {
    const groups: AppendGroup[] = [];
    for (let j = i; j < Math.min(runs, i + 100); j++) {
      const runId = newRunId(at0 + j);
      const bodies: RunEventBody[] = [{ type: 'run.started', data: { workflow: 'bench.w3', version: 1, input: { i: j } } }];
      for (const [k, step] of ['s1', 's2', 's3'].entries()) {
        bodies.push(
          { type: 'step.scheduled', data: { step, attempt: 1, handler: `bench.w3.${step}`, mode: 0, pool: 'default', timeoutMs: 30_000 } },
          { type: 'step.completed', data: { step, attempt: 1, worker: 'bench-worker', result: { ok: true, n: k + 1 }, durationMs: 1 } },
        );
      }
      bodies.push({ type: 'run.completed', data: { output: { ok: true, n: 3 } } });
      const events = bodies.map((b, k) => ({ v: EVENT_ENVELOPE_VERSION, ...b, runId, seq: k + 1, at: at0 + j * 10 + k, causationId: `cmd:${j}:${k}` }) as RunEvent);
      groups.push({ runId: runId as RunId, expectedLastSubjectSeq: 0, events });
      made += events.length;
    }
    pending.push(appendBatch(nc, t, groups, 30_000));
    // A few atomic batches in flight at once: quick, without flooding the server.
    if (pending.length >= 4) await Promise.all(pending.splice(0));
  }
  await Promise.all(pending);
  return { runs, events: made, ms: performance.now() - t0 };
}

interface CatchUp {
  batch: number;
  eventsPerSec: number;
  ms: number;
  startupMs: number;
  cpuUsPerEvent: number;
}

/** A fresh database and a projector process with batch size `batch` over the whole stream. */
async function catchUp(url: string, jsm: JetStreamManager, t: TenantId, batch: number, events: number): Promise<CatchUp> {
  const scratch = await scratchDatabase('benchcatch');
  const d = await openDatabase({ url: scratch.url, log });
  await migrate(d);
  const t0 = performance.now();
  // The durable consumer is left acknowledged to the end by the previous size: the new
  // projector finds it past its (empty) checkpoint and resets it there.
  const p = spawnService('projector', { NATS_URL: url, CAPSTAN_TENANTS: t, DATABASE_URL: scratch.url, PROJECTOR_BATCH: String(batch), LOG_LEVEL: 'warn' });
  try {
    let first = 0;
    while (first === 0) {
      if ((await checkpointOf(d, t)) > 0) first = performance.now();
      else await sleep(5);
    }
    const cpu0 = cpuOf(p.pid);
    const end = await waitCaughtUp(jsm, d, t);
    const r = { batch, eventsPerSec: events / ((end - first) / 1000), ms: end - first, startupMs: first - t0, cpuUsPerEvent: ((cpuOf(p.pid) - cpu0) * 1e6) / events };
    say(
      `catch-up, batch ${batch}: ${f0(r.eventsPerSec)} events/s (${f0(r.ms)} ms for ${f0(events)} events after ${f0(r.startupMs)} ms to the first commit), ${r.cpuUsPerEvent.toFixed(0)} µs projector CPU per event`,
    );
    return r;
  } finally {
    await p.kill('SIGTERM');
    await d.close();
    await scratch.drop();
  }
}

async function main(): Promise<void> {
  const bench = await startBenchNats();
  const server = bench.server;
  try {
    say('projector under W3:');
    const l = await live(bench);

    const t = parseTenantId('bench-100k');
    await bench.provision(t);
    const { nc, jsm } = await bench.connect(t, Role.Admin);
    const gen = await generate(nc, t);
    say(`generated ${f0(gen.events)} events (${f0(gen.runs)} runs) in ${f0(gen.ms)} ms`);
    const catchUps: CatchUp[] = [];
    for (const b of BATCHES) catchUps.push(await catchUp(server.url, jsm, t, b, gen.events));

    const scratch = await scratchDatabase('benchrebuild');
    const d = await openDatabase({ url: scratch.url, log });
    let rebuild: { first: number; again: number; verify: number; ok: boolean };
    try {
      await migrate(d);
      const first = await rebuildProjections(d, () => Promise.resolve(jsm), [t]);
      // Again over the full projection: the deletes are part of the work.
      const again = await rebuildProjections(d, () => Promise.resolve(jsm), [t]);
      const v = await verifyProjections(d, () => Promise.resolve(jsm), [t]);
      rebuild = { first: first.elapsedMs, again: again.elapsedMs, verify: v.elapsedMs, ok: v.ok && again.messages === gen.events };
      say(
        `rebuild of ${f0(gen.events)} events: ${f0(first.elapsedMs)} ms into an empty database, ${f0(again.elapsedMs)} ms over a full one; verify ${f0(v.elapsedMs)} ms, ok=${v.ok}`,
      );
    } finally {
      await d.close();
      await scratch.drop();
    }

    const md = [
      '## Projector: Postgres projections of the run streams',
      '',
      `Measured ${new Date().toISOString().slice(0, 16).replace('T', ' ')} UTC with \`npm run bench:projector\` (\`test/bench/projector.ts\`), one run, on the`,
      `machine above (${cpus().length} cores shared by nats-server, Postgres, the services and the load client); Postgres is the`,
      "machine's own (default settings, synchronous commit), nats-server a private instance with default sync.",
      '',
      `### Under W3 (${RUNS} runs, ${INFLIGHT} in flight; orchestrator, worker and projector as processes, batch 256)`,
      '',
      '| W3 runs/s | events/s appended | events/s applied | lag p50 / p99 / max (events) | lag p99 / max (ms) | caught up after the last run | projector CPU per event |',
      '| --- | --- | --- | --- | --- | --- | --- |',
      `| ${f0(l.runsPerSec)} | ${f0(l.eventsAppendedPerSec)} | ${f0(l.eventsAppliedPerSec)} | ${l.lagEvents.p50} / ${l.lagEvents.p99} / ${l.lagEvents.max} | ${f0(l.lagMs.p99)} / ${f0(l.lagMs.max)} | ${f0(l.catchUpMs)} ms | ${l.projectorCpuUsPerEvent.toFixed(0)} µs |`,
      '',
      `Lag is sampled every 50 ms (${l.samples} samples) as the run stream's last sequence minus the checkpoint; in`,
      'milliseconds it is how long the oldest unapplied event had been in the stream, to within the sampling period.',
      '"events/s applied" is the events of the load over the time from its start until the checkpoint reached the stream.',
      '',
      `### Catching up on ${f0(gen.events)} events (a fresh database, the projector process started on a full stream)`,
      '',
      '| batch | events/s applied | time | projector CPU per event |',
      '| --- | --- | --- | --- |',
      ...catchUps.map((c) => `| ${c.batch} | **${f0(c.eventsPerSec)}** | ${(c.ms / 1000).toFixed(1)} s | ${c.cpuUsPerEvent.toFixed(0)} µs |`),
      '',
      `Timed from the first committed batch (the process start, schema check and consumer setup took ${catchUps.map((c) => f0(c.startupMs)).join(' / ')} ms).`,
      `The events are ${f0(gen.runs)} synthetic W3 runs (8 valid events each) appended with \`appendBatch\` in ${f0(gen.ms)} ms.`,
      '',
      `### Rebuild and verify (${f0(gen.events)} events, one tenant, in process)`,
      '',
      '| rebuild into an empty database | rebuild over the full projection | verify |',
      '| --- | --- | --- |',
      `| ${(rebuild.first / 1000).toFixed(1)} s | ${(rebuild.again / 1000).toFixed(1)} s | ${(rebuild.verify / 1000).toFixed(1)} s (${rebuild.ok ? 'ok' : 'MISMATCHES'}) |`,
      '',
      "A rebuild is one transaction per tenant: the tenant's rows are deleted and the stream re-applied in pages of 1,000",
      'through the same code as the live projector, so readers see the old rows until the new ones commit.',
      '',
    ].join('\n');
    writeSection(OUT, 'projector', md);
    process.stdout.write(md);
  } finally {
    await bench.stop();
  }
}

await main();

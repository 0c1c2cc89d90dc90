/**
 * Metrics count what happened: the orchestrator, a worker and the projector run as
 * processes with their Prometheus endpoints on, a scripted load runs (runs that complete,
 * runs whose step fails once and is retried, runs that fail for good, runs left waiting for a
 * person, one poison command), and every counter must equal what the run streams recorded.
 */
import { afterAll, beforeAll, describe, expect, inject, it } from 'vitest';
import { join } from 'node:path';
import { createLogger, migrate, openDatabase, PROJECT_ROOT } from '@capstan/kit';
import { CommandVerb, Role, Subjects, type RunEvent, type RunId, type TenantId } from '@capstan/schemas';
import { connect, eventsOf, eventually, issueCreds, provision, spawnService, type Harness, type ServiceProcess } from '../harness/fixtures.js';
import { scratchDatabase } from '../harness/postgres.js';
import { freePort, scrapeMetrics, total, type Sample } from '../harness/metrics.js';

const url = inject('natsUrl');
const fixtures = join(PROJECT_ROOT, 'test', 'dist', 'fixtures', 'workflows.js');

describe('metrics: counters equal the runs and steps that happened', () => {
  let h: Harness;
  let t: TenantId;
  let scratch: Awaited<ReturnType<typeof scratchDatabase>>;
  const procs: ServiceProcess[] = [];
  const ports = { orchestrator: 0, worker: 0, projector: 0 };

  beforeAll(async () => {
    h = await connect(url);
    t = await provision(h, 'metrics');
    scratch = await scratchDatabase('metrics');
    const d = await openDatabase({ url: scratch.url, log: createLogger('db', 'silent') });
    await migrate(d);
    await d.close();
    for (const k of Object.keys(ports) as (keyof typeof ports)[]) ports[k] = await freePort();
    const env = { NATS_URL: url, CAPSTAN_TENANTS: t, CAPSTAN_WORKFLOWS: fixtures, CAPSTAN_HANDLERS: fixtures, DATABASE_URL: scratch.url };
    procs.push(
      spawnService('orchestrator', { ...env, METRICS_PORT: String(ports.orchestrator) }),
      spawnService('worker', { ...env, NATS_CREDS: await issueCreds(url, t, Role.Worker, 'metrics-w'), METRICS_PORT: String(ports.worker) }),
      spawnService('projector', { ...env, PROJECTOR_DISCOVERY_MS: '200', METRICS_PORT: String(ports.projector) }),
    );
    for (const port of Object.values(ports)) await eventually(`metrics on ${port}`, () => scrapeMetrics(port).catch(() => undefined), 30_000, 200);
  }, 120_000);

  afterAll(async () => {
    await Promise.all(procs.map((p) => p.kill('SIGTERM')));
    await h?.close();
    await scratch?.drop();
  });

  it('runs started, completed and failed by workflow and code, steps by outcome and mode, queues, lag, approvals, dead letters', async () => {
    const plan = [...Array<object>(30).fill({}), ...Array<object>(10).fill({ flaky: true }), ...Array<object>(5).fill({ bad: true })];
    const runs: RunId[] = [];
    await Promise.all(plan.map(async (input) => runs.push(await h.client.submit(t, 'test.counted', { input: input as Record<string, boolean> }))));
    const waiting = [await h.client.submit(t, 'demo.signal'), await h.client.submit(t, 'demo.signal')];
    // One poison command: not MessagePack, not JSON.
    await (await h.js(t)).publish(Subjects.command(t, CommandVerb.Submit), new Uint8Array([0xc1, 0xff, 0x00]));
    for (const r of runs) await h.client.waitForEnd(t, r, 60_000);
    await eventually('the signal runs to wait', async () =>
      (await Promise.all(waiting.map((r) => eventsOf(h, t, r)))).every((es) => es.some((e) => e.type === 'step.waiting')) ? true : undefined,
    );

    // What the streams recorded.
    const all: RunEvent[] = (await Promise.all([...runs, ...waiting].map((r) => eventsOf(h, t, r)))).flat();
    const count = (type: RunEvent['type'], where: (e: RunEvent) => boolean = () => true) => all.filter((e) => e.type === type && where(e)).length;
    const recorded = {
      started: count('run.started'),
      completed: count('run.completed'),
      failedBad: count('run.failed', (e) => e.type === 'run.failed' && e.data.error.code === 'bad_input'),
      scheduled: count('step.scheduled'),
      stepsCompleted: count('step.completed'),
      stepsFailed: count('step.failed'),
    };
    expect(recorded).toEqual({ started: 47, completed: 40, failedBad: 5, scheduled: 45 + 55 + 2, stepsCompleted: 45 + 40 + 2, stepsFailed: 10 + 5 });

    const want = (s: { o: Sample[]; w: Sample[] }) =>
      total(s.o, 'capstan_runs_started_total', { tenant: t }) === recorded.started &&
      total(s.w, 'capstan_steps_total', { tenant: t }) === recorded.stepsCompleted + recorded.stepsFailed &&
      total(s.o, 'capstan_dead_letters_total', { tenant: t }) === 1;
    const { o, w } = await eventually('the counters to settle', async () => {
      const s = { o: await scrapeMetrics(ports.orchestrator), w: await scrapeMetrics(ports.worker) };
      return want(s) ? s : undefined;
    });
    const orch = {
      started: total(o, 'capstan_runs_started_total', { tenant: t }),
      startedCounted: total(o, 'capstan_runs_started_total', { tenant: t, workflow: 'test.counted' }),
      completed: total(o, 'capstan_runs_completed_total', { tenant: t, workflow: 'test.counted' }),
      failedBad: total(o, 'capstan_runs_failed_total', { tenant: t, workflow: 'test.counted', code: 'bad_input' }),
      failedAny: total(o, 'capstan_runs_failed_total', { tenant: t }),
      scheduled: total(o, 'capstan_steps_scheduled_total', { tenant: t, mode: '0' }),
      deadLetters: total(o, 'capstan_dead_letters_total', { tenant: t, source: 'cmd', code: 'decode_failed' }),
      appended: total(o, 'capstan_orchestrator_events_appended_total', { tenant: t }),
    };
    expect(orch).toEqual({ started: 47, startedCounted: 45, completed: 40, failedBad: 5, failedAny: 5, scheduled: recorded.scheduled, deadLetters: 1, appended: all.length });
    const worker = {
      completed: total(w, 'capstan_steps_total', { tenant: t, outcome: 'completed', mode: '0' }),
      failed: total(w, 'capstan_steps_total', { tenant: t, outcome: 'failed', mode: '0' }),
      observed: total(w, 'capstan_step_duration_seconds_count', { tenant: t }),
      queued: total(w, 'capstan_work_queue_depth', { tenant: t, pool: 'default' }),
      waits: total(w, 'capstan_work_queue_wait_seconds_count', { tenant: t, pool: 'default' }),
    };
    // Each attempt was taken once; the queue is empty now (and the gauge is there to say so).
    expect(worker).toEqual({
      completed: recorded.stepsCompleted,
      failed: recorded.stepsFailed,
      observed: recorded.stepsCompleted + recorded.stepsFailed,
      queued: 0,
      waits: recorded.scheduled,
    });
    expect(w.some((x) => x.name === 'capstan_work_queue_depth' && x.labels['tenant'] === t && x.labels['pool'] === 'default')).toBe(true);

    const p = await eventually('the projector to catch up', async () => {
      const s = await scrapeMetrics(ports.projector);
      return total(s, 'capstan_projector_lag_events', { tenant: t }) === 0 && total(s, 'capstan_approvals_waiting', { tenant: t }) === 2 ? s : undefined;
    });
    expect(total(p, 'capstan_projector_events_total', { tenant: t })).toBe(all.length);
    process.stdout.write(
      `metrics after ${runs.length + waiting.length} runs: ${JSON.stringify({ orch, worker, projected: total(p, 'capstan_projector_events_total', { tenant: t }), approvalsWaiting: 2 })}\n`,
    );
  }, 180_000);
});

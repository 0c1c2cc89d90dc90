/**
 * End to end on a real nats-server: runs across tenants, event chains, tenant fencing,
 * durable retries and timeouts, signals, cancel, and replay of every run.
 */
import { afterAll, beforeAll, describe, expect, inject, it } from 'vitest';
import { createRegistry, demoWorkflows, foldRun } from '@capstan/actors';
import { Streams, type RunId, type TenantId } from '@capstan/schemas';
import { connect, eventsOf, provision, startServices, type Harness, type InProcessServices } from '../harness/fixtures.js';
import { checkRuns, report } from '../harness/checker.js';
import { workflows } from '../fixtures/workflows.js';

const registry = createRegistry(workflows);
let h: Harness;
let services: InProcessServices;
let t1: TenantId;
let t2: TenantId;

beforeAll(async () => {
  const url = inject('natsUrl');
  h = await connect(url);
  t1 = await provision(h, 'core-a');
  t2 = await provision(h, 'core-b');
  services = await startServices(url, [t1, t2]);
});

afterAll(async () => {
  await services?.stop();
  await h?.close();
});

describe('core', () => {
  it('core - 200 demo.pipeline runs across two tenants complete with unbroken, fenced chains', async () => {
    const ids = new Map<TenantId, RunId[]>([
      [t1, []],
      [t2, []],
    ]);
    await Promise.all(
      Array.from({ length: 200 }, async (_, i) => {
        const t = i % 2 === 0 ? t1 : t2;
        const runId = await h.client.submit(t, 'demo.pipeline', { input: { i } });
        ids.get(t)?.push(runId);
      }),
    );
    for (const [t, runIds] of ids) await Promise.all(runIds.map((r) => h.client.waitForEnd(t, r, 30_000)));
    for (const [t, runIds] of ids) {
      const c = await checkRuns(await h.jsm(t), t, runIds, registry);
      report(`core ${t}`, c);
      expect(c.runs).toBe(100);
      expect(c.completed).toBe(100);
      expect(c.brokenChains + c.forks + c.resultsRecordedTwice + c.startsRecordedTwice + c.replayMismatches + c.foreignEvents).toBe(0);
      // Quick steps go straight from scheduled to completed (no started report, no timer).
      const shape = ['run.started', ...Array(3).fill(['step.scheduled', 'step.completed']).flat(), 'run.completed'];
      for (const events of c.eventsByRun.values()) expect(events.map((e) => e.type)).toEqual(shape);
    }
    // Fencing: no run of tenant A exists in tenant B's stream, and the streams hold only their own runs.
    const [a, b] = [ids.get(t1) ?? [], ids.get(t2) ?? []];
    for (const runId of a.slice(0, 20)) expect(await eventsOf(h, t2, runId)).toHaveLength(0);
    for (const runId of b.slice(0, 20)) expect(await eventsOf(h, t1, runId)).toHaveLength(0);
    const infoA = await (await h.jsm(t1)).streams.info(Streams.runs(t1), { subjects_filter: '>' });
    const subjectsA = Object.keys(infoA.state.subjects ?? {});
    expect(subjectsA.every((s) => s.startsWith(`cap.${t1}.runs.`) || s.startsWith(`cap.${t1}.idem.`))).toBe(true);
    expect(subjectsA.filter((s) => s.includes('.runs.'))).toHaveLength(100);
  });

  it('core - demo.flaky retries with durable backoff timers and completes on attempt 3', async () => {
    const runId = await h.client.submit(t1, 'demo.flaky');
    const end = await h.client.waitForEnd(t1, runId, 30_000);
    expect(end.type).toBe('run.completed');
    const events = await eventsOf(h, t1, runId);
    const failed = events.filter((e) => e.type === 'step.failed');
    expect(failed.map((e) => (e.type === 'step.failed' ? e.data.attempt : 0))).toEqual([1, 2]);
    const retries = events.filter((e) => e.type === 'timer.scheduled' && e.data.kind === 'retry');
    expect(retries.map((e) => (e.type === 'timer.scheduled' ? e.data.delayMs : 0))).toEqual([200, 400]);
    expect(events.filter((e) => e.type === 'timer.fired')).toHaveLength(2);
    expect(foldRun(registry, events).timeline.at(-1)?.status).toBe('completed');
  });

  it('core - a hung step is ended by its timeout and retried as a new attempt', async () => {
    const runId = await h.client.submit(t1, 'test.timeout');
    const end = await h.client.waitForEnd(t1, runId, 30_000);
    expect(end.type).toBe('run.completed');
    const events = await eventsOf(h, t1, runId);
    // Attempt 1 ends by timeout: whichever came first, the worker's own deadline (a failed
    // result with step_timeout) or the orchestrator's durable timeout timer.
    const ended = events.find((e) => (e.type === 'step.failed' && e.data.error.code === 'step_timeout') || (e.type === 'timer.fired' && e.data.kind === 'timeout'));
    expect(ended && 'attempt' in ended.data ? ended.data.attempt : 0).toBe(1);
    const done = events.find((e) => e.type === 'step.completed');
    expect(done?.type === 'step.completed' && done.data.attempt).toBe(2);
  });

  it('core - a signal step waits, then continues with the signal payload', async () => {
    const runId = await h.client.submit(t2, 'demo.signal');
    const waiting = async () => (await eventsOf(h, t2, runId)).some((e) => e.type === 'step.waiting');
    for (let i = 0; i < 100 && !(await waiting()); i++) await new Promise((r) => setTimeout(r, 50));
    expect(await waiting()).toBe(true);
    await h.client.signal(t2, runId, 'approve', { by: 'alice' });
    const end = await h.client.waitForEnd(t2, runId, 10_000);
    expect(end.type === 'run.completed' && end.data.output).toEqual({ ok: true, approvedBy: 'alice' });
  });

  it('core - cancel ends a waiting run; a second cancel is dead-lettered, the stream untouched', async () => {
    const runId = await h.client.submit(t2, 'demo.signal');
    for (let i = 0; i < 100 && !(await eventsOf(h, t2, runId)).some((e) => e.type === 'step.waiting'); i++) await new Promise((r) => setTimeout(r, 50));
    await h.client.cancel(t2, runId, 'not needed');
    const end = await h.client.waitForEnd(t2, runId, 10_000);
    expect(end.type === 'run.cancelled' && end.data.reason).toBe('not needed');
    const before = (await eventsOf(h, t2, runId)).length;
    await h.client.cancel(t2, runId, 'again');
    await new Promise((r) => setTimeout(r, 500));
    expect(await eventsOf(h, t2, runId)).toHaveLength(before);
  });

  it('core - the snapshot cache is only a cache: with it off, runs decide the same', async () => {
    const url = inject('natsUrl');
    const t = await provision(h, 'nocache');
    const noCache = await startServices(url, [t], { env: { ORCH_CACHE_SIZE: '0' } });
    try {
      const runIds = await Promise.all(Array.from({ length: 20 }, () => h.client.submit(t, 'demo.flaky')));
      await Promise.all(runIds.map((r) => h.client.waitForEnd(t, r, 30_000)));
      const c = await checkRuns(await h.jsm(t), t, runIds, registry);
      report('no-cache', c);
      expect(c.completed).toBe(20);
      expect(c.brokenChains + c.forks + c.resultsRecordedTwice + c.replayMismatches).toBe(0);
      // Same history shape as with the cache: the events are a function of the inputs.
      for (const events of c.eventsByRun.values()) expect(events.map((e) => e.type)).toEqual([...(c.eventsByRun.values().next().value ?? [])].map((e) => e.type));
    } finally {
      await noCache.stop();
    }
  });

  it('core - replay of every run recorded in this file reproduces it through its recorded version', async () => {
    const reg = createRegistry([...demoWorkflows, ...workflows.filter((w) => !w.id.startsWith('demo.'))]);
    let replayed = 0;
    for (const t of [t1, t2]) {
      const info = await (await h.jsm(t)).streams.info(Streams.runs(t), { subjects_filter: `cap.${t}.runs.*` });
      for (const subject of Object.keys(info.state.subjects ?? {})) {
        const events = await eventsOf(h, t, subject.split('.')[3] as RunId);
        expect(() => foldRun(reg, events)).not.toThrow();
        replayed++;
      }
    }
    process.stdout.write(`replayed ${replayed} runs\n`);
    expect(replayed).toBeGreaterThanOrEqual(204);
  });
});

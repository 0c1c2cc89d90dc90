/**
 * Fault tests with real processes: orchestrators SIGKILLed in a loop while runs are in
 * flight (plain runs, fan-outs, parents with child workflows), and a worker SIGKILLed in the middle of a step. The checker counts what was
 * lost, what forked and what was recorded twice; every count must be zero.
 */
import { afterEach, describe, expect, inject, it } from 'vitest';
import { join } from 'node:path';
import { childRunIdOf, createRegistry } from '@capstan/actors';
import { readDeadLetters } from '@capstan/cli';
import { PROJECT_ROOT } from '@capstan/kit';
import { encode, Role, type RunId } from '@capstan/schemas';
import { connect, eventsOf, eventually, issueCreds, provision, spawnService, watchRuns, type ServiceProcess } from '../harness/fixtures.js';
import { checkRuns, replayAll, report } from '../harness/checker.js';
import { workflows } from '../fixtures/workflows.js';

const fixtures = join(PROJECT_ROOT, 'test', 'dist', 'fixtures', 'workflows.js');
const registry = createRegistry(workflows);
const procs: ServiceProcess[] = [];
const spawnTracked = (...a: Parameters<typeof spawnService>) => {
  const p = spawnService(...a);
  procs.push(p);
  return p;
};

afterEach(async () => {
  await Promise.all(procs.splice(0).map((p) => p.kill()));
});

describe('faults', () => {
  it('faults - orchestrators SIGKILLed in a loop: every run completes, 0 forks, each result once', async () => {
    const url = inject('natsUrl');
    const h = await connect(url);
    try {
      // A crashed orchestrator's commands go to the other one after a second.
      const t = await provision(h, 'kill-orch', { consumers: { orchestratorAckWaitMs: 1000 } });
      const env = { NATS_URL: url, CAPSTAN_TENANTS: t, CAPSTAN_WORKFLOWS: fixtures, CAPSTAN_HANDLERS: fixtures, ORCH_DISCOVERY_MS: '200' };
      const orchs = [spawnTracked('orchestrator', { ...env, ORCH_NAME: 'o1' }), spawnTracked('orchestrator', { ...env, ORCH_NAME: 'o2' })];
      spawnTracked('worker', { ...env, NATS_CREDS: await issueCreds(url, t, Role.Worker, 'w1'), WORKER_CONCURRENCY: '100' });
      // Let the services attach to the tenant before the load starts.
      await new Promise((r) => setTimeout(r, 1500));

      const watch = await watchRuns(h, t);
      const runIds: RunId[] = await Promise.all(Array.from({ length: 200 }, (_, i) => h.client.submit(t, 'test.pipeline', { input: { ms: 150, i } })));
      let kills = 0;
      let terminalAtFirstKill = -1;
      // Twelve kills however long they take: a count, not a clock, so a loaded machine kills
      // as often as a quiet one (only more slowly).
      while (kills < 12) {
        await new Promise((r) => setTimeout(r, 350));
        const i = kills % 2;
        const victim = orchs[i] as ServiceProcess;
        if (terminalAtFirstKill < 0) terminalAtFirstKill = watch.ended.size;
        await victim.kill('SIGKILL');
        kills++;
        orchs[i] = spawnTracked('orchestrator', { ...env, ORCH_NAME: `o${i + 1}-r${kills}` });
      }
      await watch.waitAll(runIds, 60_000).catch((e: unknown) => process.stdout.write(`${String(e)}\n`));
      await watch.close();
      const c = await checkRuns(await h.jsm(t), t, runIds, registry);
      for (const [runId, events] of c.eventsByRun) {
        if (!events.some((e) => e.type === 'run.completed'))
          process.stdout.write(`STUCK ${runId}\n${events.map((e) => `  ${e.seq} ${e.type} ${e.causationId} ${JSON.stringify(e.data)}`).join('\n')}\n`);
      }
      if (c.notTerminal > 0) {
        process.stdout.write(`DLQ: ${JSON.stringify((await readDeadLetters(await h.jsm(t), t, 50)).map((l) => [l.code, l.error]))}\n`);
        for (const p of procs) process.stdout.write(`OUT ${p.name} ${p.pid}: ${p.output().slice(-3000)}\n`);
      }
      report('orchestrator kill-loop', c);
      process.stdout.write(`kills=${kills} terminal-at-first-kill=${terminalAtFirstKill}\n`);
      // The kills hit runs in flight, not a finished batch.
      expect(terminalAtFirstKill).toBeLessThan(200);
      expect(c.completed).toBe(200);
      expect(c.forks).toBe(0);
      expect(c.brokenChains).toBe(0);
      expect(c.resultsRecordedTwice).toBe(0);
      expect(c.startsRecordedTwice).toBe(0);
      expect(c.replayMismatches).toBe(0);
      for (const events of c.eventsByRun.values()) {
        expect(events.filter((e) => e.type === 'run.started')).toHaveLength(1);
        expect(events.filter((e) => e.type === 'step.completed')).toHaveLength(3);
      }
    } finally {
      await h.close();
    }
  }, 120_000);

  it('faults - orchestrators SIGKILLed in a loop during fan-outs: every run completes, 0 forks, each item result once', async () => {
    const url = inject('natsUrl');
    const h = await connect(url);
    try {
      const t = await provision(h, 'kill-fan', { consumers: { orchestratorAckWaitMs: 1000 } });
      const env = { NATS_URL: url, CAPSTAN_TENANTS: t, CAPSTAN_WORKFLOWS: fixtures, CAPSTAN_HANDLERS: fixtures, ORCH_DISCOVERY_MS: '200' };
      const orchs = [spawnTracked('orchestrator', { ...env, ORCH_NAME: 'o1' }), spawnTracked('orchestrator', { ...env, ORCH_NAME: 'o2' })];
      spawnTracked('worker', { ...env, NATS_CREDS: await issueCreds(url, t, Role.Worker, 'w1'), WORKER_CONCURRENCY: '100' });
      await new Promise((r) => setTimeout(r, 1500));

      const watch = await watchRuns(h, t);
      const RUNS = 40;
      const ITEMS = 12;
      const runIds: RunId[] = await Promise.all(Array.from({ length: RUNS }, (_, i) => h.client.submit(t, 'test.fan', { input: { items: ITEMS, ms: 120, i } })));
      let kills = 0;
      let terminalAtFirstKill = -1;
      // Twelve kills however long they take: a count, not a clock, so a loaded machine kills
      // as often as a quiet one (only more slowly).
      while (kills < 12) {
        await new Promise((r) => setTimeout(r, 350));
        const i = kills % 2;
        if (terminalAtFirstKill < 0) terminalAtFirstKill = watch.ended.size;
        await (orchs[i] as ServiceProcess).kill('SIGKILL');
        kills++;
        orchs[i] = spawnTracked('orchestrator', { ...env, ORCH_NAME: `o${i + 1}-r${kills}` });
      }
      await watch.waitAll(runIds, 90_000).catch((e: unknown) => process.stdout.write(`${String(e)}\n`));
      await watch.close();
      const c = await checkRuns(await h.jsm(t), t, runIds, registry);
      report('orchestrator kill-loop with fan-outs', c);
      for (const [runId, events] of c.eventsByRun) {
        if (events.at(-1)?.type !== 'run.completed') {
          process.stdout.write(
            `STUCK ${runId}\n${events.map((e) => `  ${e.seq} ${e.type} ${e.causationId} ${'step' in e.data ? String(e.data.step) : ''}${'attempt' in e.data ? `#${String(e.data.attempt)}` : ''}`).join('\n')}\n`,
          );
        }
      }
      let itemResults = 0;
      for (const events of c.eventsByRun.values()) {
        const done = events.filter((e) => e.type === 'step.completed').map((e) => (e.type === 'step.completed' ? e.data.step : ''));
        // Each item's result is recorded once, whatever crashed around it.
        expect(new Set(done).size).toBe(done.length);
        itemResults += done.filter((s) => s.startsWith('each-')).length;
        expect(events.at(-1)).toMatchObject({ type: 'run.completed', data: { output: { total: (ITEMS * (ITEMS - 1)) / 2 } } });
      }
      process.stdout.write(`kills=${kills} terminal-at-first-kill=${terminalAtFirstKill} item results=${itemResults}\n`);
      expect(terminalAtFirstKill).toBeLessThan(RUNS);
      expect(c.completed).toBe(RUNS);
      expect(itemResults).toBe(RUNS * ITEMS);
      expect(c.forks).toBe(0);
      expect(c.brokenChains).toBe(0);
      expect(c.resultsRecordedTwice).toBe(0);
      expect(c.startsRecordedTwice).toBe(0);
      expect(c.replayMismatches).toBe(0);
    } finally {
      await h.close();
    }
  }, 150_000);

  it('faults - orchestrators SIGKILLed in a loop during child workflows: every run completes, 0 forks, one child run per start, each child result once', async () => {
    const url = inject('natsUrl');
    const h = await connect(url);
    try {
      const t = await provision(h, 'kill-kids', { consumers: { orchestratorAckWaitMs: 1000 } });
      const env = { NATS_URL: url, CAPSTAN_TENANTS: t, CAPSTAN_WORKFLOWS: fixtures, CAPSTAN_HANDLERS: fixtures, ORCH_DISCOVERY_MS: '200' };
      const orchs = [spawnTracked('orchestrator', { ...env, ORCH_NAME: 'o1' }), spawnTracked('orchestrator', { ...env, ORCH_NAME: 'o2' })];
      spawnTracked('worker', { ...env, NATS_CREDS: await issueCreds(url, t, Role.Worker, 'w1'), WORKER_CONCURRENCY: '100' });
      await new Promise((r) => setTimeout(r, 1500));

      const watch = await watchRuns(h, t);
      const RUNS = 40;
      // Each parent starts two children (one awaited, one abandoned) of two steps each.
      const parents: RunId[] = await Promise.all(Array.from({ length: RUNS }, (_, i) => h.client.submit(t, 'test.parent', { input: { ms: 150, i } })));
      const children = parents.flatMap((p) => [childRunIdOf(p, 'ship', 1), childRunIdOf(p, 'notify', 1)]);
      let kills = 0;
      let terminalAtFirstKill = -1;
      // Twelve kills however long they take: a count, not a clock, so a loaded machine kills
      // as often as a quiet one (only more slowly).
      while (kills < 12) {
        await new Promise((r) => setTimeout(r, 350));
        const i = kills % 2;
        if (terminalAtFirstKill < 0) terminalAtFirstKill = watch.ended.size;
        await (orchs[i] as ServiceProcess).kill('SIGKILL');
        kills++;
        orchs[i] = spawnTracked('orchestrator', { ...env, ORCH_NAME: `o${i + 1}-r${kills}` });
      }
      await watch.waitAll([...parents, ...children], 90_000).catch((e: unknown) => process.stdout.write(`${String(e)}\n`));
      await watch.close();
      const c = await checkRuns(await h.jsm(t), t, [...parents, ...children], registry);
      report('orchestrator kill-loop with child workflows', c);
      if (c.notTerminal > 0) for (const p of procs) process.stdout.write(`OUT ${p.name} ${p.pid}: ${p.output().slice(-3000)}\n`);
      for (const [runId, events] of c.eventsByRun) {
        if (events.at(-1)?.type !== 'run.completed') {
          process.stdout.write(
            `STUCK ${runId}\n${events.map((e) => `  ${e.seq} ${e.type} ${e.causationId} ${'step' in e.data ? String(e.data.step) : ''}${'attempt' in e.data ? `#${String(e.data.attempt)}` : ''}`).join('\n')}\n`,
          );
        }
      }
      let childResults = 0;
      for (const p of parents) {
        const events = c.eventsByRun.get(p) ?? [];
        const outcomes = events.filter((e) => e.type === 'child.completed').map((e) => (e.type === 'child.completed' ? e.data.step : ''));
        // Each child's result is recorded once in its parent, whatever crashed around it.
        expect(outcomes.sort()).toEqual(['notify', 'ship']);
        expect(events.filter((e) => e.type === 'child.started')).toHaveLength(2);
        childResults += outcomes.length;
        expect(events.at(-1)).toMatchObject({ type: 'run.completed', data: { output: { shipped: { label: 'L-1' } } } });
      }
      for (const child of children) {
        // One child run per start: its id is derived, so a second submit was a duplicate.
        const events = c.eventsByRun.get(child) ?? [];
        expect(events.filter((e) => e.type === 'run.started')).toHaveLength(1);
        expect(events.at(-1)?.type).toBe('run.completed');
      }
      // No child run beyond the derived ones: the tenant holds exactly parents + children.
      const all = await replayAll(await h.jsm(t), t, registry);
      expect(all.replayed).toBe(RUNS * 3);
      expect(all.failures).toEqual([]);
      process.stdout.write(`kills=${kills} terminal-at-first-kill=${terminalAtFirstKill} child results=${childResults}\n`);
      expect(terminalAtFirstKill).toBeLessThan(RUNS * 3);
      expect(c.completed).toBe(RUNS * 3);
      expect(childResults).toBe(RUNS * 2);
      expect(c.forks).toBe(0);
      expect(c.brokenChains).toBe(0);
      expect(c.resultsRecordedTwice).toBe(0);
      expect(c.startsRecordedTwice).toBe(0);
      expect(c.replayMismatches).toBe(0);
    } finally {
      await h.close();
    }
  }, 150_000);

  it('faults - a worker SIGKILLed mid-step: the attempt is reported lost and retried elsewhere; its late result is rejected', async () => {
    const url = inject('natsUrl');
    const h = await connect(url);
    try {
      // A silent worker's item goes to another after 1.5 s.
      const consumers = { workAckWaitMs: 1500 };
      const t = await provision(h, 'kill-worker', { consumers });
      const env = { NATS_URL: url, CAPSTAN_TENANTS: t, CAPSTAN_WORKFLOWS: fixtures, CAPSTAN_HANDLERS: fixtures, WORKER_DISCOVERY_MS: '200' };
      spawnTracked('orchestrator', env);
      const workers = {
        wa: spawnTracked('worker', { ...env, NATS_CREDS: await issueCreds(url, t, Role.Worker, 'wa', { consumers }) }),
        wb: spawnTracked('worker', { ...env, NATS_CREDS: await issueCreds(url, t, Role.Worker, 'wb', { consumers }) }),
      };
      await new Promise((r) => setTimeout(r, 1500));

      const runId = await h.client.submit(t, 'test.slow', { input: { ms: 2500 } });
      const started = await eventually('attempt 1 started', async () => {
        const e = (await eventsOf(h, t, runId)).find((x) => x.type === 'step.started');
        return e?.type === 'step.started' ? e.data : undefined;
      });
      expect(started.attempt).toBe(1);
      const victim = workers[started.worker as 'wa' | 'wb'];
      const survivor = started.worker === 'wa' ? 'wb' : 'wa';
      await victim.kill('SIGKILL');

      const end = await h.client.waitForEnd(t, runId, 30_000);
      expect(end.type).toBe('run.completed');
      let events = await eventsOf(h, t, runId);
      const failed = events.find((e) => e.type === 'step.failed');
      expect(failed?.type === 'step.failed' && [failed.data.attempt, failed.data.error.code, failed.data.worker]).toEqual([1, 'worker_lost', survivor]);
      const completed = events.filter((e) => e.type === 'step.completed');
      expect(completed).toHaveLength(1);
      expect(completed[0]?.type === 'step.completed' && [completed[0].data.attempt, completed[0].data.worker]).toEqual([2, survivor]);

      // The killed worker's result for attempt 1, arriving late, changes nothing.
      const before = events.length;
      const dlqBefore = (await readDeadLetters(await h.jsm(t), t, 1000)).length;
      await (
        await h.js(t)
      ).publish(
        `cap.${t}.cmd.result`,
        encode({ runId, step: 'slow', attempt: 1, worker: started.worker, outcome: 'completed', result: { ok: true, attempt: 1 }, durationMs: 2500 }),
      );
      const letter = await eventually('stale result dead-lettered', async () => (await readDeadLetters(await h.jsm(t), t, 1000))[dlqBefore]);
      expect(letter.code).toBe('stale_attempt');
      events = await eventsOf(h, t, runId);
      expect(events).toHaveLength(before);
    } finally {
      await h.close();
    }
  }, 60_000);
});

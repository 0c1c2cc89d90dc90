/**
 * A schedule firing every second for a minute while the orchestrators (real processes) are
 * SIGKILLed in a loop: every slot of that minute has exactly one run, no run belongs to no
 * slot, and every run completes once. The counts are printed and asserted.
 */
import { afterEach, describe, expect, inject, it } from 'vitest';
import { join } from 'node:path';
import { createRegistry } from '@capstan/actors';
import { PROJECT_ROOT, readScheduleState, sendScheduleCommand } from '@capstan/kit';
import { Role, type RunId } from '@capstan/schemas';
import { connect, eventually, issueCreds, processTracker, provision, type ServiceProcess } from '../harness/fixtures.js';
import { checkRuns, report } from '../harness/checker.js';
import { allRunIds, percentiles, runsOfSchedule } from '../harness/schedules.js';
import { workflows } from '../fixtures/workflows.js';

const fixtures = join(PROJECT_ROOT, 'test', 'dist', 'fixtures', 'workflows.js');
const registry = createRegistry(workflows);
const tracked = processTracker();
const spawnTracked = tracked.spawn;

afterEach(() => tracked.killAll());

describe('schedule faults', () => {
  it('schedule faults - every second for a minute with orchestrators SIGKILLed in a loop: exactly one run per slot', async () => {
    const url = inject('natsUrl');
    const h = await connect(url);
    try {
      // A killed orchestrator's fires and commands go to the other one after a second.
      const t = await provision(h, 'kill-sched', { consumers: { orchestratorAckWaitMs: 1000 } });
      const tc = await h.tenant(t);
      const env = { NATS_URL: url, CAPSTAN_TENANTS: t, CAPSTAN_WORKFLOWS: fixtures, CAPSTAN_HANDLERS: fixtures, ORCH_DISCOVERY_MS: '200' };
      const orchs = [spawnTracked('orchestrator', { ...env, ORCH_NAME: 'o1' }), spawnTracked('orchestrator', { ...env, ORCH_NAME: 'o2' })];
      spawnTracked('worker', { ...env, NATS_CREDS: await issueCreds(url, t, Role.Worker, 'w1'), WORKER_CONCURRENCY: '50' });
      await new Promise((r) => setTimeout(r, 1500));

      // Catch-up `all` (the default) within a minute: a slot whose firing a kill delayed still runs.
      const created = await sendScheduleCommand(
        tc.js,
        tc.jsm,
        t,
        {
          op: 'create',
          schedule: 'every-second',
          spec: { workflow: 'test.pipeline', everyMs: 1000, input: { ms: 50 }, overlap: 'allow-all', catchup: 'all', catchupWindowMs: 60_000 },
          by: 'fault-test',
        },
        30_000,
      );
      const gen = created.record.generation;
      let kills = 0;
      const until = Date.now() + 60_000;
      while (Date.now() < until) {
        await new Promise((r) => setTimeout(r, 300 + Math.floor(Math.random() * 900)));
        const i = kills % 2;
        await (orchs[i] as ServiceProcess).kill('SIGKILL');
        kills++;
        orchs[i] = spawnTracked('orchestrator', { ...env, ORCH_NAME: `o${i + 1}-r${kills}` });
      }
      // Stop firing, then let the survivors finish what is in flight.
      const deleted = await sendScheduleCommand(tc.js, tc.jsm, t, { op: 'delete', schedule: 'every-second', by: 'fault-test' }, 30_000);
      const state = (await readScheduleState(tc.jsm, t, 'every-second'))?.record;
      const decidedUpTo = (state?.next ?? deleted.at) - 1000;
      const expected: number[] = [];
      for (let s = created.record.anchorMs + 1000; s <= decidedUpTo; s += 1000) expected.push(s);

      const runs = await eventually(
        'every decided slot has its run completed',
        async () => {
          const r = await runsOfSchedule(tc.jsm, t, 'every-second', gen);
          const done = r.filter((x) => x.events.some((e) => e.type === 'run.completed'));
          return done.length >= expected.length ? r : undefined;
        },
        60_000,
      ).catch(async () => runsOfSchedule(tc.jsm, t, 'every-second', gen));

      const bySlot = new Map<number, number>();
      for (const r of runs) bySlot.set(r.slot, (bySlot.get(r.slot) ?? 0) + 1);
      const missing = expected.filter((s) => !bySlot.has(s));
      const twice = [...bySlot.values()].filter((n) => n > 1).length;
      const strays = (await allRunIds(tc.jsm, t)).filter((id) => !runs.some((r) => r.runId === id));
      const c = await checkRuns(
        tc.jsm,
        t,
        runs.map((r) => r.runId as RunId),
        registry,
      );
      const late = runs.filter((r) => r.startedAt !== undefined).map((r) => (r.startedAt as number) - r.slot);
      report('schedule kill-loop', c);
      process.stdout.write(
        `kills=${kills} slots=${expected.length} runs=${runs.length} missing=${missing.length} slotsRunTwice=${twice} strayRuns=${strays.length} skipped=${state?.skipped ?? '?'} lateness=${JSON.stringify(percentiles(late))}\n`,
      );
      if (missing.length > 0) process.stdout.write(`missing slots: ${missing.map((s) => new Date(s).toISOString()).join(' ')}\n`);
      expect(kills).toBeGreaterThanOrEqual(40);
      expect(expected.length).toBeGreaterThanOrEqual(59);
      expect(missing).toEqual([]);
      expect(twice).toBe(0);
      expect(strays).toEqual([]);
      expect(runs.length).toBe(expected.length);
      expect(state?.skipped).toBe(0);
      expect(c.completed).toBe(expected.length);
      expect(c.forks).toBe(0);
      expect(c.brokenChains).toBe(0);
      expect(c.startsRecordedTwice).toBe(0);
      expect(c.resultsRecordedTwice).toBe(0);
      expect(c.replayMismatches).toBe(0);
      for (const events of c.eventsByRun.values()) expect(events.filter((e) => e.type === 'run.started')).toHaveLength(1);
    } finally {
      await h.close();
    }
  }, 240_000);
});

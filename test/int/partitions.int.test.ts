/**
 * Partitioned orchestrators: instances join and leave under load without a restart, every
 * run is decided by one owner at a time (no forks, every decision once), and a stale owner,
 * frozen while its leases are taken, has its append refused and steps down.
 */
import { afterEach, describe, expect, inject, it } from 'vitest';
import { join } from 'node:path';
import { createRegistry } from '@capstan/actors';
import { PROJECT_ROOT } from '@capstan/kit';
import { DEFAULT_PARTITIONS, Role, type RunId } from '@capstan/schemas';
import { connect, issueCreds, provision, spawnService, watchRuns, type ServiceProcess } from '../harness/fixtures.js';
import { checkRuns, report, type RunCheck } from '../harness/checker.js';
import { workflows } from '../fixtures/workflows.js';

const fixtures = join(PROJECT_ROOT, 'test', 'dist', 'fixtures', 'workflows.js');
const registry = createRegistry(workflows);
const procs: ServiceProcess[] = [];
const spawnTracked = (...a: Parameters<typeof spawnService>) => {
  const p = spawnService(...a);
  procs.push(p);
  return p;
};
const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

afterEach(async () => {
  await Promise.all(procs.splice(0).map((p) => p.kill()));
});

/** Partitions an instance took, from its log (`partition taken` lines). */
const taken = (p: ServiceProcess) =>
  p
    .output()
    .split('\n')
    .filter((l) => l.includes('"partition taken"')).length;

function expectSingleHistories(c: RunCheck & { eventsByRun: Map<RunId, unknown[]> }, runs: number): void {
  expect(c.completed).toBe(runs);
  expect(c.notTerminal).toBe(0);
  expect(c.forks).toBe(0);
  expect(c.brokenChains).toBe(0);
  expect(c.resultsRecordedTwice).toBe(0);
  expect(c.startsRecordedTwice).toBe(0);
  expect(c.replayMismatches).toBe(0);
  expect(c.foreignEvents).toBe(0);
}

describe('partitioned orchestrators', () => {
  it('partitions - 1 → 3 → 1 instances under load: every run completes once, no forks, partitions move both ways', async () => {
    const url = inject('natsUrl');
    const h = await connect(url);
    try {
      const t = await provision(h, 'parts', { consumers: { orchestratorAckWaitMs: 2000 } });
      const env = {
        NATS_URL: url,
        CAPSTAN_TENANTS: t,
        CAPSTAN_WORKFLOWS: fixtures,
        CAPSTAN_HANDLERS: fixtures,
        ORCH_DISCOVERY_MS: '200',
        ORCH_LEASE_TTL_MS: '1500',
        ORCH_LEASE_RENEW_MS: '250',
        LOG_LEVEL: 'info',
      };
      const o1 = spawnTracked('orchestrator', { ...env, ORCH_NAME: 'o1' });
      spawnTracked('worker', { ...env, LOG_LEVEL: 'warn', NATS_CREDS: await issueCreds(url, t, Role.Worker, 'w1'), WORKER_CONCURRENCY: '100' });
      await sleep(1500);
      const watch = await watchRuns(h, t);
      const runIds: RunId[] = [];
      const ended = () => runIds.filter((r) => watch.ended.has(r)).length;
      /** Submits `n` runs, a few at a time, while the instances change underneath. */
      const load = async (n: number) => {
        for (let i = 0; i < n; i += 10) {
          runIds.push(...(await Promise.all(Array.from({ length: 10 }, (_, k) => h.client.submit(t, 'test.pipeline', { input: { ms: 10, i: i + k } })))));
          await sleep(50);
        }
      };
      const phase = async (name: string, n: number) => {
        const before = ended();
        const t0 = Date.now();
        await load(n);
        await sleep(500);
        const s = (Date.now() - t0) / 1000;
        process.stdout.write(
          `phase ${name}: ${n} runs submitted, ${ended() - before} ended in ${s.toFixed(1)} s (${((ended() - before) / s).toFixed(0)} runs/s; not a benchmark)\n`,
        );
      };

      await phase('1 instance', 150);
      expect(taken(o1)).toBe(DEFAULT_PARTITIONS);
      const o2 = spawnTracked('orchestrator', { ...env, ORCH_NAME: 'o2' });
      const o3 = spawnTracked('orchestrator', { ...env, ORCH_NAME: 'o3' });
      // They join while runs keep coming (however long a process takes to start on a loaded machine).
      const joining = load(100);
      for (let i = 0; i < 300 && !(taken(o2) > 0 && taken(o3) > 0); i++) await sleep(100);
      await joining;
      expect(taken(o2)).toBeGreaterThan(0);
      expect(taken(o3)).toBeGreaterThan(0);
      await phase('3 instances', 200);
      const o1Before = taken(o1);
      // They leave gracefully (their leases are given back) while runs are in flight.
      await Promise.all([o2.kill('SIGTERM'), o3.kill('SIGTERM')]);
      await phase('1 instance again', 150);
      await watch.waitAll(runIds, 60_000).catch((e: unknown) => process.stdout.write(`${String(e)}\n`));
      await watch.close();
      // o1 took back what the others held.
      expect(taken(o1)).toBeGreaterThan(o1Before);

      const c = await checkRuns(await h.jsm(t), t, runIds, registry);
      report('partitions 1 → 3 → 1', c);
      if (c.notTerminal > 0) for (const p of procs) process.stdout.write(`OUT ${p.name} ${p.pid}: ${p.output().slice(-3000)}\n`);
      expectSingleHistories(c, runIds.length);
      for (const events of c.eventsByRun.values()) {
        expect(events.filter((e) => e.type === 'run.started')).toHaveLength(1);
        expect(events.filter((e) => e.type === 'step.completed')).toHaveLength(3);
      }
    } finally {
      await h.close();
    }
  }, 90_000);

  it('partitions - a stale owner, frozen while its leases are taken, has its append refused and steps down', async () => {
    const url = inject('natsUrl');
    const h = await connect(url);
    try {
      const t = await provision(h, 'stale', { consumers: { orchestratorAckWaitMs: 1000 } });
      const env = {
        NATS_URL: url,
        CAPSTAN_TENANTS: t,
        CAPSTAN_WORKFLOWS: fixtures,
        CAPSTAN_HANDLERS: fixtures,
        ORCH_DISCOVERY_MS: '200',
        ORCH_LEASE_TTL_MS: '1500',
        ORCH_LEASE_RENEW_MS: '250',
        LOG_LEVEL: 'info',
      };
      // A freezes (timers and all) just before its first append, for far longer than its leases last.
      const a = spawnTracked('orchestrator', { ...env, ORCH_NAME: 'a', CAPSTAN_FAILPOINTS: 'orchestrator.before_append:stall:1', CAPSTAN_FAILPOINT_STALL_MS: '12000' });
      await sleep(1000);
      const b = spawnTracked('orchestrator', { ...env, ORCH_NAME: 'b' });
      spawnTracked('worker', { ...env, LOG_LEVEL: 'warn', NATS_CREDS: await issueCreds(url, t, Role.Worker, 'w1'), WORKER_CONCURRENCY: '50' });
      // Both hold a share before the load.
      for (let i = 0; i < 300 && !(taken(b) > 0 && a.output().includes('"partition given up"')); i++) await sleep(100);
      expect(taken(b)).toBeGreaterThan(0);

      const watch = await watchRuns(h, t);
      const runIds: RunId[] = await Promise.all(Array.from({ length: 40 }, (_, i) => h.client.submit(t, 'test.pipeline', { input: { ms: 10, i } })));
      await watch.waitAll(runIds, 60_000).catch((e: unknown) => process.stdout.write(`${String(e)}\n`));
      await watch.close();
      // B finished every run while A was frozen; A wakes up with decisions B overtook. Wait for its word.
      for (let i = 0; i < 200 && !a.output().includes('append refused in a partition'); i++) await sleep(100);
      const out = a.output();
      process.stdout.write(
        `stale owner: ${out
          .split('\n')
          .filter((l) => /failpoint|stepping down|fenced/.test(l))
          .slice(0, 6)
          .join('\n')}\n`,
      );
      expect(out).toContain('failpoint orchestrator.before_append: stall');
      // Its decisions, made before the freeze, were refused by the runs' expected sequences:
      // it steps down, or had given the partition up already when the refusal came back (its
      // lease renewal, due during the freeze, may run first when it wakes).
      expect(out).toMatch(/append refused in a partition this instance held: (stepping down|given up already)/);

      const c = await checkRuns(await h.jsm(t), t, runIds, registry);
      report('stale owner', c);
      expectSingleHistories(c, runIds.length);
    } finally {
      await h.close();
    }
  }, 80_000);
});

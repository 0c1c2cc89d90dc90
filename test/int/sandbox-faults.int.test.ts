/**
 * The sandbox service SIGKILLed while 50 sandboxed steps run (real Docker, real
 * processes). The engine's event stream is the independent witness: every container
 * create, rename (a claim) and start of this test's node is counted. Must hold: no
 * attempt's container is claimed or started twice, every run ends (completed, or failed
 * with a clear error), no container of the dead instance and no claimed container is left
 * a minute after the restart, and the checker finds 0 forks, 0 results recorded twice.
 */
import { join } from 'node:path';
import { afterAll, describe, expect, inject, it } from 'vitest';
import type Docker from 'dockerode';
import { createRegistry } from '@capstan/actors';
import { PROJECT_ROOT } from '@capstan/kit';
import { Labels } from '@capstan/sandbox';
import { Role, type RunId } from '@capstan/schemas';
import { connect, eventsOf, eventually, provision, spawnService, watchRuns, type ServiceProcess, issueCreds } from '../harness/fixtures.js';
import { checkRuns, report } from '../harness/checker.js';
import { dockerOrSkip } from '../harness/docker.js';
import { workflows } from '../fixtures/workflows.js';

const url = inject('natsUrl');
const docker = await dockerOrSkip();
const fixtures = join(PROJECT_ROOT, 'test', 'dist', 'fixtures', 'workflows.js');
const procs: ServiceProcess[] = [];
const spawnTracked = (...a: Parameters<typeof spawnService>) => {
  const p = spawnService(...a);
  procs.push(p);
  return p;
};

afterAll(async () => {
  await Promise.all(procs.splice(0).map((p) => p.kill('SIGTERM')));
});

describe.skipIf(!docker)('sandbox faults', () => {
  it('faults - sandbox service SIGKILLed with 50 sandboxed steps running: no container twice, no orphans, every run ends', async () => {
    const d = docker as Docker;
    const h = await connect(url);
    const t = await provision(h, 'kill-sbx');
    const node = `kill${Math.random().toString(36).slice(2, 8)}`;
    const env = { NATS_URL: url, CAPSTAN_TENANTS: t, CAPSTAN_WORKFLOWS: fixtures, CAPSTAN_HANDLERS: fixtures, SANDBOX_STEP_MS: '2000' };
    const sandboxEnv = { ...env, SANDBOX_NODE: node, SANDBOX_CONCURRENCY: '12', SANDBOX_POOL_MIN: '4', SANDBOX_POOL_MAX: '12', LOG_LEVEL: 'info' };

    // The engine's own record of what happened to this node's containers.
    const creates = new Map<string, number>();
    const claims = new Map<string, number>();
    const starts = new Map<string, number>();
    const bump = (m: Map<string, number>, k: string) => m.set(k, (m.get(k) ?? 0) + 1);
    const events = (await d.getEvents({ filters: { type: ['container'], label: [`${Labels.Node}=${node}`] } })) as NodeJS.ReadableStream;
    let buffered = '';
    events.on('data', (chunk: Buffer) => {
      buffered += chunk.toString();
      let nl = buffered.indexOf('\n');
      while (nl >= 0) {
        const e = JSON.parse(buffered.slice(0, nl)) as { Action: string; id: string; Actor: { Attributes: Record<string, string> } };
        buffered = buffered.slice(nl + 1);
        nl = buffered.indexOf('\n');
        const name = e.Actor.Attributes['name'] ?? '';
        if (e.Action === 'create') bump(creates, e.id);
        if (e.Action === 'start') bump(starts, e.id);
        // A claim is a create or a rename under an attempt's name.
        if ((e.Action === 'create' || e.Action === 'rename') && !name.startsWith('cap-pool-')) bump(claims, name);
      }
    });

    spawnTracked('orchestrator', env);
    spawnTracked('worker', { ...env, NATS_CREDS: await issueCreds(url, t, Role.Worker, 'w-sbx'), WORKER_SANDBOX_STALL_MS: '2000' });
    let sandbox = spawnTracked('sandbox', sandboxEnv);
    await new Promise((r) => setTimeout(r, 3000));

    const watch = await watchRuns(h, t);
    const runIds: RunId[] = await Promise.all(Array.from({ length: 50 }, (_, i) => h.client.submit(t, 'test.sandboxed', { input: { i } })));
    // Kill it once steps are running in its containers.
    await eventually('sandboxed steps running', () => Promise.resolve(claims.size >= 8 ? true : undefined), 60_000, 50);
    const claimedBeforeKill = claims.size;
    await sandbox.kill('SIGKILL');
    await new Promise((r) => setTimeout(r, 2000));
    const restartedAt = Date.now();
    sandbox = spawnTracked('sandbox', sandboxEnv);

    await watch.waitAll(runIds, 240_000);
    await watch.close();
    const c = await checkRuns(await h.jsm(t), t, runIds, createRegistry(workflows));

    // Orphans: a minute after the restart, only the live instance's idle pool may be left.
    const orphans = await eventually(
      'no orphaned sandboxes',
      async () => {
        const left = await d.listContainers({ all: true, filters: { label: [`${Labels.Node}=${node}`] } });
        const bad = left.filter((x) => !(x.Names[0] ?? '').startsWith('/cap-pool-'));
        const instances = new Set(left.map((x) => x.Labels[Labels.Instance]));
        return bad.length === 0 && instances.size <= 1 ? left : undefined;
      },
      Math.max(5_000, 60_000 - (Date.now() - restartedAt)),
      500,
    );
    events.removeAllListeners('data');
    (events as unknown as { destroy?: () => void }).destroy?.();

    const claimedTwice = [...claims].filter(([, n]) => n > 1).map(([k]) => k);
    const startedTwice = [...starts].filter(([, n]) => n > 1).length;
    const outcomes = [...watch.ended.values()].reduce<Record<string, number>>((m, s) => ((m[s] = (m[s] ?? 0) + 1), m), {});
    report('sandbox kill', c);
    process.stdout.write(
      `sandbox kill: claims before kill ${claimedBeforeKill}, claims ${claims.size}, containers created ${creates.size}, ` +
        `claimed twice ${claimedTwice.length}, started twice ${startedTwice}, outcomes ${JSON.stringify(outcomes)}, ` +
        `left after restart ${orphans.length} (all idle pool)\n`,
    );
    expect(claimedTwice).toEqual([]);
    expect(startedTwice).toBe(0);
    expect(watch.ended.size).toBe(50);
    expect(c.forks).toBe(0);
    expect(c.brokenChains).toBe(0);
    expect(c.resultsRecordedTwice).toBe(0);
    expect(c.replayMismatches).toBe(0);
    // Steps lost with the dead instance were retried as new attempts and completed.
    for (const [runId, how] of watch.ended) {
      if (how === 'run.completed') continue;
      const events = await eventsOf(h, t, runId as RunId);
      process.stdout.write(
        `sandbox kill: run ${runId} ${how}: ${events
          .filter((e) => e.type === 'step.failed' || e.type === 'run.failed')
          .map((e) => JSON.stringify(e.data))
          .join(' | ')}\n`,
      );
    }
    expect(c.completed).toBe(50);
    await h.close();
  }, 400_000);
});

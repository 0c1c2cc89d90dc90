/**
 * A 3-node JetStream cluster under W3-like load (runs of three mode-0 steps, sixteen at a
 * time): the run stream's leader node is SIGKILLed and started again three times, then one
 * node's store is wiped and the node rejoins empty. Every event the run stream delivered to a
 * reader (committed by a majority) must still be there at the end, unchanged; the checker
 * counts forks, broken chains and results recorded twice; every acknowledged run completes
 * exactly once.
 */
import { afterAll, describe, expect, it } from 'vitest';
import { rmSync } from 'node:fs';
import { join } from 'node:path';
import { DeliverPolicy, type JetStreamManager } from '@nats-io/jetstream';
import { createRegistry } from '@capstan/actors';
import { decodeEvent, newRunId, PROJECT_ROOT, startNatsCluster, type NatsCluster, type NatsServer } from '@capstan/kit';
import { Role, runIdOfSubject, Streams, Subjects, type RunId, type TenantId } from '@capstan/schemas';
import { connect, eventually, issueCreds, provision, randomTenant, runCli, spawnService, testAuthStore, type Harness, type ServiceProcess } from '../harness/fixtures.js';
import { checkRuns, report } from '../harness/checker.js';
import { workflows } from '../fixtures/workflows.js';

const fixtures = join(PROJECT_ROOT, 'test', 'dist', 'fixtures', 'workflows.js');
const procs: ServiceProcess[] = [];
let cluster: NatsCluster | undefined;
let h: Harness | undefined;

afterAll(async () => {
  await Promise.all(procs.map((p) => p.kill()));
  await h?.close();
  await cluster?.stop();
});

/** The node leading a stream now, once it has a leader and every replica is caught up. */
async function healthyLeader(jsm: JetStreamManager, stream: string, c: NatsCluster): Promise<NatsServer> {
  return eventually(
    `${stream} led with every replica current`,
    async () => {
      const info = await jsm.streams.info(stream);
      const cl = info.cluster;
      if (!cl?.leader || (cl.replicas ?? []).length !== 2 || (cl.replicas ?? []).some((r) => !r.current || r.offline)) return undefined;
      return c.node(cl.leader);
    },
    60_000,
    200,
  );
}

/** Every event a reader of the run stream was handed (a majority had stored it), by run. */
async function recordCommitted(h: Harness, t: TenantId) {
  const seen = new Map<string, Map<number, string>>();
  const consumer = await (await h.js(t)).consumers.get(Streams.runs(t), { filter_subjects: [Subjects.allRuns(t)], deliver_policy: DeliverPolicy.All });
  // Short heartbeats: the reader notices a dead leader in a second and resumes where it was.
  const messages = await consumer.consume({ expires: 2000 });
  void (async () => {
    for await (const m of messages) {
      const e = decodeEvent(m);
      const runId = runIdOfSubject(m.subject) ?? '';
      const byRun = seen.get(runId) ?? new Map<number, string>();
      byRun.set(e.seq, `${e.type}:${e.at}:${e.causationId}`);
      seen.set(runId, byRun);
    }
  })();
  return { seen, close: () => messages.close() };
}

describe('cluster faults', () => {
  it('cluster - capstan tenant add places streams by replicas and tags; what the cluster cannot hold is placement_invalid, nothing made', async () => {
    cluster ??= await startNatsCluster({ auth: await testAuthStore() });
    const nats = ['--nats', cluster.urls];
    const t = randomTenant('cl-place');
    const ok = await runCli(['tenant', 'add', t, '--replicas', '3', '--placement', 'node:1,node:2', ...nats, '--json']);
    // Only two nodes carry node:1 or node:2 each, none both: three replicas tagged both cannot be placed.
    expect(ok.code).toBe(1);
    expect(ok.err).toMatch(/placement_invalid/);
    const refused = await Promise.all(
      [
        ['--replicas', '5'],
        ['--replicas', '2'],
        ['--replicas', '3', '--placement', 'az:1'],
        ['--placement', 'no such tag!'],
      ].map((f) => runCli(['tenant', 'add', t, ...f, ...nats])),
    );
    for (const r of refused) expect(r.err, r.err).toMatch(/placement_invalid/);
    const placed = await runCli(['tenant', 'add', t, '--replicas', '3', ...nats, '--json']);
    expect(placed.code, placed.err).toBe(0);
    expect(JSON.parse(placed.out)).toMatchObject({ tenant: t, placement: { replicas: 3, tags: [] } });
    const one = await runCli(['tenant', 'add', randomTenant('cl-one'), '--placement', 'az:2', ...nats, '--json']);
    expect(one.code, one.err).toBe(0);
    h ??= await connect(cluster.urls);
    const jsm = await h.jsm(t);
    for (const s of [Streams.runs(t), Streams.commands(t), Streams.work(t), Streams.fleet(t), Streams.catalog(t)]) expect((await jsm.streams.info(s)).config.num_replicas).toBe(3);
    // Run again without flags: the recorded placement stays.
    expect(JSON.parse((await runCli(['tenant', 'add', t, ...nats, '--json'])).out)).toMatchObject({ placement: { replicas: 3 } });
  }, 120_000);

  it('faults - stream leader SIGKILLed and restarted three times, then a node wiped: 0 committed events lost, 0 forks, every run once', async () => {
    cluster ??= await startNatsCluster({ auth: await testAuthStore() });
    h ??= await connect(cluster.urls);
    const consumers = { orchestratorAckWaitMs: 2000, workAckWaitMs: 5000 };
    const t = await provision(h, 'cl-faults', { consumers, placement: { replicas: 3, tags: [] } });
    const jsm = await h.jsm(t);
    for (const s of [Streams.runs(t), Streams.commands(t), Streams.work(t)]) expect((await jsm.streams.info(s)).config.num_replicas).toBe(3);

    const env = { NATS_URL: cluster.urls, CAPSTAN_TENANTS: t, CAPSTAN_WORKFLOWS: fixtures, CAPSTAN_HANDLERS: fixtures };
    procs.push(
      spawnService('orchestrator', env),
      spawnService('worker', { ...env, NATS_CREDS: await issueCreds(cluster.urls, t, Role.Worker, 'w-cl', { consumers }), WORKER_CONCURRENCY: '64' }),
    );
    await new Promise((r) => setTimeout(r, 1500));
    const committed = await recordCommitted(h, t);

    // Sixteen lanes, each a run of three short steps after another, until the faults are over.
    const acked: RunId[] = [];
    let faulting = true;
    let submitErrors = 0;
    const lanes = Array.from({ length: 16 }, async (_, lane) => {
      for (let i = 0; faulting; i++) {
        const runId = newRunId();
        // A submit that timed out during a failover is retried under the same run id (deduplicated).
        for (let attempt = 0; ; attempt++) {
          try {
            await h!.client.submit(t, 'test.pipeline', { runId, input: { ms: 5, lane, i } });
            acked.push(runId);
            break;
          } catch (e) {
            submitErrors++;
            // An election after a leader's kill (or a wiped node's catch-up) can leave the
            // stream without a leader for several seconds on a slow machine: retry for 30 s.
            if (attempt >= 120) throw e;
            await new Promise((r) => setTimeout(r, 250));
          }
        }
        await h!.client.waitForEnd(t, runId, 60_000).catch(() => undefined);
      }
    });

    const kills: string[] = [];
    let ackedAtFirstKill = -1;
    await new Promise((r) => setTimeout(r, 1000));
    for (let k = 0; k < 3; k++) {
      const leader = await healthyLeader(jsm, Streams.runs(t), cluster);
      const before = acked.length;
      if (ackedAtFirstKill < 0) ackedAtFirstKill = before;
      await leader.kill();
      kills.push(leader.name);
      await new Promise((r) => setTimeout(r, 1500));
      await leader.restart();
      process.stdout.write(`killed leader ${leader.name} (runs acknowledged before: ${before})\n`);
      await new Promise((r) => setTimeout(r, 1000));
    }
    // A node loses its whole store (JetStream and account JWTs) and rejoins empty.
    const victim = cluster.node((await healthyLeader(jsm, Streams.runs(t), cluster)).name === 'n1' ? 'n2' : 'n1');
    await victim.kill();
    rmSync(join(victim.storeDir, 'js'), { recursive: true, force: true });
    rmSync(join(victim.storeDir, 'jwt'), { recursive: true, force: true });
    await new Promise((r) => setTimeout(r, 1000));
    await victim.restart();
    await healthyLeader(jsm, Streams.runs(t), cluster);
    await new Promise((r) => setTimeout(r, 1500));
    faulting = false;
    await Promise.all(lanes);
    // Every acknowledged run to its end, and every replica caught up before reading back.
    for (const runId of acked) await h.client.waitForEnd(t, runId, 60_000);
    await healthyLeader(jsm, Streams.runs(t), cluster);
    await eventually(
      'the reader caught up',
      () => Promise.resolve(acked.every((r) => [...(committed.seen.get(r)?.values() ?? [])].some((v) => v.startsWith('run.completed:'))) ? true : undefined),
      60_000,
    );
    await committed.close();

    const c = await checkRuns(jsm, t, acked, createRegistry(workflows));
    report('cluster leader kills and a wiped node', c);
    let lost = 0;
    let changed = 0;
    for (const [runId, bySeq] of committed.seen) {
      const now = new Map((c.eventsByRun.get(runId as RunId) ?? []).map((e) => [e.seq, `${e.type}:${e.at}:${e.causationId}`]));
      for (const [seq, v] of bySeq) {
        if (!now.has(seq)) lost++;
        else if (now.get(seq) !== v) changed++;
      }
    }
    process.stdout.write(`kills=${kills.join(',')} wiped=${victim.name} runs=${acked.length} submitRetries=${submitErrors} committedLost=${lost} committedChanged=${changed}\n`);
    expect(kills).toHaveLength(3);
    // Runs were submitted and completed across the faults, not only before them.
    expect(ackedAtFirstKill).toBeGreaterThan(0);
    expect(acked.length).toBeGreaterThan(ackedAtFirstKill);
    expect(lost).toBe(0);
    expect(changed).toBe(0);
    expect(c.completed).toBe(acked.length);
    expect(c.forks + c.brokenChains + c.resultsRecordedTwice + c.startsRecordedTwice + c.replayMismatches + c.foreignEvents).toBe(0);
    for (const events of c.eventsByRun.values()) {
      expect(events.filter((e) => e.type === 'run.started')).toHaveLength(1);
      expect(events.filter((e) => e.type === 'step.completed')).toHaveLength(3);
      expect(events.filter((e) => e.type === 'run.completed')).toHaveLength(1);
    }
    for (const p of procs) expect(p.output()).not.toMatch(/"level":60/);
  }, 180_000);
});

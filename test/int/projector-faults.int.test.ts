/**
 * Fault tests of the projector: the projector process SIGKILLed in a loop (and killing
 * itself at failpoints around its commit) while runs flow, and its Postgres crashed,
 * restarted and stopped for 30 s. Each ends with the projection checked event by event
 * against the streams: nothing lost, nothing applied twice.
 */
import { afterEach, describe, expect, inject, it } from 'vitest';
import { sql } from 'drizzle-orm';
import { openDatabase, projectionLag, queryRows, readRun, type Database } from '@capstan/kit';
import { Streams, type RunId, type TenantId, Role } from '@capstan/schemas';
import { createProjector, loadConfig, verifyProjections, type ProjectorApp } from '@capstan/projector';
import { connect, eventually, provision, silent, spawnService, startServices, watchRuns, type Harness, type ServiceProcess, serviceEnv } from '../harness/fixtures.js';
import { scratchDatabase, startPostgres } from '../harness/postgres.js';

const cleanups: (() => Promise<unknown>)[] = [];
// Stopping a private Postgres cluster and the services on a busy machine can take a while.
afterEach(async () => {
  for (const c of cleanups.splice(0).reverse()) {
    const started = Date.now();
    // A cleanup that hangs is named and left behind after 45 s (the hook once timed out with
    // no word of which part hung); the test's own assertions have already run.
    let timer: NodeJS.Timeout | undefined;
    const hung = new Promise<'hung'>((r) => (timer = setTimeout(() => r('hung'), 45_000)));
    const outcome = await Promise.race([c().catch((e: unknown) => process.stdout.write(`cleanup: ${String(e)}\n`)), hung]);
    clearTimeout(timer);
    if (outcome === 'hung') process.stdout.write(`cleanup still running after 45 s, left behind: ${c.toString().slice(0, 120)}\n`);
    // A slow cleanup is named, so a hang points at its part.
    else if (Date.now() - started > 10_000) process.stdout.write(`cleanup took ${Date.now() - started} ms: ${c.toString().slice(0, 80)}\n`);
  }
}, 180_000);

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

/**
 * Checks the projection of a tenant event by event: every run's event rows are exactly its
 * stream's (same count, seqs 1..n, each stream seq once), the checkpoint is the stream's
 * last sequence, and the verifier (which also compares attempts and chain digests, both of
 * which an event applied twice would change) finds nothing.
 */
async function checkExactlyOnce(name: string, h: Harness, d: Database, t: TenantId, runIds: readonly RunId[]) {
  const perRun = await queryRows<{ run_id: string; n: number; min: number; max: number; distinct_stream: number }>(
    d,
    sql`select run_id, count(*)::int as n, min(seq)::int as min, max(seq)::int as max, count(distinct stream_seq)::int as distinct_stream from events where tenant = ${t} group by run_id`,
  );
  const rows = new Map(perRun.map((r) => [r.run_id, r]));
  let streamEvents = 0;
  let gaps = 0;
  let duplicates = 0;
  for (const r of runIds) {
    const { events } = await readRun(await h.jsm(t), t, r);
    streamEvents += events.length;
    const row = rows.get(r);
    if (!row || row.n !== events.length || row.min !== 1 || row.max !== events.length) gaps++;
    if (row && row.distinct_stream !== row.n) duplicates++;
  }
  const [dup] = await queryRows<{ events: number; audit: number }>(
    d,
    sql`select (select count(*) - count(distinct (run_id, seq)) from events where tenant = ${t})::int as events,
               (select count(*) - count(distinct (run_id, seq)) from audit_log where tenant = ${t})::int as audit`,
  );
  duplicates += (dup?.events ?? 0) + (dup?.audit ?? 0);
  const [lag] = await projectionLag(d, h, [t]);
  const report = await verifyProjections(d, (x) => h.jsm(x), [t]);
  const rowEvents = perRun.reduce((n, r) => n + r.n, 0);
  process.stdout.write(
    `exactly-once[${name}]: runs=${runIds.length} streamEvents=${streamEvents} eventRows=${rowEvents} gaps=${gaps} duplicates=${duplicates} ` +
      `checkpoint=${lag?.checkpoint}/${lag?.streamLastSeq} verify ok=${report.ok} mismatches=${report.mismatches.length} brokenChains=${report.brokenChains.length}\n`,
  );
  for (const m of report.mismatches.slice(0, 10)) process.stdout.write(`  mismatch ${JSON.stringify(m)}\n`);
  expect(gaps).toBe(0);
  expect(duplicates).toBe(0);
  expect(rowEvents).toBe(streamEvents);
  expect(lag?.checkpoint).toBe(lag?.streamLastSeq);
  expect(report.mismatches).toEqual([]);
  expect(report.brokenChains).toEqual([]);
  expect(report.ok).toBe(true);
}

describe('projector faults', () => {
  it('projector faults - the projector process SIGKILLed every ~2 s and at failpoints while 200 runs flow: 0 duplicates, 0 gaps', async () => {
    const url = inject('natsUrl');
    const h = await connect(url);
    cleanups.push(() => h.close());
    const t = await provision(h, 'proj-kill', { consumers: { projectorAckWaitMs: 1000, projectorMaxAckPending: 256 } });
    const scratch = await scratchDatabase('projkill');
    cleanups.push(() => scratch.drop());
    const d = await openDatabase({ url: scratch.url, log: silent });
    cleanups.push(() => d.close());
    const services = await startServices(url, [t]);
    cleanups.push(() => services.stop());

    const env = {
      NATS_URL: url,
      DATABASE_URL: scratch.url,
      CAPSTAN_TENANTS: t,
      PROJECTOR_BATCH: '64',
      CAPSTAN_FAILPOINTS: 'projector.after_commit_before_ack:kill:0.1,projector.before_commit:kill:0.05',
    };
    // A supervisor: whatever ends a projector process, another one starts.
    let proc: ServiceProcess = spawnService('projector', env);
    let supervising = true;
    let starts = 1;
    let failpointDeaths = 0;
    const supervisor = (async () => {
      while (supervising) {
        const p = proc;
        await p.exited;
        failpointDeaths += (p.output().match(/failpoint projector\.[a-z_]+: SIGKILL/g) ?? []).length;
        if (!supervising) break;
        proc = spawnService('projector', env);
        starts++;
      }
    })();
    cleanups.push(async () => {
      supervising = false;
      await proc.kill('SIGKILL');
      await supervisor;
    });

    const watch = await watchRuns(h, t);
    const runIds: RunId[] = [];
    let submitting = true;
    const submitter = (async () => {
      for (let i = 0; i < 25; i++) {
        runIds.push(...(await Promise.all(Array.from({ length: 8 }, (_, j) => h.client.submit(t, 'test.pipeline', { input: { ms: 30, i: i * 8 + j } })))));
        await sleep(500);
      }
      submitting = false;
    })();
    let kills = 0;
    while (submitting) {
      await sleep(1800 + Math.random() * 400);
      await proc.kill('SIGKILL');
      kills++;
    }
    await submitter;
    await watch.waitAll(runIds, 60_000);
    await watch.close();
    // Caught up, with failpoints still on: the supervisor keeps restarting what they kill.
    await eventually(
      'projection caught up',
      async () => {
        const [l] = await projectionLag(d, h, [t]);
        return l && l.lag === 0 ? l : undefined;
      },
      60_000,
      200,
    );
    supervising = false;
    await proc.kill('SIGTERM');
    await supervisor;
    process.stdout.write(`projector kill-loop: kills=${kills} failpointDeaths=${failpointDeaths} processStarts=${starts}\n`);
    expect(kills).toBeGreaterThan(3);
    expect(failpointDeaths).toBeGreaterThan(0);
    expect(runIds).toHaveLength(200);
    await checkExactlyOnce('kill-loop', h, d, t, runIds);
  }, 150_000);

  it('projector faults - Postgres crashed and restarted mid-flow, then stopped for 30 s: the projector catches up exactly once', async () => {
    const url = inject('natsUrl');
    const h = await connect(url);
    cleanups.push(() => h.close());
    const t = await provision(h, 'proj-pg', { consumers: { projectorAckWaitMs: 2000 } });
    const pg = await startPostgres();
    cleanups.push(() => pg.destroy());
    const d = await openDatabase({ url: pg.url, log: silent });
    cleanups.push(() => d.close());
    const services = await startServices(url, [t]);
    cleanups.push(() => services.stop());
    const projector: ProjectorApp = await createProjector(loadConfig({ ...(await serviceEnv(url, Role.Projector)), DATABASE_URL: pg.url, CAPSTAN_TENANTS: t }), silent);
    await projector.start();
    cleanups.push(() => projector.stop());

    const watch = await watchRuns(h, t);
    const runIds: RunId[] = [];
    let submitting = true;
    const submitter = (async () => {
      for (let i = 0; submitting; i++) {
        runIds.push(...(await Promise.all(Array.from({ length: 4 }, (_, j) => h.client.submit(t, 'test.pipeline', { input: { ms: 10, i: i * 4 + j } })))));
        await sleep(500);
      }
    })();
    const lastSeq = async () => (await (await h.jsm(t)).streams.info(Streams.runs(t))).state.last_seq;

    await sleep(3000);
    const atCrash = projector.stats()[t]?.checkpoint ?? 0;
    // A transaction in flight when Postgres dies: its connection is checked out of the pool,
    // and losing it must fail the transaction, not end the process (an unheard 'error').
    const inFlight = d.db
      .transaction(async (tx) => {
        await tx.execute(sql`select pg_sleep(30)`);
      })
      .then(
        () => 'committed',
        (e: unknown) => e,
      );
    await sleep(200);
    await pg.kill();
    expect(await inFlight).toBeInstanceOf(Error);
    await pg.start();
    await sleep(3000);
    const atStop = { checkpoint: projector.stats()[t]?.checkpoint ?? 0, stream: await lastSeq() };
    await pg.stop();
    await sleep(30_000);
    const duringOutage = { checkpoint: projector.stats()[t]?.checkpoint ?? 0, stream: await lastSeq() };
    await pg.start();
    await sleep(2000);
    submitting = false;
    await submitter;
    await watch.waitAll(runIds, 60_000);
    await watch.close();
    const caught = await eventually(
      'projection caught up after the outage',
      async () => {
        const [l] = await projector.lag();
        return l && l.lag === 0 ? l : undefined;
      },
      60_000,
      200,
    );
    const stats = projector.stats()[t];
    process.stdout.write(
      `postgres outage: checkpoint at crash=${atCrash}, at stop=${atStop.checkpoint}/${atStop.stream}, after 30 s down=${duringOutage.checkpoint}/${duringOutage.stream}, ` +
        `final=${caught.checkpoint}/${caught.streamLastSeq}; runs=${runIds.length} stats=${JSON.stringify(stats)}\n`,
    );
    // The outage was real and mid-flow: events went on arriving, nothing was applied meanwhile,
    // and the projector retried rather than died.
    expect(atCrash).toBeGreaterThan(0);
    expect(duringOutage.stream).toBeGreaterThan(atStop.stream);
    expect(duringOutage.checkpoint).toBeLessThan(duringOutage.stream);
    expect(stats?.retries).toBeGreaterThan(0);
    // …with backoff (250 ms doubling to 5 s), not in a hot loop.
    expect(stats?.retries).toBeLessThan(60);
    await checkExactlyOnce('postgres outage', h, d, t, runIds);
  }, 150_000);
});

/**
 * The projector against a real nats-server and Postgres: 500 runs across three tenants
 * projected exactly as a fold of their streams (and fenced by tenant), a poison message
 * dead-lettered without stopping the projection, a rebuild that reproduces the live rows,
 * and a verifier that pinpoints a tampered row and a missing event.
 */
import { afterAll, beforeAll, describe, expect, inject, it } from 'vitest';
import { and, asc, eq, sql } from 'drizzle-orm';
import { appendBatch, getRun, newRunId, openDatabase, queryRows, readRun, type Database } from '@capstan/kit';
import { Consumers, db as schema, ErrorCode, EVENT_ENVELOPE_VERSION, Streams, Subjects, type RunEvent, type RunEventBody, type RunId, type TenantId, Role } from '@capstan/schemas';
import { applyBatch, createProjector, loadConfig, rebuildProjections, verifyProjections, type ProjectorApp, type VerifyReport } from '@capstan/projector';
import { connect, eventually, provision, silent, startServices, watchRuns, type Harness, type InProcessServices, serviceEnv } from '../harness/fixtures.js';
import { scratchDatabase } from '../harness/postgres.js';

const RUNS = 500;

/** Counts of a tenant's run stream: runs, run events, scheduled attempts. */
async function streamCounts(h: Harness, t: TenantId, runIds: readonly RunId[]) {
  let events = 0;
  let scheduled = 0;
  for (const r of runIds) {
    const { events: evs } = await readRun(await h.jsm(t), t, r);
    events += evs.length;
    scheduled += evs.filter((e) => e.type === 'step.scheduled').length;
  }
  return { runs: runIds.length, events, scheduled };
}

async function rowCounts(d: Database, t: TenantId) {
  const [row] = await queryRows<{ runs: number; events: number; steps: number; approvals: number; audit: number; search: number }>(
    d,
    sql`select (select count(*)::int from runs where tenant = ${t}) as runs,
               (select count(*)::int from events where tenant = ${t}) as events,
               (select count(*)::int from steps where tenant = ${t}) as steps,
               (select count(*)::int from approvals where tenant = ${t}) as approvals,
               (select count(*)::int from audit_log where tenant = ${t} and run_id <> '') as audit,
               (select count(*)::int from run_search where tenant = ${t}) as search`,
  );
  return row;
}

/** Every projection row of a tenant, ordered, for comparing two projections. */
async function tableContents(d: Database, t: TenantId) {
  const { runs, runSearch, steps, events, approvals, auditLog, deadLetters } = schema;
  return {
    runs: await d.db.select().from(runs).where(eq(runs.tenant, t)).orderBy(asc(runs.runId)),
    search: await d.db.select().from(runSearch).where(eq(runSearch.tenant, t)).orderBy(asc(runSearch.runId), asc(runSearch.key)),
    steps: await d.db.select().from(steps).where(eq(steps.tenant, t)).orderBy(asc(steps.runId), asc(steps.step), asc(steps.attempt)),
    events: await d.db.select().from(events).where(eq(events.tenant, t)).orderBy(asc(events.runId), asc(events.seq)),
    approvals: await d.db.select().from(approvals).where(eq(approvals.tenant, t)).orderBy(asc(approvals.runId), asc(approvals.step)),
    audit: await d.db.select().from(auditLog).where(eq(auditLog.tenant, t)).orderBy(asc(auditLog.id)),
    // Numbered and stamped by the database when inserted: compared without those.
    deadLetters: (await d.db.select().from(deadLetters).where(eq(deadLetters.tenant, t)).orderBy(asc(deadLetters.streamSeq))).map(({ id: _id, at: _at, ...r }) => r),
  };
}

function printReport(name: string, r: VerifyReport): void {
  const per = r.tenants.map((x) => `${x.tenant}: runs=${x.runs} events=${x.events} checkpoint=${x.checkpoint}/${x.streamLastSeq} deadLetters=${x.deadLetters}`).join('; ');
  process.stdout.write(`verify[${name}]: ok=${r.ok} mismatches=${r.mismatches.length} brokenChains=${r.brokenChains.length} (${per}) in ${r.elapsedMs.toFixed(0)} ms\n`);
}

describe('projector', () => {
  let h: Harness;
  let scratch: Awaited<ReturnType<typeof scratchDatabase>>;
  let d: Database;
  let services: InProcessServices;
  let projector: ProjectorApp;
  const tenants: TenantId[] = [];
  const runsOf = new Map<TenantId, RunId[]>();

  const caughtUp = (what: string) =>
    eventually(
      what,
      async () => {
        const lag = await projector.lag();
        return lag.length === tenants.length && lag.every((l) => l.lag === 0) ? lag : undefined;
      },
      60_000,
      100,
    );

  beforeAll(async () => {
    const url = inject('natsUrl');
    h = await connect(url);
    for (const p of ['proj-a', 'proj-b', 'proj-c']) tenants.push(await provision(h, p));
    scratch = await scratchDatabase('projector');
    d = await openDatabase({ url: scratch.url, log: silent });
    services = await startServices(url, tenants);
    const config = loadConfig({ ...(await serviceEnv(url, Role.Projector)), DATABASE_URL: scratch.url, CAPSTAN_TENANTS: tenants.join(','), PROJECTOR_DISCOVERY_MS: '200' });
    projector = await createProjector(config, silent, { database: d });
    await projector.start();
  });

  afterAll(async () => {
    await projector?.stop();
    await services?.stop();
    await h?.close();
    await d?.close();
    await scratch?.drop();
  });

  it('projector - 500 runs across 3 tenants: checkpoints reach the streams, rows are a fold of the streams, tenants fenced', async () => {
    const t0 = Date.now();
    const watches = await Promise.all(tenants.map((t) => watchRuns(h, t)));
    const signalRuns: [TenantId, RunId, 'signal' | 'cancel'][] = [];
    await Promise.all(
      tenants.map(async (t, ti) => {
        const n = Math.floor(RUNS / tenants.length) + (ti < RUNS % tenants.length ? 1 : 0);
        const ids = await Promise.all(
          Array.from({ length: n }, (_, i) => {
            // Mostly plain pipelines; some with search fields, retries, a timeout, signals and cancels.
            if (i < 10) return h.client.submit(t, 'demo.pipeline', { input: { customer: `c-${i % 3}` } });
            if (i < 16) return h.client.submit(t, 'demo.flaky');
            if (i < 17) return h.client.submit(t, 'test.timeout');
            if (i < 27) return h.client.submit(t, 'demo.signal');
            return h.client.submit(t, 'test.pipeline', { input: { ms: 0, i } });
          }),
        );
        runsOf.set(t, ids);
        ids.slice(17, 27).forEach((r, i) => signalRuns.push([t, r, i < 7 ? 'signal' : 'cancel']));
      }),
    );
    // Signal runs wait for their signal (or are cancelled while waiting).
    await Promise.all(
      signalRuns.map(async ([t, r, what]) => {
        await eventually(`${r} waiting`, async () => ((await readRun(await h.jsm(t), t, r)).events.some((e) => e.type === 'step.waiting') ? true : undefined), 30_000);
        if (what === 'signal') await h.client.signal(t, r, 'approve', { by: 'alice', note: 'looks right' });
        else await h.client.cancel(t, r, 'not needed');
      }),
    );
    await Promise.all(watches.map((w, i) => w.waitAll(runsOf.get(tenants[i] as TenantId) ?? [], 60_000)));
    await Promise.all(watches.map((w) => w.close()));
    const flowMs = Date.now() - t0;

    const lag = await caughtUp('projection caught up');
    for (const l of lag) expect(l.checkpoint).toBe(l.streamLastSeq);
    const report = await verifyProjections(d, h.jsm, tenants);
    printReport('500 runs', report);
    expect(report.mismatches).toEqual([]);
    expect(report.brokenChains).toEqual([]);
    expect(report.ok).toBe(true);

    for (const t of tenants) {
      const ids = runsOf.get(t) ?? [];
      const s = await streamCounts(h, t, ids);
      const rows = await rowCounts(d, t);
      process.stdout.write(
        `projector[${t}]: stream runs=${s.runs} events=${s.events} attempts=${s.scheduled}; rows runs=${rows?.runs} events=${rows?.events} steps=${rows?.steps} approvals=${rows?.approvals} audit=${rows?.audit} search=${rows?.search}\n`,
      );
      expect(rows).toEqual({ runs: s.runs, events: s.events, steps: s.scheduled, approvals: 10, audit: 10, search: 10 });
      const statuses = await queryRows<{ status: string; n: number }>(d, sql`select status, count(*)::int as n from runs where tenant = ${t} group by status order by status`);
      expect(statuses).toEqual([
        { status: 'cancelled', n: 3 },
        { status: 'completed', n: ids.length - 3 },
      ]);
      const audit = await queryRows<{ kind: string; actor: string | null; detail: unknown }>(
        d,
        sql`select kind, actor, detail from audit_log where tenant = ${t} order by kind, stream_seq`,
      );
      expect(audit.filter((a) => a.kind === 'run.signaled').map((a) => [a.actor, a.detail])).toEqual(Array.from({ length: 7 }, () => ['alice', { name: 'approve' }]));
      expect(audit.filter((a) => a.kind === 'run.cancel-requested').map((a) => a.detail)).toEqual(Array.from({ length: 3 }, () => ({ reason: 'not needed' })));
      // No payload value reached the audit log.
      expect(JSON.stringify(audit)).not.toContain('looks right');
      // The hung attempt ended by the worker's deadline or by the durable timeout timer, whichever came first.
      const hung = await queryRows<{ outcome: string; error_code: string | null }>(
        d,
        sql`select outcome, error_code from steps where tenant = ${t} and step = 'hang' order by attempt`,
      );
      expect(hung.map((x) => x.outcome)).toEqual([hung[0]?.outcome === 'timed_out' ? 'timed_out' : 'failed', 'completed']);
      if (hung[0]?.outcome === 'failed') expect(hung[0].error_code).toBe('step_timeout');
    }

    // A tenant's queries never reach another tenant's run, even by its exact id.
    const [ta, tb] = tenants as [TenantId, TenantId];
    const foreign = (runsOf.get(tb) ?? [])[0] as RunId;
    await expect(getRun(d, ta, foreign)).rejects.toMatchObject({ code: ErrorCode.RunNotFound });
    expect((await getRun(d, tb, foreign)).run.runId).toBe(foreign);
    for (const table of [schema.runs, schema.steps, schema.events, schema.approvals, schema.runSearch, schema.auditLog]) {
      const rows = await d.db
        .select()
        .from(table)
        .where(and(eq(table.tenant, ta), eq(table.runId, foreign)));
      expect(rows).toEqual([]);
    }
    process.stdout.write(`projector: ${RUNS} runs over ${tenants.length} tenants in ${flowMs} ms; stats ${JSON.stringify(projector.stats())}\n`);
  }, 120_000);

  it('projector - an undecodable message on a run subject becomes a dead letter with its stream seq, and projection goes on', async () => {
    const t = tenants[0] as TenantId;
    const garbageRun = newRunId();
    const ack = await (await h.js(t)).publish(Subjects.run(t, garbageRun), new Uint8Array([0xc1, 0xde, 0xad, 0xbe, 0xef]));
    const after = await h.client.submit(t, 'test.pipeline', { input: { ms: 0 } });
    await h.client.waitForEnd(t, after, 30_000);
    await caughtUp('projection past the poison');
    const dead = await d.db.select().from(schema.deadLetters).where(eq(schema.deadLetters.tenant, t));
    process.stdout.write(`dead letters of ${t}: ${JSON.stringify(dead.map((r) => [r.streamSeq, r.code, r.message]))}\n`);
    expect(dead).toHaveLength(1);
    expect(dead[0]).toMatchObject({ stream: Streams.runs(t), streamSeq: ack.seq, subject: Subjects.run(t, garbageRun), code: ErrorCode.DecodeFailed });
    expect(dead[0]?.message).toMatch(/cannot decode/);
    // The run submitted after it is projected in full; the garbage made no run.
    const [run] = await d.db
      .select()
      .from(schema.runs)
      .where(and(eq(schema.runs.tenant, t), eq(schema.runs.runId, after)));
    expect(run?.status).toBe('completed');
    expect(run?.lastStreamSeq).toBeGreaterThan(ack.seq);
    expect(
      await d.db
        .select()
        .from(schema.runs)
        .where(and(eq(schema.runs.tenant, t), eq(schema.runs.runId, garbageRun))),
    ).toEqual([]);
    runsOf.get(t)?.push(after);
    const report = await verifyProjections(d, h.jsm, [t]);
    printReport('after poison', report);
    expect(report.ok).toBe(true);
  }, 60_000);

  it('projector - a valid event whose row Postgres refuses is dead-lettered alone; its batch and its run go on', async () => {
    const t = tenants[2] as TenantId;
    const runId = newRunId();
    const at = Date.now();
    const bodies: RunEventBody[] = [
      { type: 'run.started', data: { workflow: 'test.pipeline', version: 1, input: {} } },
      { type: 'step.scheduled', data: { step: 'one', attempt: 1, handler: 'test.pipeline.one', mode: 0, pool: 'default', timeoutMs: 20_000 } },
      // A valid event, but steps.duration_ms is a 32-bit integer.
      { type: 'step.completed', data: { step: 'one', attempt: 1, worker: 'w-big', result: { ok: true }, durationMs: 3_000_000_000 } },
      { type: 'run.completed', data: { output: { ok: true } } },
    ];
    const events = bodies.map((b, i) => ({ v: EVENT_ENVELOPE_VERSION, ...b, runId, seq: i + 1, at: at + i, causationId: `test:${i}` }) as RunEvent);
    const [out] = await appendBatch(await h.nc(t), t, [{ runId, expectedLastSubjectSeq: 0, events }]);
    expect(out?.ok).toBe(true);
    const lastSeq = out?.ok ? out.lastStreamSeq : 0;
    await caughtUp('projection past the refused event');
    const dead = await d.db.select().from(schema.deadLetters).where(eq(schema.deadLetters.tenant, t));
    process.stdout.write(`dead letters of ${t}: ${JSON.stringify(dead.map((r) => [r.streamSeq, r.code, r.message]))}\n`);
    expect(dead.map((r) => [r.streamSeq, r.code])).toEqual([[lastSeq - 1, ErrorCode.SchemaViolation]]);
    expect(dead[0]?.message).toMatch(/out of range/);
    const [run] = await d.db
      .select()
      .from(schema.runs)
      .where(and(eq(schema.runs.tenant, t), eq(schema.runs.runId, runId)));
    expect([run?.status, run?.lastSeq, run?.lastStreamSeq]).toEqual(['completed', 4, lastSeq]);
    const steps = await d.db
      .select()
      .from(schema.steps)
      .where(and(eq(schema.steps.tenant, t), eq(schema.steps.runId, runId)));
    expect(steps.map((x) => x.outcome)).toEqual(['scheduled']);
    const report = await verifyProjections(d, h.jsm, [t]);
    printReport('after refused event', report);
    expect(report.ok).toBe(true);
    expect(report.tenants[0]?.deadLetters).toBe(1);
  }, 60_000);

  it('projector - a rebuild from scratch, while the live projector runs, yields the same rows', async () => {
    const before = await Promise.all(tenants.map((t) => tableContents(d, t)));
    const result = await rebuildProjections(d, h.jsm, tenants);
    process.stdout.write(
      `rebuild: ${result.messages} messages of ${tenants.length} tenants in ${result.elapsedMs.toFixed(0)} ms (${result.tenants.map((r) => `${r.tenant}=${r.messages}/${r.elapsedMs.toFixed(0)}ms`).join(', ')})\n`,
    );
    const after = await Promise.all(tenants.map((t) => tableContents(d, t)));
    for (let i = 0; i < tenants.length; i++) {
      const b = before[i];
      const a = after[i];
      expect(a?.runs.length).toBeGreaterThan(100);
      expect(a).toEqual(b);
    }
    expect(result.messages).toBe(before.reduce((n, b) => n + b.events.length + b.deadLetters.length, 0));
    const lag = await projector.lag();
    for (const l of lag) expect(result.tenants.find((r) => r.tenant === l.tenant)?.checkpoint).toBe(l.checkpoint);
    expect((await verifyProjections(d, h.jsm, tenants)).ok).toBe(true);
  }, 60_000);

  it('projector - verify pinpoints a tampered run row and a missing event row', async () => {
    const t = tenants[1] as TenantId;
    const [tampered, gapped] = (runsOf.get(t) ?? []).slice(30, 32) as [RunId, RunId];
    await d.db.execute(sql`update runs set status = 'failed' where tenant = ${t} and run_id = ${tampered}`);
    await d.db.execute(sql`delete from events where tenant = ${t} and run_id = ${gapped} and seq = 3`);
    const report = await verifyProjections(d, h.jsm, tenants);
    printReport('tampered', report);
    for (const m of report.mismatches) process.stdout.write(`  mismatch ${JSON.stringify(m)}\n`);
    for (const c of report.brokenChains) process.stdout.write(`  broken chain ${JSON.stringify(c)}\n`);
    expect(report.ok).toBe(false);
    expect(report.mismatches).toEqual([
      { tenant: t, runId: tampered, table: 'runs', key: '', field: 'status', expected: 'completed', found: 'failed' },
      { tenant: t, runId: gapped, table: 'events', key: '3', field: '(row)', expected: 'present', found: 'missing' },
    ]);
    expect(report.brokenChains).toEqual([{ tenant: t, runId: gapped, where: 'projection', problem: 'missing events: seq 3' }]);
    expect(report.tenants.map((x) => [x.tenant, x.mismatches, x.brokenChains])).toEqual(tenants.map((x) => [x, x === t ? 2 : 0, x === t ? 1 : 0]));
  }, 60_000);

  it('projector - an event acknowledged but never applied (a gap that redelivery cannot close): the consumer is repositioned at the checkpoint', async () => {
    const t = await provision(h, 'proj-gap', { consumers: { projectorAckWaitMs: 1000 } });
    const runId = newRunId();
    const at = Date.now();
    const bodies: RunEventBody[] = [{ type: 'run.started', data: { workflow: 'test.pipeline', version: 1, input: {} } }];
    for (const step of ['one', 'two', 'three']) {
      bodies.push(
        { type: 'step.scheduled', data: { step, attempt: 1, handler: `test.pipeline.${step}`, mode: 0, pool: 'default', timeoutMs: 20_000 } },
        { type: 'step.completed', data: { step, attempt: 1, worker: 'w', result: { ok: true }, durationMs: 1 } },
      );
    }
    bodies.push({ type: 'run.completed', data: { output: { ok: true } } });
    const events = bodies.map((b, i) => ({ v: EVENT_ENVELOPE_VERSION, ...b, runId, seq: i + 1, at: at + i, causationId: `test:${i}` }) as RunEvent);
    expect((await appendBatch(await h.nc(t), t, [{ runId, expectedLastSubjectSeq: 0, events }]))[0]?.ok).toBe(true);
    // The projector's consumer hands out all eight; only seq 5 is acknowledged, and only 1–4 applied.
    const msgs = [];
    for await (const m of await (await (await h.js(t)).consumers.get(Streams.runs(t), Consumers.projector)).fetch({ max_messages: 8, expires: 2000 })) msgs.push(m);
    expect(msgs.map((m) => m.seq)).toEqual([1, 2, 3, 4, 5, 6, 7, 8]);
    await applyBatch(
      d.db,
      t,
      msgs.slice(0, 4).map((m) => ({ seq: m.seq, subject: m.subject, data: m.data })),
    );
    msgs[4]?.ack();
    await (await h.nc(t)).flush();

    const p = await createProjector(loadConfig({ ...(await serviceEnv(inject('natsUrl'), Role.Projector)), DATABASE_URL: scratch.url, CAPSTAN_TENANTS: t }), silent, {
      database: d,
    });
    try {
      await p.start();
      const t0 = Date.now();
      await eventually('gap closed', async () => ((await p.lag())[0]?.lag === 0 ? true : undefined), 30_000);
      process.stdout.write(`gap closed in ${Date.now() - t0} ms: ${JSON.stringify(p.stats())}\n`);
      expect(p.stats()[t]?.repositions).toBe(1);
      const report = await verifyProjections(d, h.jsm, [t]);
      expect(report.ok).toBe(true);
      expect(report.tenants[0]?.events).toBe(8);
    } finally {
      await p.stop();
    }
  }, 60_000);

  it('projector - a fresh database behind a consumer that acknowledged everything: the projector repositions and projects it all', async () => {
    await projector.stop();
    await using fresh = await scratchDatabase('projfresh');
    const d2 = await openDatabase({ url: fresh.url, log: silent });
    const config = loadConfig({
      ...(await serviceEnv(inject('natsUrl'), Role.Projector)),
      DATABASE_URL: fresh.url,
      CAPSTAN_TENANTS: tenants.join(','),
      PROJECTOR_DISCOVERY_MS: '200',
    });
    const second = await createProjector(config, silent, { database: d2 });
    try {
      await second.start();
      await eventually('fresh projection caught up', async () => {
        const lag = await second.lag();
        return lag.length === tenants.length && lag.every((l) => l.lag === 0) ? lag : undefined;
      });
      const stats = second.stats();
      process.stdout.write(`fresh database: ${JSON.stringify(stats)}\n`);
      for (const t of tenants) expect(stats[t]?.repositions).toBe(1);
      const report = await verifyProjections(d2, h.jsm, tenants);
      printReport('fresh database', report);
      expect(report.ok).toBe(true);
      expect(report.tenants.every((x) => x.checkpoint === x.streamLastSeq && x.runs > 100)).toBe(true);
    } finally {
      await second.stop();
      await d2.close();
    }
  }, 60_000);
});

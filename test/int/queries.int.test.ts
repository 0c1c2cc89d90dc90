/**
 * The read queries over a real Postgres seeded directly: filters, keyset pagination walked
 * to the end (no duplicates, no gaps, exact order, ties and sub-millisecond timestamps
 * included), tenant isolation, the audit log, projection lag against a real nats-server,
 * parameter parsing, and the same queries on PGlite (the dev stack's database).
 */
import { afterAll, beforeAll, describe, expect, inject, it } from 'vitest';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { sql } from 'drizzle-orm';
import {
  getRun,
  listApprovals,
  listAudit,
  listRuns,
  listWorkers,
  migrate,
  openDatabase,
  parseLimit,
  parseSince,
  parseStatus,
  parseWhere,
  projectionLag,
  type Database,
  type ListRunsOptions,
  type RunRow,
} from '@capstan/kit';
import { CapstanError, db as schema, ErrorCode, parseTenantId, RUN_STATUSES, Streams, Subjects, type TenantId } from '@capstan/schemas';
import { scratchDatabase } from '../harness/postgres.js';
import { connect, provision, type Harness } from '../harness/fixtures.js';
import { insertBatched, runIdAt, runRow, stepRow, type RunInsert } from '../harness/projections.js';

const A = parseTenantId('acme');
const B = parseTenantId('beta');
const WORKFLOWS = ['demo.pipeline', 'demo.flaky', 'demo.signal'] as const;
const BASE = Date.parse('2026-03-01T12:00:00Z');

interface Seeded {
  readonly row: RunInsert;
  readonly customer: string;
  readonly region: string;
}

/** 250 runs for A: three share each start time (ties split across pages of 40), statuses and workflows spread out. */
function seedA(): Seeded[] {
  const out: Seeded[] = [];
  for (let i = 0; i < 250; i++) {
    const startedAt = new Date(BASE - Math.floor(i / 3) * 60_000);
    out.push({
      row: runRow(A, runIdAt(startedAt), {
        startedAt,
        status: RUN_STATUSES[i % 6] as string,
        workflow: WORKFLOWS[Math.floor(i / 7) % 3] as string,
      }),
      customer: String(i % 10),
      region: i % 4 < 2 ? 'eu' : 'us',
    });
  }
  return out;
}

/** What listRuns must answer, computed here: started_at desc, run_id desc. */
function expected(rows: readonly RunInsert[], keep: (r: RunInsert) => boolean = () => true): string[] {
  return rows
    .filter(keep)
    .sort((x, y) => y.startedAt.getTime() - x.startedAt.getTime() || (y.runId < x.runId ? -1 : y.runId > x.runId ? 1 : 0))
    .map((r) => r.runId);
}

async function walk(d: Database, t: TenantId, o: ListRunsOptions): Promise<{ ids: string[]; pages: number }> {
  const ids: string[] = [];
  let cursor: string | undefined;
  let pages = 0;
  do {
    const page = await listRuns(d, t, { ...o, ...(cursor ? { cursor } : {}) });
    ids.push(...page.runs.map((r) => r.runId));
    cursor = page.nextCursor;
    pages++;
    if (pages > 1000) throw new Error('pagination does not end');
  } while (cursor);
  return { ids, pages };
}

async function codeOf(p: Promise<unknown>): Promise<string> {
  const e = await p.then(
    () => undefined,
    (err: unknown) => err,
  );
  return CapstanError.is(e) ? e.code : `not a CapstanError: ${String(e)}`;
}

describe('queries', () => {
  let scratch: Awaited<ReturnType<typeof scratchDatabase>>;
  let d: Database;
  const a = seedA();
  const aRows = a.map((s) => s.row);
  const bRows: RunInsert[] = [];
  // A run id both tenants have: each must see only its own row.
  const shared = aRows[3] as RunInsert;
  const detailRun = aRows[0] as RunInsert;

  beforeAll(async () => {
    scratch = await scratchDatabase('queries');
    d = await openDatabase({ url: scratch.url });
    await migrate(d);
    for (let i = 0; i < 20; i++) {
      const startedAt = new Date(BASE - i * 30_000);
      bRows.push(runRow(B, i === 0 ? shared.runId : runIdAt(startedAt), { startedAt, status: 'running', workflow: 'beta.only' }));
    }
    await insertBatched(d, schema.runs, [...aRows, ...bRows]);
    await insertBatched(d, schema.runSearch, [
      ...a.flatMap((s) => [
        { tenant: A, key: 'customer', value: s.customer, runId: s.row.runId },
        { tenant: A, key: 'region', value: s.region, runId: s.row.runId },
      ]),
      ...bRows.map((r) => ({ tenant: B, key: 'customer', value: '3', runId: r.runId })),
    ]);

    // Steps inserted out of order; attempt 2 of "extract" was scheduled after "transform" 1.
    const t0 = new Date(BASE);
    const at = (ms: number) => new Date(t0.getTime() + ms);
    await d.db
      .insert(schema.steps)
      .values([
        stepRow(A, detailRun.runId, 'load', 1, at(300)),
        stepRow(A, detailRun.runId, 'extract', 2, at(200), { outcome: 'completed' }),
        stepRow(A, detailRun.runId, 'extract', 1, at(0), { outcome: 'failed', errorCode: 'step_failed', errorMessage: 'boom' }),
        stepRow(A, detailRun.runId, 'transform', 1, at(100)),
        stepRow(B, shared.runId, 'beta-step', 1, at(0)),
      ]);
    await d.db.insert(schema.events).values(
      [5, 1, 3, 2, 4].map((seq) => ({
        tenant: A,
        runId: detailRun.runId,
        seq,
        type: seq === 1 ? 'run.started' : 'step.scheduled',
        at: at(seq),
        streamSeq: 100 + seq,
        causationId: 'cmd-1',
      })),
    );
    await d.db.insert(schema.approvals).values([
      { tenant: A, runId: detailRun.runId, step: 'approve', signal: 'approve', status: 'pending', requestedAt: at(400) },
      { tenant: A, runId: (aRows[1] as RunInsert).runId, step: 'approve', signal: 'approve', status: 'approved', requestedAt: at(10), decidedAt: at(20) },
      { tenant: B, runId: shared.runId, step: 'approve', signal: 'approve', status: 'pending', requestedAt: at(5) },
    ]);
    await d.db.insert(schema.workers).values([
      { tenant: A, workerId: 'w-2', pools: ['default'], running: 1, lastSeenAt: at(0) },
      { tenant: A, workerId: 'w-1', pools: ['default', 'gpu'], running: 0, lastSeenAt: at(0) },
      { tenant: B, workerId: 'w-b', pools: ['default'], running: 0, lastSeenAt: at(0) },
    ]);
    await d.db.insert(schema.runSearch).values({ tenant: A, key: 'order', value: 'o-1', runId: detailRun.runId });
  });

  afterAll(async () => {
    await d?.close();
    await scratch?.drop();
  });

  it('queries - the first page is the newest runs, ties broken by run id', async () => {
    const page = await listRuns(d, A, {});
    expect(page.runs).toHaveLength(50);
    expect(page.runs.map((r) => r.runId)).toEqual(expected(aRows).slice(0, 50));
    expect(page.nextCursor).toMatch(/^[A-Za-z0-9_-]+$/);
    const r = page.runs[0] as RunRow;
    expect(r.tenant).toBe(A);
    expect(r.startedAt).toBeInstanceOf(Date);
  });

  it('queries - walking every page of 250 runs with limit 40 gives each run once, in order', async () => {
    const { ids, pages } = await walk(d, A, { limit: 40 });
    expect(pages).toBe(7);
    expect(new Set(ids).size).toBe(ids.length);
    expect(ids).toEqual(expected(aRows));
  });

  it('queries - the last page has no cursor, and an exact fit has no empty page after it', async () => {
    const { pages } = await walk(d, A, { limit: 50 });
    expect(pages).toBe(5);
    const last = await listRuns(d, A, { limit: 250 });
    expect(last.runs).toHaveLength(250);
    expect(last.nextCursor).toBeUndefined();
  });

  it('queries - filters by status, by workflow, by both, and by time', async () => {
    for (const status of RUN_STATUSES) {
      const { ids } = await walk(d, A, { status, limit: 17 });
      expect(ids).toEqual(expected(aRows, (r) => r.status === status));
      expect(ids.length).toBeGreaterThan(0);
    }
    const wf = await walk(d, A, { workflow: 'demo.flaky', limit: 30 });
    expect(wf.ids).toEqual(expected(aRows, (r) => r.workflow === 'demo.flaky'));
    const both = await walk(d, A, { workflow: 'demo.signal', status: 'failed', limit: 3 });
    expect(both.ids).toEqual(expected(aRows, (r) => r.workflow === 'demo.signal' && r.status === 'failed'));
    expect(both.ids.length).toBeGreaterThan(3);

    const since = new Date(BASE - 10 * 60_000);
    const until = new Date(BASE - 2 * 60_000);
    const window = await walk(d, A, { since, until, limit: 8 });
    expect(window.ids).toEqual(expected(aRows, (r) => r.startedAt >= since && r.startedAt < until));
    expect(window.ids).toHaveLength(24);
  });

  it('queries - where matches search fields, every pair at once', async () => {
    const one = await walk(d, A, { where: { customer: '3' }, limit: 10 });
    const customer3 = new Set(a.filter((s) => s.customer === '3').map((s) => s.row.runId));
    expect(one.ids).toEqual(expected(aRows, (r) => customer3.has(r.runId)));
    expect(one.ids).toHaveLength(25);

    const two = await walk(d, A, { where: { customer: '3', region: 'eu' }, limit: 4 });
    const eu3 = new Set(a.filter((s) => s.customer === '3' && s.region === 'eu').map((s) => s.row.runId));
    expect(two.ids).toEqual(expected(aRows, (r) => eu3.has(r.runId)));
    expect(two.ids.length).toBeGreaterThan(0);
    expect(two.ids.length).toBeLessThan(one.ids.length);

    const withStatus = await listRuns(d, A, { where: { customer: '3', region: 'eu' }, status: 'running', limit: 500 });
    expect(withStatus.runs.every((r) => r.status === 'running' && eu3.has(r.runId))).toBe(true);

    expect((await listRuns(d, A, { where: { customer: 'nobody' } })).runs).toEqual([]);
    expect((await listRuns(d, A, { where: { nokey: '3' } })).runs).toEqual([]);
  });

  it('queries - the cursor keeps Postgres microseconds: runs started within one millisecond page exactly', async () => {
    const t = parseTenantId('micro');
    const ids = ['01KA0000000000000000000001', '01KA0000000000000000000002', '01KA0000000000000000000003', '01KA0000000000000000000004'];
    // Written the way a writer with finer clocks would: same millisecond, different microseconds.
    await d.db.execute(sql`
      insert into runs (tenant, run_id, workflow, version, status, attempts, started_at, updated_at, last_seq, last_stream_seq, chain) values
      (${t}, ${ids[0]}, 'w', 1, 'running', 0, '2026-03-01T12:00:00.123400Z', now(), 1, 1, 'c'),
      (${t}, ${ids[1]}, 'w', 1, 'running', 0, '2026-03-01T12:00:00.123100Z', now(), 1, 1, 'c'),
      (${t}, ${ids[2]}, 'w', 1, 'running', 0, '2026-03-01T12:00:00.123300Z', now(), 1, 1, 'c'),
      (${t}, ${ids[3]}, 'w', 1, 'running', 0, '2026-03-01T12:00:00.123200Z', now(), 1, 1, 'c')`);
    const { ids: got, pages } = await walk(d, t, { limit: 1 });
    expect(got).toEqual([ids[0], ids[2], ids[3], ids[1]]);
    expect(pages).toBe(4);
  });

  it('queries - a tenant sees nothing of another tenant', async () => {
    const { ids } = await walk(d, B, { limit: 500 });
    expect(ids).toEqual(expected(bRows));
    const aOnly = new Set(aRows.map((r) => r.runId).filter((id) => id !== shared.runId));
    expect(ids.some((id) => aOnly.has(id))).toBe(false);
    // B's search rows say customer=3 for all of its runs, and A's say it for 25 of A's.
    expect((await listRuns(d, B, { where: { customer: '3' }, limit: 500 })).runs.map((r) => r.runId)).toEqual(expected(bRows));
    expect((await listRuns(d, B, { workflow: 'demo.pipeline' })).runs).toEqual([]);
    expect((await listRuns(d, parseTenantId('nobody'), {})).runs).toEqual([]);

    expect(await codeOf(getRun(d, B, detailRun.runId))).toBe(ErrorCode.RunNotFound);
    const own = await getRun(d, B, shared.runId);
    expect(own.run.tenant).toBe(B);
    expect(own.run.workflow).toBe('beta.only');
    expect(own.steps.map((s) => s.step)).toEqual(['beta-step']);
    expect(own.search).toEqual([{ key: 'customer', value: '3' }]);
    const theirs = await getRun(d, A, shared.runId);
    expect(theirs.run.tenant).toBe(A);
    expect(theirs.steps).toEqual([]);
    expect(theirs.approvals).toEqual([]);

    expect((await listApprovals(d, B)).map((x) => x.tenant)).toEqual([B]);
    expect((await listWorkers(d, B)).map((w) => w.workerId)).toEqual(['w-b']);
  });

  it('queries - getRun gives steps by schedule then attempt, the event index by seq, approvals and search fields', async () => {
    const r = await getRun(d, A, detailRun.runId);
    expect(r.run.runId).toBe(detailRun.runId);
    expect(r.steps.map((s) => `${s.step}#${s.attempt}`)).toEqual(['extract#1', 'transform#1', 'extract#2', 'load#1']);
    expect(r.steps[0]?.errorCode).toBe('step_failed');
    expect(r.events.map((e) => e.seq)).toEqual([1, 2, 3, 4, 5]);
    expect(r.events[0]).toEqual({ seq: 1, type: 'run.started', at: new Date(BASE + 1), streamSeq: 101, causationId: 'cmd-1', step: null, attempt: null });
    expect(r.approvals.map((x) => x.status)).toEqual(['pending']);
    expect(r.search).toEqual([
      { key: 'customer', value: '0' },
      { key: 'order', value: 'o-1' },
      { key: 'region', value: 'eu' },
    ]);
    expect(await codeOf(getRun(d, A, '01KA0000000000000000000099'))).toBe(ErrorCode.RunNotFound);
  });

  it('queries - approvals filter by status, newest first; workers by id', async () => {
    expect((await listApprovals(d, A)).map((x) => x.status)).toEqual(['pending', 'approved']);
    expect((await listApprovals(d, A, { status: 'approved' })).map((x) => x.runId)).toEqual([(aRows[1] as RunInsert).runId]);
    expect(await listApprovals(d, A, { status: 'rejected' })).toEqual([]);
    expect(await codeOf(listApprovals(d, A, { status: 'Not A Status' }))).toBe(ErrorCode.InvalidArgument);
    const workers = await listWorkers(d, A);
    expect(workers.map((w) => w.workerId)).toEqual(['w-1', 'w-2']);
    expect(workers[0]?.pools).toEqual(['default', 'gpu']);
  });

  describe('audit', () => {
    const T = parseTenantId('audited');
    const U = parseTenantId('other');
    const runs = ['01KA000000000000000000AAA1', '01KA000000000000000000AAA2', '01KA000000000000000000AAA3'];
    const start = Date.parse('2026-03-02T00:00:00Z');

    beforeAll(async () => {
      // 120 entries for T interleaved with 30 for U, in id order.
      const rows = [];
      for (let i = 0; i < 150; i++) {
        const tenant = i % 5 === 4 ? U : T;
        rows.push({ tenant, runId: runs[i % 3] as string, seq: i + 1, kind: 'run.signaled', actor: `user-${i}`, detail: { i }, at: new Date(start + i * 1000), streamSeq: i + 1 });
      }
      await insertBatched(d, schema.auditLog, rows, 40);
    });

    it('queries - the audit log pages newest first, each entry once, and only its tenant', async () => {
      const seen: number[] = [];
      let cursor: string | undefined;
      let pages = 0;
      do {
        const page = await listAudit(d, T, { limit: 25, ...(cursor ? { cursor } : {}) });
        expect(page.entries.every((e) => e.tenant === T)).toBe(true);
        seen.push(...page.entries.map((e) => e.id));
        cursor = page.nextCursor;
        pages++;
      } while (cursor && pages < 100);
      expect(pages).toBe(5);
      expect(seen).toHaveLength(120);
      expect([...seen].sort((x, y) => y - x)).toEqual(seen);
      expect(new Set(seen).size).toBe(120);
      const other = await listAudit(d, U, { limit: 500 });
      expect(other.entries).toHaveLength(30);
      expect(other.entries.some((e) => seen.includes(e.id))).toBe(false);
    });

    it('queries - the audit log filters by run and by time', async () => {
      const byRun = await listAudit(d, T, { runId: runs[1] as string, limit: 500 });
      expect(byRun.entries.length).toBe(40);
      expect(byRun.entries.every((e) => e.runId === runs[1] && e.tenant === T)).toBe(true);
      const recent = await listAudit(d, T, { since: new Date(start + 140_000), limit: 500 });
      // Entries 140..149 (seq 141..150), less the other tenant's (every fifth).
      expect(recent.entries.map((e) => e.seq)).toEqual([149, 148, 147, 146, 144, 143, 142, 141]);
      expect((await listAudit(d, T, { runId: runs[0] as string, since: new Date(start + 140_000) })).entries.map((e) => e.seq)).toEqual([148, 142]);
    });

    it('queries - a runs cursor is refused by the audit log and the other way round', async () => {
      const runsCursor = (await listRuns(d, A, { limit: 1 })).nextCursor as string;
      const auditCursor = (await listAudit(d, T, { limit: 1 })).nextCursor as string;
      expect(await codeOf(listAudit(d, T, { cursor: runsCursor }))).toBe(ErrorCode.InvalidArgument);
      expect(await codeOf(listRuns(d, A, { cursor: auditCursor }))).toBe(ErrorCode.InvalidArgument);
    });
  });

  it('queries - bad parameters are InvalidArgumentErrors that say what is accepted', async () => {
    const now = Date.parse('2026-03-01T12:00:00Z');
    expect(parseSince('1h', now).getTime()).toBe(now - 3_600_000);
    expect(parseSince('30m', now).getTime()).toBe(now - 1_800_000);
    expect(parseSince('2d', now).getTime()).toBe(now - 172_800_000);
    expect(parseSince('2026-02-01T10:00:00Z').toISOString()).toBe('2026-02-01T10:00:00.000Z');
    expect(parseSince('2026-02-01T10:00:00+02:00').toISOString()).toBe('2026-02-01T08:00:00.000Z');
    expect(parseSince('2026-02-01').toISOString()).toBe('2026-02-01T00:00:00.000Z');
    for (const bad of ['yesterday', '1x', '-1h', '', '2026-02-01T10:00', '2026-13-45T10:00:00Z', '1.5h']) {
      expect(() => parseSince(bad), bad).toThrow(/since must be a duration/);
    }
    expect(parseStatus('failed')).toBe('failed');
    expect(() => parseStatus('done')).toThrow(/status must be one of pending, running, waiting, completed, failed, cancelled; got "done"/);
    expect(parseLimit(undefined)).toBe(50);
    expect(parseLimit('500')).toBe(500);
    for (const bad of ['0', '501', 'abc', '-1', '2.5', '', '1e2']) expect(() => parseLimit(bad), bad).toThrow(/limit must be an integer from 1 to 500/);
    expect(parseWhere(['customer=42', 'expr=a=b'])).toEqual({ customer: '42', expr: 'a=b' });
    expect(() => parseWhere(['customer'])).toThrow(/where must be key=value; got "customer"/);
    expect(() => parseWhere(['=42'])).toThrow(/where must be key=value/);
    expect(() => parseWhere(['a=1', 'a=2'])).toThrow(/more than once/);
    expect(() => parseWhere(Array.from({ length: 9 }, (_, i) => `k${i}=v`))).toThrow(/at most 8/);

    expect(await codeOf(listRuns(d, A, { limit: 0 }))).toBe(ErrorCode.InvalidArgument);
    expect(await codeOf(listRuns(d, A, { limit: 501 }))).toBe(ErrorCode.InvalidArgument);
    expect(await codeOf(listRuns(d, A, { status: 'done' as never }))).toBe(ErrorCode.InvalidArgument);
    expect(await codeOf(listRuns(d, A, { workflow: '' }))).toBe(ErrorCode.InvalidArgument);
    expect(await codeOf(listRuns(d, A, { since: new Date(NaN) }))).toBe(ErrorCode.InvalidArgument);
    for (const cursor of ['', 'not a cursor!', 'bm9wZQ', Buffer.from('runs:abc:01KA').toString('base64url'), Buffer.from("runs:1:x' or 1=1").toString('base64url')]) {
      expect(await codeOf(listRuns(d, A, { cursor })), cursor).toBe(ErrorCode.InvalidArgument);
      expect(await codeOf(listAudit(d, A, { cursor })), cursor).toBe(ErrorCode.InvalidArgument);
    }
  });

  describe('projection lag', () => {
    let h: Harness;
    beforeAll(async () => {
      h = await connect(inject('natsUrl'));
    });
    afterAll(() => h?.close());

    it('queries - projection lag is the run stream last sequence minus the checkpoint, per tenant; a checkpoint past the stream is projection_out_of_sync, never lag 0', async () => {
      const behind = await provision(h, 'lag');
      const fresh = await provision(h, 'lag');
      const js = await h.js(behind);
      for (let i = 0; i < 5; i++) await js.publish(Subjects.run(behind, runIdAt(BASE + i)), new Uint8Array([i]));
      await d.db.insert(schema.checkpoints).values({ tenant: behind, stream: Streams.runs(behind), lastStreamSeq: 2 });
      // A checkpoint of another stream of the tenant is not the run stream's.
      await d.db.insert(schema.checkpoints).values({ tenant: fresh, stream: Streams.commands(fresh), lastStreamSeq: 99 });
      // Projections that applied 9 events of a stream that has 5: they follow another stream.
      const ahead = await provision(h, 'lag');
      const jsAhead = await h.js(ahead);
      for (let i = 0; i < 5; i++) await jsAhead.publish(Subjects.run(ahead, runIdAt(BASE + i)), new Uint8Array([i]));
      await d.db.insert(schema.checkpoints).values({ tenant: ahead, stream: Streams.runs(ahead), lastStreamSeq: 9 });
      const missing = parseTenantId('not-provisioned');
      const lag = await projectionLag(d, h, [behind, fresh, ahead, missing]);
      expect(lag).toEqual([
        { tenant: behind, stream: Streams.runs(behind), streamLastSeq: 5, checkpoint: 2, lag: 3 },
        { tenant: fresh, stream: Streams.runs(fresh), streamLastSeq: 0, checkpoint: 0, lag: 0 },
        {
          tenant: ahead,
          stream: Streams.runs(ahead),
          streamLastSeq: 5,
          checkpoint: 9,
          lag: null,
          error: { code: 'projection_out_of_sync', message: expect.stringContaining('ends at sequence 5, before the checkpoint') },
        },
        {
          tenant: missing,
          stream: Streams.runs(missing),
          streamLastSeq: null,
          checkpoint: 0,
          lag: null,
          error: { code: 'unknown_tenant', message: expect.stringContaining('no run stream') },
        },
      ]);
    });
  });

  it('queries - the same queries answer on PGlite, the dev stack database', async () => {
    const dir = mkdtempSync(join(tmpdir(), 'capstan-pglite-q-'));
    const lite = await openDatabase({ dataDir: dir });
    try {
      await migrate(lite);
      const rows = aRows.slice(0, 30).map((r) => ({ ...r }));
      await insertBatched(lite, schema.runs, rows);
      await insertBatched(
        lite,
        schema.runSearch,
        a.slice(0, 30).map((s) => ({ tenant: A, key: 'customer', value: s.customer, runId: s.row.runId })),
      );
      await lite.db.insert(schema.steps).values(stepRow(A, detailRun.runId, 'extract', 1, new Date(BASE)));
      const { ids } = await walk(lite, A, { limit: 7 });
      expect(ids).toEqual(expected(rows));
      const c3 = await walk(lite, A, { where: { customer: '3' }, limit: 1 });
      expect(c3.ids).toEqual(expected(rows, (r) => a.slice(0, 30).some((s) => s.row.runId === r.runId && s.customer === '3')));
      expect(c3.ids).toHaveLength(3);
      const run = await getRun(lite, A, detailRun.runId);
      expect(run.steps.map((s) => s.step)).toEqual(['extract']);
      expect(await codeOf(getRun(lite, B, detailRun.runId))).toBe(ErrorCode.RunNotFound);
    } finally {
      await lite.close();
      rmSync(dir, { recursive: true, force: true });
    }
  });
});

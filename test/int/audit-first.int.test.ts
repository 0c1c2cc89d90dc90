/**
 * Audit first (reliability test C2), against the real nats-server and a Postgres scratch
 * database: a step's external write happens only after its intent is in `audit_log`.
 *
 * - 200 runs each write once to an HTTP sink through `ctx.externalWrite` while the audit
 *   store refuses every insert (a trigger raising an exception, switched by a flag row): no
 *   write reaches the sink, every attempt fails with `audit_unavailable` and is retried. Then
 *   the store is repaired: every run completes, with exactly one intent row and one distinct
 *   write per action. A quarter of the runs lose the answer of their write on purpose, so
 *   their retry asks again with the same key and the sink deduplicates it.
 * - The store itself: racing calls for one action make one row; many actions of one run,
 *   next to projector rows and another service's rows, never collide; a role without INSERT
 *   (`REVOKE INSERT`) and an unreachable database both refuse the write.
 */
import { afterAll, beforeAll, describe, expect, inject, it } from 'vitest';
import { createServer, type IncomingMessage, type Server } from 'node:http';
import { randomBytes } from 'node:crypto';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { sql } from 'drizzle-orm';
import pg from 'pg';
import { DeliverPolicy, type ConsumerMessages } from '@nats-io/jetstream';
import { createRegistry } from '@capstan/actors';
import { appendAuditRow, AuditAppend, createAuditSink, decodeEvent, migrate, openDatabase, queryRows, type AuditSink, type Database } from '@capstan/kit';
import { createProjector, loadConfig as projectorConfig, verifyProjections, type ProjectorApp } from '@capstan/projector';
import { bindExternalWrite, EXTERNAL_WRITE_INTENT, externalWriteKey } from '@capstan/worker';
import { db as schema, ErrorCode, parseRunId, parseTenantId, Streams, Subjects, type RunId, type TenantId, Role } from '@capstan/schemas';
import { checkRuns } from '../harness/checker.js';
import { connect, eventually, provision, silent, startServices, watchRuns, type Harness, type InProcessServices, serviceEnv } from '../harness/fixtures.js';
import { scratchDatabase } from '../harness/postgres.js';
import { workflows } from '../fixtures/workflows.js';

const RUNS = 200;
const STEP = 'write';
const ACTION = 'post-record';

let url: string;
let h: Harness;
let t: TenantId;
let scratch: Awaited<ReturnType<typeof scratchDatabase>>;
let database: Database;
let admin: pg.Pool;
let projector: ProjectorApp | undefined;
let services: InProcessServices | undefined;
let sink: HttpSink | undefined;

/** Counts writes by idempotency key, applies each key once, and notes whether its intent was recorded first. */
interface HttpSink {
  readonly url: string;
  /** Requests per key, duplicates included. */
  readonly requests: Map<string, number>;
  /** Keys whose intent row was not in `audit_log` when their write arrived. */
  readonly unaudited: Set<string>;
  close(): Promise<void>;
}

async function startSink(): Promise<HttpSink> {
  const requests = new Map<string, number>();
  const unaudited = new Set<string>();
  const body = async (req: IncomingMessage) => {
    let s = '';
    for await (const c of req) s += (c as Buffer).toString();
    return s;
  };
  const server: Server = createServer((req, res) => {
    void (async () => {
      await body(req);
      const key = req.headers['idempotency-key'];
      if (typeof key !== 'string' || !/^[0-9a-f]{64}$/.test(key)) {
        res.writeHead(400).end();
        return;
      }
      const found = await admin.query(`select 1 from audit_log where tenant = $1 and kind = $2 and detail->>'key' = $3`, [t, EXTERNAL_WRITE_INTENT, key]);
      if (found.rowCount === 0) unaudited.add(key);
      const n = (requests.get(key) ?? 0) + 1;
      requests.set(key, n);
      res.writeHead(200, { 'content-type': 'application/json' }).end(JSON.stringify({ duplicate: n > 1 }));
    })().catch(() => res.writeHead(500).end());
  });
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', () => r()));
  const addr = server.address();
  const port = typeof addr === 'object' && addr ? addr.port : 0;
  return {
    url: `http://127.0.0.1:${port}/records`,
    requests,
    unaudited,
    close: () => new Promise((r) => server.close(() => r())),
  };
}

/** Every `step.failed` of the tenant's runs, as they are recorded. */
async function followFailures(): Promise<{ byRun: Map<string, { code: string; retryable: boolean }[]>; close(): Promise<void> }> {
  const byRun = new Map<string, { code: string; retryable: boolean }[]>();
  const consumer = await (await h.js(t)).consumers.get(Streams.runs(t), { filter_subjects: [Subjects.allRuns(t)], deliver_policy: DeliverPolicy.All });
  const messages: ConsumerMessages = await consumer.consume();
  void (async () => {
    for await (const m of messages) {
      const e = decodeEvent(m);
      if (e.type === 'step.failed') byRun.set(e.runId, [...(byRun.get(e.runId) ?? []), { code: e.data.error.code, retryable: e.data.error.retryable }]);
    }
  })();
  return { byRun, close: () => messages.close().then(() => undefined) };
}

const intentRows = (tenant: string) =>
  queryRows<{ run_id: string; seq: number; actor: string; stream_seq: number; key: string; target: string; action: string; step: string; attempt: number }>(
    database,
    sql`select run_id, seq, actor, stream_seq::int as stream_seq, detail->>'key' as key, detail->>'target' as target, detail->>'action' as action,
               detail->>'step' as step, (detail->>'attempt')::int as attempt
          from audit_log where tenant = ${tenant} and kind = ${EXTERNAL_WRITE_INTENT}`,
  );

beforeAll(async () => {
  url = inject('natsUrl');
  h = await connect(url);
  t = await provision(h, 'audit');
  scratch = await scratchDatabase('audit');
  database = await openDatabase({ url: scratch.url, log: silent });
  await migrate(database);
  admin = new pg.Pool({ connectionString: scratch.url, max: 4 });
  // Dropping the scratch database ends idle connections; that is no failure of the test.
  admin.on('error', () => undefined);
  // The fault: while the flag row says so, every insert into audit_log raises (whoever inserts).
  await admin.query(`
    create table audit_fault (id int primary key, failing boolean not null);
    insert into audit_fault values (1, false);
    create function audit_fault_check() returns trigger language plpgsql security definer as $$
    begin
      if (select failing from audit_fault where id = 1) then
        raise exception 'audit store unavailable (injected fault)';
      end if;
      return new;
    end $$;
    create trigger audit_fault before insert on audit_log for each row execute function audit_fault_check();`);
  sink = await startSink();
});

afterAll(async () => {
  // Each step runs whatever the one before did, so the scratch database is always dropped.
  for (const step of [() => services?.stop(), () => projector?.stop(), () => sink?.close(), () => h?.close(), () => admin?.end(), () => database?.close(), () => scratch?.drop()]) {
    await Promise.resolve(step()).catch((e: unknown) => process.stdout.write(`cleanup: ${String(e)}\n`));
  }
});

describe('audit first', () => {
  it('audit first: 200 external writes while the audit store fails reach the sink 0 times; after repair each action has exactly 1 intent row and 1 write', async () => {
    if (!sink) throw new Error('no sink');
    await admin.query('update audit_fault set failing = true where id = 1');
    projector = await createProjector(projectorConfig({ ...(await serviceEnv(url, Role.Projector)), DATABASE_URL: scratch.url, CAPSTAN_TENANTS: t }), silent, { database });
    await projector.start();
    services = await startServices(url, [t], { env: { AUDIT_DATABASE_URL: scratch.url }, workerId: 'audit-worker' });
    const failures = await followFailures();
    const watch = await watchRuns(h, t);

    const runIds: RunId[] = [];
    const loseAnswer = new Set<RunId>();
    for (let i = 0; i < RUNS; i++) {
      const failAfterWrite = i % 4 === 0;
      const runId = await h.client.submit(t, 'test.audited', { input: { sinkUrl: sink.url, failAfterWrite } });
      runIds.push(runId);
      if (failAfterWrite) loseAnswer.add(runId);
    }

    // Hold the fault until every run has failed at least twice: first attempts and retries alike.
    await eventually(
      'every run failing twice while audit fails',
      () => Promise.resolve(runIds.every((r) => (failures.byRun.get(r)?.length ?? 0) >= 2) ? true : undefined),
      120_000,
      200,
    );
    const whileFailing = {
      failedAttempts: [...failures.byRun.values()].reduce((n, f) => n + f.length, 0),
      codes: [...new Set([...failures.byRun.values()].flat().map((f) => `${f.code}/${f.retryable ? 'retryable' : 'terminal'}`))],
      sinkRequests: [...sink.requests.values()].reduce((n, c) => n + c, 0),
      intentRows: (await intentRows(t)).length,
      ended: watch.ended.size,
    };
    process.stdout.write(`audit failing: ${JSON.stringify(whileFailing)}\n`);
    expect(whileFailing.codes).toEqual([`${ErrorCode.AuditUnavailable}/retryable`]);
    expect(whileFailing.sinkRequests).toBe(0);
    expect(whileFailing.intentRows).toBe(0);
    expect(whileFailing.ended).toBe(0);

    await admin.query('update audit_fault set failing = false where id = 1');
    await watch.waitAll(runIds, 120_000);
    await watch.close();
    await failures.close();

    const check = await checkRuns(await h.jsm(t), t, runIds, createRegistry(workflows));
    const rows = await intentRows(t);
    const rowsPerKey = new Map<string, number>();
    for (const r of rows) rowsPerKey.set(r.key, (rowsPerKey.get(r.key) ?? 0) + 1);
    const expectedKeys = new Map(runIds.map((r) => [externalWriteKey({ tenant: t, runId: r, step: STEP }, ACTION), r]));
    const requests = [...sink.requests.values()].reduce((n, c) => n + c, 0);
    const lostAnswerRetries = [...check.eventsByRun].filter(
      ([r, evs]) => loseAnswer.has(r) && evs.some((e) => e.type === 'step.failed' && e.data.error.code === 'answer_lost'),
    ).length;
    const completedResults = [...check.eventsByRun.values()].map((evs) => evs.find((e) => e.type === 'step.completed')).filter((e) => e !== undefined);
    const counts = {
      runs: runIds.length,
      completed: check.completed,
      notTerminal: check.notTerminal,
      intentRows: rows.length,
      keysWithOneRow: [...rowsPerKey.values()].filter((n) => n === 1).length,
      keysWithMoreRows: [...rowsPerKey.values()].filter((n) => n > 1).length,
      distinctWrites: sink.requests.size,
      writeRequests: requests,
      duplicatesDeduplicated: requests - sink.requests.size,
      lostAnswerRetries,
      writesBeforeTheirIntent: sink.unaudited.size,
      unexpectedKeys: [...sink.requests.keys()].filter((k) => !expectedKeys.has(k)).length,
      failedAttempts: [...check.eventsByRun.values()].flat().filter((e) => e.type === 'step.failed').length,
      brokenChains: check.brokenChains,
      forks: check.forks,
      resultsRecordedTwice: check.resultsRecordedTwice,
      replayMismatches: check.replayMismatches,
    };
    process.stdout.write(`audit first: ${JSON.stringify(counts)}\n`);
    expect(counts).toMatchObject({
      completed: RUNS,
      notTerminal: 0,
      intentRows: RUNS,
      keysWithOneRow: RUNS,
      keysWithMoreRows: 0,
      distinctWrites: RUNS,
      writeRequests: RUNS + loseAnswer.size,
      duplicatesDeduplicated: loseAnswer.size,
      lostAnswerRetries: loseAnswer.size,
      writesBeforeTheirIntent: 0,
      unexpectedKeys: 0,
      brokenChains: 0,
      forks: 0,
      resultsRecordedTwice: 0,
      replayMismatches: 0,
    });
    // Every run's write is the one its key names, made once, recorded by this worker.
    for (const [key, runId] of expectedKeys) {
      expect(sink.requests.get(key) ?? 0).toBe(loseAnswer.has(runId) ? 2 : 1);
      expect(rowsPerKey.get(key)).toBe(1);
    }
    for (const r of rows) {
      expect(expectedKeys.get(r.key)).toBe(r.run_id);
      expect(r).toMatchObject({ target: 'test-sink', action: ACTION, step: STEP, actor: 'audit-worker', stream_seq: 0 });
      // The intent was written by an attempt after the failures (a lost answer re-uses the row).
      expect(r.seq).toBe(-1);
      expect(r.attempt).toBeGreaterThanOrEqual(3);
    }
    for (const e of completedResults) {
      if (e?.type !== 'step.completed') continue;
      expect(e.data.result).toMatchObject({ ok: true, duplicate: loseAnswer.has(e.runId) });
    }

    // Projections stay consistent with the streams: the intents are not the projector's rows.
    await eventually('projector caught up', async () => {
      const [row] = await queryRows<{ n: number }>(database, sql`select count(*)::int as n from runs where tenant = ${t} and status = 'completed'`);
      return row?.n === RUNS ? true : undefined;
    });
    const verified = await verifyProjections(database, h.jsm, [t]);
    process.stdout.write(`verify: ok=${verified.ok} mismatches=${verified.mismatches.length} brokenChains=${verified.brokenChains.length}\n`);
    expect(verified.mismatches).toEqual([]);
    expect(verified.ok).toBe(true);
  }, 300_000);
});

describe('audit sink', () => {
  const scopeOf = (tenant: TenantId, runId: RunId, attempt: number) => ({ tenant, runId, step: 'charge', attempt, signal: new AbortController().signal, log: silent });
  // Hex digits are Crockford base32 digits too.
  const runIdOf = () => parseRunId(`01J9Z3K4M5${randomBytes(8).toString('hex').toUpperCase()}`);

  it('audit sink: 16 racing attempts of one action append one intent row and all perform with the same key', async () => {
    const tenant = parseTenantId(`race-${randomBytes(3).toString('hex')}`);
    const runId = runIdOf();
    const store = createAuditSink(database);
    const keys: string[] = [];
    const outcomes = await Promise.all(
      Array.from({ length: 16 }, (_, i) => bindExternalWrite(store, 'w-race', scopeOf(tenant, runId, i + 1))('billing', 'create-invoice', (key) => (keys.push(key), 'done'))),
    );
    expect(outcomes).toEqual(Array(16).fill('done'));
    expect(new Set(keys)).toEqual(new Set([externalWriteKey({ tenant, runId, step: 'charge' }, 'create-invoice')]));
    const rows = await intentRows(tenant);
    expect(rows).toHaveLength(1);
    // The store answers `exists` from then on, whatever the attempt.
    const again = await store.appendIntent({ tenant, runId, kind: EXTERNAL_WRITE_INTENT, key: keys[0] ?? '', actor: 'w-race', detail: {} });
    expect(again).toBe(AuditAppend.Exists);
    expect(await intentRows(tenant)).toHaveLength(1);
  });

  it("audit sink: many actions of one run next to projector rows and another service's rows never collide", async () => {
    const tenant = parseTenantId(`mix-${randomBytes(3).toString('hex')}`);
    const runId = runIdOf();
    const store = createAuditSink(database);
    // The projector's rows for this run (seq = the event's seq), and one written by another data-plane service.
    await database.db
      .insert(schema.auditLog)
      .values([1, 2, 3].map((seq) => ({ tenant, runId, seq, kind: 'run.signaled', actor: null, detail: {}, at: new Date(), streamSeq: seq })));
    await database.db.transaction((tx) => appendAuditRow(tx, { tenant, runId, kind: 'lease.issued', actor: 'secrets-lease', detail: { keys: ['API_TOKEN'] } }));
    const actions = Array.from({ length: 30 }, (_, i) => `notify:${i}`);
    let performed = 0;
    await Promise.all(actions.map((a) => bindExternalWrite(store, 'w-mix', scopeOf(tenant, runId, 1))('mailer', a, () => performed++)));
    const all = await queryRows<{ seq: number; kind: string }>(database, sql`select seq, kind from audit_log where tenant = ${tenant} and run_id = ${runId} order by seq`);
    const intents = all.filter((r) => r.kind === EXTERNAL_WRITE_INTENT);
    process.stdout.write(`mixed run: rows=${all.length} intents=${intents.length} seqs=${all[0]?.seq}..${all.at(-1)?.seq}\n`);
    expect(performed).toBe(30);
    expect(intents).toHaveLength(30);
    expect(intents.every((r) => r.seq < 0)).toBe(true);
    expect(new Set(all.map((r) => r.seq)).size).toBe(all.length);
    expect(all.filter((r) => r.seq > 0).map((r) => r.seq)).toEqual([1, 2, 3]);
    expect(all.filter((r) => r.kind === 'lease.issued').map((r) => r.seq)).toEqual([-1]);
  });

  it('audit sink: a worker role without INSERT on audit_log (REVOKE INSERT) refuses the write; after GRANT the write happens once', async () => {
    const role = `capstan_xw_${randomBytes(4).toString('hex')}`;
    await admin.query(`create role ${role} login`);
    await admin.query(`grant select, insert on audit_log to ${role}; grant usage on sequence audit_log_id_seq to ${role}`);
    await admin.query(`revoke insert on audit_log from ${role}`);
    const u = new URL(scratch.url);
    u.username = role;
    const asWorker = await openDatabase({ url: u.toString(), log: silent });
    const store = createAuditSink(asWorker, { closeDatabase: true });
    try {
      const tenant = parseTenantId(`revoke-${randomBytes(3).toString('hex')}`);
      const runId = runIdOf();
      let performed = 0;
      const write = bindExternalWrite(store, 'w-revoke', scopeOf(tenant, runId, 1));
      const err = await write('billing', 'create-invoice', () => performed++).catch((e: unknown) => e);
      process.stdout.write(`revoked: ${(err as Error).message}\n`);
      expect(err).toMatchObject({ code: ErrorCode.AuditUnavailable, retryable: true });
      expect((err as Error).message).toMatch(/permission denied/);
      expect(performed).toBe(0);
      expect(await intentRows(tenant)).toHaveLength(0);

      await admin.query(`grant insert on audit_log to ${role}`);
      await bindExternalWrite(store, 'w-revoke', scopeOf(tenant, runId, 2))('billing', 'create-invoice', () => performed++);
      expect(performed).toBe(1);
      expect(await intentRows(tenant)).toHaveLength(1);
    } finally {
      await store.close();
      await admin.query(`drop owned by ${role}`);
      await admin.query(`drop role ${role}`);
    }
  });

  it('audit sink: the embedded database (PGlite, as the dev stack uses) records one intent per key too', async () => {
    const dir = mkdtempSync(join(tmpdir(), 'capstan-audit-pglite-'));
    const embedded = await openDatabase({ dataDir: dir, log: silent });
    try {
      await migrate(embedded);
      const store = createAuditSink(embedded);
      const tenant = parseTenantId('embedded');
      const runId = runIdOf();
      const keys: string[] = [];
      for (const attempt of [1, 2, 3]) await bindExternalWrite(store, 'w-dev', scopeOf(tenant, runId, attempt))('billing', 'create-invoice', (key) => keys.push(key));
      await bindExternalWrite(store, 'w-dev', scopeOf(tenant, runId, 1))('billing', 'refund', (key) => keys.push(key));
      const rows = await queryRows<{ seq: number; key: string }>(embedded, sql`select seq, detail->>'key' as key from audit_log where tenant = ${tenant} order by seq desc`);
      expect(new Set(keys).size).toBe(2);
      expect(rows).toEqual([
        { seq: -1, key: keys[0] },
        { seq: -2, key: keys[3] },
      ]);
    } finally {
      await embedded.close();
      rmSync(dir, { recursive: true, force: true });
    }
  });

  it('audit sink: an unreachable audit database refuses the write with audit_unavailable', async () => {
    const down = createAuditSink(await openDatabase({ url: 'postgres://nobody@127.0.0.1:1/none', log: silent }), { closeDatabase: true });
    try {
      let performed = 0;
      const err = await bindExternalWrite(down, 'w-down', scopeOf(parseTenantId('down'), runIdOf(), 1))('billing', 'create-invoice', () => performed++).catch((e: unknown) => e);
      expect(err).toMatchObject({ code: ErrorCode.AuditUnavailable, retryable: true, name: 'AuditUnavailableError' });
      expect(performed).toBe(0);
    } finally {
      await down.close();
    }
  });

  it('audit sink: an attempt that timed out while its intent was being recorded does not perform', async () => {
    const tenant = parseTenantId(`abort-${randomBytes(3).toString('hex')}`);
    const ac = new AbortController();
    const store: AuditSink = createAuditSink(database);
    let performed = 0;
    const write = bindExternalWrite(store, 'w-abort', { ...scopeOf(tenant, runIdOf(), 1), signal: ac.signal });
    const client = await admin.connect();
    try {
      // Hold inserts into the table so the append waits, and time the attempt out meanwhile.
      await client.query('begin');
      await client.query('lock table audit_log in share row exclusive mode');
      const pending = write('billing', 'create-invoice', () => performed++).catch((e: unknown) => e);
      await new Promise((r) => setTimeout(r, 200));
      ac.abort(new Error('step timed out'));
      await client.query('commit');
      const err = await pending;
      expect((err as Error).message).toBe('step timed out');
      expect(performed).toBe(0);
      // The intent stands (it was recorded): the next attempt finds it and performs.
      expect(await intentRows(tenant)).toHaveLength(1);
    } finally {
      client.release();
    }
  });
});

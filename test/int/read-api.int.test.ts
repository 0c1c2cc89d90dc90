/**
 * The read API: the console's tenant routes as programs use them, with an API token (a real
 * console on a free loopback port, a real Postgres seeded directly, a real nats-server for
 * stream positions). Every endpoint answers for the tenant in its path and never another's,
 * and only to a token whose user has that tenant; no token, a wrong, malformed or expired
 * one, or one sent as a cookie gets nothing; a token never writes; bad parameters are 400s
 * that say what is wrong; unknown runs and routes are 404s; internal failures are bare 500s.
 * Then the CLI read commands against the same console.
 */
import { afterAll, beforeAll, describe, expect, inject, it, vi } from 'vitest';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Writable } from 'node:stream';
import { request } from 'node:http';
import { createLogger, migrate, openDatabase, type Database } from '@capstan/kit';
import {
  apiPaths,
  newApiToken,
  type ApprovalsResponse,
  type AuditPageResponse,
  type ConsoleUser,
  type PlatformSystemResponse,
  type RunDetailResponse,
  type RunsPageResponse,
  type SessionInfo,
  type WorkersResponse,
} from '@capstan/console';
import { auditCmd, readApi, runCmd, runsCmd, systemStatusCmd } from '@capstan/cli';
import { CapstanError, db as schema, ErrorCode, Streams, Subjects, type TenantId } from '@capstan/schemas';
import { scratchDatabase } from '../harness/postgres.js';
import { connect, provision, type Harness } from '../harness/fixtures.js';
import { startReadConsole, type ReadConsole } from '../harness/console.js';
import { and, eq, inArray } from 'drizzle-orm';
import { insertBatched, runIdAt, runRow, stepRow, type RunInsert } from '../harness/projections.js';

const BASE = Date.parse('2026-03-01T12:00:00Z');

/** Every field any endpoint answers with; each test probes the ones its endpoint has. */
type Body = RunsPageResponse &
  RunDetailResponse &
  AuditPageResponse &
  PlatformSystemResponse &
  ApprovalsResponse &
  WorkersResponse & {
    readonly ok: boolean;
    readonly error: { code: string; message: string };
  };

interface Answer {
  status: number;
  type: string;
  headers: Headers;
  body: Body;
  text: string;
}

function json<T>(s: string): T {
  return JSON.parse(s) as T;
}

/** A log that the test reads: what the console says about refused tokens. */
function capturedLog(): { log: ReturnType<typeof createLogger>; text: () => string } {
  let text = '';
  const sink = new Writable({
    write(chunk: Buffer, _enc, cb) {
      text += chunk.toString();
      cb();
    },
  });
  return { log: createLogger('test', 'warn', sink), text: () => text };
}

/** A user of tenants `tenants` holding one API token (expired when `expired`). */
function tokenUser(userId: string, tenants: readonly string[], expired = false): { user: ConsoleUser; token: string } {
  const { token, sha256 } = newApiToken();
  return {
    user: { userId, orgId: 'test', role: 'viewer', tenants: [...tenants], tokens: [{ name: `${userId}-cli`, sha256, expiresAt: Date.now() + (expired ? -1000 : 3_600_000) }] },
    token,
  };
}

/**
 * Runs a read command in this process and captures what it prints. Errors are turned into
 * main.ts's exit codes, so it asserts what `capstan` would exit with.
 */
async function capstan(args: string[], env: NodeJS.ProcessEnv = {}): Promise<{ code: number; out: string; err: string }> {
  const [name, ...rest] = args;
  const cmd = name === 'runs' ? runsCmd : name === 'run' ? runCmd : name === 'audit' ? auditCmd : name === 'status' && rest.includes('--system') ? systemStatusCmd : undefined;
  if (!cmd) throw new Error(`not a read command: ${args.join(' ')}`);
  const chunks: string[] = [];
  const spy = vi.spyOn(process.stdout, 'write').mockImplementation((c: string | Uint8Array) => {
    chunks.push(typeof c === 'string' ? c : Buffer.from(c).toString());
    return true;
  });
  try {
    const code = await cmd(rest, { NO_COLOR: '1', ...env });
    return { code, out: chunks.join(''), err: '' };
  } catch (e) {
    if (!CapstanError.is(e)) throw e;
    const code = [ErrorCode.InvalidArgument, ErrorCode.InvalidTenantId, ErrorCode.InvalidRunId].includes(e.code as never) ? 2 : e.code === ErrorCode.RunNotFound ? 3 : 1;
    return { code, out: chunks.join(''), err: `capstan: ${e.code}: ${e.message}\n` };
  } finally {
    spy.mockRestore();
  }
}

describe('read api', () => {
  let scratch: Awaited<ReturnType<typeof scratchDatabase>>;
  let d: Database;
  let h: Harness;
  let rc: ReadConsole;
  let url: string;
  let token: string;
  let A: TenantId;
  let B: TenantId;
  const aRuns: RunInsert[] = [];
  const bRuns: RunInsert[] = [];
  let aRun: string;
  let bRun: string;
  /** A viewer of B only, a viewer of A whose token has expired. */
  let onlyB: { user: ConsoleUser; token: string };
  let expired: { user: ConsoleUser; token: string };
  const consoleLog = capturedLog();

  /** A GET with the admin's token unless `init` says otherwise. */
  async function get(path: string, init: RequestInit = {}, base = url): Promise<Answer> {
    const res = await fetch(base + path, { ...init, headers: { authorization: `Bearer ${token}`, ...(init.headers as Record<string, string> | undefined) } });
    const text = await res.text();
    let body = {} as Body;
    try {
      body = JSON.parse(text) as Body;
    } catch {
      // Not JSON: the test reads `text`.
    }
    return { status: res.status, type: res.headers.get('content-type') ?? '', headers: res.headers, body, text };
  }

  /** A GET with the path sent exactly as given (no client-side normalisation). */
  function rawGet(path: string): Promise<{ status: number; text: string }> {
    const u = new URL(url);
    return new Promise((resolve, reject) => {
      const req = request({ host: u.hostname, port: u.port, path, method: 'GET', headers: { authorization: `Bearer ${token}` } }, (res) => {
        let text = '';
        res.on('data', (c: Buffer) => (text += c.toString()));
        res.on('end', () => resolve({ status: res.statusCode ?? 0, text }));
      });
      req.on('error', reject);
      req.end();
    });
  }

  beforeAll(async () => {
    scratch = await scratchDatabase('readapi');
    d = await openDatabase({ url: scratch.url });
    await migrate(d);
    h = await connect(inject('natsUrl'));
    A = await provision(h, 'qa');
    B = await provision(h, 'qb');

    for (let i = 0; i < 30; i++) {
      const startedAt = new Date(BASE - i * 60_000);
      aRuns.push(
        runRow(A, runIdAt(startedAt), {
          startedAt,
          status: i % 3 === 0 ? 'failed' : 'completed',
          workflow: 'demo.pipeline',
          ...(i % 3 === 0 ? { errorCode: 'step_failed', errorMessage: 'boom' } : {}),
        }),
      );
      bRuns.push(runRow(B, runIdAt(startedAt), { startedAt, status: 'running', workflow: 'demo.other', currentStep: 'wait' }));
    }
    aRun = (aRuns[0] as RunInsert).runId;
    bRun = (bRuns[0] as RunInsert).runId;
    await insertBatched(d, schema.runs, [...aRuns, ...bRuns]);
    await insertBatched(d, schema.runSearch, [
      ...aRuns.map((r, i) => ({ tenant: A, key: 'customer', value: String(i % 5), runId: r.runId })),
      ...aRuns.map((r, i) => ({ tenant: A, key: 'region', value: i % 2 ? 'eu' : 'us', runId: r.runId })),
      ...bRuns.map((r) => ({ tenant: B, key: 'customer', value: '1', runId: r.runId })),
    ]);
    const t0 = new Date(BASE);
    await d.db
      .insert(schema.steps)
      .values([
        stepRow(A, aRun, 'extract', 1, t0, { outcome: 'failed', errorCode: 'step_failed', errorMessage: 'boom', durationMs: 40 }),
        stepRow(A, aRun, 'extract', 2, new Date(BASE + 500)),
        stepRow(A, aRun, 'transform', 1, new Date(BASE + 900), { worker: null, outcome: 'pending', durationMs: null }),
      ]);
    await d.db.insert(schema.events).values(
      ['run.started', 'step.scheduled', 'step.failed', 'step.scheduled'].map((type, i) => ({
        tenant: A,
        runId: aRun,
        seq: i + 1,
        type,
        at: new Date(BASE + i),
        streamSeq: i + 1,
        causationId: 'c',
      })),
    );
    await d.db.insert(schema.approvals).values([
      { tenant: A, runId: aRun, step: 'approve', signal: 'approve', status: 'pending', requestedAt: t0 },
      { tenant: B, runId: bRun, step: 'approve', signal: 'approve', status: 'approved', requestedAt: t0, decidedAt: t0 },
    ]);
    await d.db.insert(schema.workers).values([
      { tenant: A, workerId: 'wa', pools: ['default'], running: 2, lastSeenAt: t0 },
      { tenant: B, workerId: 'wb', pools: ['default'], running: 0, lastSeenAt: t0 },
    ]);
    await insertBatched(d, schema.auditLog, [
      ...Array.from({ length: 12 }, (_, i) => ({
        tenant: A,
        runId: i < 4 ? aRun : (aRuns[1] as RunInsert).runId,
        seq: i + 1,
        kind: 'run.signaled',
        actor: 'alice',
        detail: { signal: 'approve' },
        at: new Date(BASE + i * 1000),
        streamSeq: i + 1,
      })),
      { tenant: B, runId: bRun, seq: 1, kind: 'run.cancel-requested', actor: 'bob', detail: { reason: 'x' }, at: t0, streamSeq: 1 },
    ]);

    // A's run stream holds 6 messages, the projections have applied 4; B has none.
    const js = await h.js(A);
    for (let i = 0; i < 6; i++) await js.publish(Subjects.run(A, runIdAt(BASE + i)), new Uint8Array([i]));
    await d.db.insert(schema.checkpoints).values({ tenant: A, stream: Streams.runs(A), lastStreamSeq: 4 });

    onlyB = tokenUser('only-b', [B]);
    expired = tokenUser('expired', [A], true);
    rc = await startReadConsole({ db: d, natsUrl: h.url, tenants: [A, B], users: [onlyB.user, expired.user], log: consoleLog.log });
    url = rc.url;
    token = rc.token;
  });

  afterAll(async () => {
    await rc?.stop();
    await h?.close();
    await d?.close();
    await scratch?.drop();
  });

  it('read api - binds loopback by default and answers /healthz without a token', async () => {
    expect(url).toMatch(/^http:\/\/127\.0\.0\.1:\d+$/);
    const r = await get('/healthz', { headers: { authorization: '' } });
    expect(r.status).toBe(200);
    expect(r.type).toBe('application/json; charset=utf-8');
    expect(r.body).toEqual({ ok: true });
  });

  it('read api - a token reads as its user: the session it stands for, with no CSRF token', async () => {
    const r = await get(apiPaths.session);
    expect(r.status).toBe(200);
    expect(r.body as unknown as SessionInfo).toMatchObject({ userId: 'admin', tenants: [A, B], role: 'admin', csrfToken: '', token: 'test' });
  });

  it('read api - runs are listed for the path tenant only, newest first, with filters', async () => {
    const a = await get(`${apiPaths.runs(A)}?limit=500`);
    expect(a.status).toBe(200);
    expect(a.body.runs.map((r) => r.runId)).toEqual(aRuns.map((r) => r.runId));
    expect(a.body.runs.every((r) => r.tenant === A)).toBe(true);
    expect(a.body.runs[0]?.startedAt).toBe(new Date(BASE).toISOString());
    expect(a.body.nextCursor).toBeUndefined();

    const b = await get(`${apiPaths.runs(B)}?limit=500`);
    expect(b.body.runs.map((r) => r.runId)).toEqual(bRuns.map((r) => r.runId));

    const failed = await get(`${apiPaths.runs(A)}?status=failed&workflow=demo.pipeline`);
    expect(failed.body.runs).toHaveLength(10);
    expect(failed.body.runs.every((r) => r.status === 'failed')).toBe(true);
    expect((await get(`${apiPaths.runs(B)}?status=failed`)).body.runs).toEqual([]);

    const since = await get(`${apiPaths.runs(A)}?since=${encodeURIComponent(new Date(BASE - 4 * 60_000).toISOString())}&until=${encodeURIComponent(new Date(BASE).toISOString())}`);
    expect(since.body.runs.map((r) => r.runId)).toEqual(aRuns.slice(1, 5).map((r) => r.runId));

    const where = await get(`${apiPaths.runs(A)}?where=customer%3D2&where=region=us`);
    const want = aRuns.filter((_, i) => i % 5 === 2 && i % 2 === 0).map((r) => r.runId);
    expect(where.body.runs.map((r) => r.runId)).toEqual(want);
    expect(want.length).toBe(3);
    // B's runs all have customer=1; A's customer=1 runs are A's alone.
    const c1 = await get(`${apiPaths.runs(A)}?where=customer=1&limit=500`);
    expect(c1.body.runs.every((r) => r.tenant === A)).toBe(true);
    expect(c1.body.runs).toHaveLength(6);
  });

  it('read api - pages follow nextCursor to the end, each run once', async () => {
    const ids: string[] = [];
    let cursor: string | undefined;
    let pages = 0;
    do {
      const r = await get(`${apiPaths.runs(A)}?limit=7${cursor ? `&cursor=${cursor}` : ''}`);
      expect(r.status).toBe(200);
      ids.push(...r.body.runs.map((x) => x.runId));
      cursor = r.body.nextCursor;
      pages++;
    } while (cursor && pages < 20);
    expect(pages).toBe(5);
    expect(ids).toEqual(aRuns.map((r) => r.runId));
  });

  it('read api - a run is found under its own tenant only', async () => {
    const r = await get(apiPaths.run(A, aRun));
    expect(r.status).toBe(200);
    expect(r.body.run).toMatchObject({ tenant: A, runId: aRun, status: 'failed', errorCode: 'step_failed' });
    expect(r.body.steps.map((s) => `${s.step}#${s.attempt}`)).toEqual(['extract#1', 'extract#2', 'transform#1']);
    expect(r.body.events.map((e) => e.type)).toEqual(['run.started', 'step.scheduled', 'step.failed', 'step.scheduled']);
    expect(r.body.approvals).toHaveLength(1);
    expect(r.body.search).toEqual([
      { key: 'customer', value: '0' },
      { key: 'region', value: 'us' },
    ]);

    const cross = await get(apiPaths.run(B, aRun));
    expect(cross.status).toBe(404);
    expect(cross.body.error.code).toBe('run_not_found');
    expect(cross.text).not.toContain('step_failed');

    const unknown = await get(apiPaths.run(A, runIdAt(BASE)));
    expect(unknown.status).toBe(404);
    expect(unknown.body.error).toEqual({ code: 'run_not_found', message: expect.stringMatching(/^run \w{26} not found in tenant /) });

    const malformed = await get(apiPaths.run(A, 'not-a-run'));
    expect(malformed.status).toBe(400);
    expect(malformed.body.error.code).toBe('invalid_run_id');
  });

  it('read api - audit, approvals and workers answer for the path tenant only', async () => {
    const audit = await get(`${apiPaths.audit(A)}?limit=5`);
    expect(audit.status).toBe(200);
    expect(audit.body.entries.map((e) => e.seq)).toEqual([12, 11, 10, 9, 8]);
    expect(typeof audit.body.nextCursor).toBe('string');
    const next = await get(`${apiPaths.audit(A)}?limit=5&cursor=${audit.body.nextCursor}`);
    expect(next.body.entries.map((e) => e.seq)).toEqual([7, 6, 5, 4, 3]);
    const byRun = await get(`${apiPaths.audit(A)}?run=${aRun}`);
    expect(byRun.body.entries.map((e) => e.seq)).toEqual([4, 3, 2, 1]);
    const recent = await get(`${apiPaths.audit(A)}?since=${encodeURIComponent(new Date(BASE + 10_000).toISOString())}`);
    expect(recent.body.entries.map((e) => e.seq)).toEqual([12, 11]);
    const bAudit = await get(apiPaths.audit(B));
    expect(bAudit.body.entries.map((e) => [e.runId, e.actor])).toEqual([[bRun, 'bob']]);
    expect((await get(`${apiPaths.audit(B)}?run=${aRun}`)).body.entries).toEqual([]);

    expect((await get(apiPaths.approvals(A))).body.approvals.map((x) => [x.tenant, x.status])).toEqual([[A, 'pending']]);
    expect((await get(`${apiPaths.approvals(A)}?status=approved`)).body.approvals).toEqual([]);
    expect((await get(`${apiPaths.approvals(B)}?status=approved`)).body.approvals.map((x) => x.runId)).toEqual([bRun]);

    expect((await get(apiPaths.workers(A))).body.workers.map((w) => [w.workerId, w.running])).toEqual([['wa', 2]]);
    expect((await get(apiPaths.workers(B))).body.workers.map((w) => w.workerId)).toEqual(['wb']);
  });

  it('read api - bad parameters are 400s with a message that names the problem', async () => {
    const cases: [string, string, RegExp][] = [
      [`${apiPaths.runs(A)}?since=yesterday`, 'invalid_argument', /since must be a duration .* got "yesterday"/],
      [`${apiPaths.runs(A)}?until=soon`, 'invalid_argument', /until must be a duration/],
      [`${apiPaths.runs(A)}?status=done`, 'invalid_argument', /status must be one of pending, running, waiting, completed, failed, cancelled/],
      [`${apiPaths.runs(A)}?limit=0`, 'invalid_argument', /limit must be an integer from 1 to 500; got "0"/],
      [`${apiPaths.runs(A)}?limit=501`, 'invalid_argument', /limit must be an integer from 1 to 500/],
      [`${apiPaths.runs(A)}?limit=ten`, 'invalid_argument', /limit must be an integer/],
      [`${apiPaths.runs(A)}?cursor=bogus`, 'invalid_argument', /cursor is malformed/],
      [`${apiPaths.runs(A)}?cursor=${encodeURIComponent('a b')}`, 'invalid_argument', /cursor is malformed/],
      [`${apiPaths.runs(A)}?where=customer`, 'invalid_argument', /where must be key=value; got "customer"/],
      [`${apiPaths.runs(A)}?where=%3D1`, 'invalid_argument', /where must be key=value/],
      [`${apiPaths.runs(A)}?where=customer=%00`, 'invalid_argument', /none of them NUL/],
      [`${apiPaths.runs(A)}?workflow=a%00b`, 'invalid_argument', /workflow must have 1 to 256 characters, none of them NUL/],
      [`${apiPaths.runs(A)}?colour=red`, 'invalid_argument', /unknown query parameter "colour"; this endpoint takes status, workflow, since, until, where, limit, cursor/],
      [`${apiPaths.runs(A)}?status=failed&status=running`, 'invalid_argument', /query parameter status is given 2 times/],
      [`${apiPaths.run(A, aRun)}?verbose=1`, 'invalid_argument', /unknown query parameter "verbose"; this endpoint takes none/],
      [`${apiPaths.audit(A)}?run=nope`, 'invalid_run_id', /invalid run id "nope"/],
      [`${apiPaths.audit(A)}?status=failed`, 'invalid_argument', /unknown query parameter "status"/],
      [`${apiPaths.audit(A)}?cursor=${(await get(`${apiPaths.runs(A)}?limit=1`)).body.nextCursor}`, 'invalid_argument', /cursor is malformed/],
      [`${apiPaths.approvals(A)}?status=Nope!`, 'invalid_argument', /status must be a lowercase word/],
      [`${apiPaths.workers(A)}?limit=1`, 'invalid_argument', /unknown query parameter "limit"/],
      [`${apiPaths.platformSystem}?tenant=${A}`, 'invalid_argument', /unknown query parameter "tenant"/],
    ];
    for (const [path, code, message] of cases) {
      const r = await get(path);
      expect(r.status, path).toBe(400);
      expect(r.type, path).toBe('application/json; charset=utf-8');
      expect(r.body.error.code, path).toBe(code);
      expect(r.body.error.message, path).toMatch(message);
      expect(Object.keys(r.body), path).toEqual(['error']);
    }
    // A tenant the token's user does not have is refused whatever it looks like, before its
    // syntax is looked at: a malformed id tells no more than a well-formed one.
    for (const raw of ['Not_A_Tenant', 'x'.repeat(40), 'nobody-here']) {
      const r = await get(apiPaths.runs(raw));
      expect(r.status, raw).toBe(403);
      expect(r.body.error.code, raw).toBe('forbidden');
    }
    // fetch resolves dot segments before sending; a raw request shows the server does not follow them.
    for (const path of [`/api/tenants/%2E%2E/runs`, `/api/tenants/../runs`, `/api/tenants/${B}/../${A}/runs`, `/api/tenants/%E0%A4%A/runs`]) {
      const r = await rawGet(path);
      expect([400, 403, 404], path).toContain(r.status);
      expect(r.text, path).not.toContain(aRun);
    }
  });

  it('read api - unknown routes are 404s; a token never writes', async () => {
    for (const path of ['/api', '/api/tenants', `/api/tenants/${A}`, `/api/tenants/${A}/secrets`, `/api/tenants/${A}/runs/${aRun}/steps`, '/api/v2/system']) {
      const r = await get(path);
      expect(r.status, path).toBe(404);
      expect(r.body.error.code, path).toBe('not_found');
    }
    for (const [method, path] of [
      ['POST', apiPaths.runs(A)],
      ['PUT', apiPaths.runs(A)],
      ['DELETE', apiPaths.runs(A)],
      ['PATCH', apiPaths.runs(A)],
      ['POST', apiPaths.cancel(A, aRun)],
      ['POST', apiPaths.signOut],
    ] as const) {
      const r = await get(path, { method, body: method === 'DELETE' ? null : '{}', headers: { 'content-type': 'application/json', origin: url } });
      expect(r.status, `${method} ${path}`).toBe(403);
      expect(r.body.error, `${method} ${path}`).toEqual({ code: 'token_read_only', message: `API tokens only read: ${method} needs a signed-in session` });
    }
    // The writes were refused, not applied, and the token still reads.
    expect((await get(`${apiPaths.runs(A)}?limit=500`)).body.runs).toHaveLength(30);
  });

  it('read api - /api/system reports the NATS server and the projection lag of each tenant of the caller', async () => {
    const r = await get(apiPaths.platformSystem);
    expect(r.status).toBe(200);
    expect(r.body.nats?.server?.version).toMatch(/^2\.\d+\.\d+/);
    expect(r.body.nats?.jetstream?.streams).toBeGreaterThanOrEqual(8);
    expect(r.body.projection).toEqual([
      { tenant: A, stream: Streams.runs(A), streamLastSeq: 6, checkpoint: 4, lag: 2 },
      { tenant: B, stream: Streams.runs(B), streamLastSeq: 0, checkpoint: 0, lag: 0 },
    ]);
    // Another user's view holds its own tenants only.
    const onlyBs = await get(apiPaths.platformSystem, { headers: { authorization: `Bearer ${onlyB.token}` } });
    expect(onlyBs.body.projection.map((p) => p.tenant)).toEqual([B]);
  });

  it('read api - without NATS, /api/system still shows checkpoints', async () => {
    const bare = await startReadConsole({ db: d, tenants: [A] });
    try {
      const sys = await get(apiPaths.platformSystem, { headers: { authorization: `Bearer ${bare.token}` } }, bare.url);
      expect(sys.body).toEqual({ nats: null, projection: [{ tenant: A, stream: '', streamLastSeq: null, checkpoint: 4, lag: null }] });
    } finally {
      await bare.stop();
    }
  });

  it('read api - a failing database is a bare 500; the cause is logged, never sent', async () => {
    const gone = new URL(scratch.url);
    gone.pathname = '/capstan_no_such_database';
    const broken = await openDatabase({ url: gone.toString() });
    const logged = capturedLog();
    const s = await startReadConsole({ db: broken, tenants: [A], log: logged.log });
    try {
      for (const path of [apiPaths.runs(A), apiPaths.run(A, aRun), '/healthz']) {
        const r = await get(path, { headers: { authorization: `Bearer ${s.token}` } }, s.url);
        expect(r.status, path).toBe(500);
        expect(r.body).toEqual({ error: { code: 'internal', message: 'internal error; see the console log' } });
        expect(r.text).not.toMatch(/select|capstan_no_such_database|at .*\.js/i);
      }
      expect(logged.text()).toMatch(/capstan_no_such_database/);
      expect(logged.text()).toMatch(/console request failed/);
    } finally {
      await s.stop();
      await broken.close();
    }
  });

  it('read api - stop closes the port', async () => {
    const s = await startReadConsole({ db: d, tenants: [A] });
    const where = s.url;
    expect((await fetch(`${where}/healthz`)).status).toBe(200);
    await s.stop();
    await expect(fetch(`${where}/healthz`)).rejects.toThrow();
  });

  it('read api - attacks: no token, a wrong, malformed or expired one, one sent as a cookie, one for other tenants: refused, counted, none got through', async () => {
    const reads = [apiPaths.runs(A), apiPaths.run(A, aRun), apiPaths.audit(A), apiPaths.approvals(A), apiPaths.workers(A), apiPaths.system(A), apiPaths.platformSystem];
    const forged = newApiToken().token;
    const attempts: { what: string; headers: Record<string, string>; status: number; code: string }[] = [
      { what: 'no token', headers: { authorization: '' }, status: 401, code: 'unauthenticated' },
      { what: 'a well-formed token nobody holds', headers: { authorization: `Bearer ${forged}` }, status: 401, code: 'bad_token' },
      {
        what: "the admin's token with one character changed",
        headers: { authorization: `Bearer ${token.slice(0, -1)}${token.endsWith('A') ? 'B' : 'A'}` },
        status: 401,
        code: 'bad_token',
      },
      { what: 'a token that is not one', headers: { authorization: 'Bearer not-a-token' }, status: 401, code: 'bad_token' },
      { what: 'another scheme', headers: { authorization: `Basic ${Buffer.from(`admin:${token}`).toString('base64')}` }, status: 401, code: 'bad_token' },
      { what: 'the scheme alone', headers: { authorization: 'Bearer' }, status: 401, code: 'bad_token' },
      { what: 'an expired token', headers: { authorization: `Bearer ${expired.token}` }, status: 401, code: 'token_expired' },
      { what: 'the token as the session cookie', headers: { authorization: '', cookie: `capstan_session=${token}` }, status: 401, code: 'unauthenticated' },
      { what: 'the header as a cookie', headers: { authorization: '', cookie: `authorization=Bearer ${token}` }, status: 401, code: 'unauthenticated' },
      { what: 'a token of a user without tenant A', headers: { authorization: `Bearer ${onlyB.token}` }, status: 403, code: 'forbidden' },
    ];
    const refused: string[] = [];
    const through: string[] = [];
    let refusedTokens = 0;
    for (const a of attempts) {
      for (const path of reads) {
        // `authorization: ''` sends no such header: fetch drops empty headers.
        const headers = Object.fromEntries(Object.entries(a.headers).filter(([, v]) => v !== ''));
        const res = await fetch(url + path, { headers });
        const text = await res.text();
        const system = path === apiPaths.platformSystem;
        // B's user reads /api/system of B, its own: not an attack on A, and it must not show A.
        const ok = a.code === 'forbidden' && system ? res.status === 200 && !text.includes(`"${A}"`) : res.status === a.status && (JSON.parse(text) as Body).error.code === a.code;
        (ok ? refused : through).push(`${a.what}: GET ${path} → ${res.status} ${text.slice(0, 120)}`);
        if (text.includes(aRun) || text.includes('"wa"') || text.includes(`"tenant":"${A}"`)) through.push(`${a.what}: GET ${path} leaked tenant A`);
        if (a.status === 401 && headers['authorization']) refusedTokens++;
      }
    }
    process.stdout.write(`read api attacks: ${refused.length} refused, ${through.length} got through\n`);
    expect(through).toEqual([]);
    expect(refused).toHaveLength(attempts.length * reads.length);
    // Every refused token is in the log, by reason; no presented token is.
    const lines = consoleLog
      .text()
      .split('\n')
      .filter((l) => l.includes('API token refused'));
    expect(lines).toHaveLength(refusedTokens);
    for (const secret of [forged, token, expired.token, onlyB.token, token.slice(0, -1)]) expect(consoleLog.text()).not.toContain(secret);
    // And the one that is good still reads.
    expect((await get(apiPaths.runs(A))).status).toBe(200);
  });

  describe('cli read commands', () => {
    const api = () => ['--api', url, '--token', token];

    it('cli read - runs --json lists the tenant runs, filters and pages', async () => {
      const r = await capstan(['runs', '--tenant', A, ...api(), '--json', '--limit', '500']);
      expect(r.err).toBe('');
      expect(r.code).toBe(0);
      expect(json<RunsPageResponse>(r.out).runs.map((x) => x.runId)).toEqual(aRuns.map((x) => x.runId));

      const w = await capstan(['runs', '--tenant', A, ...api(), '--json', '--where', 'customer=2', '--where', 'region=us', '--status', 'completed']);
      expect(json<RunsPageResponse>(w.out).runs.map((x) => x.runId)).toEqual(aRuns.filter((_, i) => i % 5 === 2 && i % 2 === 0 && i % 3 !== 0).map((x) => x.runId));

      const first = json<RunsPageResponse>((await capstan(['runs', '--tenant', A, ...api(), '--json', '--limit', '20'])).out);
      const second = json<RunsPageResponse>((await capstan(['runs', '--tenant', A, ...api(), '--json', '--limit', '20', '--cursor', first.nextCursor as string])).out);
      expect([...first.runs, ...second.runs].map((x) => x.runId)).toEqual(aRuns.map((x) => x.runId));
      expect(second.nextCursor).toBeUndefined();

      const b = await capstan(['runs', '--tenant', B, ...api(), '--json', '--limit', '500']);
      expect(json<RunsPageResponse>(b.out).runs.map((x) => x.runId)).toEqual(bRuns.map((x) => x.runId));
    });

    it('cli read - runs prints aligned columns and the next cursor', async () => {
      const r = await capstan(['runs', '--tenant', A, ...api(), '--limit', '4']);
      expect(r.code).toBe(0);
      const lines = r.out.trimEnd().split('\n');
      expect(lines[0]).toMatch(/^RUN\s+WORKFLOW\s+STATUS\s+STARTED\s+ENDED\s+STEP\s+ATTEMPTS\s+ERROR$/);
      expect(lines).toHaveLength(6);
      const statusAt = (lines[0] as string).indexOf('STATUS');
      expect(lines.slice(1, 5).map((l) => l.slice(statusAt).split(' ')[0])).toEqual(['failed', 'completed', 'completed', 'failed']);
      expect(lines.slice(1, 5).map((l) => l.slice(0, 26))).toEqual(aRuns.slice(0, 4).map((x) => x.runId));
      expect(lines[5]).toMatch(/^more: --cursor [A-Za-z0-9_-]+$/);
    });

    it('cli read - run shows the run, its steps as a table and its timeline; another tenant gets not found', async () => {
      const r = await capstan(['run', aRun, '--tenant', A, ...api()]);
      expect(r.code).toBe(0);
      expect(r.out).toContain(`${aRun}  demo.pipeline@1  failed`);
      expect(r.out).toContain('error     step_failed: boom');
      expect(r.out).toContain('search    customer=0, region=us');
      expect(r.out).toMatch(/STEP\s+ATTEMPT\s+OUTCOME\s+POOL\s+WORKER\s+SCHEDULED\s+DURATION\s+ERROR/);
      expect(r.out).toMatch(/extract\s+1\s+failed\s+default\s+w-1\s+\S+\s+40 ms\s+step_failed: boom/);
      expect(r.out).toMatch(/transform\s+1\s+pending\s+default\s+-\s+\S+\s+-/);
      expect(r.out).toMatch(/timeline\n\s+1 {2}\S+ {2}run\.started/);
      expect(r.out).toMatch(/\s+3 {2}\S+ {2}step\.failed/);

      const detail = json<RunDetailResponse>((await capstan(['run', aRun, '--tenant', A, ...api(), '--json'])).out);
      expect(detail.steps).toHaveLength(3);

      const cross = await capstan(['run', aRun, '--tenant', B, ...api()]);
      expect(cross.code).toBe(3);
      expect(cross.err).toContain(`run_not_found: run ${aRun} not found in tenant ${B}`);
      expect(cross.out).toBe('');
    });

    it('cli read - run shows its lineage both ways: its parent, the run it continues, the run that continues it, its children', async () => {
      const at = new Date(BASE);
      const [first, next, child] = [runIdAt(BASE + 1), runIdAt(BASE + 2), runIdAt(BASE + 3)];
      await d.db
        .insert(schema.runs)
        .values([runRow(A, first, { startedAt: at, continuedAs: next }), runRow(A, next, { startedAt: at, continuedFrom: first, parentRunId: aRun, parentStep: 'ship' })]);
      // A child step as the projector writes it: handler `child:<workflow>`, the child run as its worker.
      await d.db.insert(schema.steps).values(stepRow(A, first, 'ship', 1, at, { pool: 'child', handler: 'child:demo.ship', worker: child }));
      try {
        const a = await capstan(['run', first, '--tenant', A, ...api()]);
        expect(a.code).toBe(0);
        expect(a.out).toContain(`continued as ${next}`);
        expect(a.out).not.toContain('continues ');
        expect(a.out).toMatch(new RegExp(`children\\n\\s+STEP\\s+ATTEMPT\\s+WORKFLOW\\s+CHILD RUN\\s+OUTCOME\\n\\s+ship\\s+1\\s+demo\\.ship\\s+${child}\\s+completed`));
        const b = await capstan(['run', next, '--tenant', A, ...api()]);
        expect(b.out).toContain(`parent    ${aRun}  step ship`);
        expect(b.out).toContain(`continues ${first}`);
        expect(b.out).not.toContain('continued as');
      } finally {
        await d.db.delete(schema.steps).where(and(eq(schema.steps.tenant, A), eq(schema.steps.runId, first)));
        await d.db.delete(schema.runs).where(and(eq(schema.runs.tenant, A), inArray(schema.runs.runId, [first, next])));
      }
    });

    it('cli read - audit lists entries newest first, by run', async () => {
      const r = await capstan(['audit', '--tenant', A, ...api(), '--run', aRun]);
      expect(r.code).toBe(0);
      const lines = r.out.trimEnd().split('\n');
      expect(lines[0]).toMatch(/^ID\s+AT\s+RUN\s+SEQ\s+KIND\s+ACTOR\s+DETAIL$/);
      expect(lines.slice(1).map((l) => l.split(/\s+/)[3])).toEqual(['4', '3', '2', '1']);
      expect(lines[1]).toContain('{"signal":"approve"}');
      const audit = json<AuditPageResponse>((await capstan(['audit', '--tenant', B, ...api(), '--json'])).out);
      expect(audit.entries.map((e) => e.actor)).toEqual(['bob']);
    });

    it('cli read - status --system shows the NATS server and the lag of each tenant', async () => {
      const r = await capstan(['status', '--system', ...api()]);
      expect(r.code).toBe(0);
      expect(r.out).toMatch(/^NATS\s+nats-server 2\.\d+\.\d+/);
      expect(r.out).toMatch(/TENANT\s+STREAM SEQ\s+CHECKPOINT\s+LAG/);
      expect(r.out).toMatch(new RegExp(`${A}\\s+6\\s+4\\s+2`));
      expect(r.out).toMatch(new RegExp(`${B}\\s+0\\s+0\\s+0`));
      const sys = json<PlatformSystemResponse>((await capstan(['status', '--system', ...api(), '--json'])).out);
      expect(sys.projection.map((p) => p.lag)).toEqual([2, 0]);
    });

    it('cli read - the console and token come from flags, else the environment, else the dev stack (its token for its console only), else a clear error', async () => {
      const viaEnv = await capstan(['runs', '--tenant', A, '--json', '--limit', '1'], rc.env);
      expect(viaEnv.code).toBe(0);
      expect(json<RunsPageResponse>(viaEnv.out).runs).toHaveLength(1);
      const none = { url: '/nonexistent/console.url', token: '/nonexistent/console.token' };
      expect(readApi({ api: 'http://flag:1/', token: 't-flag' }, { CAPSTAN_API_URL: 'http://env:2', CAPSTAN_TOKEN: 't-env' }, none)).toEqual({
        url: 'http://flag:1',
        token: 't-flag',
      });
      expect(readApi({}, { CAPSTAN_API_URL: 'http://env:2', CAPSTAN_TOKEN: 't-env' }, none)).toEqual({ url: 'http://env:2', token: 't-env' });
      const dir = mkdtempSync(join(tmpdir(), 'capstan-read-api-'));
      try {
        const dev = { url: join(dir, 'console.url'), token: join(dir, 'console.token') };
        writeFileSync(dev.url, `${url}\nhttp://127.0.0.1:1/signin?token=x\n`);
        writeFileSync(dev.token, `${token}\n`, { mode: 0o600 });
        expect(readApi({}, {}, dev)).toEqual({ url, token });
        expect(readApi({ api: `${url}/` }, {}, dev)).toEqual({ url, token });
        // The dev token is never sent to another console.
        expect(() => readApi({ api: 'http://127.0.0.1:9' }, {}, dev)).toThrow(/no API token: pass --token <token>, or set CAPSTAN_TOKEN or CAPSTAN_TOKEN_FILE/);
        const file = join(dir, 'other.token');
        writeFileSync(file, 'from-a-file\n', { mode: 0o600 });
        expect(readApi({ api: 'http://127.0.0.1:9' }, { CAPSTAN_TOKEN_FILE: file }, dev)).toEqual({ url: 'http://127.0.0.1:9', token: 'from-a-file' });
        expect(() => readApi({ api: 'http://127.0.0.1:9' }, { CAPSTAN_TOKEN_FILE: join(dir, 'missing') }, dev)).toThrow(/cannot read the API token file .*missing: ENOENT/);
        expect(() => readApi({ token: 'two words' }, {}, dev)).toThrow(/--token does not hold an API token/);
      } finally {
        rmSync(dir, { recursive: true, force: true });
      }
      expect(() => readApi({}, {}, none)).toThrow(/no console to read from: pass --api <url>, set CAPSTAN_API_URL, or start `capstan dev` first/);
      expect(() => readApi({ api: 'nats://127.0.0.1:4222' }, {}, none)).toThrow(/--api must be an http/);
    });

    it('cli read - the console refusing the token or the tenant is said so, with its code', async () => {
      const wrong = await capstan(['runs', '--tenant', A, '--api', url, '--token', newApiToken().token]);
      expect(wrong.code).toBe(1);
      expect(wrong.err).toMatch(/^capstan: credentials_invalid: the console at http:\/\/127\.0\.0\.1:\d+ refused the API token \(bad_token\): unknown API token\n$/);
      const old = await capstan(['runs', '--tenant', A, '--api', url, '--token', expired.token]);
      expect(old.err).toMatch(/credentials_invalid: .*\(token_expired\)/);
      const other = await capstan(['runs', '--tenant', A, '--api', url, '--token', onlyB.token]);
      expect(other.code).toBe(1);
      expect(other.err).toMatch(/permission_denied: the console at .* refused \(forbidden\): only-b has no access to tenant/);
      expect(other.out).toBe('');
      expect((await capstan(['runs', '--tenant', B, '--api', url, '--token', onlyB.token, '--json'])).code).toBe(0);
    });

    it('cli read - bad flags fail before any request, API errors keep their codes, an unreachable console is said so', async () => {
      const since = await capstan(['runs', '--tenant', A, '--api', 'http://127.0.0.1:1', '--token', token, '--since', 'yesterday']);
      expect(since.code).toBe(2);
      expect(since.err).toMatch(/invalid_argument: since must be a duration/);
      const where = await capstan(['runs', '--tenant', A, ...api(), '--where', 'customer']);
      expect(where.code).toBe(2);
      expect(where.err).toMatch(/where must be key=value/);
      const limit = await capstan(['runs', '--tenant', A, ...api(), '--limit', '900']);
      expect(limit.code).toBe(2);
      expect(limit.err).toMatch(/limit must be an integer from 1 to 500/);
      const flag = await capstan(['runs', '--tenant', A, ...api(), '--colour', 'red']);
      expect(flag.code).toBe(2);
      expect(flag.err).toMatch(/colour/);
      const tenant = await capstan(['runs', ...api()]);
      expect(tenant.err).toMatch(/--tenant <id> is required/);
      const down = await capstan(['runs', '--tenant', A, '--api', 'http://127.0.0.1:1', '--token', token]);
      expect(down.code).toBe(1);
      expect(down.err).toMatch(/unavailable: cannot reach the console at http:\/\/127\.0\.0\.1:1/);
    });
  });
});

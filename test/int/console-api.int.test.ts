/**
 * The console's JSON API over a real Postgres (projections seeded directly) and a real
 * nats-server: no endpoint answers without a session; no session reaches a tenant it was
 * not given; roles and CSRF hold on every action; bad parameters are 400s that say what
 * is wrong; lists, detail, audit CSV and live updates carry what the projections hold.
 */
import { afterAll, beforeAll, describe, expect, inject, it } from 'vitest';
import { mkdtempSync, mkdirSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import {
  apiPaths,
  createConsole,
  hashPassword,
  loadConfig,
  type ApprovalsResponse,
  type AuditPageResponse,
  type Console,
  type ConsoleUser,
  type PlatformSystemResponse,
  type PoliciesResponse,
  type PolicyVersionResponse,
  type RunDetailResponse,
  type RunsPageResponse,
  type RunStreamChange,
  type SessionInfo,
  type SystemResponse,
  type WorkersResponse,
} from '@capstan/console';
import { migrate, openDatabase, type Database } from '@capstan/kit';
import { db as schema, Streams, Subjects, type TenantId, Role } from '@capstan/schemas';
import { createHash } from 'node:crypto';
import { request as httpRequest } from 'node:http';
import { and, eq, inArray, sql } from 'drizzle-orm';
import { scratchDatabase } from '../harness/postgres.js';
import { connect, provision, silent, type Harness, accessAs, serviceEnv } from '../harness/fixtures.js';
import { insertBatched, runIdAt, runRow, stepRow, type RunInsert } from '../harness/projections.js';
import { ConsoleClient, type ErrorBody } from '../harness/console.js';

const BASE = Date.parse('2026-03-01T12:00:00Z');
const SECRET = 's'.repeat(48);
const PASSWORD = 'correct horse battery staple';
const sha = (text: string) => createHash('sha256').update(text, 'utf8').digest('hex');
/** Two policy versions of tenant A and one of B. */
const V1 = 'permit (principal, action, resource);\n';
const V2 = 'permit (principal, action, resource)\nwhen { resource.mode < 2 };\n\nforbid (principal, action == Action::"lease", resource);\n';
const B_TEXT = 'forbid (principal, action, resource); // tenant B only\n';

describe('console api', () => {
  let scratch: Awaited<ReturnType<typeof scratchDatabase>>;
  let d: Database;
  let h: Harness;
  let app: Console;
  let url: string;
  let A: TenantId;
  let B: TenantId;
  const aRuns: RunInsert[] = [];
  let aRun: string;
  let bRun: string;
  let waitingRun: string;
  let webDir: string;
  const users: ConsoleUser[] = [];
  const client = () => new ConsoleClient(url);
  const as = async (userId: string) => {
    const c = client();
    await c.signIn(userId, PASSWORD);
    return c;
  };

  beforeAll(async () => {
    scratch = await scratchDatabase('console');
    d = await openDatabase({ url: scratch.url });
    await migrate(d);
    h = await connect(inject('natsUrl'));
    A = await provision(h, 'ca');
    B = await provision(h, 'cb');

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
    }
    aRun = (aRuns[0] as RunInsert).runId;
    // A's run 1 waits for approval; B has one running run.
    waitingRun = (aRuns[1] as RunInsert).runId;
    aRuns[1] = { ...(aRuns[1] as RunInsert), status: 'waiting', currentStep: 'review', workflow: 'demo.signal' };
    const bRow = runRow(B, runIdAt(BASE), { startedAt: new Date(BASE), status: 'running', workflow: 'demo.other', currentStep: 'wait' });
    bRun = bRow.runId;
    await insertBatched(d, schema.runs, [...aRuns, bRow]);
    await insertBatched(
      d,
      schema.runSearch,
      aRuns.map((r, i) => ({ tenant: A, key: 'customer', value: String(i % 5), runId: r.runId })),
    );
    const t0 = new Date(BASE);
    await d.db
      .insert(schema.steps)
      .values([
        stepRow(A, aRun, 'extract', 1, t0),
        stepRow(A, aRun, 'load', 1, new Date(BASE + 100), { outcome: 'failed', errorCode: 'step_failed', errorMessage: 'db down', durationMs: 40 }),
        stepRow(A, aRun, 'load', 2, new Date(BASE + 500), { outcome: 'failed', errorCode: 'step_failed', errorMessage: 'boom', durationMs: 30, mode: 1 }),
        stepRow(A, waitingRun, 'draft', 1, new Date(BASE - 60_000)),
      ]);
    const about = [
      [null, null],
      ['extract', 1],
      ['extract', 1],
      ['load', 1],
      ['load', 1],
      [null, null],
    ] as const;
    await d.db.insert(schema.events).values(
      ['run.started', 'step.scheduled', 'step.completed', 'step.scheduled', 'step.failed', 'run.failed'].map((type, i) => ({
        tenant: A,
        runId: aRun,
        seq: i + 1,
        type,
        at: new Date(BASE + i),
        streamSeq: i + 1,
        causationId: 'c',
        step: about[i]?.[0] ?? null,
        attempt: about[i]?.[1] ?? null,
      })),
    );
    await d.db.insert(schema.approvals).values([
      { tenant: A, runId: waitingRun, step: 'review', signal: 'approve', status: 'waiting', requestedAt: new Date(BASE - 50_000) },
      { tenant: B, runId: bRun, step: 'review', signal: 'approve', status: 'waiting', requestedAt: t0 },
    ]);
    await d.db.insert(schema.workers).values([
      { tenant: A, workerId: 'wa', pools: ['default', 'gpu'], running: 2, lastSeenAt: new Date() },
      { tenant: B, workerId: 'wb', pools: ['default'], running: 0, lastSeenAt: t0 },
    ]);
    await insertBatched(d, schema.auditLog, [
      ...Array.from({ length: 12 }, (_, i) => ({
        tenant: A,
        runId: i < 4 ? aRun : waitingRun,
        seq: i + 1,
        kind: 'run.signaled',
        actor: i === 0 ? '=cmd|evil' : 'alice',
        detail: { name: i === 1 ? 'a,"b"\nc' : 'approve' },
        at: new Date(BASE + i * 1000),
        streamSeq: i + 1,
      })),
      { tenant: B, runId: bRun, seq: 1, kind: 'run.cancel-requested', actor: 'bob', detail: { reason: 'x' }, at: t0, streamSeq: 1 },
    ]);
    // A's run stream holds 7 messages, the projections have applied 6 (a checkpoint beyond
    // the stream's end would be a projection following another stream: refused).
    const js = await h.js(A);
    for (let i = 0; i < 7; i++) await js.publish(Subjects.run(A, runIdAt(BASE + i)), new Uint8Array([i]));
    await d.db.insert(schema.checkpoints).values([{ tenant: A, stream: Streams.runs(A), lastStreamSeq: 6 }]);
    await d.db.insert(schema.policies).values([
      { tenant: A, version: 1, sha256: sha(V1), by: 'alice', reason: null, at: new Date(BASE - 3_600_000), text: V1, streamSeq: 1 },
      { tenant: A, version: 2, sha256: sha(V2), by: 'bob', reason: 'no leases for mode 3', at: new Date(BASE - 1_800_000), text: V2, streamSeq: 2 },
      { tenant: B, version: 1, sha256: sha(B_TEXT), by: 'mallory', reason: null, at: new Date(BASE), text: B_TEXT, streamSeq: 1 },
    ]);

    const passwordHash = await hashPassword(PASSWORD);
    users.push(
      { userId: 'viewer-a', orgId: 'acme', role: 'viewer', tenants: [A], passwordHash },
      { userId: 'operator-a', orgId: 'acme', role: 'operator', tenants: [A], passwordHash },
      { userId: 'admin-a', orgId: 'acme', role: 'admin', tenants: [A], passwordHash },
      { userId: 'admin-b', orgId: 'other', role: 'admin', tenants: [B], passwordHash },
      { userId: 'link-only', orgId: 'acme', role: 'viewer', tenants: [A] },
      { userId: 'guessed', orgId: 'acme', role: 'viewer', tenants: [A], passwordHash },
    );
    // A users file, as the process reads it.
    webDir = mkdtempSync(join(tmpdir(), 'console-web-'));
    mkdirSync(join(webDir, 'assets'));
    writeFileSync(join(webDir, 'index.html'), '<!doctype html><title>console shell</title><div id="root"></div>');
    writeFileSync(join(webDir, 'assets', 'app-1234.js'), 'console.log("app")');
    const usersFile = join(webDir, '..', `${webDir.split('/').pop() ?? 'x'}-users.json`);
    writeFileSync(usersFile, JSON.stringify(users));
    const config = loadConfig({
      CONSOLE_SECRET: SECRET,
      CONSOLE_USERS: usersFile,
      CONSOLE_PORT: '0',
      CONSOLE_WEB_DIR: webDir,
      DATABASE_URL: scratch.url,
      ...(await serviceEnv(inject('natsUrl'), Role.Console)),
    });
    app = createConsole({ db: d, access: await accessAs(inject('natsUrl'), Role.Console), config, log: silent, pollMs: 100 });
    await app.start();
    url = app.url;
    rmSync(usersFile);
  });

  afterAll(async () => {
    await app?.stop();
    await h?.close();
    await d?.close();
    await scratch?.drop();
    if (webDir) rmSync(webDir, { recursive: true, force: true });
  });

  /** Every API endpoint, with a body each POST accepts; `t` and `run` fill the path. */
  const endpoints = (t: string, run: string): [string, string, unknown?][] => [
    ['GET', `/api/tenants/${t}/runs`],
    ['GET', `/api/tenants/${t}/runs/stream`],
    ['GET', `/api/tenants/${t}/runs/${run}`],
    ['GET', `/api/tenants/${t}/approvals`],
    ['GET', `/api/tenants/${t}/workers`],
    ['GET', `/api/tenants/${t}/audit`],
    ['GET', `/api/tenants/${t}/audit.csv`],
    ['GET', `/api/tenants/${t}/system`],
    ['GET', `/api/tenants/${t}/policies`],
    ['GET', `/api/tenants/${t}/policies/1`],
    ['POST', `/api/tenants/${t}/runs/${run}/cancel`, { reason: 'test' }],
    ['POST', `/api/tenants/${t}/runs/${run}/signal`, { name: 'approve' }],
    ['POST', `/api/tenants/${t}/runs/${run}/retry`, {}],
    ['POST', `/api/tenants/${t}/runs/${run}/approvals/review/approve`, {}],
    ['POST', `/api/tenants/${t}/runs/${run}/approvals/review/deny`, {}],
    ['POST', `/api/tenants/${t}/workers/wa/approve`, {}],
    ['POST', `/api/tenants/${t}/workers/wa/revoke`, {}],
  ];

  it('console api - binds loopback; /healthz answers without a session; the UI shell and assets load without one', async () => {
    expect(url).toMatch(/^http:\/\/127\.0\.0\.1:\d+$/);
    const c = client();
    const health = await c.get('/healthz');
    expect(health.status).toBe(200);
    expect(health.body).toEqual({ ok: true });
    for (const page of ['/', '/signin', '/signin?token=abc', `/t/${A}/runs/${aRun}`]) {
      const r = await c.get(page);
      expect(r.status, page).toBe(200);
      expect(r.text, page).toContain('console shell');
      expect(r.headers.get('content-security-policy'), page).toContain("script-src 'self'");
      expect(r.headers.get('referrer-policy'), page).toBe('no-referrer');
      expect(r.headers.get('x-frame-options'), page).toBe('DENY');
    }
    const asset = await c.get('/assets/app-1234.js');
    expect(asset.status).toBe(200);
    expect(asset.headers.get('cache-control')).toContain('immutable');
    expect((await c.get('/assets/app-gone.js')).status).toBe(404);
    // Nothing of the API leaks into an unauthenticated page.
    expect((await c.get('/')).text).not.toContain(aRun);
  });

  it('console api - every endpoint refuses a caller without a session (401), or with a forged or expired one', async () => {
    const c = client();
    const all: [string, string, unknown?][] = [...endpoints(A, aRun), ['GET', '/api/session'], ['GET', apiPaths.platformSystem], ['POST', '/api/auth/signout', {}]];
    for (const [method, path, body] of all) {
      const r = await c.call<ErrorBody>(method, path, body);
      expect(r.status, `${method} ${path}`).toBe(401);
      expect(r.body.error.code, `${method} ${path}`).toBe('unauthenticated');
      expect(r.text, `${method} ${path}`).not.toContain('step_failed');
    }
    // A forged cookie: a real session's payload with another role, the signature kept.
    const real = await as('viewer-a');
    const [v, payload, mac] = decodeURIComponent((real.cookie ?? '').split('=')[1] ?? '').split('.') as [string, string, string];
    const forged = { ...(JSON.parse(Buffer.from(payload, 'base64url').toString()) as Record<string, unknown>), role: 'admin', tenants: [A, B] };
    const f = client();
    f.cookie = `capstan_session=${v}.${Buffer.from(JSON.stringify(forged)).toString('base64url')}.${mac}`;
    f.csrf = real.csrf;
    for (const [method, path, body] of [...endpoints(A, aRun), ...endpoints(B, bRun)]) {
      expect((await f.call(method, path, body)).status, `${method} ${path}`).toBe(401);
    }
    const r = await f.get('/api/session');
    expect((r.body as ErrorBody).error.message).toMatch(/expired or is no longer valid/);
  });

  it("console api - a read is refused without a session and at a Host that is not the console's (DNS rebinding), even with a session", async () => {
    const viewer = await as('viewer-a');
    const read = apiPaths.runs(A);
    // Node's fetch sets Host from the URL; a rebinding browser sends the attacker's name.
    const raw = (path: string, headers: Record<string, string>) =>
      new Promise<{ status: number; body: string }>((resolve, reject) => {
        const r = httpRequest(url + path, { headers }, (res) => {
          let body = '';
          res
            .setEncoding('utf8')
            .on('data', (c: string) => (body += c))
            .on('end', () => resolve({ status: res.statusCode ?? 0, body }));
        });
        r.on('error', reject).end();
      });
    expect((await client().get(read)).status).toBe(401);
    const port = new URL(url).port;
    let served = 0;
    for (const host of [`rebind.attacker.example:${port}`, 'rebind.attacker.example', `localhost.attacker.example:${port}`]) {
      const r = await raw(read, { host, cookie: viewer.cookie ?? '' });
      if (r.status === 200) served++;
      expect(r.status, host).toBe(403);
      expect(r.body, host).not.toContain(aRun);
    }
    expect(served).toBe(0);
    // The same session at the console's own address and at localhost is served.
    expect((await raw(read, { host: `127.0.0.1:${port}`, cookie: viewer.cookie ?? '' })).status).toBe(200);
    expect((await raw(read, { host: `localhost:${port}`, cookie: viewer.cookie ?? '' })).status).toBe(200);
  });

  it("console api - a session reaches only its own tenants: 403 for every endpoint of another, 404 for another tenant's run under its own", async () => {
    for (const userId of ['viewer-a', 'operator-a', 'admin-a']) {
      const c = await as(userId);
      for (const [method, path, body] of endpoints(B, bRun)) {
        const r = await c.call<ErrorBody>(method, path, body);
        expect(r.status, `${userId} ${method} ${path}`).toBe(403);
        expect(r.body.error.code).toBe('forbidden');
        expect(r.text).not.toContain('demo.other');
      }
      // A tenant that does not exist, or whose id is not even valid, is the same 403.
      for (const t of ['nobody', 'Not_A_Tenant']) expect((await c.get(`/api/tenants/${t}/runs`)).status).toBe(403);
    }
    const a = await as('admin-a');
    const cross = await a.get<ErrorBody>(`/api/tenants/${A}/runs/${bRun}`);
    expect(cross.status).toBe(404);
    expect(cross.body.error.code).toBe('run_not_found');
    for (const action of ['cancel', 'signal', 'retry']) {
      const r = await a.post<ErrorBody>(`/api/tenants/${A}/runs/${bRun}/${action}`, action === 'signal' ? { name: 'approve' } : {});
      expect(r.status, action).toBe(404);
    }
    expect((await a.post(`/api/tenants/${A}/runs/${bRun}/approvals/review/approve`, {})).status).toBe(404);
    expect((await a.post(`/api/tenants/${A}/workers/wb/revoke`, {})).status).toBe(404);
    // B's admin sees B's rows and none of A's.
    const b = await as('admin-b');
    const runs = await b.get<RunsPageResponse>(`/api/tenants/${B}/runs`);
    expect(runs.body.runs.map((r) => r.runId)).toEqual([bRun]);
    const audit = await b.get<AuditPageResponse>(`/api/tenants/${B}/audit`);
    expect(audit.body.entries.map((e) => e.actor)).toEqual(['bob']);
  });

  it('console api - roles: a viewer cannot act, an operator cannot admit or revoke workers', async () => {
    const viewer = await as('viewer-a');
    for (const [method, path, body] of endpoints(A, waitingRun).filter(([m]) => m === 'POST')) {
      const r = await viewer.call<ErrorBody>(method, path, body);
      expect(r.status, path).toBe(403);
      expect(r.body.error.message, path).toMatch(/needs the (operator|admin) role; viewer-a is viewer/);
    }
    const operator = await as('operator-a');
    for (const what of ['approve', 'revoke']) {
      const r = await operator.post<ErrorBody>(`/api/tenants/${A}/workers/wa/${what}`, {});
      expect(r.status).toBe(403);
      expect(r.body.error.message).toMatch(/needs the admin role; operator-a is operator/);
    }
    // Reads are open to every role.
    for (const [method, path] of endpoints(A, aRun).filter(([m, p]) => m === 'GET' && !p.endsWith('/stream'))) {
      expect((await viewer.call(method, path)).status, path).toBe(200);
    }
  });

  it('console api - CSRF: an action needs the session token and the console origin', async () => {
    const op = await as('operator-a');
    const path = `/api/tenants/${A}/runs/${waitingRun}/signal`;
    const noToken = await op.post<ErrorBody>(path, { name: 'nudge' }, { 'x-csrf-token': '' });
    expect(noToken.status).toBe(403);
    expect(noToken.body.error.code).toBe('csrf_failed');
    const wrong = await op.post<ErrorBody>(path, { name: 'nudge' }, { 'x-csrf-token': 'x'.repeat(32) });
    expect(wrong.body.error.code).toBe('csrf_failed');
    const otherSession = await as('operator-a');
    expect((await op.post<ErrorBody>(path, { name: 'nudge' }, { 'x-csrf-token': otherSession.csrf ?? '' })).body.error.code).toBe('csrf_failed');
    const evil = await op.post<ErrorBody>(path, { name: 'nudge' }, { origin: 'http://evil.example' });
    expect(evil.status).toBe(403);
    expect(evil.body.error.message).toMatch(/cross-origin request refused/);
    const noOrigin = await op.call<ErrorBody>('POST', path, { name: 'nudge' }, { origin: '' });
    expect(noOrigin.status).toBe(403);
    // Sign-in itself is refused cross-origin (no logging a victim into an attacker's account).
    expect((await client().post('/api/auth/signin', { userId: 'viewer-a', password: PASSWORD }, { origin: 'http://evil.example' })).status).toBe(403);
    // GET never mutates: the action routes do not answer GET.
    expect((await op.get(path)).status).toBe(404);
    // The same call with token and origin goes through.
    const ok = await op.post(path, { name: 'nudge' });
    expect(ok.status).toBe(202);
  });

  it('console api - sign-in by password: cookie flags, wrong passwords, unknown users, throttling, sign-out', async () => {
    const c = client();
    const r = await c.post<SessionInfo>('/api/auth/signin', { userId: 'operator-a', password: PASSWORD });
    expect(r.status).toBe(200);
    expect(r.body).toMatchObject({ userId: 'operator-a', orgId: 'acme', role: 'operator', tenants: [A] });
    expect(r.body.csrfToken.length).toBeGreaterThanOrEqual(32);
    c.csrf = r.body.csrfToken;
    const setCookie = r.headers.get('set-cookie') ?? '';
    expect(setCookie).toMatch(/^capstan_session=v1\.[^;]+; Max-Age=43200; Path=\/api; HttpOnly; SameSite=Strict$/);
    expect(setCookie).not.toContain('Secure');
    const session = await c.get<SessionInfo>('/api/session');
    expect(session.body).toEqual(r.body);

    const bad = await client().post<ErrorBody>('/api/auth/signin', { userId: 'operator-a', password: 'wrong' });
    expect(bad.status).toBe(401);
    expect(bad.body.error).toEqual({ code: 'bad_credentials', message: 'unknown user or wrong password' });
    expect(bad.headers.get('set-cookie')).toBeNull();
    const unknown = await client().post<ErrorBody>('/api/auth/signin', { userId: 'mallory', password: PASSWORD });
    expect(unknown.body.error).toEqual(bad.body.error);
    // A user without a password signs in by link only.
    expect((await client().post('/api/auth/signin', { userId: 'link-only', password: '' })).status).toBe(400);
    expect((await client().post('/api/auth/signin', { userId: 'link-only', password: 'anything' })).status).toBe(401);
    for (const body of [{}, { userId: 'a' }, { userId: 'a', password: 'b', extra: 1 }, 'text', []]) {
      const x = await client().post<ErrorBody>('/api/auth/signin', body);
      expect(x.status, JSON.stringify(body)).toBe(400);
      expect(x.body.error.message.length).toBeGreaterThan(5);
    }

    // Ten wrong passwords lock that user id for a while; others are unaffected.
    for (let i = 0; i < 10; i++) expect((await client().post('/api/auth/signin', { userId: 'guessed', password: `guess-${i}` })).status).toBe(401);
    const locked = await client().post<ErrorBody>('/api/auth/signin', { userId: 'guessed', password: PASSWORD });
    expect(locked.status).toBe(429);
    expect(locked.body.error.code).toBe('too_many_attempts');
    expect((await client().post('/api/auth/signin', { userId: 'viewer-a', password: PASSWORD })).status).toBe(200);

    const cookie = c.cookie;
    const out = await c.post('/api/auth/signout', {});
    expect(out.status).toBe(204);
    expect(c.cookie).toBeUndefined();
    const replay = client();
    replay.cookie = cookie;
    expect((await replay.get('/api/session')).status).toBe(401);
  });

  it('console api - a one-time sign-in link signs in once', async () => {
    const link = app.signInLink('link-only');
    expect(link).toMatch(new RegExp(`^${url}/signin\\?token=[A-Za-z0-9_-]{43}$`));
    const c = client();
    expect(await c.signInWithLink(link)).toMatchObject({ userId: 'link-only', role: 'viewer' });
    expect((await c.get(`/api/tenants/${A}/runs?limit=1`)).status).toBe(200);
    const again = await client().post<ErrorBody>('/api/auth/link', { token: new URL(link).searchParams.get('token') });
    expect(again.status).toBe(401);
    expect(again.body.error.message).toMatch(/unknown, used or expired/);
    expect(() => app.signInLink('nobody')).toThrow(/no console user "nobody"/);
  });

  it('console api - runs list: filters, typed search fields, keyset pages, ISO times', async () => {
    const c = await as('viewer-a');
    const all = await c.get<RunsPageResponse>(`/api/tenants/${A}/runs?limit=500`);
    expect(all.status).toBe(200);
    expect(all.headers.get('cache-control')).toBe('no-store');
    expect(all.body.runs.map((r) => r.runId)).toEqual(aRuns.map((r) => r.runId));
    expect(all.body.runs[0]).toMatchObject({ tenant: A, runId: aRun, status: 'failed', errorCode: 'step_failed', startedAt: new Date(BASE).toISOString(), endedAt: null });
    expect(Object.keys(all.body.runs[0] ?? {})).not.toContain('chain');

    const failed = await c.get<RunsPageResponse>(
      `/api/tenants/${A}/runs?status=failed&workflow=demo.pipeline&since=${encodeURIComponent(new Date(BASE - 10 * 60_000).toISOString())}`,
    );
    expect(failed.body.runs.map((r) => r.runId)).toEqual(aRuns.filter((_, i) => i % 3 === 0 && i <= 10).map((r) => r.runId));
    const where = await c.get<RunsPageResponse>(`/api/tenants/${A}/runs?where=customer=2`);
    expect(where.body.runs.map((r) => r.runId)).toEqual(aRuns.filter((_, i) => i % 5 === 2).map((r) => r.runId));

    const ids: string[] = [];
    let cursor: string | undefined;
    let pages = 0;
    do {
      const r = await c.get<RunsPageResponse>(`/api/tenants/${A}/runs?limit=8${cursor ? `&cursor=${cursor}` : ''}`);
      ids.push(...r.body.runs.map((x) => x.runId));
      cursor = r.body.nextCursor;
      pages++;
    } while (cursor && pages < 10);
    expect(pages).toBe(4);
    expect(ids).toEqual(aRuns.map((r) => r.runId));
  });

  it('console api - bad query parameters and bodies are 400s with a message that names the problem', async () => {
    const c = await as('operator-a');
    const cases: [string, string, RegExp][] = [
      [`/api/tenants/${A}/runs?since=yesterday`, 'invalid_argument', /since must be a duration .* got "yesterday"/],
      [`/api/tenants/${A}/runs?until=soon`, 'invalid_argument', /until must be a duration/],
      [`/api/tenants/${A}/runs?status=done`, 'invalid_argument', /status must be one of pending, running, waiting, completed, failed, cancelled/],
      [`/api/tenants/${A}/runs?limit=0`, 'invalid_argument', /limit must be an integer from 1 to 500; got "0"/],
      [`/api/tenants/${A}/runs?limit=ten`, 'invalid_argument', /limit must be an integer/],
      [`/api/tenants/${A}/runs?cursor=bogus`, 'invalid_argument', /cursor is malformed/],
      [`/api/tenants/${A}/runs?where=customer`, 'invalid_argument', /where must be key=value; got "customer"/],
      [`/api/tenants/${A}/runs?where=a=1&where=a=2`, 'invalid_argument', /where gives the key "a" more than once/],
      [`/api/tenants/${A}/runs?workflow=a%00b`, 'invalid_argument', /none of them NUL/],
      [`/api/tenants/${A}/runs?colour=red`, 'invalid_argument', /unknown query parameter "colour"; this endpoint takes status, workflow, since, until, where, limit, cursor/],
      [`/api/tenants/${A}/runs?status=failed&status=running`, 'invalid_argument', /query parameter status is given 2 times/],
      [`/api/tenants/${A}/runs/not-a-run`, 'invalid_run_id', /invalid run id "not-a-run"/],
      [`/api/tenants/${A}/runs/${aRun}?verbose=1`, 'invalid_argument', /unknown query parameter "verbose"; this endpoint takes none/],
      [`/api/tenants/${A}/audit?run=nope`, 'invalid_run_id', /invalid run id "nope"/],
      [`/api/tenants/${A}/audit?since=later`, 'invalid_argument', /since must be a duration/],
      [`/api/tenants/${A}/audit.csv?limit=0`, 'invalid_argument', /limit must be an integer from 1 to 100000/],
      [`/api/tenants/${A}/audit.csv?cursor=x`, 'invalid_argument', /unknown query parameter "cursor"/],
      [`/api/tenants/${A}/approvals?status=Nope!`, 'invalid_argument', /status must be a lowercase word/],
      [`/api/tenants/${A}/workers?limit=1`, 'invalid_argument', /unknown query parameter "limit"/],
      [`/api/tenants/${A}/runs/stream?x=1`, 'invalid_argument', /unknown query parameter "x"/],
    ];
    for (const [path, code, message] of cases) {
      const r = await c.get<ErrorBody>(path);
      expect(r.status, path).toBe(400);
      expect(r.type, path).toBe('application/json; charset=utf-8');
      expect(r.body.error.code, path).toBe(code);
      expect(r.body.error.message, path).toMatch(message);
    }
    const bodies: [string, unknown, RegExp][] = [
      [`/api/tenants/${A}/runs/${waitingRun}/signal`, {}, /name/],
      [`/api/tenants/${A}/runs/${waitingRun}/signal`, { name: 'Not A Token' }, /name/],
      [`/api/tenants/${A}/runs/${waitingRun}/signal`, { name: 'go', payload: 'x'.repeat(300_000) }, /bad request|too large|payload/i],
      [`/api/tenants/${A}/runs/${waitingRun}/cancel`, { reason: 'r'.repeat(501) }, /reason/],
      [`/api/tenants/${A}/runs/${waitingRun}/cancel`, { why: 'x' }, /why is not a known field/],
      [`/api/tenants/${A}/runs/${waitingRun}/approvals/review/approve`, [], /must be an object/],
    ];
    for (const [path, body, message] of bodies) {
      const r = await c.post<ErrorBody>(path, body);
      expect(r.status, `${path} ${JSON.stringify(body).slice(0, 40)}`).toBe(400);
      expect(r.body.error.message).toMatch(message);
    }
    const notJson = await c.call<ErrorBody>('POST', `/api/tenants/${A}/runs/${waitingRun}/cancel`, undefined, { 'content-type': 'application/json' });
    expect([400]).toContain(notJson.status);
    expect((await c.call<ErrorBody>('POST', `/api/tenants/${A}/runs/${waitingRun}/cancel`, undefined, { 'content-type': 'text/plain' })).status).toBe(400);
    // Unknown API paths are JSON 404s, never the UI shell.
    const unknown = await c.get<ErrorBody>(`/api/tenants/${A}/secrets`);
    expect(unknown.status).toBe(404);
    expect(unknown.body.error.code).toBe('not_found');
  });

  it('console api - run detail: timeline, trace, approvals, explanation and applicable actions', async () => {
    const c = await as('viewer-a');
    const r = await c.get<RunDetailResponse>(`/api/tenants/${A}/runs/${aRun}`);
    expect(r.status).toBe(200);
    expect(r.body.run).toMatchObject({ runId: aRun, status: 'failed' });
    expect(r.body.events.map((e) => e.type)).toEqual(['run.started', 'step.scheduled', 'step.completed', 'step.scheduled', 'step.failed', 'run.failed']);
    expect(r.body.trace.map((s) => [s.step, s.attempts.length, s.outcome, s.offsetMs])).toEqual([
      ['extract', 1, 'completed', 0],
      ['load', 2, 'failed', 100],
    ]);
    expect(r.body.steps.map((s) => s.mode)).toEqual(['inline', 'inline', 'sandboxed']);
    expect(r.body.explanation).toEqual({ tone: 'error', step: 'load', text: 'Step load failed on attempt 2: step_failed: boom.' });
    expect(r.body.actions).toEqual({ cancel: false, signal: false, retry: true });
    expect(r.body.search).toEqual([{ key: 'customer', value: '0' }]);
    // The hops: the run, each attempt its events name, and the attempt's time queued and on its worker.
    expect(r.body.hops.map((x) => [x.depth, x.kind, x.name, x.status, x.durationMs])).toEqual([
      [0, 'run', 'run demo.pipeline@1', 'error', 5],
      [1, 'step', 'step extract#1', 'ok', 1],
      [2, 'queued', 'queued', 'ok', 0],
      [2, 'worker', 'worker w-1', 'ok', 12],
      [1, 'step', 'step load#1', 'error', 1],
      [2, 'queued', 'queued', 'ok', 0],
      [2, 'worker', 'worker w-1', 'error', 12],
    ]);
    expect(r.body.traceId).toBeNull();

    const w = await c.get<RunDetailResponse>(`/api/tenants/${A}/runs/${waitingRun}`);
    expect(w.body.approvals).toMatchObject([{ step: 'review', status: 'waiting', decidedBy: null }]);
    expect(w.body.explanation.text).toMatch(/^Waiting for approval of step review, requested \d+ (d|h|min) ago, by an operator\.$/);
    expect(w.body.actions).toEqual({ cancel: true, signal: true, retry: false });
  });

  it('console api - run detail: lineage both ways (the run that continues it, the run it continues, its parent)', async () => {
    const c = await as('viewer-a');
    const at = new Date(BASE);
    // A chain as the projector writes it: the first run names its continuation, the continuation its predecessor (and, here, a parent).
    const [first, next] = [runIdAt(BASE + 1), runIdAt(BASE + 2)];
    await d.db
      .insert(schema.runs)
      .values([runRow(A, first, { startedAt: at, continuedAs: next }), runRow(A, next, { startedAt: at, continuedFrom: first, parentRunId: aRun, parentStep: 'ship' })]);
    try {
      const a = (await c.get<RunDetailResponse>(`/api/tenants/${A}/runs/${first}`)).body;
      expect([a.parent, a.continuedFrom, a.continuedAs]).toEqual([null, null, next]);
      const b = (await c.get<RunDetailResponse>(`/api/tenants/${A}/runs/${next}`)).body;
      expect([b.parent, b.continuedFrom, b.continuedAs]).toEqual([{ runId: aRun, step: 'ship' }, first, null]);
      // A run with no lineage says so with nulls, not absent fields.
      const plain = (await c.get<RunDetailResponse>(`/api/tenants/${A}/runs/${aRun}`)).body;
      expect([plain.parent, plain.continuedFrom, plain.continuedAs]).toEqual([null, null, null]);
    } finally {
      await d.db.delete(schema.runs).where(and(eq(schema.runs.tenant, A), inArray(schema.runs.runId, [first, next])));
    }
  });

  it('console api - approvals queue, worker fleet, system lag', async () => {
    const c = await as('viewer-a');
    const approvals = await c.get<ApprovalsResponse>(`/api/tenants/${A}/approvals?status=waiting`);
    expect(approvals.body.approvals.map((a) => [a.runId, a.step, a.status])).toEqual([[waitingRun, 'review', 'waiting']]);
    const workers = await c.get<WorkersResponse>(`/api/tenants/${A}/workers`);
    expect(workers.body.workers).toMatchObject([{ workerId: 'wa', pools: ['default', 'gpu'], running: 2, stale: false }]);
    expect(workers.body.workers[0]?.silentForMs).toBeLessThan(60_000);
    const system = await c.get<SystemResponse>(`/api/tenants/${A}/system`);
    expect(system.body).toEqual({ tenant: A, projectionLag: 1, checkpoint: 6 });
    // Every tenant of the session, never another's: viewer-a has A only.
    const all = await c.get<PlatformSystemResponse>(apiPaths.platformSystem);
    expect(all.body.projection).toEqual([{ tenant: A, stream: Streams.runs(A), streamLastSeq: 7, checkpoint: 6, lag: 1 }]);
    expect(all.body.nats?.server?.version).toMatch(/^2\.\d+\.\d+/);
  });

  it('console api - actions check the run first: 409 on a finished run, 404 on an unknown approval, 202 and a NATS command otherwise', async () => {
    const op = await as('operator-a');
    const done = await op.post<ErrorBody>(`/api/tenants/${A}/runs/${aRuns[2]?.runId ?? ''}/cancel`, {});
    expect(done.status).toBe(409);
    expect(done.body.error).toEqual({ code: 'conflict', message: `cannot cancel run ${aRuns[2]?.runId ?? ''}: it is completed` });
    const notFailed = await op.post<ErrorBody>(`/api/tenants/${A}/runs/${waitingRun}/retry`, {});
    expect(notFailed.status).toBe(409);
    expect(notFailed.body.error.message).toMatch(/only a failed run can be retried/);
    expect((await op.post<ErrorBody>(`/api/tenants/${A}/runs/${waitingRun}/approvals/nope/approve`, {})).status).toBe(404);
    expect((await op.post<ErrorBody>(`/api/tenants/${A}/runs/${runIdAt(BASE + 5)}/cancel`, {})).status).toBe(404);

    const before = (await (await h.jsm(A)).streams.info(Streams.commands(A))).state.messages;
    const cancel = await op.post(`/api/tenants/${A}/runs/${waitingRun}/cancel`, { reason: 'wrong input' });
    expect(cancel.status).toBe(202);
    expect(cancel.body).toEqual({ accepted: true, action: 'cancel', tenant: A, runId: waitingRun });
    expect((await (await h.jsm(A)).streams.info(Streams.commands(A))).state.messages).toBe(before + 1);
    // The console wrote no projection row: the run is as it was until the control plane acts.
    expect((await op.get<RunDetailResponse>(`/api/tenants/${A}/runs/${waitingRun}`)).body.run.status).toBe('waiting');
  });

  it('console api - audit log: filters, pages, and a CSV export with the same filters, escaped', async () => {
    const c = await as('viewer-a');
    const page = await c.get<AuditPageResponse>(`/api/tenants/${A}/audit?limit=5`);
    expect(page.body.entries.map((e) => e.seq)).toEqual([12, 11, 10, 9, 8]);
    const next = await c.get<AuditPageResponse>(`/api/tenants/${A}/audit?limit=5&cursor=${page.body.nextCursor ?? ''}`);
    expect(next.body.entries.map((e) => e.seq)).toEqual([7, 6, 5, 4, 3]);
    expect((await c.get<AuditPageResponse>(`/api/tenants/${A}/audit?run=${aRun}`)).body.entries.map((e) => e.seq)).toEqual([4, 3, 2, 1]);

    const csv = await c.get(`/api/tenants/${A}/audit.csv?run=${aRun}`);
    expect(csv.status).toBe(200);
    expect(csv.type).toBe('text/csv; charset=utf-8');
    expect(csv.headers.get('content-disposition')).toMatch(new RegExp(`^attachment; filename="audit-${A}-\\d{4}-\\d{2}-\\d{2}\\.csv"$`));
    const lines = csv.text.split('\r\n');
    expect(lines[0]).toBe('id,at,run_id,seq,kind,actor,detail,stream_seq');
    expect(lines).toHaveLength(4 + 2);
    expect(lines.at(-1)).toBe('');
    expect(lines[3]).toContain(`${aRun},2,run.signaled,alice,"{""name"":""a,\\""b\\""\\nc""}",2`);
    // The actor "=cmd|evil" would be a formula in a spreadsheet; it is defused.
    expect(lines[4]).toContain(",'=cmd|evil,");
    const all = await c.get(`/api/tenants/${A}/audit.csv`);
    expect(all.text.split('\r\n').filter(Boolean)).toHaveLength(13);
    expect((await c.get(`/api/tenants/${A}/audit.csv?limit=3`)).text.split('\r\n').filter(Boolean)).toHaveLength(4);
  });

  it('console api - live updates: changed runs are pushed to listeners of their tenant only, and polling stops when they leave', async () => {
    const a = await as('viewer-a');
    const b = await as('admin-b');
    const sa = await a.stream(`/api/tenants/${A}/runs/stream`);
    const sb = await b.stream(`/api/tenants/${B}/runs/stream`);
    try {
      expect(sa.status).toBe(200);
      expect(sa.type).toBe('text/event-stream; charset=utf-8');
      expect(await sa.next('ready')).toEqual({ tenant: A });
      await sb.next('ready');
      await expect.poll(() => app.liveTenants().sort()).toEqual([A, B].sort());
      // Let the pollers read their starting checkpoints, then the projector "applies" an event.
      await new Promise((r) => setTimeout(r, 300));
      await d.db.transaction(async (tx) => {
        await tx
          .update(schema.runs)
          .set({ status: 'completed', updatedAt: new Date(), endedAt: new Date(), lastSeq: 2 })
          .where(sql`tenant = ${A} and run_id = ${waitingRun}`);
        await tx.insert(schema.events).values({ tenant: A, runId: waitingRun, seq: 2, type: 'run.completed', at: new Date(), streamSeq: 7, causationId: 'c' });
        await tx
          .update(schema.checkpoints)
          .set({ lastStreamSeq: 7 })
          .where(sql`tenant = ${A}`);
      });
      const change = (await sa.next('runs', 5000)) as RunStreamChange;
      expect(change.runs.map((r) => [r.runId, r.status])).toEqual([[waitingRun, 'completed']]);
      expect(change.resync).toBeUndefined();
      await new Promise((r) => setTimeout(r, 400));
      expect(sb.events.filter((e) => e.event === 'runs')).toEqual([]);
    } finally {
      await sa.close();
      await sb.close();
    }
    await expect.poll(() => app.liveTenants(), { timeout: 3000 }).toEqual([]);
    // Without a session, no stream.
    const anon = await client().stream(`/api/tenants/${A}/runs/stream`);
    expect(anon.status).toBe(401);
    await anon.close();
  });
  describe('policy versions, run policy decisions and leases, audit filters by kind and actor', () => {
    // Policy versions are seeded with the other projections; run rows here, as the projector and the secrets-lease service write them.
    let govRun: string;

    beforeAll(async () => {
      govRun = (aRuns[3] as RunInsert).runId;
      await d.db.insert(schema.approvals).values({
        tenant: A,
        runId: govRun,
        step: 'load',
        signal: 'policy',
        status: 'approved',
        requestedAt: new Date(BASE + 10),
        decidedAt: new Date(BASE + 20),
        decidedBy: 'carol',
        approvers: 'group:dba',
        policyVersion: 2,
        policies: 'p1',
      });
      const at = (ms: number) => new Date(BASE + 100_000 + ms);
      await d.db.insert(schema.auditLog).values([
        {
          tenant: A,
          runId: govRun,
          seq: 1,
          kind: 'policy.decided',
          actor: 'policy',
          detail: { step: 'extract', attempt: 1, decision: 'allow', version: 2, policies: ['p0'] },
          at: at(0),
          streamSeq: 101,
        },
        {
          tenant: A,
          runId: govRun,
          seq: 2,
          kind: 'credential.decided',
          actor: 'policy',
          detail: { step: 'load', attempt: 1, name: 'DB_PASSWORD', decision: 'needs-approval', version: 2, policies: ['p1'] },
          at: at(1),
          streamSeq: 102,
        },
        { tenant: A, runId: govRun, seq: 3, kind: 'approval.decided', actor: 'carol', detail: { step: 'load', decision: 'approve', reason: null }, at: at(2), streamSeq: 103 },
        // An unexpected field in a lease row is not passed on: the console names only known fields.
        {
          tenant: A,
          runId: govRun,
          seq: -1,
          kind: 'lease.issued',
          actor: 'secrets-lease',
          detail: { leaseId: 'L1', keys: ['DB_PASSWORD', 'DB_USER'], step: 'load', attempt: 1, ttlMs: 60_000, stray: 'not-for-the-console' },
          at: at(3),
          streamSeq: 0,
        },
        {
          tenant: A,
          runId: govRun,
          seq: -2,
          kind: 'lease.redeemed',
          actor: 'secrets-lease',
          detail: { leaseId: 'L1', keys: ['DB_PASSWORD', 'DB_USER'], step: 'load', attempt: 1 },
          at: at(4),
          streamSeq: 0,
        },
        {
          tenant: A,
          runId: govRun,
          seq: -3,
          kind: 'lease.denied',
          actor: 'secrets-lease',
          detail: { leaseId: 'L1', code: 'lease_used', keys: ['DB_PASSWORD'], step: 'load', attempt: 1 },
          at: at(5),
          streamSeq: 0,
        },
        {
          tenant: A,
          runId: govRun,
          seq: -4,
          kind: 'lease.revoked',
          actor: null,
          detail: { reason: 'run.completed', leases: ['L1'], keys: ['DB_PASSWORD', 'DB_USER'] },
          at: at(6),
          streamSeq: 0,
        },
        // The same run id under tenant B: never part of A's answer.
        {
          tenant: B,
          runId: govRun,
          seq: -1,
          kind: 'lease.issued',
          actor: 'secrets-lease',
          detail: { leaseId: 'LB', keys: ['B_ONLY'], step: 'load', attempt: 1 },
          at: at(0),
          streamSeq: 0,
        },
        {
          tenant: B,
          runId: govRun,
          seq: 1,
          kind: 'policy.decided',
          actor: 'policy',
          detail: { step: 'b-step', attempt: 1, decision: 'deny', version: 1, policies: ['pb'] },
          at: at(0),
          streamSeq: 2,
        },
      ]);
    });

    it('console api - policy versions: newest first without texts, one version with its text, for a viewer; tenant-scoped; 400 and 404', async () => {
      const c = await as('viewer-a');
      const list = await c.get<PoliciesResponse>(`/api/tenants/${A}/policies`);
      expect(list.status).toBe(200);
      expect(list.body.versions).toEqual([
        { version: 2, sha256: sha(V2), by: 'bob', reason: 'no leases for mode 3', at: new Date(BASE - 1_800_000).toISOString() },
        { version: 1, sha256: sha(V1), by: 'alice', reason: null, at: new Date(BASE - 3_600_000).toISOString() },
      ]);
      expect(list.text).not.toContain('permit');
      const v1 = await c.get<PolicyVersionResponse>(`/api/tenants/${A}/policies/1`);
      expect(v1.status).toBe(200);
      expect(v1.body).toEqual({ version: 1, sha256: sha(V1), by: 'alice', reason: null, at: new Date(BASE - 3_600_000).toISOString(), text: V1 });
      expect((await c.get<PolicyVersionResponse>(`/api/tenants/${A}/policies/2`)).body.text).toBe(V2);

      const missing = await c.get<ErrorBody>(`/api/tenants/${A}/policies/3`);
      expect(missing.status).toBe(404);
      expect(missing.body.error).toEqual({ code: 'not_found', message: `tenant ${A} has no policy version 3` });
      for (const bad of ['0', 'abc', '1.5', '-1', '9999999999', '%20']) {
        const r = await c.get<ErrorBody>(`/api/tenants/${A}/policies/${bad}`);
        expect(r.status, bad).toBe(400);
        expect(r.body.error.code, bad).toBe('invalid_argument');
        expect(r.body.error.message, bad).toMatch(/^version must be a positive integer; got /);
      }
      const extra = await c.get<ErrorBody>(`/api/tenants/${A}/policies?version=1`);
      expect(extra.status).toBe(400);
      expect(extra.body.error.message).toMatch(/unknown query parameter "version"/);

      // B's version 1 is B's: A's viewer cannot reach it, B's admin sees only it.
      expect((await c.get(`/api/tenants/${B}/policies/1`)).status).toBe(403);
      const b = await as('admin-b');
      expect((await b.get<PoliciesResponse>(`/api/tenants/${B}/policies`)).body.versions.map((v) => [v.version, v.by])).toEqual([[1, 'mallory']]);
      expect((await b.get<PolicyVersionResponse>(`/api/tenants/${B}/policies/1`)).body.text).toBe(B_TEXT);
      expect((await b.get(`/api/tenants/${A}/policies`)).status).toBe(403);
    });

    it('console api - run detail: the policy decisions and credential leases of the run, key names only, its tenant only', async () => {
      const c = await as('viewer-a');
      const r = await c.get<RunDetailResponse>(`/api/tenants/${A}/runs/${govRun}`);
      expect(r.status).toBe(200);
      const at = (ms: number) => new Date(BASE + 100_000 + ms).toISOString();
      expect(r.body.policyDecisions).toEqual([
        { kind: 'policy.decided', step: 'extract', attempt: 1, decision: 'allow', version: 2, policies: ['p0'], approvers: null, credential: null, at: at(0) },
        {
          kind: 'credential.decided',
          step: 'load',
          attempt: 1,
          decision: 'needs-approval',
          version: 2,
          policies: ['p1'],
          approvers: 'group:dba',
          credential: 'DB_PASSWORD',
          at: at(1),
        },
      ]);
      expect(r.body.leases).toEqual([
        { kind: 'lease.issued', keys: ['DB_PASSWORD', 'DB_USER'], leaseId: 'L1', step: 'load', attempt: 1, code: null, at: at(3), actor: 'secrets-lease' },
        { kind: 'lease.redeemed', keys: ['DB_PASSWORD', 'DB_USER'], leaseId: 'L1', step: 'load', attempt: 1, code: null, at: at(4), actor: 'secrets-lease' },
        { kind: 'lease.denied', keys: ['DB_PASSWORD'], leaseId: 'L1', step: 'load', attempt: 1, code: 'lease_used', at: at(5), actor: 'secrets-lease' },
        { kind: 'lease.revoked', keys: ['DB_PASSWORD', 'DB_USER'], leaseId: null, step: null, attempt: null, code: 'run.completed', at: at(6), actor: null },
      ]);
      expect(r.text).not.toContain('not-for-the-console');
      expect(r.text).not.toContain('B_ONLY');
      expect(r.text).not.toContain('b-step');
      // A run with neither answers empty lists.
      const plain = await c.get<RunDetailResponse>(`/api/tenants/${A}/runs/${aRun}`);
      expect(plain.body.policyDecisions).toEqual([]);
      expect(plain.body.leases).toEqual([]);
    });

    it('console api - audit log: kind and actor filters, in JSON pages (keyset paging over matches) and the CSV export; bad values are 400s', async () => {
      const c = await as('viewer-a');
      const seqs = async (q: string) => (await c.get<AuditPageResponse>(`/api/tenants/${A}/audit?${q}`)).body.entries.map((e) => e.seq);
      expect(await seqs('kind=lease.denied')).toEqual([-3]);
      expect(await seqs(`kind=policy.decided&run=${govRun}`)).toEqual([1]);
      expect(await seqs('actor=policy')).toEqual([2, 1]);
      expect(await seqs('actor=carol&kind=approval.decided')).toEqual([3]);
      expect(await seqs('actor=nobody')).toEqual([]);
      // Paging walks the matches only: 11 rows by alice, 5 a page, with rows of others between them.
      const pages: number[][] = [];
      let cursor = '';
      for (;;) {
        const page = await c.get<AuditPageResponse>(`/api/tenants/${A}/audit?actor=alice&kind=run.signaled&limit=5${cursor ? `&cursor=${cursor}` : ''}`);
        expect(page.status).toBe(200);
        pages.push(page.body.entries.map((e) => e.seq));
        if (!page.body.nextCursor) break;
        cursor = page.body.nextCursor;
      }
      expect(pages).toEqual([[12, 11, 10, 9, 8], [7, 6, 5, 4, 3], [2]]);
      // Tenant B's rows of the same kind stay B's.
      expect((await c.get<AuditPageResponse>(`/api/tenants/${A}/audit?kind=lease.issued`)).body.entries.map((e) => e.detail)).toEqual([expect.objectContaining({ leaseId: 'L1' })]);

      const csv = await c.get(`/api/tenants/${A}/audit.csv?kind=lease.revoked`);
      expect(csv.status).toBe(200);
      const lines = csv.text.split('\r\n').filter(Boolean);
      expect(lines).toHaveLength(2);
      expect(lines[1]).toContain(`${govRun},-4,lease.revoked,,`);
      expect((await c.get(`/api/tenants/${A}/audit.csv?actor=alice&limit=3`)).text.split('\r\n').filter(Boolean)).toHaveLength(4);
      expect((await c.get(`/api/tenants/${A}/audit.csv?actor=alice`)).text.split('\r\n').filter(Boolean)).toHaveLength(12);

      const bad: [string, RegExp][] = [
        [`/api/tenants/${A}/audit?kind=`, /kind must have 1 to 256 characters/],
        [`/api/tenants/${A}/audit?actor=${'a'.repeat(257)}`, /actor must have 1 to 256 characters/],
        [`/api/tenants/${A}/audit?actor=a%00b`, /none of them NUL/],
        [`/api/tenants/${A}/audit?kind=a&kind=b`, /query parameter kind is given 2 times/],
        [`/api/tenants/${A}/audit.csv?kind=`, /kind must have 1 to 256 characters/],
        [`/api/tenants/${A}/audit.csv?who=alice`, /unknown query parameter "who"/],
      ];
      for (const [path, message] of bad) {
        const r = await c.get<ErrorBody>(path);
        expect(r.status, path).toBe(400);
        expect(r.body.error.code, path).toBe('invalid_argument');
        expect(r.body.error.message, path).toMatch(message);
      }
    });
  });
});

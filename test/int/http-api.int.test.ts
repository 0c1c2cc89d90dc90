/**
 * The query API over HTTP (a real server on a free loopback port, a real Postgres seeded
 * directly, a real nats-server for stream positions): every endpoint answers for the tenant
 * in its path and never another's; bad parameters are 400s that say what is wrong; unknown
 * runs and routes are 404s; writes are 405s; internal failures are bare 500s; /metrics is
 * Prometheus text. Then the CLI read commands against the same server.
 */
import { afterAll, beforeAll, describe, expect, inject, it, vi } from 'vitest';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Writable } from 'node:stream';
import { request } from 'node:http';
import { createLogger, createQueryServer, migrate, openDatabase, type Database, type QueryServer, type WorkerRow } from '@capstan/kit';
import { apiUrl, auditCmd, runCmd, runsCmd, systemStatusCmd, type AuditResponse, type RunResponse, type RunsResponse, type SystemResponse, type Wire } from '@capstan/cli';
import { CapstanError, db as schema, ErrorCode, Streams, Subjects, type TenantId, Role } from '@capstan/schemas';
import { scratchDatabase } from '../harness/postgres.js';
import { connect, provision, silent, type Harness, accessAs } from '../harness/fixtures.js';
import { insertBatched, runIdAt, runRow, stepRow, type RunInsert } from '../harness/projections.js';

const BASE = Date.parse('2026-03-01T12:00:00Z');

/** Every field any endpoint answers with; each test probes the ones its endpoint has. */
interface Body extends RunsResponse, RunResponse, AuditResponse, SystemResponse {
  readonly ok: boolean;
  readonly workers: Wire<WorkerRow>[];
  readonly error: { code: string; message: string };
}

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

async function get(base: string, path: string, init: RequestInit = {}): Promise<Answer> {
  const res = await fetch(base + path, init);
  const text = await res.text();
  let body = {} as Body;
  try {
    body = JSON.parse(text) as Body;
  } catch {
    // Not JSON (/metrics): the test reads `text`.
  }
  return { status: res.status, type: res.headers.get('content-type') ?? '', headers: res.headers, body, text };
}

/** A GET with the path sent exactly as given (no client-side normalisation). */
function rawGet(base: string, path: string): Promise<{ status: number; text: string }> {
  const u = new URL(base);
  return new Promise((resolve, reject) => {
    const req = request({ host: u.hostname, port: u.port, path, method: 'GET' }, (res) => {
      let text = '';
      res.on('data', (c: Buffer) => (text += c.toString()));
      res.on('end', () => resolve({ status: res.statusCode ?? 0, text }));
    });
    req.on('error', reject);
    req.end();
  });
}

/**
 * Runs a read command in this process and captures what it prints. Errors are turned into
 * main.ts's exit codes, so once main.ts wires these commands this can spawn
 * `node services/cli/dist/main.js` instead (as cli.int.test.ts does) with the same assertions.
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

describe('http api', () => {
  let scratch: Awaited<ReturnType<typeof scratchDatabase>>;
  let d: Database;
  let h: Harness;
  let server: QueryServer;
  let url: string;
  let A: TenantId;
  let B: TenantId;
  const aRuns: RunInsert[] = [];
  const bRuns: RunInsert[] = [];
  let aRun: string;
  let bRun: string;

  beforeAll(async () => {
    scratch = await scratchDatabase('httpapi');
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

    server = createQueryServer({ db: d, access: await accessAs(h.url, Role.Projector), tenants: () => [A, B], log: silent, port: 0 });
    await server.start();
    url = server.url;
  });

  afterAll(async () => {
    await server?.stop();
    await h?.close();
    await d?.close();
    await scratch?.drop();
  });

  it('http api - binds loopback by default and answers /healthz', async () => {
    expect(url).toMatch(/^http:\/\/127\.0\.0\.1:\d+$/);
    const r = await get(url, '/healthz');
    expect(r.status).toBe(200);
    expect(r.type).toBe('application/json; charset=utf-8');
    expect(r.body).toEqual({ ok: true });
  });

  it('http api - runs are listed for the path tenant only, newest first, with filters', async () => {
    const a = await get(url, `/v1/tenants/${A}/runs?limit=500`);
    expect(a.status).toBe(200);
    expect(a.body.runs.map((r) => r.runId)).toEqual(aRuns.map((r) => r.runId));
    expect(a.body.runs.every((r) => r.tenant === A)).toBe(true);
    expect(a.body.runs[0]?.startedAt).toBe(new Date(BASE).toISOString());
    expect(a.body.nextCursor).toBeUndefined();

    const b = await get(url, `/v1/tenants/${B}/runs?limit=500`);
    expect(b.body.runs.map((r) => r.runId)).toEqual(bRuns.map((r) => r.runId));

    const failed = await get(url, `/v1/tenants/${A}/runs?status=failed&workflow=demo.pipeline`);
    expect(failed.body.runs).toHaveLength(10);
    expect(failed.body.runs.every((r) => r.status === 'failed')).toBe(true);
    expect((await get(url, `/v1/tenants/${B}/runs?status=failed`)).body.runs).toEqual([]);

    const since = await get(
      url,
      `/v1/tenants/${A}/runs?since=${encodeURIComponent(new Date(BASE - 4 * 60_000).toISOString())}&until=${encodeURIComponent(new Date(BASE).toISOString())}`,
    );
    expect(since.body.runs.map((r) => r.runId)).toEqual(aRuns.slice(1, 5).map((r) => r.runId));

    const where = await get(url, `/v1/tenants/${A}/runs?where=customer%3D2&where=region=us`);
    const want = aRuns.filter((_, i) => i % 5 === 2 && i % 2 === 0).map((r) => r.runId);
    expect(where.body.runs.map((r) => r.runId)).toEqual(want);
    expect(want.length).toBe(3);
    // B's runs all have customer=1; A's customer=1 runs are A's alone.
    const c1 = await get(url, `/v1/tenants/${A}/runs?where=customer=1&limit=500`);
    expect(c1.body.runs.every((r) => r.tenant === A)).toBe(true);
    expect(c1.body.runs).toHaveLength(6);
  });

  it('http api - pages follow nextCursor to the end, each run once', async () => {
    const ids: string[] = [];
    let cursor: string | undefined;
    let pages = 0;
    do {
      const r = await get(url, `/v1/tenants/${A}/runs?limit=7${cursor ? `&cursor=${cursor}` : ''}`);
      expect(r.status).toBe(200);
      ids.push(...r.body.runs.map((x) => x.runId));
      cursor = r.body.nextCursor;
      pages++;
    } while (cursor && pages < 20);
    expect(pages).toBe(5);
    expect(ids).toEqual(aRuns.map((r) => r.runId));
  });

  it('http api - a run is found under its own tenant only', async () => {
    const r = await get(url, `/v1/tenants/${A}/runs/${aRun}`);
    expect(r.status).toBe(200);
    expect(r.body.run).toMatchObject({ tenant: A, runId: aRun, status: 'failed', errorCode: 'step_failed' });
    expect(r.body.steps.map((s) => `${s.step}#${s.attempt}`)).toEqual(['extract#1', 'extract#2', 'transform#1']);
    expect(r.body.events.map((e) => e.type)).toEqual(['run.started', 'step.scheduled', 'step.failed', 'step.scheduled']);
    expect(r.body.approvals).toHaveLength(1);
    expect(r.body.search).toEqual([
      { key: 'customer', value: '0' },
      { key: 'region', value: 'us' },
    ]);

    const cross = await get(url, `/v1/tenants/${B}/runs/${aRun}`);
    expect(cross.status).toBe(404);
    expect(cross.body.error.code).toBe('run_not_found');
    expect(cross.text).not.toContain('step_failed');

    const unknown = await get(url, `/v1/tenants/${A}/runs/${runIdAt(BASE)}`);
    expect(unknown.status).toBe(404);
    expect(unknown.body.error).toEqual({ code: 'run_not_found', message: expect.stringMatching(/^run \w{26} not found in tenant /) });

    const malformed = await get(url, `/v1/tenants/${A}/runs/not-a-run`);
    expect(malformed.status).toBe(400);
    expect(malformed.body.error.code).toBe('invalid_run_id');
  });

  it('http api - audit, approvals and workers answer for the path tenant only', async () => {
    const audit = await get(url, `/v1/tenants/${A}/audit?limit=5`);
    expect(audit.status).toBe(200);
    expect(audit.body.entries.map((e) => e.seq)).toEqual([12, 11, 10, 9, 8]);
    expect(typeof audit.body.nextCursor).toBe('string');
    const next = await get(url, `/v1/tenants/${A}/audit?limit=5&cursor=${audit.body.nextCursor}`);
    expect(next.body.entries.map((e) => e.seq)).toEqual([7, 6, 5, 4, 3]);
    const byRun = await get(url, `/v1/tenants/${A}/audit?run=${aRun}`);
    expect(byRun.body.entries.map((e) => e.seq)).toEqual([4, 3, 2, 1]);
    const recent = await get(url, `/v1/tenants/${A}/audit?since=${encodeURIComponent(new Date(BASE + 10_000).toISOString())}`);
    expect(recent.body.entries.map((e) => e.seq)).toEqual([12, 11]);
    const bAudit = await get(url, `/v1/tenants/${B}/audit`);
    expect(bAudit.body.entries.map((e) => [e.tenant, e.actor])).toEqual([[B, 'bob']]);
    expect((await get(url, `/v1/tenants/${B}/audit?run=${aRun}`)).body.entries).toEqual([]);

    expect((await get(url, `/v1/tenants/${A}/approvals`)).body.approvals.map((x) => [x.tenant, x.status])).toEqual([[A, 'pending']]);
    expect((await get(url, `/v1/tenants/${A}/approvals?status=approved`)).body.approvals).toEqual([]);
    expect((await get(url, `/v1/tenants/${B}/approvals?status=approved`)).body.approvals.map((x) => x.runId)).toEqual([bRun]);

    expect((await get(url, `/v1/tenants/${A}/workers`)).body.workers.map((w) => [w.workerId, w.running])).toEqual([['wa', 2]]);
    expect((await get(url, `/v1/tenants/${B}/workers`)).body.workers.map((w) => w.workerId)).toEqual(['wb']);
  });

  it('http api - bad parameters are 400s with a message that names the problem', async () => {
    const cases: [string, string, RegExp][] = [
      [`/v1/tenants/${A}/runs?since=yesterday`, 'invalid_argument', /since must be a duration .* got "yesterday"/],
      [`/v1/tenants/${A}/runs?until=soon`, 'invalid_argument', /until must be a duration/],
      [`/v1/tenants/${A}/runs?status=done`, 'invalid_argument', /status must be one of pending, running, waiting, completed, failed, cancelled/],
      [`/v1/tenants/${A}/runs?limit=0`, 'invalid_argument', /limit must be an integer from 1 to 500; got "0"/],
      [`/v1/tenants/${A}/runs?limit=501`, 'invalid_argument', /limit must be an integer from 1 to 500/],
      [`/v1/tenants/${A}/runs?limit=ten`, 'invalid_argument', /limit must be an integer/],
      [`/v1/tenants/${A}/runs?cursor=bogus`, 'invalid_argument', /cursor is malformed/],
      [`/v1/tenants/${A}/runs?cursor=${encodeURIComponent('a b')}`, 'invalid_argument', /cursor is malformed/],
      [`/v1/tenants/${A}/runs?where=customer`, 'invalid_argument', /where must be key=value; got "customer"/],
      [`/v1/tenants/${A}/runs?where=%3D1`, 'invalid_argument', /where must be key=value/],
      [`/v1/tenants/${A}/runs?where=customer=%00`, 'invalid_argument', /none of them NUL/],
      [`/v1/tenants/${A}/runs?workflow=a%00b`, 'invalid_argument', /workflow must have 1 to 256 characters, none of them NUL/],
      [`/v1/tenants/${A}/runs?colour=red`, 'invalid_argument', /unknown parameter "colour"; this endpoint takes status, workflow, since, until, where, limit, cursor/],
      [`/v1/tenants/${A}/runs?status=failed&status=running`, 'invalid_argument', /parameter status is given 2 times/],
      [`/v1/tenants/${A}/runs/${aRun}?verbose=1`, 'invalid_argument', /unknown parameter "verbose"; this endpoint takes none/],
      [`/v1/tenants/${A}/audit?run=nope`, 'invalid_run_id', /invalid run id "nope"/],
      [`/v1/tenants/${A}/audit?status=failed`, 'invalid_argument', /unknown parameter "status"/],
      [`/v1/tenants/${A}/audit?cursor=${(await get(url, `/v1/tenants/${A}/runs?limit=1`)).body.nextCursor}`, 'invalid_argument', /cursor is malformed/],
      [`/v1/tenants/${A}/approvals?status=Nope!`, 'invalid_argument', /status must be a lowercase word/],
      [`/v1/tenants/${A}/workers?limit=1`, 'invalid_argument', /unknown parameter "limit"/],
      [`/v1/tenants/Not_A_Tenant/runs`, 'invalid_tenant_id', /invalid tenant id "Not_A_Tenant"/],
      [`/v1/tenants/${'x'.repeat(40)}/runs`, 'invalid_tenant_id', /invalid tenant id/],
      [`/v1/tenants/%E0%A4%A/runs`, 'invalid_argument', /percent-encoding/],
      [`/v1/system?tenant=${A}`, 'invalid_argument', /unknown parameter "tenant"/],
    ];
    for (const [path, code, message] of cases) {
      const r = await get(url, path);
      expect(r.status, path).toBe(400);
      expect(r.type, path).toBe('application/json; charset=utf-8');
      expect(r.body.error.code, path).toBe(code);
      expect(r.body.error.message, path).toMatch(message);
      expect(Object.keys(r.body), path).toEqual(['error']);
    }
    // fetch resolves dot segments before sending; a raw request shows the server does not.
    for (const path of [`/v1/tenants/%2E%2E/runs`, `/v1/tenants/../runs`, `/v1/tenants/${B}/../${A}/runs`]) {
      const r = await rawGet(url, path);
      expect(r.status, path).toBe(path.includes(`${B}/..`) ? 404 : 400);
      expect(r.text, path).not.toContain(aRun);
    }
    expect(json<Body>((await rawGet(url, `/v1/tenants/%2E%2E/runs`)).text).error.message).toMatch(/invalid tenant id "\.\."/);
  });

  it('http api - unknown routes are 404s and anything but GET is a 405', async () => {
    for (const path of ['/', '/v1', '/v1/tenants', `/v1/tenants/${A}`, `/v1/tenants/${A}/secrets`, `/v1/tenants/${A}/runs/${aRun}/steps`, '/v2/system', '/healthz/x']) {
      const r = await get(url, path);
      expect(r.status, path).toBe(404);
      expect(r.body.error.code, path).toBe('not_found');
    }
    for (const method of ['POST', 'PUT', 'DELETE', 'PATCH']) {
      const r = await get(url, `/v1/tenants/${A}/runs`, { method, body: method === 'DELETE' ? null : '{}' });
      expect(r.status, method).toBe(405);
      expect(r.headers.get('allow')).toBe('GET');
      expect(r.body.error).toEqual({ code: 'method_not_allowed', message: `${method} is not allowed: this API is read-only (GET)` });
    }
    // The write was refused, not applied.
    expect((await get(url, `/v1/tenants/${A}/runs?limit=500`)).body.runs).toHaveLength(30);
  });

  it('http api - /v1/system reports the NATS server and the projection lag per tenant', async () => {
    const r = await get(url, '/v1/system');
    expect(r.status).toBe(200);
    expect(r.body.nats?.server?.version).toMatch(/^2\.\d+\.\d+/);
    expect(r.body.nats?.jetstream?.streams).toBeGreaterThanOrEqual(8);
    expect(r.body.projection).toEqual([
      { tenant: A, stream: Streams.runs(A), streamLastSeq: 6, checkpoint: 4, lag: 2 },
      { tenant: B, stream: Streams.runs(B), streamLastSeq: 0, checkpoint: 0, lag: 0 },
    ]);
  });

  it('http api - /metrics is Prometheus text with lag and checkpoint per tenant', async () => {
    const r = await get(url, '/metrics');
    expect(r.status).toBe(200);
    expect(r.type).toBe('text/plain; version=0.0.4; charset=utf-8');
    const lines = r.text.trimEnd().split('\n');
    expect(lines).toContain(`capstan_projection_lag_events{tenant="${A}"} 2`);
    expect(lines).toContain(`capstan_projection_lag_events{tenant="${B}"} 0`);
    expect(lines).toContain(`capstan_projection_checkpoint{tenant="${A}"} 4`);
    expect(lines).toContain(`capstan_projection_checkpoint{tenant="${B}"} 0`);
    expect(lines).toContain('# TYPE capstan_projection_lag_events gauge');
    expect(lines).toContain('# TYPE capstan_projection_checkpoint gauge');
    // Every line is a comment or a sample `name{labels} value`, and every sample's metric is typed.
    const typed = new Set(lines.filter((l) => l.startsWith('# TYPE ')).map((l) => l.split(' ')[2]));
    for (const l of lines) {
      if (l.startsWith('# HELP ') || l.startsWith('# TYPE ')) continue;
      expect(l).toMatch(/^[a-z_]+\{tenant="[a-z0-9-]+"\} \d+$/);
      expect(typed.has(l.slice(0, l.indexOf('{')))).toBe(true);
    }
    expect(r.text.endsWith('\n')).toBe(true);
  });

  it('http api - without NATS, /v1/system and /metrics still show checkpoints', async () => {
    const bare = createQueryServer({ db: d, tenants: () => [A], log: silent, port: 0 });
    await bare.start();
    try {
      const sys = await get(bare.url, '/v1/system');
      expect(sys.body).toEqual({ nats: null, projection: [{ tenant: A, stream: '', streamLastSeq: null, checkpoint: 4, lag: null }] });
      const m = await get(bare.url, '/metrics');
      expect(m.text).toContain(`capstan_projection_checkpoint{tenant="${A}"} 4`);
      expect(m.text).not.toContain('capstan_projection_lag_events{');
    } finally {
      await bare.stop();
    }
  });

  it('http api - a failing database is a bare 500; the cause is logged, never sent', async () => {
    const gone = new URL(scratch.url);
    gone.pathname = '/capstan_no_such_database';
    const broken = await openDatabase({ url: gone.toString() });
    let logged = '';
    const sink = new Writable({
      write(chunk: Buffer, _enc, cb) {
        logged += chunk.toString();
        cb();
      },
    });
    const log = createLogger('test', 'error', sink);
    const s = createQueryServer({ db: broken, log, port: 0 });
    await s.start();
    try {
      for (const path of [`/v1/tenants/${A}/runs`, `/v1/tenants/${A}/runs/${aRun}`, '/healthz']) {
        const r = await get(s.url, path);
        expect(r.status, path).toBe(500);
        expect(r.body).toEqual({ error: { code: 'internal', message: 'internal error; see the server log' } });
        expect(r.text).not.toMatch(/select|capstan_no_such_database|at .*\.js/i);
      }
      expect(logged).toMatch(/capstan_no_such_database/);
      expect(logged).toMatch(/query API request failed/);
    } finally {
      await s.stop();
      await broken.close();
    }
  });

  it('http api - stop closes the port', async () => {
    const s = createQueryServer({ db: d, log: silent, port: 0 });
    await s.start();
    const where = s.url;
    expect((await get(where, '/healthz')).status).toBe(200);
    await s.stop();
    await expect(fetch(`${where}/healthz`)).rejects.toThrow();
  });

  describe('cli read commands', () => {
    it('cli read - runs --json lists the tenant runs, filters and pages', async () => {
      const r = await capstan(['runs', '--tenant', A, '--api', url, '--json', '--limit', '500']);
      expect(r.err).toBe('');
      expect(r.code).toBe(0);
      expect(json<RunsResponse>(r.out).runs.map((x) => x.runId)).toEqual(aRuns.map((x) => x.runId));

      const w = await capstan(['runs', '--tenant', A, '--api', url, '--json', '--where', 'customer=2', '--where', 'region=us', '--status', 'completed']);
      expect(json<RunsResponse>(w.out).runs.map((x) => x.runId)).toEqual(aRuns.filter((_, i) => i % 5 === 2 && i % 2 === 0 && i % 3 !== 0).map((x) => x.runId));

      const first = json<RunsResponse>((await capstan(['runs', '--tenant', A, '--api', url, '--json', '--limit', '20'])).out);
      const second = json<RunsResponse>((await capstan(['runs', '--tenant', A, '--api', url, '--json', '--limit', '20', '--cursor', first.nextCursor as string])).out);
      expect([...first.runs, ...second.runs].map((x) => x.runId)).toEqual(aRuns.map((x) => x.runId));
      expect(second.nextCursor).toBeUndefined();

      const b = await capstan(['runs', '--tenant', B, '--api', url, '--json', '--limit', '500']);
      expect(json<RunsResponse>(b.out).runs.map((x) => x.runId)).toEqual(bRuns.map((x) => x.runId));
    });

    it('cli read - runs prints aligned columns and the next cursor', async () => {
      const r = await capstan(['runs', '--tenant', A, '--api', url, '--limit', '4']);
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
      const r = await capstan(['run', aRun, '--tenant', A, '--api', url]);
      expect(r.code).toBe(0);
      expect(r.out).toContain(`${aRun}  demo.pipeline@1  failed`);
      expect(r.out).toContain('error     step_failed: boom');
      expect(r.out).toContain('search    customer=0, region=us');
      expect(r.out).toMatch(/STEP\s+ATTEMPT\s+OUTCOME\s+POOL\s+WORKER\s+SCHEDULED\s+DURATION\s+ERROR/);
      expect(r.out).toMatch(/extract\s+1\s+failed\s+default\s+w-1\s+\S+\s+40 ms\s+step_failed: boom/);
      expect(r.out).toMatch(/transform\s+1\s+pending\s+default\s+-\s+\S+\s+-/);
      expect(r.out).toMatch(/timeline\n\s+1 {2}\S+ {2}run\.started/);
      expect(r.out).toMatch(/\s+3 {2}\S+ {2}step\.failed/);

      const detail = json<RunResponse>((await capstan(['run', aRun, '--tenant', A, '--api', url, '--json'])).out);
      expect(detail.steps).toHaveLength(3);

      const cross = await capstan(['run', aRun, '--tenant', B, '--api', url]);
      expect(cross.code).toBe(3);
      expect(cross.err).toContain(`run_not_found: run ${aRun} not found in tenant ${B}`);
      expect(cross.out).toBe('');
    });

    it('cli read - audit lists entries newest first, by run', async () => {
      const r = await capstan(['audit', '--tenant', A, '--api', url, '--run', aRun]);
      expect(r.code).toBe(0);
      const lines = r.out.trimEnd().split('\n');
      expect(lines[0]).toMatch(/^ID\s+AT\s+RUN\s+SEQ\s+KIND\s+ACTOR\s+DETAIL$/);
      expect(lines.slice(1).map((l) => l.split(/\s+/)[3])).toEqual(['4', '3', '2', '1']);
      expect(lines[1]).toContain('{"signal":"approve"}');
      const audit = json<AuditResponse>((await capstan(['audit', '--tenant', B, '--api', url, '--json'])).out);
      expect(audit.entries.map((e) => e.actor)).toEqual(['bob']);
    });

    it('cli read - status --system shows the NATS server and the lag per tenant', async () => {
      const r = await capstan(['status', '--system', '--api', url]);
      expect(r.code).toBe(0);
      expect(r.out).toMatch(/^NATS\s+nats-server 2\.\d+\.\d+/);
      expect(r.out).toMatch(/TENANT\s+STREAM SEQ\s+CHECKPOINT\s+LAG/);
      expect(r.out).toMatch(new RegExp(`${A}\\s+6\\s+4\\s+2`));
      expect(r.out).toMatch(new RegExp(`${B}\\s+0\\s+0\\s+0`));
      const sys = json<SystemResponse>((await capstan(['status', '--system', '--api', url, '--json'])).out);
      expect(sys.projection.map((p) => p.lag)).toEqual([2, 0]);
    });

    it('cli read - the API comes from --api, else CAPSTAN_API_URL, else the dev stack file, else a clear error', async () => {
      const viaEnv = await capstan(['runs', '--tenant', A, '--json', '--limit', '1'], { CAPSTAN_API_URL: url });
      expect(viaEnv.code).toBe(0);
      expect(json<RunsResponse>(viaEnv.out).runs).toHaveLength(1);
      expect(apiUrl('http://flag:1/', { CAPSTAN_API_URL: 'http://env:2' }, '/nonexistent')).toBe('http://flag:1');
      expect(apiUrl(undefined, { CAPSTAN_API_URL: 'http://env:2' }, '/nonexistent')).toBe('http://env:2');
      const dir = mkdtempSync(join(tmpdir(), 'capstan-api-url-'));
      try {
        const file = join(dir, 'api.url');
        writeFileSync(file, `${url}\n`);
        expect(apiUrl(undefined, {}, file)).toBe(url);
      } finally {
        rmSync(dir, { recursive: true, force: true });
      }
      expect(() => apiUrl(undefined, {}, '/nonexistent')).toThrow(/no query API: pass --api <url>, set CAPSTAN_API_URL, or start `capstan dev` first/);
      expect(() => apiUrl('nats://127.0.0.1:4222', {}, '/nonexistent')).toThrow(/--api must be an http/);
    });

    it('cli read - bad flags fail before any request, API errors keep their codes, an unreachable API is said so', async () => {
      const since = await capstan(['runs', '--tenant', A, '--api', 'http://127.0.0.1:1', '--since', 'yesterday']);
      expect(since.code).toBe(2);
      expect(since.err).toMatch(/invalid_argument: since must be a duration/);
      const where = await capstan(['runs', '--tenant', A, '--api', url, '--where', 'customer']);
      expect(where.code).toBe(2);
      expect(where.err).toMatch(/where must be key=value/);
      const limit = await capstan(['runs', '--tenant', A, '--api', url, '--limit', '900']);
      expect(limit.code).toBe(2);
      expect(limit.err).toMatch(/limit must be an integer from 1 to 500/);
      const flag = await capstan(['runs', '--tenant', A, '--api', url, '--colour', 'red']);
      expect(flag.code).toBe(2);
      expect(flag.err).toMatch(/colour/);
      const tenant = await capstan(['runs', '--api', url]);
      expect(tenant.err).toMatch(/--tenant <id> is required/);
      const down = await capstan(['runs', '--tenant', A, '--api', 'http://127.0.0.1:1']);
      expect(down.code).toBe(1);
      expect(down.err).toMatch(/unavailable: cannot reach the query API at http:\/\/127\.0\.0\.1:1/);
    });
  });
});

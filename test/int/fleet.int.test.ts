/**
 * Worker admission end to end, against the real nats-server and Postgres: an unknown worker
 * is pending and pulls nothing; an admin's approval (kit client or `capstan workers
 * approve`) lets it pull within moments; a revocation stops it within seconds, its step in
 * flight reported failed and retried by another worker, never silently lost; `auto` workers
 * approve themselves once but a revocation stands; the state, who changed it and when are
 * in the `workers` view and the audit log, exactly once, and rebuilt from the fleet stream.
 */
import { afterAll, beforeAll, describe, expect, inject, it } from 'vitest';
import { and, eq } from 'drizzle-orm';
import { createRegistry } from '@capstan/actors';
import { startFleetAuthority, type FleetAuthority } from '@capstan/cli';
import { listWorkers, openDatabase, type Database } from '@capstan/kit';
import { createOrchestrator, loadConfig as orchestratorConfig } from '@capstan/orchestrator';
import { createProjector, loadConfig, rebuildProjections, verifyProjections, type ProjectorApp } from '@capstan/projector';
import { createWorker, loadConfig as workerConfig, type WorkerApp } from '@capstan/worker';
import { CapstanError, db as schema, ErrorCode, Streams, Subjects, encode, type RunEvent, type RunId, type TenantId, Role } from '@capstan/schemas';
import { handlers, workflows } from '../fixtures/workflows.js';
import { adminOf, connect, eventsOf, eventually, issueCreds, provision, runCli, serviceEnv, silent, testAuthStore, type Harness } from '../harness/fixtures.js';
import { startReadConsole, type ReadConsole } from '../harness/console.js';
import { scratchDatabase } from '../harness/postgres.js';

let url: string;
let h: Harness;
let t: TenantId;
let scratch: Awaited<ReturnType<typeof scratchDatabase>>;
let database: Database;
let projector: ProjectorApp;
let api: ReadConsole;
const workers = new Map<string, WorkerApp>();
let stopOrchestrator: (() => Promise<void>) | undefined;
let authority: FleetAuthority | undefined;

const capstan = (args: string[]) => runCli(args, { NATS_URL: url, ...api.env });

const creds = new Map<string, string>();
async function startWorker(id: string, admission: 'required' | 'auto'): Promise<WorkerApp> {
  // One credential per worker id, issued once: a restart uses it again (a revocation stands).
  if (!creds.has(id)) creds.set(id, await issueCreds(url, t, Role.Worker, id, { consumers: { workAckWaitMs: 3000 } }));
  const w = await createWorker(
    workerConfig({ NATS_URL: url, NATS_CREDS: creds.get(id) as string, WORKER_ADMISSION: admission, WORKER_STARTED_AFTER_MS: '0', LOG_LEVEL: 'silent' }),
    silent,
    { handlers },
  );
  await w.start();
  workers.set(id, w);
  return w;
}

async function stopWorker(id: string): Promise<void> {
  await workers.get(id)?.stop();
  workers.delete(id);
}

beforeAll(async () => {
  url = inject('natsUrl');
  h = await connect(url);
  t = await provision(h, 'fleet', { consumers: { workAckWaitMs: 3000 } });
  // Fleet decisions made through the client (as the console makes them) reach the credentials.
  authority = await startFleetAuthority(await adminOf(url));
  scratch = await scratchDatabase('fleet');
  database = await openDatabase({ url: scratch.url, log: silent });
  projector = await createProjector(loadConfig({ ...(await serviceEnv(url, Role.Projector)), DATABASE_URL: scratch.url, CAPSTAN_TENANTS: t }), silent, { database });
  await projector.start();
  const orch = await createOrchestrator(orchestratorConfig({ ...(await serviceEnv(url, Role.Orchestrator)), CAPSTAN_TENANTS: t }), silent, { registry: createRegistry(workflows) });
  await orch.start();
  stopOrchestrator = () => orch.stop();
  api = await startReadConsole({ db: database, natsUrl: url, tenants: [t] });
});

afterAll(async () => {
  await authority?.stop();
  await api?.stop();
  for (const id of [...workers.keys()]) await stopWorker(id);
  await stopOrchestrator?.();
  await projector?.stop();
  await database?.close();
  await scratch?.drop();
  await h?.close();
});

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));
const stepWorkers = (events: readonly RunEvent[]) =>
  events.flatMap((e) =>
    e.type === 'step.started' || e.type === 'step.completed' || e.type === 'step.failed' ? [`${e.type}:${e.data.step}#${e.data.attempt}@${e.data.worker ?? '?'}`] : [],
  );

async function admissionRow(workerId: string) {
  const a = schema.workerAdmissions;
  const [row] = await database.db
    .select()
    .from(a)
    .where(and(eq(a.tenant, t), eq(a.workerId, workerId)));
  return row;
}

async function fleetAudit() {
  const l = schema.auditLog;
  return database.db
    .select()
    .from(l)
    .where(and(eq(l.tenant, t), eq(l.runId, '')))
    .orderBy(l.seq);
}

describe('fleet admission', () => {
  let first: RunId;

  it('fleet - an unknown worker is pending and pulls nothing; an approval lets it pull at once', async () => {
    await startWorker('w-a', 'required');
    first = await h.client.submit(t, 'demo.pipeline');
    await sleep(1500);
    expect(stepWorkers(await eventsOf(h, t, first))).toEqual([]);
    expect(await h.client.workerAdmission(t, 'w-a')).toBeUndefined();
    const pending = await eventually('the worker announced itself', async () => (await listWorkers(database, t)).find((w) => w.workerId === 'w-a'));
    expect(pending).toMatchObject({ admission: 'pending', admissionBy: null, admissionAt: null });

    const approved = await h.client.approveWorker(t, 'w-a', { by: 'admin@example.com', reason: 'our build server' });
    expect(approved).toMatchObject({ worker: 'w-a', state: 'approved', by: 'admin@example.com', reason: 'our build server' });
    expect(Math.abs(approved.at - Date.now())).toBeLessThan(10_000);
    const end = await h.client.waitForEnd(t, first, 15_000);
    expect(end.type).toBe('run.completed');
    expect(stepWorkers(await eventsOf(h, t, first)).every((s) => s.endsWith('@w-a'))).toBe(true);

    // Approving an approved worker records nothing new.
    expect(await h.client.approveWorker(t, 'w-a', { by: 'someone-else' })).toEqual(approved);
    const view = await eventually('the approval projected', async () => {
      const w = (await listWorkers(database, t)).find((x) => x.workerId === 'w-a');
      return w?.admission === 'approved' ? w : undefined;
    });
    expect(view).toMatchObject({ admissionBy: 'admin@example.com', admissionReason: 'our build server' });
    expect(view.admissionAt?.getTime()).toBe(approved.at);
  });

  it('fleet - a revoked worker is cut off by the server at once; its step in flight is retried elsewhere', async () => {
    // The first attempt outlives the revoke however long the CLI takes to start (its result
    // would otherwise be recorded before the revoke lands); the retry elsewhere is quick.
    const slow = await h.client.submit(t, 'test.slow', { input: { ms: 200, firstMs: 25_000 } });
    await eventually('w-a runs the slow step', async () => ((await eventsOf(h, t, slow)).some((e) => e.type === 'step.started' && e.data.worker === 'w-a') ? true : undefined));

    const r = await capstan(['workers', 'revoke', 'w-a', '--tenant', t, '--as', 'admin', '--reason', 'decommissioned', '--json']);
    expect(r.err).toBe('');
    expect(r.code).toBe(0);
    expect(JSON.parse(r.out)).toMatchObject({
      worker: 'w-a',
      state: 'revoked',
      by: 'admin',
      reason: 'decommissioned',
      credential: expect.stringContaining('revoked at the server'),
    });
    // The credential is revoked in the tenant's account: the server refuses it from now on.
    expect((await testAuthStore()).user(t, 'w-a')?.revokedAt).toBeGreaterThan(0);

    // Nothing is taken by w-a while it is revoked: it is not even connected.
    const waiting = await h.client.submit(t, 'demo.pipeline');
    await sleep(1500);
    expect(stepWorkers(await eventsOf(h, t, waiting))).toEqual([]);

    // Another worker, approved through the CLI, takes over both runs: w-a's attempt in
    // flight is redelivered after the ack wait and reported lost, then run again.
    await startWorker('w-b', 'required');
    const ok = await capstan(['workers', 'approve', 'w-b', '--tenant', t, '--as', 'admin']);
    expect(ok.code).toBe(0);
    expect(ok.out).toContain('worker w-b approved');
    expect((await h.client.waitForEnd(t, waiting, 15_000)).type).toBe('run.completed');
    expect((await h.client.waitForEnd(t, slow, 30_000)).type).toBe('run.completed');
    const events = await eventsOf(h, t, slow);
    const lost = events.find((e) => e.type === 'step.failed' && e.data.attempt === 1);
    expect(lost).toMatchObject({ data: { error: { code: 'worker_lost', retryable: true } } });
    const slowSteps = stepWorkers(events);
    expect(slowSteps.filter((s) => s.startsWith('step.started:slow#1@'))).toEqual(['step.started:slow#1@w-a']);
    expect(slowSteps.filter((s) => s.startsWith('step.completed')).every((s) => s.endsWith('@w-b'))).toBe(true);
    expect(stepWorkers(await eventsOf(h, t, waiting)).every((s) => s.endsWith('@w-b'))).toBe(true);
  });

  it('fleet - a revoked worker can be approved again and pulls again', async () => {
    await stopWorker('w-b');
    await h.client.approveWorker(t, 'w-a', { by: 'admin', reason: 'back in service' });
    const runId = await h.client.submit(t, 'demo.pipeline');
    expect((await h.client.waitForEnd(t, runId, 15_000)).type).toBe('run.completed');
    expect(stepWorkers(await eventsOf(h, t, runId)).every((s) => s.endsWith('@w-a'))).toBe(true);
    await stopWorker('w-a');
  });

  it('fleet - auto workers pull without a record; a revocation (record and credential) still stands across restarts', async () => {
    await startWorker('w-auto', 'auto');
    const runId = await h.client.submit(t, 'demo.pipeline');
    expect((await h.client.waitForEnd(t, runId, 15_000)).type).toBe('run.completed');
    // It wrote nothing of its own: its credential may not.
    expect(await h.client.workerAdmission(t, 'w-auto')).toBeUndefined();

    // Revoked through the client, as the console does: the fleet authority cuts the credential off.
    await h.client.revokeWorker(t, 'w-auto', { by: 'admin' });
    await eventually('the credential revoked', async () => ((await testAuthStore()).user(t, 'w-auto')?.revokedAt ? true : undefined), 5000, 50);
    await stopWorker('w-auto');
    await startWorker('w-auto', 'auto');
    await sleep(500);
    expect(await h.client.workerAdmission(t, 'w-auto')).toMatchObject({ state: 'revoked', by: 'admin' });
    const held = await h.client.submit(t, 'demo.pipeline');
    await sleep(1500);
    expect(stepWorkers(await eventsOf(h, t, held))).toEqual([]);
    await h.client.approveWorker(t, 'w-auto', { by: 'admin' });
    expect((await h.client.waitForEnd(t, held, 15_000)).type).toBe('run.completed');
    // Revoking twice records one revocation.
    const once = await h.client.revokeWorker(t, 'w-auto', { by: 'admin' });
    expect(await h.client.revokeWorker(t, 'w-auto', { by: 'admin-2' })).toEqual(once);
    await stopWorker('w-auto');
  });

  it('fleet - every change is one audit row and one admission row; capstan workers shows them', async () => {
    const audit = await eventually('every change audited', async () => {
      const rows = await fleetAudit();
      return rows.length === 7 ? rows : undefined;
    });
    expect(audit.map((a) => [a.kind, a.actor, (a.detail as { worker: string }).worker])).toEqual([
      ['worker.approved', 'admin@example.com', 'w-a'],
      ['worker.revoked', 'admin', 'w-a'],
      ['worker.approved', 'admin', 'w-b'],
      ['worker.approved', 'admin', 'w-a'],
      ['worker.revoked', 'admin', 'w-auto'],
      ['worker.approved', 'admin', 'w-auto'],
      ['worker.revoked', 'admin', 'w-auto'],
    ]);
    expect(audit.map((a) => a.seq)).toEqual(audit.map((a) => a.streamSeq));
    expect(await admissionRow('w-a')).toMatchObject({ state: 'approved', changedBy: 'admin', reason: 'back in service' });
    expect(await admissionRow('w-b')).toMatchObject({ state: 'approved', changedBy: 'admin', reason: null });
    expect(await admissionRow('w-auto')).toMatchObject({ state: 'revoked', changedBy: 'admin' });

    const list = await capstan(['workers', '--tenant', t]);
    expect(list.code).toBe(0);
    expect(list.out).toMatch(/WORKER\s+ADMISSION\s+BY\s+CHANGED\s+POOLS\s+RUNNING\s+LAST SEEN/);
    expect(list.out).toMatch(/w-auto\s+revoked\s+admin/);
    const json = JSON.parse((await capstan(['workers', '--tenant', t, '--json'])).out) as { workers: { workerId: string; admission: string; admissionBy: string | null }[] };
    expect(json.workers.map((w) => [w.workerId, w.admission, w.admissionBy])).toEqual([
      ['w-a', 'approved', 'admin'],
      ['w-auto', 'revoked', 'admin'],
      ['w-b', 'approved', 'admin'],
    ]);
  });

  it('fleet - a malformed record is a dead letter, not an admission; rebuild re-derives the admissions', async () => {
    // Someone with publish rights writes garbage for w-x.
    await (await h.js(t)).publish(Subjects.fleet(t, 'w-x'), encode({ worker: 'w-x', state: 'maybe', by: 'x' }));
    await eventually('the dead letter', async () => {
      const d = schema.deadLetters;
      const rows = await database.db
        .select()
        .from(d)
        .where(and(eq(d.tenant, t), eq(d.stream, Streams.fleet(t))));
      return rows.length === 1 && rows[0]?.code === ErrorCode.SchemaViolation ? rows : undefined;
    });
    expect(await admissionRow('w-x')).toBeUndefined();
    // The worker side fails closed on it too.
    let caught: unknown;
    try {
      await h.client.workerAdmission(t, 'w-x');
    } catch (e) {
      caught = e;
    }
    expect(CapstanError.is(caught) && caught.code).toBe(ErrorCode.SchemaViolation);
    // An admin's write replaces it.
    expect(await h.client.approveWorker(t, 'w-x', { by: 'admin' })).toMatchObject({ state: 'approved' });
    await eventually('w-x approved', async () => ((await admissionRow('w-x'))?.state === 'approved' ? true : undefined));

    const before = await database.db.select().from(schema.workerAdmissions).where(eq(schema.workerAdmissions.tenant, t)).orderBy(schema.workerAdmissions.workerId);
    await database.db.delete(schema.workerAdmissions).where(eq(schema.workerAdmissions.tenant, t));
    const rebuilt = await rebuildProjections(database, h.jsm, [t]);
    // seven decisions, the malformed record and the approval replacing it
    expect(rebuilt.tenants[0]?.admissions).toBe(9);
    const after = await database.db.select().from(schema.workerAdmissions).where(eq(schema.workerAdmissions.tenant, t)).orderBy(schema.workerAdmissions.workerId);
    expect(after).toEqual(before);
    expect(await fleetAudit()).toHaveLength(8);
    // Fleet audit rows belong to no run: the run-stream verifier leaves them alone.
    const report = await verifyProjections(database, h.jsm, [t]);
    expect(report.mismatches).toEqual([]);
    expect(report.ok).toBe(true);
  });

  it('fleet - bad worker ids and missing authors are refused before anything is written', async () => {
    for (const bad of ['W-Upper', 'a.b', '', 'x'.repeat(65)]) {
      let caught: unknown;
      try {
        await h.client.approveWorker(t, bad, { by: 'admin' });
      } catch (e) {
        caught = e;
      }
      expect(CapstanError.is(caught) && caught.code, bad).toBe(ErrorCode.InvalidName);
    }
    let noAuthor: unknown;
    try {
      await h.client.revokeWorker(t, 'w-a', { by: '' });
    } catch (e) {
      noAuthor = e;
    }
    expect(CapstanError.is(noAuthor) && noAuthor.code).toBe(ErrorCode.SchemaViolation);
    expect((await capstan(['workers', 'approve', 'Not.A.Worker', '--tenant', t, '--as', 'admin'])).code).toBe(2);
    expect((await capstan(['workers', 'frob', '--tenant', t])).code).toBe(2);
    expect(await h.client.workerAdmission(t, 'w-a')).toMatchObject({ state: 'approved' });
    // and a worker id that is no subject token is a config error for the worker itself
    expect(() => workerConfig({ NATS_URL: url, NATS_CREDS: 'w.creds', WORKER_ID: 'Worker 1' })).toThrow(/WORKER_ID must match/);
    expect(() => workerConfig({ NATS_URL: url, NATS_CREDS: 'w.creds', WORKER_ADMISSION: 'sometimes' })).toThrow(/WORKER_ADMISSION must be required or auto/);
    expect(() => workerConfig({ NATS_URL: url })).toThrow(/NATS_CREDS is required/);
  });
});

/**
 * The console's actions end to end: a real orchestrator, worker and projector run a tenant;
 * operators act through the console's HTTP API, which publishes the CLI's commands; the
 * effect comes back through the projections and the live stream. Approve and deny with
 * their author, retry a denied run, cancel a running one, revoke and re-admit a worker.
 */
import { Role } from '@capstan/schemas';
import { afterAll, beforeAll, describe, expect, inject, it } from 'vitest';
import {
  createConsole,
  hashPassword,
  loadConfig as consoleConfig,
  type ActionResponse,
  type AuditPageResponse,
  type Console,
  type RunDetailResponse,
  type RunStreamChange,
  type WorkersResponse,
} from '@capstan/console';
import { migrate, openDatabase, readExport, type Database } from '@capstan/kit';
import { createProjector, loadConfig as projectorConfig, type ProjectorApp } from '@capstan/projector';
import type { TenantId } from '@capstan/schemas';
import { scratchDatabase } from '../harness/postgres.js';
import { connect, eventually, provision, silent, startServices, type Harness, type InProcessServices, serviceEnv, accessAs } from '../harness/fixtures.js';
import { ConsoleClient, type ErrorBody, type EventStream } from '../harness/console.js';

const PASSWORD = 'a long enough password';

describe('console actions', () => {
  let scratch: Awaited<ReturnType<typeof scratchDatabase>>;
  let d: Database;
  let h: Harness;
  let t: TenantId;
  let services: InProcessServices;
  let projector: ProjectorApp;
  let app: Console;
  let operator: ConsoleClient;
  let admin: ConsoleClient;
  const workerId = 'console-worker-1';

  const detail = async (runId: string) => (await operator.get<RunDetailResponse>(`/api/tenants/${t}/runs/${runId}`)).body;
  const statusOf = async (runId: string) => (await operator.get<RunDetailResponse>(`/api/tenants/${t}/runs/${runId}`)).body.run?.status;
  const waitingFor = (runId: string) =>
    eventually(`run ${runId} waiting for approval`, async () => ((await detail(runId)).approvals?.some((a) => a.status === 'waiting') ? true : undefined), 20_000);
  /** Waits for the live stream to carry the run in `status`. */
  const streamed = (s: EventStream, runId: string, status: string) =>
    eventually(
      `a live update with run ${runId} ${status}`,
      () => Promise.resolve(s.events.some((e) => e.event === 'runs' && (e.data as RunStreamChange).runs.some((r) => r.runId === runId && r.status === status)) ? true : undefined),
      20_000,
      50,
    );

  beforeAll(async () => {
    const url = inject('natsUrl');
    h = await connect(url);
    t = await provision(h, 'cact');
    scratch = await scratchDatabase('console_actions');
    d = await openDatabase({ url: scratch.url, log: silent });
    await migrate(d);
    services = await startServices(url, [t], { workerId, env: { WORKER_ADMISSION: 'auto' } });
    projector = await createProjector(
      projectorConfig({ ...(await serviceEnv(url, Role.Projector)), DATABASE_URL: scratch.url, CAPSTAN_TENANTS: t, PROJECTOR_DISCOVERY_MS: '200' }),
      silent,
      { database: d },
    );
    await projector.start();
    const passwordHash = await hashPassword(PASSWORD);
    app = createConsole({
      db: d,
      access: await accessAs(url, Role.Console),
      config: consoleConfig({ CONSOLE_SECRET: 'k'.repeat(40), CONSOLE_USERS: 'unused', CONSOLE_PORT: '0', DATABASE_URL: scratch.url, ...(await serviceEnv(url, Role.Console)) }),
      log: silent,
      users: [
        { userId: 'olivia', orgId: 'acme', role: 'operator', tenants: [t], passwordHash },
        { userId: 'adam', orgId: 'acme', role: 'admin', tenants: [t], passwordHash },
      ],
      pollMs: 200,
    });
    await app.start();
    operator = new ConsoleClient(app.url);
    await operator.signIn('olivia', PASSWORD);
    admin = new ConsoleClient(app.url);
    await admin.signIn('adam', PASSWORD);
  });

  afterAll(async () => {
    await app?.stop();
    await projector?.stop();
    await services?.stop();
    await h?.close();
    await d?.close();
    await scratch?.drop();
  });

  it('console actions - approving a waiting run completes it, live, with the approver on record', async () => {
    const stream = await operator.stream(`/api/tenants/${t}/runs/stream`);
    try {
      await stream.next('ready');
      const runId = await h.client.submit(t, 'demo.signal', { input: { customer: 7 } });
      await waitingFor(runId);
      const before = await detail(runId);
      expect(before.run.status).toBe('waiting');
      expect(before.explanation).toMatchObject({ tone: 'waiting', step: 'review' });
      expect(before.explanation.text).toMatch(/^Waiting for approval of step review, requested \d+ s ago, by an operator\.$/);
      await streamed(stream, runId, 'waiting');

      const r = await operator.post<ActionResponse>(`/api/tenants/${t}/runs/${runId}/approvals/review/approve`, { reason: 'numbers checked' });
      expect(r.status).toBe(202);
      expect(r.body).toEqual({ accepted: true, action: 'approve', tenant: t, runId, step: 'review' });
      await streamed(stream, runId, 'completed');

      const after = await detail(runId);
      expect(after.run.status).toBe('completed');
      expect(after.approvals).toMatchObject([{ step: 'review', status: 'approved', decidedBy: 'olivia', reason: 'numbers checked', workflow: 'demo.signal' }]);
      expect(after.explanation.tone).toBe('done');
      expect(after.trace.map((s) => s.step)).toEqual(['draft', 'publish']);
      const audit = await operator.get<AuditPageResponse>(`/api/tenants/${t}/audit?run=${runId}`);
      expect(audit.body.entries.some((e) => e.actor === 'olivia')).toBe(true);

      // Deciding again is refused, and nothing more is recorded.
      const again = await operator.post<ErrorBody>(`/api/tenants/${t}/runs/${runId}/approvals/review/approve`, {});
      expect(again.status).toBe(409);
      expect((await detail(runId)).events.length).toBe(after.events.length);
    } finally {
      await stream.close();
    }
  });

  it('console actions - denying fails the run with who and why; retrying it asks again; approving then completes it', async () => {
    const runId = await h.client.submit(t, 'demo.signal', { input: { customer: 8 } });
    await waitingFor(runId);
    const denied = await operator.post<ActionResponse>(`/api/tenants/${t}/runs/${runId}/approvals/review/deny`, { reason: 'wrong numbers' });
    expect(denied.status).toBe(202);
    await eventually('the denied run failed', async () => ((await statusOf(runId)) === 'failed' ? true : undefined), 20_000);
    const failed = await detail(runId);
    expect(failed.run.errorCode).toBe('approval_denied');
    expect(failed.explanation).toEqual({ tone: 'error', step: 'review', text: 'Step review was denied by olivia: wrong numbers.' });
    expect(failed.actions).toEqual({ cancel: false, signal: false, retry: true });

    const retried = await operator.post<ActionResponse>(`/api/tenants/${t}/runs/${runId}/retry`, { reason: 'numbers fixed' });
    expect(retried.status).toBe(202);
    await waitingFor(runId);
    const reopened = await detail(runId);
    expect(reopened.run).toMatchObject({ status: 'waiting', retries: 1, retriedBy: 'olivia' });
    expect((await operator.post(`/api/tenants/${t}/runs/${runId}/approvals/review/approve`, {})).status).toBe(202);
    await eventually('the retried run completed', async () => ((await statusOf(runId)) === 'completed' ? true : undefined), 20_000);
    // Retrying a run that did not fail is refused before any command is sent.
    const notFailed = await operator.post<ErrorBody>(`/api/tenants/${t}/runs/${runId}/retry`, {});
    expect(notFailed.status).toBe(409);
  });

  it('console actions - cancelling a running run ends it', async () => {
    const runId = await h.client.submit(t, 'test.slow', { input: { ms: 20_000 } });
    await eventually('the slow run running', async () => ((await statusOf(runId)) === 'running' ? true : undefined), 20_000);
    const running = await detail(runId);
    expect(running.explanation.text).toMatch(/^Step slow is running on worker console-worker-1 \(attempt 1\) for \d+ s\.$/);
    const r = await operator.post<ActionResponse>(`/api/tenants/${t}/runs/${runId}/cancel`, { reason: 'not needed' });
    expect(r.status).toBe(202);
    await eventually('the run cancelled', async () => ((await statusOf(runId)) === 'cancelled' ? true : undefined), 20_000);
    const audit = await operator.get<AuditPageResponse>(`/api/tenants/${t}/audit?run=${runId}`);
    expect(audit.body.entries.map((e) => e.kind)).toContain('run.cancel-requested');
    expect((await operator.post<ErrorBody>(`/api/tenants/${t}/runs/${runId}/cancel`, {})).status).toBe(409);
  });

  it('console actions - an admin revokes a worker and admits it again; the fleet view shows who and when', async () => {
    await eventually(
      'the worker in the fleet view',
      async () => ((await admin.get<WorkersResponse>(`/api/tenants/${t}/workers`)).body.workers.find((w) => w.workerId === workerId) ? true : undefined),
      20_000,
    );
    expect((await operator.post<ErrorBody>(`/api/tenants/${t}/workers/${workerId}/revoke`, {})).status).toBe(403);
    const revoked = await admin.post<ActionResponse>(`/api/tenants/${t}/workers/${workerId}/revoke`, { reason: 'rotating hosts' });
    expect(revoked.status).toBe(202);
    expect(revoked.body).toEqual({ accepted: true, action: 'revokeWorker', tenant: t, workerId });
    const w = await eventually(
      'the revocation projected',
      async () => (await admin.get<WorkersResponse>(`/api/tenants/${t}/workers`)).body.workers.find((x) => x.workerId === workerId && x.admission === 'revoked'),
      20_000,
    );
    expect(w).toMatchObject({ admissionBy: 'adam', admissionReason: 'rotating hosts' });
    expect(Date.parse(w.admissionAt ?? '')).toBeGreaterThan(Date.now() - 60_000);

    expect((await admin.post(`/api/tenants/${t}/workers/${workerId}/approve`, {})).status).toBe(202);
    await eventually(
      'the worker admitted again',
      async () =>
        (await admin.get<WorkersResponse>(`/api/tenants/${t}/workers`)).body.workers.find((x) => x.workerId === workerId && x.admission === 'approved') ? true : undefined,
      20_000,
    );
    // And it works again: a run completes.
    const runId = await h.client.submit(t, 'demo.pipeline', { input: { customer: 9 } });
    await eventually('a run after re-admission completed', async () => ((await statusOf(runId)) === 'completed' ? true : undefined), 30_000);
    expect((await admin.post<ErrorBody>(`/api/tenants/${t}/workers/no-such-worker/revoke`, {})).status).toBe(404);
  });

  it('console actions - a run’s trace is a waterfall of its hops, and the run can be exported for offline review', async () => {
    const traceId = '4bf92f3577b34da6a3ce929d0e0e4736';
    const runId = await h.client.submit(t, 'demo.pipeline', { input: { customer: 7 }, traceparent: `00-${traceId}-00f067aa0ba902b7-01` });
    await eventually('the run completed', async () => ((await statusOf(runId)) === 'completed' ? true : undefined), 30_000);
    const d1 = await detail(runId);
    expect(d1.traceId).toBe(traceId);
    const hops = d1.hops.map((x) => [x.depth, x.kind, x.name, x.status]);
    expect(hops[0]).toEqual([0, 'run', 'run demo.pipeline@1', 'ok']);
    for (const step of ['extract', 'transform', 'load']) {
      const i = hops.findIndex((x) => x[2] === `step ${step}#1`);
      expect(hops.slice(i, i + 3)).toEqual([
        [1, 'step', `step ${step}#1`, 'ok'],
        [2, 'queued', 'queued', 'ok'],
        [2, 'worker', `worker ${workerId}`, 'ok'],
      ]);
    }
    for (const x of d1.hops) {
      expect(x.durationMs, x.name).toBeGreaterThanOrEqual(0);
      if (x.parent) expect(d1.hops.some((p) => p.id === x.parent)).toBe(true);
    }

    const file = await operator.get(`/api/tenants/${t}/runs/${runId}/export`);
    expect(file.status).toBe(200);
    expect(file.headers.get('content-disposition')).toBe(`attachment; filename="capstan-${t}-${runId}.jsonl"`);
    const contents = readExport(Buffer.from(file.text, 'utf8'));
    expect([...contents.runs.keys()]).toEqual([runId]);
    expect(contents.runs.get(runId)?.map((e) => e.type)).toEqual((await h.client.events(t, runId)).map((e) => e.type));
    expect(contents.workflows).toMatchObject([{ id: 'demo.pipeline', version: 1 }]);
    expect((await operator.get<ErrorBody>(`/api/tenants/${t}/runs/01ARZ3NDEKTSV4RRFFQ69G5FAV/export`)).status).toBe(404);
  });
});

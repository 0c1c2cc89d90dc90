/**
 * The console's API for Run now, schedules and routes, against a real nats-server, Postgres,
 * an orchestrator, a worker and the projector: roles, tenants, bad input and the control
 * plane's refusals answer with their status and code; the happy paths reach the streams.
 */
import { afterAll, beforeAll, describe, expect, inject, it } from 'vitest';
import {
  createConsole,
  hashPassword,
  loadConfig as consoleConfig,
  type ActionResponse,
  type Console,
  type RoutesResponse,
  type SchedulesResponse,
  type WorkflowsResponse,
} from '@capstan/console';
import { migrate, openDatabase, readSchedule, writeRoute, type Database, type TenantConnection } from '@capstan/kit';
import { createProjector, loadConfig as projectorConfig, type ProjectorApp } from '@capstan/projector';
import { Role, type TenantId } from '@capstan/schemas';
import { scratchDatabase } from '../harness/postgres.js';
import { accessAs, connect, eventually, provision, randomTenant, serviceEnv, silent, startServices, type Harness, type InProcessServices } from '../harness/fixtures.js';
import { ConsoleClient, type ErrorBody } from '../harness/console.js';

const PASSWORD = 'a long enough password';

describe('console triggers', () => {
  let scratch: Awaited<ReturnType<typeof scratchDatabase>>;
  let d: Database;
  let h: Harness;
  let t: TenantId;
  let tc: TenantConnection;
  let services: InProcessServices;
  let projector: ProjectorApp;
  let app: Console;
  let operator: ConsoleClient;
  let viewer: ConsoleClient;
  const other = randomTenant('other');
  const code = (r: { status: number; body: unknown }) => [r.status, (r.body as ErrorBody).error?.code];

  beforeAll(async () => {
    const url = inject('natsUrl');
    h = await connect(url);
    t = await provision(h, 'ctrig');
    tc = await h.tenant(t);
    scratch = await scratchDatabase('console_triggers');
    d = await openDatabase({ url: scratch.url, log: silent });
    await migrate(d);
    services = await startServices(url, [t]);
    projector = await createProjector(projectorConfig({ ...(await serviceEnv(url, Role.Projector)), DATABASE_URL: scratch.url, CAPSTAN_TENANTS: t }), silent, { database: d });
    await projector.start();
    const passwordHash = await hashPassword(PASSWORD);
    app = createConsole({
      db: d,
      access: await accessAs(url, Role.Console),
      config: consoleConfig({ CONSOLE_SECRET: 'k'.repeat(40), CONSOLE_USERS: 'unused', CONSOLE_PORT: '0', DATABASE_URL: scratch.url, ...(await serviceEnv(url, Role.Console)) }),
      log: silent,
      users: [
        { userId: 'olivia', orgId: 'acme', role: 'operator', tenants: [t], passwordHash },
        { userId: 'val', orgId: 'acme', role: 'viewer', tenants: [t], passwordHash },
      ],
    });
    await app.start();
    operator = new ConsoleClient(app.url);
    await operator.signIn('olivia', PASSWORD);
    viewer = new ConsoleClient(app.url);
    await viewer.signIn('val', PASSWORD);
  });

  afterAll(async () => {
    await app?.stop();
    await projector?.stop();
    await services?.stop();
    await d?.close();
    await scratch?.drop();
    await h?.close();
  });

  it('console triggers - the workflow catalog, and Run now: 202 with a run that starts; refusals by role, tenant and input', async () => {
    const catalog = await viewer.get<WorkflowsResponse>(`/api/tenants/${t}/workflows`);
    expect(catalog.status).toBe(200);
    expect(catalog.body.workflows.map((w) => w.id)).toContain('test.pipeline');
    expect(catalog.body.workflows.find((w) => w.id === 'test.pipeline')?.steps).toEqual(['one', 'two', 'three']);

    const started = await operator.post<ActionResponse>(`/api/tenants/${t}/runs`, { workflow: 'test.pipeline', input: { ms: 0 }, runId: '01JD3ZQ8Y9W0K6T2M4X5C7B8AV' });
    expect([started.status, started.body.runId]).toEqual([202, '01JD3ZQ8Y9W0K6T2M4X5C7B8AV']);
    expect((await h.client.waitForEnd(t, '01JD3ZQ8Y9W0K6T2M4X5C7B8AV', 15_000)).type).toBe('run.completed');
    // The same request again (a retry): the same run, nothing new.
    const again = await operator.post<ActionResponse>(`/api/tenants/${t}/runs`, { workflow: 'test.pipeline', input: { ms: 0 }, runId: '01JD3ZQ8Y9W0K6T2M4X5C7B8AV' });
    expect(again.status).toBe(202);
    expect((await h.client.events(t, '01JD3ZQ8Y9W0K6T2M4X5C7B8AV')).filter((e) => e.type === 'run.started')).toHaveLength(1);

    expect(code(await viewer.post(`/api/tenants/${t}/runs`, { workflow: 'test.pipeline' }))).toEqual([403, 'forbidden']);
    expect(code(await operator.post(`/api/tenants/${other}/runs`, { workflow: 'test.pipeline' }))).toEqual([403, 'forbidden']);
    expect(code(await operator.post(`/api/tenants/${t}/runs`, { workflow: 'no.such' }))).toEqual([404, 'unknown_workflow']);
    expect(code(await operator.post(`/api/tenants/${t}/runs`, { workflow: 'test.pipeline', input: [1] }))).toEqual([400, 'schema_violation']);
    expect(code(await operator.post(`/api/tenants/${t}/runs`, { workflow: 'test.pipeline', input: { big: 'x'.repeat(70_000) } }))).toEqual([413, 'payload_too_large']);
    expect(code(await operator.post(`/api/tenants/${t}/runs`, { workflow: 'test.pipeline', extra: 1 }))).toEqual([400, 'schema_violation']);
  });

  it('console triggers - schedules: create, list with next firings, trigger, pause, delete; refusals with their codes', async () => {
    const made = await operator.post<ActionResponse>(`/api/tenants/${t}/schedules`, {
      schedule: 'daily',
      workflow: 'test.pipeline',
      cron: '30 6 * * *',
      timezone: 'America/New_York',
      input: { ms: 0 },
      reason: 'mornings',
    });
    expect([made.status, made.body.scheduleId]).toEqual([202, 'daily']);
    const listed = await eventually('the schedule projected', async () =>
      (await viewer.get<SchedulesResponse>(`/api/tenants/${t}/schedules`)).body.schedules.find((s) => s.scheduleId === 'daily'),
    );
    expect(listed).toMatchObject({ status: 'active', cron: '30 6 * * *', timezone: 'America/New_York', overlap: 'skip', catchup: 'all', changedBy: 'olivia', reason: 'mornings' });
    expect(listed.next).toHaveLength(3);
    for (const n of listed.next) expect(new Date(n).toLocaleString('en-US', { timeZone: 'America/New_York', hour: 'numeric', minute: 'numeric', hour12: false })).toBe('06:30');

    const triggered = await operator.post<ActionResponse>(`/api/tenants/${t}/schedules/daily/trigger`, {});
    expect(triggered.status).toBe(202);
    expect((await h.client.waitForEnd(t, triggered.body.runId as string, 15_000)).type).toBe('run.completed');
    expect((await operator.post(`/api/tenants/${t}/schedules/daily/pause`, { reason: 'holiday' })).status).toBe(202);
    expect((await readSchedule(tc.jsm, t, 'daily'))?.record).toMatchObject({ status: 'paused', change: { by: 'olivia', reason: 'holiday' } });

    expect(code(await operator.post(`/api/tenants/${t}/schedules`, { schedule: 'daily', workflow: 'test.pipeline', everyMs: 60_000 }))).toEqual([409, 'schedule_exists']);
    expect(code(await operator.post(`/api/tenants/${t}/schedules`, { schedule: 'bad', workflow: 'test.pipeline', cron: 'every day' }))).toEqual([400, 'invalid_argument']);
    expect(code(await operator.post(`/api/tenants/${t}/schedules`, { schedule: 'both', workflow: 'test.pipeline', cron: '* * * * *', everyMs: 60_000 }))).toEqual([
      400,
      'schema_violation',
    ]);
    expect(code(await operator.post(`/api/tenants/${t}/schedules`, { schedule: 'ghost', workflow: 'no.such', everyMs: 60_000 }))).toEqual([404, 'unknown_workflow']);
    expect(code(await operator.post(`/api/tenants/${t}/schedules/missing/pause`, {}))).toEqual([404, 'schedule_not_found']);
    expect(code(await viewer.post(`/api/tenants/${t}/schedules/daily/resume`, {}))).toEqual([403, 'forbidden']);
    expect((await operator.post(`/api/tenants/${t}/schedules/daily/delete`, {})).status).toBe(202);
    await eventually('deleted schedules hidden', async () => ((await viewer.get<SchedulesResponse>(`/api/tenants/${t}/schedules`)).body.schedules.length === 0 ? true : undefined));
    expect((await viewer.get<SchedulesResponse>(`/api/tenants/${t}/schedules?all=true`)).body.schedules.map((s) => s.status)).toEqual(['deleted']);
  });

  it('console triggers - routes are listed with their paths and secret names, per tenant', async () => {
    await writeRoute(tc.js, tc.jsm, t, { route: 'github', workflow: 'test.pipeline', secrets: ['GH_HOOK', 'GH_HOOK_NEXT'], status: 'enabled', by: 'olivia' });
    const routes = await eventually('the route projected', async () => {
      const r = await viewer.get<RoutesResponse>(`/api/tenants/${t}/routes`);
      return r.body.routes.length === 1 ? r.body.routes : undefined;
    });
    expect(routes[0]).toMatchObject({ routeId: 'github', path: `/hooks/${t}/github`, secrets: ['GH_HOOK', 'GH_HOOK_NEXT'], fields: null, status: 'enabled', changedBy: 'olivia' });
    expect(code(await viewer.get(`/api/tenants/${other}/routes`))).toEqual([403, 'forbidden']);
  });
});

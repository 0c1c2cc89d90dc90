/**
 * Run now and the Triggers view in real Chromium (Debian's /usr/bin/chromium through
 * playwright-core) against the whole stack: a private nats-server, a scratch Postgres, an
 * orchestrator, a worker, the projector and the console. An operator starts a run of a
 * workflow with an input schema through the form built from it, and one without through the
 * JSON editor, and watches each start and complete; makes a schedule, runs it now, pauses
 * and deletes it; sees the webhook routes. A viewer cannot start anything.
 * Screenshots go to test/artifacts/console/.
 */
import { afterAll, beforeAll, describe, expect, inject, it } from 'vitest';
import { existsSync, mkdirSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import type { BrowserContext, Page } from 'playwright-core';
import { createRegistry, defineWorkflow } from '@capstan/actors';
import { migrate, openDatabase, PROJECT_ROOT, readSchedule, writeRoute, type Database, type TenantConnection } from '@capstan/kit';
import { createOrchestrator, loadConfig as orchestratorConfig, type OrchestratorApp } from '@capstan/orchestrator';
import { createProjector, loadConfig as projectorConfig, type ProjectorApp } from '@capstan/projector';
import { createWorker, loadConfig as workerConfig, type WorkerApp } from '@capstan/worker';
import { createConsole, hashPassword, loadConfig as consoleConfig, type Console } from '@capstan/console';
import { Role, type TenantId } from '@capstan/schemas';
import { scratchDatabase } from '../harness/postgres.js';
import { haveChromium, openBrowser } from '../harness/browser.js';
import { accessAs, connect, eventually, issueCreds, provision, serviceEnv, silent, type Harness } from '../harness/fixtures.js';
import { handlers as baseHandlers, workflows as baseWorkflows } from './workflows.js';

const ARTIFACTS = join(PROJECT_ROOT, 'test', 'artifacts', 'console');
const WEB_BUILT = existsSync(join(PROJECT_ROOT, 'services', 'console', 'dist', 'web', 'index.html'));
const withChromium = haveChromium();
const PASSWORD = 'correct horse battery staple';

/** A workflow whose input is described by a JSON Schema: the console builds its form from it. */
const greet = {
  ...defineWorkflow({ id: 'web.greet', version: 1, steps: [{ name: 'greet', timeoutMs: 10_000 }] }),
  inputSchema: {
    type: 'object',
    properties: {
      name: { type: 'string', description: 'Who to greet' },
      times: { type: 'integer', default: 1 },
      loud: { type: 'boolean' },
      tone: { type: 'string', enum: ['warm', 'formal'] },
    },
    required: ['name'],
  },
};
const workflows = [...baseWorkflows, greet];
const handlers = { ...baseHandlers, 'web.greet.greet': ({ input }: { input: Record<string, unknown> }) => ({ ok: true, said: `hello ${String(input['name'])}` }) };

describe.skipIf(!withChromium)('run now and triggers in a browser', () => {
  let scratch: Awaited<ReturnType<typeof scratchDatabase>>;
  let d: Database;
  let h: Harness;
  let t: TenantId;
  let tc: TenantConnection;
  let orchestrator: OrchestratorApp;
  let worker: WorkerApp;
  let projector: ProjectorApp;
  let app: Console;
  let dir: string;
  let ctx: BrowserContext;
  let page: Page;
  const pageErrors: string[] = [];
  const shot = (name: string) => page.screenshot({ path: join(ARTIFACTS, `${name}.png`), fullPage: true });

  const signIn = async (user: string) => {
    await page.goto(`${app.url}/signin`);
    await page.getByTestId('signin-user').fill(user);
    await page.getByTestId('signin-password').fill(PASSWORD);
    await page.getByTestId('signin-submit').click();
    await page.waitForURL(new RegExp(`/t/${t}/runs$`));
  };

  beforeAll(async () => {
    if (!WEB_BUILT) throw new Error('the web UI is not built: run `npm run build` first');
    mkdirSync(ARTIFACTS, { recursive: true });
    dir = mkdtempSync(join(tmpdir(), 'capstan-triggers-browser-'));
    scratch = await scratchDatabase('triggers_browser');
    d = await openDatabase({ url: scratch.url });
    await migrate(d);
    const url = inject('natsUrl');
    h = await connect(url);
    t = await provision(h, 'webtrig');
    tc = await h.tenant(t);
    const env = { NATS_URL: url, CAPSTAN_TENANTS: t, ORCH_POLICY: 'off' };
    orchestrator = await createOrchestrator(orchestratorConfig({ ...(await serviceEnv(url, Role.Orchestrator)), ...env }), silent, { registry: createRegistry(workflows) });
    const workerCreds = await issueCreds(url, t, Role.Worker, 'w-web', { pools: ['default'] });
    worker = await createWorker(workerConfig({ ...env, NATS_CREDS: workerCreds, WORKER_ID: 'w-web', WORKER_ADMISSION: 'auto', WORKER_LEASES: 'off' }), silent, { handlers });
    projector = await createProjector(projectorConfig({ ...(await serviceEnv(url, Role.Projector)), ...env, DATABASE_URL: scratch.url }), silent, { database: d });
    await orchestrator.start();
    await worker.start();
    await projector.start();
    const users = [
      { userId: 'olga', orgId: 'acme', role: 'operator', tenants: [t], passwordHash: await hashPassword(PASSWORD) },
      { userId: 'vic', orgId: 'acme', role: 'viewer', tenants: [t], passwordHash: await hashPassword(PASSWORD) },
    ];
    writeFileSync(join(dir, 'users.json'), JSON.stringify(users));
    const config = consoleConfig({
      CONSOLE_PORT: '0',
      CONSOLE_SECRET: 'y'.repeat(48),
      CONSOLE_USERS: join(dir, 'users.json'),
      DATABASE_URL: scratch.url,
      LOG_LEVEL: 'silent',
      ...(await serviceEnv(url, Role.Console)),
    });
    app = createConsole({ db: d, access: await accessAs(url, Role.Console), config, log: silent, pollMs: 250 });
    await app.start();
    await writeRoute(tc.js, tc.jsm, t, { route: 'orders', workflow: 'web.greet', secrets: ['ORDERS_HOOK'], fields: { name: '/customer/name' }, status: 'enabled', by: 'olga' });

    // 404: a run not projected yet while Run now waits for it; 401: the session checks around a sign-out.
    ({ ctx, page } = await openBrowser(dir, pageErrors, /status of (404|401)/));
  }, 120_000);

  afterAll(async () => {
    await ctx?.close();
    await app?.stop();
    await projector?.stop();
    await worker?.stop();
    await orchestrator?.stop();
    await h?.close();
    await d?.close();
    await scratch?.drop();
    if (dir) rmSync(dir, { recursive: true, force: true });
  });

  it('run now - a form built from the input schema starts a run, and the operator sees it start and complete', async () => {
    await signIn('olga');
    await page.getByTestId('run-now').click();
    await page.waitForURL(new RegExp(`/t/${t}/start$`));
    await page.getByTestId('start-workflow').selectOption('web.greet');
    await page.getByTestId('input-form').waitFor();
    // The schema's default is filled in; the required field holds the submit back.
    expect(await page.getByTestId('input-times').inputValue()).toBe('1');
    expect(await page.getByTestId('start-submit').isDisabled()).toBe(true);
    await page.getByTestId('input-name').fill('Ada');
    await page.getByTestId('input-times').fill('2');
    await page.getByTestId('input-loud').check();
    await page.getByTestId('input-tone').selectOption('warm');
    await shot('run-now');
    await page.getByTestId('start-submit').click();
    await page.waitForURL(new RegExp(`/t/${t}/runs/[0-9A-Z]{26}$`));
    const runId = page.url().split('/').at(-1) as string;
    await expect.poll(() => page.getByTestId('run-status').getAttribute('data-status'), { timeout: 20_000 }).toBe('completed');
    const started = (await h.client.events(t, runId)).find((e) => e.type === 'run.started');
    expect(started?.type === 'run.started' && [started.data.workflow, started.data.input]).toEqual(['web.greet', { name: 'Ada', times: 2, loud: true, tone: 'warm' }]);
  });

  it('run now - a workflow without a schema takes JSON, refused until it is an object', async () => {
    await page.goto(`${app.url}/t/${t}/start?workflow=console.order`);
    const editor = page.getByTestId('start-input-json');
    await editor.fill('{"customer": ');
    await expect.poll(() => page.getByTestId('start-input-error').textContent()).toMatch(/Not JSON yet/);
    expect(await page.getByTestId('start-submit').isDisabled()).toBe(true);
    await editor.fill('[1, 2]');
    await expect.poll(() => page.getByTestId('start-input-error').textContent()).toMatch(/must be a JSON object/);
    await editor.fill('{"customer": "initech", "cents": 990}');
    await page.getByTestId('start-submit').click();
    await page.waitForURL(new RegExp(`/t/${t}/runs/[0-9A-Z]{26}$`));
    await expect.poll(() => page.getByTestId('run-status').getAttribute('data-status'), { timeout: 20_000 }).toBe('completed');
    const runId = page.url().split('/').at(-1) as string;
    const started = (await h.client.events(t, runId)).find((e) => e.type === 'run.started');
    expect(started?.type === 'run.started' && started.data.input).toEqual({ customer: 'initech', cents: 990 });
  });

  it('triggers - a schedule made in the console lists its next firing, runs now, pauses and is deleted; routes are shown', async () => {
    await page.getByTestId('nav-triggers').click();
    await page.waitForURL(new RegExp(`/t/${t}/triggers$`));
    await page.getByTestId('route-row').first().waitFor();
    expect(await page.getByTestId('routes-table').textContent()).toMatch(new RegExp(`POST /hooks/${t}/orders.*web\\.greet.*ORDERS_HOOK.*name = /customer/name`));
    await page.getByTestId('schedule-new').click();
    await page.getByTestId('schedule-id').fill('hourly-greet');
    await page.getByTestId('schedule-workflow').selectOption('web.greet');
    await page.getByTestId('schedule-cron').fill('0 * * * *');
    await page.getByTestId('schedule-timezone').fill('Europe/Paris');
    await page.getByTestId('schedule-input').fill('{"name": "cron"}');
    await page.getByTestId('schedule-create').click();
    const row = page.locator('[data-testid="schedule-row"][data-schedule-id="hourly-greet"]');
    await row.waitFor({ timeout: 20_000 });
    expect(await row.getAttribute('data-status')).toBe('active');
    expect(await row.getByTestId('schedule-next').textContent()).not.toBe('–');
    await shot('triggers');

    await row.getByTestId('schedule-trigger').click();
    const triggered = await eventually('the triggered run recorded', async () => (await readSchedule(tc.jsm, t, 'hourly-greet'))?.record.change.runId, 15_000);
    expect((await h.client.waitForEnd(t, triggered, 15_000)).type).toBe('run.completed');
    await row.getByTestId('schedule-pause').click();
    await expect.poll(() => row.getAttribute('data-status'), { timeout: 15_000 }).toBe('paused');
    await row.getByTestId('schedule-delete').click();
    await page.getByRole('button', { name: 'Delete schedule' }).click();
    await expect.poll(() => page.locator('[data-testid="schedule-row"][data-schedule-id="hourly-greet"]').count(), { timeout: 15_000 }).toBe(0);
    // Each change was the operator's, recorded as such.
    const rec = (await readSchedule(tc.jsm, t, 'hourly-greet'))?.record;
    expect([rec?.status, rec?.change.by]).toEqual(['deleted', 'olga']);
  });

  it('run now - a viewer sees the form and cannot start anything', async () => {
    await page.getByTestId('signout').click();
    await signIn('vic');
    await page.goto(`${app.url}/t/${t}/start?workflow=web.greet`);
    await page.getByTestId('input-name').fill('Eve');
    expect(await page.getByTestId('start-submit').isDisabled()).toBe(true);
    expect(pageErrors).toEqual([]);
  });
});

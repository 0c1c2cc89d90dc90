/**
 * The operator console in a real browser: headless Chromium (Debian's /usr/bin/chromium,
 * driven by playwright-core) against the real stack: a private nats-server, a scratch
 * Postgres database, an orchestrator, two workers and the projector, and the console server
 * serving the built web UI. An operator signs in, finds a failed run by search and reads why
 * it failed, approves a waiting run and watches it complete without reloading, revokes a
 * worker, exports the audit log (whole and filtered by actor and kind), compares two policy
 * versions line by line; a viewer sees everything and can change nothing.
 * Screenshots of the main views go to test/artifacts/console/.
 */
import { afterAll, beforeAll, describe, expect, inject, it } from 'vitest';
import { createHash } from 'node:crypto';
import { existsSync, mkdirSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import type { BrowserContext, Page } from 'playwright-core';
import { childRunIdOf, continuedRunIdOf, createRegistry } from '@capstan/actors';
import { getRun, migrate, openDatabase, PROJECT_ROOT, listWorkers, type Database } from '@capstan/kit';
import { createOrchestrator, loadConfig as orchestratorConfig, type OrchestratorApp } from '@capstan/orchestrator';
import { createProjector, loadConfig as projectorConfig, type ProjectorApp } from '@capstan/projector';
import { createWorker, loadConfig as workerConfig, type WorkerApp } from '@capstan/worker';
import { createConsole, hashPassword, loadConfig as consoleConfig, type Console, type RunDetailResponse } from '@capstan/console';
import { db as schema, type RunId, type TenantId, Role } from '@capstan/schemas';
import { scratchDatabase } from '../harness/postgres.js';
import { haveChromium, openBrowser } from '../harness/browser.js';
import { connect, eventually, provision, randomTenant, silent, type Harness, accessAs, serviceEnv, issueCreds } from '../harness/fixtures.js';
import { handlers, workflows } from './workflows.js';

const ARTIFACTS = join(PROJECT_ROOT, 'test', 'artifacts', 'console');
const WEB_BUILT = existsSync(join(PROJECT_ROOT, 'services', 'console', 'dist', 'web', 'index.html'));

const withChromium = haveChromium();

const PASSWORD = 'correct horse battery staple';

describe.skipIf(!withChromium)('console in a browser', () => {
  let scratch: Awaited<ReturnType<typeof scratchDatabase>>;
  let d: Database;
  let h: Harness;
  let t: TenantId;
  let other: TenantId;
  let orchestrator: OrchestratorApp;
  let workerMain: WorkerApp;
  let workerSpare: WorkerApp;
  let projector: ProjectorApp;
  let app: Console;
  let dir: string;
  let ctx: BrowserContext;
  let page: Page;
  const pageErrors: string[] = [];
  let failedRun: RunId;
  let waitingRun: RunId;
  let secondWaitingRun: RunId;
  let cancelRun: RunId;

  const shot = async (name: string) => {
    await page.screenshot({ path: join(ARTIFACTS, `${name}.png`), fullPage: true });
  };

  /** Waits until the projections show the run in `status`. */
  const projected = (runId: RunId, status: string) =>
    eventually(`run ${runId} ${status} in the projections`, async () => ((await getRun(d, t, runId).catch(() => undefined))?.run.status === status ? true : undefined), 30_000);

  beforeAll(async () => {
    if (!WEB_BUILT) throw new Error('the web UI is not built: run `npm run build` (or `npm run build:web -w @capstan/console`) first');
    mkdirSync(ARTIFACTS, { recursive: true });
    dir = mkdtempSync(join(tmpdir(), 'capstan-console-browser-'));
    scratch = await scratchDatabase('browser');
    d = await openDatabase({ url: scratch.url });
    await migrate(d);
    const url = inject('natsUrl');
    h = await connect(url);
    t = await provision(h, 'web', { pools: ['default', 'gpu'] });
    other = randomTenant('nope');

    const env = { NATS_URL: url, CAPSTAN_TENANTS: t };
    orchestrator = await createOrchestrator(orchestratorConfig({ ...env, ...(await serviceEnv(url, Role.Orchestrator)) }), silent, { registry: createRegistry(workflows) });
    // w-main is approved already; w-spare waits for an admin, who approves and later revokes it.
    await h.client.approveWorker(t, 'w-main', { by: 'auto' });
    workerMain = await createWorker(
      workerConfig({ ...env, NATS_CREDS: await issueCreds(url, t, Role.Worker, 'w-main', { pools: ['default'] }), WORKER_ADMISSION: 'auto' }),
      silent,
      { handlers },
    );
    workerSpare = await createWorker(
      workerConfig({ ...env, NATS_CREDS: await issueCreds(url, t, Role.Worker, 'w-spare', { pools: ['default', 'gpu'] }), WORKER_ADMISSION: 'required' }),
      silent,
      { handlers },
    );
    projector = await createProjector(projectorConfig({ ...env, ...(await serviceEnv(url, Role.Projector)), DATABASE_URL: scratch.url }), silent, { database: d });
    await orchestrator.start();
    await workerMain.start();
    await workerSpare.start();
    await projector.start();

    const users = [
      { userId: 'alice', orgId: 'acme', role: 'admin', tenants: [t], passwordHash: await hashPassword(PASSWORD) },
      { userId: 'vic', orgId: 'acme', role: 'viewer', tenants: [t], passwordHash: await hashPassword(PASSWORD) },
    ];
    writeFileSync(join(dir, 'users.json'), JSON.stringify(users));
    const config = consoleConfig({
      CONSOLE_PORT: '0',
      CONSOLE_SECRET: 'x'.repeat(48),
      CONSOLE_USERS: join(dir, 'users.json'),
      DATABASE_URL: scratch.url,
      ...(await serviceEnv(url, Role.Console)),
      LOG_LEVEL: 'silent',
    });
    app = createConsole({ db: d, access: await accessAs(url, Role.Console), config, log: silent, pollMs: 250 });
    await app.start();

    // Runs to find: completed orders for two customers, one declined order (fails after a
    // retry), two runs waiting for approval.
    for (const customer of ['initech', 'umbrella']) await h.client.submit(t, 'console.order', { input: { customer } });
    failedRun = await h.client.submit(t, 'console.order', { input: { customer: 'globex', decline: true } });
    waitingRun = await h.client.submit(t, 'demo.signal');
    secondWaitingRun = await h.client.submit(t, 'demo.signal');
    cancelRun = await h.client.submit(t, 'demo.signal');
    await projected(failedRun, 'failed');
    await projected(cancelRun, 'waiting');
    await projected(waitingRun, 'waiting');
    await projected(secondWaitingRun, 'waiting');
    await eventually('both workers in the fleet', async () => ((await listWorkers(d, t)).length === 2 ? true : undefined), 20_000);

    ({ ctx, page } = await openBrowser(dir, pageErrors));
  }, 120_000);

  afterAll(async () => {
    await ctx?.close();
    await app?.stop();
    await projector?.stop();
    await workerSpare?.stop();
    await workerMain?.stop();
    await orchestrator?.stop();
    await h?.close();
    await d?.close();
    await scratch?.drop();
    if (dir) rmSync(dir, { recursive: true, force: true });
  });

  it('console browser - a wrong password is refused in words; the right one opens the runs list', async () => {
    await page.goto(`${app.url}/`);
    await page.waitForURL(/\/signin$/);
    await page.getByTestId('signin-user').fill('alice');
    await page.getByTestId('signin-password').fill('not the password');
    await page.getByTestId('signin-submit').click();
    const error = page.getByTestId('error');
    await expect.poll(() => error.textContent()).toMatch(/\(bad_credentials\)/);
    await shot('signin');

    await page.getByTestId('signin-password').fill(PASSWORD);
    await page.getByTestId('signin-submit').click();
    await page.waitForURL(new RegExp(`/t/${t}/runs$`));
    await expect.poll(() => page.getByTestId('run-row').count()).toBe(6);
    expect(await page.getByTestId('whoami').textContent()).toMatch(/alice.*admin/);
    await expect.poll(() => page.getByTestId('live').getAttribute('data-state')).toBe('open');
    // Readable at 1280 px: nothing scrolls sideways.
    expect(await page.evaluate<number>('document.documentElement.scrollWidth')).toBeLessThanOrEqual(1280);
    await shot('runs');
  });

  it('console browser - "/" focuses the search; typed fields find the failed run', async () => {
    await page.keyboard.press('/');
    expect(await page.evaluate<string | null>("document.activeElement?.getAttribute('data-testid') ?? null")).toBe('runs-search');
    await page.keyboard.type('status:failed customer=globex');
    await page.keyboard.press('Enter');
    await page.waitForURL(/status=failed/);
    await expect.poll(() => page.getByTestId('run-row').evaluateAll((rows) => rows.map((r) => r.getAttribute('data-run-id')))).toEqual([failedRun]);
    expect(await page.getByTestId('filter-chips').textContent()).toMatch(/status: failed.*customer=globex/);

    // A search field with no match says so, and a mistyped field is explained, not sent.
    await page.getByTestId('runs-search').fill('customer=nobody');
    await page.keyboard.press('Enter');
    await page.getByTestId('runs-empty').waitFor();
    await page.getByTestId('runs-search').fill('colour:red');
    await page.keyboard.press('Enter');
    expect(await page.getByTestId('search-problem').textContent()).toMatch(/"colour:" is not a search field/);
    await page.getByTestId('runs-search').fill('status:failed customer=globex');
    await page.keyboard.press('Enter');
    await expect.poll(() => page.getByTestId('run-row').count()).toBe(1);
    // Keyboard only: Escape leaves the search, j moves to the first row, Enter opens it.
    await page.keyboard.press('Escape');
    await page.keyboard.press('j');
    expect(await page.evaluate<string | null>("document.activeElement?.getAttribute('data-testid') ?? null")).toBe('run-link');
    await page.keyboard.press('Enter');
    await page.waitForURL(new RegExp(`/runs/${failedRun}$`));
  });

  it('console browser - a failed run explains itself: why, the trace of attempts, the timeline', async () => {
    await expect.poll(() => page.getByTestId('run-status').getAttribute('data-status')).toBe('failed');
    const why = await page.getByTestId('why-text').textContent();
    expect(why).toMatch(/charge/);
    expect(why).toMatch(/card_declined|card declined/);
    expect(await page.getByTestId('why').getAttribute('data-status')).toBe('failed');

    const trace = await page
      .getByTestId('trace-row')
      .evaluateAll((rows) => rows.map((r) => `${r.getAttribute('data-step')}#${r.getAttribute('data-attempt')}:${r.getAttribute('data-outcome')}`));
    expect(trace).toEqual(['quote#1:completed', 'charge#1:failed', 'charge#2:failed']);
    expect(await page.getByTestId('attempt-error').first().textContent()).toMatch(/card_declined: card declined by the issuer \(attempt 1\)/);
    // The trace: every hop from the record, nested, with its duration.
    const hops = await page.getByTestId('hop').evaluateAll((rows) => rows.map((r) => `${r.getAttribute('data-kind')}:${r.getAttribute('data-status')}`));
    expect(hops[0]).toBe('run:error');
    expect(hops.filter((h) => h.startsWith('step:'))).toEqual(['step:ok', 'step:error', 'step:error']);
    expect(hops.filter((h) => h.startsWith('worker:'))).toEqual(['worker:ok', 'worker:error', 'worker:error']);
    expect(await page.getByTestId('action-export').getAttribute('href')).toBe(`/api/tenants/${t}/runs/${failedRun}/export`);
    const types = await page.getByTestId('timeline-event').evaluateAll((xs) => xs.map((x) => x.getAttribute('data-type')));
    expect(types[0]).toBe('run.started');
    expect(types.at(-1)).toBe('run.failed');
    expect(types.filter((x) => x === 'step.failed')).toHaveLength(2);
    // A failed run can be retried but not cancelled.
    expect(await page.getByTestId('action-cancel').isDisabled()).toBe(true);
    expect(await page.evaluate<number>('document.documentElement.scrollWidth')).toBeLessThanOrEqual(1280);
    await shot('run-failed');
    // A laptop screen.
    await page.setViewportSize({ width: 1440, height: 900 });
    await shot('run-failed-1440');
    await page.setViewportSize({ width: 1280, height: 800 });
  });

  it('console browser - approving a waiting run: the page follows it to completed without a reload', async () => {
    await page.keyboard.press('g');
    await page.keyboard.press('a');
    await page.waitForURL(new RegExp(`/t/${t}/approvals$`));
    await expect
      .poll(() => page.getByTestId('approval-row').evaluateAll((rows) => rows.map((r) => r.getAttribute('data-run-id')).sort()))
      .toEqual([waitingRun, secondWaitingRun, cancelRun].sort());
    expect(await page.getByTestId('approvals-count').textContent()).toBe('3');
    await shot('approvals');

    await page.locator(`[data-testid="approval-row"][data-run-id="${waitingRun}"] a`).click();
    await page.waitForURL(new RegExp(`/runs/${waitingRun}$`));
    await expect.poll(() => page.getByTestId('run-status').getAttribute('data-status')).toBe('waiting');
    expect(await page.getByTestId('why-text').textContent()).toMatch(/review/);
    expect(await page.getByTestId('why').getAttribute('data-status')).toBe('waiting');
    await shot('run-waiting');

    // Marks this document: a reload would lose the mark.
    await page.evaluate('window.mark = 42');
    await page.getByTestId('approve').click();
    await expect.poll(() => page.getByTestId('run-status').getAttribute('data-status'), { timeout: 20_000 }).toBe('completed');
    expect(await page.evaluate<unknown>('window.mark')).toBe(42);
    expect(await page.getByTestId('why').getAttribute('data-status')).toBe('completed');
    const types = await page.getByTestId('timeline-event').evaluateAll((xs) => xs.map((x) => x.getAttribute('data-type')));
    // The decision is an event of its own, with its author (not a bare signal).
    expect(types).toContain('approval.decided');
    expect(types.at(-1)).toBe('run.completed');
    await page.locator('[data-testid="run-approval"][data-step="review"]').waitFor();
    await expect.poll(() => page.locator('[data-testid="run-approval"][data-step="review"] td:nth-child(6)').textContent()).toBe('alice');
    await expect.poll(() => page.getByTestId('approvals-count').textContent()).toBe('2');
    await projected(waitingRun, 'completed');
    await shot('run-completed');
  });

  it('console browser - cancelling asks first, records the reason, and the run ends cancelled', async () => {
    await page.goto(`${app.url}/t/${t}/runs/${cancelRun}`);
    await expect.poll(() => page.getByTestId('run-status').getAttribute('data-status')).toBe('waiting');
    await page.getByTestId('action-cancel').click();
    await page.getByTestId('confirm-dialog').waitFor();
    // The dialog is modal and holds the focus.
    expect(await page.evaluate<string | null>("document.activeElement?.closest('dialog') ? document.activeElement.getAttribute('data-testid') : null")).toBe('confirm-reason');
    await page.getByTestId('confirm-reason').fill('duplicate order');
    await shot('confirm-cancel');
    await page.getByTestId('confirm-ok').click();
    await expect.poll(() => page.getByTestId('run-status').getAttribute('data-status'), { timeout: 20_000 }).toBe('cancelled');
    expect(await page.getByTestId('action-cancel').isDisabled()).toBe(true);
    const types = await page.getByTestId('timeline-event').evaluateAll((xs) => xs.map((x) => x.getAttribute('data-type')));
    // The running step is cancelled with the run (engine 2).
    expect(types.slice(-3)).toEqual(['run.cancel-requested', 'step.cancelled', 'run.cancelled']);
    await projected(cancelRun, 'cancelled');
  });

  it('console browser - retrying the failed run continues from the failed step; completed steps do not run again', async () => {
    await page.goto(`${app.url}/t/${t}/runs/${failedRun}`);
    await expect.poll(() => page.getByTestId('run-status').getAttribute('data-status')).toBe('failed');
    await page.getByTestId('action-retry').click();
    await page.getByTestId('confirm-ok').click();
    // Still declined: two more attempts of charge, and the run fails again.
    const attempts = () =>
      page.getByTestId('trace-row').evaluateAll((rows) => rows.map((r) => `${r.getAttribute('data-step')}#${r.getAttribute('data-attempt')}:${r.getAttribute('data-outcome')}`));
    await expect.poll(attempts, { timeout: 20_000 }).toEqual(['quote#1:completed', 'charge#1:failed', 'charge#2:failed', 'charge#3:failed', 'charge#4:failed']);
    await expect.poll(() => page.getByTestId('run-status').getAttribute('data-status')).toBe('failed');
    const types = await page.getByTestId('timeline-event').evaluateAll((xs) => xs.map((x) => x.getAttribute('data-type')));
    expect(types).toContain('run.retried');
    await shot('run-retried');
  });

  it('console browser - a new run appears in the list as it starts', async () => {
    await page.getByTestId('nav-runs').click();
    await page.waitForURL(new RegExp(`/t/${t}/runs$`));
    await expect.poll(() => page.getByTestId('run-row').count()).toBe(6);
    await page.evaluate('window.mark = 7');
    const fresh = await h.client.submit(t, 'console.order', { input: { customer: 'hooli' } });
    await expect.poll(() => page.getByTestId('run-row').first().getAttribute('data-run-id'), { timeout: 20_000 }).toBe(fresh);
    await expect.poll(() => page.locator(`[data-testid="run-row"][data-run-id="${fresh}"]`).getAttribute('data-status'), { timeout: 20_000 }).toBe('completed');
    expect(await page.evaluate<unknown>('window.mark')).toBe(7);
  });

  it('console browser - an admin approves a waiting worker, then revokes it after confirming', async () => {
    await page.keyboard.press('g');
    await page.keyboard.press('w');
    await page.waitForURL(new RegExp(`/t/${t}/workers$`));
    const spare = page.locator('[data-testid="worker-row"][data-worker-id="w-spare"]');
    const main = page.locator('[data-testid="worker-row"][data-worker-id="w-main"]');
    await spare.waitFor();
    expect(await page.getByTestId('worker-row').count()).toBe(2);
    expect(await spare.getByTestId('worker-health').textContent()).toBe('online');
    expect(await spare.getAttribute('data-admission')).toBe('pending');
    expect(await main.getAttribute('data-admission')).toBe('approved');
    await shot('workers');

    await spare.getByTestId('worker-approve').click();
    await expect.poll(() => spare.getAttribute('data-admission'), { timeout: 20_000 }).toBe('approved');
    expect((await h.client.workerAdmission(t, 'w-spare'))?.by).toBe('alice');

    // A destructive dialog focuses the safe choice; Escape closes it and changes nothing.
    await spare.getByTestId('worker-revoke').click();
    await page.getByTestId('confirm-dialog').waitFor();
    expect(await page.evaluate<string | null>("document.activeElement?.getAttribute('data-testid') ?? null")).toBe('confirm-keep');
    await page.keyboard.press('Escape');
    await page.getByTestId('confirm-dialog').waitFor({ state: 'detached' });
    expect((await h.client.workerAdmission(t, 'w-spare'))?.state).toBe('approved');

    await spare.getByTestId('worker-revoke').click();
    await page.getByTestId('confirm-ok').click();
    await expect.poll(() => spare.getAttribute('data-admission'), { timeout: 20_000 }).toBe('revoked');
    expect((await h.client.workerAdmission(t, 'w-spare'))?.state).toBe('revoked');
    expect(await main.getAttribute('data-admission')).toBe('approved');
    await shot('workers-revoked');
  });

  it('console browser - the audit log lists the decisions and exports them as CSV', async () => {
    await page.getByTestId('nav-audit').click();
    await page.waitForURL(new RegExp(`/t/${t}/audit$`));
    await expect.poll(() => page.getByTestId('audit-row').count()).toBeGreaterThan(0);
    const actors = await page.locator('[data-testid="audit-row"] td:nth-child(3)').allTextContents();
    expect(actors).toContain('alice');
    await shot('audit');

    const href = await page.getByTestId('audit-csv').getAttribute('href');
    const csv = await page.request.get(`${app.url}${href ?? ''}`);
    expect(csv.status()).toBe(200);
    expect(csv.headers()['content-type']).toMatch(/^text\/csv/);
    const lines = (await csv.text()).trim().split(/\r?\n/);
    expect(lines[0]).toBe('id,at,run_id,seq,kind,actor,detail,stream_seq');
    expect(lines.some((l) => l.includes(waitingRun) && l.includes('alice'))).toBe(true);

    // Filtered by actor and kind: the address, the rows and the export all follow.
    await page.getByTestId('audit-actor').fill('alice');
    await page.getByTestId('audit-kind').fill('approval.decided');
    await page.getByTestId('audit-filter').click();
    await page.waitForURL(/kind=approval\.decided/);
    expect(page.url()).toMatch(/actor=alice/);
    await expect.poll(() => page.locator('[data-testid="audit-row"]').evaluateAll((rows) => rows.map((r) => r.getAttribute('data-kind')))).toEqual(['approval.decided']);
    expect(await page.locator('[data-testid="audit-row"] td:nth-child(3)').allTextContents()).toEqual(['alice']);
    const filteredHref = await page.getByTestId('audit-csv').getAttribute('href');
    expect(filteredHref).toMatch(/kind=approval\.decided/);
    const filtered = (await (await page.request.get(`${app.url}${filteredHref ?? ''}`)).text()).trim().split(/\r?\n/);
    expect(filtered).toHaveLength(2);
    expect(filtered[1]).toContain(',approval.decided,alice,');
  });

  it('console browser - the policies view lists the versions; ticking two shows what changed, line by line', async () => {
    // Two versions as the projector folds them from the policy stream.
    const v1 = 'permit (principal, action, resource);\n';
    const v2 = 'permit (principal, action, resource)\nwhen { resource.mode < 2 };\n\nforbid (principal, action == Action::"lease", resource);\n';
    const digest = (text: string) => createHash('sha256').update(text, 'utf8').digest('hex');
    await d.db.insert(schema.policies).values([
      { tenant: t, version: 1, sha256: digest(v1), by: 'alice', reason: null, at: new Date(Date.now() - 3_600_000), text: v1, streamSeq: 1 },
      { tenant: t, version: 2, sha256: digest(v2), by: 'alice', reason: 'no leases for mode 3', at: new Date(Date.now() - 60_000), text: v2, streamSeq: 2 },
    ]);
    await page.getByTestId('nav-policies').click();
    await page.waitForURL(new RegExp(`/t/${t}/policies$`));
    await expect.poll(() => page.getByTestId('policy-row').evaluateAll((rows) => rows.map((r) => r.getAttribute('data-version')))).toEqual(['2', '1']);
    // The newest version's text shows first.
    await expect.poll(() => page.getByTestId('policy-text-body').textContent()).toBe(v2);
    expect(await page.getByTestId('policy-diff-hint').textContent()).toMatch(/Tick two versions/);

    await page.locator('[data-testid="policy-row"][data-version="1"] [data-testid="policy-pick"]').check();
    await page.locator('[data-testid="policy-row"][data-version="2"] [data-testid="policy-pick"]').check();
    await page.waitForURL(/a=1&b=2/);
    const diff = page.getByTestId('policy-diff');
    await expect.poll(() => diff.getByTestId('diff-line').count()).toBe(5);
    const ops = await diff.getByTestId('diff-line').evaluateAll((rows) => rows.map((r) => `${r.getAttribute('data-op')} ${r.querySelector('.diff-text')?.textContent ?? ''}`));
    expect(ops).toEqual([
      'del permit (principal, action, resource);',
      'add permit (principal, action, resource)',
      'add when { resource.mode < 2 };',
      'add ',
      'add forbid (principal, action == Action::"lease", resource);',
    ]);
    expect(await page.getByTestId('policy-diff-stats').textContent()).toBe('4 lines added, 1 line removed');
    expect(await diff.locator('h2').textContent()).toBe('v1 → v2');

    // Showing the older text keeps the comparison.
    await page.locator('[data-testid="policy-row"][data-version="1"] [data-testid="policy-show"]').click();
    await expect.poll(() => page.getByTestId('policy-text-body').textContent()).toBe(v1);
    expect(await diff.getByTestId('diff-line').count()).toBe(5);
    expect(await page.evaluate<number>('document.documentElement.scrollWidth')).toBeLessThanOrEqual(1280);
    await shot('policies');
  });

  it('console browser - a parent links to its child run and the child back; a run that continued as new links to its continuation and back', async () => {
    // demo.agent (version 2) hands its research to a child run of demo.brief.
    const parent = await h.client.submit(t, 'demo.agent', { input: { urgent: true } });
    const child = childRunIdOf(parent, 'brief', 1);
    await projected(child, 'completed');
    await projected(parent, 'completed');
    // The API says it as the projections have it.
    const api = async (runId: string) => (await (await page.request.get(`${app.url}/api/tenants/${t}/runs/${runId}`)).json()) as RunDetailResponse;
    expect((await api(child)).parent).toEqual({ runId: parent, step: 'brief' });
    expect((await api(parent)).children).toEqual([{ step: 'brief', attempt: 1, workflow: 'demo.brief', runId: child, outcome: 'completed' }]);
    expect((await api(parent)).parent).toBeNull();

    await page.goto(`${app.url}/t/${t}/runs/${parent}`);
    const row = page.locator('[data-testid="run-child"][data-step="brief"]');
    await row.waitFor();
    expect(await row.getAttribute('data-child-id')).toBe(child);
    expect(await row.getByTestId('child-outcome').getAttribute('data-status')).toBe('completed');
    expect(await page.getByTestId('run-parent').count()).toBe(0);
    await shot('run-parent');
    await row.getByTestId('run-child-link').click();
    await page.waitForURL(new RegExp(`/runs/${child}$`));
    await expect.poll(() => page.getByTestId('run-parent').getAttribute('data-run-id')).toBe(parent);
    expect(await page.getByTestId('run-related').textContent()).toMatch(/step brief/);
    expect(await page.getByTestId('run-child').count()).toBe(0);
    await shot('run-child');
    await page.getByTestId('run-parent').click();
    await page.waitForURL(new RegExp(`/runs/${parent}$`));
    await page.locator('[data-testid="run-child"][data-step="brief"]').waitFor();
    // Neither a parent nor a child continued as new: no continuation links either way.
    expect(await page.getByTestId('run-continued-as').count()).toBe(0);
    expect(await page.getByTestId('run-continued-from').count()).toBe(0);

    // Continue-as-new: the run that continued links forward to its continuation, which links back.
    const first = await h.client.submit(t, 'console.ticker', { input: { round: 1, rounds: 2 } });
    const next = continuedRunIdOf(first);
    await projected(first, 'completed');
    await projected(next, 'completed');
    expect([(await api(first)).continuedFrom, (await api(first)).continuedAs]).toEqual([null, next]);
    expect([(await api(next)).continuedFrom, (await api(next)).continuedAs]).toEqual([first, null]);
    await page.goto(`${app.url}/t/${t}/runs/${first}`);
    await expect.poll(() => page.getByTestId('run-continued-as').getAttribute('data-run-id')).toBe(next);
    expect(await page.getByTestId('run-continued-from').count()).toBe(0);
    expect(await page.getByTestId('run-related').textContent()).toMatch(/Continued as/);
    await shot('run-continued-as');
    await page.getByTestId('run-continued-as').click();
    await page.waitForURL(new RegExp(`/runs/${next}$`));
    await expect.poll(() => page.getByTestId('run-continued-from').getAttribute('data-run-id')).toBe(first);
    expect(await page.getByTestId('run-continued-as').count()).toBe(0);
    await page.getByTestId('run-continued-from').click();
    await page.waitForURL(new RegExp(`/runs/${first}$`));
    await page.getByTestId('run-continued-as').waitFor();
  });

  it('console browser - a run shows what the policy decided and which credentials it leased, by key name', async () => {
    // Rows as the projector (policy.decided) and the secrets-lease service (lease.*, negative seq) write them.
    const at = new Date();
    await d.db.insert(schema.auditLog).values([
      {
        tenant: t,
        runId: failedRun,
        seq: 10_000,
        kind: 'policy.decided',
        actor: 'policy',
        detail: { step: 'charge', attempt: 1, decision: 'allow', version: 2, policies: ['policy0'] },
        at,
        streamSeq: 0,
      },
      {
        tenant: t,
        runId: failedRun,
        seq: -1,
        kind: 'lease.issued',
        actor: 'secrets-lease',
        detail: { leaseId: 'L1', keys: ['PAYMENTS_TOKEN'], step: 'charge', attempt: 1, ttlMs: 60_000 },
        at,
        streamSeq: 0,
      },
      {
        tenant: t,
        runId: failedRun,
        seq: -2,
        kind: 'lease.denied',
        actor: 'secrets-lease',
        detail: { leaseId: 'L1', code: 'lease_used', keys: ['PAYMENTS_TOKEN'], step: 'charge', attempt: 1 },
        at,
        streamSeq: 0,
      },
    ]);
    await page.goto(`${app.url}/t/${t}/runs/${failedRun}`);
    const section = page.getByTestId('run-policy');
    await expect.poll(() => section.getByTestId('run-lease').evaluateAll((rows) => rows.map((r) => r.getAttribute('data-kind')))).toEqual(['lease.issued', 'lease.denied']);
    expect(await section.getByTestId('run-decision').evaluateAll((rows) => rows.map((r) => [r.getAttribute('data-step'), r.getAttribute('data-decision')]))).toEqual([
      ['charge', 'allow'],
    ]);
    expect(await section.getByTestId('run-leases').textContent()).toMatch(/PAYMENTS_TOKEN.*lease_used/);
    await section.scrollIntoViewIfNeeded();
    await shot('run-policy');
  });

  it('console browser - a viewer sees runs but every action is disabled; other tenants are refused', async () => {
    await page.getByTestId('signout').click();
    await page.waitForURL(/\/signin$/);
    await page.getByTestId('signin-user').fill('vic');
    await page.getByTestId('signin-password').fill(PASSWORD);
    await page.getByTestId('signin-submit').click();
    await page.waitForURL(new RegExp(`/t/${t}/runs$`));
    await page.goto(`${app.url}/t/${t}/runs/${secondWaitingRun}`);
    await expect.poll(() => page.getByTestId('run-status').getAttribute('data-status')).toBe('waiting');
    for (const id of ['approve', 'deny', 'action-cancel', 'action-signal', 'action-retry']) {
      expect(await page.getByTestId(id).isDisabled(), id).toBe(true);
    }
    expect(await page.getByTestId('action-cancel').getAttribute('title')).toMatch(/operator role/);
    await shot('run-viewer');

    await page.goto(`${app.url}/t/${other}/runs`);
    expect(await page.getByTestId('error').textContent()).toMatch(new RegExp(`no access to the tenant ${other}`));
  });

  it('console browser - a one-time sign-in link signs in once and leaves the address bar clean', async () => {
    await page.getByTestId('signout').click();
    await page.waitForURL(/\/signin$/);
    const link = app.signInLink('alice');
    await page.goto(link);
    await page.waitForURL(new RegExp(`/t/${t}/runs$`));
    expect(page.url()).not.toContain('token=');
    expect(await page.getByTestId('whoami').textContent()).toMatch(/alice/);
    await page.getByTestId('signout').click();
    await page.waitForURL(/\/signin$/);
    await page.goto(link);
    expect(await page.getByTestId('error').textContent()).toMatch(/sign-in link does not work/);
    expect(page.url()).not.toContain('token=');
  });

  it('console browser - no script errors on any page', () => {
    // 401s while signed out and the refused link are answers, not errors of the page.
    const real = pageErrors.filter((e) => !/status of 40[13]/.test(e));
    expect(real).toEqual([]);
  });
});

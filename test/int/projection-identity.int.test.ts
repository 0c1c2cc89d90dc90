/**
 * Projections know which run stream they follow. The store under a projector is replaced
 * (its nats-server stopped, and another started on the same port with an empty store; the
 * tenant provisioned again and new runs made, so its streams have the same names and count
 * from 1 again): once while the projector runs, once while it is stopped. Both are detected.
 *
 * - `rebuild` (what `capstan dev` runs, on PGlite): the projections are rebuilt from the new
 *   stream: the old runs are gone from them, the new ones there, lag 0, the old store's
 *   admission audit rows replaced by the new one's.
 * - `refuse` (production, on Postgres): nothing of the new stream is applied over the old
 *   rows, and nothing is served from them: the console's tenant routes answer 503
 *   `projection_out_of_sync`, to a session and to an API token alike; /api/system and
 *   `capstan status --system` (exit 1) name it, `capstan runs` exits 1 with it; the
 *   projector's metrics have `capstan_projection_out_of_sync 1` and no lag; the console's
 *   system route carries the reason (the banner's text). Then `capstan projections rebuild`
 *   makes them follow the new stream, and the projector goes on.
 *
 * Each case uses its own nats-server (the harness's shared one cannot be replaced). First, the
 * read guard's own race: a checkpoint that moved on is not a stream that ends before it.
 */
import { afterEach, describe, expect, inject, it } from 'vitest';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { and, eq, inArray, sql } from 'drizzle-orm';
import type { PlatformSystemResponse, SystemResponse } from '@capstan/console';
import { listRuns, migrate, newRunId, openDatabase, provisionTenant, recordFollowed, scrape, startNatsServer, syncGuard, type Database, type NatsServer } from '@capstan/kit';
import { createProjector, loadConfig as projectorConfig, type ProjectorApp } from '@capstan/projector';
import { db as schema, Role, Streams, Subjects, type RunId, type TenantId } from '@capstan/schemas';
import { scratchDatabase } from '../harness/postgres.js';
import { ConsoleClient, startReadConsole, type ErrorBody } from '../harness/console.js';
import {
  adminOf,
  connect,
  eventually,
  provision,
  randomTenant,
  runCli,
  serviceEnv,
  silent,
  startServices,
  testAuthStore,
  TEST_TENANT_STORAGE,
  type Harness,
  type InProcessServices,
} from '../harness/fixtures.js';

type Mode = 'rebuild' | 'refuse';
type When = 'running' | 'stopped';

const cleanups: (() => Promise<unknown>)[] = [];
afterEach(async () => {
  for (const c of cleanups.splice(0).reverse()) await c().catch(() => undefined);
});

/** Submits `n` demo runs and waits for every one to complete. */
async function runsOn(h: Harness, t: TenantId, n: number): Promise<RunId[]> {
  const ids = await Promise.all(Array.from({ length: n }, (_, i) => h.client.submit(t, 'demo.pipeline', { input: { customer: i } })));
  await Promise.all(ids.map((r) => h.client.waitForEnd(t, r, 30_000)));
  return ids;
}

async function checkpointRow(d: Database, t: TenantId) {
  const rows = await d.db
    .select()
    .from(schema.checkpoints)
    .where(sql`tenant = ${t} and stream = ${Streams.runs(t)}`);
  return rows[0];
}

const projectedIds = async (d: Database, t: TenantId) => (await listRuns(d, t, { limit: 100 })).runs.map((r) => r.runId).sort();

interface Case {
  readonly t: TenantId;
  readonly database: Database;
  readonly dbUrl: string;
  readonly store: NatsServer;
  readonly h: Harness;
  readonly projector: ProjectorApp;
  readonly oldRuns: RunId[];
  readonly newRuns: RunId[];
  /** When the old store went away. */
  readonly replacedAt: Date;
  readonly newCreated: string;
}

/**
 * A projector (`mode`) follows a tenant's runs on one store; the store is replaced with the
 * projector running or stopped (`when`), and the tenant's new runs are made on the new one.
 */
async function replaceStore(mode: Mode, when: When): Promise<Case> {
  const t = randomTenant(`id-${when}`);
  let database: Database;
  let dbUrl: string;
  if (mode === 'rebuild') {
    const dir = mkdtempSync(join(tmpdir(), 'capstan-identity-'));
    database = await openDatabase({ dataDir: dir, log: silent });
    dbUrl = 'postgres://embedded.pglite/capstan';
    cleanups.push(() => Promise.resolve(rmSync(dir, { recursive: true, force: true })));
  } else {
    const scratch = await scratchDatabase('identity');
    cleanups.push(() => scratch.drop());
    database = await openDatabase({ url: scratch.url, log: silent });
    dbUrl = scratch.url;
  }
  cleanups.push(() => database.close());
  await migrate(database);

  const auth = await testAuthStore();
  const first = await startNatsServer({ auth });
  cleanups.push(() => first.stop());
  // `capstan tenant add`: its account, quota, streams, consumers and registry record.
  const addTenant = async (url: string) => provisionTenant(await adminOf(url), t, { quota: { maxStorageBytes: TEST_TENANT_STORAGE } });
  await addTenant(first.url);
  let h = await connect(first.url);
  const streamOf = async () => (await (await h.jsm(t)).streams.info(Streams.runs(t))).created;
  const projectorOn = async (url: string) => {
    const p = await createProjector(
      projectorConfig({
        ...(await serviceEnv(url, Role.Projector)),
        DATABASE_URL: dbUrl,
        CAPSTAN_TENANTS: t,
        PROJECTOR_ON_STREAM_CHANGE: mode,
        PROJECTOR_SYNC_CHECK_MS: '250',
        PROJECTOR_DISCOVERY_MS: '250',
      }),
      silent,
      { database },
    );
    cleanups.push(() => p.stop());
    await p.start();
    return p;
  };
  let projector = await projectorOn(first.url);
  let services: InProcessServices = await startServices(first.url, [t], { workerId: `w-${t}` });
  // An admin's admission record: fleet stream sequence 1, and an audit row keyed by it.
  await h.client.approveWorker(t, `w-${t}`, { by: 'admin-of-the-old-store' });
  const oldRuns = await runsOn(h, t, 4);
  await eventually('the old runs projected', async () => ((await projector.lag()).every((l) => l.lag === 0) ? true : undefined));
  expect(await projectedIds(database, t)).toEqual([...oldRuns].sort());
  const followed = await checkpointRow(database, t);
  expect(followed?.streamCreated).toBe(await streamOf());

  // The store is replaced: same server address, same stream names, an empty store.
  await services.stop();
  if (when === 'stopped') await projector.stop();
  await h.close();
  const replacedAt = new Date();
  await first.stop();
  const second = await startNatsServer({ auth, port: first.port });
  cleanups.push(() => second.stop());
  await addTenant(second.url);
  h = await connect(second.url);
  cleanups.push(() => h.close());
  services = await startServices(second.url, [t], { workerId: `w-${t}` });
  cleanups.push(() => services.stop());
  await h.client.approveWorker(t, `w-${t}`, { by: 'admin-of-the-new-store' });
  const newRuns = await runsOn(h, t, 2);
  const newCreated = await streamOf();
  expect(newCreated).not.toBe(followed?.streamCreated);
  // The stopped projector starts again, on the new store.
  if (when === 'stopped') projector = await projectorOn(second.url);
  return { t, database, dbUrl, store: second, h, projector, oldRuns, newRuns, replacedAt, newCreated };
}

describe('projection identity', () => {
  it('projection identity - readers never mistake a checkpoint that moved on for a stream that ends before it', async () => {
    // The read guard caches the stream for a second; the projector applies meanwhile. A
    // cached stream end below a newer checkpoint is read again, not believed.
    const h = await connect(inject('natsUrl'));
    cleanups.push(() => h.close());
    const t = await provision(h, 'id-guard');
    const scratch = await scratchDatabase('identity_guard');
    cleanups.push(() => scratch.drop());
    const database = await openDatabase({ url: scratch.url, log: silent });
    cleanups.push(() => database.close());
    await migrate(database);
    const js = await h.js(t);
    const jsm = await h.jsm(t);
    const publish = async (n: number) => {
      for (let i = 0; i < n; i++) await js.publish(Subjects.run(t, newRunId()), new Uint8Array([i]));
    };
    const now = async () => (await jsm.streams.info(Streams.runs(t))).state;
    await publish(3);
    await recordFollowed(database.db, t, { created: (await jsm.streams.info(Streams.runs(t))).created, firstSeq: 1 });
    const guard = syncGuard(database.db, h, 60_000);
    await guard(t);
    // Three more events, applied at once: the checkpoint passes the stream end the guard saw.
    await publish(3);
    await database.db
      .update(schema.checkpoints)
      .set({ lastStreamSeq: (await now()).last_seq })
      .where(sql`tenant = ${t}`);
    await expect(guard(t)).resolves.toBeUndefined();
    // A checkpoint past the stream's real end is refused, cached or not.
    await database.db
      .update(schema.checkpoints)
      .set({ lastStreamSeq: (await now()).last_seq + 5 })
      .where(sql`tenant = ${t}`);
    await expect(guard(t)).rejects.toMatchObject({ code: 'projection_out_of_sync' });
  });

  for (const when of ['running', 'stopped'] as const) {
    it(`projection identity - the store replaced under a ${when} projector: dev rebuilds from the new stream`, async () => {
      const c = await replaceStore('rebuild', when);
      const { t, database } = c;
      // Stopped: the check at start rebuilt before anything was applied. Running: the
      // periodic check finds the new stream.
      const check = async () => {
        const row = await checkpointRow(database, t);
        const ids = await projectedIds(database, t);
        return row?.streamCreated === c.newCreated && ids.length === c.newRuns.length && (await c.projector.lag()).every((l) => l.lag === 0) ? { row, ids } : undefined;
      };
      const { row, ids } = when === 'stopped' ? ((await check()) ?? (await eventually('rebuilt', check, 1000))) : await eventually('rebuilt from the new stream', check, 30_000);
      const stats = c.projector.stats()[t];
      const oldAudit = await database.db
        .select()
        .from(schema.auditLog)
        .where(sql`tenant = ${t} and run_id = '' and at < ${c.replacedAt.toISOString()}::timestamptz`);
      process.stdout.write(
        `store replaced under a ${when} projector (rebuild): rebuilds ${stats?.rebuilds}, runs projected ${ids.length} (old ${c.oldRuns.length} gone), checkpoint ${row?.lastStreamSeq}, out of sync ${String(row?.outOfSync)}, old admission audit rows ${oldAudit.length}\n`,
      );
      expect(ids).toEqual([...c.newRuns].sort());
      expect(stats?.rebuilds).toBe(1);
      expect(row?.outOfSync).toBeNull();
      expect(row?.lastStreamSeq).toBe((await (await c.h.jsm(t)).streams.info(Streams.runs(t))).state.last_seq);
      // The old store's admission record (same fleet sequence, same audit key) made way for the new store's.
      expect(oldAudit).toHaveLength(0);
      const admissions = await database.db
        .select()
        .from(schema.auditLog)
        .where(sql`tenant = ${t} and run_id = ''`);
      expect(admissions.map((a) => [a.kind, a.actor])).toEqual([['worker.approved', 'admin-of-the-new-store']]);
      // And it goes on: a run made after the rebuild is projected.
      const [later] = await runsOn(c.h, t, 1);
      await eventually('a later run projected', async () => ((await projectedIds(database, t)).includes(later as RunId) ? true : undefined));
    }, 120_000);

    it(`projection identity - the store replaced under a ${when} projector: production refuses, loudly, until rebuilt`, async () => {
      const c = await replaceStore('refuse', when);
      const { t, database } = c;
      const row = await eventually(
        'marked out of sync',
        async () => {
          const r = await checkpointRow(database, t);
          return r?.outOfSync ? r : undefined;
        },
        when === 'stopped' ? 1000 : 30_000,
      );
      expect(row.outOfSync).toMatch(/was created again/);
      expect(c.projector.stats()[t]).toMatchObject({ following: false, outOfSync: row.outOfSync });
      // Nothing of the new stream was applied over the old rows; the old rows are kept, unread.
      const newRows = await database.db
        .select()
        .from(schema.runs)
        .where(and(eq(schema.runs.tenant, t), inArray(schema.runs.runId, c.newRuns)));
      expect(newRows).toHaveLength(0);
      expect(await projectedIds(database, t)).toEqual([...c.oldRuns].sort());

      // The console, read with an API token as the CLI reads it, and with a session as the
      // browser does (its pages, and its system route: what the banner shows); the CLI; the
      // projector's metrics.
      const rc = await startReadConsole({ db: database, natsUrl: c.store.url, tenants: [t] });
      cleanups.push(() => rc.stop());
      const bearer = { authorization: `Bearer ${rc.token}` };
      const runsPage = await fetch(`${rc.url}/api/tenants/${t}/runs`, { headers: bearer });
      const runsBody = (await runsPage.json()) as ErrorBody;
      const system = (await (await fetch(`${rc.url}/api/system`, { headers: bearer })).json()) as PlatformSystemResponse;
      const metrics = await scrape();
      const status = await runCli(['status', '--system'], rc.env);
      const cliRuns = await runCli(['runs', '--tenant', t], rc.env);
      const browser = new ConsoleClient(rc.url);
      await browser.signInWithLink(rc.app.signInLink('admin'));
      const consoleRuns = await browser.get<ErrorBody>(`/api/tenants/${t}/runs`);
      const consoleSystem = await browser.get<SystemResponse>(`/api/tenants/${t}/system`);

      const refused = {
        tokenPages: runsPage.status === 503 && runsBody.error.code === 'projection_out_of_sync',
        system: system.projection[0]?.error?.code === 'projection_out_of_sync' && system.projection[0].lag === null,
        metrics: metrics.includes(`capstan_projection_out_of_sync{tenant="${t}"} 1`) && !metrics.includes(`capstan_projector_lag_events{tenant="${t}"}`),
        statusSystem: status.code === 1 && status.out.includes('projection_out_of_sync'),
        cliRuns: cliRuns.code === 1 && cliRuns.err.includes('projection_out_of_sync'),
        consolePages: consoleRuns.status === 503 && consoleRuns.body.error.code === 'projection_out_of_sync',
        consoleBanner: consoleSystem.body.outOfSync?.code === 'projection_out_of_sync',
      };
      process.stdout.write(`store replaced under a ${when} projector (refuse): ${JSON.stringify(refused)}\n`);
      expect(refused).toEqual({ tokenPages: true, system: true, metrics: true, statusSystem: true, cliRuns: true, consolePages: true, consoleBanner: true });
      expect(runsBody.error.message).toContain(`capstan projections rebuild --tenant ${t}`);

      // The operator's repair: a rebuild from the stream there is now; the projector goes on.
      const rebuilt = await runCli(['projections', 'rebuild', '--tenant', t, '--db', c.dbUrl, '--nats', c.store.url]);
      expect(rebuilt.code, rebuilt.err).toBe(0);
      await eventually('following again', () => Promise.resolve(c.projector.stats()[t]?.following ? true : undefined), 30_000);
      const [later] = await runsOn(c.h, t, 1);
      await eventually('a later run projected', async () => ((await projectedIds(database, t)).includes(later as RunId) ? true : undefined));
      expect(await projectedIds(database, t)).toEqual([...c.newRuns, later as RunId].sort());
      expect((await fetch(`${rc.url}/api/tenants/${t}/runs`, { headers: bearer })).status).toBe(200);
      expect((await runCli(['status', '--system'], rc.env)).code).toBe(0);
      expect(await scrape()).toContain(`capstan_projection_out_of_sync{tenant="${t}"} 0`);
      expect((await browser.get(`/api/tenants/${t}/runs`)).status).toBe(200);
    }, 120_000);
  }
});

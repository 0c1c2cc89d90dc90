/**
 * The console's data-sync API end to end: entities defined by an admin through the console
 * reach the data plane (their spec) and come back through the catalog stream and the
 * projector (their record); an operator starts a pipeline run and watches its five steps
 * complete; the preview answers an operator with a bounded table, refuses a writing query,
 * and is not a viewer's to use.
 */
import { afterAll, beforeAll, describe, expect, inject, it } from 'vitest';
import {
  createConsole,
  hashPassword,
  loadConfig as consoleConfig,
  type ActionResponse,
  type Console,
  type DatasyncEntityResponse,
  type DatasyncResponse,
  type PreviewResponse,
} from '@capstan/console';
import { sql } from 'drizzle-orm';
import { openDatabase, queryRows, type Database } from '@capstan/kit';
import { Role, type TenantId } from '@capstan/schemas';
import { accessAs, eventually, serviceEnv, silent } from '../harness/fixtures.js';
import { ConsoleClient, type ErrorBody } from '../harness/console.js';
import { datasyncFixture, defineCatalog, type DatasyncFixture } from '../harness/datasync.js';

const PASSWORD = 'a long enough password';

describe('console: data sync', () => {
  let f: DatasyncFixture;
  let t: TenantId;
  let app: Console;
  let db: Database;
  const as: Record<'viewer' | 'operator' | 'admin', ConsoleClient> = {} as never;

  beforeAll(async () => {
    f = await datasyncFixture(inject('natsUrl'), 'dsc', { items: 2000, env: { DATASYNC_SWEEP_AFTER_MS: '1000' } });
    t = f.t;
    await defineCatalog(await f.h.nc(t), t, f.src, {
      signer: (await f.h.tenant(t)).signer,
      password: 'trust',
      destinations: { warehouse: { type: 'postgres', connection: 'shop', schema: 'warehouse' } },
    });
    const passwordHash = await hashPassword(PASSWORD);
    db = await openDatabase({ url: f.stateUrl, log: silent });
    app = createConsole({
      db,
      access: await accessAs(inject('natsUrl'), Role.Console),
      config: consoleConfig({
        CONSOLE_SECRET: 'k'.repeat(40),
        CONSOLE_USERS: 'unused',
        CONSOLE_PORT: '0',
        DATABASE_URL: f.stateUrl,
        ...(await serviceEnv(inject('natsUrl'), Role.Console)),
      }),
      log: silent,
      users: (['viewer', 'operator', 'admin'] as const).map((role) => ({ userId: role, orgId: 'acme', role, tenants: [t], passwordHash })),
      pollMs: 200,
    });
    await app.start();
    for (const role of ['viewer', 'operator', 'admin'] as const) {
      as[role] = new ConsoleClient(app.url);
      await as[role].signIn(role, PASSWORD);
    }
  }, 120_000);

  afterAll(async () => {
    await app?.stop();
    await db?.close();
    await f?.close();
  }, 60_000);

  it('an admin defines a destination; the control plane sees its record, not its spec', async () => {
    const spec = { type: 'files', path: 'exports/secret-folder-name', format: 'parquet' };
    expect((await as.operator.post(`/api/tenants/${t}/datasync/destination/lake`, { spec })).status).toBe(403);
    const r = await as.admin.post<DatasyncEntityResponse>(`/api/tenants/${t}/datasync/destination/lake`, { spec, name: 'Lake' });
    expect(r.status).toBe(200);
    expect(r.body.entity).toMatchObject({ kind: 'destination', id: 'lake', name: 'Lake', version: 1, status: 'active', summary: { type: 'files', format: 'parquet' } });
    const bad = await as.admin.post<ErrorBody>(`/api/tenants/${t}/datasync/model/broken`, {
      spec: { entities: [{ name: 'x', source: { table: 't' }, key: ['nope'], fields: [{ name: 'a', column: 'a' }] }] },
    });
    expect(bad.status).toBe(400);
    expect(bad.body.error.message).toContain('key field nope is not one of its fields');
    const listed = await eventually('the projection to list the destination', async () => {
      const d = (await as.viewer.get<DatasyncResponse>(`/api/tenants/${t}/datasync`)).body;
      return d.entities.some((e) => e.id === 'lake') ? d : undefined;
    });
    expect(listed.entities.map((e) => `${e.kind}:${e.id}`).sort()).toEqual(['connection:shop', 'destination:lake', 'destination:warehouse', 'model:shop-model']);
    const text = JSON.stringify(listed);
    for (const hidden of ['secret-folder-name', f.src.database, 'customers']) expect(text).not.toContain(hidden);
    // A connection's secret key names are on its record (what warrants the datasync service's leases): names, like a step's `sandbox.secrets`, never values.
    expect(listed.entities.find((e) => e.id === 'shop')?.summary).toMatchObject({ keys: ['SHOP_PG_PASSWORD'] });
  });

  it('an operator starts a pipeline run and watches its five steps complete', async () => {
    expect((await as.viewer.post(`/api/tenants/${t}/datasync/runs`, { connection: 'shop', model: 'shop-model', destination: 'warehouse' })).status).toBe(403);
    const started = await as.operator.post<ActionResponse>(`/api/tenants/${t}/datasync/runs`, { connection: 'shop', model: 'shop-model', destination: 'warehouse' });
    expect(started.status).toBe(202);
    const runId = started.body.runId as string;
    const run = await eventually(
      'the run to show five completed steps',
      async () => {
        const r = (await as.viewer.get<DatasyncResponse>(`/api/tenants/${t}/datasync`)).body.runs.find((x) => x.runId === runId);
        return r?.status === 'completed' && r.steps.every((s) => s.status === 'completed') ? r : undefined;
      },
      60_000,
    );
    expect(run).toMatchObject({ connection: 'shop', model: 'shop-model', destination: 'warehouse' });
    expect(run.steps.map((s) => s.step)).toEqual(['retrieve', 'refresh', 'build', 'resolve', 'load']);
    expect(run.steps[4]?.rows).toBe(2000 + 400 + 100 + 10);
  });

  it('the preview: a bounded table for an operator, a refusal for a writing query, nothing for a viewer', async () => {
    const ok = await as.operator.post<PreviewResponse>(`/api/tenants/${t}/datasync/preview`, { connection: 'shop', sql: 'select id, status from orders order by id' });
    expect(ok.status).toBe(200);
    expect(ok.body.columns).toEqual([
      { name: 'id', type: 'bigint' },
      { name: 'status', type: 'text' },
    ]);
    expect(ok.body.rows.length).toBe(100);
    expect(ok.body.truncated).toBe(true);
    const refused = await as.operator.post<ErrorBody>(`/api/tenants/${t}/datasync/preview`, {
      connection: 'shop',
      sql: 'WITH d AS (DELETE FROM orders RETURNING *) SELECT * FROM d',
    });
    expect(refused.status).toBe(400);
    expect(refused.body.error.code).toBe('query_refused');
    expect((await as.viewer.post(`/api/tenants/${t}/datasync/preview`, { connection: 'shop', sql: 'select 1' })).status).toBe(403);
  });

  it('a run that fails at its load leaves no staging behind once it has ended', async () => {
    const u = new URL(f.stateUrl);
    const nobody = {
      type: 'postgres',
      host: u.hostname,
      port: Number(u.port || 5432),
      database: f.src.database,
      tls: { mode: 'disable' },
      auth: { type: 'username_password', username: 'capstan_no_such_role' },
    };
    expect((await as.admin.post(`/api/tenants/${t}/datasync/connection/nobody`, { spec: nobody })).status).toBe(200);
    expect((await as.admin.post(`/api/tenants/${t}/datasync/destination/nowhere`, { spec: { type: 'postgres', connection: 'nobody', schema: 'x' } })).status).toBe(200);
    const runId = (await as.operator.post<ActionResponse>(`/api/tenants/${t}/datasync/runs`, { connection: 'shop', model: 'shop-model', destination: 'nowhere' })).body
      .runId as string;
    const end = await f.h.client.waitForEnd(t, runId, 60_000);
    expect(end.type).toBe('run.failed');
    expect((end.data as { error: { code: string } }).error.code).toBe('source_failed');
    const left = await eventually(
      "the failed run's staging to be swept",
      async () => {
        const rows = await queryRows<{ tables: string; steps: string }>(
          f.stack.db,
          sql`select (select count(*) from pg_tables where schemaname = 'capstan_datasync' and tablename like 'r%') as tables, (select count(*) from datasync_run_steps where run_id = ${runId}) as steps`,
        );
        return rows[0]?.tables === '0' && rows[0].steps === '0' ? rows[0] : undefined;
      },
      30_000,
      250,
    );
    expect(left).toEqual({ tables: '0', steps: '0' });
  }, 120_000);
});

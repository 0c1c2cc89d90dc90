/**
 * The embedded path: the projector on PGlite (what `capstan dev` uses without DATABASE_URL)
 * projects real runs exactly as on Postgres, and the worker fleet view fills from heartbeats.
 */
import { Role } from '@capstan/schemas';
import { afterAll, beforeAll, describe, expect, inject, it } from 'vitest';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { listRuns, listWorkers, migrate, openDatabase, type Database } from '@capstan/kit';
import { createProjector, loadConfig, verifyProjections, type ProjectorApp } from '@capstan/projector';
import type { TenantId } from '@capstan/schemas';
import { connect, eventually, provision, silent, startServices, type Harness, type InProcessServices, serviceEnv } from '../harness/fixtures.js';

let h: Harness;
let t: TenantId;
let dir: string;
let database: Database;
let services: InProcessServices;
let projector: ProjectorApp;

beforeAll(async () => {
  const url = inject('natsUrl');
  h = await connect(url);
  t = await provision(h, 'pglite');
  dir = mkdtempSync(join(tmpdir(), 'capstan-pglite-'));
  database = await openDatabase({ dataDir: dir, log: silent });
  await migrate(database);
  services = await startServices(url, [t], { workerId: 'pglite-worker' });
  projector = await createProjector(loadConfig({ ...(await serviceEnv(url, Role.Projector)), DATABASE_URL: 'postgres://embedded.pglite/test', CAPSTAN_TENANTS: t }), silent, {
    database,
  });
  await projector.start();
});

afterAll(async () => {
  await services?.stop();
  await projector?.stop();
  await database?.close();
  rmSync(dir, { recursive: true, force: true });
  await h?.close();
});

describe('projector on PGlite', () => {
  it('projector - on PGlite, runs are projected and verify finds rows equal to the streams', async () => {
    const runIds = await Promise.all(Array.from({ length: 30 }, (_, i) => h.client.submit(t, i % 3 === 0 ? 'demo.flaky' : 'demo.pipeline', { input: { customer: `c-${i % 5}` } })));
    await Promise.all(runIds.map((r) => h.client.waitForEnd(t, r, 30_000)));
    await eventually('projection caught up', async () => ((await projector.lag()).every((l) => l.lag === 0) ? true : undefined));
    const report = await verifyProjections(database, h.jsm, [t]);
    expect(report.ok).toBe(true);
    const page = await listRuns(database, t, { status: 'completed', limit: 100 });
    expect(page.runs).toHaveLength(30);
    const c2 = await listRuns(database, t, { where: { customer: 'c-2' }, limit: 100 });
    expect(c2.runs.map((r) => r.workflow)).toEqual(Array(c2.runs.length).fill('demo.pipeline'));
    expect(c2.runs.length).toBe(6 - runIds.filter((_, i) => i % 5 === 2 && i % 3 === 0).length);
  });

  it('projector - worker heartbeats fill the fleet view with capability labels', async () => {
    const workers = await eventually('worker row', async () => {
      const w = await listWorkers(database, t);
      return w.length > 0 ? w : undefined;
    });
    expect(workers.map((w) => [w.workerId, w.pools])).toEqual([['pglite-worker', ['default']]]);
    expect(Date.now() - workers[0]!.lastSeenAt.getTime()).toBeLessThan(30_000);
  });
});

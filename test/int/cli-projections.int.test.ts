/**
 * `capstan migrate` and `capstan projections verify|rebuild` as a user runs them (real
 * processes, a real Postgres): the exit code says whether the rows match the streams.
 */
import { Role } from '@capstan/schemas';
import { afterAll, beforeAll, describe, expect, inject, it } from 'vitest';
import { sql } from 'drizzle-orm';
import { openDatabase, type Database } from '@capstan/kit';
import { createProjector, loadConfig, type ProjectorApp } from '@capstan/projector';
import type { TenantId } from '@capstan/schemas';
import { connect, eventually, provision, runCli, silent, startServices, type Harness, type InProcessServices, serviceEnv } from '../harness/fixtures.js';
import { scratchDatabase } from '../harness/postgres.js';

let url: string;
let h: Harness;
let t: TenantId;
let scratch: Awaited<ReturnType<typeof scratchDatabase>>;
let database: Database;
let services: InProcessServices;
let projector: ProjectorApp;

const capstan = (args: string[]) => runCli(args, { NATS_URL: url, DATABASE_URL: scratch.url });

beforeAll(async () => {
  url = inject('natsUrl');
  h = await connect(url);
  t = await provision(h, 'cli-proj');
  scratch = await scratchDatabase('cliproj');
  database = await openDatabase({ url: scratch.url, log: silent });
});

afterAll(async () => {
  await services?.stop();
  await projector?.stop();
  await database?.close();
  await scratch?.drop();
  await h?.close();
});

describe('cli projections', () => {
  it('cli - migrate creates the schema, and says so', async () => {
    const r = await capstan(['migrate']);
    expect(r.err).toBe('');
    expect(r.code).toBe(0);
    expect(r.out).toContain('projection schema up to date');
  });

  it('cli - verify exits 0 on matching rows, 1 on a tampered row; rebuild repairs it', async () => {
    services = await startServices(url, [t]);
    projector = await createProjector(loadConfig({ ...(await serviceEnv(url, Role.Projector)), DATABASE_URL: scratch.url, CAPSTAN_TENANTS: t }), silent);
    await projector.start();
    const runIds = await Promise.all(Array.from({ length: 10 }, () => h.client.submit(t, 'demo.pipeline', { input: { customer: 'c-1' } })));
    await Promise.all(runIds.map((r) => h.client.waitForEnd(t, r, 30_000)));
    await eventually('projection caught up', async () => ((await projector.lag()).every((l) => l.lag === 0) ? true : undefined));

    const ok = await capstan(['projections', 'verify', '--tenant', t]);
    expect(ok.code).toBe(0);
    expect(ok.out).toContain('projections match the streams');

    await database.db.execute(sql`update runs set status = 'failed' where tenant = ${t} and run_id = ${runIds[0]}`);
    const bad = await capstan(['projections', 'verify', '--tenant', t]);
    expect(bad.code).toBe(1);
    expect(bad.out).toContain(`runs ${runIds[0]} status: expected "completed", found "failed"`);

    const rebuilt = await capstan(['projections', 'rebuild', '--tenant', t]);
    expect(rebuilt.code).toBe(0);
    expect(rebuilt.out).toMatch(new RegExp(`rebuilt ${t}: \\d+ events`));
    expect((await capstan(['projections', 'verify', '--tenant', t])).code).toBe(0);
  });

  it('cli - projections commands explain bad input', async () => {
    const cases: [string[], number, string][] = [
      [['projections'], 2, 'capstan projections rebuild'],
      [['projections', 'frob'], 2, 'unknown projections command'],
      [['projections', 'verify', '--tenant', 'nobody-here'], 1, 'not provisioned'],
    ];
    for (const [args, code, message] of cases) {
      const r = await capstan(args);
      expect({ args, code: r.code }).toEqual({ args, code });
      expect(r.err).toContain(message);
    }
  });
});

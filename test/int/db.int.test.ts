/**
 * The projection schema on real Postgres and on PGlite: migrations apply (twice is a no-op),
 * and the audit log refuses UPDATE, DELETE and TRUNCATE at the database level.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { sql } from 'drizzle-orm';
import { dbErrorMessage, migrate, openDatabase, queryRows, type Database } from '@capstan/kit';
import { db as schema } from '@capstan/schemas';
import { scratchDatabase } from '../harness/postgres.js';

const auditRow = {
  tenant: 'acme',
  runId: '01JD3ZQ8Y9W0K6T2M4X5C7B8AV',
  seq: 3,
  kind: 'run.cancel-requested',
  actor: 'alice',
  detail: { reason: 'x' },
  at: new Date(),
  streamSeq: 9,
};

async function checkAppendOnly(d: Database): Promise<void> {
  await d.db.insert(schema.auditLog).values(auditRow);
  for (const q of [sql`update audit_log set actor = 'mallory'`, sql`delete from audit_log`, sql`truncate audit_log`]) {
    const err = await d.db.execute(q).then(
      () => undefined,
      (e: unknown) => e,
    );
    expect(dbErrorMessage(err)).toMatch(/audit_log is append-only: (UPDATE|DELETE|TRUNCATE) refused/);
  }
  const rows = await d.db.select().from(schema.auditLog);
  expect(rows.map((r) => r.actor)).toEqual(['alice']);
}

describe('db', () => {
  let scratch: Awaited<ReturnType<typeof scratchDatabase>>;
  let pgDb: Database;
  beforeAll(async () => {
    scratch = await scratchDatabase('db');
    pgDb = await openDatabase({ url: scratch.url });
  });
  afterAll(async () => {
    await pgDb?.close();
    await scratch?.drop();
  });

  it('db - migrations apply on Postgres, and again as a no-op', async () => {
    await migrate(pgDb);
    await migrate(pgDb);
    const tables = await queryRows<{ table_name: string }>(pgDb, sql`select table_name from information_schema.tables where table_schema = 'public' order by 1`);
    expect(tables.map((r) => r.table_name)).toEqual(
      expect.arrayContaining(['approvals', 'audit_log', 'checkpoints', 'dead_letters', 'events', 'run_search', 'runs', 'steps', 'workers']),
    );
  });

  it('db - the audit log is append-only on Postgres', async () => {
    await checkAppendOnly(pgDb);
  });

  it('db - the projector role may insert audit rows but not change them', async () => {
    const grants = await queryRows<{ privilege_type: string }>(
      pgDb,
      sql`select privilege_type from information_schema.role_table_grants where grantee = 'capstan_projector' and table_name = 'audit_log' order by 1`,
    );
    expect(grants.map((r) => r.privilege_type)).toEqual(['INSERT', 'SELECT']);
  });

  it('db - the same schema works on PGlite (the embedded default)', async () => {
    const dir = mkdtempSync(join(tmpdir(), 'capstan-pglite-'));
    const lite = await openDatabase({ dataDir: dir });
    try {
      await migrate(lite);
      await checkAppendOnly(lite);
    } finally {
      await lite.close();
      rmSync(dir, { recursive: true, force: true });
    }
  });
});

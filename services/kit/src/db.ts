/**
 * The projections database: Postgres through `pg` when a URL is given, else PGlite
 * (embedded Postgres) in a local folder, with the same drizzle schema and migrations.
 */
import { mkdirSync } from 'node:fs';
import pg from 'pg';
import { drizzle as drizzlePg } from 'drizzle-orm/node-postgres';
import { migrate as migratePg } from 'drizzle-orm/node-postgres/migrator';
import type { PgDatabase, PgQueryResultHKT } from 'drizzle-orm/pg-core';
import type { SQL } from 'drizzle-orm';
import { fileURLToPath } from 'node:url';
import { db as schema, MIGRATIONS_URL, UnavailableError } from '@capstan/schemas';
import type { Logger } from './log.js';

export type Schema = typeof schema;
/** A drizzle database over the projection schema, whichever driver is underneath. */
export type ProjectionDb = PgDatabase<PgQueryResultHKT, Schema>;

export interface Database {
  readonly db: ProjectionDb;
  readonly kind: 'pg' | 'pglite';
  /** Where it is: the URL without its password, or the PGlite folder. */
  readonly where: string;
  close(): Promise<void>;
}

/** @capstan/schemas' migrations, found through that package (not the repository checkout). */
export const MIGRATIONS_FOLDER = fileURLToPath(MIGRATIONS_URL);

export interface OpenOptions {
  /** `postgres://…`; when absent, PGlite in `dataDir`. */
  readonly url?: string;
  readonly dataDir?: string;
  readonly log?: Logger;
  readonly poolSize?: number;
}

export async function openDatabase(o: OpenOptions): Promise<Database> {
  if (o.url) {
    const pool = new pg.Pool({ connectionString: o.url, max: o.poolSize ?? 4, connectionTimeoutMillis: 5000 });
    // A client whose server goes away emits 'error': an idle one on the pool, one checked out
    // (mid-transaction) on itself. Unheard, either ends the process; the query in flight
    // fails anyway, and that failure is what callers act on, so these only need hearing.
    pool.on('error', (err) => o.log?.warn({ err: err.message }, 'postgres connection lost (idle)'));
    pool.on('connect', (client) => {
      client.on('error', (err) => o.log?.warn({ err: err.message }, 'postgres connection lost'));
    });
    const where = redact(o.url);
    return { db: drizzlePg(pool, { schema }) as unknown as ProjectionDb, kind: 'pg', where, close: () => pool.end() };
  }
  if (!o.dataDir) throw new UnavailableError('no DATABASE_URL and no PGlite data folder given');
  mkdirSync(o.dataDir, { recursive: true });
  // Loaded only when used: PGlite brings a WebAssembly Postgres.
  const { PGlite } = await import('@electric-sql/pglite');
  const { drizzle: drizzlePglite } = await import('drizzle-orm/pglite');
  const client = new PGlite(o.dataDir);
  await client.waitReady;
  return { db: drizzlePglite(client, { schema }) as unknown as ProjectionDb, kind: 'pglite', where: o.dataDir, close: () => client.close() };
}

/** Applies every migration not yet applied (idempotent). */
export async function migrate(d: Database): Promise<void> {
  if (d.kind === 'pg') {
    await migratePg(d.db as never, { migrationsFolder: MIGRATIONS_FOLDER });
  } else {
    const { migrate: migratePglite } = await import('drizzle-orm/pglite/migrator');
    await migratePglite(d.db as never, { migrationsFolder: MIGRATIONS_FOLDER });
  }
}

function redact(url: string): string {
  try {
    const u = new URL(url);
    if (u.password) u.password = '***';
    return u.toString();
  } catch {
    return 'postgres';
  }
}

/** Runs raw SQL and returns its rows (both drivers answer with `{ rows }`). */
export async function queryRows<T>(d: Database, query: SQL): Promise<T[]> {
  const res = (await d.db.execute(query)) as unknown as { rows: T[] };
  return res.rows;
}

/** The database's own message for a failed query (drizzle wraps it as `cause`). */
export function dbErrorMessage(e: unknown): string {
  const cause = (e as { cause?: unknown }).cause;
  return cause instanceof Error ? cause.message : e instanceof Error ? e.message : String(e);
}

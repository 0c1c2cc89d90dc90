/**
 * A private PostgreSQL cluster for tests that need to stop, kill or restart their database:
 * initdb into a temporary folder, then the server on a free loopback port. The machine's
 * own Postgres is never touched. As root, the server runs as the `postgres` user (initdb
 * refuses root).
 */
import { execFileSync, spawn, type ChildProcess } from 'node:child_process';
import { chownSync, existsSync, mkdtempSync, readdirSync, writeFileSync } from 'node:fs';
import { createServer } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import pg from 'pg';

function binDir(): string {
  const base = '/usr/lib/postgresql';
  const versions = existsSync(base)
    ? readdirSync(base)
        .filter((v) => existsSync(join(base, v, 'bin', 'initdb')))
        .sort((a, b) => Number(b) - Number(a))
    : [];
  if (!versions[0]) throw new Error('PostgreSQL server binaries not found under /usr/lib/postgresql (apt-get install postgresql)');
  return join(base, versions[0], 'bin');
}

/** A port free on the loopback now (for a server a test starts). */
export function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const s = createServer();
    s.once('error', reject);
    s.listen(0, '127.0.0.1', () => {
      const addr = s.address();
      s.close(() => resolve(typeof addr === 'object' && addr ? addr.port : 0));
    });
  });
}

export interface PrivatePostgres {
  readonly url: string;
  readonly port: number;
  /** Stops the server (fast shutdown) and waits for it to be gone. */
  stop(): Promise<void>;
  /** SIGKILLs the postmaster, as a crash would. */
  kill(): Promise<void>;
  start(): Promise<void>;
  /** Stops and removes everything. */
  destroy(): Promise<void>;
}

export interface PostgresOptions {
  /** Files written into the data folder before the server starts (certificates, keys), owned by the server. */
  readonly files?: Readonly<Record<string, string>>;
  /** Replaces pg_hba.conf. */
  readonly hba?: string;
  /** More `-c name=value` settings (`ssl=on`, …). */
  readonly settings?: Readonly<Record<string, string>>;
}

export async function startPostgres(opts: PostgresOptions = {}): Promise<PrivatePostgres> {
  const bin = binDir();
  const dir = mkdtempSync(join(tmpdir(), 'capstan-pg-'));
  const data = join(dir, 'data');
  const root = process.getuid?.() === 0;
  const ids = root ? { uid: Number(execFileSync('id', ['-u', 'postgres']).toString()), gid: Number(execFileSync('id', ['-g', 'postgres']).toString()) } : {};
  if (root) chownSync(dir, ids.uid as number, ids.gid as number);
  execFileSync(join(bin, 'initdb'), ['-D', data, '-U', 'postgres', '-A', 'trust', '--no-sync', '-E', 'UTF8'], { ...ids, stdio: 'ignore' });
  const files = { ...opts.files, ...(opts.hba ? { 'pg_hba.conf': opts.hba } : {}) };
  for (const [name, text] of Object.entries(files)) {
    writeFileSync(join(data, name), text, { mode: 0o600 });
    if (root) chownSync(join(data, name), ids.uid as number, ids.gid as number);
  }
  const settings = Object.entries(opts.settings ?? {}).flatMap(([k, v]) => ['-c', `${k}=${v}`]);
  const port = await freePort();
  const url = `postgres://postgres@127.0.0.1:${port}/postgres`;
  let child: ChildProcess | undefined;

  const waitReady = async () => {
    const deadline = Date.now() + 20_000;
    for (;;) {
      const c = new pg.Client({ connectionString: url });
      try {
        await c.connect();
        await c.query('select 1');
        await c.end();
        return;
      } catch {
        await c.end().catch(() => undefined);
        if (Date.now() > deadline) throw new Error(`private postgres on ${port} did not come up`);
        await new Promise((r) => setTimeout(r, 100));
      }
    }
  };
  const exited = () => new Promise<void>((r) => (!child || child.exitCode !== null || child.signalCode !== null ? r() : child.once('exit', () => r())));

  const start = async () => {
    child = spawn(
      join(bin, 'postgres'),
      ['-D', data, '-p', String(port), '-k', dir, '-c', 'listen_addresses=127.0.0.1', '-c', 'fsync=off', '-c', 'max_connections=200', ...settings],
      { ...ids, stdio: 'ignore' },
    );
    await waitReady();
  };
  await start();
  return {
    url,
    port,
    start,
    async stop() {
      child?.kill('SIGINT');
      await exited();
    },
    async kill() {
      child?.kill('SIGKILL');
      await exited();
      // Backends of a killed postmaster linger briefly; the next start waits them out.
      await new Promise((r) => setTimeout(r, 500));
    },
    async destroy() {
      child?.kill('SIGINT');
      await exited();
      execFileSync('rm', ['-rf', dir]);
    },
  };
}

/**
 * A fresh database on the machine's Postgres (or `CAPSTAN_TEST_PG`), dropped by `drop()`, or
 * at the end of its block when held with `await using`.
 */
export async function scratchDatabase(prefix: string): Promise<{ url: string; drop(): Promise<void> } & AsyncDisposable> {
  const admin = process.env['CAPSTAN_TEST_PG'] ?? 'postgres://postgres@127.0.0.1:5432/postgres';
  const name = `capstan_${prefix}_${Math.random().toString(36).slice(2, 10)}`;
  const c = new pg.Client({ connectionString: admin });
  await c.connect();
  await c.query(`create database ${name}`);
  await c.end();
  const u = new URL(admin);
  u.pathname = `/${name}`;
  const drop = async () => {
    const d = new pg.Client({ connectionString: admin });
    await d.connect();
    await d.query(`drop database if exists ${name} with (force)`);
    await d.end();
  };
  return { url: u.toString(), drop, [Symbol.asyncDispose]: drop };
}

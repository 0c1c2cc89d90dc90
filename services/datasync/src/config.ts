import { isAbsolute, resolve } from 'node:path';
import { ConfigError, type TenantId } from '@capstan/schemas';
import { envDatabaseUrl, envInt, envLogLevel, envNatsAuth, envNatsUrl, envString, envTenants, type Env, type NatsAuthConfig } from '@capstan/kit';
import type { LevelWithSilent } from 'pino';

export interface Config {
  readonly natsUrl: string;
  /** `NATS_CREDS` (the service's own credential) and TLS settings. */
  readonly nats: NatsAuthConfig;
  readonly logLevel: LevelWithSilent;
  /** Tenants whose data plane this service is (`CAPSTAN_TENANTS`); all by default. */
  readonly tenants: readonly TenantId[] | 'all';
  /**
   * `DATABASE_URL`: the data plane's own Postgres: specs, cursors, the state of each
   * pipeline and its staging tables (schema `capstan_datasync`), and audit rows.
   */
  readonly databaseUrl: string;
  /**
   * `DATASYNC_FILES_ROOT`: files destinations write below `<root>/<tenant>/`. Absolute when
   * set; `.capstan/datasync/files` under the working directory by default (the service runs
   * from its own install, not from a repository checkout).
   */
  readonly filesRoot: string;
  /** Rows fetched per round from a source's server-side cursor. */
  readonly fetchRows: number;
  /** Rows per destination batch when the destination names none. */
  readonly batchRows: number;
  /** How long a run holds its pipeline without a step (a run abandoned lets go after this). */
  readonly claimTtlMs: number;
  /** The staging of a run that ended without loading is dropped this long after its last step. */
  readonly sweepAfterMs: number;
  /** Steps run at once by this instance; more wait. */
  readonly concurrency: number;
  /** Connecting to a source or destination gives up after this long. */
  readonly connectTimeoutMs: number;
  readonly poolSize: number;
  /** How often new tenants are looked for. */
  readonly discoveryMs: number;
  readonly name: string;
}

/** Reads `DATASYNC_*`, `DATABASE_URL` and the shared keys. Pure; lists every problem at once. @throws ConfigError */
export function loadConfig(env: Env): Config {
  const problems: string[] = [];
  const filesRoot = envString(env, 'DATASYNC_FILES_ROOT', resolve('.capstan', 'datasync', 'files'));
  if (!isAbsolute(filesRoot)) problems.push(`DATASYNC_FILES_ROOT must be an absolute path (got ${JSON.stringify(filesRoot.slice(0, 200))})`);
  const config: Config = {
    natsUrl: envNatsUrl(env, problems),
    nats: envNatsAuth(env, problems),
    logLevel: envLogLevel(env, problems),
    tenants: envTenants(env, problems),
    databaseUrl: envDatabaseUrl(env, problems, 'the data plane Postgres holding specs, cursors and staging'),
    filesRoot,
    fetchRows: envInt(env, 'DATASYNC_FETCH_ROWS', 10_000, problems, 1, 1_000_000),
    batchRows: envInt(env, 'DATASYNC_BATCH_ROWS', 10_000, problems, 1, 1_000_000),
    claimTtlMs: envInt(env, 'DATASYNC_CLAIM_TTL_MS', 3_600_000, problems, 1000, 7 * 24 * 3_600_000),
    sweepAfterMs: envInt(env, 'DATASYNC_SWEEP_AFTER_MS', 3_600_000, problems, 1000, 30 * 24 * 3_600_000),
    concurrency: envInt(env, 'DATASYNC_CONCURRENCY', 4, problems, 1, 256),
    connectTimeoutMs: envInt(env, 'DATASYNC_CONNECT_TIMEOUT_MS', 10_000, problems, 100, 600_000),
    poolSize: envInt(env, 'DATASYNC_DB_POOL', 12, problems, 4, 400),
    discoveryMs: envInt(env, 'DATASYNC_DISCOVERY_MS', 2000, problems, 100, 3_600_000),
    name: envString(env, 'DATASYNC_NAME', `datasync-${process.pid}`),
  };
  // A step holds two connections at most (its own, and a batch being read); requests need one more.
  if (config.poolSize < 2 * config.concurrency + 2)
    problems.push(`DATASYNC_DB_POOL (${config.poolSize}) must be at least 2 × DATASYNC_CONCURRENCY + 2 (${2 * config.concurrency + 2})`);
  if (problems.length > 0) throw new ConfigError(problems);
  return Object.freeze(config);
}

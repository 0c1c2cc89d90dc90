import { ConfigError, type TenantId } from '@capstan/schemas';
import { parseAllowList, type AllowEntry, envInt, envLogLevel, envDatabaseUrl, envNatsAuth, envNatsUrl, envString, envTenants, type Env, type NatsAuthConfig } from '@capstan/kit';
import type { LevelWithSilent } from 'pino';

export interface Config {
  readonly natsUrl: string;
  /** `NATS_CREDS` (the lease service's credential) and TLS. */
  readonly nats: NatsAuthConfig;
  readonly logLevel: LevelWithSilent;
  /**
   * Tenants served (`CAPSTAN_TENANTS`): their requests answered, their run streams watched
   * for ended runs. All by default, tenants provisioned later included.
   */
  readonly tenants: readonly TenantId[] | 'all';
  /** `postgres://…` of the database holding secrets, leases and the audit log. */
  readonly databaseUrl: string;
  /**
   * The master key (`SECRETS_MASTER_KEY`, base64 of 32 bytes) that wraps every tenant's data
   * key. Not enumerable: printing or logging the config never shows it.
   */
  readonly masterKey: Buffer;
  /** Lease lifetime when the request names none. */
  readonly defaultTtlMs: number;
  /** Longest lease lifetime granted, whatever is asked. */
  readonly maxTtlMs: number;
  /**
   * How long an issued lease waits for its sandbox to claim it (the TTL counts from the
   * claim): the step's wait for a sandbox slot and a cold start. At least the lease's TTL.
   */
  readonly claimWindowMs: number;
  /** Refresh window of a refreshable secret that names none. */
  readonly refreshWindowMs: number;
  /**
   * Token endpoints a credential refresher may call on a private, loopback or otherwise
   * refused address (`SECRETS_REFRESH_ALLOW`: addresses and CIDR blocks); an address named
   * here may also be plain http. Empty: public https endpoints only.
   */
  readonly refreshAllow: readonly AllowEntry[];
  readonly poolSize: number;
  /** How often new tenants are looked for (to watch their run streams). */
  readonly discoveryMs: number;
  readonly name: string;
}

/** Reads `SECRETS_*`, `DATABASE_URL` and the shared keys. Pure; lists every problem at once. @throws ConfigError */
export function loadConfig(env: Env): Config {
  const problems: string[] = [];
  const defaultTtlMs = envInt(env, 'SECRETS_DEFAULT_TTL_MS', 30_000, problems, 100, 24 * 3_600_000);
  const maxTtlMs = envInt(env, 'SECRETS_MAX_TTL_MS', 15 * 60_000, problems, 100, 24 * 3_600_000);
  if (maxTtlMs < defaultTtlMs) problems.push('SECRETS_MAX_TTL_MS must be >= SECRETS_DEFAULT_TTL_MS');
  const config = {
    natsUrl: envNatsUrl(env, problems),
    nats: envNatsAuth(env, problems),
    logLevel: envLogLevel(env, problems),
    tenants: envTenants(env, problems),
    databaseUrl: envDatabaseUrl(env, problems),
    defaultTtlMs,
    maxTtlMs,
    claimWindowMs: envInt(env, 'SECRETS_CLAIM_WINDOW_MS', 10 * 60_000, problems, 100, 24 * 3_600_000),
    refreshWindowMs: envInt(env, 'SECRETS_REFRESH_WINDOW_MS', 60_000, problems, 0, 30 * 24 * 3_600_000),
    refreshAllow: parseAllowList(envString(env, 'SECRETS_REFRESH_ALLOW', ''), problems, 'SECRETS_REFRESH_ALLOW'),
    poolSize: envInt(env, 'SECRETS_DB_POOL', 8, problems, 1, 200),
    discoveryMs: envInt(env, 'SECRETS_DISCOVERY_MS', 2000, problems, 100, 3_600_000),
    name: envString(env, 'SECRETS_NAME', `secrets-lease-${process.pid}`),
  };
  const masterKey = masterKeyOf(env, problems);
  if (problems.length > 0) throw new ConfigError(problems);
  Object.defineProperty(config, 'masterKey', { value: masterKey, enumerable: false });
  return Object.freeze(config as typeof config & { masterKey: Buffer });
}

function masterKeyOf(env: Env, problems: string[]): Buffer {
  const raw = env['SECRETS_MASTER_KEY'];
  if (!raw) {
    problems.push('SECRETS_MASTER_KEY is required: base64 of 32 random bytes (for example `openssl rand -base64 32`)');
    return Buffer.alloc(0);
  }
  // Never echo the value, not even cut: only its shape.
  const trimmed = raw.trim();
  const key = /^[A-Za-z0-9+/]+={0,2}$/.test(trimmed) ? Buffer.from(trimmed, 'base64') : Buffer.alloc(0);
  if (key.length !== 32) {
    problems.push(`SECRETS_MASTER_KEY must be base64 of exactly 32 bytes (got ${key.length === 0 ? 'something that is not base64' : `${key.length} bytes`})`);
    return Buffer.alloc(0);
  }
  return key;
}

import { ConfigError, type TenantId } from '@capstan/schemas';
import { envInt, envLogLevel, envDatabaseUrl, envNatsAuth, envNatsUrl, envString, envTenants, parseFailpoints, type Env, type NatsAuthConfig } from '@capstan/kit';
import type { LevelWithSilent } from 'pino';

export interface Config {
  readonly natsUrl: string;
  /** `NATS_CREDS` (the projector's credential) and TLS. */
  readonly nats: NatsAuthConfig;
  readonly logLevel: LevelWithSilent;
  /** Tenants to project; `all` follows every provisioned tenant, new ones included. */
  readonly tenants: readonly TenantId[] | 'all';
  /** `postgres://…` of the projections database. */
  readonly databaseUrl: string;
  /** Run events applied per transaction, at most. */
  readonly batch: number;
  /** How often new tenants are looked for. */
  readonly discoveryMs: number;
  /**
   * What to do when a tenant's run stream is not the one the projections follow (created
   * again, or ending before the checkpoint): `refuse` (the default) marks the tenant
   * `projection_out_of_sync`, which every reader refuses, until an operator rebuilds;
   * `rebuild` rebuilds from the stream as it is (`capstan dev`, where the store is disposable).
   */
  readonly onStreamChange: 'refuse' | 'rebuild';
  /** How often each tenant's run stream is compared with the one the projections follow. */
  readonly syncCheckMs: number;
  readonly name: string;
}

/** Reads `PROJECTOR_*`, `DATABASE_URL` and the shared keys. Pure; lists every problem at once. @throws ConfigError */
export function loadConfig(env: Env): Config {
  const problems: string[] = [];
  const config: Config = {
    natsUrl: envNatsUrl(env, problems),
    nats: envNatsAuth(env, problems),
    logLevel: envLogLevel(env, problems),
    tenants: envTenants(env, problems),
    databaseUrl: envDatabaseUrl(env, problems),
    batch: envInt(env, 'PROJECTOR_BATCH', 256, problems, 1, 5000),
    discoveryMs: envInt(env, 'PROJECTOR_DISCOVERY_MS', 2000, problems, 100, 3_600_000),
    onStreamChange: onStreamChange(env, problems),
    syncCheckMs: envInt(env, 'PROJECTOR_SYNC_CHECK_MS', 5000, problems, 100, 3_600_000),
    name: envString(env, 'PROJECTOR_NAME', `projector-${process.pid}`),
  };
  // Checked here so a mistyped failpoint fails the start, not silently the test.
  parseFailpoints(env['CAPSTAN_FAILPOINTS'], problems);
  if (problems.length > 0) throw new ConfigError(problems);
  return Object.freeze(config);
}

function onStreamChange(env: Env, problems: string[]): Config['onStreamChange'] {
  const v = envString(env, 'PROJECTOR_ON_STREAM_CHANGE', 'refuse');
  if (v === 'refuse' || v === 'rebuild') return v;
  problems.push(`PROJECTOR_ON_STREAM_CHANGE must be refuse or rebuild, got ${JSON.stringify(v.slice(0, 64))}`);
  return 'refuse';
}

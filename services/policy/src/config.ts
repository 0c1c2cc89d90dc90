import { ConfigError, type TenantId } from '@capstan/schemas';
import { envInt, envLogLevel, envNatsAuth, envNatsUrl, envString, envTenants, type Env, type NatsAuthConfig } from '@capstan/kit';
import type { LevelWithSilent } from 'pino';

export interface Config {
  readonly natsUrl: string;
  /** `NATS_CREDS` (the policy service's credential) and TLS. */
  readonly nats: NatsAuthConfig;
  /** How often new tenants are looked for. */
  readonly discoveryMs: number;
  readonly logLevel: LevelWithSilent;
  /** Tenants this instance answers for (`CAPSTAN_TENANTS`); all by default. */
  readonly tenants: readonly TenantId[] | 'all';
  /** Compiled policy sets kept in memory (by text digest); older ones are compiled again when asked. */
  readonly cacheSize: number;
  /** The NATS connection's name. */
  readonly name: string;
}

/** Reads `POLICY_*` and the shared keys. Pure; lists every problem at once. @throws ConfigError */
export function loadConfig(env: Env): Config {
  const problems: string[] = [];
  const config: Config = {
    natsUrl: envNatsUrl(env, problems),
    nats: envNatsAuth(env, problems),
    discoveryMs: envInt(env, 'POLICY_DISCOVERY_MS', 2000, problems, 100, 3_600_000),
    logLevel: envLogLevel(env, problems),
    tenants: envTenants(env, problems),
    cacheSize: envInt(env, 'POLICY_CACHE_SIZE', 256, problems, 1, 100_000),
    name: envString(env, 'POLICY_NAME', 'policy'),
  };
  if (problems.length > 0) throw new ConfigError(problems);
  return Object.freeze(config);
}

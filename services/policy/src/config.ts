import { ConfigError, type TenantId } from '@capstan/schemas';
import { envInt, envLogLevel, envNatsUrl, envString, envTenants, type Env } from '@capstan/kit';
import type { LevelWithSilent } from 'pino';

export interface Config {
  readonly natsUrl: string;
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
    logLevel: envLogLevel(env, problems),
    tenants: envTenants(env, problems),
    cacheSize: envInt(env, 'POLICY_CACHE_SIZE', 256, problems, 1, 100_000),
    name: envString(env, 'POLICY_NAME', 'policy'),
  };
  if (problems.length > 0) throw new ConfigError(problems);
  return Object.freeze(config);
}

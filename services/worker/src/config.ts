import { ConfigError, parseToken, type TenantId } from '@capstan/schemas';
import { envInt, envLogLevel, envNatsUrl, envString, envTenants, type Env } from '@capstan/kit';
import type { LevelWithSilent } from 'pino';

export interface Config {
  readonly natsUrl: string;
  readonly logLevel: LevelWithSilent;
  readonly tenants: readonly TenantId[] | 'all';
  /** Capability labels: the pools this worker pulls work from. */
  readonly pools: readonly string[];
  /** Module exporting `handlers` (name → function); the demo handlers when empty. */
  readonly handlersModule: string;
  /** Steps run at once, per tenant and pool. */
  readonly concurrency: number;
  /** A step not heard from for this long is handed to another worker as lost. */
  readonly ackWaitMs: number;
  /** Steps still running after this long are recorded as started; quicker ones only report their result. */
  readonly startedAfterMs: number;
  readonly discoveryMs: number;
  readonly id: string;
}

/** Reads `WORKER_*` and the shared keys. Pure; lists every problem at once. @throws ConfigError */
export function loadConfig(env: Env): Config {
  const problems: string[] = [];
  const pools: string[] = [];
  for (const p of envString(env, 'WORKER_POOLS', 'default').split(',').map((s) => s.trim()).filter(Boolean)) {
    try {
      pools.push(parseToken('pool', p));
    } catch (e) {
      problems.push(`WORKER_POOLS: ${(e as Error).message}`);
    }
  }
  const config: Config = {
    natsUrl: envNatsUrl(env, problems),
    logLevel: envLogLevel(env, problems),
    tenants: envTenants(env, problems),
    pools,
    handlersModule: envString(env, 'CAPSTAN_HANDLERS', ''),
    concurrency: envInt(env, 'WORKER_CONCURRENCY', 64, problems, 1, 10_000),
    ackWaitMs: envInt(env, 'WORKER_ACK_WAIT_MS', 30_000, problems, 1000, 3_600_000),
    startedAfterMs: envInt(env, 'WORKER_STARTED_AFTER_MS', 250, problems, 0, 3_600_000),
    discoveryMs: envInt(env, 'WORKER_DISCOVERY_MS', 2000, problems, 100, 3_600_000),
    id: envString(env, 'WORKER_ID', `worker-${process.pid}`),
  };
  if (pools.length === 0) problems.push('WORKER_POOLS must name at least one pool');
  if (problems.length > 0) throw new ConfigError(problems);
  return Object.freeze(config);
}

import { ConfigError, type TenantId } from '@capstan/schemas';
import { envInt, envLogLevel, envNatsUrl, envString, envTenants, type Env } from '@capstan/kit';
import type { LevelWithSilent } from 'pino';

export interface Config {
  readonly natsUrl: string;
  readonly logLevel: LevelWithSilent;
  /** Tenants to serve; `all` follows every provisioned tenant, new ones included. */
  readonly tenants: readonly TenantId[] | 'all';
  /** Module exporting `workflows` (WorkflowDefinition[]); the demo workflows when empty. */
  readonly workflowsModule: string;
  /** Runs kept decided in memory; 0 replays every run from its stream on every command. */
  readonly cacheSize: number;
  /** Commands decided together and appended as one atomic batch per tenant. */
  readonly maxBatch: number;
  /** Atomic batches in flight at once per tenant (over disjoint runs). */
  readonly maxTicks: number;
  /** Redelivery delay for commands of a crashed orchestrator. */
  readonly ackWaitMs: number;
  /** How often new tenants are looked for. */
  readonly discoveryMs: number;
  readonly name: string;
}

/** Reads `ORCH_*` and the shared keys. Pure; lists every problem at once. @throws ConfigError */
export function loadConfig(env: Env): Config {
  const problems: string[] = [];
  const config: Config = {
    natsUrl: envNatsUrl(env, problems),
    logLevel: envLogLevel(env, problems),
    tenants: envTenants(env, problems),
    workflowsModule: envString(env, 'CAPSTAN_WORKFLOWS', ''),
    cacheSize: envInt(env, 'ORCH_CACHE_SIZE', 10_000, problems, 0, 10_000_000),
    maxBatch: envInt(env, 'ORCH_MAX_BATCH', 256, problems, 1, 1000),
    maxTicks: envInt(env, 'ORCH_MAX_TICKS', 2, problems, 1, 64),
    ackWaitMs: envInt(env, 'ORCH_ACK_WAIT_MS', 10_000, problems, 500, 3_600_000),
    discoveryMs: envInt(env, 'ORCH_DISCOVERY_MS', 2000, problems, 100, 3_600_000),
    name: envString(env, 'ORCH_NAME', `orchestrator-${process.pid}`),
  };
  if (problems.length > 0) throw new ConfigError(problems);
  return Object.freeze(config);
}

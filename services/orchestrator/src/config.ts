import { ConfigError, type TenantId } from '@capstan/schemas';
import { envInt, envLogLevel, envNatsAuth, envNatsUrl, envString, envTenants, type Batching, type Env, type NatsAuthConfig } from '@capstan/kit';
import type { LevelWithSilent } from 'pino';

export interface Config {
  readonly natsUrl: string;
  /** `NATS_CREDS` (the orchestrator's credential) and TLS. */
  readonly nats: NatsAuthConfig;
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
  /** How often new tenants are looked for. */
  readonly discoveryMs: number;
  readonly name: string;
  /**
   * `on`: sandboxed steps wait for the tenant's policy (default deny). `off`: every question
   * is recorded as allowed with version 0 ("policy-checks-off"); for development only.
   */
  readonly policy: 'on' | 'off';
  /** How long a needs-approval step waits for a person before the run fails. */
  readonly approvalTtlMs: number;
  readonly policyTimeoutMs: number;
  /** A partition lease not renewed for this long is free for another instance. */
  readonly leaseTtlMs: number;
  /** How often leases are renewed and the partitions rebalanced; an owner stops deciding this long before its lease expires. */
  readonly leaseRenewMs: number;
  /**
   * How work items and timers go out: `pipelined` (default; no atomic batch, whose commit the
   * server syncs to disk whatever its sync setting) or `atomic` (fewer syncs when the server
   * syncs every publish anyway, `sync_interval: always`).
   */
  readonly effectBatches: Batching;
}

/** Reads `ORCH_*` and the shared keys. Pure; lists every problem at once. @throws ConfigError */
export function loadConfig(env: Env): Config {
  const problems: string[] = [];
  const config: Config = {
    natsUrl: envNatsUrl(env, problems),
    nats: envNatsAuth(env, problems),
    logLevel: envLogLevel(env, problems),
    tenants: envTenants(env, problems),
    workflowsModule: envString(env, 'CAPSTAN_WORKFLOWS', ''),
    cacheSize: envInt(env, 'ORCH_CACHE_SIZE', 10_000, problems, 0, 10_000_000),
    maxBatch: envInt(env, 'ORCH_MAX_BATCH', 256, problems, 1, 1000),
    maxTicks: envInt(env, 'ORCH_MAX_TICKS', 2, problems, 1, 64),
    discoveryMs: envInt(env, 'ORCH_DISCOVERY_MS', 2000, problems, 100, 3_600_000),
    name: envString(env, 'ORCH_NAME', `orchestrator-${process.pid}`),
    policy: envString(env, 'ORCH_POLICY', 'on') === 'off' ? 'off' : 'on',
    approvalTtlMs: envInt(env, 'ORCH_APPROVAL_TTL_MS', 24 * 60 * 60 * 1000, problems, 1000, 30 * 24 * 60 * 60 * 1000),
    policyTimeoutMs: envInt(env, 'ORCH_POLICY_TIMEOUT_MS', 2000, problems, 50, 60_000),
    leaseTtlMs: envInt(env, 'ORCH_LEASE_TTL_MS', 3000, problems, 300, 600_000),
    leaseRenewMs: envInt(env, 'ORCH_LEASE_RENEW_MS', 500, problems, 50, 60_000),
    effectBatches: envString(env, 'ORCH_EFFECT_BATCHES', 'pipelined') === 'atomic' ? 'atomic' : 'pipelined',
  };
  const batches = envString(env, 'ORCH_EFFECT_BATCHES', 'pipelined');
  if (batches !== 'pipelined' && batches !== 'atomic') problems.push(`ORCH_EFFECT_BATCHES must be pipelined or atomic, got ${JSON.stringify(batches)}`);
  if (config.leaseRenewMs * 3 > config.leaseTtlMs)
    problems.push(`ORCH_LEASE_RENEW_MS (${config.leaseRenewMs}) must be at most a third of ORCH_LEASE_TTL_MS (${config.leaseTtlMs})`);
  const policy = envString(env, 'ORCH_POLICY', 'on');
  if (policy !== 'on' && policy !== 'off') problems.push(`ORCH_POLICY must be on or off, got ${JSON.stringify(policy)}`);
  if (problems.length > 0) throw new ConfigError(problems);
  return Object.freeze(config);
}

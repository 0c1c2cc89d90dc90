import { ConfigError, parseToken, WORKER_ID_PATTERN, type TenantId } from '@capstan/schemas';
import { envInt, envLogLevel, envNatsAuth, envNatsUrl, envPostgresUrl, envString, envTenants, type Batching, type Env, type NatsAuthConfig } from '@capstan/kit';
import type { LevelWithSilent } from 'pino';

/**
 * Whether a worker no admin has approved may pull work: `required` (production) waits for
 * an approval; `auto` (`capstan dev`, tests) records its own approval on first start.
 */
export const AdmissionMode = { Required: 'required', Auto: 'auto' } as const;
export type AdmissionMode = (typeof AdmissionMode)[keyof typeof AdmissionMode];

export interface Config {
  readonly natsUrl: string;
  /**
   * `NATS_CREDS`: the worker's credentials, one per tenant it serves (comma-separated), each
   * issued by `capstan creds issue --role worker --pool …`. They name the tenant, the pools
   * and the worker's id; the server lets the worker pull those pools' work and nothing else.
   */
  readonly nats: NatsAuthConfig;
  readonly logLevel: LevelWithSilent;
  readonly tenants: readonly TenantId[] | 'all';
  /**
   * `WORKER_POOLS`: pools to pull, a subset of those its credential allows; empty (default):
   * every pool of the credential.
   */
  readonly pools: readonly string[];
  /** Module exporting `handlers` (name → function); the demo handlers when empty. */
  readonly handlersModule: string;
  /** Steps run at once, per tenant and pool. */
  readonly concurrency: number;
  /** How results finishing together go out: `pipelined` (default) or `atomic` batches (see kit's Batching). */
  readonly resultBatches: Batching;
  /** Steps still running after this long are recorded as started; quicker ones only report their result. */
  readonly startedAfterMs: number;
  readonly discoveryMs: number;
  /** Silence from the sandbox service after which a sandboxed attempt is reported lost. */
  readonly sandboxStallMs: number;
  /** Silence from the datasync service after which a pipeline step's attempt is reported lost. */
  readonly datasyncStallMs: number;
  /** `on`: leases for sandboxed steps' secrets come from the secrets-lease service. */
  readonly leases: boolean;
  /** How long a mode-3b credential request waits for a person's approval. */
  readonly approvalTtlMs: number;
  /** `WORKER_ID`; empty (default): the credential's name, which its admission subject is named after. */
  readonly id: string;
  /** `WORKER_ADMISSION`: `required` (default) or `auto`. */
  readonly admission: AdmissionMode;
  /**
   * `AUDIT_DATABASE_URL`: the Postgres holding `audit_log`, where external writes are
   * announced before they happen. Empty: not configured, and every external write is refused.
   */
  readonly auditDatabaseUrl: string;
}

/** Reads `WORKER_*` and the shared keys. Pure; lists every problem at once. @throws ConfigError */
export function loadConfig(env: Env): Config {
  const problems: string[] = [];
  const pools: string[] = [];
  for (const p of envString(env, 'WORKER_POOLS', '')
    .split(',')
    .map((s) => s.trim())
    .filter(Boolean)) {
    try {
      pools.push(parseToken('pool', p));
    } catch (e) {
      problems.push(`WORKER_POOLS: ${(e as Error).message}`);
    }
  }
  const config: Config = {
    natsUrl: envNatsUrl(env, problems),
    nats: envNatsAuth(env, problems, { many: true }),
    logLevel: envLogLevel(env, problems),
    tenants: envTenants(env, problems),
    pools,
    handlersModule: envString(env, 'CAPSTAN_HANDLERS', ''),
    concurrency: envInt(env, 'WORKER_CONCURRENCY', 64, problems, 1, 10_000),
    resultBatches: envString(env, 'WORKER_RESULT_BATCHES', 'pipelined') === 'atomic' ? 'atomic' : 'pipelined',
    startedAfterMs: envInt(env, 'WORKER_STARTED_AFTER_MS', 250, problems, 0, 3_600_000),
    discoveryMs: envInt(env, 'WORKER_DISCOVERY_MS', 2000, problems, 100, 3_600_000),
    sandboxStallMs: envInt(env, 'WORKER_SANDBOX_STALL_MS', 5000, problems, 200, 600_000),
    datasyncStallMs: envInt(env, 'WORKER_DATASYNC_STALL_MS', 10_000, problems, 200, 600_000),
    leases: envString(env, 'WORKER_LEASES', 'on') !== 'off',
    approvalTtlMs: envInt(env, 'WORKER_APPROVAL_TTL_MS', 15 * 60 * 1000, problems, 1000, 24 * 60 * 60 * 1000),
    id: envString(env, 'WORKER_ID', ''),
    admission: envString(env, 'WORKER_ADMISSION', AdmissionMode.Required) as AdmissionMode,
    auditDatabaseUrl: envPostgresUrl(env, 'AUDIT_DATABASE_URL', problems),
  };
  if (config.id !== '' && !WORKER_ID_PATTERN.test(config.id))
    problems.push(`WORKER_ID must match ${WORKER_ID_PATTERN.source} (it names the worker's admission subject); got ${JSON.stringify(config.id.slice(0, 80))}`);
  if (!Object.values(AdmissionMode).includes(config.admission)) {
    problems.push(`WORKER_ADMISSION must be ${AdmissionMode.Required} or ${AdmissionMode.Auto} (got ${JSON.stringify(config.admission.slice(0, 40))})`);
  }
  const batches = envString(env, 'WORKER_RESULT_BATCHES', 'pipelined');
  if (batches !== 'pipelined' && batches !== 'atomic') problems.push(`WORKER_RESULT_BATCHES must be pipelined or atomic, got ${JSON.stringify(batches)}`);
  const leases = envString(env, 'WORKER_LEASES', 'on');
  if (leases !== 'on' && leases !== 'off') problems.push(`WORKER_LEASES must be on or off, got ${JSON.stringify(leases)}`);
  if (problems.length > 0) throw new ConfigError(problems);
  return Object.freeze(config);
}

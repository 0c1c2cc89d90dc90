import { ConfigError, MAX_VERIFY_BODY_BYTES, type TenantId } from '@capstan/schemas';
import { envInt, envLogLevel, envNatsAuth, envNatsUrl, envString, envTenants, type Env, type NatsAuthConfig } from '@capstan/kit';
import type { LevelWithSilent } from 'pino';

export interface Config {
  readonly natsUrl: string;
  /** `NATS_CREDS` (ingress's own service credential) and TLS. */
  readonly nats: NatsAuthConfig;
  readonly logLevel: LevelWithSilent;
  /** Tenants whose routes this instance serves (`CAPSTAN_TENANTS`); all by default. */
  readonly tenants: readonly TenantId[] | 'all';
  readonly host: string;
  /** 0 picks a free port. */
  readonly port: number;
  /** Bodies larger than this are refused (413) before anything is hashed. */
  readonly maxBodyBytes: number;
  /** A delivery's timestamp may be this far from the clock, either way (Standard Webhooks: 5 min). */
  readonly toleranceSeconds: number;
  /** Accepted deliveries per tenant and second, and the burst above it (a token bucket). */
  readonly ratePerSecond: number;
  readonly burst: number;
  /** How long to wait for the secrets-lease service to check a signature. */
  readonly verifyTimeoutMs: number;
  /** How often newly provisioned tenants are looked for. */
  readonly discoveryMs: number;
  readonly name: string;
}

/** Reads `INGRESS_*` and the shared keys. Pure; lists every problem at once. @throws ConfigError */
export function loadConfig(env: Env): Config {
  const problems: string[] = [];
  const config: Config = {
    natsUrl: envNatsUrl(env, problems),
    nats: envNatsAuth(env, problems),
    logLevel: envLogLevel(env, problems),
    tenants: envTenants(env, problems),
    host: envString(env, 'INGRESS_HOST', '127.0.0.1'),
    port: envInt(env, 'INGRESS_PORT', 4336, problems, 0, 65535),
    maxBodyBytes: envInt(env, 'INGRESS_MAX_BODY_BYTES', 256 * 1024, problems, 1024, MAX_VERIFY_BODY_BYTES),
    // At most 300 s: accepted ids are remembered for 900 s, which must cover twice the tolerance.
    toleranceSeconds: envInt(env, 'INGRESS_TOLERANCE_SECONDS', 300, problems, 1, 300),
    ratePerSecond: envInt(env, 'INGRESS_RATE', 500, problems, 1, 1_000_000),
    burst: envInt(env, 'INGRESS_BURST', 1000, problems, 1, 10_000_000),
    verifyTimeoutMs: envInt(env, 'INGRESS_VERIFY_TIMEOUT_MS', 3000, problems, 100, 60_000),
    discoveryMs: envInt(env, 'INGRESS_DISCOVERY_MS', 2000, problems, 100, 3_600_000),
    name: envString(env, 'INGRESS_NAME', 'ingress'),
  };
  if (config.burst < config.ratePerSecond) problems.push(`INGRESS_BURST (${config.burst}) must be at least INGRESS_RATE (${config.ratePerSecond})`);
  if (problems.length > 0) throw new ConfigError(problems);
  return Object.freeze(config);
}

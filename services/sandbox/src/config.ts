import { hostname } from 'node:os';
import { join, resolve } from 'node:path';
import { ConfigError, type TenantId } from '@capstan/schemas';
import { envInt, envLogLevel, envNatsAuth, envNatsUrl, envPostgresUrl, envString, envTenants, type Env, type NatsAuthConfig } from '@capstan/kit';
import type { LevelWithSilent } from 'pino';
import { DEFAULT_LIMITS, type SandboxLimits, type SandboxRuntime } from './backend.js';
import { parseAllowList, parseDnsServers, type EgressRules } from './egress.js';
import type { IdentityReuse } from './pool.js';

export interface Config {
  readonly natsUrl: string;
  /** `NATS_CREDS` (the sandbox service's credential) and TLS. */
  readonly nats: NatsAuthConfig;
  /** How often new tenants are looked for. */
  readonly discoveryMs: number;
  readonly logLevel: LevelWithSilent;
  /** Tenants this node runs sandboxes for (`CAPSTAN_TENANTS`); all by default. */
  readonly tenants: readonly TenantId[] | 'all';
  /** `docker` (default) or `none` (every sandboxed step fails with `sandbox_unavailable`). */
  readonly backend: 'docker' | 'none';
  /**
   * `runsc` (gVisor) or `runc`. Unset (`auto`): gVisor where the engine has it registered
   * and it starts a sandbox, runc otherwise, with a warning that says why. Set explicitly,
   * it is required: a node told `runsc` that cannot use it runs no sandboxes at all.
   */
  readonly runtime: SandboxRuntime | 'auto';
  /** The engine's socket. */
  readonly dockerSocket: string;
  /**
   * This node's name: containers carry it, and on start the service removes every container
   * of its node left by an earlier instance. One sandbox service per node name.
   */
  readonly node: string;
  /** Steps run at once; more wait their turn (with beats, so their workers do not give up). */
  readonly concurrency: number;
  /** Fresh (never used) sandboxes kept ready per image. */
  readonly poolMin: number;
  /** Used sandboxes kept idle per pool key (tenant, mode, image, identity scope). */
  readonly poolMax: number;
  readonly maxUses: number;
  /** Used sandboxes idle this long are destroyed. */
  readonly idleMs: number;
  /** Modes 2–3: reuse a sandbox that held an identity never (default) or for the same identity scope only. */
  readonly identityReuse: IdentityReuse;
  /** stdout + stderr bytes an attempt may write; the step is killed there (`sandbox_output_limit`). */
  readonly maxOutputBytes: number;
  readonly egress: EgressRules;
  /** The Postgres holding `audit_log`: every egress connection is recorded there before it opens. */
  readonly auditDatabaseUrl: string;
  readonly limits: SandboxLimits;
  /** Images steps may name besides the built-in one (comma-separated refs). */
  readonly images: readonly string[];
  /** Where artifacts and logs are written (`<dir>/<tenant>/<run>/<step>/<attempt>/`). */
  readonly artifactsDir: string;
  /** Where the sandbox image is assembled (root filesystem, busybox, apt and digest caches). */
  readonly imageDir: string;
  readonly maxArtifactBytes: number;
  /** Dev/test secrets: a JSON file `{ tenant: { KEY: value } }`. Empty: leases from the secrets-lease service. */
  readonly secretsFile: string;
  /** Beats on a running step's reply subject, so its worker knows the service is alive. */
  readonly beatMs: number;
}

const MIB = 1024 * 1024;

/** Reads `SANDBOX_*` and the shared keys. Pure; lists every problem at once. @throws ConfigError */
export function loadConfig(env: Env): Config {
  const problems: string[] = [];
  const backend = envString(env, 'SANDBOX_BACKEND', 'docker');
  if (backend !== 'docker' && backend !== 'none') problems.push(`SANDBOX_BACKEND must be docker or none, got ${JSON.stringify(backend)}`);
  const node = envString(
    env,
    'SANDBOX_NODE',
    hostname()
      .toLowerCase()
      .replace(/[^a-z0-9-]/g, '-')
      .slice(0, 32) || 'node',
  );
  if (!/^[a-z0-9][a-z0-9-]{0,31}$/.test(node)) problems.push('SANDBOX_NODE must match ^[a-z0-9][a-z0-9-]{0,31}$');
  const runtime = envString(env, 'SANDBOX_RUNTIME', 'auto');
  if (!['auto', 'runc', 'runsc'].includes(runtime)) problems.push(`SANDBOX_RUNTIME must be runsc, runc or auto, got ${JSON.stringify(runtime.slice(0, 40))}`);
  const identityReuse = envString(env, 'SANDBOX_IDENTITY_REUSE', 'never');
  if (identityReuse !== 'never' && identityReuse !== 'scope') problems.push(`SANDBOX_IDENTITY_REUSE must be never or scope, got ${JSON.stringify(identityReuse.slice(0, 40))}`);
  const poolMin = envInt(env, 'SANDBOX_POOL_MIN', 2, problems, 0, 256);
  const poolMax = envInt(env, 'SANDBOX_POOL_MAX', 8, problems, 0, 1024);
  if (poolMax < poolMin) problems.push('SANDBOX_POOL_MAX must be >= SANDBOX_POOL_MIN');
  const config: Config = {
    natsUrl: envNatsUrl(env, problems),
    nats: envNatsAuth(env, problems),
    discoveryMs: envInt(env, 'SANDBOX_DISCOVERY_MS', 2000, problems, 100, 3_600_000),
    logLevel: envLogLevel(env, problems),
    tenants: envTenants(env, problems),
    backend: backend === 'none' ? 'none' : 'docker',
    runtime: runtime === 'runc' || runtime === 'runsc' ? runtime : 'auto',
    dockerSocket: dockerSocket(env, problems),
    node,
    concurrency: envInt(env, 'SANDBOX_CONCURRENCY', 8, problems, 1, 1024),
    poolMin,
    poolMax,
    maxUses: envInt(env, 'SANDBOX_MAX_USES', 50, problems, 1, 1_000_000),
    idleMs: envInt(env, 'SANDBOX_IDLE_MS', 5 * 60_000, problems, 1000, 24 * 3_600_000),
    identityReuse: identityReuse === 'scope' ? 'scope' : 'never',
    maxOutputBytes: envInt(env, 'SANDBOX_MAX_OUTPUT_MB', 64, problems, 1, 65_536) * MIB,
    egress: {
      allow: parseAllowList(envString(env, 'SANDBOX_EGRESS_ALLOW', ''), problems),
      dns: parseDnsServers(envString(env, 'SANDBOX_EGRESS_DNS', ''), problems),
      maxBytes: envInt(env, 'SANDBOX_EGRESS_MAX_MB', 256, problems, 1, 1_048_576) * MIB,
      maxConnections: envInt(env, 'SANDBOX_EGRESS_MAX_CONNS', 32, problems, 1, 4096),
      connectTimeoutMs: envInt(env, 'SANDBOX_EGRESS_CONNECT_MS', 10_000, problems, 100, 600_000),
    },
    auditDatabaseUrl: envPostgresUrl(env, 'AUDIT_DATABASE_URL', problems),
    limits: {
      memoryBytes: envInt(env, 'SANDBOX_MEMORY_MB', DEFAULT_LIMITS.memoryBytes / MIB, problems, 16, 65_536) * MIB,
      pids: envInt(env, 'SANDBOX_PIDS', DEFAULT_LIMITS.pids, problems, 8, 65_536),
      nanoCpus: Math.round(envInt(env, 'SANDBOX_CPU_MILLIS', DEFAULT_LIMITS.nanoCpus / 1_000_000, problems, 100, 64_000) * 1_000_000),
      workspaceBytes: envInt(env, 'SANDBOX_WORKSPACE_MB', DEFAULT_LIMITS.workspaceBytes / MIB, problems, 1, 65_536) * MIB,
      tmpBytes: envInt(env, 'SANDBOX_TMP_MB', DEFAULT_LIMITS.tmpBytes / MIB, problems, 1, 65_536) * MIB,
    },
    images: envString(env, 'SANDBOX_IMAGES', '')
      .split(',')
      .map((s) => s.trim())
      .filter(Boolean),
    // State lives under the working directory unless set: the service runs from its own
    // install, never from a repository checkout.
    artifactsDir: resolve(envString(env, 'SANDBOX_ARTIFACTS_DIR', join('.capstan', 'artifacts'))),
    imageDir: resolve(envString(env, 'SANDBOX_IMAGE_DIR', join('.capstan', 'sandbox'))),
    maxArtifactBytes: envInt(env, 'SANDBOX_MAX_ARTIFACT_MB', 64, problems, 0, 65_536) * MIB,
    secretsFile: envString(env, 'SANDBOX_SECRETS_FILE', ''),
    beatMs: envInt(env, 'SANDBOX_BEAT_MS', 1000, problems, 50, 60_000),
  };
  if (problems.length > 0) throw new ConfigError(problems);
  return Object.freeze(config);
}

/**
 * `DOCKER_SOCKET`, else the socket of `DOCKER_HOST` (the variable Docker's own tools read, so
 * one setting points everything at the same engine), else Docker's default.
 */
function dockerSocket(env: Env, problems: string[]): string {
  const host = env['DOCKER_HOST'];
  if (env['DOCKER_SOCKET'] || !host) return envString(env, 'DOCKER_SOCKET', '/var/run/docker.sock');
  if (host.startsWith('unix://') && host.length > 'unix://'.length) return host.slice('unix://'.length);
  problems.push(`DOCKER_HOST must be a unix:// socket (the sandbox service talks to a local engine), got ${JSON.stringify(host.slice(0, 100))}; or set DOCKER_SOCKET`);
  return '';
}

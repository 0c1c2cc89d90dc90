/**
 * Composition root of the orchestrator: connects, serves every tenant it should (new
 * tenants are picked up while running), and stops by draining.
 */
import { jetstream, jetstreamManager } from '@nats-io/jetstream';
import type { Registry } from '@capstan/actors';
import type { TenantId } from '@capstan/schemas';
import { connectNats, followTenants, type Logger, type NatsConnection, type TenantFollower } from '@capstan/kit';
import type { Config } from './config.js';
import { createTenantHost, type TenantHost, type TenantHostStats } from './run-host.js';
import { RunCache } from './run-cache.js';
import { startIntakeGuard, type IntakeGuard } from './intake-guard.js';
import { loadWorkflows } from './workflows.js';

export interface OrchestratorApp {
  start(): Promise<void>;
  stop(): Promise<void>;
  /** Per-tenant counters, for status output and tests. */
  stats(): Record<string, Readonly<TenantHostStats>>;
  readonly registry: Registry;
}

export async function createOrchestrator(config: Config, log: Logger, opts: { registry?: Registry } = {}): Promise<OrchestratorApp> {
  const registry = opts.registry ?? (await loadWorkflows(config.workflowsModule));
  let nc: NatsConnection | undefined;
  let guard: IntakeGuard | undefined;
  let follower: TenantFollower | undefined;
  const hosts = new Map<TenantId, TenantHost>();
  const cache = new RunCache(config.cacheSize);

  async function serve(t: TenantId): Promise<void> {
    if (!nc) return;
    const host = createTenantHost({
      nc,
      js: jetstream(nc),
      jsm: await jetstreamManager(nc),
      tenant: t,
      registry,
      cache,
      log,
      maxBatch: config.maxBatch,
      ackWaitMs: config.ackWaitMs,
      maxTicks: config.maxTicks,
      now: Date.now,
      policy: { mode: config.policy, approvalTtlMs: config.approvalTtlMs, timeoutMs: config.policyTimeoutMs },
    });
    hosts.set(t, host);
    await host.start();
  }

  return {
    registry,
    stats: () => Object.fromEntries([...hosts].map(([t, h]) => [t, h.stats])),
    async start() {
      nc = await connectNats(config.natsUrl, config.name, log);
      const jsm = await jetstreamManager(nc);
      guard = startIntakeGuard(nc, jsm, log);
      follower = await followTenants(nc, config.tenants, config.discoveryMs, serve, log);
      log.info({ workflows: registry.list().map((w) => `${w.id}@${w.version}`), tenants: [...hosts.keys()] }, 'orchestrator started');
    },
    async stop() {
      follower?.stop();
      await Promise.all([...hosts.values()].map((h) => h.stop()));
      await guard?.stop();
      await nc?.drain();
    },
  };
}

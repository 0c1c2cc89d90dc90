/**
 * Composition root of the orchestrator: connects, serves every tenant it should (new
 * tenants are picked up while running), and stops by draining.
 */
import { randomBytes } from 'node:crypto';
import type { Registry } from '@capstan/actors';
import { CapstanError, ErrorCode, Role, type TenantId } from '@capstan/schemas';
import { serviceAccess, type Logger, type TenantAccess, type TenantConnection, type TenantFollower } from '@capstan/kit';
import type { Config } from './config.js';
import { createTenantHost, type TenantHost, type TenantHostStats } from './run-host.js';
import { RunCache } from './run-cache.js';
import { loadWorkflows } from './workflows.js';
import { serveCatalog } from './catalog.js';
import type { Subscription } from '@nats-io/transport-node';

export interface OrchestratorApp {
  start(): Promise<void>;
  stop(): Promise<void>;
  /** Per-tenant counters, for status output and tests. */
  stats(): Record<string, Readonly<TenantHostStats>>;
  readonly registry: Registry;
}

/** `opts.demo`: with no `CAPSTAN_WORKFLOWS`, run the demo workflows (`capstan dev`) instead of refusing to start. */
export async function createOrchestrator(config: Config, log: Logger, opts: { registry?: Registry; demo?: boolean } = {}): Promise<OrchestratorApp> {
  const registry = opts.registry ?? (await loadWorkflows(config.workflowsModule, { demo: opts.demo === true }));
  let access: TenantAccess | undefined;
  let follower: TenantFollower | undefined;
  const hosts = new Map<TenantId, TenantHost>();
  const catalogs: Subscription[] = [];
  const cache = new RunCache(config.cacheSize);
  // Unique per process: a restarted instance must not inherit the leases (and epochs) of its predecessor.
  const instance = `${config.name
    .toLowerCase()
    .replace(/[^a-z0-9_-]/g, '-')
    .slice(0, 48)}-${randomBytes(4).toString('hex')}`.replace(/^[^a-z0-9]/, 'o');

  async function serve({ tenant: t, nc, js, jsm, account, signer }: TenantConnection): Promise<void> {
    // A service's tenant connection always has both (see kit's connectAsService): without them
    // work items would be refused and no signed command believed.
    if (!account || !signer) throw new CapstanError(ErrorCode.InvalidArgument, `tenant ${t}: the connection carries no account key or signer`);
    const host = createTenantHost({
      account,
      signer,
      nc,
      js,
      jsm,
      tenant: t,
      registry,
      cache,
      log,
      maxBatch: config.maxBatch,
      maxTicks: config.maxTicks,
      now: Date.now,
      policy: { mode: config.policy, approvalTtlMs: config.approvalTtlMs, timeoutMs: config.policyTimeoutMs },
      instance,
      lease: { ttlMs: config.leaseTtlMs, renewMs: config.leaseRenewMs },
      effectBatches: config.effectBatches,
    });
    hosts.set(t, host);
    await host.start();
    catalogs.push(serveCatalog(nc, t, registry, log));
  }

  return {
    registry,
    stats: () => Object.fromEntries([...hosts].map(([t, h]) => [t, h.stats])),
    async start() {
      access = await serviceAccess(Role.Orchestrator, config, config.name, log);
      follower = await access.follow(config.tenants, config.discoveryMs, serve, log);
      log.info({ workflows: registry.list().map((w) => `${w.id}@${w.version}`), tenants: [...hosts.keys()] }, 'orchestrator started');
    },
    async stop() {
      follower?.stop();
      for (const c of catalogs) c.unsubscribe();
      await Promise.all([...hosts.values()].map((h) => h.stop()));
      await access?.close();
    },
  };
}

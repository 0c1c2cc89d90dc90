/**
 * Composition root of the orchestrator: connects, serves every tenant it should (new
 * tenants are picked up while running), and stops by draining.
 */
import { jetstream, jetstreamManager } from '@nats-io/jetstream';
import type { Registry } from '@capstan/actors';
import type { TenantId } from '@capstan/schemas';
import { connectNats, listTenants, type Logger, type NatsConnection } from '@capstan/kit';
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
  let timer: NodeJS.Timeout | undefined;
  const hosts = new Map<TenantId, TenantHost>();
  const cache = new RunCache(config.cacheSize);

  async function discover(): Promise<void> {
    if (!nc) return;
    const jsm = await jetstreamManager(nc);
    const provisioned = await listTenants(jsm);
    const wanted = config.tenants === 'all' ? provisioned : config.tenants.filter((t) => provisioned.includes(t));
    if (config.tenants !== 'all') {
      for (const t of config.tenants) if (!provisioned.includes(t)) log.warn({ tenant: t }, 'configured tenant is not provisioned yet');
    }
    for (const t of wanted) {
      if (hosts.has(t)) continue;
      const host = createTenantHost({
        nc,
        js: jetstream(nc),
        jsm,
        tenant: t,
        registry,
        cache,
        log,
        maxBatch: config.maxBatch,
        ackWaitMs: config.ackWaitMs,
        maxTicks: config.maxTicks,
        now: Date.now,
      });
      hosts.set(t, host);
      await host.start();
    }
  }

  return {
    registry,
    stats: () => Object.fromEntries([...hosts].map(([t, h]) => [t, h.stats])),
    async start() {
      nc = await connectNats(config.natsUrl, config.name, log);
      const jsm = await jetstreamManager(nc);
      guard = startIntakeGuard(nc, jsm, log);
      await discover();
      const loop = () => {
        timer = setTimeout(() => {
          discover()
            .catch((e: unknown) => log.warn({ err: e }, 'tenant discovery failed'))
            .finally(loop);
        }, config.discoveryMs);
        timer.unref();
      };
      loop();
      log.info({ workflows: registry.list().map((w) => `${w.id}@${w.version}`), tenants: [...hosts.keys()] }, 'orchestrator started');
    },
    async stop() {
      if (timer) clearTimeout(timer);
      await Promise.all([...hosts.values()].map((h) => h.stop()));
      await guard?.stop();
      await nc?.drain();
    },
  };
}

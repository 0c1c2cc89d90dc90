/** Composition root of a worker: serves its pools for every tenant it should. */
import { jetstream, jetstreamManager } from '@nats-io/jetstream';
import { encode, Subjects, type TenantId } from '@capstan/schemas';
import { connectNats, listTenants, type Logger, type NatsConnection } from '@capstan/kit';
import type { Config } from './config.js';
import { loadHandlers, type Handlers } from './handlers.js';
import { createPoolRunner, type PoolRunner } from './pool-runner.js';

export interface WorkerApp {
  start(): Promise<void>;
  stop(): Promise<void>;
  readonly id: string;
}

const HEARTBEAT_MS = 5000;

export async function createWorker(config: Config, log: Logger, opts: { handlers?: Handlers } = {}): Promise<WorkerApp> {
  const handlers = opts.handlers ?? (await loadHandlers(config.handlersModule));
  let nc: NatsConnection | undefined;
  const runners = new Map<string, PoolRunner>();
  const served = new Set<TenantId>();
  let timer: NodeJS.Timeout | undefined;
  let beat: NodeJS.Timeout | undefined;

  async function discover(): Promise<void> {
    if (!nc) return;
    const jsm = await jetstreamManager(nc);
    const provisioned = await listTenants(jsm);
    const wanted = config.tenants === 'all' ? provisioned : config.tenants.filter((t) => provisioned.includes(t));
    for (const t of wanted) {
      for (const pool of config.pools) {
        const key = `${t}/${pool}`;
        if (runners.has(key)) continue;
        const r = createPoolRunner({ nc, js: jetstream(nc), jsm, tenant: t, pool, handlers, workerId: config.id, concurrency: config.concurrency, ackWaitMs: config.ackWaitMs, startedAfterMs: config.startedAfterMs, log });
        runners.set(key, r);
        served.add(t);
        await r.start();
      }
    }
  }

  function heartbeat(): void {
    // Capability labels and load, for the fleet view; core NATS, nothing stored.
    const running = [...runners.values()].reduce((n, r) => n + r.running, 0);
    for (const t of served) {
      nc?.publish(Subjects.workerHeartbeat(t), encode({ worker: config.id, pools: config.pools, handlers: Object.keys(handlers), running, at: Date.now() }));
    }
  }

  return {
    id: config.id,
    async start() {
      nc = await connectNats(config.natsUrl, config.id, log);
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
      beat = setInterval(heartbeat, HEARTBEAT_MS);
      beat.unref();
      heartbeat();
      log.info({ worker: config.id, pools: config.pools, handlers: Object.keys(handlers).length }, 'worker started');
    },
    async stop() {
      if (timer) clearTimeout(timer);
      if (beat) clearInterval(beat);
      await Promise.all([...runners.values()].map((r) => r.stop()));
      await nc?.drain();
    },
  };
}

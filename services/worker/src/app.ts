/**
 * Composition root of a worker: serves its pools for every tenant it should, in each
 * tenant only while it is admitted there (see admission.ts).
 */
import { jetstream, jetstreamManager } from '@nats-io/jetstream';
import { encode, Subjects, type TenantId, type WorkerHeartbeat } from '@capstan/schemas';
import { connectNats, createAuditSink, followTenants, openDatabase, type AuditSink, type Logger, type NatsConnection, type TenantFollower } from '@capstan/kit';
import type { Config } from './config.js';
import { startAdmissionGate, type AdmissionGate } from './admission.js';
import { loadHandlers, type Handlers } from './handlers.js';
import { createPoolRunner, type PoolRunner } from './pool-runner.js';
import { auditNotConfigured } from './external-write.js';

export interface WorkerApp {
  start(): Promise<void>;
  stop(): Promise<void>;
  readonly id: string;
}

const HEARTBEAT_MS = 5000;
/** Audit connections: one short transaction per external write, so a few serve many steps. */
const AUDIT_POOL_SIZE = 8;

/**
 * `opts.audit`: an audit store to use instead of `AUDIT_DATABASE_URL` (a process that holds
 * its database already, such as `capstan dev`); the worker does not close it.
 */
export async function createWorker(config: Config, log: Logger, opts: { handlers?: Handlers; audit?: AuditSink } = {}): Promise<WorkerApp> {
  const handlers = opts.handlers ?? (await loadHandlers(config.handlersModule));
  // No connection is made here: an audit store that is down refuses external writes, it
  // does not keep the worker from running other steps.
  const audit =
    opts.audit ??
    (config.auditDatabaseUrl
      ? createAuditSink(await openDatabase({ url: config.auditDatabaseUrl, log, poolSize: AUDIT_POOL_SIZE }), { closeDatabase: true })
      : auditNotConfigured());
  let nc: NatsConnection | undefined;
  const runners: PoolRunner[] = [];
  const gates: AdmissionGate[] = [];
  let follower: TenantFollower | undefined;
  let beat: NodeJS.Timeout | undefined;

  async function serve(t: TenantId): Promise<void> {
    if (!nc) return;
    const conn = nc;
    const jsm = await jetstreamManager(conn);
    const mine: PoolRunner[] = [];
    gates.push(
      await startAdmissionGate({
        js: jetstream(conn),
        jsm,
        tenant: t,
        workerId: config.id,
        mode: config.admission,
        log,
        open: () => startPools(conn, t, mine),
        close: async () => {
          const closing = mine.splice(0);
          for (const r of closing) runners.splice(runners.indexOf(r), 1);
          await Promise.all(closing.map((r) => r.stop()));
        },
      }),
    );
  }

  /** The tenant's pool runners, started (each pool runner can start once: a re-admission makes new ones). */
  async function startPools(nc: NatsConnection, t: TenantId, mine: PoolRunner[]): Promise<void> {
    const jsm = await jetstreamManager(nc);
    for (const pool of config.pools) {
      const r = createPoolRunner({ nc, js: jetstream(nc), jsm, tenant: t, pool, handlers, workerId: config.id, concurrency: config.concurrency, ackWaitMs: config.ackWaitMs, startedAfterMs: config.startedAfterMs, sandboxStallMs: config.sandboxStallMs, leases: config.leases, approvalTtlMs: config.approvalTtlMs, audit, log });
      runners.push(r);
      mine.push(r);
      await r.start();
    }
  }

  function heartbeat(): void {
    // Capability labels and load, for the fleet view; core NATS, nothing stored.
    const running = runners.reduce((n, r) => n + r.running, 0);
    for (const t of follower?.tenants ?? []) {
      const beat: WorkerHeartbeat = { worker: config.id, pools: [...config.pools], handlers: Object.keys(handlers), running, at: Date.now() };
      nc?.publish(Subjects.workerHeartbeat(t), encode(beat));
    }
  }

  return {
    id: config.id,
    async start() {
      nc = await connectNats(config.natsUrl, config.id, log);
      follower = await followTenants(nc, config.tenants, config.discoveryMs, serve, log);
      beat = setInterval(heartbeat, HEARTBEAT_MS);
      beat.unref();
      heartbeat();
      log.info({ worker: config.id, pools: config.pools, handlers: Object.keys(handlers).length, audit: opts.audit || config.auditDatabaseUrl ? 'configured' : 'not configured' }, 'worker started');
    },
    async stop() {
      follower?.stop();
      if (beat) clearInterval(beat);
      await Promise.all(gates.map((g) => g.stop()));
      await Promise.all(runners.map((r) => r.stop()));
      try {
        await nc?.drain();
      } finally {
        if (!opts.audit) await audit.close();
      }
    },
  };
}

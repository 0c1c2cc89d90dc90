/**
 * Composition root of a worker: serves its pools for every tenant it should, in each
 * tenant only while it is admitted there (see admission.ts).
 */
import { ConfigError, encode, Role, Subjects, type TenantId, type WorkerHeartbeat } from '@capstan/schemas';
import {
  createAuditSink,
  openDatabase,
  readCredentials,
  tenantUserAccess,
  type AuditSink,
  type CredentialsInfo,
  type Logger,
  type TenantAccess,
  type TenantConnection,
  type TenantFollower,
} from '@capstan/kit';
import type { Config } from './config.js';
import { startAdmissionGate, type AdmissionGate } from './admission.js';
import { loadHandlers, type Handlers } from './handlers.js';
import { createPoolRunner, type PoolRunner } from './pool-runner.js';
import { auditNotConfigured } from './external-write.js';
import { datasyncHandlers } from './datasync.js';

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
/**
 * The worker's identity and pools per tenant, from its credentials: they name the tenant,
 * the worker (its admission subject) and the pools the server lets it pull.
 * @throws ConfigError when the credentials and the settings disagree
 */
async function identity(config: Config): Promise<{ id: string; pools: Map<TenantId, readonly string[]> }> {
  const problems: string[] = [];
  const creds: CredentialsInfo[] = [];
  for (const path of config.nats.credsPaths) creds.push(await readCredentials(path));
  const names = new Set(creds.map((c) => c.name));
  for (const c of creds)
    if (c.role !== Role.Worker) problems.push(`NATS_CREDS: ${c.name} is a ${c.role ?? 'unknown'} credential, not a worker's (capstan creds issue --role worker)`);
  if (names.size > 1) problems.push(`NATS_CREDS: one worker has one name in every tenant; these credentials name ${[...names].join(', ')}`);
  const id = config.id || [...names][0] || '';
  if (config.id && !names.has(config.id)) problems.push(`WORKER_ID ${config.id} is not the credentials' worker (${[...names].join(', ')}): its admission subject would be refused`);
  const pools = new Map<TenantId, readonly string[]>();
  for (const c of creds) {
    if (!c.tenant) continue;
    const wanted = config.pools.length > 0 ? config.pools.filter((p) => c.pools.includes(p)) : c.pools;
    const refused = config.pools.filter((p) => !c.pools.includes(p));
    if (refused.length > 0) problems.push(`WORKER_POOLS: the credential for tenant ${c.tenant} does not allow pool(s) ${refused.join(', ')} (it allows ${c.pools.join(', ')})`);
    pools.set(c.tenant, wanted);
  }
  if (problems.length > 0) throw new ConfigError(problems);
  return { id, pools };
}

/** `opts.demo`: with no `CAPSTAN_HANDLERS`, run the demo handlers (`capstan dev`) instead of refusing to start. */
export async function createWorker(config: Config, log: Logger, opts: { handlers?: Handlers; audit?: AuditSink; demo?: boolean } = {}): Promise<WorkerApp> {
  // Built-in handlers first: a module's own handler of the same name wins.
  const builtin = datasyncHandlers({ nc: (t) => conns.get(t)?.nc, stallMs: config.datasyncStallMs });
  const handlers: Handlers = { ...builtin, ...(opts.handlers ?? (await loadHandlers(config.handlersModule, { demo: opts.demo === true, builtin }))) };
  const { id, pools } = await identity(config);
  // No connection is made here: an audit store that is down refuses external writes, it
  // does not keep the worker from running other steps.
  const audit =
    opts.audit ??
    (config.auditDatabaseUrl
      ? createAuditSink(await openDatabase({ url: config.auditDatabaseUrl, log, poolSize: AUDIT_POOL_SIZE }), { closeDatabase: true })
      : auditNotConfigured());
  let access: TenantAccess | undefined;
  const conns = new Map<TenantId, TenantConnection>();
  const runners: PoolRunner[] = [];
  const gates: AdmissionGate[] = [];
  let follower: TenantFollower | undefined;
  let beat: NodeJS.Timeout | undefined;

  async function serve(tc: TenantConnection): Promise<void> {
    const t = tc.tenant;
    conns.set(t, tc);
    const mine: PoolRunner[] = [];
    gates.push(
      await startAdmissionGate({
        nc: tc.nc,
        jsm: tc.jsm,
        tenant: t,
        workerId: id,
        mode: config.admission,
        log,
        open: () => startPools(tc, mine),
        close: async () => {
          const closing = mine.splice(0);
          for (const r of closing) runners.splice(runners.indexOf(r), 1);
          await Promise.all(closing.map((r) => r.stop()));
        },
      }),
    );
  }

  /** The tenant's pool runners, started (each pool runner can start once: a re-admission makes new ones). */
  async function startPools({ nc, js, jsm, tenant: t, account, signer }: TenantConnection, mine: PoolRunner[]): Promise<void> {
    for (const pool of pools.get(t) ?? []) {
      const r = createPoolRunner({
        nc,
        js,
        jsm,
        tenant: t,
        pool,
        handlers,
        workerId: id,
        concurrency: config.concurrency,
        resultBatches: config.resultBatches,
        startedAfterMs: config.startedAfterMs,
        sandboxStallMs: config.sandboxStallMs,
        leases: config.leases,
        approvalTtlMs: config.approvalTtlMs,
        audit,
        account,
        signer,
        log,
      });
      runners.push(r);
      mine.push(r);
      await r.start();
    }
  }

  function heartbeat(): void {
    // Capability labels and load, for the fleet view; core NATS, nothing stored.
    const running = runners.reduce((n, r) => n + r.running, 0);
    for (const [t, tc] of conns) {
      const beat: WorkerHeartbeat = { worker: id, pools: [...(pools.get(t) ?? [])], handlers: Object.keys(handlers), running, at: Date.now() };
      tc.nc.publish(Subjects.workerHeartbeat(t), encode(beat));
    }
  }

  return {
    id,
    async start() {
      access = await tenantUserAccess(config, id, log);
      follower = await access.follow(config.tenants, config.discoveryMs, serve, log);
      beat = setInterval(heartbeat, HEARTBEAT_MS);
      beat.unref();
      heartbeat();
      log.info(
        { worker: id, pools: Object.fromEntries(pools), handlers: Object.keys(handlers).length, audit: opts.audit || config.auditDatabaseUrl ? 'configured' : 'not configured' },
        'worker started',
      );
    },
    async stop() {
      follower?.stop();
      if (beat) clearInterval(beat);
      await Promise.all(gates.map((g) => g.stop()));
      await Promise.all(runners.map((r) => r.stop()));
      try {
        await access?.close();
      } finally {
        if (!opts.audit) await audit.close();
      }
    },
  };
}

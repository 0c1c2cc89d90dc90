/**
 * The fleet's decisions, enforced by the server. An admin (CLI or console) revokes or
 * approves a worker by recording it on the tenant's fleet stream; this follower, run by
 * whoever holds the key store (`capstan dev`, `capstan auth serve`), then revokes or restores
 * that worker's credential, so a revoked worker is disconnected by nats-server and cannot
 * reconnect, whatever its own code does. The console never holds a key.
 *
 * Failure semantics: records are applied in stream order, each at most once per process
 * (re-applying one is harmless: revoking a revoked credential changes nothing). A record
 * naming a worker the store issued no credential for is left to the worker's own admission
 * gate. A push that fails is tried again with backoff before the next record.
 */
import { decode, parseWorkerAdmission, Role, Streams, Subjects, WorkerAdmissionState, type TenantId } from '@capstan/schemas';
import {
  connectNats,
  parseCredentials,
  restoreCredential,
  revokeCredential,
  tailStream,
  tenantConnection,
  type AdminTarget,
  type Logger,
  type StreamTail,
  type TenantConnection,
} from '@capstan/kit';

export interface FleetAuthority {
  /** Credentials revoked or restored since start. */
  readonly applied: number;
  stop(): Promise<void>;
}

export async function startFleetAuthority(a: AdminTarget & { readonly log: Logger }, o: { readonly everyMs?: number } = {}): Promise<FleetAuthority> {
  const tails = new Map<TenantId, { tail: StreamTail; tc: TenantConnection }>();
  let applied = 0;
  let stopped = false;

  async function follow(t: TenantId): Promise<void> {
    // A read-only credential for the fleet stream, held in memory only.
    const creds = await parseCredentials(await a.store.mintUser(t, Role.Projector, 'capstan-fleet-authority', {}, 10 * 365 * 86_400), 'fleet authority');
    const nc = await connectNats(a.servers, `capstan-fleet-authority@${t}`, a.log, { credentials: creds, ...(a.tls ? { tls: a.tls } : {}) });
    const tc = await tenantConnection(t, nc);
    const tail = tailStream({
      nc,
      jsm: tc.jsm,
      stream: Streams.fleet(t),
      subject: Subjects.allFleet(t),
      from: () => 0,
      what: 'a fleet decision',
      log: a.log,
      pollMs: 2000,
      apply: async (m) => {
        let record;
        try {
          record = parseWorkerAdmission(decode(m.data));
        } catch {
          return; // the worker's gate treats it as not approved
        }
        const user = a.store.user(t, record.worker);
        if (!user || user.role !== Role.Worker) return;
        if (record.state === WorkerAdmissionState.Revoked && user.revokedAt === undefined) {
          await revokeCredential(a, t, record.worker);
          applied++;
          a.log.info({ tenant: t, worker: record.worker, by: record.by }, 'worker credential revoked at the server');
        } else if (record.state === WorkerAdmissionState.Approved && user.revokedAt !== undefined) {
          await restoreCredential(a, t, record.worker);
          applied++;
          a.log.info({ tenant: t, worker: record.worker, by: record.by }, 'worker credential restored at the server');
        }
      },
    });
    tails.set(t, { tail, tc });
  }

  async function round(): Promise<void> {
    for (const t of a.store.tenants()) {
      if (stopped || tails.has(t)) continue;
      await follow(t).catch((e: unknown) => a.log.warn({ tenant: t, err: e }, "cannot follow the tenant's fleet; trying again"));
    }
  }
  await round();
  const timer = setInterval(() => void round(), o.everyMs ?? 2000);
  timer.unref();
  return {
    get applied() {
      return applied;
    },
    async stop() {
      stopped = true;
      clearInterval(timer);
      await Promise.allSettled(
        [...tails.values()].map(async ({ tail, tc }) => {
          await tail.stop();
          await tc.nc.close();
        }),
      );
    },
  };
}

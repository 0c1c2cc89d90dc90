/**
 * The worker fleet view: workers announce their capability labels (pools) and load on
 * `cap.<t>.svc.workers.heartbeat`; each heartbeat upserts the worker's row, stamped with the
 * projector's clock (one clock judges "last seen", not each worker's own).
 */
import type { NatsConnection, Subscription } from '@nats-io/transport-node';
import { db as schema, decode, parseWorkerHeartbeat, Subjects, type TenantId } from '@capstan/schemas';
import type { Logger, ProjectionDb } from '@capstan/kit';

export function followFleet(nc: NatsConnection, db: ProjectionDb, t: TenantId, log: Logger): Subscription {
  return nc.subscribe(Subjects.workerHeartbeat(t), {
    callback: (err, msg) => {
      if (err) return;
      let beat;
      try {
        beat = parseWorkerHeartbeat(decode(msg.data));
      } catch (e) {
        log.debug({ tenant: t, err: (e as Error).message }, 'malformed worker heartbeat ignored');
        return;
      }
      const row = { tenant: t, workerId: beat.worker, pools: beat.pools, running: beat.running, lastSeenAt: new Date() };
      db.insert(schema.workers)
        .values(row)
        .onConflictDoUpdate({ target: [schema.workers.tenant, schema.workers.workerId], set: { pools: row.pools, running: row.running, lastSeenAt: row.lastSeenAt } })
        .catch((e: unknown) => log.debug({ tenant: t, err: (e as Error).message }, 'worker heartbeat not recorded'));
    },
  });
}

/**
 * The worker fleet view.
 *
 * Heartbeats: workers announce their capability labels (pools) and load on
 * `cap.<t>.svc.workers.heartbeat`; each heartbeat upserts the worker's row, stamped with the
 * projector's clock (one clock judges "last seen", not each worker's own). Best effort: a
 * lost heartbeat is repaired by the next.
 *
 * Admission: the tenant's fleet stream (CAP_FLEET_<t>, one subject per worker id) is folded
 * into `worker_admissions` and the audit log exactly once, like the run streams: each record
 * is applied in a transaction with the fleet stream's checkpoint, under its own advisory
 * lock, so a redelivered or re-read record applies nothing twice. Postgres away means the
 * same record is tried again with backoff; an undecodable record becomes a dead_letters row.
 */
import { and, eq } from 'drizzle-orm';
import type { JetStreamManager } from '@nats-io/jetstream';
import type { NatsConnection, Subscription } from '@nats-io/transport-node';
import { db as schema, decode, ErrorCode, parseWorkerAdmission, parseWorkerHeartbeat, Streams, Subjects, toErrorRecord, SchemaError, type TenantId } from '@capstan/schemas';
import type { Logger, ProjectionDb } from '@capstan/kit';
import { AuditKind, pgText, type AuditRow } from './projection.js';
import type { DeadLetterRow } from './apply.js';
import { followStream, type StreamFollower, type StreamMessage } from './follow.js';
import { lockSideStream, readSideCheckpoint, readSideStream, writeSideCheckpoint } from './side-stream.js';

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

// ---------------------------------------------------------------------------------------
// Admission.

export type AdmissionRow = typeof schema.workerAdmissions.$inferSelect;

/** Audit rows about the fleet are about no run: their run id is empty, their seq the fleet stream's. */
export const FLEET_AUDIT_RUN_ID = '';

/** A fleet stream message as the projector receives it. */
/** A stored admission record; its time is the admission's time. */
export type FleetMessage = StreamMessage;

/**
 * What one admission record does to the projections (pure): the worker's admission row and
 * an audit row, or, for a record that does not decode or is stored under another worker's
 * subject, a dead letter.
 */
export function projectAdmission(t: TenantId, m: FleetMessage): { admission: AdmissionRow; audit: AuditRow } | { deadLetter: DeadLetterRow } {
  try {
    const r = parseWorkerAdmission(decode(m.data));
    if (m.subject !== Subjects.fleet(t, r.worker)) throw new SchemaError('worker admission', 'worker', `is ${r.worker}, but the record is stored on ${m.subject}`);
    const reason = r.reason === undefined ? null : pgText(r.reason);
    const by = pgText(r.by);
    return {
      admission: { tenant: t, workerId: r.worker, state: r.state, changedBy: by, changedAt: m.time, reason, streamSeq: m.seq },
      audit: {
        tenant: t,
        runId: FLEET_AUDIT_RUN_ID,
        seq: m.seq,
        kind: r.state === 'approved' ? AuditKind.WorkerApproved : AuditKind.WorkerRevoked,
        actor: by,
        detail: { worker: r.worker, state: r.state, reason },
        at: m.time,
        streamSeq: m.seq,
      },
    };
  } catch (e) {
    const error = toErrorRecord(e, ErrorCode.DecodeFailed);
    return { deadLetter: { tenant: t, stream: Streams.fleet(t), streamSeq: m.seq, subject: m.subject, code: pgText(error.code), message: pgText(error.message.slice(0, 1000)) } };
  }
}

async function lockFleet(tx: ProjectionDb, t: TenantId): Promise<void> {
  await lockSideStream(tx, `capstan.projector.fleet:${t}`);
}

export function readFleetCheckpoint(tx: ProjectionDb, t: TenantId): Promise<number> {
  return readSideCheckpoint(tx, t, Streams.fleet(t));
}

function writeFleetCheckpoint(tx: ProjectionDb, t: TenantId, seq: number): Promise<void> {
  return writeSideCheckpoint(tx, t, Streams.fleet(t), seq);
}

/** Writes one record's rows; the caller holds the fleet lock and moves the checkpoint. */
async function writeAdmission(tx: ProjectionDb, t: TenantId, m: FleetMessage): Promise<void> {
  const p = projectAdmission(t, m);
  if ('deadLetter' in p) {
    await tx.insert(schema.deadLetters).values(p.deadLetter).onConflictDoNothing();
    return;
  }
  const a = schema.workerAdmissions;
  const { tenant: _t, workerId: _w, ...set } = p.admission;
  await tx
    .insert(a)
    .values(p.admission)
    .onConflictDoUpdate({ target: [a.tenant, a.workerId], set });
  // Append-only: a re-applied record finds its audit row there already.
  await tx.insert(schema.auditLog).values(p.audit).onConflictDoNothing();
}

/** Applies one fleet record exactly once (skipped at or below the checkpoint). */
export async function applyAdmission(db: ProjectionDb, t: TenantId, m: FleetMessage): Promise<boolean> {
  return db.transaction(async (tx) => {
    await lockFleet(tx, t);
    if (m.seq <= (await readFleetCheckpoint(tx, t))) return false;
    await writeAdmission(tx, t, m);
    await writeFleetCheckpoint(tx, t, m.seq);
    return true;
  });
}

/**
 * Re-derives a tenant's `worker_admissions` from its fleet stream in one transaction (the
 * audit rows stay: append-only, and found by their key when re-applied). A tenant without a
 * fleet stream has nothing to rebuild.
 */
export async function rebuildAdmissions(tx: ProjectionDb, jsm: JetStreamManager, t: TenantId): Promise<number> {
  await lockFleet(tx, t);
  await tx.delete(schema.workerAdmissions).where(eq(schema.workerAdmissions.tenant, t));
  await tx.delete(schema.deadLetters).where(and(eq(schema.deadLetters.tenant, t), eq(schema.deadLetters.stream, Streams.fleet(t))));
  let applied = 0;
  const last = await readSideStream(jsm, Streams.fleet(t), Subjects.allFleet(t), async (m) => {
    await writeAdmission(tx, t, m);
    applied++;
  });
  await writeFleetCheckpoint(tx, t, last);
  return applied;
}

export type AdmissionFollower = StreamFollower;

/** Follows a tenant's fleet stream into `worker_admissions` (see `followStream`). */
export function followAdmissions(nc: NatsConnection, jsm: JetStreamManager, db: ProjectionDb, t: TenantId, log: Logger): AdmissionFollower {
  return followStream({
    nc,
    jsm,
    stream: Streams.fleet(t),
    subject: Subjects.allFleet(t),
    checkpoint: () => readFleetCheckpoint(db, t),
    apply: (m) => applyAdmission(db, t, m),
    what: 'a worker admission',
    log,
  });
}

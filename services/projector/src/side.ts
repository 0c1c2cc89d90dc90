/**
 * A tenant's side streams (schedules and webhook routes, so far) are projected the same way: each record is written in one transaction with the stream's
 * checkpoint, under an advisory lock of its own, so a redelivered or re-read record applies
 * nothing twice; a rebuild re-reads the stream from the start in the caller's transaction.
 * Only what one record does to the tables differs (`write`).
 */
import { sql } from 'drizzle-orm';
import type { JetStreamManager } from '@nats-io/jetstream';
import type { NatsConnection } from '@nats-io/transport-node';
import type { TenantId } from '@capstan/schemas';
import type { Logger, ProjectionDb } from '@capstan/kit';
import { followStream, type StreamFollower, type StreamMessage } from './follow.js';
import { readSideCheckpoint, writeSideCheckpoint } from './side-stream.js';

export interface SideStream {
  /** Names the advisory lock (`capstan.projector.<lock>:<tenant>`) and the checkpoint (`<stream>/<lock>`). */
  readonly lock: string;
  readonly stream: (t: TenantId) => string;
  /** The subjects projected (a wildcard): several kinds share a stream, each with its own checkpoint. */
  readonly subject: (t: TenantId) => string;
  /** What one record does to the projections; the caller holds the lock and moves the checkpoint. */
  write(tx: ProjectionDb, t: TenantId, m: StreamMessage): Promise<void>;
  /** For log lines ("a worker admission"). */
  readonly what: string;
}

export async function lockSide(tx: ProjectionDb, side: SideStream, t: TenantId): Promise<void> {
  await tx.execute(sql`select pg_advisory_xact_lock(hashtextextended(${`capstan.projector.${side.lock}:${t}`}, 0))`);
}

// One copy of the checkpoint row's reads and writes, shared with the other side streams.
export { readSideCheckpoint, writeSideCheckpoint };

/** The checkpoint row's key: the stream, and the kind of record when a stream holds several. */
export const sideCheckpointKey = (side: SideStream, t: TenantId): string => `${side.stream(t)}/${side.lock}`;

/** Applies one record exactly once (skipped at or below the checkpoint). */
export function applySide(db: ProjectionDb, side: SideStream, t: TenantId, m: StreamMessage): Promise<boolean> {
  return db.transaction(async (tx) => {
    await lockSide(tx, side, t);
    const key = sideCheckpointKey(side, t);
    if (m.seq <= (await readSideCheckpoint(tx, t, key))) return false;
    await side.write(tx, t, m);
    await writeSideCheckpoint(tx, t, key, m.seq);
    return true;
  });
}

/**
 * Writes every record of the stream again in the caller's transaction (after `reset`, which
 * clears what the rebuild re-derives), and moves the checkpoint to the last one. A tenant
 * without the stream has nothing to rebuild.
 */
export async function rebuildSide(tx: ProjectionDb, jsm: JetStreamManager, side: SideStream, t: TenantId, reset?: () => Promise<void>): Promise<{ applied: number; last: number }> {
  await lockSide(tx, side, t);
  await reset?.();
  const filter = { next_by_subj: side.subject(t) };
  let applied = 0;
  let last = 0;
  for (let from = 1; ;) {
    const page: StreamMessage[] = [];
    try {
      for await (const m of await jsm.direct.getBatch(side.stream(t), { seq: from, batch: 500, ...filter }))
        page.push({ seq: m.seq, subject: m.subject, data: m.data, time: m.time });
    } catch {
      // No stream, or nothing at or after `from`: the end.
    }
    for (const m of page) {
      await side.write(tx, t, m);
      last = m.seq;
      applied++;
    }
    if (page.length < 500) break;
    from = last + 1;
  }
  // Written even at 0: a rebuild from a new, shorter stream must not keep the old position.
  await writeSideCheckpoint(tx, t, sideCheckpointKey(side, t), last);
  return { applied, last };
}

/** Follows a side stream into the projections (see `followStream`). */
export function followSide(nc: NatsConnection, jsm: JetStreamManager, db: ProjectionDb, side: SideStream, t: TenantId, log: Logger): StreamFollower {
  return followStream({
    nc,
    jsm,
    stream: side.stream(t),
    subject: side.subject(t),
    checkpoint: () => readSideCheckpoint(db, t, sideCheckpointKey(side, t)),
    apply: (m) => applySide(db, side, t, m),
    what: side.what,
    log,
  });
}

/**
 * What the projector's side streams (worker admissions, policy versions, the data-sync
 * catalog) share: a per-tenant advisory lock per stream, a checkpoint row per stream
 * committed with the rows it covers, and reading a whole stream page by page for a rebuild.
 */
import { and, eq, sql } from 'drizzle-orm';
import type { JetStreamManager } from '@nats-io/jetstream';
import { db as schema, type TenantId } from '@capstan/schemas';
import type { ProjectionDb } from '@capstan/kit';
import type { StreamMessage } from './follow.js';

/** Serializes appliers of one side stream of one tenant (transaction-scoped). */
export async function lockSideStream(tx: ProjectionDb, key: string): Promise<void> {
  await tx.execute(sql`select pg_advisory_xact_lock(hashtextextended(${key}, 0))`);
}

export async function readSideCheckpoint(tx: ProjectionDb, t: TenantId, stream: string): Promise<number> {
  const c = schema.checkpoints;
  const rows = await tx
    .select({ seq: c.lastStreamSeq })
    .from(c)
    .where(and(eq(c.tenant, t), eq(c.stream, stream)));
  return rows[0]?.seq ?? 0;
}

export async function writeSideCheckpoint(tx: ProjectionDb, t: TenantId, stream: string, seq: number): Promise<void> {
  const c = schema.checkpoints;
  await tx
    .insert(c)
    .values({ tenant: t, stream, lastStreamSeq: seq })
    .onConflictDoUpdate({ target: [c.tenant, c.stream], set: { lastStreamSeq: seq, updatedAt: sql`now()` } });
}

const PAGE = 500;

/** Every message of a stream under `subject`, in order; returns the last sequence seen (0: none). */
export async function readSideStream(jsm: JetStreamManager, stream: string, subject: string, each: (m: StreamMessage) => Promise<void>): Promise<number> {
  let last = 0;
  for (let from = 1; ;) {
    const page: StreamMessage[] = [];
    try {
      for await (const m of await jsm.direct.getBatch(stream, { seq: from, next_by_subj: subject, batch: PAGE })) {
        page.push({ seq: m.seq, subject: m.subject, data: m.data, time: m.time });
      }
    } catch {
      // No stream, or nothing at or after `from`: the end.
    }
    for (const m of page) {
      await each(m);
      last = m.seq;
    }
    if (page.length < PAGE) return last;
    from = last + 1;
  }
}

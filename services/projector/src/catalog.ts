/**
 * The tenant's data-sync catalog: its catalog stream (CAP_CATALOG_<t>, one subject per
 * connection, model or destination; the last record is the entity's state) folded into
 * `datasync_entities` and one audit row per record (`datasync.<kind>.created|changed|deleted`:
 * who, the version and its spec digest; `run_id` = `catalog:<kind>:<id>`, `seq` = minus the
 * version, so no stream's fold expects it: `projections verify` leaves it out), exactly once: each record is applied in a transaction with the catalog
 * stream's checkpoint, under its own advisory lock. A record that does not decode, or is
 * stored under another entity's subject, becomes a dead_letters row.
 */
import { and, eq } from 'drizzle-orm';
import type { JetStreamManager } from '@nats-io/jetstream';
import type { NatsConnection } from '@nats-io/transport-node';
import { db as schema, decode, ErrorCode, EntityStatus, parseCatalogRecord, SchemaError, Streams, Subjects, toErrorRecord, type JsonValue, type TenantId } from '@capstan/schemas';
import type { Logger, ProjectionDb } from '@capstan/kit';
import { pgText, type AuditRow } from './projection.js';
import type { DeadLetterRow } from './apply.js';
import { followStream, type StreamFollower, type StreamMessage } from './follow.js';
import { lockSideStream, readSideCheckpoint, readSideStream, writeSideCheckpoint } from './side-stream.js';

export type CatalogRow = typeof schema.datasyncEntities.$inferSelect;

/** Audit rows about a catalog entity: keyed by the entity, one per version. */
export const catalogAuditRunId = (kind: string, id: string) => `catalog:${kind}:${id}`;

/** What one catalog record does to the projections (pure): the entity's row and an audit row, or a dead letter. */
export function projectCatalogRecord(t: TenantId, m: StreamMessage): { entity: CatalogRow; audit: AuditRow } | { deadLetter: DeadLetterRow } {
  try {
    const r = parseCatalogRecord(decode(m.data));
    if (m.subject !== Subjects.catalog(t, r.kind, r.id)) throw new SchemaError('catalog record', 'id', `is ${r.kind} ${r.id}, but the record is stored on ${m.subject}`);
    const at = new Date(r.at);
    const when = Number.isNaN(at.getTime()) ? m.time : at;
    const by = pgText(r.by);
    const what = r.status === EntityStatus.Deleted ? 'deleted' : r.version === 1 ? 'created' : 'changed';
    return {
      entity: {
        tenant: t,
        kind: r.kind,
        id: r.id,
        name: pgText(r.name),
        version: r.version,
        status: r.status,
        fingerprint: r.fingerprint,
        summary: r.summary as JsonValue,
        changedBy: by,
        changedAt: when,
        streamSeq: m.seq,
      },
      audit: {
        tenant: t,
        runId: catalogAuditRunId(r.kind, r.id),
        seq: -r.version,
        kind: `datasync.${r.kind}.${what}`,
        actor: by,
        detail: { kind: r.kind, id: r.id, version: r.version, name: pgText(r.name), fingerprint: r.fingerprint, summary: r.summary as JsonValue },
        at: when,
        streamSeq: m.seq,
      },
    };
  } catch (e) {
    const error = toErrorRecord(e, ErrorCode.DecodeFailed);
    return { deadLetter: { tenant: t, stream: Streams.catalog(t), streamSeq: m.seq, subject: m.subject, code: pgText(error.code), message: pgText(error.message.slice(0, 1000)) } };
  }
}

const lockCatalog = (tx: ProjectionDb, t: TenantId) => lockSideStream(tx, `capstan.projector.catalog:${t}`);
export const readCatalogCheckpoint = (tx: ProjectionDb, t: TenantId) => readSideCheckpoint(tx, t, Streams.catalog(t));

async function writeCatalogRecord(tx: ProjectionDb, t: TenantId, m: StreamMessage): Promise<void> {
  const p = projectCatalogRecord(t, m);
  if ('deadLetter' in p) {
    await tx.insert(schema.deadLetters).values(p.deadLetter).onConflictDoNothing();
    return;
  }
  const e = schema.datasyncEntities;
  const { tenant: _t, kind: _k, id: _i, ...set } = p.entity;
  await tx
    .insert(e)
    .values(p.entity)
    .onConflictDoUpdate({ target: [e.tenant, e.kind, e.id], set });
  // Append-only: a re-applied record finds its audit row there already.
  await tx.insert(schema.auditLog).values(p.audit).onConflictDoNothing();
}

/** Applies one catalog record exactly once (skipped at or below the checkpoint). */
export async function applyCatalogRecord(db: ProjectionDb, t: TenantId, m: StreamMessage): Promise<boolean> {
  return db.transaction(async (tx) => {
    await lockCatalog(tx, t);
    if (m.seq <= (await readCatalogCheckpoint(tx, t))) return false;
    await writeCatalogRecord(tx, t, m);
    await writeSideCheckpoint(tx, t, Streams.catalog(t), m.seq);
    return true;
  });
}

/** Re-derives a tenant's `datasync_entities` from its catalog stream in the caller's transaction. */
export async function rebuildCatalog(tx: ProjectionDb, jsm: JetStreamManager, t: TenantId): Promise<number> {
  await lockCatalog(tx, t);
  await tx.delete(schema.datasyncEntities).where(eq(schema.datasyncEntities.tenant, t));
  await tx.delete(schema.deadLetters).where(and(eq(schema.deadLetters.tenant, t), eq(schema.deadLetters.stream, Streams.catalog(t))));
  let applied = 0;
  const last = await readSideStream(jsm, Streams.catalog(t), Subjects.allCatalog(t), async (m) => {
    await writeCatalogRecord(tx, t, m);
    applied++;
  });
  await writeSideCheckpoint(tx, t, Streams.catalog(t), last);
  return applied;
}

/** Follows a tenant's catalog stream into `datasync_entities` (see `followStream`). */
export function followCatalog(nc: NatsConnection, jsm: JetStreamManager, db: ProjectionDb, t: TenantId, log: Logger): StreamFollower {
  return followStream({
    nc,
    jsm,
    stream: Streams.catalog(t),
    subject: Subjects.allCatalog(t),
    checkpoint: () => readCatalogCheckpoint(db, t),
    apply: (m) => applyCatalogRecord(db, t, m),
    what: 'a catalog record',
    log,
  });
}

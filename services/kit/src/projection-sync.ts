/**
 * Which run stream a tenant's projections follow, and whether they still do.
 *
 * A checkpoint is a stream sequence, and a sequence names an event only in the stream it was
 * counted in. A run stream created again under the same name (a new NATS store, a server
 * pointed at another store, a tenant deleted and provisioned again) counts from 1 again: a
 * checkpoint kept from the old one is ahead of it, or level with it over other events. A
 * projector trusting that checkpoint skips the new stream's events, and the readers serve the
 * old stream's rows (or none) with a lag of 0. So the checkpoint row records the stream's
 * identity, its creation time as the server reports it (stable across restarts) and its first
 * sequence, and the projector and the readers compare it with the stream as it is now.
 */
import { and, eq, inArray, sql } from 'drizzle-orm';
import { JetStreamApiCodes, JetStreamApiError, type JetStreamManager, type StreamInfo } from '@nats-io/jetstream';
import { CapstanError, db as schema, ErrorCode, ProjectionOutOfSyncError, Streams, UnavailableError, type TenantId } from '@capstan/schemas';
import type { ProjectionDb } from './db.js';

/** The run stream as it is now. */
export interface StreamNow {
  /** When the server created the stream (RFC 3339 with nanoseconds): its identity. */
  readonly created: string;
  readonly firstSeq: number;
  readonly lastSeq: number;
}

/** A tenant's run-stream checkpoint row: what the projections applied, and from which stream. */
export interface FollowedStream {
  readonly checkpoint: number;
  /** Null until recorded (and in rows older than identities). */
  readonly created: string | null;
  readonly firstSeq: number | null;
  /** Set by a projector that refused to go on, saying why; null while in sync. */
  readonly outOfSync: string | null;
}

export type SyncVerdict =
  /** `record`: the row does not name this stream yet, and safely can. */
  { readonly inSync: true; readonly record: boolean } | { readonly inSync: false; readonly reason: string };

export function streamNow(info: StreamInfo): StreamNow {
  return { created: info.created, firstSeq: info.state.first_seq, lastSeq: info.state.last_seq };
}

/** Where the tenants' streams are read: a process's tenant access (see access.ts), or one tenant's connection. */
export interface StreamSide {
  tenant(t: TenantId): Promise<{ readonly jsm: JetStreamManager }>;
}

/**
 * The tenant's run stream now, or undefined when it does not exist (or the tenant is not one
 * `side` reaches). @throws UnavailableError
 */
export async function readStreamNow(side: StreamSide, t: TenantId): Promise<StreamNow | undefined> {
  try {
    return streamNow(await (await side.tenant(t)).jsm.streams.info(Streams.runs(t)));
  } catch (e) {
    if ((e instanceof JetStreamApiError && e.code === JetStreamApiCodes.StreamNotFound) || (CapstanError.is(e) && e.code === ErrorCode.UnknownTenant)) return undefined;
    throw new UnavailableError(`cannot read stream ${Streams.runs(t)}: ${(e as Error).message}`, { cause: e });
  }
}

/** One tenant's connection as a stream side. */
export const streamSideOf = (tc: { readonly jsm: JetStreamManager }): StreamSide => ({ tenant: () => Promise.resolve(tc) });

/**
 * Whether projections that applied `followed` can go on following the stream `now` (pure).
 * `now` must be read after `followed`: the other way round, a checkpoint that moved on in
 * between would look like a stream ending before it.
 * Nothing applied yet: any stream will do. Otherwise it must be the same stream (same
 * creation time), still hold the checkpoint (not end before it), and not have dropped events
 * the projections never applied. A row older than identities is taken to follow the stream
 * unless the stream ends before its checkpoint.
 */
export function judgeSync(stream: string, followed: FollowedStream | undefined, now: StreamNow): SyncVerdict {
  if (!followed || followed.checkpoint === 0) return { inSync: true, record: followed?.created !== now.created };
  const at = `the projections applied ${stream} up to sequence ${followed.checkpoint}`;
  if (followed.created !== null && followed.created !== now.created) {
    return { inSync: false, reason: `${stream} was created again (at ${now.created}; ${at} of the one created at ${followed.created})` };
  }
  if (now.lastSeq < followed.checkpoint) {
    return { inSync: false, reason: `${stream} ends at sequence ${now.lastSeq}, before the checkpoint: ${at} (a stream restored from an older copy, or another one)` };
  }
  if (now.firstSeq > followed.checkpoint + 1) {
    return { inSync: false, reason: `${stream} now starts at sequence ${now.firstSeq}: ${at}, and the events between were removed before they were applied` };
  }
  return { inSync: true, record: followed.created === null };
}

/** Each tenant's run-stream checkpoint row (tenants without one are absent). */
export async function readFollowed(db: ProjectionDb, tenants: readonly TenantId[]): Promise<Map<TenantId, FollowedStream>> {
  const out = new Map<TenantId, FollowedStream>();
  if (tenants.length === 0) return out;
  const c = schema.checkpoints;
  const rows = await db
    .select({ tenant: c.tenant, stream: c.stream, checkpoint: c.lastStreamSeq, created: c.streamCreated, firstSeq: c.streamFirstSeq, outOfSync: c.outOfSync })
    .from(c)
    .where(
      and(
        inArray(c.tenant, [...tenants]),
        inArray(
          c.stream,
          tenants.map((t) => Streams.runs(t)),
        ),
      ),
    );
  for (const { tenant, stream, ...row } of rows) if (stream === Streams.runs(tenant as TenantId)) out.set(tenant as TenantId, row);
  return out;
}

/**
 * Records that the tenant's projections follow the stream `now` (creating the checkpoint row
 * at 0 if there is none) and clears any out-of-sync mark. Call it only when `judgeSync` says
 * so, or after a rebuild from that stream.
 */
export async function recordFollowed(db: ProjectionDb, t: TenantId, now: Pick<StreamNow, 'created' | 'firstSeq'>): Promise<void> {
  const c = schema.checkpoints;
  const identity = { streamCreated: now.created, streamFirstSeq: now.firstSeq, outOfSync: null };
  await db
    .insert(c)
    .values({ tenant: t, stream: Streams.runs(t), lastStreamSeq: 0, ...identity })
    .onConflictDoUpdate({ target: [c.tenant, c.stream], set: { ...identity, updatedAt: sql`now()` } });
}

/** Marks (or with null, clears) the tenant's projections as no longer following their stream. */
export async function markOutOfSync(db: ProjectionDb, t: TenantId, reason: string | null): Promise<void> {
  const c = schema.checkpoints;
  await db
    .update(c)
    .set({ outOfSync: reason, updatedAt: sql`now()` })
    .where(and(eq(c.tenant, t), eq(c.stream, Streams.runs(t))));
}

/**
 * Whether a tenant's projections can be read: not when a projector marked them out of sync,
 * nor (given the stream side) when they no longer follow the stream as it is now.
 * Undefined when they can; else why not.
 */
export function outOfSyncReason(stream: string, followed: FollowedStream | undefined, now: StreamNow | undefined): string | undefined {
  if (now) {
    const v = judgeSync(stream, followed, now);
    if (!v.inSync) return v.reason;
  }
  return followed?.outOfSync ?? undefined;
}

/** The error readers answer with for a tenant whose projections do not follow its stream. */
export function outOfSyncError(t: TenantId, reason: string): ProjectionOutOfSyncError {
  return new ProjectionOutOfSyncError(
    t,
    `the projections of tenant ${t} do not follow its run stream: ${reason}. Nothing is served from them until \`capstan projections rebuild --tenant ${t}\` (automatic in \`capstan dev\`)`,
  );
}

/**
 * A check for read paths, per tenant: one checkpoint row read, and at most one stream lookup
 * per `ttlMs`. The row is read first: a stream read after it cannot end before a checkpoint of
 * the same stream (events are in the stream before they are applied), so a cached stream that
 * does is read again rather than believed. @throws ProjectionOutOfSyncError
 */
export function syncGuard(db: ProjectionDb, side: StreamSide | undefined, ttlMs = 1000): (t: TenantId) => Promise<void> {
  const streams = new Map<TenantId, { at: number; now: StreamNow | undefined }>();
  return async (t) => {
    const followed = (await readFollowed(db, [t])).get(t);
    let now: StreamNow | undefined;
    if (side) {
      const cached = streams.get(t);
      if (cached && Date.now() - cached.at < ttlMs && !(cached.now && followed && cached.now.lastSeq < followed.checkpoint)) now = cached.now;
      else {
        // The stream side unreachable is no reason to refuse reads: the database's mark still counts.
        now = await readStreamNow(side, t).catch(() => undefined);
        streams.set(t, { at: Date.now(), now });
      }
    }
    const reason = outOfSyncReason(Streams.runs(t), followed, now);
    if (reason) throw outOfSyncError(t, reason);
  };
}

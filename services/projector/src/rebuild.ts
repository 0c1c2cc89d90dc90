/**
 * Rebuilding a tenant's projections from its run stream. Every projection row is derived
 * from the stream, so it can be dropped and made again: per tenant, one transaction (under
 * the same advisory lock the live projector takes) deletes the tenant's rows, resets its
 * checkpoint to 0 and applies the whole stream through the same `applyLocked` as the live
 * path. Readers see the old rows until the new ones commit; a live projector waits on the
 * lock and then finds its messages at or below the new checkpoint.
 *
 * The audit log is left alone: it is append-only (the database refuses deletes), and a
 * re-applied audit event finds its row already there by its (tenant, run, seq) key. The
 * workers table (heartbeats) is not derived from a stream and is left alone too; worker
 * admissions are, and are rebuilt from the tenant's fleet stream in the same transaction.
 */
import { and, eq, gt, or, sql } from 'drizzle-orm';
import type { JetStreamManager } from '@nats-io/jetstream';
import { db as schema, Streams, type TenantId } from '@capstan/schemas';
import { dbErrorMessage, readStreamNow, recordFollowed, streamSideOf, type Database, type Logger, type ProjectionDb } from '@capstan/kit';
import { applyLocked, lockTenant, writeCheckpoint } from './apply.js';
import { readRunStream } from './stream.js';
import { rebuildAdmissions } from './fleet.js';
import { rebuildPolicies } from './policies.js';
import { rebuildTriggers } from './triggers.js';
import { rebuildCatalog } from './catalog.js';

export interface RebuiltTenant {
  readonly tenant: TenantId;
  /** Run stream messages applied (events and dead letters). */
  readonly messages: number;
  readonly deadLetters: number;
  readonly checkpoint: number;
  /** Worker admission records re-applied from the fleet stream. */
  readonly admissions: number;
  readonly elapsedMs: number;
}

export interface RebuildResult {
  readonly tenants: readonly RebuiltTenant[];
  readonly messages: number;
  readonly elapsedMs: number;
}

export interface RebuildOptions {
  /** Messages applied per statement round (default 1000). */
  readonly batch?: number;
  /**
   * For a store that was replaced (`capstan dev` only): first drop the tenant's rows that the
   * database otherwise never lets change and that were derived from the old streams (policy
   * versions, and audit rows of runs, admissions and policy changes), so the new streams'
   * rows can take their keys. Audit rows the data plane wrote (external writes, secrets)
   * stay: they record what really happened. Needs a superuser (PGlite's is); without one
   * those rows stay and a warning says so.
   */
  readonly forgetOldStreams?: boolean;
  readonly log?: Logger;
}

export async function rebuildProjections(
  d: Database,
  jsmOf: (t: TenantId) => Promise<JetStreamManager>,
  tenants: readonly TenantId[],
  opts: RebuildOptions = {},
): Promise<RebuildResult> {
  const t0 = performance.now();
  const out: RebuiltTenant[] = [];
  for (const t of tenants) out.push(await rebuildTenant(d, await jsmOf(t), t, opts));
  return { tenants: out, messages: out.reduce((n, r) => n + r.messages, 0), elapsedMs: performance.now() - t0 };
}

async function rebuildTenant(d: Database, jsm: JetStreamManager, t: TenantId, opts: RebuildOptions): Promise<RebuiltTenant> {
  const t0 = performance.now();
  const stream = Streams.runs(t);
  const batch = opts.batch ?? 1000;
  // The stream rebuilt from is the one the projections follow from now on.
  const now = await readStreamNow(streamSideOf({ jsm }), t);
  return d.db.transaction(async (tx) => {
    await lockTenant(tx, t);
    if (opts.forgetOldStreams) await forgetOldStreams(tx, t, opts.log);
    const { runs, runSearch, steps, events, approvals, deadLetters } = schema;
    await tx.delete(runs).where(eq(runs.tenant, t));
    await tx.delete(runSearch).where(eq(runSearch.tenant, t));
    await tx.delete(steps).where(eq(steps.tenant, t));
    await tx.delete(events).where(eq(events.tenant, t));
    await tx.delete(approvals).where(eq(approvals.tenant, t));
    await tx.delete(deadLetters).where(and(eq(deadLetters.tenant, t), eq(deadLetters.stream, stream)));
    await writeCheckpoint(tx, t, 0);
    if (now) await recordFollowed(tx, t, now);
    let messages = 0;
    let dead = 0;
    let checkpoint = 0;
    for await (const page of readRunStream(jsm, t, { page: Math.min(batch, 1000) })) {
      const r = await applyLocked(tx, t, page);
      messages += r.applied;
      dead += r.deadLettered;
      checkpoint = r.checkpoint;
    }
    const admissions = await rebuildAdmissions(tx, jsm, t);
    // Policy versions are immutable rows: a rebuild only adds what is missing.
    await rebuildPolicies(tx, jsm, t);
    await rebuildTriggers(tx, jsm, t);
    await rebuildCatalog(tx, jsm, t);
    return { tenant: t, messages, deadLetters: dead, checkpoint, admissions, elapsedMs: performance.now() - t0 };
  });
}

/** See `RebuildOptions.forgetOldStreams`. */
async function forgetOldStreams(tx: ProjectionDb, t: TenantId, log: Logger | undefined): Promise<void> {
  const { policies, auditLog, checkpoints, deadLetters } = schema;
  try {
    await tx.transaction(async (sp) => {
      // The immutability triggers are ordinary triggers, which a superuser's session in
      // replica mode does not fire; set back at once, for the rest of the transaction.
      await sp.execute(sql`set local session_replication_role = replica`);
      await sp.delete(policies).where(eq(policies.tenant, t));
      // Stream-derived audit rows: runs' (seq > 0), admissions' and policies' (no run).
      await sp.delete(auditLog).where(and(eq(auditLog.tenant, t), or(gt(auditLog.seq, 0), eq(auditLog.runId, ''))));
      await sp.execute(sql`set local session_replication_role = origin`);
    });
  } catch (e) {
    log?.warn({ tenant: t, err: dbErrorMessage(e) }, "the old streams' policy versions and audit rows could not be dropped (needs a superuser); they stay beside the new ones");
  }
  await tx.delete(checkpoints).where(and(eq(checkpoints.tenant, t), eq(checkpoints.stream, Streams.policy(t))));
  await tx.delete(deadLetters).where(and(eq(deadLetters.tenant, t), eq(deadLetters.stream, Streams.policy(t))));
}

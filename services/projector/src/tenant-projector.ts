/**
 * The projector for one tenant: a durable pull consumer (`projector`, shared by every
 * projector process) over the tenant's run subjects, feeding batches to `applyBatch`.
 *
 * Failure semantics:
 * - a batch is acknowledged only after its transaction committed; a crash in between means
 *   redelivery, and the checkpoint makes the redelivered messages no-ops;
 * - Postgres away: nothing is acknowledged, the same messages are retried with backoff
 *   (250 ms doubling to 5 s), forever, with a warning each time; never a crash;
 * - messages after a gap (an earlier one still with a dead process) wait for it. If it does
 *   not come back (the consumer's position is past the checkpoint: a restored database, a
 *   new one), the consumer is reset to the checkpoint; the database is the truth about what
 *   was applied, the consumer only about what was delivered. The consumer itself is made
 *   with the tenant (capstan tenant add): the projector may use and reset it, not create it.
 */
import type { ConsumerMessages, JetStreamClient, JetStreamManager, JsMsg } from '@nats-io/jetstream';
import { and, count, eq } from 'drizzle-orm';
import { CapstanError, Consumers, db as schema, ErrorCode, Streams, Subjects, type TenantId } from '@capstan/schemas';
import { addCollector, emitSpan, failpoint, hopSpanId, metrics, SpanKind, tracingOn, type Logger, type ProjectionDb } from '@capstan/kit';
import { applyBatch, readCheckpoint, type AuditedEvent } from './apply.js';

export interface TenantProjectorOptions {
  readonly js: JetStreamClient;
  readonly jsm: JetStreamManager;
  readonly db: ProjectionDb;
  readonly tenant: TenantId;
  readonly log: Logger;
  /** Messages applied per transaction, at most. */
  readonly batch: number;
  /** The creation time of the run stream this projector was found to follow (see projection-sync.ts in kit). */
  readonly streamCreated: string;
  /** Called when a batch was refused because the projections follow another stream. */
  readonly onOutOfSync: () => void;
}

export interface TenantProjectorStats {
  /** Messages applied (as rows or dead letters). */
  applied: number;
  /** Redelivered messages found already applied. */
  skipped: number;
  deadLettered: number;
  batches: number;
  /** Batches that failed (Postgres or NATS unavailable) and were retried. */
  retries: number;
  /** Times the consumer was recreated from the checkpoint. */
  repositions: number;
  checkpoint: number;
}

export interface TenantProjector {
  start(): Promise<void>;
  stop(): Promise<void>;
  readonly stats: Readonly<TenantProjectorStats>;
}

export const Failpoints = {
  BeforeCommit: 'projector.before_commit',
  AfterCommitBeforeAck: 'projector.after_commit_before_ack',
  AfterAck: 'projector.after_ack',
} as const;

const BACKOFF_MIN_MS = 250;
const BACKOFF_MAX_MS = 5000;
/** How often a batch held at a gap looks again at the checkpoint. */
const GAP_RECHECK_MS = 500;

export function createTenantProjector(o: TenantProjectorOptions): TenantProjector {
  const { js, jsm, db, tenant: t } = o;
  const log = o.log.child({ tenant: t });
  const stream = Streams.runs(t);
  const stats: TenantProjectorStats = { applied: 0, skipped: 0, deadLettered: 0, batches: 0, retries: 0, repositions: 0, checkpoint: 0 };
  /** Delivered, not yet acknowledged, by stream sequence (a redelivery replaces its copy). */
  const pending = new Map<number, JsMsg>();
  let messages: ConsumerMessages | undefined;
  /** Set once the loop consumes: from then on a reposition restarts consuming. */
  let consuming = false;
  let stopped = false;
  let wake: (() => void) | undefined;
  /** While held back at a gap, only a message below this can let the batch through. */
  let waitBelow = Number.POSITIVE_INFINITY;
  let loop: Promise<void> | undefined;

  /** The consumer's ack wait, from the server (it is made at provisioning). */
  let ackWaitMs = 10_000;

  /**
   * Makes the consumer deliver again from just after the checkpoint: a consumer reset
   * (nats-server 2.14+). Our own consuming restarts after it, as a reset consumer's
   * deliveries start over.
   */
  async function reposition(checkpoint: number, why: string): Promise<void> {
    log.warn({ checkpoint, why }, 'repositioning the projector consumer at the checkpoint');
    stats.repositions++;
    await jsm.consumers.reset(stream, Consumers.projector, checkpoint + 1);
    if (consuming) {
      const old = messages;
      messages = undefined;
      await old?.close();
      await consume();
    }
  }

  /** At start: a consumer that already acknowledged past the checkpoint would never deliver the difference. */
  async function realign(): Promise<void> {
    const checkpoint = await readCheckpoint(db, t);
    stats.checkpoint = checkpoint;
    const info = await jsm.consumers.info(stream, Consumers.projector);
    ackWaitMs = Math.round((info.config.ack_wait ?? 10_000_000_000) / 1_000_000);
    if (info.ack_floor.stream_seq > checkpoint) await reposition(checkpoint, `consumer acknowledged up to ${info.ack_floor.stream_seq}`);
  }

  const nextSeq = async (from: number): Promise<number | undefined> => (await jsm.direct.getMessage(stream, { seq: from, next_by_subj: Subjects.allRuns(t) }))?.seq;

  async function consume(): Promise<void> {
    const consumer = await js.consumers.get(stream, Consumers.projector);
    const iter = await consumer.consume({ max_messages: o.batch * 2 });
    messages = iter;
    const current = () => messages === iter;
    void (async () => {
      for await (const m of iter) {
        pending.set(m.seq, m);
        if (m.seq < waitBelow) wake?.();
      }
    })()
      .catch((e: unknown) => log.warn({ err: e }, 'projector consumer failed'))
      .finally(() => {
        // It ends when we close it (to stop, or to reposition); ended any other way, consuming starts again.
        if (stopped || !current()) return;
        log.warn('projector consumer ended; consuming again');
        setTimeout(() => void withRetry('restarting the projector consumer', consume), BACKOFF_MAX_MS).unref();
      });
  }

  /** Waits up to `ms`; an arriving message that can be applied ends the wait early. */
  const idle = (ms: number) =>
    new Promise<void>((resolve) => {
      const timer = setTimeout(resolve, ms);
      wake = () => {
        clearTimeout(timer);
        resolve();
      };
    });
  /** Waits `ms` whatever arrives (a backoff); only stopping ends it early. */
  let interrupt: (() => void) | undefined;
  const pause = (ms: number) =>
    new Promise<void>((resolve) => {
      const timer = setTimeout(resolve, ms);
      interrupt = () => {
        clearTimeout(timer);
        resolve();
      };
    });

  async function withRetry(what: string, fn: () => Promise<void>): Promise<void> {
    for (let backoff = BACKOFF_MIN_MS; !stopped; backoff = Math.min(backoff * 2, BACKOFF_MAX_MS)) {
      try {
        return await fn();
      } catch (e) {
        stats.retries++;
        log.warn({ err: e, retryInMs: backoff }, `${what} failed; retrying`);
        await pause(backoff);
      }
    }
  }

  /** Takes the lowest-sequence messages held, applies them, acknowledges what committed. */
  async function applyOnce(): Promise<void> {
    const seqs = [...pending.keys()].sort((a, b) => a - b).slice(0, o.batch);
    const batch = seqs.map((s) => pending.get(s) as JsMsg);
    const began = Date.now();
    const r = await applyBatch(
      db,
      t,
      batch.map((m) => ({ seq: m.seq, subject: m.subject, data: m.data })),
      { nextSeq, beforeCommit: () => failpoint(Failpoints.BeforeCommit), streamCreated: o.streamCreated },
    );
    failpoint(Failpoints.AfterCommitBeforeAck);
    for (const [seq, m] of pending) {
      if (seq > r.checkpoint) continue;
      m.ack();
      pending.delete(seq);
    }
    failpoint(Failpoints.AfterAck);
    stats.batches++;
    stats.applied += r.applied;
    stats.skipped += r.skipped;
    stats.deadLettered += r.deadLettered;
    stats.checkpoint = r.checkpoint;
    waitBelow = r.blockedAt ?? Number.POSITIVE_INFINITY;
    metrics.projected.inc({ tenant: t }, r.applied);
    for (const code of r.deadLetterCodes ?? []) metrics.deadLetters.inc({ tenant: t, source: 'projector', code });
    if (tracingOn() && r.audited?.length) auditSpans(r.audited, began, Date.now());
  }

  /**
   * The audit hop: each audit row written, as a span under the checkpoint of the run event
   * it records (an input event, whose checkpoint span the orchestrator derived with the same id).
   */
  function auditSpans(rows: readonly AuditedEvent[], start: number, end: number): void {
    for (const a of rows) {
      if (!a.trace?.sampled) continue;
      emitSpan('projector', {
        traceId: a.trace.id,
        spanId: hopSpanId(a.runId, `audit:${a.seq}`),
        parentSpanId: hopSpanId(a.runId, `checkpoint:${a.seq}`),
        sampled: true,
        name: `audit ${a.kind}`,
        kind: SpanKind.CONSUMER,
        start,
        end,
        attributes: { 'capstan.tenant': t, 'capstan.run_id': a.runId, 'capstan.seq': a.seq, 'capstan.audit.kind': a.kind, 'capstan.hop': 'audit' },
      });
    }
  }

  /** Lag and approvals waiting, before each metrics scrape. */
  async function collect(): Promise<void> {
    const info = await jsm.streams.info(stream);
    metrics.projectorLag.set({ tenant: t }, Math.max(0, info.state.last_seq - stats.checkpoint));
    const a = schema.approvals;
    const [row] = await db
      .select({ n: count() })
      .from(a)
      .where(and(eq(a.tenant, t), eq(a.status, 'waiting')));
    metrics.approvalsWaiting.set({ tenant: t }, row?.n ?? 0);
  }
  let removeCollector: (() => void) | undefined;

  async function run(): Promise<void> {
    await withRetry('realigning the projector consumer', realign);
    if (stopped) return;
    consuming = true;
    await withRetry('starting the projector consumer', consume);
    let backoff = BACKOFF_MIN_MS;
    /** Since when the batch has been held at a gap with no progress. */
    let blockedSince: number | undefined;
    // A gap still open after two redelivery periods will not close by itself.
    const stallMs = 2 * ackWaitMs + 1000;
    while (!stopped) {
      if (pending.size === 0) {
        await idle(60_000);
        continue;
      }
      if (waitBelow !== Number.POSITIVE_INFINITY) {
        const waited = Date.now() - (blockedSince ?? Date.now());
        if (waited >= stallMs) {
          try {
            await reposition(stats.checkpoint, `stream sequence ${waitBelow} waited ${waited} ms for an earlier event`);
            waitBelow = Number.POSITIVE_INFINITY;
            blockedSince = undefined;
          } catch (e) {
            log.warn({ err: e }, 'recreating the projector consumer failed; retrying');
            await pause(backoff);
          }
          continue;
        }
        // The missing message may arrive here, or be applied by another projector process
        // sharing the consumer: look again soon either way.
        await idle(Math.min(GAP_RECHECK_MS, stallMs - waited));
        if (stopped) break;
      }
      try {
        const before = stats.checkpoint;
        await applyOnce();
        backoff = BACKOFF_MIN_MS;
        if (waitBelow === Number.POSITIVE_INFINITY) blockedSince = undefined;
        else if (blockedSince === undefined || stats.checkpoint > before) blockedSince = Date.now();
      } catch (e) {
        // Nothing was acknowledged: the same messages are tried again, after a pause (the
        // app stops this projector if its stream is no longer the one followed).
        if (CapstanError.is(e) && e.code === ErrorCode.ProjectionOutOfSync) o.onOutOfSync();
        stats.retries++;
        log.warn({ err: e, retryInMs: backoff, held: pending.size }, 'projecting a batch failed; retrying');
        await pause(backoff);
        backoff = Math.min(backoff * 2, BACKOFF_MAX_MS);
      }
    }
  }

  return {
    stats,
    start() {
      removeCollector = addCollector(collect);
      loop = run().catch((e: unknown) => log.error({ err: e }, 'projector loop stopped'));
      log.info({ consumer: Consumers.projector, batch: o.batch }, 'projecting tenant');
      return Promise.resolve();
    },
    async stop() {
      removeCollector?.();
      stopped = true;
      wake?.();
      interrupt?.();
      await loop;
      await messages?.close();
      // Unapplied messages go back to the stream at once, for another projector.
      for (const m of pending.values()) m.nak();
      pending.clear();
    },
  };
}

/**
 * The run log on JetStream: read a run's events, and append decisions atomically with the
 * per-run optimistic lock. Failure semantics of {@link appendBatch}:
 * - every group lands, or none does (one JetStream atomic batch);
 * - a group whose run moved on (wrong last subject sequence) is reported as a conflict,
 *   never retried blindly: the caller reloads the run and decides again;
 * - when one group of a multi-run batch conflicts, the others are retried one by one, so
 *   a single stale run cannot hold up the rest.
 */
import type { NatsConnection } from '@nats-io/transport-node';
import { headers as natsHeaders } from '@nats-io/transport-node';
import type { JetStreamManager, StoredMsg } from '@nats-io/jetstream';
import { JetStreamApiError } from '@nats-io/jetstream';
import { nuid } from '@nats-io/nuid';
import {
  decode,
  encode,
  Headers,
  MsgIds,
  parseRunEvent,
  Streams,
  Subjects,
  type RunEvent,
  type RunId,
  type TenantId,
} from '@capstan/schemas';

export interface LoadedRun {
  readonly events: RunEvent[];
  /** Stream sequence of the run's last event; 0 when the run has none. */
  readonly lastStreamSeq: number;
}

/** Reads every event of a run in order (batch direct get over the run's subject). */
export async function readRun(jsm: JetStreamManager, t: TenantId, runId: RunId): Promise<LoadedRun> {
  const stream = Streams.runs(t);
  const subject = Subjects.run(t, runId);
  const events: RunEvent[] = [];
  let lastStreamSeq = 0;
  let from = 1;
  for (;;) {
    let got = 0;
    try {
      const iter = await jsm.direct.getBatch(stream, { seq: from, next_by_subj: subject, batch: 1000 });
      for await (const m of iter) {
        got++;
        events.push(decodeEvent(m));
        lastStreamSeq = m.seq;
      }
    } catch (e) {
      if (!isNotFound(e)) throw e;
    }
    if (got < 1000) break;
    from = lastStreamSeq + 1;
  }
  return { events, lastStreamSeq };
}

export function decodeEvent(m: Pick<StoredMsg, 'data'>): RunEvent {
  return parseRunEvent(decode(m.data));
}

function isNotFound(e: unknown): boolean {
  if (e instanceof JetStreamApiError) return e.code === 10037 || e.status === 404;
  return e instanceof Error && /no message found|not found/i.test(e.message);
}

/** One run's share of an atomic append. */
export interface AppendGroup {
  readonly runId: RunId;
  /** The run's last stream sequence as the decision saw it (0: new run). */
  readonly expectedLastSubjectSeq: number;
  readonly events: readonly RunEvent[];
}

export type AppendOutcome =
  | { readonly ok: true; readonly lastStreamSeq: number }
  | { readonly ok: false; readonly conflict: true; readonly reason: string };

const MAX_BATCH = 1000;
const CONFLICT_CODES = new Set([10071, 10164, 10201]);

/**
 * Appends the groups for one tenant. Returns one outcome per group, in order.
 * Throws only for failures that are not about a run's state (server unreachable…).
 */
export async function appendBatch(nc: NatsConnection, t: TenantId, groups: readonly AppendGroup[], timeoutMs = 5000): Promise<AppendOutcome[]> {
  if (groups.length === 0) return [];
  const total = groups.reduce((n, g) => n + g.events.length, 0);
  if (groups.length > 1 && total > MAX_BATCH) {
    const half = Math.ceil(groups.length / 2);
    return [...(await appendBatch(nc, t, groups.slice(0, half), timeoutMs)), ...(await appendBatch(nc, t, groups.slice(half), timeoutMs))];
  }
  const res = await publishAtomic(nc, t, groups, timeoutMs);
  if (res.ok) {
    // Sequences in an atomic batch are contiguous: hand each group its last one.
    let seq = res.lastSeq - total;
    return groups.map((g) => {
      seq += g.events.length;
      return { ok: true, lastStreamSeq: seq };
    });
  }
  if (groups.length === 1) return [{ ok: false, conflict: true, reason: res.reason }];
  const out: AppendOutcome[] = [];
  for (const g of groups) out.push(...(await appendBatch(nc, t, [g], timeoutMs)));
  return out;
}

type AtomicResult = { ok: true; lastSeq: number } | { ok: false; reason: string };

async function publishAtomic(nc: NatsConnection, t: TenantId, groups: readonly AppendGroup[], timeoutMs: number): Promise<AtomicResult> {
  const batchId = nuid.next();
  const msgs: { subject: string; data: Uint8Array; h: ReturnType<typeof natsHeaders> }[] = [];
  for (const g of groups) {
    const subject = Subjects.run(t, g.runId);
    g.events.forEach((ev, i) => {
      const h = natsHeaders();
      h.set(Headers.MsgId, MsgIds.event(g.runId, ev.seq));
      // The per-run lock sits on the group's first event; atomicity covers the rest.
      if (i === 0) h.set(Headers.ExpectedLastSubjectSeq, String(g.expectedLastSubjectSeq));
      msgs.push({ subject, data: encode(ev), h });
    });
  }
  msgs.forEach((m, i) => {
    m.h.set(Headers.BatchId, batchId);
    m.h.set(Headers.BatchSeq, String(i + 1));
  });
  const last = msgs[msgs.length - 1] as (typeof msgs)[number];
  last.h.set(Headers.BatchCommit, '1');
  for (const m of msgs.slice(0, -1)) nc.publish(m.subject, m.data, { headers: m.h });
  let reply;
  try {
    reply = await nc.request(last.subject, last.data, { headers: last.h, timeout: timeoutMs });
  } catch (e) {
    // No answer: the batch may or may not have landed. Reloading the run settles it.
    return { ok: false, reason: `no acknowledgement (${(e as Error).message})` };
  }
  const ack = reply.json<{ seq?: number; error?: { code: number; err_code: number; description: string } }>();
  if (ack.error) {
    if (CONFLICT_CODES.has(ack.error.err_code)) return { ok: false, reason: ack.error.description };
    throw new JetStreamApiError({ code: ack.error.code, err_code: ack.error.err_code, description: ack.error.description });
  }
  return { ok: true, lastSeq: ack.seq ?? 0 };
}

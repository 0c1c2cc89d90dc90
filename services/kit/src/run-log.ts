/**
 * The run log on JetStream: read a run's events, and append decisions atomically with the
 * per-run optimistic lock. Failure semantics of {@link appendBatch}:
 * - every group lands, or none does (one JetStream atomic batch; a single event is one plain
 *   publish, atomic by itself);
 * - a group whose run moved on (wrong last subject sequence) is reported as a conflict,
 *   never retried blindly: the caller reloads the run and decides again;
 * - when one group of a multi-run batch conflicts, the others are retried one by one, so
 *   a single stale run cannot hold up the rest.
 */
import type { NatsConnection } from '@nats-io/transport-node';
import { headers as natsHeaders } from '@nats-io/transport-node';
import type { JetStreamClient, JetStreamManager, StoredMsg } from '@nats-io/jetstream';
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
  JS_SEQUENCE_CONFLICT_CODES,
  JsApiCode,
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
  if (e instanceof JetStreamApiError) return e.code === JsApiCode.NoMessageFound || e.status === 404;
  return e instanceof Error && /no message found|not found/i.test(e.message);
}

/** One run's share of an atomic append. */
export interface AppendGroup {
  readonly runId: RunId;
  /** The run's last stream sequence as the decision saw it (0: new run). */
  readonly expectedLastSubjectSeq: number;
  readonly events: readonly RunEvent[];
}

export type AppendOutcome = { readonly ok: true; readonly lastStreamSeq: number } | { readonly ok: false; readonly conflict: true; readonly reason: string };

const MAX_BATCH = 1000;
const CONFLICT_CODES = new Set<number>([...JS_SEQUENCE_CONFLICT_CODES, JsApiCode.AtomicBatchDuplicateMessageId]);

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
  const msgs: OutMsg[] = [];
  for (const g of groups) {
    const subject = Subjects.run(t, g.runId);
    g.events.forEach((ev, i) =>
      msgs.push({
        subject,
        data: encode(ev),
        msgId: MsgIds.event(g.runId, ev.seq),
        // The per-run lock sits on the group's first event; atomicity covers the rest.
        ...(i === 0 ? { headers: { [Headers.ExpectedLastSubjectSeq]: String(g.expectedLastSubjectSeq) } } : {}),
      }),
    );
  }
  let ack: BatchAck;
  try {
    // One event alone is atomic by itself: a plain publish under the same lock and id. On an R1
    // file stream nats-server stages every atomic batch in a store of its own (a directory, a
    // metadata file, a rename), which costs several milliseconds a plain publish does not.
    ack = msgs.length === 1 ? await sendOne(nc, msgs[0] as OutMsg, timeoutMs) : await sendAtomic(nc, msgs, timeoutMs);
  } catch (e) {
    // No answer: the batch may or may not have landed. Reloading the run settles it.
    return { ok: false, reason: `no acknowledgement (${(e as Error).message})` };
  }
  // A plain publish whose id is stored already is acknowledged as a duplicate: the event is someone else's.
  if (ack.duplicate) return { ok: false, reason: `event ${msgs[0]?.msgId ?? ''} is stored already` };
  if (ack.error) {
    if (CONFLICT_CODES.has(ack.error.err_code)) return { ok: false, reason: ack.error.description };
    throw new JetStreamApiError({ code: ack.error.code, err_code: ack.error.err_code, description: ack.error.description });
  }
  return { ok: true, lastSeq: ack.seq ?? 0 };
}

/** A message for {@link publishDurably} or an atomic batch. */
export interface OutMsg {
  readonly subject: string;
  readonly data: Uint8Array;
  readonly msgId?: string;
  readonly headers?: Readonly<Record<string, string>>;
}

interface BatchAck {
  seq?: number;
  /** A plain publish's id was seen within the stream's duplicate window. */
  duplicate?: boolean;
  error?: { code: number; err_code: number; description: string };
}

/** Publishes one message with its id and headers and returns the server's acknowledgement. */
async function sendOne(nc: NatsConnection, m: OutMsg, timeoutMs: number): Promise<BatchAck> {
  const h = natsHeaders();
  if (m.msgId) h.set(Headers.MsgId, m.msgId);
  for (const [k, v] of Object.entries(m.headers ?? {})) h.set(k, v);
  const reply = await nc.request(m.subject, m.data, { headers: h, timeout: timeoutMs });
  return reply.json<BatchAck>();
}

/** Sends messages (all of one stream) as one JetStream atomic batch and returns the server's answer. */
async function sendAtomic(nc: NatsConnection, msgs: readonly OutMsg[], timeoutMs: number): Promise<BatchAck> {
  const batchId = nuid.next();
  let reply;
  for (let i = 0; i < msgs.length; i++) {
    const m = msgs[i] as OutMsg;
    const h = natsHeaders();
    if (m.msgId) h.set(Headers.MsgId, m.msgId);
    for (const [k, v] of Object.entries(m.headers ?? {})) h.set(k, v);
    h.set(Headers.BatchId, batchId);
    h.set(Headers.BatchSeq, String(i + 1));
    if (i < msgs.length - 1) {
      nc.publish(m.subject, m.data, { headers: h });
    } else {
      h.set(Headers.BatchCommit, '1');
      reply = await nc.request(m.subject, m.data, { headers: h, timeout: timeoutMs });
    }
  }
  return reply ? reply.json<BatchAck>() : {};
}

/**
 * How messages that need no atomicity (effects, worker results: each is deduplicated by its
 * own id) are published together:
 * - `pipelined`: one acknowledged publish each, all in flight at once. nats-server syncs an
 *   R1 file stream's atomic batch to disk on every commit whatever its `sync_interval`, so
 *   with the default sync this keeps an fsync per batch off the run's critical path;
 * - `atomic`: atomic batches of up to 1000, one acknowledgement each. With
 *   `sync_interval: always` (every publish synced anyway) one sync per batch is fewer.
 */
export type Batching = 'pipelined' | 'atomic';

/**
 * Publishes messages of one stream durably (see {@link Batching}). An atomic batch the server
 * refuses because one of its message ids was already stored (an effect re-derived after a
 * crash) is sent again message by message, where each duplicate is dropped alone.
 * Resolves when every message is stored or was a duplicate; rejects otherwise.
 */
export async function publishDurably(
  nc: NatsConnection,
  js: JetStreamClient,
  msgs: readonly OutMsg[],
  o: { readonly batching?: Batching; readonly timeoutMs?: number } = {},
): Promise<void> {
  const timeoutMs = o.timeoutMs ?? 5000;
  const one = async (m: OutMsg) => {
    const h = natsHeaders();
    for (const [k, v] of Object.entries(m.headers ?? {})) h.set(k, v);
    await js.publish(m.subject, m.data, { headers: h, timeout: timeoutMs, ...(m.msgId ? { msgID: m.msgId } : {}) });
  };
  if ((o.batching ?? 'pipelined') === 'pipelined') {
    await Promise.all(msgs.map(one));
    return;
  }
  for (let i = 0; i < msgs.length; i += MAX_BATCH) {
    const chunk = msgs.slice(i, i + MAX_BATCH);
    if (chunk.length === 1) {
      await one(chunk[0] as OutMsg);
      continue;
    }
    const ack = await sendAtomic(nc, chunk, timeoutMs);
    if (!ack.error) continue;
    if (ack.error.err_code !== JsApiCode.AtomicBatchDuplicateMessageId) {
      throw new JetStreamApiError({ code: ack.error.code, err_code: ack.error.err_code, description: ack.error.description });
    }
    await Promise.all(chunk.map(one));
  }
}

/**
 * Coalesces publishes to one stream made in the same turn of the event loop into one
 * {@link publishDurably} (atomic batches or pipelined, see {@link Batching}). Each caller's
 * promise settles with its batch.
 */
export function coalescingPublisher(nc: NatsConnection, js: JetStreamClient, batching: Batching = 'pipelined'): (m: OutMsg) => Promise<void> {
  let pending: { msgs: OutMsg[]; done: Promise<void> } | undefined;
  return (m) => {
    if (!pending) {
      const batch = { msgs: [m], done: Promise.resolve() };
      batch.done = new Promise<void>((resolve) => setImmediate(resolve)).then(() => {
        pending = undefined;
        return publishDurably(nc, js, batch.msgs, { batching });
      });
      pending = batch;
      return batch.done;
    }
    pending.msgs.push(m);
    return pending.done;
  };
}

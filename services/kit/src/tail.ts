/**
 * Following a stream without a consumer: read by direct gets from a position, in order, and
 * look again when a core subscription on the subject says something was stored (and every
 * few seconds regardless, for anything missed across a reconnect).
 *
 * Why not an ordered consumer: creating a consumer is the platform admin's right only (a
 * consumer's deliver subject could republish a stream onto any subject). Direct gets and a
 * subscription need nothing but read permissions.
 *
 * Failure semantics: `apply` is awaited for each message in stream order; when it throws,
 * the same message is tried again with backoff (250 ms doubling to 5 s) before any later
 * one. A stream that does not exist (yet) is looked for again every few seconds.
 */
import { JetStreamApiCodes, type JetStreamManager, type StoredMsg } from '@nats-io/jetstream';
import type { NatsConnection, Subscription } from '@nats-io/transport-node';
import type { Logger } from './log.js';

export interface TailOptions {
  readonly nc: NatsConnection;
  readonly jsm: JetStreamManager;
  readonly stream: string;
  /** The subject (or wildcard) of the messages followed. */
  readonly subject: string;
  /** The last sequence already handled; the tail starts after it. */
  readonly from: () => Promise<number> | number;
  readonly apply: (m: StoredMsg) => Promise<unknown> | void;
  /** What is applied, for log lines ("a worker admission"). */
  readonly what: string;
  readonly log: Logger;
  /** Look again without news this often (default 5 s). */
  readonly pollMs?: number;
}

export interface StreamTail {
  /** Resolves once every message stored before the call has been applied. */
  caughtUp(): Promise<void>;
  stop(): Promise<void>;
}

const BACKOFF_MIN_MS = 250;
const BACKOFF_MAX_MS = 5000;
const PAGE = 500;

export function tailStream(o: TailOptions): StreamTail {
  let stopped = false;
  let position: number | undefined;
  let wake: (() => void) | undefined;
  let pending = false;
  const waiters: (() => void)[] = [];
  const sleep = (ms: number) =>
    new Promise<void>((resolve) => {
      const timer = setTimeout(done, ms);
      function done() {
        clearTimeout(timer);
        wake = undefined;
        resolve();
      }
      wake = done;
    });
  const sub: Subscription = o.nc.subscribe(o.subject, {
    callback: () => {
      pending = true;
      wake?.();
    },
  });

  async function applyOne(m: StoredMsg): Promise<void> {
    for (let backoff = BACKOFF_MIN_MS; !stopped; backoff = Math.min(backoff * 2, BACKOFF_MAX_MS)) {
      try {
        await o.apply(m);
        return;
      } catch (e) {
        o.log.warn({ err: e, stream: o.stream, seq: m.seq, retryInMs: backoff }, `applying ${o.what} failed; retrying`);
        await sleep(backoff);
      }
    }
  }

  /** Applies everything stored after `position`; returns when a read finds nothing new. */
  async function drain(): Promise<void> {
    position ??= await o.from();
    for (;;) {
      const page: StoredMsg[] = [];
      try {
        for await (const m of await o.jsm.direct.getBatch(o.stream, { seq: position + 1, next_by_subj: o.subject, batch: PAGE })) page.push(m);
      } catch (e) {
        if (!isNothingThere(e)) throw e;
      }
      for (const m of page) {
        if (stopped) return;
        await applyOne(m);
        position = m.seq;
      }
      if (page.length < PAGE) return;
    }
  }

  const loop = (async () => {
    for (let backoff = BACKOFF_MIN_MS; !stopped;) {
      pending = false;
      const asked = waiters.splice(0);
      try {
        await drain();
        backoff = BACKOFF_MIN_MS;
        for (const w of asked) w();
        if (!pending && !stopped) await sleep(o.pollMs ?? 5000);
      } catch (e) {
        // The stream is missing or NATS is away: look again later, without losing the callers.
        waiters.unshift(...asked);
        o.log.debug({ stream: o.stream, err: (e as Error).message, retryInMs: backoff }, `following ${o.stream} failed; retrying`);
        await sleep(backoff);
        backoff = Math.min(backoff * 2, BACKOFF_MAX_MS);
      }
    }
    for (const w of waiters.splice(0)) w();
  })();

  return {
    caughtUp: () =>
      new Promise<void>((resolve) => {
        waiters.push(resolve);
        pending = true;
        wake?.();
      }),
    async stop() {
      stopped = true;
      sub.unsubscribe();
      wake?.();
      await loop;
    },
  };
}

function isNothingThere(e: unknown): boolean {
  const err = e as { code?: unknown; status?: unknown; message?: unknown };
  return err.code === JetStreamApiCodes.NoMessageFound || err.status === 404 || (typeof err.message === 'string' && /no message found/i.test(err.message));
}

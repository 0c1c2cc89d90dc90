/**
 * Following one of a tenant's side streams (worker admissions, policy versions) into
 * Postgres: an ordered consumer from just after the projection's checkpoint, each message
 * applied in order; one that cannot be applied (Postgres away) is tried again with backoff
 * before the next. A tenant without the stream is looked at again every few seconds (it
 * appears when the tenant is provisioned again).
 */
import { DeliverPolicy, type ConsumerMessages, type JetStreamClient, type JetStreamManager } from '@nats-io/jetstream';
import type { TenantId } from '@capstan/schemas';
import { dbErrorMessage, type Logger } from '@capstan/kit';

/** A stored message of a side stream, as the appliers read it. */
export interface StreamMessage {
  readonly seq: number;
  readonly subject: string;
  readonly data: Uint8Array;
  /** When the server stored it. */
  readonly time: Date;
}

export interface StreamFollower {
  stop(): Promise<void>;
}

export interface FollowOptions {
  readonly js: JetStreamClient;
  readonly jsm: JetStreamManager;
  readonly tenant: TenantId;
  readonly stream: string;
  readonly subject: string;
  /** The last sequence already applied. */
  readonly checkpoint: () => Promise<number>;
  readonly apply: (m: StreamMessage) => Promise<unknown>;
  /** What is applied, for log lines ("a worker admission"). */
  readonly what: string;
  readonly log: Logger;
}

const BACKOFF_MIN_MS = 250;
const BACKOFF_MAX_MS = 5000;

export function followStream(o: FollowOptions): StreamFollower {
  const { tenant: t, log } = o;
  let stopped = false;
  let messages: ConsumerMessages | undefined;
  let sleeping: (() => void) | undefined;
  const sleep = (ms: number) =>
    new Promise<void>((resolve) => {
      const timer = setTimeout(resolve, ms);
      sleeping = () => {
        clearTimeout(timer);
        resolve();
      };
    });

  async function follow(): Promise<void> {
    const from = (await o.checkpoint()) + 1;
    await o.jsm.streams.info(o.stream);
    const consumer = await o.js.consumers.get(o.stream, {
      filter_subjects: [o.subject],
      ...(from > 1 ? { deliver_policy: DeliverPolicy.StartSequence, opt_start_seq: from } : { deliver_policy: DeliverPolicy.All }),
    });
    messages = await consumer.consume();
    for await (const m of messages) {
      const msg: StreamMessage = { seq: m.seq, subject: m.subject, data: m.data, time: new Date(Math.floor(m.info.timestampNanos / 1e6)) };
      for (let backoff = BACKOFF_MIN_MS; !stopped; backoff = Math.min(backoff * 2, BACKOFF_MAX_MS)) {
        try {
          await o.apply(msg);
          break;
        } catch (e) {
          log.warn({ tenant: t, err: dbErrorMessage(e), seq: msg.seq, retryInMs: backoff }, `applying ${o.what} failed; retrying`);
          await sleep(backoff);
        }
      }
      if (stopped) break;
    }
  }

  const loop = (async () => {
    for (let backoff = BACKOFF_MIN_MS; !stopped; backoff = Math.min(backoff * 2, BACKOFF_MAX_MS)) {
      try {
        await follow();
      } catch (e) {
        if (stopped) break;
        log.debug({ tenant: t, err: (e as Error).message, retryInMs: backoff }, `following ${o.stream} failed; retrying`);
      }
      if (!stopped) await sleep(backoff);
    }
  })();

  return {
    async stop() {
      stopped = true;
      sleeping?.();
      await messages?.close();
      await loop;
    },
  };
}

/**
 * Following one of a tenant's side streams (worker admissions, policy versions) into
 * Postgres from just after the projection's checkpoint, each message applied in order; one
 * that cannot be applied (Postgres away) is tried again with backoff before the next (kit's
 * `tailStream`: direct gets woken by a subscription, no consumer of its own).
 */
import type { JetStreamManager } from '@nats-io/jetstream';
import type { NatsConnection } from '@nats-io/transport-node';
import { tailStream, type Logger, type StreamTail } from '@capstan/kit';

/** A stored message of a side stream, as the appliers read it. */
export interface StreamMessage {
  readonly seq: number;
  readonly subject: string;
  readonly data: Uint8Array;
  /** When the server stored it. */
  readonly time: Date;
}

export type StreamFollower = Pick<StreamTail, 'stop'>;

export interface FollowOptions {
  readonly nc: NatsConnection;
  readonly jsm: JetStreamManager;
  readonly stream: string;
  readonly subject: string;
  /** The last sequence already applied. */
  readonly checkpoint: () => Promise<number>;
  readonly apply: (m: StreamMessage) => Promise<unknown>;
  /** What is applied, for log lines ("a worker admission"). */
  readonly what: string;
  readonly log: Logger;
}

export function followStream(o: FollowOptions): StreamFollower {
  return tailStream({ nc: o.nc, jsm: o.jsm, stream: o.stream, subject: o.subject, from: o.checkpoint, apply: o.apply, what: o.what, log: o.log });
}

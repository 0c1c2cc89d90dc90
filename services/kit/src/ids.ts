import { createHash, randomBytes } from 'node:crypto';
import { makeRunId, type RunId, type TenantId } from '@capstan/schemas';

/** A fresh run id (ULID): time-ordered, 80 random bits. */
export function newRunId(now = Date.now()): RunId {
  return makeRunId(now, randomBytes(10));
}

/** Hex digest naming an idempotency key's claim subject; the key itself never becomes a subject. */
export function idempotencyHash(t: TenantId, key: string): string {
  return createHash('sha256').update(`${t}\0${key}`).digest('hex').slice(0, 40);
}

/**
 * A run id derived from the submit message that asked for the run, so a redelivered submit
 * yields the same id: time from the message's stream timestamp, entropy from a hash of its
 * tenant and stream sequence.
 */
export function derivedRunId(t: TenantId, streamSeq: number, timestampMs: number): RunId {
  return makeRunId(timestampMs, createHash('sha256').update(`${t}\0submit\0${streamSeq}`).digest());
}

import { createHash, randomBytes } from 'node:crypto';
import { isDerivedRunId, makeRunId, outsideDerivedSpace, type RunId, type TenantId } from '@capstan/schemas';

/** A fresh run id (ULID): time-ordered, 80 random bits, never in the engine's reserved space (`isDerivedRunId`). */
export function newRunId(now = Date.now()): RunId {
  for (;;) {
    const id = makeRunId(now, randomBytes(10));
    if (!isDerivedRunId(id)) return id;
  }
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
  // Out of the reserved space: its ids are the ones runs derive for the runs they start.
  return outsideDerivedSpace(makeRunId(timestampMs, createHash('sha256').update(`${t}\0submit\0${streamSeq}`).digest()));
}

/**
 * Identifiers. A tenant id or run id is validated once, here, and carried as a branded
 * string afterwards, so no unvalidated value can ever be spelled into a subject.
 */
import { ErrorCode, InvalidNameError, showValue } from './errors.js';

declare const kTenant: unique symbol;
declare const kRun: unique symbol;

/** `^[a-z0-9][a-z0-9-]{0,31}$`: safe as a subject token and inside a stream name. */
export type TenantId = string & { readonly [kTenant]: true };
/** A ULID (26 characters of Crockford base32), made by the platform. */
export type RunId = string & { readonly [kRun]: true };

export const TENANT_ID_PATTERN = /^[a-z0-9][a-z0-9-]{0,31}$/;
export const RUN_ID_PATTERN = /^[0-7][0-9A-HJKMNP-TV-Z]{25}$/;

export function isTenantId(value: unknown): value is TenantId {
  return typeof value === 'string' && TENANT_ID_PATTERN.test(value);
}

/** @throws InvalidNameError (`invalid_tenant_id`) */
export function parseTenantId(value: unknown): TenantId {
  if (isTenantId(value)) return value;
  throw new InvalidNameError(ErrorCode.InvalidTenantId, 'tenant id', showValue(value), TENANT_ID_PATTERN.source);
}

export function isRunId(value: unknown): value is RunId {
  return typeof value === 'string' && RUN_ID_PATTERN.test(value);
}

/** @throws InvalidNameError (`invalid_run_id`) */
export function parseRunId(value: unknown): RunId {
  if (isRunId(value)) return value;
  throw new InvalidNameError(ErrorCode.InvalidRunId, 'run id', showValue(value), 'a ULID (26 Crockford base32 characters)');
}

const CROCKFORD = '0123456789ABCDEFGHJKMNPQRSTVWXYZ';

/**
 * Builds a ULID from a millisecond timestamp and at least 10 bytes of entropy. Pure: the
 * caller supplies the clock and the randomness (or a hash, for ids that must be derived
 * deterministically from a message).
 */
export function makeRunId(timeMs: number, entropy: Uint8Array): RunId {
  if (entropy.length < 10) throw new RangeError('makeRunId needs 10 bytes of entropy');
  // 48 bits of milliseconds; anything else would spell characters outside the alphabet.
  if (!Number.isFinite(timeMs) || timeMs < 0 || timeMs >= 2 ** 48) throw new RangeError('makeRunId needs a time in [0, 2^48) ms');
  let t = Math.floor(timeMs);
  let time = '';
  for (let i = 0; i < 10; i++) {
    time = CROCKFORD[t % 32] + time;
    t = Math.floor(t / 32);
  }
  // 80 bits of entropy, 5 bits per character.
  let bits = 0;
  let acc = 0;
  let rand = '';
  for (let i = 0; i < 10; i++) {
    acc = (acc << 8) | (entropy[i] ?? 0);
    bits += 8;
    while (bits >= 5) {
      bits -= 5;
      rand += CROCKFORD[(acc >> bits) & 31];
    }
  }
  return (time + rand) as RunId;
}

/** Milliseconds encoded in a run id's first ten characters. */
export function runIdTime(runId: RunId): number {
  let t = 0;
  for (const ch of runId.slice(0, 10)) t = t * 32 + CROCKFORD.indexOf(ch);
  return t;
}

/**
 * The mark of the reserved run-id space: ids whose random part begins with these four
 * characters (20 bits) are the engine's, derived for the runs a run starts (its children, its
 * continuation; engine 3 on). The intake refuses a submit that names one unless the
 * orchestrator signed it, so no client can take a derived id before the run that derives it
 * starts that run. A random id lands here once in 2^20: the platform's own id makers step out.
 */
export const DERIVED_RUN_ID_MARK = 'CAPS';

/** Whether a run id lies in the reserved space (see {@link DERIVED_RUN_ID_MARK}). */
export function isDerivedRunId(runId: string): boolean {
  return runId.length === 26 && runId.startsWith(DERIVED_RUN_ID_MARK, 10);
}

/** The id with its random part's first four characters set to the mark: in the reserved space. */
export function markDerived(runId: RunId): RunId {
  return (runId.slice(0, 10) + DERIVED_RUN_ID_MARK + runId.slice(14)) as RunId;
}

/**
 * The id unchanged, unless it lies in the reserved space by chance: then its first random
 * character is changed, deterministically (an id derived from a message stays derived from it).
 */
export function outsideDerivedSpace(runId: RunId): RunId {
  return isDerivedRunId(runId) ? ((runId.slice(0, 10) + 'D' + runId.slice(11)) as RunId) : runId;
}

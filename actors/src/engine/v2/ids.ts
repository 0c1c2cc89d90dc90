/**
 * Run ids a run derives for the runs it starts (a child, a continue-as-new): a pure function
 * of its own id and what starts it, so a redelivered command, a crash between append and
 * publish, or a replay can never start a second one. The ULID's time is the deriving run's;
 * its 80 random bits are a hash (FNV-1a, two lanes of 64 bits) of the run id and the key.
 */
import { makeRunId, runIdTime, type RunId } from '@capstan/schemas';

const MASK = (1n << 64n) - 1n;
const PRIME = 0x100000001b3n;

function fnv1a64(text: string, basis: bigint): bigint {
  let h = basis;
  for (let i = 0; i < text.length; i++) {
    h ^= BigInt(text.charCodeAt(i));
    h = (h * PRIME) & MASK;
  }
  return h;
}

/** The id of the run `runId` starts for `key` (`child:<step>:<attempt>`, `continue`). */
export function derivedRunId(runId: string, key: string): RunId {
  const text = `capstan/derived/v1\n${runId}\n${key}`;
  const a = fnv1a64(text, 0xcbf29ce484222325n);
  const b = fnv1a64(text, 0x84222325cbf29ce4n);
  const bytes = new Uint8Array(16);
  for (let i = 0; i < 8; i++) {
    bytes[i] = Number((a >> BigInt(8 * i)) & 0xffn);
    bytes[8 + i] = Number((b >> BigInt(8 * i)) & 0xffn);
  }
  return makeRunId(runIdTime(runId as RunId), bytes);
}

export const childRunIdOf = (runId: string, step: string, attempt: number): RunId => derivedRunId(runId, `child:${step}:${attempt}`);
export const continuedRunIdOf = (runId: string): RunId => derivedRunId(runId, 'continue');

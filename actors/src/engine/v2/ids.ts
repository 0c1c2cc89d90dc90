/**
 * Run ids a run derives for the runs it starts (a child, a continue-as-new): a pure function
 * of its own id and what starts it, so a redelivered command, a crash between append and
 * publish, or a replay can never start a second one. The ULID's time is the deriving run's;
 * its 80 random bits are a hash (FNV-1a, two lanes of 64 bits) of the run id and the key.
 *
 * Anyone can compute these ids, so a client could submit a run under one before the parent
 * starts its child there (the child's step then fails, attempt after attempt). From engine 3
 * the ids lie in the reserved space (`DERIVED_RUN_ID_MARK`: the random part's first 20 bits
 * are the mark, 60 bits of hash remain), where the intake lets only the orchestrator submit.
 * Engine 2 derived them unmarked; its runs keep doing so, for their recorded decisions name
 * those ids and replay must decide them again.
 */
import { makeRunId, markDerived, runIdTime, type RunId } from '@capstan/schemas';
import { CURRENT_ENGINE } from '../current.js';

const MASK = (1n << 64n) - 1n;
const PRIME = 0x100000001b3n;

/** The engine whose runs derive the ids of the runs they start in the reserved space. */
export const MARKED_IDS_SINCE_ENGINE = 3;

function fnv1a64(text: string, basis: bigint): bigint {
  let h = basis;
  for (let i = 0; i < text.length; i++) {
    h ^= BigInt(text.charCodeAt(i));
    h = (h * PRIME) & MASK;
  }
  return h;
}

/** The id of the run `runId` starts for `key` (`child:<step>:<attempt>`, `continue`), as engine `engine` derives it. */
function derivedRunId(runId: string, key: string, engine: number): RunId {
  const text = `capstan/derived/v1\n${runId}\n${key}`;
  const a = fnv1a64(text, 0xcbf29ce484222325n);
  const b = fnv1a64(text, 0x84222325cbf29ce4n);
  const bytes = new Uint8Array(16);
  for (let i = 0; i < 8; i++) {
    bytes[i] = Number((a >> BigInt(8 * i)) & 0xffn);
    bytes[8 + i] = Number((b >> BigInt(8 * i)) & 0xffn);
  }
  const id = makeRunId(runIdTime(runId as RunId), bytes);
  return engine >= MARKED_IDS_SINCE_ENGINE ? markDerived(id) : id;
}

/**
 * The id of the child a run started by engine `engine` (default: the engine new runs get)
 * starts for attempt `attempt` of its child step `step`.
 */
export const childRunIdOf = (runId: string, step: string, attempt: number, engine: number = CURRENT_ENGINE): RunId => derivedRunId(runId, `child:${step}:${attempt}`, engine);

/** The id of the run that continues a run started by engine `engine` (default: the engine new runs get). */
export const continuedRunIdOf = (runId: string, engine: number = CURRENT_ENGINE): RunId => derivedRunId(runId, 'continue', engine);

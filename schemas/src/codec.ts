/**
 * The wire codec. One msgpackr instance, configured so every stored message decodes on its
 * own years later (no shared record structures). Intake also accepts JSON, so any NATS
 * client can submit without a MessagePack library.
 */
import { Packr } from 'msgpackr';
import { DecodeError, PayloadTooLargeError } from './errors.js';
import { LIMITS } from './limits.js';
import { isPlainObject } from './validate.js';

const packr = new Packr({ useRecords: false, mapsAsObjects: true, moreTypes: false, int64AsType: 'number' });

export function encode(value: unknown): Uint8Array {
  return packr.pack(value);
}

/** Encoded size in bytes, as stored. */
export function encodedSize(value: unknown): number {
  return packr.pack(value).length;
}

const OPEN_BRACE = 0x7b;

/**
 * Decodes MessagePack, or JSON when the payload starts with `{` (a lone positive fixint in
 * MessagePack, which is never a valid Capstan message, so the two cannot be confused).
 * Only plain objects are accepted at the top level.
 * @throws DecodeError | PayloadTooLargeError
 */
export function decode(bytes: Uint8Array, limit: number = LIMITS.messageBytes): Record<string, unknown> {
  if (bytes.length > limit) throw new PayloadTooLargeError('message', bytes.length, limit);
  if (bytes.length === 0) throw new DecodeError('empty payload');
  let value: unknown;
  const first = firstNonSpace(bytes);
  try {
    if (first === OPEN_BRACE) {
      value = JSON.parse(new TextDecoder('utf-8', { fatal: true }).decode(bytes)) as unknown;
    } else {
      value = packr.unpack(bytes);
    }
  } catch (e) {
    // Hostile nesting surfaces as a RangeError from the decoder; all of it is poison.
    throw new DecodeError(first === OPEN_BRACE ? 'invalid JSON' : 'invalid MessagePack', { cause: e });
  }
  if (!isPlainObject(value)) throw new DecodeError('top level must be a map/object');
  return value;
}

function firstNonSpace(bytes: Uint8Array): number | undefined {
  for (const b of bytes) {
    if (b !== 0x20 && b !== 0x0a && b !== 0x0d && b !== 0x09) return b;
  }
  return undefined;
}

/** The pure parts of taking a delivery: the route's field selection and the per-tenant rate limit. */
import { isPlainObject, SchemaError, type JsonValue } from '@capstan/schemas';

type JsonObject = { [k: string]: JsonValue };

/** Resolves a JSON Pointer (RFC 6901) in `doc`; undefined when nothing is there. */
function resolvePointer(doc: JsonValue, pointer: string): JsonValue | undefined {
  if (pointer === '') return doc;
  let at: JsonValue | undefined = doc;
  for (const raw of pointer.slice(1).split('/')) {
    const key = raw.replace(/~1/g, '/').replace(/~0/g, '~');
    if (Array.isArray(at)) {
      if (!/^(0|[1-9]\d*)$/.test(key)) return undefined;
      at = at[Number(key)];
    } else if (isPlainObject(at)) {
      at = Object.hasOwn(at, key) ? (at as JsonObject)[key] : undefined;
    } else {
      return undefined;
    }
    if (at === undefined) return undefined;
  }
  return at;
}

/**
 * The workflow input a route makes of a delivery's body: each field of `fields` taken from
 * its JSON Pointer, or, without `fields`, the body itself (which must then be an object).
 * @throws SchemaError naming every pointer that finds nothing (every selected field is required)
 */
export function selectInput(body: JsonValue, fields: Readonly<Record<string, string>> | undefined): JsonObject {
  if (fields === undefined) {
    if (!isPlainObject(body)) throw new SchemaError('webhook body', '', 'must be a JSON object when the route selects no fields');
    return body as JsonObject;
  }
  const out: JsonObject = {};
  const missing: string[] = [];
  for (const [key, pointer] of Object.entries(fields)) {
    const v = resolvePointer(body, pointer);
    if (v === undefined) missing.push(`${key} (${pointer || '""'})`);
    else out[key] = v;
  }
  if (missing.length > 0) throw new SchemaError('webhook body', '', `has nothing at ${missing.join(', ')}`);
  return out;
}

export interface RateLimiter {
  /** Takes a token for `key`; otherwise the milliseconds until one is there. */
  take(key: string, now: number): { ok: true } | { ok: false; retryAfterMs: number };
}

/** One token bucket per key: `rate` tokens a second, holding at most `burst`. */
export function createRateLimiter(rate: number, burst: number): RateLimiter {
  const buckets = new Map<string, { tokens: number; at: number }>();
  return {
    take(key, now) {
      const b = buckets.get(key) ?? { tokens: burst, at: now };
      b.tokens = Math.min(burst, b.tokens + ((now - b.at) / 1000) * rate);
      b.at = now;
      buckets.set(key, b);
      if (b.tokens >= 1) {
        b.tokens -= 1;
        return { ok: true };
      }
      return { ok: false, retryAfterMs: Math.ceil(((1 - b.tokens) / rate) * 1000) };
    },
  };
}

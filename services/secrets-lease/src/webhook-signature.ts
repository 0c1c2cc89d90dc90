/**
 * Standard Webhooks signatures (standardwebhooks.com): `webhook-signature` holds one or more
 * space-separated `v1,<base64 HMAC-SHA256>` of `<webhook-id>.<webhook-timestamp>.<body>`
 * under the base64 key of a `whsec_…` secret. Several signatures (the sender rotating) and
 * several keys (the receiver rotating) may be given: any match is valid. Comparisons are
 * constant-time after a length check; nothing here logs or returns a key.
 */
import { createHmac, timingSafeEqual } from 'node:crypto';
import { InvalidArgumentError } from '@capstan/schemas';

/** The signed parts of a delivery, as received. */
export interface SignedDelivery {
  readonly id: string;
  readonly timestamp: string;
  readonly body: Uint8Array;
  /** The `webhook-signature` header as received. */
  readonly signature: string;
}

const SECRET_PREFIX = 'whsec_';
const BASE64 = /^[A-Za-z0-9+/]+={0,2}$/;

/**
 * The HMAC key of a signing secret: the base64 after `whsec_` (the form senders hand out),
 * 24 to 64 bytes. @throws InvalidArgumentError naming `name`, never showing the value
 */
export function webhookKey(name: string, secret: string): Buffer {
  const b64 = secret.startsWith(SECRET_PREFIX) ? secret.slice(SECRET_PREFIX.length) : secret;
  const key = BASE64.test(b64) ? Buffer.from(b64, 'base64') : Buffer.alloc(0);
  if (key.length < 24 || key.length > 64) throw new InvalidArgumentError(`secret ${name} is not a webhook signing secret: expected whsec_ and the base64 of 24 to 64 bytes`);
  return key;
}

/** The `v1` signature of a delivery under one key (base64). */
export function signDelivery(key: Uint8Array, id: string, timestamp: string, body: Uint8Array): Buffer {
  return createHmac('sha256', key).update(`${id}.${timestamp}.`, 'utf8').update(body).digest();
}

/** Whether any `v1` signature in the header matches the delivery under any of `keys`. */
export function verifyDelivery(keys: readonly Uint8Array[], d: SignedDelivery): boolean {
  const given: Buffer[] = [];
  for (const part of d.signature.split(' ').slice(0, 16)) {
    const comma = part.indexOf(',');
    if (comma < 0 || part.slice(0, comma) !== 'v1') continue;
    const b64 = part.slice(comma + 1);
    if (!BASE64.test(b64)) continue;
    given.push(Buffer.from(b64, 'base64'));
  }
  let ok = false;
  for (const key of keys) {
    const expected = signDelivery(key, d.id, d.timestamp, d.body);
    // No early exit: every candidate is compared, so timing says nothing about which matched.
    for (const g of given) if (g.length === expected.length && timingSafeEqual(g, expected)) ok = true;
  }
  return ok;
}

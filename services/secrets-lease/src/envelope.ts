/**
 * Envelope encryption. The master key (config) wraps one random data key per tenant and
 * key version; each secret value is encrypted with its tenant's data key. Everything is
 * AES-256-GCM with associated data naming exactly what the bytes are (tenant, key version;
 * tenant, name, secret version), so a ciphertext moved to another row, tenant or version
 * does not decrypt.
 *
 * The master key also derives, per tenant, the X25519 key the CLI seals `put`/`rotate`
 * values to: every instance of the service holds the same one, and no key is stored.
 */
import { createCipheriv, createDecipheriv, createHmac, hkdfSync, randomBytes } from 'node:crypto';
import { recipientFromSeed, type Recipient } from '@capstan/kit';
import type { TenantId } from '@capstan/schemas';

const NONCE = 12;
const TAG = 16;

export interface Keyring {
  /** A fingerprint of the master key, stored with every data key it wraps. */
  readonly masterKeyId: string;
  /** A fresh data key, and its wrapped form (nonce ‖ ciphertext ‖ tag). */
  newDataKey(tenant: TenantId, version: number): { key: Buffer; wrapped: Buffer };
  /** @throws Error when this master key did not wrap it (or the bytes were altered) */
  unwrap(tenant: TenantId, version: number, wrapped: Uint8Array): Buffer;
  /** The key values from the CLI are sealed to, for this tenant. */
  putRecipient(tenant: TenantId): Recipient;
}

export function createKeyring(masterKey: Buffer): Keyring {
  if (masterKey.length !== 32) throw new RangeError('the master key is 32 bytes');
  const master = Buffer.from(masterKey);
  const masterKeyId = createHmac('sha256', master).update('capstan/secrets/master-key-id').digest('hex').slice(0, 16);
  const wrapAad = (t: TenantId, v: number) => Buffer.from(`capstan/secrets/data-key/v1\n${t}\n${v}`);
  const recipients = new Map<TenantId, Recipient>();
  return {
    masterKeyId,
    newDataKey(t, version) {
      const key = randomBytes(32);
      return { key, wrapped: gcmSeal(master, key, wrapAad(t, version)) };
    },
    unwrap(t, version, wrapped) {
      return gcmOpen(master, wrapped, wrapAad(t, version));
    },
    putRecipient(t) {
      let r = recipients.get(t);
      if (!r) {
        const seed = Buffer.from(hkdfSync('sha256', master, Buffer.alloc(0), `capstan/secrets/put-key/v1\n${t}`, 32));
        r = recipientFromSeed(seed);
        seed.fill(0);
        recipients.set(t, r);
      }
      return r;
    },
  };
}

/** What a secret value is bound to: moved anywhere else, it does not decrypt. */
export function valueAad(t: TenantId, name: string, version: number, keyVersion: number): Buffer {
  return Buffer.from(`capstan/secrets/value/v1\n${t}\n${name}\n${version}\n${keyVersion}`);
}

/** `{ nonce, ciphertext ‖ tag }` of `plaintext` under `key`. */
export function encryptValue(key: Buffer, plaintext: Uint8Array, aad: Buffer): { nonce: Buffer; ciphertext: Buffer } {
  const sealed = gcmSeal(key, plaintext, aad);
  return { nonce: sealed.subarray(0, NONCE), ciphertext: sealed.subarray(NONCE) };
}

/** @throws Error when the key, the associated data or the bytes do not match */
export function decryptValue(key: Buffer, nonce: Uint8Array, ciphertext: Uint8Array, aad: Buffer): Buffer {
  return gcmOpen(key, Buffer.concat([nonce, ciphertext]), aad);
}

function gcmSeal(key: Buffer, plaintext: Uint8Array, aad: Buffer): Buffer {
  const nonce = randomBytes(NONCE);
  const c = createCipheriv('aes-256-gcm', key, nonce);
  c.setAAD(aad);
  return Buffer.concat([nonce, c.update(plaintext), c.final(), c.getAuthTag()]);
}

function gcmOpen(key: Buffer, sealed: Uint8Array, aad: Buffer): Buffer {
  const b = Buffer.from(sealed.buffer, sealed.byteOffset, sealed.byteLength);
  if (b.length < NONCE + TAG) throw new Error('ciphertext too short');
  const d = createDecipheriv('aes-256-gcm', key, b.subarray(0, NONCE));
  d.setAAD(aad);
  d.setAuthTag(b.subarray(b.length - TAG));
  return Buffer.concat([d.update(b.subarray(NONCE, b.length - TAG)), d.final()]);
}

/**
 * Sealed boxes: bytes only the holder of one X25519 private key can open.
 *
 * `seal` makes an ephemeral X25519 key pair, agrees a shared secret with the recipient's
 * public key, derives a one-time AES-256-GCM key with HKDF-SHA256 (salt: both public keys;
 * info: the box version) and encrypts with the caller's associated data. Opening needs the
 * recipient's private key *and* the same associated data, so a box sealed for one lease
 * (tenant, run, step, attempt, lease id) opens for no other.
 *
 * The secrets-lease service seals redeemed values to the sandbox service's key; the CLI seals
 * a `put` value to the lease service's per-tenant key. Private keys never leave the process
 * that made them.
 */
import { createCipheriv, createDecipheriv, createPrivateKey, createPublicKey, diffieHellman, generateKeyPairSync, hkdfSync, randomBytes, type KeyObject } from 'node:crypto';
import { InvalidArgumentError, SEALED_BOX_VERSION, type SealedBox } from '@capstan/schemas';

const INFO = Buffer.from(`capstan sealed-box v${SEALED_BOX_VERSION}`);
/** DER prefix of an X25519 SubjectPublicKeyInfo; the raw 32-byte key follows it. */
const SPKI_PREFIX = Buffer.from('302a300506032b656e032100', 'hex');
/** DER prefix of an X25519 PKCS#8 private key; the raw 32-byte scalar follows it. */
const PKCS8_PREFIX = Buffer.from('302e020100300506032b656e04220420', 'hex');

/** A recipient: its public key to hand out, and the only way to open what is sealed to it. */
export interface Recipient {
  /** base64 of the raw 32-byte X25519 public key. */
  readonly publicKey: string;
  /** @throws InvalidArgumentError when the box was not sealed to this key with this `aad`, or was altered. */
  open(sealed: SealedBox, aad: Uint8Array): Uint8Array;
}

/** A fresh X25519 key pair; the private key stays inside the returned object. */
export function generateRecipient(): Recipient {
  const { privateKey, publicKey } = generateKeyPairSync('x25519');
  return recipientOf(privateKey, publicKey);
}

/**
 * The recipient of a 32-byte X25519 private scalar (for a key derived from a master key, so
 * every instance of a service holds the same one).
 */
export function recipientFromSeed(seed: Uint8Array): Recipient {
  if (seed.length !== 32) throw new InvalidArgumentError('an X25519 private key is 32 bytes');
  const privateKey = createPrivateKey({ key: Buffer.concat([PKCS8_PREFIX, seed]), format: 'der', type: 'pkcs8' });
  return recipientOf(privateKey, createPublicKey(privateKey));
}

function recipientOf(privateKey: KeyObject, publicKey: KeyObject): Recipient {
  const raw = rawPublic(publicKey);
  return {
    publicKey: raw.toString('base64'),
    open(sealed, aad) {
      if (sealed.v !== SEALED_BOX_VERSION) throw new InvalidArgumentError(`sealed box version ${String(sealed.v)} is not supported`);
      let shared: Buffer;
      try {
        shared = diffieHellman({ privateKey, publicKey: publicFromRaw(sealed.epk) });
      } catch {
        throw new InvalidArgumentError('the sealed box cannot be opened: bad ephemeral key');
      }
      const key = boxKey(shared, sealed.epk, raw);
      const ct = Buffer.from(sealed.ct.buffer, sealed.ct.byteOffset, sealed.ct.byteLength);
      const d = createDecipheriv('aes-256-gcm', key, sealed.nonce);
      d.setAAD(aad);
      d.setAuthTag(ct.subarray(ct.length - 16));
      try {
        return Buffer.concat([d.update(ct.subarray(0, ct.length - 16)), d.final()]);
      } catch {
        // Wrong key, wrong associated data, or altered bytes: GCM cannot tell which, nor should we.
        throw new InvalidArgumentError('the sealed box cannot be opened: not sealed to this key for this scope, or altered');
      } finally {
        key.fill(0);
        shared.fill(0);
      }
    },
  };
}

/**
 * Seals `plaintext` to a recipient's X25519 public key (base64 of the raw 32 bytes or of
 * SPKI DER) with the associated data `aad`.
 * @throws InvalidArgumentError when `recipientKey` is not an X25519 public key
 */
export function seal(recipientKey: string, plaintext: Uint8Array, aad: Uint8Array): SealedBox {
  const recipient = parseRecipientKey(recipientKey);
  const raw = rawPublic(recipient);
  const eph = generateKeyPairSync('x25519');
  const epk = rawPublic(eph.publicKey);
  let shared: Buffer;
  try {
    shared = diffieHellman({ privateKey: eph.privateKey, publicKey: recipient });
  } catch {
    // A low-order point: no shared secret worth the name.
    throw new InvalidArgumentError('recipientKey is not a usable X25519 public key');
  }
  const key = boxKey(shared, epk, raw);
  const nonce = randomBytes(12);
  try {
    const c = createCipheriv('aes-256-gcm', key, nonce);
    c.setAAD(aad);
    const ct = Buffer.concat([c.update(plaintext), c.final(), c.getAuthTag()]);
    return { v: SEALED_BOX_VERSION, epk: new Uint8Array(epk), nonce: new Uint8Array(nonce), ct: new Uint8Array(ct) };
  } finally {
    key.fill(0);
    shared.fill(0);
  }
}

/**
 * An X25519 public key from base64 (raw 32 bytes, or SPKI DER).
 * @throws InvalidArgumentError
 */
export function parseRecipientKey(b64: string): KeyObject {
  const bytes = Buffer.from(b64, b64.includes('-') || b64.includes('_') ? 'base64url' : 'base64');
  // SPKI DER of an X25519 key is the fixed prefix and the raw key: anything else is not one.
  const raw =
    bytes.length === 32
      ? bytes
      : bytes.length === SPKI_PREFIX.length + 32 && bytes.subarray(0, SPKI_PREFIX.length).equals(SPKI_PREFIX)
        ? bytes.subarray(SPKI_PREFIX.length)
        : undefined;
  try {
    if (!raw) throw new Error('not x25519');
    return publicFromRaw(raw);
  } catch {
    throw new InvalidArgumentError('recipientKey must be an X25519 public key: base64 of its 32 raw bytes or of its SPKI DER');
  }
}

// Keys go in and out as JWK: OpenSSL's DER encoders cost a quarter of a millisecond a key,
// JWK a few microseconds, and a redemption handles four keys.
function publicFromRaw(raw: Uint8Array): KeyObject {
  if (raw.length !== 32) throw new InvalidArgumentError('an X25519 public key is 32 bytes');
  return createPublicKey({ key: { kty: 'OKP', crv: 'X25519', x: Buffer.from(raw).toString('base64url') }, format: 'jwk' });
}

function rawPublic(key: KeyObject): Buffer {
  return Buffer.from(key.export({ format: 'jwk' }).x ?? '', 'base64url');
}

function boxKey(shared: Buffer, epk: Uint8Array, recipient: Uint8Array): Buffer {
  return Buffer.from(hkdfSync('sha256', shared, Buffer.concat([epk, recipient]), INFO, 32));
}

/**
 * Signed messages: who sent a command or a work item is proven, not claimed.
 *
 * Every principal already holds an Ed25519 nkey and a user JWT issued by an account (a
 * person's `.creds`, a service's identity with its per-tenant JWT from the registry). A
 * sender signs `subject \n sha256(body)` with its seed and puts its JWT and the signature in
 * two headers. A receiver checks the JWT's own signature, that its issuer is an account it
 * trusts (the tenant's account key from the registry), that it has not expired, and the
 * message signature against the JWT's subject key. The author it returns (public key, name,
 * role, groups) comes from the JWT, which only the account key could have written: a free-text
 * `by` field proves nothing; this does.
 *
 * The subject is part of what is signed, so a signature for `cmd.approve` of one tenant is no
 * signature for another subject or tenant. Replaying the same signed message is the same
 * message (commands carry their own ids and are idempotent).
 */
import { createHash, createPrivateKey, createPublicKey, sign as edSign, verify as edVerify, type KeyObject } from 'node:crypto';
import { decode as decodeJwt, fromSeed } from '@nats-io/jwt';
import { headers as natsHeaders, type MsgHdrs } from '@nats-io/transport-node';
import { Headers, UnprovenError } from '@capstan/schemas';

/** A principal that can sign: its user JWT (public) and its seed (secret, never logged). */
export interface Signer {
  readonly jwt: string;
  readonly publicKey: string;
  sign(subject: string, body: Uint8Array): string;
}

/** Who signed a message, as the issuing account wrote it into the JWT. */
export interface Author {
  readonly publicKey: string;
  /** The JWT's name (a credential name, e.g. `alice`, or `orchestrator@acme`). */
  readonly name: string;
  /** The account that issued the JWT. */
  readonly issuer: string;
  readonly role?: string;
  readonly tenant?: string;
  /** `capstan-group:<g>` tags: approver groups and the like. */
  readonly groups: readonly string[];
  /** `capstan-pool:<p>` tags: the pools a worker's credential may pull. */
  readonly pools: readonly string[];
}

function digest(subject: string, body: Uint8Array): Uint8Array {
  const h = createHash('sha256');
  h.update(subject);
  h.update('\n');
  h.update(body);
  return new Uint8Array(h.digest());
}

// Ed25519 through node:crypto (native): the same signatures nkeys makes, at a small fraction
// of its pure-JavaScript cost, which a work item pays on every step.
const BASE32 = 'ABCDEFGHIJKLMNOPQRSTUVWXYZ234567';

/** The bytes of an nkey's base32 text (prefix, key, CRC). */
function base32(text: string): Buffer {
  const out: number[] = [];
  let bits = 0;
  let value = 0;
  for (const c of text) {
    const v = BASE32.indexOf(c);
    if (v < 0) throw new Error('not base32');
    value = (value << 5) | v;
    bits += 5;
    if (bits >= 8) {
      out.push((value >>> (bits - 8)) & 0xff);
      bits -= 8;
    }
  }
  return Buffer.from(out);
}

/** An nkey public key (`U…`, `A…`): one prefix byte, 32 key bytes, a 2-byte CRC. */
function publicKeyObject(nkey: string): KeyObject {
  const raw = base32(nkey);
  if (raw.length !== 35) throw new Error('not an nkey public key');
  return createPublicKey({ key: { kty: 'OKP', crv: 'Ed25519', x: raw.subarray(1, 33).toString('base64url') }, format: 'jwk' });
}

/** Verifying keys by nkey, so a frequent signer's key is parsed once (bounded). */
const publicKeys = new Map<string, KeyObject>();
function verifyingKey(nkey: string): KeyObject {
  let k = publicKeys.get(nkey);
  if (!k) {
    k = publicKeyObject(nkey);
    if (publicKeys.size >= 4096) publicKeys.clear();
    publicKeys.set(nkey, k);
  }
  return k;
}

/** A signer from a user JWT and its seed (the two halves of a `.creds` file). */
export function signerOf(jwt: string, seed: Uint8Array): Signer {
  const kp = fromSeed(seed);
  const publicKey = kp.getPublicKey();
  // A seed (`S…`): two prefix bytes, the 32-byte Ed25519 seed, a 2-byte CRC.
  const raw = base32(new TextDecoder().decode(seed));
  const key = createPrivateKey({
    key: { kty: 'OKP', crv: 'Ed25519', d: raw.subarray(2, 34).toString('base64url'), x: base32(publicKey).subarray(1, 33).toString('base64url') },
    format: 'jwk',
  });
  raw.fill(0);
  return {
    jwt,
    publicKey,
    sign: (subject, body) => edSign(null, digest(subject, body), key).toString('base64url'),
  };
}

type Claims = ReturnType<typeof decodeJwt<{ tags?: string[] }>>;
/**
 * JWTs whose own signature was checked already, by their exact text: the same text verifies
 * the same way every time (expiry and issuer are still judged on each message). Bounded.
 */
const checkedJwts = new Map<string, Claims>();
function claimsOf(jwt: string): Claims {
  let c = checkedJwts.get(jwt);
  if (!c) {
    // decode verifies the JWT's signature against its issuer.
    c = decodeJwt<{ tags?: string[] }>(jwt);
    if (checkedJwts.size >= 4096) checkedJwts.clear();
    checkedJwts.set(jwt, c);
  }
  return c;
}

/** The proof headers for `subject` and `body` as a record (for messages built as records, like kit's OutMsg). */
export function proofRecord(signer: Signer, subject: string, body: Uint8Array): { [Headers.Signer]: string; [Headers.Signature]: string } {
  return { [Headers.Signer]: signer.jwt, [Headers.Signature]: signer.sign(subject, body) };
}

/** Adds the proof headers for `subject` and `body` to `h` (made when absent) and returns it. */
export function proofHeaders(signer: Signer, subject: string, body: Uint8Array, h: MsgHdrs = natsHeaders()): MsgHdrs {
  for (const [k, v] of Object.entries(proofRecord(signer, subject, body))) h.set(k, v);
  return h;
}

function tagValues(tags: readonly string[] | undefined, key: string): string[] {
  return (tags ?? []).filter((t) => t.startsWith(`${key}:`)).map((t) => t.slice(key.length + 1));
}

export interface Trust {
  /** Account public keys whose users are believed (a tenant's account key). */
  readonly accounts: ReadonlySet<string> | readonly string[];
  /** Epoch seconds to judge expiry by (default now). */
  readonly nowS?: number;
}

/**
 * Checks a message's proof and returns its author.
 * @throws UnprovenError when a header is missing, the JWT is malformed, forged, expired or
 *   issued by an untrusted account, or the signature does not match subject and body
 */
export function verifyProof(h: MsgHdrs | undefined, subject: string, body: Uint8Array, trust: Trust): Author {
  const jwt = h?.get(Headers.Signer) ?? '';
  const sig = h?.get(Headers.Signature) ?? '';
  if (!jwt || !sig) throw new UnprovenError(`${subject}: no ${Headers.Signer}/${Headers.Signature} headers`);
  let claims: Claims;
  try {
    claims = claimsOf(jwt);
  } catch (e) {
    throw new UnprovenError(`${subject}: signer JWT is invalid (${(e as Error).message})`, { cause: e });
  }
  const accounts = trust.accounts instanceof Set ? trust.accounts : new Set(trust.accounts as readonly string[]);
  if (!accounts.has(claims.iss)) throw new UnprovenError(`${subject}: signer ${claims.sub} was issued by an account not trusted here`);
  const now = trust.nowS ?? Math.floor(Date.now() / 1000);
  if (claims.exp && claims.exp <= now) throw new UnprovenError(`${subject}: signer ${claims.name} has expired`);
  let ok = false;
  try {
    ok = edVerify(null, digest(subject, body), verifyingKey(claims.sub), Buffer.from(sig, 'base64url'));
  } catch {
    ok = false;
  }
  if (!ok) throw new UnprovenError(`${subject}: signature does not match the message (signer ${claims.name})`);
  const tags = claims.nats?.tags;
  const role = tagValues(tags, 'capstan-role')[0];
  const tenant = tagValues(tags, 'capstan-tenant')[0];
  return {
    publicKey: claims.sub,
    name: claims.name,
    issuer: claims.iss,
    ...(role ? { role } : {}),
    ...(tenant ? { tenant } : {}),
    groups: tagValues(tags, 'capstan-group'),
    pools: tagValues(tags, 'capstan-pool'),
  };
}

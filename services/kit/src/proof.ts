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
}

function digest(subject: string, body: Uint8Array): Uint8Array {
  const h = createHash('sha256');
  h.update(subject);
  h.update('\n');
  h.update(body);
  return new Uint8Array(h.digest());
}

// Ed25519 through Node's own crypto (OpenSSL): the nkeys library's pure-JS arithmetic costs
// tens of milliseconds per signature on a busy machine, which a policy-gated step pays four
// times. The keys are the same nkeys: a seed is 2 prefix bytes, the 32-byte Ed25519 seed
// and a CRC in base32; a public key is 1 prefix byte, the 32-byte key and a CRC.
const B32 = 'ABCDEFGHIJKLMNOPQRSTUVWXYZ234567';
function base32(s: string): Buffer {
  const out: number[] = [];
  let bits = 0;
  let value = 0;
  for (const c of s) {
    const v = B32.indexOf(c);
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
const PKCS8_ED25519 = Buffer.from('302e020100300506032b657004220420', 'hex');
const SPKI_ED25519 = Buffer.from('302a300506032b6570032100', 'hex');

function privateKeyOf(seed: Uint8Array): KeyObject {
  const raw = base32(Buffer.from(seed).toString('ascii')).subarray(2, 34);
  return createPrivateKey({ key: Buffer.concat([PKCS8_ED25519, raw]), format: 'der', type: 'pkcs8' });
}

/** Public keys seen, as key objects (a handful of principals sign everything: bounded anyway). */
const publicKeys = new Map<string, KeyObject>();
function publicKeyOf(nkey: string): KeyObject {
  let k = publicKeys.get(nkey);
  if (!k) {
    k = createPublicKey({ key: Buffer.concat([SPKI_ED25519, base32(nkey).subarray(1, 33)]), format: 'der', type: 'spki' });
    if (publicKeys.size >= 4096) publicKeys.clear();
    publicKeys.set(nkey, k);
  }
  return k;
}

/** A signer from a user JWT and its seed (the two halves of a `.creds` file). */
export function signerOf(jwt: string, seed: Uint8Array): Signer {
  const publicKey = fromSeed(seed).getPublicKey();
  const key = privateKeyOf(seed);
  return {
    jwt,
    publicKey,
    sign: (subject, body) => edSign(null, digest(subject, body), key).toString('base64url'),
  };
}

type Claims = ReturnType<typeof decodeJwt<{ tags?: string[] }>>;
/**
 * JWTs whose issuer signature was checked: the same text always decodes the same, so a
 * principal's JWT is checked once (expiry and trust are judged on every message).
 */
const checkedJwts = new Map<string, Claims>();
function decodeChecked(jwt: string): Claims {
  let c = checkedJwts.get(jwt);
  if (!c) {
    // decode verifies the JWT's signature against its issuer.
    c = decodeJwt<{ tags?: string[] }>(jwt);
    if (checkedJwts.size >= 4096) checkedJwts.clear();
    checkedJwts.set(jwt, c);
  }
  return c;
}

/** Adds the proof headers for `subject` and `body` to `h` (made when absent) and returns it. */
export function proofHeaders(signer: Signer, subject: string, body: Uint8Array, h: MsgHdrs = natsHeaders()): MsgHdrs {
  h.set(Headers.Signer, signer.jwt);
  h.set(Headers.Signature, signer.sign(subject, body));
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
    claims = decodeChecked(jwt);
  } catch (e) {
    throw new UnprovenError(`${subject}: signer JWT is invalid (${(e as Error).message})`, { cause: e });
  }
  const accounts = trust.accounts instanceof Set ? trust.accounts : new Set(trust.accounts as readonly string[]);
  if (!accounts.has(claims.iss)) throw new UnprovenError(`${subject}: signer ${claims.sub} was issued by an account not trusted here`);
  const now = trust.nowS ?? Math.floor(Date.now() / 1000);
  if (claims.exp && claims.exp <= now) throw new UnprovenError(`${subject}: signer ${claims.name} has expired`);
  let ok = false;
  try {
    ok = edVerify(null, digest(subject, body), publicKeyOf(claims.sub), Buffer.from(sig, 'base64url'));
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
  };
}

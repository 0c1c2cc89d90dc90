/**
 * Sealed boxes (X25519 → HKDF-SHA256 → AES-256-GCM): what the secrets-lease service seals
 * redeemed values with, and the CLI seals `put` values with. Only the recipient opens a box,
 * only with the associated data it was sealed with, and any change to its bytes is refused.
 */
import { generateKeyPairSync, randomBytes } from 'node:crypto';
import { describe, expect, it } from 'vitest';
import { encode, ErrorCode, leaseAad, makeRunId, parseTenantId, putAad, sealedBoxSchema, type SealedBox } from '@capstan/schemas';
import { generateRecipient, openLeaseValues, parseRecipientKey, recipientFromSeed, seal } from '@capstan/kit';

const enc = new TextEncoder();
const aad = enc.encode('capstan/test/aad');
const codeOf = (f: () => unknown): string | undefined => {
  try {
    f();
    return undefined;
  } catch (e) {
    return (e as { code?: string }).code;
  }
};

describe('sealed box', () => {
  it('sealed box - the recipient opens what was sealed to its key, with the same associated data', () => {
    const r = generateRecipient();
    const plain = enc.encode('value-1 ✓');
    const box = seal(r.publicKey, plain, aad);
    expect(Buffer.from(r.open(box, aad)).toString('utf8')).toBe('value-1 ✓');
    // The wire schema accepts it as it is.
    expect(sealedBoxSchema.parse(box)).toEqual(box);
    expect(box.ct.length).toBe(plain.length + 16);
  });

  it('sealed box - the public key may be given as SPKI DER (base64) too', () => {
    const { publicKey } = generateKeyPairSync('x25519');
    const der = publicKey.export({ format: 'der', type: 'spki' }).toString('base64');
    expect(parseRecipientKey(der).asymmetricKeyType).toBe('x25519');
    const box = seal(der, enc.encode('x'), aad);
    expect(box.epk.length).toBe(32);
    // Same key, raw form: the SPKI tail.
    const raw = publicKey.export({ format: 'der', type: 'spki' }).subarray(12).toString('base64');
    expect(parseRecipientKey(raw).export({ format: 'der', type: 'spki' })).toEqual(publicKey.export({ format: 'der', type: 'spki' }));
  });

  it('sealed box - another associated data, another recipient, or any altered byte cannot open it', () => {
    const r = generateRecipient();
    const other = generateRecipient();
    const box = seal(r.publicKey, enc.encode('the value'), aad);
    expect(codeOf(() => r.open(box, enc.encode('capstan/test/other')))).toBe(ErrorCode.InvalidArgument);
    expect(codeOf(() => other.open(box, aad))).toBe(ErrorCode.InvalidArgument);
    const flip = (b: Uint8Array, i: number) => {
      const c = new Uint8Array(b);
      c[i] = (c[i] ?? 0) ^ 1;
      return c;
    };
    const altered: SealedBox[] = [
      { ...box, ct: flip(box.ct, 0) },
      { ...box, ct: flip(box.ct, box.ct.length - 1) },
      { ...box, nonce: flip(box.nonce, 3) },
      { ...box, epk: flip(box.epk, 5) },
    ];
    for (const b of altered) expect(codeOf(() => r.open(b, aad))).toBe(ErrorCode.InvalidArgument);
  });

  it('sealed box - every seal has its own ephemeral key and nonce; the plaintext is not in the box', () => {
    const r = generateRecipient();
    const secret = `cnry-${randomBytes(16).toString('hex')}`;
    const a = seal(r.publicKey, enc.encode(secret), aad);
    const b = seal(r.publicKey, enc.encode(secret), aad);
    expect(Buffer.from(a.epk).equals(Buffer.from(b.epk))).toBe(false);
    expect(Buffer.from(a.nonce).equals(Buffer.from(b.nonce))).toBe(false);
    expect(Buffer.from(a.ct).equals(Buffer.from(b.ct))).toBe(false);
    const wire = Buffer.from(encode(a)).toString('latin1');
    expect(wire).not.toContain(secret);
  });

  it('sealed box - keys that are not X25519 public keys are refused with invalid_argument', () => {
    const ed = generateKeyPairSync('ed25519').publicKey.export({ format: 'der', type: 'spki' }).toString('base64');
    for (const bad of ['', 'not base64 at all', Buffer.alloc(31).toString('base64'), Buffer.alloc(33, 1).toString('base64'), ed]) {
      expect(
        codeOf(() => parseRecipientKey(bad)),
        bad,
      ).toBe(ErrorCode.InvalidArgument);
      expect(
        codeOf(() => seal(bad, enc.encode('x'), aad)),
        bad,
      ).toBe(ErrorCode.InvalidArgument);
    }
    // The all-zero point has no usable shared secret.
    expect(codeOf(() => seal(Buffer.alloc(32).toString('base64'), enc.encode('x'), aad))).toBe(ErrorCode.InvalidArgument);
  });

  it('sealed box - a recipient from a seed is the same key every time (every service instance holds it)', () => {
    const seed = randomBytes(32);
    const a = recipientFromSeed(seed);
    const b = recipientFromSeed(seed);
    expect(a.publicKey).toBe(b.publicKey);
    expect(Buffer.from(b.open(seal(a.publicKey, enc.encode('v'), aad), aad)).toString()).toBe('v');
    expect(recipientFromSeed(randomBytes(32)).publicKey).not.toBe(a.publicKey);
    expect(codeOf(() => recipientFromSeed(new Uint8Array(31)))).toBe(ErrorCode.InvalidArgument);
  });

  it('sealed box - lease values open only for exactly the scope they were sealed for', () => {
    const t = parseTenantId('acme');
    const runId = makeRunId(1_700_000_000_000, new Uint8Array(10).fill(1));
    const scope = { leaseId: 'AAAAAAAAAAAAAAAAAAAAAA', runId, step: 'publish', attempt: 2 };
    const r = generateRecipient();
    const box = seal(r.publicKey, encode({ API_TOKEN: 'tok', OTHER: 'o' }), leaseAad(t, scope));
    expect(openLeaseValues(r, t, scope, box)).toEqual({ API_TOKEN: 'tok', OTHER: 'o' });
    const others = [
      [parseTenantId('acme2'), scope],
      [t, { ...scope, step: 'other' }],
      [t, { ...scope, attempt: 3 }],
      [t, { ...scope, leaseId: 'BAAAAAAAAAAAAAAAAAAAAA' }],
      [t, { ...scope, runId: makeRunId(1_700_000_000_000, new Uint8Array(10).fill(2)) }],
    ] as const;
    for (const [tt, s] of others) expect(codeOf(() => openLeaseValues(r, tt, s, box))).toBe(ErrorCode.InvalidArgument);
    // Associated data of different purposes never coincide.
    expect(Buffer.from(putAad(t, 'API_TOKEN')).equals(Buffer.from(leaseAad(t, scope)))).toBe(false);
  });
});

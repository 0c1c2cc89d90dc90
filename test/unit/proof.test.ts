import { describe, expect, it } from 'vitest';
import { createAccount, createUser, encodeUser } from '@nats-io/jwt';
import { headers } from '@nats-io/transport-node';
import { Headers } from '@capstan/schemas';
import { proofHeaders, signerOf, verifyProof } from '@capstan/kit';

const enc = new TextEncoder();

async function person(name: string, tags: string[], issuer = createAccount(), exp?: number) {
  const u = createUser();
  const jwt = await encodeUser(name, u, issuer, { tags }, exp ? { exp } : {});
  return { signer: signerOf(jwt, u.getSeed()), account: issuer };
}

describe('signed messages', () => {
  const subject = 'cap.acme.cmd.approve';
  const body = enc.encode('{"runId":"r1","step":"pay"}');

  it('names the author the issuing account wrote, with its groups', async () => {
    const { signer, account } = await person('alice', ['capstan-tenant:acme', 'capstan-role:operator', 'capstan-group:finance']);
    const a = verifyProof(proofHeaders(signer, subject, body), subject, body, { accounts: [account.getPublicKey()] });
    expect(a).toMatchObject({ name: 'alice', role: 'operator', tenant: 'acme', groups: ['finance'], publicKey: signer.publicKey });
  });

  it('refuses every forgery: other subject, altered body, untrusted issuer, expired, swapped JWT, no headers', async () => {
    const { signer, account } = await person('alice', ['capstan-role:operator']);
    const trust = { accounts: [account.getPublicKey()] };
    const h = proofHeaders(signer, subject, body);
    const mallory = await person('alice', ['capstan-role:operator', 'capstan-group:finance']); // same name, other account
    const expired = await person('bob', [], account, Math.floor(Date.now() / 1000) - 10);
    const swapped = headers();
    swapped.set(Headers.Signer, (await person('carol', [], account)).signer.jwt);
    swapped.set(Headers.Signature, h.get(Headers.Signature));
    const tampered = headers();
    const parts = signer.jwt.split('.');
    tampered.set(
      Headers.Signer,
      [parts[0], Buffer.from(JSON.stringify({ ...JSON.parse(Buffer.from(parts[1]!, 'base64url').toString()), name: 'root' })).toString('base64url'), parts[2]].join('.'),
    );
    tampered.set(Headers.Signature, h.get(Headers.Signature));
    const attempts: Array<() => unknown> = [
      () => verifyProof(h, 'cap.other.cmd.approve', body, trust),
      () => verifyProof(h, subject, enc.encode('{"runId":"r2","step":"pay"}'), trust),
      () => verifyProof(proofHeaders(mallory.signer, subject, body), subject, body, trust),
      () => verifyProof(proofHeaders(expired.signer, subject, body), subject, body, trust),
      () => verifyProof(swapped, subject, body, trust),
      () => verifyProof(tampered, subject, body, trust),
      () => verifyProof(undefined, subject, body, trust),
      () => verifyProof(headers(), subject, body, trust),
    ];
    let through = 0;
    for (const a of attempts) {
      try {
        a();
        through++;
      } catch (e) {
        expect((e as { code?: string }).code).toBe('unproven');
      }
    }
    expect(through).toBe(0);
  });
});

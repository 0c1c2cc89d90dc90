/**
 * The secrets-lease service's pure parts: its config (every problem at once, the master key
 * never shown), envelope encryption bound to what each ciphertext is, and the wire schemas.
 */
import { randomBytes } from 'node:crypto';
import { describe, expect, it } from 'vitest';
import {
  ConfigError,
  ErrorCode,
  LeaseDeniedError,
  parseLeaseRequest,
  parsePutRequest,
  parseTenantId,
  secretsErrorFromWire,
  SecretNotFoundError,
  makeRunId,
} from '@capstan/schemas';
import { createKeyring, decryptValue, encryptValue, loadConfig, valueAad } from '@capstan/secrets-lease';

const t = parseTenantId('acme');
const runId = makeRunId(1_700_000_000_000, new Uint8Array(10).fill(3));

describe('secrets-lease config', () => {
  it('secrets config - lists every problem at once and never echoes the master key', () => {
    const leaked = 'this-is-not-a-key-but-do-not-print-it';
    let err: unknown;
    try {
      loadConfig({ SECRETS_MASTER_KEY: leaked, SECRETS_DEFAULT_TTL_MS: '5000', SECRETS_MAX_TTL_MS: '1000' });
    } catch (e) {
      err = e;
    }
    expect(err).toBeInstanceOf(ConfigError);
    const problems = (err as ConfigError).problems.join('\n');
    expect(problems).toMatch(/NATS_URL is required/);
    expect(problems).toMatch(/DATABASE_URL is required/);
    expect(problems).toMatch(/SECRETS_MASTER_KEY must be base64 of exactly 32 bytes/);
    expect(problems).toMatch(/SECRETS_MAX_TTL_MS must be >= SECRETS_DEFAULT_TTL_MS/);
    expect((err as Error).message).not.toContain(leaked);
    expect(() =>
      loadConfig({ NATS_URL: 'nats://127.0.0.1:4222', NATS_CREDS: 'svc.creds', DATABASE_URL: 'postgres://h/db', SECRETS_MASTER_KEY: randomBytes(16).toString('base64') }),
    ).toThrow(/got 16 bytes/);
  });

  it('secrets config - a good config holds the key but never prints it', () => {
    const key = randomBytes(32).toString('base64');
    const c = loadConfig({ NATS_URL: 'nats://127.0.0.1:4222', NATS_CREDS: 'svc.creds', DATABASE_URL: 'postgres://u:pw@h/db', SECRETS_MASTER_KEY: key });
    expect(c.masterKey.toString('base64')).toBe(key);
    expect(JSON.stringify(c)).not.toContain(key);
    expect(Object.keys(c)).not.toContain('masterKey');
    expect(c.defaultTtlMs).toBe(30_000);
  });
});

describe('secrets-lease envelope', () => {
  it('envelope - data keys unwrap only with their master key and their own tenant and version', () => {
    const ring = createKeyring(randomBytes(32));
    const { key, wrapped } = ring.newDataKey(t, 1);
    expect(ring.unwrap(t, 1, wrapped).equals(key)).toBe(true);
    expect(() => ring.unwrap(parseTenantId('other'), 1, wrapped)).toThrow();
    expect(() => ring.unwrap(t, 2, wrapped)).toThrow();
    expect(() => createKeyring(randomBytes(32)).unwrap(t, 1, wrapped)).toThrow();
    expect(ring.masterKeyId).toMatch(/^[0-9a-f]{16}$/);
    // The per-tenant put key is derived, so every instance with the same master key has it.
    const master = randomBytes(32);
    expect(createKeyring(master).putRecipient(t).publicKey).toBe(createKeyring(master).putRecipient(t).publicKey);
    expect(createKeyring(master).putRecipient(t).publicKey).not.toBe(createKeyring(master).putRecipient(parseTenantId('other')).publicKey);
  });

  it('envelope - a value decrypts only as the secret, version and key version it was written as', () => {
    const key = randomBytes(32);
    const { nonce, ciphertext } = encryptValue(key, Buffer.from('s3cr3t'), valueAad(t, 'API_TOKEN', 3, 1));
    expect(decryptValue(key, nonce, ciphertext, valueAad(t, 'API_TOKEN', 3, 1)).toString()).toBe('s3cr3t');
    for (const aad of [valueAad(t, 'OTHER', 3, 1), valueAad(t, 'API_TOKEN', 2, 1), valueAad(t, 'API_TOKEN', 3, 2), valueAad(parseTenantId('b'), 'API_TOKEN', 3, 1)]) {
      expect(() => decryptValue(key, nonce, ciphertext, aad)).toThrow();
    }
    expect(Buffer.from(ciphertext).toString('latin1')).not.toContain('s3cr3t');
  });
});

describe('secrets wire schemas', () => {
  it('secrets schemas - a lease names 1..32 distinct key names, for one attempt of a run', () => {
    const ok = parseLeaseRequest({ runId, step: 'publish', attempt: 1, keys: ['API_TOKEN', 'DB_URL'] });
    expect(ok.keys).toEqual(['API_TOKEN', 'DB_URL']);
    const bad = [
      { runId, step: 'publish', attempt: 1, keys: [] },
      { runId, step: 'publish', attempt: 1, keys: ['A', 'A'] },
      { runId, step: 'publish', attempt: 1, keys: ['lower'] },
      { runId, step: 'publish', attempt: 0, keys: ['A'] },
      { runId: 'nope', step: 'publish', attempt: 1, keys: ['A'] },
      { runId, step: 'Bad Step', attempt: 1, keys: ['A'] },
      { runId, step: 'publish', attempt: 1, keys: Array.from({ length: 33 }, (_, i) => `K${i}`) },
      { runId, step: 'publish', attempt: 1, keys: ['A'], value: 'smuggled' },
    ];
    for (const b of bad) expect(() => parseLeaseRequest(b), JSON.stringify(b).slice(0, 80)).toThrow();
  });

  it('secrets schemas - a put carries a sealed value only, never a plain one', () => {
    expect(() => parsePutRequest({ name: 'API_TOKEN', value: 'plain', by: 'me' })).toThrow(/not a known field|sealed/);
  });

  it('secrets schemas - refusals are rebuilt from the wire as their typed errors', () => {
    const used = secretsErrorFromWire(ErrorCode.LeaseUsed, 'lease x denied', { leaseId: 'x' });
    expect(used).toBeInstanceOf(LeaseDeniedError);
    expect(used.code).toBe('lease_used');
    expect(used.retryable).toBe(false);
    expect((used as LeaseDeniedError).leaseId).toBe('x');
    expect(secretsErrorFromWire(ErrorCode.SecretNotFound, 'no secret named X')).toBeInstanceOf(SecretNotFoundError);
    expect(secretsErrorFromWire(ErrorCode.SecretsUnavailable, 'down').retryable).toBe(true);
    expect(secretsErrorFromWire('something_new', 'm').code).toBe('something_new');
  });
});

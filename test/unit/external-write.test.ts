/**
 * The idempotency key of an external write: the same action of the same step of the same run
 * gets the same key on every attempt, and anything else gets another key. Plus the worker's
 * audit config and the refusal of a worker without audit.
 */
import { describe, expect, it } from 'vitest';
import { ConfigError, ErrorCode, parseRunId, parseTenantId } from '@capstan/schemas';
import { createLogger } from '@capstan/kit';
import { auditNotConfigured, bindExternalWrite, externalWriteKey, loadConfig } from '@capstan/worker';

const tenant = parseTenantId('acme');
const runId = parseRunId('01J9Z3K4M5N6P7Q8R9S0T1V2W3');
const otherRun = parseRunId('01J9Z3K4M5N6P7Q8R9S0T1V2W4');
const scope = { tenant, runId, step: 'charge' };

describe('external write key', () => {
  it('external write key: is 64 hex characters and the same for every call with the same action', () => {
    const k = externalWriteKey(scope, 'create-invoice');
    expect(k).toMatch(/^[0-9a-f]{64}$/);
    expect(externalWriteKey({ ...scope }, 'create-invoice')).toBe(k);
  });

  it('external write key: does not depend on the attempt (a retried attempt reuses it)', () => {
    const a1 = externalWriteKey({ ...scope, attempt: 1 } as typeof scope, 'create-invoice');
    const a7 = externalWriteKey({ ...scope, attempt: 7 } as typeof scope, 'create-invoice');
    expect(a7).toBe(a1);
  });

  it('external write key: differs by tenant, run, step and action', () => {
    const base = externalWriteKey(scope, 'create-invoice');
    const variants = [
      externalWriteKey({ ...scope, tenant: parseTenantId('acme2') }, 'create-invoice'),
      externalWriteKey({ ...scope, runId: otherRun }, 'create-invoice'),
      externalWriteKey({ ...scope, step: 'charge2' }, 'create-invoice'),
      externalWriteKey(scope, 'create-invoice2'),
      externalWriteKey(scope, 'Create-invoice'),
    ];
    expect(new Set([base, ...variants]).size).toBe(variants.length + 1);
  });

  it('external write key: no choice of names makes two different tuples collide (separators are encoded)', () => {
    // Naive joining would read some of these alike ("a:b" + "c" and "a" + "b:c").
    const pairs: [string, string][] = [
      ['a', 'b:c'],
      ['a:b', 'c'],
      ['a', 'b c'],
      ['a-b', 'c'],
      ['a', 'b-c'],
      ['a', '","b'],
    ];
    const keys = pairs.map(([step, action]) => externalWriteKey({ tenant, runId, step }, action));
    expect(new Set(keys).size).toBe(pairs.length);
  });

  it('external write key: a malformed action is a typed error, not a key', () => {
    for (const bad of ['', ' lead', 'trail ', 'new\nline', 'tab\there', 'x'.repeat(201), 42 as unknown as string]) {
      expect(() => externalWriteKey(scope, bad)).toThrow(expect.objectContaining({ code: ErrorCode.InvalidArgument }) as Error);
    }
    expect(externalWriteKey(scope, 'notify:user 42')).toMatch(/^[0-9a-f]{64}$/);
    expect(externalWriteKey(scope, 'x'.repeat(200))).toMatch(/^[0-9a-f]{64}$/);
  });
});

describe('external write without audit', () => {
  const log = createLogger('test', 'silent');
  it('external write: a worker without an audit store refuses the write with audit_unavailable and never performs it', async () => {
    let performed = 0;
    const write = bindExternalWrite(auditNotConfigured(), 'w-1', { tenant, runId, step: 'charge', attempt: 1, signal: new AbortController().signal, log });
    const err = await write('billing', 'create-invoice', () => performed++).catch((e: unknown) => e);
    expect(err).toMatchObject({ code: ErrorCode.AuditUnavailable, retryable: true, name: 'AuditUnavailableError' });
    expect((err as Error).message).toMatch(/audit is not configured.*AUDIT_DATABASE_URL/);
    expect(performed).toBe(0);
  });

  it('external write: a bad target or action is refused before anything is recorded or performed', async () => {
    let performed = 0;
    const write = bindExternalWrite(auditNotConfigured(), 'w-1', { tenant, runId, step: 'charge', attempt: 1, signal: new AbortController().signal, log });
    for (const [target, action] of [
      ['', 'a'],
      ['t', ''],
      ['t\n', 'a'],
    ] as const) {
      await expect(write(target, action, () => performed++)).rejects.toMatchObject({ code: ErrorCode.InvalidArgument, retryable: false });
    }
    expect(performed).toBe(0);
  });
});

describe('config - worker audit', () => {
  const NATS = { NATS_URL: 'nats://127.0.0.1:4333', NATS_CREDS: 'worker.creds' };
  it('config - worker: AUDIT_DATABASE_URL is optional (empty: not configured)', () => {
    expect(loadConfig(NATS).auditDatabaseUrl).toBe('');
    expect(loadConfig({ ...NATS, AUDIT_DATABASE_URL: '' }).auditDatabaseUrl).toBe('');
    expect(loadConfig({ ...NATS, AUDIT_DATABASE_URL: 'postgres://w:pw@db:5432/capstan' }).auditDatabaseUrl).toBe('postgres://w:pw@db:5432/capstan');
  });

  it('config - worker: a malformed AUDIT_DATABASE_URL is reported without echoing it', () => {
    for (const bad of ['mysql://u:s3cret@h/db', 'not a url s3cret', 'postgres:///nohost-s3cret']) {
      let err: unknown;
      try {
        loadConfig({ ...NATS, AUDIT_DATABASE_URL: bad });
      } catch (e) {
        err = e;
      }
      expect(err).toBeInstanceOf(ConfigError);
      const problems = (err as ConfigError).problems;
      expect(problems).toEqual(['AUDIT_DATABASE_URL must be a postgres:// or postgresql:// URL with a host']);
      expect(problems.join(' ')).not.toContain('s3cret');
    }
  });
});

/**
 * The secrets-lease service against a real nats-server and a scratch Postgres database:
 * secrets administration (kit client and CLI), leases (issue, single redemption, scope,
 * expiry by the database's clock, revocation by request and when a run ends), refreshable
 * credentials against a local token endpoint, audit first, and D1/D3 of the reliability
 * plan: 1000 leases each raced by 16 redeemers, and 50 canary values searched for in every
 * log, stream, table, message on the wire and error.
 */
import { execFileSync } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { mkdtempSync, writeFileSync } from 'node:fs';
import { createServer, type IncomingMessage, type Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Writable } from 'node:stream';
import { afterAll, beforeAll, describe, expect, inject, it } from 'vitest';
import { sql } from 'drizzle-orm';
import {
  claimLease as claimLeaseAs,
  createLogger,
  deleteSecret,
  generateRecipient,
  issueLease as issueLeaseAs,
  listSecrets,
  newRunId,
  openDatabase,
  openLeaseValues,
  putSecret,
  queryRows,
  redeemLease as redeemLeaseAs,
  redeemValues as redeemValuesAs,
  revokeRun,
  rotateSecret,
  type Database,
  type NatsConnection,
  type SecretsCallOptions,
  type Signer,
} from '@capstan/kit';
import { createSecretsLease, loadConfig, type SecretsLeaseService } from '@capstan/secrets-lease';
import { verifyProjections } from '@capstan/projector';
import { AuthKind, CapstanError, encode, ErrorCode, Lifecycle, Role, SecretsVerb, Streams, Subjects, type Connector, type RunId, type TenantId } from '@capstan/schemas';
import { accessAs, connect, connectAs, serviceEnv, eventually, issueCreds, provision, runCli, type Harness } from '../harness/fixtures.js';
import { scratchDatabase } from '../harness/postgres.js';
import { pipelineWarrants, type PipelineWarrants } from '../harness/lease-warrant.js';

const url = inject('natsUrl');
const by = 'tester';

let h: Harness;
let t: TenantId;
/** The admin's connection to the tenant's account. */
let nc: NatsConnection;
let scratch: { url: string; drop(): Promise<void> };
let d: Database;
let svc: SecretsLeaseService;
let logs = '';
/**
 * The ledger's rules are exercised here by a service that leases for its own use (datasync:
 * no run record is asked for, and the lease is bound to it); leases warranted by a run's
 * record are the attack suite's and the governed flow's.
 */
let signer: Signer;
/** How the admin administers secrets: signed (the service acts for no unsigned request), for the user it names. */
let admin: { by: string; signer: Signer };
type Call<A extends unknown[], R> = (c: NatsConnection, tt: TenantId, ...rest: [...A, SecretsCallOptions?]) => Promise<R>;
const signed =
  <A extends unknown[], R>(f: Call<A, R>) =>
  (c: NatsConnection, tt: TenantId, ...rest: A): Promise<R> =>
    f(c, tt, ...rest, { signer });
const issueSigned = signed(issueLeaseAs as Call<[Parameters<typeof issueLeaseAs>[2]], Awaited<ReturnType<typeof issueLeaseAs>>>);

/**
 * The datasync service is leased only what a pipeline run's record warrants. These tests are
 * about the ledger (single use, expiry, revocation, refresh): each scope they lease gets the
 * record a real pipeline run would have, written before the ask (harness/lease-warrant.ts).
 */
let warrants: PipelineWarrants;
const issueLease = async (c: NatsConnection, tt: TenantId, req: Parameters<typeof issueLeaseAs>[2]): ReturnType<typeof issueLeaseAs> => {
  await warrants.warrant(req);
  return issueSigned(c, tt, req);
};
const redeemLease = signed(redeemLeaseAs as Call<[Parameters<typeof redeemLeaseAs>[2]], Awaited<ReturnType<typeof redeemLeaseAs>>>);
const redeemValues = signed(redeemValuesAs as Call<[Parameters<typeof redeemValuesAs>[2]], Awaited<ReturnType<typeof redeemValuesAs>>>);
const claimLease = signed(claimLeaseAs as Call<[Parameters<typeof claimLeaseAs>[2]], Awaited<ReturnType<typeof claimLeaseAs>>>);
/** Every error message a caller got during the tests (searched for canaries at the end). */
const errors: string[] = [];

/** The error code a promise rejects with (and keeps its message for the canary search). */
async function codeOf(p: Promise<unknown>): Promise<string> {
  try {
    await p;
  } catch (e) {
    errors.push(JSON.stringify({ name: (e as Error).name, message: (e as Error).message, code: (e as { code?: string }).code }));
    return CapstanError.is(e) ? e.code : `untyped: ${String(e)}`;
  }
  return 'ok';
}

async function dbNow(): Promise<Date> {
  const [r] = await queryRows<{ now: Date }>(d, sql`select clock_timestamp() as now`);
  return new Date((r as { now: Date }).now);
}

async function auditRows(runId: string): Promise<{ kind: string; seq: number; detail: Record<string, unknown> }[]> {
  return queryRows(d, sql`select kind, seq, detail from audit_log where tenant = ${t} and run_id = ${runId} order by id`);
}

/** Runs `fn` over `items`, `n` at a time. */
async function pool<T>(items: readonly T[], n: number, fn: (x: T, i: number) => Promise<void>): Promise<void> {
  let next = 0;
  await Promise.all(
    Array.from({ length: n }, async () => {
      while (next < items.length) {
        const i = next++;
        await fn(items[i] as T, i);
      }
    }),
  );
}

beforeAll(async () => {
  scratch = await scratchDatabase('secrets');
  h = await connect(url);
  t = await provision(h, 'sec');
  nc = await h.nc(t);
  admin = { by, signer: (await h.tenant(t)).signer as Signer };
  warrants = pipelineWarrants(await h.js(t), t, by);
  signer = (await (await accessAs(url, Role.Datasync)).tenant(t)).signer as Signer;
  const sink = new Writable({
    write(chunk: Buffer, _enc, cb) {
      logs += chunk.toString();
      cb();
    },
  });
  // Everything the service says, down to trace: searched for canaries at the end.
  const log = createLogger('secrets-lease', 'trace', sink);
  const config = loadConfig({
    ...(await serviceEnv(url, Role.SecretsLease)),
    DATABASE_URL: scratch.url,
    SECRETS_MASTER_KEY: randomBytes(32).toString('base64'),
    CAPSTAN_TENANTS: t,
    SECRETS_DISCOVERY_MS: '200',
    SECRETS_DB_POOL: '12',
    // The test's token endpoint listens on loopback over http: the admin names it.
    SECRETS_REFRESH_ALLOW: '127.0.0.1',
  });
  svc = await createSecretsLease(config, log);
  await svc.start();
  d = await openDatabase({ url: scratch.url });
  await eventually('the run-end watch on the tenant', () => Promise.resolve(svc.watched().includes(t) ? true : undefined), 10_000);
});

afterAll(async () => {
  await svc?.stop();
  await d?.close();
  await h?.close();
  await scratch?.drop();
});

describe('secrets administration', () => {
  it('put / list / rotate / delete: versions and dates, never a value', async () => {
    const a = await putSecret(nc, t, 'ADMIN_A', 'value-a1', { ...admin });
    expect(a).toMatchObject({ name: 'ADMIN_A', version: 1, lifecycle: 'static' });
    expect(a.rotatedAt).toBeUndefined();
    const a2 = await putSecret(nc, t, 'ADMIN_A', 'value-a2', { ...admin });
    expect(a2.version).toBe(2);
    expect(a2.rotatedAt).toBeDefined();
    const a3 = await rotateSecret(nc, t, 'ADMIN_A', 'value-a3', { ...admin });
    expect(a3.version).toBe(3);
    await putSecret(nc, t, 'ADMIN_B', 'value-b', { ...admin });
    const listed = await listSecrets(nc, t, admin);
    expect(listed.filter((s) => s.name.startsWith('ADMIN_')).map((s) => [s.name, s.version])).toEqual([
      ['ADMIN_A', 3],
      ['ADMIN_B', 1],
    ]);
    expect(JSON.stringify(listed)).not.toMatch(/value-/);

    const gone = await deleteSecret(nc, t, 'ADMIN_B', { ...admin });
    expect(gone.deletedAt).toBeDefined();
    expect((await listSecrets(nc, t, admin)).map((s) => s.name)).not.toContain('ADMIN_B');
    expect((await listSecrets(nc, t, { ...admin, includeDeleted: true })).find((s) => s.name === 'ADMIN_B')?.deletedAt).toBeDefined();
    // The ciphertext is erased, not just hidden.
    const [row] = await queryRows<{ ciphertext: unknown }>(d, sql`select ciphertext from secrets where tenant = ${t} and name = 'ADMIN_B'`);
    expect(row?.ciphertext).toBeNull();
    expect(await codeOf(deleteSecret(nc, t, 'ADMIN_B', { ...admin }))).toBe(ErrorCode.SecretNotFound);
    expect(await codeOf(rotateSecret(nc, t, 'NO_SUCH', 'v', { ...admin }))).toBe(ErrorCode.SecretNotFound);
    // Back after a delete: versions go on.
    expect((await putSecret(nc, t, 'ADMIN_B', 'value-b2', { ...admin })).version).toBe(2);

    // Only the current value is kept, and it is the one a lease gets.
    const runId = newRunId();
    const lease = await issueLease(nc, t, { runId, step: 's', attempt: 1, keys: ['ADMIN_A', 'ADMIN_B'] });
    expect(await redeemValues(nc, t, { leaseId: lease.leaseId, runId, step: 's', attempt: 1 })).toEqual({ ADMIN_A: 'value-a3', ADMIN_B: 'value-b2' });

    const kinds = await queryRows<{ kind: string; actor: string; run_id: string; seq: number }>(
      d,
      sql`select kind, actor, run_id, seq from audit_log where tenant = ${t} and kind like 'secret.%' order by id`,
    );
    expect(kinds.map((k) => k.kind)).toEqual(['secret.put', 'secret.put', 'secret.rotated', 'secret.put', 'secret.deleted', 'secret.put']);
    // A secret's history is its own "run" of the audit log: `secret:<NAME>`, negative seqs.
    expect(kinds.map((k) => k.run_id)).toEqual(['secret:ADMIN_A', 'secret:ADMIN_A', 'secret:ADMIN_A', 'secret:ADMIN_B', 'secret:ADMIN_B', 'secret:ADMIN_B']);
    expect(kinds.every((k) => k.actor === by && k.seq < 0)).toBe(true);
  });

  it('the CLI: values from a file, the environment or stdin only, never from the command line', async () => {
    const dir = mkdtempSync(join(tmpdir(), 'capstan-secrets-cli-'));
    const file = join(dir, 'value');
    writeFileSync(file, 'from-a-file\n');
    const common = ['--tenant', t, '--nats', url, '--as', by];
    const put = await runCli(['secrets', 'put', 'CLI_FILE', '--value-file', file, ...common]);
    expect(put.code, put.err).toBe(0);
    expect(put.out).toMatch(/stored CLI_FILE v1, static/);
    // Printed as the service recorded it (the CLI's own operator credential, whatever --as says).
    const printedAs = /stored CLI_FILE v1, static in \S+ as (\S+)/.exec(put.out)?.[1];
    const fileRow = await queryRows<{ actor: string }>(d, sql`select actor from audit_log where tenant = ${t} and run_id = 'secret:CLI_FILE' and kind = 'secret.put'`);
    expect(fileRow.map((r) => r.actor)).toEqual([printedAs]);
    // An operator's own credential: recorded as its name whatever --as says, and printed so.
    const olive = await issueCreds(url, t, Role.Operator, 'olive-cli');
    const asOlive = await runCli(['secrets', 'put', 'CLI_OLIVE', '--value-file', file, '--tenant', t, '--nats', url, '--as', 'the-ceo'], { NATS_CREDS: olive });
    expect(asOlive.code, asOlive.err).toBe(0);
    expect(asOlive.out).toMatch(/stored CLI_OLIVE v1, static in .* as olive-cli/);
    expect(asOlive.out).not.toContain('the-ceo');
    const oliveRow = await queryRows<{ actor: string }>(d, sql`select actor from audit_log where tenant = ${t} and run_id = 'secret:CLI_OLIVE' and kind = 'secret.put'`);
    expect(oliveRow.map((r) => r.actor)).toEqual(['olive-cli']);
    const env = await runCli(['secrets', 'put', 'CLI_ENV', '--from-env', 'CLI_SECRET_VALUE', ...common], { CLI_SECRET_VALUE: 'from-the-env' });
    expect(env.code, env.err).toBe(0);
    const inline = await runCli(['secrets', 'put', 'CLI_INLINE', '--value', 'on-the-command-line', ...common]);
    expect(inline.code).toBe(2);
    expect(inline.err).toMatch(/never taken on the command line/);
    expect(inline.err).not.toContain('on-the-command-line');
    const empty = await runCli(['secrets', 'put', 'CLI_EMPTY', ...common]);
    expect(empty.code, `${empty.out}\n${empty.err}`).toBe(2);
    expect(empty.err).toMatch(/empty/);
    const badName = await runCli(['secrets', 'put', 'lower-case', '--value-file', file, ...common]);
    expect(badName.code).toBe(2);
    writeFileSync(file, 'rotated-from-a-file');
    const rot = await runCli(['secrets', 'rotate', 'CLI_FILE', '--value-file', file, ...common]);
    expect(rot.code, rot.err).toBe(0);
    expect(rot.out).toMatch(/rotated CLI_FILE v2/);
    const refreshStatic = await runCli(['secrets', 'rotate', 'CLI_FILE', '--refresh', ...common]);
    expect(refreshStatic.code).toBe(2);
    expect(refreshStatic.err).toMatch(/invalid_argument: .*CLI_FILE is static/);
    const list = await runCli(['secrets', 'list', '--tenant', t, '--nats', url]);
    expect(list.code, list.err).toBe(0);
    expect(list.out).toMatch(/CLI_FILE\s+2\s+static/);
    expect(list.out).toMatch(/CLI_ENV\s+1\s+static/);
    const json = await runCli(['secrets', 'list', '--tenant', t, '--nats', url, '--json']);
    const names = (JSON.parse(json.out) as { secrets: { name: string }[] }).secrets.map((s) => s.name);
    expect(names).toEqual(expect.arrayContaining(['CLI_FILE', 'CLI_ENV']));
    const del = await runCli(['secrets', 'delete', 'CLI_ENV', ...common]);
    expect(del.code, del.err).toBe(0);
    const again = await runCli(['secrets', 'delete', 'CLI_ENV', ...common]);
    expect(again.code).toBe(1);
    expect(again.err).toMatch(/secret_not_found: tenant .* has no secret named CLI_ENV/);
    for (const r of [put, env, inline, empty, rot, list, json, del, again]) {
      for (const v of ['from-a-file', 'from-the-env', 'rotated-from-a-file']) expect(r.out + r.err).not.toContain(v);
    }
    const runId = newRunId();
    const lease = await issueLease(nc, t, { runId, step: 's', attempt: 1, keys: ['CLI_FILE'] });
    expect(await redeemValues(nc, t, { leaseId: lease.leaseId, runId, step: 's', attempt: 1 })).toEqual({ CLI_FILE: 'rotated-from-a-file' });
  });
});

describe('leases', () => {
  beforeAll(async () => {
    await putSecret(nc, t, 'API_TOKEN', 'api-token-value', { ...admin });
    await putSecret(nc, t, 'DB_PASSWORD', 'db-password-value', { ...admin });
  });

  it('issue → redeem once → a second redemption is lease_used; every step audited with key names', async () => {
    const runId = newRunId();
    const scope = { runId, step: 'publish', attempt: 1 };
    const lease = await issueLease(nc, t, { ...scope, keys: ['API_TOKEN', 'DB_PASSWORD'] });
    expect(lease.keys).toEqual(['API_TOKEN', 'DB_PASSWORD']);
    expect(lease.leaseId).toMatch(/^[A-Za-z0-9_-]{22}$/);
    const r = generateRecipient();
    const { sealed } = await redeemLease(nc, t, { ...scope, leaseId: lease.leaseId, recipientKey: r.publicKey });
    expect(openLeaseValues(r, t, { ...scope, leaseId: lease.leaseId }, sealed)).toEqual({ API_TOKEN: 'api-token-value', DB_PASSWORD: 'db-password-value' });
    // The reply on the wire is sealed: the values are not in it.
    expect(Buffer.from(encode({ sealed })).toString('latin1')).not.toContain('api-token-value');
    expect(await codeOf(redeemLease(nc, t, { ...scope, leaseId: lease.leaseId, recipientKey: r.publicKey }))).toBe(ErrorCode.LeaseUsed);

    const rows = await auditRows(runId);
    expect(rows.map((x) => x.kind)).toEqual(['lease.issued', 'lease.redeemed', 'lease.denied']);
    expect(rows.every((x) => x.seq < 0)).toBe(true);
    expect(rows[0]?.detail).toMatchObject({ leaseId: lease.leaseId, keys: ['API_TOKEN', 'DB_PASSWORD'], step: 'publish', attempt: 1 });
    expect(rows[2]?.detail).toMatchObject({ code: 'lease_used', keys: ['API_TOKEN', 'DB_PASSWORD'] });
    expect(JSON.stringify(rows)).not.toMatch(/api-token-value|db-password-value/);
  });

  it('a redemption for another run, step or attempt is lease_scope_mismatch and does not use the lease', async () => {
    const runId = newRunId();
    const scope = { runId, step: 'publish', attempt: 2 };
    const { leaseId } = await issueLease(nc, t, { ...scope, keys: ['API_TOKEN'] });
    const r = generateRecipient();
    for (const wrong of [
      { ...scope, step: 'other' },
      { ...scope, attempt: 3 },
      { ...scope, runId: newRunId() },
    ]) {
      expect(await codeOf(redeemLease(nc, t, { ...wrong, leaseId, recipientKey: r.publicKey }))).toBe(ErrorCode.LeaseScopeMismatch);
    }
    // Another tenant does not know the lease at all (this service serves only `t`: asked in
    // another tenant's name it does not even answer).
    const other = await provision(h, 'sec2');
    expect(await codeOf(redeemLease(await h.nc(other), other, { ...scope, leaseId, recipientKey: r.publicKey }))).toBe(ErrorCode.SecretsUnavailable);
    expect(await codeOf(svc.ledger.redeem(other, leaseId, scope, 'U', () => Promise.resolve({})))).toBe(ErrorCode.LeaseNotFound);
    expect(await codeOf(redeemLease(nc, t, { ...scope, leaseId: 'A'.repeat(22), recipientKey: r.publicKey }))).toBe(ErrorCode.LeaseNotFound);
    // A key no box can be sealed to is refused before the lease is touched.
    expect(await codeOf(redeemLease(nc, t, { ...scope, leaseId, recipientKey: Buffer.alloc(33, 7).toString('base64') }))).toBe(ErrorCode.InvalidArgument);
    expect(await redeemValues(nc, t, { ...scope, leaseId })).toEqual({ API_TOKEN: 'api-token-value' });
    const denied = (await auditRows(runId)).filter((x) => x.kind === 'lease.denied').map((x) => x.detail['code']);
    expect(denied).toEqual(['lease_scope_mismatch', 'lease_scope_mismatch', 'lease_scope_mismatch', 'lease_not_found']);
  });

  it('an unknown key is secret_not_found naming it; nothing is issued', async () => {
    const runId = newRunId();
    let message = '';
    try {
      await issueLease(nc, t, { runId, step: 's', attempt: 1, keys: ['API_TOKEN', 'NOT_THERE', 'NOR_THIS'] });
    } catch (e) {
      message = (e as Error).message;
      expect((e as CapstanError).code).toBe(ErrorCode.SecretNotFound);
    }
    expect(message).toMatch(/no secret named NOT_THERE, NOR_THIS/);
    const [n] = await queryRows<{ n: number }>(d, sql`select count(*)::int as n from leases where tenant = ${t} and run_id = ${runId}`);
    expect(n?.n).toBe(0);
    expect((await auditRows(runId)).map((x) => [x.kind, x.detail['code']])).toEqual([['lease.denied', 'secret_not_found']]);
    // A malformed request is a typed error too.
    expect(await codeOf(issueLease(nc, t, { runId, step: 's', attempt: 1, keys: [] }))).toBe(ErrorCode.SchemaViolation);
  });

  it('a secret deleted after the lease was issued: secret_not_found, and the lease is not used up', async () => {
    await putSecret(nc, t, 'SHORT_LIVED', 'short-1', { ...admin });
    const runId = newRunId();
    const scope = { runId, step: 's', attempt: 1 };
    const lease = await issueLease(nc, t, { ...scope, keys: ['SHORT_LIVED'] });
    await deleteSecret(nc, t, 'SHORT_LIVED', { ...admin });
    expect(await codeOf(redeemValues(nc, t, { ...scope, leaseId: lease.leaseId }))).toBe(ErrorCode.SecretNotFound);
    await putSecret(nc, t, 'SHORT_LIVED', 'short-2', { ...admin });
    expect(await redeemValues(nc, t, { ...scope, leaseId: lease.leaseId })).toEqual({ SHORT_LIVED: 'short-2' });
    expect((await auditRows(runId)).map((x) => [x.kind, x.detail['code'] ?? null])).toEqual([
      ['lease.issued', null],
      ['lease.denied', 'secret_not_found'],
      ['lease.redeemed', null],
    ]);
  });

  it('expiry is set and judged by the database clock; the TTL counts from the claim', async () => {
    const runId = newRunId();
    const scope = { runId, step: 'quick', attempt: 1 };
    const before = await dbNow();
    const lease = await issueLease(nc, t, { ...scope, keys: ['API_TOKEN'], ttlMs: 400 });
    const after = await dbNow();
    // Unclaimed, it waits for its claim for the claim window (10 min by default), not its TTL.
    const claimBy = new Date(lease.expiresAt).getTime();
    expect(claimBy).toBeGreaterThanOrEqual(before.getTime() + 10 * 60_000);
    expect(claimBy).toBeLessThanOrEqual(after.getTime() + 10 * 60_000);
    // Longer than its TTL in a queue: still claimable; the TTL starts at the claim.
    await new Promise((r) => setTimeout(r, 600));
    const c0 = await dbNow();
    const expiresAt = (await claimLease(nc, t, { ...scope, leaseId: lease.leaseId, sandbox: `cap-${runId}-quick-1` })).getTime();
    const c1 = await dbNow();
    expect(expiresAt).toBeGreaterThanOrEqual(c0.getTime() + 400);
    expect(expiresAt).toBeLessThanOrEqual(c1.getTime() + 400);
    // One claim per lease.
    expect(await codeOf(claimLease(nc, t, { ...scope, leaseId: lease.leaseId, sandbox: 'cap-another' }))).toBe(ErrorCode.LeaseUsed);
    await eventually('the database clock past the expiry', async () => ((await dbNow()).getTime() > expiresAt ? true : undefined), 5000, 50);
    // Expired: retryable (the step's next attempt has a new lease issued).
    let expired: unknown;
    await redeemValues(nc, t, { ...scope, leaseId: lease.leaseId }).catch((e: unknown) => (expired = e));
    expect(expired).toMatchObject({ code: ErrorCode.LeaseExpired, retryable: true });
    const kinds = (await auditRows(runId)).map((x) => [x.kind, x.detail['code'] ?? x.detail['sandbox'] ?? null]);
    expect(kinds).toEqual([
      ['lease.issued', null],
      ['lease.claimed', `cap-${runId}-quick-1`],
      ['lease.denied', 'lease_used'],
      ['lease.denied', 'lease_expired'],
    ]);
    // A lease never claimed within its claim window is expired too.
    const lapsed = await svc.ledger.issue(t, { ...scope, step: 'lapsed' }, ['API_TOKEN'], 100, 100, signer.publicKey);
    await eventually('the claim window past', async () => ((await dbNow()).getTime() > lapsed.expiresAt.getTime() ? true : undefined), 5000, 50);
    expect(await codeOf(claimLease(nc, t, { ...scope, step: 'lapsed', leaseId: lapsed.leaseId, sandbox: 'cap-late' }))).toBe(ErrorCode.LeaseExpired);
    // The asked-for TTL is capped.
    const long = await issueLease(nc, t, { ...scope, keys: ['API_TOKEN'], ttlMs: 24 * 3_600_000 });
    const longUntil = await claimLease(nc, t, { ...scope, leaseId: long.leaseId, sandbox: 'cap-long' });
    expect(longUntil.getTime() - (await dbNow()).getTime()).toBeLessThanOrEqual(15 * 60_000);
  });

  it('a revoked run: open leases rejected at once, later issues refused, redeemed ones untouched', async () => {
    const runId = newRunId();
    const leases = await Promise.all(Array.from({ length: 100 }, (_, i) => issueLease(nc, t, { runId, step: `s${i}`, attempt: 1, keys: ['API_TOKEN'] })));
    await redeemValues(nc, t, { leaseId: (leases[0] as { leaseId: string }).leaseId, runId, step: 's0', attempt: 1 });
    const t0 = performance.now();
    const revoked = await revokeRun(nc, t, runId as RunId, { ...admin, reason: 'incident 42' });
    const revokeMs = performance.now() - t0;
    expect(revoked).toBe(99);
    const codes = await Promise.all(leases.map((l, i) => codeOf(redeemValues(nc, t, { leaseId: l.leaseId, runId, step: `s${i}`, attempt: 1 }))));
    const allMs = performance.now() - t0;
    process.stdout.write(
      `revoke: ${revoked} open leases revoked in ${revokeMs.toFixed(1)} ms; all ${leases.length} redemptions refused ${allMs.toFixed(1)} ms after the revoke was asked\n`,
    );
    expect(codes[0]).toBe(ErrorCode.LeaseUsed);
    expect(codes.slice(1).every((c) => c === ErrorCode.LeaseRevoked)).toBe(true);
    expect(revokeMs).toBeLessThan(1000);
    expect(await codeOf(issueLease(nc, t, { runId, step: 'late', attempt: 1, keys: ['API_TOKEN'] }))).toBe(ErrorCode.LeaseRevoked);
    const rows = await auditRows(runId);
    const rev = rows.find((x) => x.kind === 'lease.revoked');
    expect(rev?.detail).toMatchObject({ reason: 'incident 42', keys: ['API_TOKEN'] });
    expect((rev?.detail['leases'] as string[]).length).toBe(99);
    expect(rows.filter((x) => x.kind === 'lease.issued')).toHaveLength(100);
  });

  it('run events: an ended run is revoked, a retried one reopens, whatever order they arrive in', async () => {
    const runId = newRunId();
    const issue = (step: string) => issueLease(nc, t, { runId, step, attempt: 1, keys: ['API_TOKEN'] });
    const a = await issue('a');
    expect(await svc.ledger.revoke(t, runId, { kind: 'run-event', event: 'run.failed', streamSeq: 10 })).toBe(1);
    expect(await codeOf(redeemValues(nc, t, { leaseId: a.leaseId, runId, step: 'a', attempt: 1 }))).toBe(ErrorCode.LeaseRevoked);
    expect(await codeOf(issue('b'))).toBe(ErrorCode.LeaseRevoked);
    await svc.ledger.revoke(t, runId, { kind: 'run-event', event: 'run.retried', streamSeq: 12 });
    // An older event handled late changes nothing.
    await svc.ledger.revoke(t, runId, { kind: 'run-event', event: 'run.failed', streamSeq: 10 });
    const b = await issue('b');
    expect(await redeemValues(nc, t, { leaseId: b.leaseId, runId, step: 'b', attempt: 1 })).toEqual({ API_TOKEN: 'api-token-value' });
    // The revoked lease stays revoked.
    expect(await codeOf(redeemValues(nc, t, { leaseId: a.leaseId, runId, step: 'a', attempt: 1 }))).toBe(ErrorCode.LeaseRevoked);
    expect((await auditRows(runId)).map((x) => x.kind)).toEqual([
      'lease.issued',
      'lease.revoked',
      'lease.denied',
      'lease.denied',
      'lease.reopened',
      'lease.issued',
      'lease.redeemed',
      'lease.denied',
    ]);
    // A revocation by request is not lifted by the run going on.
    await revokeRun(nc, t, runId as RunId, { ...admin });
    await svc.ledger.revoke(t, runId, { kind: 'run-event', event: 'run.retried', streamSeq: 20 });
    expect(await codeOf(issue('c'))).toBe(ErrorCode.LeaseRevoked);
  });

  it('a run that ends has its open leases revoked within 1 s (the run stream watched)', async () => {
    {
      const runId = newRunId();
      const leases = await Promise.all(['x', 'y', 'z'].map((step) => issueLease(nc, t, { runId, step, attempt: 1, keys: ['API_TOKEN'] })));
      // The run ends as the orchestrator would record it (its record is the test's, above).
      await warrants.end(runId);
      const seen = performance.now();
      await eventually(
        'the ended run revoked',
        async () => {
          const [r] = await queryRows<{ open: number }>(d, sql`select count(*)::int as open from leases where tenant = ${t} and run_id = ${runId} and revoked_at is null`);
          return r?.open === 0 ? true : undefined;
        },
        5000,
        20,
      );
      const ms = performance.now() - seen;
      process.stdout.write(`run end: leases of ${runId} revoked ${ms.toFixed(0)} ms after its end was read\n`);
      expect(ms).toBeLessThan(1000);
      for (const [i, l] of leases.entries()) {
        expect(await codeOf(redeemValues(nc, t, { leaseId: l.leaseId, runId, step: ['x', 'y', 'z'][i] as string, attempt: 1 }))).toBe(ErrorCode.LeaseRevoked);
      }
      // An ended run warrants nothing more.
      expect(await codeOf(issueLease(nc, t, { runId, step: 'x', attempt: 2, keys: ['API_TOKEN'] }))).toBe(ErrorCode.LeaseNotWarranted);
      const rev = (await auditRows(runId)).find((x) => x.kind === 'lease.revoked');
      expect(rev?.detail).toMatchObject({ reason: 'run.completed', keys: ['API_TOKEN'] });
    }
  });

  it('audit first: when the audit row cannot be written, nothing is issued or redeemed', async () => {
    const runId = newRunId();
    const scope = { runId, step: 'guarded', attempt: 1 };
    const lease = await issueLease(nc, t, { ...scope, keys: ['API_TOKEN'] });
    await d.db.execute(
      sql.raw(`create or replace function capstan_test_refuse_audit() returns trigger language plpgsql as $$ begin raise exception 'audit refused for the test'; end $$`),
    );
    await d.db.execute(
      sql.raw(`create trigger capstan_test_refuse_audit before insert on audit_log for each row when (new.run_id = '${runId}') execute function capstan_test_refuse_audit()`),
    );
    try {
      expect(await codeOf(issueLease(nc, t, { ...scope, keys: ['API_TOKEN'] }))).toBe(ErrorCode.SecretsUnavailable);
      expect(await codeOf(redeemValues(nc, t, { ...scope, leaseId: lease.leaseId }))).toBe(ErrorCode.SecretsUnavailable);
      expect(await codeOf(revokeRun(nc, t, runId as RunId, { ...admin }))).toBe(ErrorCode.SecretsUnavailable);
      const [n] = await queryRows<{ leases: number; redeemed: number; revoked: number }>(
        d,
        sql`select count(*)::int as leases, count(redeemed_at)::int as redeemed, count(revoked_at)::int as revoked from leases where tenant = ${t} and run_id = ${runId}`,
      );
      expect(n).toEqual({ leases: 1, redeemed: 0, revoked: 0 });
    } finally {
      await d.db.execute(sql.raw('drop trigger capstan_test_refuse_audit on audit_log'));
    }
    expect(await redeemValues(nc, t, { ...scope, leaseId: lease.leaseId })).toEqual({ API_TOKEN: 'api-token-value' });
    expect((await auditRows(runId)).map((x) => x.kind)).toEqual(['lease.issued', 'lease.redeemed']);
  });

  it("the projections still verify with the lease service's audit rows in the table", async () => {
    const report = await verifyProjections(d, (x) => h.jsm(x), [t]);
    expect(report.mismatches).toEqual([]);
    expect(report.ok).toBe(true);
    const [n] = await queryRows<{ n: number }>(d, sql`select count(*)::int as n from audit_log where tenant = ${t}`);
    expect(n?.n).toBeGreaterThan(20);
  });
});

describe('refreshable credentials', () => {
  let server: Server;
  let tokenUrl = '';
  const calls: Record<string, string>[] = [];
  let answer: (form: Record<string, string>) => { status: number; body: object } = () => ({ status: 500, body: {} });

  beforeAll(async () => {
    server = createServer((req: IncomingMessage, res) => {
      let body = '';
      req.on('data', (c: Buffer) => (body += c.toString()));
      req.on('end', () => {
        const form = Object.fromEntries(new URLSearchParams(body));
        calls.push(form);
        const a = answer(form);
        res.writeHead(a.status, { 'content-type': 'application/json' }).end(JSON.stringify(a.body));
      });
    });
    await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
    tokenUrl = `http://127.0.0.1:${(server.address() as AddressInfo).port}/oauth/token`;
  });
  afterAll(() => new Promise<void>((r) => server.close(() => r())));

  it('client credentials: refreshed before the lease is issued when due, not again while fresh', async () => {
    let n = 0;
    answer = (f) =>
      f['client_secret'] === 'the-client-secret'
        ? { status: 200, body: { access_token: `access-${++n}`, token_type: 'bearer', expires_in: 3600 } }
        : { status: 401, body: { error: 'invalid_client' } };
    const connector: Connector = {
      name: 'crm',
      auth: { type: AuthKind.OAuth2ClientCredentials, tokenUrl, clientId: 'capstan', clientSecretKey: 'CC_CLIENT_SECRET', scopes: ['read', 'write'] },
    };
    // Bound to the connector: only then may its refresher send it.
    await putSecret(nc, t, 'CC_CLIENT_SECRET', 'the-client-secret', { ...admin, connector });
    // Stored without an expiry: due at once.
    const put = await putSecret(nc, t, 'CC_TOKEN', 'placeholder', { ...admin, lifecycle: Lifecycle.Refreshable, connector, refreshWindowMs: 60_000 });
    expect(put).toMatchObject({ lifecycle: 'refreshable', connector: 'crm', auth: 'oauth2_client_credentials' });
    const runId = newRunId();
    const l1 = await issueLease(nc, t, { runId, step: 'a', attempt: 1, keys: ['CC_TOKEN'] });
    expect(calls.at(-1)).toMatchObject({ grant_type: 'client_credentials', client_id: 'capstan', client_secret: 'the-client-secret', scope: 'read write' });
    expect(await redeemValues(nc, t, { leaseId: l1.leaseId, runId, step: 'a', attempt: 1 })).toEqual({ CC_TOKEN: 'access-1' });
    const l2 = await issueLease(nc, t, { runId, step: 'b', attempt: 1, keys: ['CC_TOKEN'] });
    expect(n).toBe(1);
    expect(await redeemValues(nc, t, { leaseId: l2.leaseId, runId, step: 'b', attempt: 1 })).toEqual({ CC_TOKEN: 'access-1' });
    const info = (await listSecrets(nc, t, admin)).find((s) => s.name === 'CC_TOKEN');
    expect(info?.version).toBe(2);
    expect(info?.refreshedAt).toBeDefined();
    const expires = new Date(info?.expiresAt ?? 0).getTime() - (await dbNow()).getTime();
    expect(expires).toBeGreaterThan(3500_000);
    // Forced now, from the CLI.
    const cli = await runCli(['secrets', 'rotate', 'CC_TOKEN', '--refresh', '--tenant', t, '--nats', url, '--as', by]);
    expect(cli.code, cli.err).toBe(0);
    expect(cli.out).toMatch(/refreshed CC_TOKEN v3/);
    expect(n).toBe(2);
    expect((await auditRows('secret:CC_TOKEN')).map((x) => x.kind)).toEqual(['secret.put', 'secret.refreshed', 'secret.refreshed']);
  });

  it('auth code: the refresh token the issuer rotates is kept; a failed refresh of an expired token refuses the lease', async () => {
    answer = (f) =>
      f['refresh_token'] === 'refresh-1'
        ? { status: 200, body: { access_token: 'ac-access-2', refresh_token: 'refresh-2', expires_in: 600 } }
        : { status: 400, body: { error: 'invalid_grant', error_description: 'refresh token reuse: refresh-1' } };
    const connector: Connector = { name: 'mail', auth: { type: AuthKind.OAuth2AuthCode, tokenUrl, clientId: 'capstan-mail', refreshTokenKey: 'AC_REFRESH' } };
    await putSecret(nc, t, 'AC_REFRESH', 'refresh-1', { ...admin, connector });
    await putSecret(nc, t, 'AC_TOKEN', 'ac-access-1', { ...admin, lifecycle: Lifecycle.Refreshable, connector, expiresAt: new Date(Date.now() - 60_000) });
    const runId = newRunId();
    const l = await issueLease(nc, t, { runId, step: 'a', attempt: 1, keys: ['AC_TOKEN', 'AC_REFRESH'] });
    expect(await redeemValues(nc, t, { leaseId: l.leaseId, runId, step: 'a', attempt: 1 })).toEqual({ AC_TOKEN: 'ac-access-2', AC_REFRESH: 'refresh-2' });
    // The token expires (by the database's clock); the issuer now refuses: no lease.
    await d.db.execute(sql`update secrets set expires_at = clock_timestamp() - interval '1 second' where tenant = ${t} and name = 'AC_TOKEN'`);
    let err: unknown;
    try {
      await issueLease(nc, t, { runId, step: 'b', attempt: 1, keys: ['AC_TOKEN'] });
    } catch (e) {
      err = e;
      errors.push((e as Error).message);
    }
    expect((err as CapstanError).code).toBe(ErrorCode.CredentialRefreshFailed);
    expect((err as Error).message).toMatch(/token endpoint http:\/\/127\.0\.0\.1:\d+\/oauth\/token answered 400 \(invalid_grant\)/);
    expect((err as Error).message).not.toMatch(/refresh-\d/);
    // Refusing a refresh on a bad connector is checked when it is stored.
    expect(await codeOf(putSecret(nc, t, 'BAD_REFRESHABLE', 'x', { ...admin, lifecycle: Lifecycle.Refreshable }))).toBe(ErrorCode.InvalidArgument);
  });
});

describe('D1: single use under racing redeemers, TTL, revocation', () => {
  it('1000 leases × 16 concurrent redeemers: exactly one success each; all rejected after their TTL', { timeout: 300_000 }, async () => {
    await putSecret(nc, t, 'D1_TOKEN', 'd1-token-value', { ...admin });
    // Redeemers on their own connections, as several sandbox nodes would be.
    const conns: NatsConnection[] = await Promise.all(Array.from({ length: 4 }, (_, i) => connectAs(url, t, Role.Sandbox, `d1-${i}`)));
    try {
      const runs = Array.from({ length: 100 }, () => newRunId());
      const scopes = runs.flatMap((runId) => Array.from({ length: 10 }, (_, i) => ({ runId, step: `s${i}`, attempt: 1 })));
      const leases: { leaseId: string; scope: (typeof scopes)[number] }[] = [];
      const i0 = performance.now();
      await pool(scopes, 32, async (scope) => {
        const l = await issueLease(nc, t, { ...scope, keys: ['D1_TOKEN'], ttlMs: 240_000 });
        leases.push({ leaseId: l.leaseId, scope });
      });
      const issueMs = performance.now() - i0;
      expect(leases).toHaveLength(1000);

      const outcome = new Map<string, Record<string, number>>();
      const r0 = performance.now();
      await pool(leases, 40, async ({ leaseId, scope }) => {
        const recipient = generateRecipient();
        const counts: Record<string, number> = {};
        await Promise.all(
          Array.from({ length: 16 }, async (_, k) => {
            const nc = conns[k % conns.length] as NatsConnection;
            let code = 'ok';
            try {
              const { sealed } = await redeemLeaseAs(nc, t, { ...scope, leaseId, recipientKey: recipient.publicKey }, { timeoutMs: 60_000, signer });
              expect(openLeaseValues(recipient, t, { ...scope, leaseId }, sealed)).toEqual({ D1_TOKEN: 'd1-token-value' });
            } catch (e) {
              code = CapstanError.is(e) ? e.code : String(e);
            }
            counts[code] = (counts[code] ?? 0) + 1;
          }),
        );
        outcome.set(leaseId, counts);
      });
      const raceMs = performance.now() - r0;
      const total: Record<string, number> = {};
      for (const c of outcome.values()) for (const [k, v] of Object.entries(c)) total[k] = (total[k] ?? 0) + v;
      const perLease = [...outcome.values()].map((c) => c['ok'] ?? 0);
      const exactlyOne = perLease.filter((n) => n === 1).length;
      process.stdout.write(
        `D1: ${leases.length} leases issued in ${issueMs.toFixed(0)} ms; ${leases.length * 16} racing redemptions in ${raceMs.toFixed(0)} ms: ` +
          `${JSON.stringify(total)}; leases with exactly one success: ${exactlyOne}, with none: ${perLease.filter((n) => n === 0).length}, with more: ${perLease.filter((n) => n > 1).length}\n`,
      );
      expect(exactlyOne).toBe(1000);
      expect(total).toEqual({ ok: 1000, [ErrorCode.LeaseUsed]: 15_000 });
      const [db1] = await queryRows<{ issued: number; redeemed: number; audited: number; denied: number }>(
        d,
        sql`select (select count(*)::int from audit_log where tenant = ${t} and kind = 'lease.issued' and detail->'keys' = '["D1_TOKEN"]'::jsonb) as issued,
                   (select count(*)::int from leases where tenant = ${t} and keys = array['D1_TOKEN'] and redeemed_at is not null) as redeemed,
                   (select count(*)::int from audit_log where tenant = ${t} and kind = 'lease.redeemed' and detail->'keys' = '["D1_TOKEN"]'::jsonb) as audited,
                   (select count(*)::int from audit_log where tenant = ${t} and kind = 'lease.denied' and detail->>'code' = 'lease_used' and detail->'keys' = '["D1_TOKEN"]'::jsonb) as denied`,
      );
      expect(db1).toEqual({ issued: 1000, redeemed: 1000, audited: 1000, denied: 15_000 });

      // 500 leases claimed, then left unredeemed until their TTL (from the claim, by the database's clock) + 1 s has passed.
      const late: { leaseId: string; scope: (typeof scopes)[number]; expiresAt: number }[] = [];
      const lateRun = newRunId();
      await pool(
        Array.from({ length: 500 }, (_, i) => ({ runId: lateRun, step: `late${i}`, attempt: 1 })),
        32,
        async (scope) => {
          const l = await issueLease(nc, t, { ...scope, keys: ['D1_TOKEN'], ttlMs: 2000 });
          const expiresAt = await claimLease(nc, t, { ...scope, leaseId: l.leaseId, sandbox: `cap-${scope.runId}-${scope.step}-1` });
          late.push({ leaseId: l.leaseId, scope, expiresAt: expiresAt.getTime() });
        },
      );
      const lastExpiry = Math.max(...late.map((l) => l.expiresAt));
      await eventually('the database clock at TTL + 1 s', async () => ((await dbNow()).getTime() > lastExpiry + 1000 ? true : undefined), 15_000, 100);
      const lateCodes: Record<string, number> = {};
      await pool(late, 40, async ({ leaseId, scope }) => {
        const recipient = generateRecipient();
        await Promise.all(
          Array.from({ length: 4 }, async () => {
            let code = 'ok';
            try {
              await redeemLeaseAs(nc, t, { ...scope, leaseId, recipientKey: recipient.publicKey }, { timeoutMs: 60_000, signer });
            } catch (e) {
              code = CapstanError.is(e) ? e.code : String(e);
            }
            lateCodes[code] = (lateCodes[code] ?? 0) + 1;
          }),
        );
      });
      process.stdout.write(`D1: 500 leases redeemed (×4) at TTL + 1 s: ${JSON.stringify(lateCodes)}\n`);
      expect(lateCodes).toEqual({ [ErrorCode.LeaseExpired]: 2000 });
      // And the raced ones, after their own use: still refused.
      const sample = leases.slice(0, 50);
      const usedCodes = await Promise.all(sample.map(({ leaseId, scope }) => codeOf(redeemValues(nc, t, { ...scope, leaseId }))));
      expect(new Set(usedCodes)).toEqual(new Set([ErrorCode.LeaseUsed]));
    } finally {
      await Promise.all(conns.map((c) => c.close()));
    }
  });
});

describe('D3: canaries', () => {
  it('50 canary values across puts, leases and errors appear in no log, stream, table, wire message or error', { timeout: 120_000 }, async () => {
    const canaries = Array.from({ length: 50 }, () => `cnry-${randomBytes(32).toString('base64url')}`);
    // Everything that crosses the server while the canaries are about, captured raw.
    const tap = await connectAs(url, t, Role.Admin, 'canary-tap');
    const wire: Buffer[] = [];
    const sub = tap.subscribe('>', {
      callback: (_e, m) => {
        wire.push(Buffer.from(m.subject), Buffer.from(m.data));
        if (m.headers) wire.push(Buffer.from(m.headers.toString()));
      },
    });
    await tap.flush();
    const cli: string[] = [];
    try {
      // 30 stored through the kit client and leased (sealed redemptions).
      for (const [i, c] of canaries.slice(0, 30).entries()) await putSecret(nc, t, `CANARY_${i}`, c, { ...admin });
      const runId = newRunId();
      for (let i = 0; i < 30; i += 5) {
        const keys = Array.from({ length: 5 }, (_, k) => `CANARY_${i + k}`);
        const scope = { runId, step: `c${i}`, attempt: 1 };
        const lease = await issueLease(nc, t, { ...scope, keys });
        const values = await redeemValues(nc, t, { ...scope, leaseId: lease.leaseId });
        expect(Object.values(values).sort()).toEqual(canaries.slice(i, i + 5).sort());
        // Redeemed again, out of scope, after a revoke: refusals.
        await codeOf(redeemValues(nc, t, { ...scope, leaseId: lease.leaseId }));
        await codeOf(redeemValues(nc, t, { ...scope, step: 'wrong', leaseId: lease.leaseId }));
      }
      await revokeRun(nc, t, runId as RunId, { ...admin });
      // 5 rotated in, through the kit client.
      for (const [i, c] of canaries.slice(30, 35).entries()) await rotateSecret(nc, t, `CANARY_${i}`, c, { ...admin });
      // 5 stored by the CLI from the environment, 5 from files.
      for (const [i, c] of canaries.slice(35, 40).entries()) {
        const r = await runCli(['secrets', 'put', `CLI_CANARY_${i}`, '--from-env', 'CANARY', '--tenant', t, '--nats', url, '--as', by], { CANARY: c });
        expect(r.code, r.err).toBe(0);
        cli.push(r.out, r.err);
      }
      const dir = mkdtempSync(join(tmpdir(), 'capstan-canary-'));
      for (const [i, c] of canaries.slice(40, 45).entries()) {
        const f = join(dir, `v${i}`);
        writeFileSync(f, c);
        const r = await runCli(['secrets', 'put', `FILE_CANARY_${i}`, '--value-file', f, '--tenant', t, '--nats', url, '--as', by]);
        expect(r.code, r.err).toBe(0);
        cli.push(r.out, r.err);
      }
      // 5 in requests that fail: bad values, unknown names, a value on the command line.
      const [c45, c46, c47, c48, c49] = canaries.slice(45) as [string, string, string, string, string];
      await codeOf(putSecret(nc, t, 'NUL_CANARY', `${c45}\0tail`, { ...admin }));
      await codeOf(putSecret(nc, t, 'HUGE_CANARY', c46.repeat(3000), { ...admin }));
      await codeOf(rotateSecret(nc, t, 'MISSING_CANARY', c47, { ...admin }));
      await codeOf(putSecret(nc, t, 'REFRESH_CANARY', c48, { ...admin, lifecycle: Lifecycle.Refreshable }));
      const inline = await runCli(['secrets', 'put', 'INLINE_CANARY', `--value=${c49}`, '--tenant', t, '--nats', url, '--as', by]);
      expect(inline.code).toBe(2);
      cli.push(inline.out, inline.err);
      // The raw request of a put travels sealed: show the tap saw the request at all.
      await eventually(
        'the tap has seen the put requests',
        () => Promise.resolve(wire.some((b) => b.toString().includes(Subjects.secrets(t, SecretsVerb.Put))) ? true : undefined),
        5000,
      );
    } finally {
      sub.unsubscribe();
      await tap.close();
    }

    const haystacks: [string, string][] = [
      ['service log', logs],
      ['error messages', errors.join('\n')],
      ['cli output', cli.join('\n')],
      ['nats wire', Buffer.concat(wire).toString('latin1')],
    ];
    const jsm = await h.jsm(t);
    for (const name of [Streams.runs(t), Streams.commands(t), Streams.work(t), Streams.deadLetters(t), Streams.fleet(t)]) {
      const info = await jsm.streams.info(name).catch(() => undefined);
      if (!info) continue;
      const parts: Buffer[] = [];
      for (let seq = info.state.first_seq; seq <= info.state.last_seq && seq > 0; seq++) {
        const m = await jsm.streams.getMessage(name, { seq }).catch(() => undefined);
        if (m) parts.push(Buffer.from(m.data), Buffer.from(m.subject));
      }
      haystacks.push([`stream ${name}`, Buffer.concat(parts).toString('latin1')]);
    }
    // Every table of the database, as pg_dump writes it, and as rows.
    try {
      haystacks.push(['pg_dump', execFileSync('pg_dump', ['--data-only', '--no-owner', scratch.url], { maxBuffer: 512 * 1024 * 1024 }).toString('latin1')]);
    } catch (e) {
      process.stdout.write(`pg_dump unavailable (${(e as Error).message.split('\n')[0] ?? ''}); tables read row by row only\n`);
    }
    const tables = await queryRows<{ name: string }>(
      d,
      sql`select format('%I.%I', schemaname, tablename) as name from pg_tables where schemaname not in ('pg_catalog', 'information_schema')`,
    );
    for (const { name } of tables) {
      const rows = await queryRows<{ r: string }>(d, sql.raw(`select row_to_json(x)::text as r from ${name} x`));
      haystacks.push([`table ${name}`, rows.map((r) => r.r).join('\n')]);
    }
    const forms = (c: string) => [c, Buffer.from(c).toString('base64'), Buffer.from(c).toString('base64url'), Buffer.from(c).toString('hex'), encodeURIComponent(c)];
    const found = canaries.flatMap((c, i) => forms(c).flatMap((f) => haystacks.filter(([, hay]) => hay.includes(f)).map(([where]) => `canary ${i} in ${where}`)));
    process.stdout.write(`canaries: ${canaries.length} planted, ${haystacks.length} places searched (${tables.length} tables), ${found.length} found\n`);
    expect(found).toEqual([]);
    // The search is not vacuous: the service did log, the tables hold the ciphertexts.
    expect(logs.length).toBeGreaterThan(1000);
    const [n] = await queryRows<{ n: number }>(d, sql`select count(*)::int as n from secrets where tenant = ${t} and name like '%CANARY%' and ciphertext is not null`);
    expect(n?.n).toBe(40);
  });
});

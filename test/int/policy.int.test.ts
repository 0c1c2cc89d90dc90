/**
 * The policy service over NATS, against the real nats-server (and Postgres for the
 * projection): versions are set, read and listed; a version once stored never changes (the
 * stream refuses deletes and purges, a racing change becomes the next version, never an
 * overwrite); decisions use the version in force, `decideAt` any past version; nobody
 * answering is `policy_unavailable`; bad payloads get typed errors; a forged record on the
 * versions subject is an invalid version under which everything is denied; the projector
 * writes one `policies` row and one audit row per version, exactly once.
 */
import { afterAll, beforeAll, describe, expect, inject, it } from 'vitest';
import { and, asc, eq } from 'drizzle-orm';
import { askPolicy, decideAt, getPolicy, openDatabase, policyHistory, setPolicy, testPolicy, type Database } from '@capstan/kit';
import { createPolicyService, loadConfig, type PolicyService } from '@capstan/policy';
import { applyPolicyVersion, createProjector, loadConfig as projectorConfig, rebuildPolicies, verifyProjections, type ProjectorApp } from '@capstan/projector';
import {
  CapstanError,
  db as schema,
  decode,
  encode,
  ErrorCode,
  Headers,
  PolicyAction,
  PolicyInvalidError,
  PolicyVerb,
  Streams,
  Subjects,
  type PolicyQuery,
  type TenantId,
  Role,
} from '@capstan/schemas';
import { connect, eventually, provision, silent, testAuthStore, type Harness, serviceEnv } from '../harness/fixtures.js';
import { scratchDatabase } from '../harness/postgres.js';

let url: string;
let h: Harness;
let t: TenantId;
const services: PolicyService[] = [];

const V1 = `
@id("inline-only")
permit(principal in Workflow::"${'$T'}/etl", action == Action::"run-step", resource) when { resource.level == 0 };
@approval("operators")
permit(principal, action == Action::"lease-secret", resource == Secret::"${'$T'}/DEMO_TOKEN");
`;
const V2 = `
@id("sandboxed")
permit(principal in Workflow::"${'$T'}/etl", action == Action::"run-step", resource) when { resource.level <= 2 };
permit(principal, action == Action::"lease-secret", resource == Secret::"${'$T'}/DEMO_TOKEN");
forbid(principal, action == Action::"egress", resource) when { resource.port == 22 };
`;
const text = (v: string) => v.replaceAll('$T', t);
const mode = (m: 0 | 1 | 2 | 3): PolicyQuery => ({ action: PolicyAction.RunStep, workflow: 'etl', step: 'load', mode: m });
const token: PolicyQuery = { action: PolicyAction.LeaseSecret, workflow: 'etl', step: 'load', secret: 'DEMO_TOKEN' };

async function startService(): Promise<PolicyService> {
  const s = await createPolicyService(loadConfig({ ...(await serviceEnv(url, Role.Policy)), LOG_LEVEL: 'silent', POLICY_DISCOVERY_MS: '200' }), silent);
  await s.start();
  services.push(s);
  return s;
}

/** A raw request, as any NATS client could send it. */
/** A request as any client makes it; a refusal comes back as kit's rpc convention has it (code and message in headers). */
async function raw(tenant: TenantId, verb: string, payload: Uint8Array): Promise<Record<string, unknown>> {
  const m = await (await h.nc(tenant)).request(Subjects.policy(tenant, verb as PolicyVerb), payload, { timeout: 5000 });
  const code = m.headers?.get(Headers.ErrorCode);
  if (code) return { error: { code, message: m.headers?.get(Headers.Error) }, signed: Boolean(m.headers?.get(Headers.Signature)), bodyBytes: m.data.length };
  return decode(m.data);
}

async function rejection(p: Promise<unknown>): Promise<CapstanError> {
  try {
    await p;
  } catch (e) {
    if (CapstanError.is(e)) return e;
    throw e;
  }
  throw new Error('expected a rejection');
}

beforeAll(async () => {
  url = inject('natsUrl');
  h = await connect(url);
  t = await provision(h, 'pol');
});

afterAll(async () => {
  for (const s of services) await s.stop();
  await h?.close();
});

describe('policy service', () => {
  it('policy - nobody answering is policy_unavailable (retryable), never an allow', async () => {
    for (const p of [
      askPolicy(await h.nc(t), t, [mode(0)], { timeoutMs: 500 }),
      decideAt(await h.nc(t), t, 1, [mode(0)], { timeoutMs: 500 }),
      setPolicy(await h.nc(t), t, { text: 'permit(principal, action, resource);', by: 'ops' }, { timeoutMs: 500 }),
    ]) {
      const e = await rejection(p);
      expect(e.code).toBe(ErrorCode.PolicyUnavailable);
      expect(e.retryable).toBe(true);
    }
  });

  it('policy - a tenant without a policy gets deny, version 0', async () => {
    await startService();
    expect(await askPolicy(await h.nc(t), t, [mode(0), token])).toEqual({ decision: 'deny', version: 0, policies: [] });
    expect(await getPolicy(await h.nc(t), t)).toEqual({ version: 0 });
    expect(await policyHistory(await h.nc(t), t)).toEqual({ latest: 0, versions: [] });
  });

  it("policy - an invalid policy is refused with Cedar's diagnostics and nothing is stored", async () => {
    const e = await rejection(setPolicy(await h.nc(t), t, { text: 'permit(principal, action == Action::"lease-secrett", resource);\npermit(principal, action', by: 'ops' }));
    expect(e).toBeInstanceOf(PolicyInvalidError);
    const diags = (e as PolicyInvalidError).diagnostics;
    expect(diags[0]).toMatchObject({ severity: 'error', line: 2 });
    expect(diags[0]?.message).toMatch(/unexpected end of input/);
    const e2 = await rejection(setPolicy(await h.nc(t), t, { text: 'permit(principal, action == Action::"lease-secrett", resource);', by: 'ops' }));
    expect((e2 as PolicyInvalidError).diagnostics[0]).toMatchObject({ severity: 'error', line: 1, policy: 'policy0', help: expect.stringMatching(/lease-secret/) });
    expect((await (await h.jsm(t)).streams.info(Streams.policy(t))).state.messages).toBe(0);
  });

  it('policy - set, get, history; the same text again records nothing; decisions use the version in force', async () => {
    const r1 = await setPolicy(await h.nc(t), t, { text: text(V1), by: 'alice', reason: 'first policy' });
    expect(r1).toMatchObject({ version: 1, unchanged: false, warnings: [] });
    expect(await askPolicy(await h.nc(t), t, [mode(0)])).toEqual({ decision: 'allow', version: 1, policies: ['inline-only'] });
    expect(await askPolicy(await h.nc(t), t, [mode(0), token])).toEqual({ decision: 'needs-approval', version: 1, policies: ['inline-only', 'policy1'], approvers: 'operators' });
    expect(await askPolicy(await h.nc(t), t, [mode(2)])).toMatchObject({ decision: 'deny', version: 1 });

    expect(await setPolicy(await h.nc(t), t, { text: text(V1), by: 'bob' })).toMatchObject({ version: 1, unchanged: true });
    const r2 = await setPolicy(await h.nc(t), t, { text: text(V2), by: 'bob' });
    expect(r2).toMatchObject({ version: 2, unchanged: false });
    // In force from the reply on.
    expect(await askPolicy(await h.nc(t), t, [mode(2), token])).toEqual({ decision: 'allow', version: 2, policies: ['sandboxed', 'policy1'] });

    const got = await getPolicy(await h.nc(t), t);
    expect(got).toMatchObject({ version: 2, valid: true, record: { version: 2, text: text(V2), by: 'bob', sha256: r2.sha256 } });
    expect((await getPolicy(await h.nc(t), t, 1)).record).toMatchObject({ version: 1, text: text(V1), by: 'alice', reason: 'first policy' });
    const hist = await policyHistory(await h.nc(t), t);
    expect(hist.latest).toBe(2);
    expect(hist.versions.map((v) => [v.version, v.by, v.valid])).toEqual([
      [1, 'alice', true],
      [2, 'bob', true],
    ]);
    expect((await (await h.jsm(t)).streams.info(Streams.policy(t))).state.messages).toBe(2);
  });

  it('policy - decideAt re-decides under a past version; an unknown version is a typed error', async () => {
    expect(await decideAt(await h.nc(t), t, 1, [mode(2)])).toMatchObject({ decision: 'deny', version: 1 });
    expect(await decideAt(await h.nc(t), t, 1, [token])).toMatchObject({ decision: 'needs-approval', version: 1, approvers: 'operators' });
    expect(await decideAt(await h.nc(t), t, 2, [mode(2)])).toMatchObject({ decision: 'allow', version: 2 });
    expect(await decideAt(await h.nc(t), t, 0, [mode(0)])).toEqual({ decision: 'deny', version: 0, policies: [] });
    const e = await rejection(decideAt(await h.nc(t), t, 99, [mode(0)]));
    expect(e.code).toBe(ErrorCode.PolicyVersionNotFound);
    expect(e.message).toMatch(/version 99 does not exist \(the latest is 2\)/);
  });

  it('policy - test decides without recording, under the version in force, a past one, or a candidate text', async () => {
    const now = await testPolicy(await h.nc(t), t, { queries: [mode(2), { action: 'teleport', workflow: 'etl', step: 'load' }] });
    expect(now).toMatchObject({ version: 2, candidate: false, combined: { decision: 'deny' } });
    expect(now.decisions[0]).toMatchObject({ decision: 'allow' });
    expect(now.decisions[1]?.errors?.[0]).toMatch(/unknown action "teleport"/);
    const past = await testPolicy(await h.nc(t), t, { queries: [mode(2)], version: 1 });
    expect(past.decisions[0]).toMatchObject({ decision: 'deny', version: 1 });
    const cand = await testPolicy(await h.nc(t), t, { queries: [mode(3)], text: `permit(principal, action == Action::"run-step", resource == Mode::"${t}/3");` });
    expect(cand).toMatchObject({ version: 0, candidate: true, combined: { decision: 'allow' } });
    const bad = await rejection(testPolicy(await h.nc(t), t, { queries: [mode(3)], text: 'permit(' }));
    expect(bad.code).toBe(ErrorCode.PolicyInvalid);
    expect((await (await h.jsm(t)).streams.info(Streams.policy(t))).state.messages).toBe(2);
  });

  it('policy - versions are immutable: the stream refuses deletes and purges', async () => {
    await expect((await h.jsm(t)).streams.deleteMessage(Streams.policy(t), 1)).rejects.toThrow();
    await expect((await h.jsm(t)).streams.purge(Streams.policy(t))).rejects.toThrow();
    const info = await (await h.jsm(t)).streams.info(Streams.policy(t));
    expect(info.config).toMatchObject({ deny_delete: true, deny_purge: true });
    expect(info.state.messages).toBe(2);
    expect((await getPolicy(await h.nc(t), t, 1)).record?.text).toBe(text(V1));
  });

  it('policy - racing changes on two instances become consecutive versions, none lost or overwritten', async () => {
    await startService();
    const texts = Array.from({ length: 8 }, (_, i) => `@id("race-${i}") permit(principal, action == Action::"egress", resource == Host::"${t}/h${i}.example:443");`);
    const nc = await h.nc(t);
    const replies = await Promise.all(texts.map((x, i) => setPolicy(nc, t, { text: x, by: `admin-${i}` })));
    const versions = replies.map((r) => r.version).sort((a, b) => a - b);
    expect(versions).toEqual([3, 4, 5, 6, 7, 8, 9, 10]);
    const hist = await policyHistory(await h.nc(t), t);
    expect(hist.latest).toBe(10);
    for (const [i, r] of replies.entries()) expect((await getPolicy(await h.nc(t), t, r.version)).record?.text).toBe(texts[i]);
    // Every instance decides with the version in force (at most a moment behind the others).
    const last = replies.find((r) => r.version === 10);
    const winner = texts[replies.indexOf(last!)]!;
    const host = /Host::"[^/]+\/([^"]+)"/.exec(winner)?.[1] ?? '';
    for (let i = 0; i < 6; i++) {
      const d = await askPolicy(await h.nc(t), t, [{ action: PolicyAction.Egress, workflow: 'etl', step: 'load', host }]);
      expect(d).toMatchObject({ decision: 'allow', version: 10 });
    }
  });

  it('policy - a forged record on the versions subject is an invalid version: everything is denied until a valid one follows', async () => {
    await (
      await h.js(t)
    ).publish(
      Subjects.policyVersions(t),
      encode({ version: 11, text: 'permit(principal, action, resource);', by: 'mallory', at: new Date().toISOString(), sha256: '0'.repeat(64) }),
    );
    const d = await eventually('the forged version in force', async () => {
      const x = await askPolicy(await h.nc(t), t, [mode(0)]);
      return x.version === 11 ? x : undefined;
    });
    expect(d.decision).toBe('deny');
    expect(d.errors?.join('\n')).toMatch(/version 11 is not a valid policy record: its text does not match its sha256/);
    expect((await policyHistory(await h.nc(t), t)).versions.at(-1)).toMatchObject({ version: 11, valid: false });
    expect(await getPolicy(await h.nc(t), t, 11)).toEqual({ version: 11, valid: false });
    expect(await setPolicy(await h.nc(t), t, { text: text(V2), by: 'alice', reason: 'restore' })).toMatchObject({ version: 12, unchanged: false });
    expect(await askPolicy(await h.nc(t), t, [mode(2)])).toMatchObject({ decision: 'allow', version: 12 });
  });

  it('policy - bad payloads get typed errors', async () => {
    const cases: [string, Uint8Array, string][] = [
      [PolicyVerb.Decide, new Uint8Array([0xc1, 0xc1]), ErrorCode.DecodeFailed],
      [PolicyVerb.Decide, encode({ queries: [] }), ErrorCode.SchemaViolation],
      [PolicyVerb.Decide, encode({ queries: 'all' }), ErrorCode.SchemaViolation],
      [PolicyVerb.Decide, encode({ queries: [mode(0)], tenant: 'other' }), ErrorCode.SchemaViolation],
      [PolicyVerb.Decide, encode({ queries: Array.from({ length: 65 }, () => mode(0)) }), ErrorCode.SchemaViolation],
      [PolicyVerb.Set, encode({ text: 'permit(principal, action, resource);', by: '' }), ErrorCode.SchemaViolation],
      [PolicyVerb.Set, encode({ text: 'x'.repeat(70_000), by: 'ops' }), ErrorCode.SchemaViolation],
      [PolicyVerb.Get, encode({ version: -1 }), ErrorCode.SchemaViolation],
      ['nope', encode({}), ErrorCode.InvalidArgument],
    ];
    for (const [verb, payload, code] of cases) {
      const r = await raw(t, verb, payload);
      // Refused in headers, signed by the policy service like its answers, nothing in the body.
      expect(r, `${verb} ${code}`).toMatchObject({ error: { code }, signed: true, bodyBytes: 0 });
    }
    // A caller that trusts only the tenant's policy service checks refusals as it checks
    // answers: signed by it, believed; judged against another account's key, refused unproven.
    const store = await testAuthStore();
    const own = { accounts: [store.tenantAccountKey(t)] };
    const other = { accounts: [store.tenantAccountKey(await provision(h, 'pol-other'))] };
    expect(await rejection(askPolicy(await h.nc(t), t, [], { trust: own }))).toMatchObject({ code: ErrorCode.SchemaViolation });
    expect(await rejection(askPolicy(await h.nc(t), t, [], { trust: other }))).toMatchObject({ code: ErrorCode.Unproven });
    // Malformed queries inside a valid request are decided: deny, with the reason.
    const d = await askPolicy(await h.nc(t), t, [mode(2), { action: 'run-step', workflow: '../other', step: 'load', mode: 2 } as unknown as PolicyQuery]);
    expect(d.decision).toBe('deny');
    expect(d.errors?.[0]).toMatch(/^query 1 \(run-step\): invalid query: workflow/);
  });

  it('policy - a tenant without a policy stream: decisions deny (version 0), changes are refused', async () => {
    const t2 = await provision(h, 'pol-nostream');
    await (await h.jsm(t2)).streams.delete(Streams.policy(t2));
    // The service serves a tenant once it finds it in the registry (every 200 ms here).
    const d = await eventually(
      'the service serves the new tenant',
      async () => {
        const r = await askPolicy(await h.nc(t2), t2, [mode(0)]);
        return r.errors?.some((x) => /no policy service|unavailable/i.test(x)) ? undefined : r;
      },
      10_000,
    );
    expect(d).toMatchObject({ decision: 'deny', version: 0, errors: [expect.stringMatching(/no policy stream/)] });
    const e = await rejection(setPolicy(await h.nc(t2), t2, { text: 'permit(principal, action, resource);', by: 'ops' }));
    expect(e.code).toBe(ErrorCode.UnknownTenant);
  });
});

describe('policy versions in the projections', () => {
  let scratch: Awaited<ReturnType<typeof scratchDatabase>>;
  let database: Database;
  let projector: ProjectorApp;

  beforeAll(async () => {
    scratch = await scratchDatabase('policy');
    database = await openDatabase({ url: scratch.url, log: silent });
    projector = await createProjector(projectorConfig({ ...(await serviceEnv(url, Role.Projector)), DATABASE_URL: scratch.url, CAPSTAN_TENANTS: t }), silent, { database });
    await projector.start();
  });

  afterAll(async () => {
    await projector?.stop();
    await database?.close();
    await scratch?.drop();
  });

  const rows = () => database.db.select().from(schema.policies).where(eq(schema.policies.tenant, t)).orderBy(asc(schema.policies.version));
  const auditRows = () =>
    database.db
      .select()
      .from(schema.auditLog)
      .where(and(eq(schema.auditLog.tenant, t), eq(schema.auditLog.kind, 'policy.changed')))
      .orderBy(asc(schema.auditLog.streamSeq));

  it('policy - one row and one audit row per version, exactly once; the forged record is a dead letter', async () => {
    const got = await eventually('12 versions projected', async () => {
      const [p, d] = [
        await rows(),
        await database.db
          .select()
          .from(schema.deadLetters)
          .where(and(eq(schema.deadLetters.tenant, t), eq(schema.deadLetters.stream, Streams.policy(t)))),
      ];
      return p.length === 11 && d.length === 1 ? { p, d } : undefined;
    });
    expect(got.p.map((r) => r.version)).toEqual([1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 12]);
    expect(got.p[0]).toMatchObject({ version: 1, by: 'alice', reason: 'first policy', text: text(V1), streamSeq: 1 });
    expect(got.d[0]).toMatchObject({ streamSeq: 11, code: ErrorCode.SchemaViolation });
    const audit = await auditRows();
    expect(audit.map((a) => [a.seq, a.actor, a.runId])).toEqual(got.p.map((p) => [-p.version, p.by, '']));
    expect(audit[0]?.detail).toMatchObject({ version: 1, sha256: got.p[0]?.sha256, reason: 'first policy' });

    // Applying a version again adds nothing; rebuilding from the stream adds nothing.
    const [first] = await (await h.jsm(t)).direct.getBatch(Streams.policy(t), { seq: 1, batch: 1 }).then(async (it) => {
      const out = [];
      for await (const m of it) out.push(m);
      return out;
    });
    expect(await applyPolicyVersion(database.db, t, { seq: first!.seq, subject: first!.subject, data: first!.data, time: first!.time })).toBe(false);
    const jsm = await h.jsm(t);
    await database.db.transaction((tx) => rebuildPolicies(tx, jsm, t));
    expect((await rows()).length).toBe(11);
    expect((await auditRows()).length).toBe(11);
    // Policy audit rows are not the run stream's: verify does not count them.
    const report = await verifyProjections(database, () => h.jsm(t), [t]);
    expect(report.mismatches.filter((m) => m.table === 'audit_log')).toEqual([]);
  });

  it('policy - the rows cannot be changed or removed', async () => {
    const refusal = async (p: PromiseLike<unknown>) => {
      try {
        await p;
      } catch (e) {
        return `${(e as Error).message} ${((e as Error).cause as Error | undefined)?.message ?? ''}`;
      }
      return 'accepted';
    };
    expect(await refusal(database.db.update(schema.policies).set({ by: 'mallory' }).where(eq(schema.policies.tenant, t)))).toMatch(/policies are immutable: UPDATE refused/);
    expect(await refusal(database.db.delete(schema.policies).where(eq(schema.policies.tenant, t)))).toMatch(/policies are immutable: DELETE refused/);
    expect((await rows()).map((r) => r.by)).not.toContain('mallory');
  });
});

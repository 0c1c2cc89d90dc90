/**
 * Forged decisions, played as an attacker would with real credentials against the real
 * nats-server (auth on), an orchestrator with policy checks on, and the policy service:
 * - approvals: unsigned, signed by an operator outside the policy's approver group, a
 *   signature made for another run or another subject, the run's own requester approving,
 *   another tenant's user's signature, a client credential, and an outsider claiming groups
 *   in the body. Each is refused (`unproven`, `approver_not_allowed`, or the server's
 *   permission violation) and nothing is recorded; then a member of the group approves and
 *   is recorded with the key that signed. A run submitted unsigned (no requester on record)
 *   cannot be approved at all, by its requester or anyone.
 * - policy answers: 100 runs whose real answer is deny, each raced by a forged "allow"
 *   published the moment the run asks (with the message id the orchestrator once used, and
 *   signed by a principal that is not the orchestrator), plus operators trying the subject
 *   the server closes to them. No forged answer is recorded.
 */
import { afterAll, beforeAll, describe, expect, inject, it } from 'vitest';
import { jetstream } from '@nats-io/jetstream';
import {
  createClient,
  createLogger,
  decodeEvent,
  issueCredential,
  parseCredentials,
  proofHeaders,
  readFrom,
  setPolicy,
  signerOf,
  tenantConnection,
  connectNats,
  type CapstanClient,
  type Signer,
  type TenantConnection,
} from '@capstan/kit';
import { createPolicyService, loadConfig as policyConfig } from '@capstan/policy';
import {
  CapstanError,
  CommandVerb,
  DeadLetterSource,
  decode,
  encode,
  Headers,
  MsgIds,
  Role,
  Streams,
  Subjects,
  type RunEvent,
  type RunId,
  type TenantId,
  type TenantRole,
} from '@capstan/schemas';
import { adminOf, connect, eventsOf, eventually, provision, serviceEnv, silent, startServices, type Harness, type InProcessServices } from '../harness/fixtures.js';

const url = inject('natsUrl');
const RACES = 100;

let h: Harness;
let t: TenantId;
let other: TenantId;
let services: InProcessServices;
let stopPolicy: () => Promise<void>;
const opened: TenantConnection[] = [];

/** A tenant credential, connected as a plain NATS client, and its signer. */
async function person(tenant: TenantId, role: TenantRole, name: string, groups: readonly string[] = []): Promise<{ tc: TenantConnection; signer: Signer; client: CapstanClient }> {
  const { creds } = await issueCredential(await adminOf(url), tenant, role, name, groups.length ? { groups } : {});
  const c = await parseCredentials(creds, name);
  const signer = signerOf(c.jwt, c.seed);
  const tc = await tenantConnection(tenant, await connectNats(url, name, silent, { credentials: c }), { signer });
  opened.push(tc);
  return { tc, signer, client: await createClient(tc) };
}

/** The same connection with another (or no) signer: how a forger sends. */
const forging = (tc: TenantConnection, signer?: Signer) => createClient({ tenant: tc.tenant, nc: tc.nc, js: tc.js, jsm: tc.jsm, ...(signer ? { signer } : {}) });

async function refusal(p: Promise<unknown>): Promise<string> {
  try {
    await p;
  } catch (e) {
    return CapstanError.is(e) ? e.code : (e as Error).message;
  }
  return 'accepted';
}

const decisionsOf = (events: readonly RunEvent[]) => events.filter((e) => e.type === 'approval.decided');

const policyText = (tenant: TenantId) => `
@id("run-approval")
permit(principal in Workflow::"${tenant}/demo.approval", action == Action::"run-step", resource) when { resource.level <= 2 };
@id("token-needs-finance")
@approval("finance")
permit(principal in Workflow::"${tenant}/demo.approval", action == Action::"lease-secret", resource == Secret::"${tenant}/DEMO_TOKEN");
`;

beforeAll(async () => {
  h = await connect(url);
  t = await provision(h, 'atk');
  other = await provision(h, 'atk-other');
  const policy = await createPolicyService(policyConfig({ ...(await serviceEnv(url, Role.Policy)), CAPSTAN_TENANTS: t }), createLogger('policy', 'silent'));
  await policy.start();
  stopPolicy = () => policy.stop();
  services = await startServices(url, [t], { env: { ORCH_POLICY: 'on', ORCH_APPROVAL_TTL_MS: '600000' } });
  await setPolicy(await h.nc(t), t, { text: policyText(t), by: 'sec-team' });
}, 120_000);

afterAll(async () => {
  await services?.stop();
  await stopPolicy?.();
  await Promise.allSettled(opened.map((c) => c.nc.close()));
  await h?.close();
});

/** Submits demo.approval as `client` and waits until its `deliver` step waits for a finance approver. */
async function waitingForFinance(client: CapstanClient): Promise<RunId> {
  const runId = await client.submit(t, 'demo.approval', { input: {} });
  await eventually('the approval is requested', async () => ((await eventsOf(h, t, runId)).some((e) => e.type === 'approval.requested') ? true : undefined), 60_000);
  return runId;
}

describe('attack: forged decisions', () => {
  it('attack - forged approvals are refused and recorded nowhere; a finance approver is recorded with the key that signed', async () => {
    const carol = await person(t, Role.Operator, 'carol', ['finance']);
    const dave = await person(t, Role.Operator, 'dave', ['finance']);
    const bob = await person(t, Role.Operator, 'bob');
    const app = await person(t, Role.Client, 'app');
    const stranger = await person(other, Role.Operator, 'mallory', ['finance']);

    // Carol submits (signed): she is the run's requester.
    const runId = await waitingForFinance(carol.client);
    const decoy = await waitingForFinance(carol.client);
    const started = (await eventsOf(h, t, runId)).find((e) => e.type === 'run.started');
    expect(started?.type === 'run.started' && started.data.submitter?.key).toBe(carol.signer.publicKey);
    const requested = (await eventsOf(h, t, runId)).find((e) => e.type === 'approval.requested');
    expect(requested?.type === 'approval.requested' && requested.data.approvers).toBe('finance');

    const approve = async (cp: CapstanClient | Promise<CapstanClient>, by = 'ceo', groups?: string[]) =>
      refusal((await cp).approve(t, runId, 'deliver', { by, timeoutMs: 30_000, ...(groups ? { groups } : {}) }));
    // A signature over another run's body, or for another subject, proves nothing here.
    const otherRunBody = (subject: string, body: Uint8Array) => dave.signer.sign(subject, encode({ ...(decode(body) as object), runId: decoy }));
    const forVerb = (verb: string) => (subject: string, body: Uint8Array) => dave.signer.sign(subject.replace(/\.approve$/, `.${verb}`), body);
    const outcomes: Record<string, string> = {
      unsigned: await approve(forging(bob.tc)),
      unsignedFinance: await approve(forging(dave.tc)),
      outsideGroup: await approve(bob.client),
      outsideGroupClaimingGroups: await approve(bob.client, 'dave', ['finance']),
      signedForAnotherRun: await approve(forging(bob.tc, { ...dave.signer, sign: otherRunBody })),
      signedForAnotherSubject: await approve(forging(bob.tc, { ...dave.signer, sign: forVerb('deny') })),
      selfApproval: await approve(carol.client),
      anotherTenantsUser: await approve(forging(bob.tc, stranger.signer)),
      clientCredential: await approve(app.client),
      clientCredentialUnsigned: await approve(forging(app.tc)),
    };
    expect(outcomes).toEqual({
      unsigned: 'unproven',
      unsignedFinance: 'unproven',
      outsideGroup: 'approver_not_allowed',
      outsideGroupClaimingGroups: 'approver_not_allowed',
      signedForAnotherRun: 'unproven',
      signedForAnotherSubject: 'unproven',
      selfApproval: 'approver_not_allowed',
      anotherTenantsUser: 'unproven',
      // The server refuses a client's publish on cmd.approve before any code sees it.
      clientCredential: 'permission_denied',
      clientCredentialUnsigned: 'permission_denied',
    });
    // Another tenant's user cannot even reach this tenant's subjects: its account has its own.
    expect(await refusal(stranger.client.approve(t, runId, 'deliver', { by: 'mallory' }))).toBe('permission_denied');
    expect(decisionsOf(await eventsOf(h, t, runId))).toHaveLength(0);

    // A forged deny and retry fare no better.
    expect(await refusal((await forging(bob.tc)).deny(t, runId, 'deliver', { by: 'ceo', timeoutMs: 30_000 }))).toBe('unproven');
    expect(await refusal(bob.client.deny(t, runId, 'deliver', { by: 'ceo', timeoutMs: 30_000 }))).toBe('approver_not_allowed');
    expect(await refusal((await forging(bob.tc)).retry(t, runId, { by: 'ceo', timeoutMs: 30_000 }))).toBe('unproven');
    expect(decisionsOf(await eventsOf(h, t, runId))).toHaveLength(0);

    // The legitimate approver: recorded as who signed, with the key, whatever `by` said.
    const ev = await dave.client.approve(t, runId, 'deliver', { by: 'someone-else', reason: 'checked', timeoutMs: 30_000 });
    expect(ev.type === 'approval.decided' && ev.data).toEqual({
      step: 'deliver',
      decision: 'approve',
      by: 'dave',
      reason: 'checked',
      signer: { name: 'dave', key: dave.signer.publicKey, role: Role.Operator },
    });
    expect(decisionsOf(await eventsOf(h, t, runId))).toHaveLength(1);
    // The decoy run was never touched by the signature made for it.
    expect(decisionsOf(await eventsOf(h, t, decoy))).toHaveLength(0);
  }, 180_000);

  it('attack - submitting unsigned does not evade four eyes: the requester (or anyone) approving a run that names no requester is refused', async () => {
    const erin = await person(t, Role.Operator, 'erin', ['finance']);
    const frank = await person(t, Role.Operator, 'frank', ['finance']);
    // Erin submits without a proof, so the run cannot tell she asked for it.
    const runId = await waitingForFinance(await forging(erin.tc));
    const started = (await eventsOf(h, t, runId)).find((e) => e.type === 'run.started');
    expect(started?.type === 'run.started' && started.data.submitter).toBeUndefined();
    const outcomes = {
      requester: await refusal(erin.client.approve(t, runId, 'deliver', { by: 'erin', timeoutMs: 30_000 })),
      anotherMember: await refusal(frank.client.approve(t, runId, 'deliver', { by: 'frank', timeoutMs: 30_000 })),
    };
    expect(outcomes).toEqual({ requester: 'approver_not_allowed', anotherMember: 'approver_not_allowed' });
    expect(decisionsOf(await eventsOf(h, t, runId))).toHaveLength(0);
    // Denying stays open to the group.
    const denied = await frank.client.deny(t, runId, 'deliver', { by: 'frank', reason: 'submit it signed', timeoutMs: 30_000 });
    expect(denied.type === 'approval.decided' && denied.data.decision).toBe('deny');
  }, 120_000);

  it('attack - an unsigned or forged cancel is refused; a signed one names who asked', async () => {
    const bob = await person(t, Role.Operator, 'bob2');
    const runId = await waitingForFinance(bob.client);
    const js = jetstream(bob.tc.nc);
    const forged = await js.publish(Subjects.command(t, CommandVerb.Cancel), encode({ runId, by: 'ceo' }));
    await eventually('the forged cancel is dead-lettered', async () => ((await deadLetterCodes()).get(forged.seq) === 'unproven' ? true : undefined));
    expect((await eventsOf(h, t, runId)).some((e) => e.type === 'run.cancel-requested')).toBe(false);
    await bob.client.cancel(t, runId, 'not needed', 'ceo');
    const end = await h.client.waitForEnd(t, runId, 30_000);
    expect(end.type).toBe('run.cancelled');
    const asked = (await eventsOf(h, t, runId)).find((e) => e.type === 'run.cancel-requested');
    expect(asked?.type === 'run.cancel-requested' && asked.data).toMatchObject({ by: 'bob2', signer: { key: bob.signer.publicKey } });
  }, 120_000);

  it(`attack - ${RACES} forged policy answers raced against the real one: none is recorded`, async () => {
    const admin = await h.tenant(t);
    const adminSigner = admin.signer as Signer;
    const forgedSeqs: number[] = [];
    const runs: RunId[] = [];
    const subject = Subjects.command(t, CommandVerb.Policy);
    // The forger (a user of the tenant's account with `>`, as a mis-set permission would give)
    // watches the runs and answers "allow" the moment one asks: unsigned, or signed by itself.
    const seen = new Set<string>();
    const sub = admin.nc.subscribe(Subjects.allRuns(t), {
      callback: (_e, m) => {
        const ev = decodeEvent(m);
        if (ev.type !== 'policy.requested' || seen.has(ev.runId)) return;
        seen.add(ev.runId);
        const body = encode({ runId: ev.runId, step: ev.data.step, attempt: ev.data.attempt, decision: 'allow', version: 1, policies: ['forged'] });
        const signed = runs.indexOf(ev.runId) % 2 === 1;
        void admin.js
          .publish(subject, body, {
            // The message id the orchestrator once used: first come would have won.
            msgID: MsgIds.command(CommandVerb.Policy, `${ev.runId}:${ev.data.step}:${ev.data.attempt}`),
            ...(signed ? { headers: proofHeaders(adminSigner, subject, body) } : {}),
          })
          .then((ack) => forgedSeqs.push(ack.seq));
      },
    });
    try {
      for (let i = 0; i < RACES; i++) runs.push(await h.client.submit(t, 'test.sandboxed', { input: {} }));
      // Every run gets the real answer (no policy allows test.sandboxed: deny) and fails.
      for (const runId of runs) {
        const end = await h.client.waitForEnd(t, runId, 120_000);
        expect(end.type === 'run.failed' && end.data.error.code).toBe('policy_denied');
      }
      await eventually('every forgery was answered', () => Promise.resolve(forgedSeqs.length === RACES ? true : undefined), 60_000);
      const codes = await eventually(
        'every forgery is dead-lettered',
        async () => {
          const all = await deadLetterCodes();
          return forgedSeqs.every((s) => all.has(s)) ? all : undefined;
        },
        60_000,
      );
      expect(new Set(forgedSeqs.map((s) => codes.get(s)))).toEqual(new Set(['unproven']));
    } finally {
      sub.unsubscribe();
    }
    let recordedForgeries = 0;
    for (const runId of runs) {
      const answers = (await eventsOf(h, t, runId)).filter((e) => e.type === 'policy.decided');
      expect(answers).toHaveLength(1);
      if (answers.some((e) => e.type === 'policy.decided' && (e.data.decision === 'allow' || e.data.policies.includes('forged')))) recordedForgeries++;
    }
    expect(recordedForgeries).toBe(0);

    // The first fence: an operator (or a client) may not publish a policy answer at all.
    for (const role of [Role.Operator, Role.Client] as const) {
      const p = await person(t, role, `forger-${role}`);
      const body = encode({ runId: runs[0], step: 'work', attempt: 1, decision: 'allow', version: 1, policies: ['forged'] });
      expect(await refusal(p.tc.js.publish(subject, body, { headers: proofHeaders(p.signer, subject, body) }))).toMatch(/permission/i);
    }
  }, 600_000);
});

/** Dead letters of commands: source stream sequence → error code. */
async function deadLetterCodes(): Promise<Map<number, string>> {
  const out = new Map<number, string>();
  const jsm = await h.jsm(t);
  for (const m of await readFrom(jsm, Streams.deadLetters(t), Subjects.deadLetter(t, DeadLetterSource.Command), 1)) {
    out.set(Number(m.header.get(Headers.SourceSeq)), m.header.get(Headers.ErrorCode));
  }
  return out;
}

/**
 * Who may decide, as pure rules: the author the orchestrator records from a proof, the
 * approver group and four-eyes rule judged against a run's events, `@self_approval` in the
 * policy, and console roles and approver groups per tenant.
 */
import { describe, expect, it } from 'vitest';
import { checkCredentialHolder, checkDecider, deciderOf } from '@capstan/orchestrator';
import { compilePolicySet, evaluate } from '@capstan/policy';
import { createSessions, groupsIn, parseUsers, requireAction, roleIn } from '@capstan/console';
import { combineDecisions, ErrorCode, parseTenantId, PolicyAction, type RunEvent } from '@capstan/schemas';
import type { Author } from '@capstan/kit';

const KEY = (c: string) => `U${c.repeat(55)}`;
const person = (name: string, key: string, groups: string[] = [], role = 'operator', pools: string[] = []): Author => ({
  publicKey: key,
  name,
  issuer: 'A',
  role,
  tenant: 'ta',
  groups,
  pools,
});
const RUN = '01HF7YAT00144GJ289144GJ289';

/** A run waiting for a finance approval; submitted (signed) by sam unless said otherwise, or `unsigned`. */
function history(o: { submitter?: { name: string; key: string }; submittedBy?: string; approvers?: string; selfApproval?: boolean; unsigned?: boolean }): RunEvent[] {
  const env = (seq: number, type: string, data: unknown) => ({ v: 1, runId: RUN, seq, at: 0, causationId: 'x', type, data }) as unknown as RunEvent;
  const submitter = o.unsigned ? undefined : (o.submitter ?? { name: 'sam', key: KEY('S') });
  return [
    env(1, 'run.started', { workflow: 'w', version: 1, input: {}, ...(submitter ? { submitter } : {}), ...(o.submittedBy ? { submittedBy: o.submittedBy } : {}) }),
    env(2, 'policy.requested', { step: 'deliver', attempt: 1, queries: [] }),
    env(3, 'policy.decided', {
      step: 'deliver',
      attempt: 1,
      decision: 'needs-approval',
      version: 1,
      policies: ['p'],
      approvers: o.approvers ?? 'finance',
      ...(o.selfApproval ? { selfApproval: true } : {}),
    }),
    env(4, 'approval.requested', { step: 'deliver', attempt: 1, approvers: o.approvers ?? 'finance', version: 1, policies: ['p'], expiresInMs: 1000 }),
  ];
}

const approve = { verb: 'approve' as const, body: { runId: RUN as never, step: 'deliver' } };
const codeOf = (f: () => void): string => {
  try {
    f();
    return 'allowed';
  } catch (e) {
    return (e as { code: string }).code;
  }
};

describe('decisions - who decided', () => {
  it('decisions - a person is the credential that signed; a body `by` or `groups` from them is ignored', () => {
    const d = deciderOf(person('dave', KEY('D'), ['finance']), { by: 'ceo', groups: ['board'] });
    expect(d).toEqual({ by: 'dave', signer: { name: 'dave', key: KEY('D'), role: 'operator' }, groups: ['finance'] });
  });

  it("decisions - a console (or the admin) vouches for its signed-in user and that user's groups", () => {
    const d = deciderOf(person('console@ta', KEY('C'), [], 'console'), { by: 'ann', groups: ['finance'] });
    expect(d).toEqual({ by: 'ann', signer: { name: 'console@ta', key: KEY('C'), role: 'console' }, groups: ['finance'] });
  });

  it('decisions - the approver group: members only; the default `operators` lets any operator', () => {
    expect(codeOf(() => checkDecider(approve, deciderOf(person('bob', KEY('B')), {}), history({})))).toBe(ErrorCode.ApproverNotAllowed);
    expect(codeOf(() => checkDecider(approve, deciderOf(person('dave', KEY('D'), ['finance']), {}), history({})))).toBe('allowed');
    expect(codeOf(() => checkDecider(approve, deciderOf(person('bob', KEY('B')), {}), history({ approvers: 'operators' })))).toBe('allowed');
    // A client or worker credential never decides, whatever it claims.
    expect(codeOf(() => checkDecider(approve, deciderOf(person('app', KEY('P'), ['finance'], 'client'), {}), history({})))).toBe(ErrorCode.ApproverNotAllowed);
  });

  it('decisions - the requester may not approve their own run unless the policy allows it; denying it is theirs to do', () => {
    const carol = person('carol', KEY('C'), ['finance']);
    const submitted = { submitter: { name: 'carol', key: KEY('C') } };
    expect(codeOf(() => checkDecider(approve, deciderOf(carol, {}), history(submitted)))).toBe(ErrorCode.ApproverNotAllowed);
    expect(codeOf(() => checkDecider(approve, deciderOf(carol, {}), history({ ...submitted, selfApproval: true })))).toBe('allowed');
    expect(codeOf(() => checkDecider({ ...approve, verb: 'deny' } as never, deciderOf(carol, {}), history(submitted)))).toBe('allowed');
    // Through one console credential, two users are two people.
    const viaConsole = { submitter: { name: 'console@ta', key: KEY('K') }, submittedBy: 'ann' };
    const consoleAs = (by: string) => deciderOf(person('console@ta', KEY('K'), [], 'console'), { by, groups: ['finance'] });
    expect(codeOf(() => checkDecider(approve, consoleAs('ann'), history(viaConsole)))).toBe(ErrorCode.ApproverNotAllowed);
    expect(codeOf(() => checkDecider(approve, consoleAs('bea'), history(viaConsole)))).toBe('allowed');
  });
});

describe('decisions - an unsigned submit names no requester', () => {
  it('decisions - its approval is refused unless the policy allows self-approval; a plain signal step and a deny are not affected', () => {
    const dave = deciderOf(person('dave', KEY('D'), ['finance']), {});
    expect(codeOf(() => checkDecider(approve, dave, history({ unsigned: true })))).toBe(ErrorCode.ApproverNotAllowed);
    expect(codeOf(() => checkDecider(approve, dave, history({ unsigned: true, selfApproval: true })))).toBe('allowed');
    expect(codeOf(() => checkDecider({ ...approve, verb: 'deny' } as never, dave, history({ unsigned: true })))).toBe('allowed');
    const signal = [history({ unsigned: true })[0] as RunEvent];
    expect(codeOf(() => checkDecider(approve, dave, signal))).toBe('allowed');
  });
});

describe('decisions - a mode-3b answer is taken from the worker holding the attempt only', () => {
  const env = (seq: number, type: string, data: unknown) => ({ v: 1, runId: RUN, seq, at: 0, causationId: 'x', type, data }) as unknown as RunEvent;
  const run = (o: { mode?: number; jit?: boolean; startedBy?: string } = {}): RunEvent[] => [
    env(1, 'run.started', { workflow: 'w', version: 1, input: {} }),
    env(2, 'step.scheduled', {
      step: 'call',
      attempt: 1,
      handler: 'sandbox',
      mode: o.mode ?? 3,
      pool: 'default',
      timeoutMs: 1000,
      sandbox: { command: ['true'], jit: o.jit ?? true },
    }),
    ...(o.startedBy ? [env(3, 'step.started', { step: 'call', attempt: 1, worker: o.startedBy })] : []),
  ];
  const answer = (over: { step?: string; attempt?: number } = {}) =>
    ({
      verb: 'credential',
      body: { runId: RUN as never, step: 'call', attempt: 1, name: 'API_KEY', reason: 'r', decision: 'allow', version: 1, policies: [], ...over },
    }) as Parameters<typeof checkCredentialHolder>[0];
  const w1 = person('w1', KEY('W'), [], 'worker', ['default']);
  const judge = (a: Author, events: RunEvent[], over?: { step?: string; attempt?: number }) => codeOf(() => checkCredentialHolder(answer(over), a, events));

  it('decisions - the worker the attempt records, of the step’s pool, for a scheduled mode-3b attempt: taken', () => {
    expect(judge(w1, run({ startedBy: 'w1' }))).toBe('allowed');
  });

  it('decisions - anyone else, or an attempt that is not a running mode-3b step: step_not_held', () => {
    const refused = {
      anotherWorkerOfThePool: judge(person('w2', KEY('X'), [], 'worker', ['default']), run({ startedBy: 'w1' })),
      theSameNameInAnotherPool: judge(person('w1', KEY('Y'), [], 'worker', ['other']), run({ startedBy: 'w1' })),
      anOperator: judge(person('w1', KEY('W'), [], 'operator', ['default']), run({ startedBy: 'w1' })),
      nobodyRecordedAsRunningIt: judge(w1, run()),
      anotherAttempt: judge(w1, run({ startedBy: 'w1' }), { attempt: 2 }),
      anotherStep: judge(w1, run({ startedBy: 'w1' }), { step: 'other' }),
      aMode2Step: judge(w1, run({ mode: 2, jit: false, startedBy: 'w1' })),
      aMode3StepWithoutJit: judge(w1, run({ jit: false, startedBy: 'w1' })),
    };
    expect(new Set(Object.values(refused))).toEqual(new Set([ErrorCode.StepNotHeld]));
  });
});

describe('decisions - @self_approval in the policy', () => {
  const A = parseTenantId('ta');
  const lease = { action: PolicyAction.LeaseSecret, workflow: 'etl', step: 'load', secret: 'TOKEN' } as const;

  it('decisions - @self_approval("allowed") beside @approval puts selfApproval on the answer; absent, it is not', () => {
    const allowed = compilePolicySet('@approval("finance")\n@self_approval("allowed")\npermit(principal, action == Action::"lease-secret", resource == Secret::"ta/TOKEN");');
    const strict = compilePolicySet('@approval("finance")\npermit(principal, action == Action::"lease-secret", resource == Secret::"ta/TOKEN");');
    expect(evaluate(allowed, 1, A, lease)).toMatchObject({ decision: 'needs-approval', approvers: 'finance', selfApproval: true });
    expect(evaluate(strict, 1, A, lease)).not.toHaveProperty('selfApproval');
  });

  it('decisions - @self_approval is refused without @approval or with another value', () => {
    for (const text of [
      '@self_approval("allowed")\npermit(principal, action == Action::"egress", resource);',
      '@approval("x")\n@self_approval("yes")\npermit(principal, action == Action::"egress", resource);',
    ]) {
      const c = compilePolicySet(text);
      expect(c.ok).toBe(false);
      expect(c.diagnostics.map((d) => d.message).join('\n')).toMatch(/@self_approval/);
    }
  });

  it('decisions - combined: self-approval only when every query that needs a person allows it', () => {
    const yes = { decision: 'needs-approval', version: 1, policies: ['a'], approvers: 'finance', selfApproval: true } as const;
    const no = { decision: 'needs-approval', version: 1, policies: ['b'], approvers: 'finance' } as const;
    expect(combineDecisions(1, [yes, yes]).selfApproval).toBe(true);
    expect(combineDecisions(1, [yes, no]).selfApproval).toBeUndefined();
  });
});

describe('decisions - console roles are per tenant', () => {
  const users = parseUsers(
    JSON.stringify([
      { userId: 'ann', orgId: 'acme', role: 'operator', tenants: ['acme-dev', 'acme-prod'], access: { 'acme-prod': { role: 'viewer' }, 'acme-dev': { groups: ['finance'] } } },
    ]),
  );
  const ann = users[0] as (typeof users)[number];

  it("decisions - a role and groups per tenant; the user's role elsewhere", () => {
    expect([roleIn(ann, 'acme-dev'), roleIn(ann, 'acme-prod')]).toEqual(['operator', 'viewer']);
    expect([groupsIn(ann, 'acme-dev'), groupsIn(ann, 'acme-prod')]).toEqual([['finance'], []]);
  });

  it('decisions - the session carries them: approve in one tenant, refused (403) in the other', () => {
    const sessions = createSessions(Buffer.alloc(32, 1), 60_000);
    const s = sessions.open(
      sessions.seal(sessions.create({ orgId: ann.orgId, userId: ann.userId, role: ann.role, tenants: ann.tenants, ...(ann.access ? { access: ann.access } : {}) }, Date.now())),
      Date.now(),
    );
    expect(s).toBeDefined();
    if (!s) return;
    expect(() => requireAction(s, 'approve', 'acme-dev')).not.toThrow();
    expect(() => requireAction(s, 'approve', 'acme-prod')).toThrow(/viewer in acme-prod/);
  });

  it('decisions - an access entry for a tenant the user is not in, or a bad role, is a config error', () => {
    expect(() => parseUsers(JSON.stringify([{ userId: 'x', orgId: 'o', role: 'viewer', tenants: ['a-1'], access: { 'b-2': { role: 'admin' } } }]))).toThrow(/not in tenants/);
    expect(() => parseUsers(JSON.stringify([{ userId: 'x', orgId: 'o', role: 'viewer', tenants: ['a-1'], access: { 'a-1': { role: 'boss' } } }]))).toThrow(/role must be one of/);
  });
});

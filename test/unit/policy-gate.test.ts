/**
 * The policy gate in the pure core: a sandboxed step asks before it is scheduled, and the
 * recorded answer decides (allow, deny, needs-approval → a person or expiry); a reminder
 * timer asks again; a retry of a denied run asks again; mode 3b credential answers make
 * the run wait for a person without leaving the step. Every status reader agrees, and the
 * record replays.
 */
import { describe, expect, it } from 'vitest';
import { createRegistry, defineWorkflow, foldRun, runStatus, statusFromEvents, POLICY_REASK_MS } from '@capstan/actors';
import { encode, ErrorCode, RunStatus, TimerKind, type InputEventBody } from '@capstan/schemas';
import { projectRun } from '@capstan/projector';
import { RunRecorder, completed, started } from './support/runs.js';

const wf = defineWorkflow({
  id: 'gated',
  version: 1,
  steps: [
    { name: 'prep' },
    {
      name: 'publish',
      mode: 2,
      timeoutMs: 5000,
      retry: { maxAttempts: 2, initialIntervalMs: 10 },
      sandbox: { command: ['true'], secrets: ['TOKEN'], egress: ['api.example.com:443'] },
    },
  ],
});
const agent = defineWorkflow({ id: 'jit', version: 1, steps: [{ name: 'work', mode: 3, sandbox: { command: ['sh', '-c', 'true'], jit: true } }] });

const decided = (step: string, attempt: number, decision: 'allow' | 'deny' | 'needs-approval', extra: object = {}): InputEventBody => ({
  type: 'policy.decided',
  data: { step, attempt, decision, version: 3, policies: ['p1'], ...extra },
});
const approval = (step: string, decision: 'approve' | 'deny'): InputEventBody => ({ type: 'approval.decided', data: { step, decision, by: 'ann' } });
const fired = (step: string, attempt: number, kind: TimerKind, timerId: string): InputEventBody => ({ type: 'timer.fired', data: { timerId, kind, step, attempt } });

/** Every reader of status says the same after each event. */
function agree(r: RunRecorder): RunStatus {
  const folded = runStatus(r.state);
  expect(statusFromEvents(r.events)).toBe(folded);
  expect(
    projectRun(
      't',
      r.events.map((event, i) => ({ event, streamSeq: i + 1, bytes: encode(event) })),
    ).view.run?.status,
  ).toBe(folded);
  expect(foldRun(createRegistry([r.workflow]), r.events).state.seq).toBe(r.state.seq);
  return folded;
}

describe('policy gate', () => {
  it('a sandboxed step asks first, with its mode, secrets and egress, and a reminder', () => {
    const r = new RunRecorder(wf);
    r.apply(completed('prep', 1));
    expect(r.last.decisions.map((d) => d.type)).toEqual(['policy.requested', 'timer.scheduled']);
    const asked = r.last.decisions[0];
    expect(asked?.type === 'policy.requested' && asked.data.queries).toEqual([
      { action: 'run-step', workflow: 'gated', step: 'publish', mode: 2 },
      { action: 'lease-secret', workflow: 'gated', step: 'publish', secret: 'TOKEN' },
      { action: 'egress', workflow: 'gated', step: 'publish', host: 'api.example.com:443' },
    ]);
    const reminder = r.last.decisions[1];
    expect(reminder?.type === 'timer.scheduled' && reminder.data).toMatchObject({ kind: 'policy', delayMs: POLICY_REASK_MS, timerId: 'publish-a1-policy-1' });
    expect(agree(r)).toBe(RunStatus.Running);
  });

  it('allow schedules the step; deny fails the run with policy_denied naming the version', () => {
    const ok = new RunRecorder(wf);
    ok.apply(completed('prep', 1));
    ok.apply(decided('publish', 1, 'allow'));
    expect(ok.last.decisions.map((d) => d.type)).toEqual(['step.scheduled']);
    ok.apply(completed('publish', 1));
    expect(agree(ok)).toBe(RunStatus.Completed);

    const no = new RunRecorder(wf);
    no.apply(completed('prep', 1));
    no.apply(decided('publish', 1, 'deny', { policies: [] }));
    const failedEv = no.last.decisions[0];
    expect(failedEv?.type === 'run.failed' && failedEv.data.error.code).toBe(ErrorCode.PolicyDenied);
    expect(failedEv?.type === 'run.failed' && failedEv.data.error.message).toMatch(/policy version 3 \(no policy allows it: default deny\)/);
    expect(agree(no)).toBe(RunStatus.Failed);
  });

  it('needs-approval waits for a person: approve runs the step, deny and expiry fail the run', () => {
    for (const [end, code] of [
      ['approve', undefined],
      ['deny', ErrorCode.ApprovalDenied],
      ['expire', ErrorCode.ApprovalExpired],
    ] as const) {
      const r = new RunRecorder(wf);
      r.apply(completed('prep', 1));
      r.apply(decided('publish', 1, 'needs-approval', { approvers: 'security', expiresInMs: 60_000 }));
      expect(r.last.decisions.map((d) => d.type)).toEqual(['approval.requested', 'timer.scheduled']);
      expect(r.last.decisions[0]?.data).toMatchObject({ approvers: 'security', version: 3, policies: ['p1'], expiresInMs: 60_000 });
      expect(agree(r)).toBe(RunStatus.Waiting);
      if (end === 'expire') r.apply(fired('publish', 1, TimerKind.Approval, 'publish-a1-approval'));
      else r.apply(approval('publish', end));
      if (code) {
        const f = r.last.decisions[0];
        expect(f?.type === 'run.failed' && f.data.error.code).toBe(code);
        expect(agree(r)).toBe(RunStatus.Failed);
      } else {
        expect(r.last.decisions.map((d) => d.type)).toEqual(['step.scheduled']);
        expect(agree(r)).toBe(RunStatus.Running);
        // Deciding again is refused and records nothing.
        expect(() => r.apply(approval('publish', 'approve'))).toThrow(/not waiting|no longer/i);
      }
    }
  });

  it('no answer by the reminder asks again; a stale reminder is refused', () => {
    const r = new RunRecorder(wf);
    r.apply(completed('prep', 1));
    r.apply(fired('publish', 1, TimerKind.Policy, 'publish-a1-policy-1'));
    expect(r.last.decisions.map((d) => d.type)).toEqual(['policy.requested', 'timer.scheduled']);
    expect(r.last.decisions[1]?.data).toMatchObject({ timerId: 'publish-a1-policy-2' });
    expect(r.tryApply(fired('publish', 1, TimerKind.Policy, 'publish-a1-policy-1'))).toBeUndefined();
    r.apply(decided('publish', 1, 'allow'));
    expect(r.tryApply(fired('publish', 1, TimerKind.Policy, 'publish-a1-policy-2'))).toBeUndefined();
    expect(agree(r)).toBe(RunStatus.Running);
  });

  it('a retry of a denied run asks the policy again instead of scheduling the step', () => {
    const r = new RunRecorder(wf);
    r.apply(completed('prep', 1));
    r.apply(decided('publish', 1, 'deny'));
    r.apply({ type: 'run.retried', data: { by: 'ann' } });
    expect(r.last.decisions.map((d) => d.type)).toEqual(['policy.requested', 'timer.scheduled']);
    expect(r.last.decisions[0]?.data).toMatchObject({ step: 'publish', attempt: 2 });
    r.apply(decided('publish', 2, 'allow'));
    expect(r.last.decisions[0]?.data).toMatchObject({ step: 'publish', attempt: 2 });
    expect(agree(r)).toBe(RunStatus.Running);
  });
});

describe('mode 3b credential answers', () => {
  const cred = (decision: 'allow' | 'deny' | 'needs-approval'): InputEventBody => ({
    type: 'credential.decided',
    data: { step: 'work', attempt: 1, name: 'API_KEY', reason: 'publish', decision, version: 2, policies: ['p9'], ...(decision === 'needs-approval' ? { approvers: 'ops' } : {}) },
  });
  it('are recorded on the step; needs-approval makes the run wait until a person decides', () => {
    const r = new RunRecorder(agent);
    r.apply(decided('work', 1, 'allow'));
    r.apply(started('work', 1));
    r.apply(cred('allow'));
    expect(r.last.decisions).toEqual([]);
    expect(agree(r)).toBe(RunStatus.Running);
    r.apply(cred('needs-approval'));
    expect(r.last.decisions.map((d) => d.type)).toEqual(['approval.requested']);
    expect(agree(r)).toBe(RunStatus.Waiting);
    r.apply(approval('work', 'approve'));
    expect(agree(r)).toBe(RunStatus.Running);
    expect(() => r.apply(approval('work', 'approve'))).toThrow();
    r.apply(completed('work', 1));
    expect(agree(r)).toBe(RunStatus.Completed);
  });
});

import type { Command, InputEventBody } from '@capstan/schemas';
import { ApprovalDecision, DECISION_VERBS, ErrorCode, UnprovenError } from '@capstan/schemas';
import type { ProvenActor } from './host/authority.js';

function proven(d: ProvenActor | undefined, verb: string): ProvenActor {
  // Intake refuses these verbs unsigned; this is the type's word for it.
  if (!d) throw new UnprovenError(`cmd.${verb} carries no proven author`);
  return d;
}

/**
 * The input event a command asks the run to take (submit is handled apart: it starts a run).
 * `decider` is the proven author of a person's command: who decided is recorded from it.
 */
export function inputOf(cmd: Exclude<Command, { verb: 'submit' }>, decider?: ProvenActor): InputEventBody {
  switch (cmd.verb) {
    case 'started':
      return { type: 'step.started', data: { step: cmd.body.step, attempt: cmd.body.attempt, worker: cmd.body.worker } };
    case 'result': {
      const b = cmd.body;
      if (b.outcome === 'completed') {
        return { type: 'step.completed', data: { step: b.step, attempt: b.attempt, worker: b.worker, result: b.result ?? null, durationMs: b.durationMs } };
      }
      return {
        type: 'step.failed',
        data: {
          step: b.step,
          attempt: b.attempt,
          worker: b.worker,
          error: b.error ?? { code: ErrorCode.StepFailed, message: 'step failed', retryable: true },
          durationMs: b.durationMs,
        },
      };
    }
    case 'timer':
      return { type: 'timer.fired', data: { timerId: cmd.body.timerId, kind: cmd.body.kind, step: cmd.body.step, attempt: cmd.body.attempt } };
    case 'signal':
      return { type: 'run.signaled', data: { name: cmd.body.name, ...(cmd.body.payload !== undefined ? { payload: cmd.body.payload } : {}) } };
    case 'cancel': {
      const d = proven(decider, cmd.verb);
      return { type: 'run.cancel-requested', data: { ...(cmd.body.reason !== undefined ? { reason: cmd.body.reason } : {}), by: d.by, signer: d.signer } };
    }
    case 'approve':
    case 'deny': {
      const { step, reason } = cmd.body;
      const d = proven(decider, cmd.verb);
      const decision = cmd.verb === 'approve' ? ApprovalDecision.Approve : ApprovalDecision.Deny;
      return { type: 'approval.decided', data: { step, decision, by: d.by, ...(reason !== undefined ? { reason } : {}), signer: d.signer } };
    }
    case 'retry': {
      const d = proven(decider, cmd.verb);
      return { type: 'run.retried', data: { by: d.by, ...(cmd.body.reason !== undefined ? { reason: cmd.body.reason } : {}), signer: d.signer } };
    }
    case 'policy': {
      const { runId: _runId, ...data } = cmd.body;
      return { type: 'policy.decided', data };
    }
    case 'credential': {
      // The policy's signed answer was checked (host/authority.ts); the run records the decision, not the proof.
      const { runId: _runId, answer: _answer, ...data } = cmd.body;
      return { type: 'credential.decided', data };
    }
    case 'child': {
      const { step, attempt, child } = cmd.body;
      if (cmd.body.outcome === 'completed') return { type: 'child.completed', data: { step, attempt, child, result: cmd.body.result ?? null } };
      return { type: 'child.failed', data: { step, attempt, child, error: cmd.body.error ?? { code: ErrorCode.ChildFailed, message: 'the child run failed', retryable: true } } };
    }
  }
}

/**
 * Whether a rejected command is worth a dead letter. A duplicate `started` or a timer that
 * no longer applies is routine (a step finished before its timeout) and is dropped quietly;
 * a rejected result, cancel or signal is something a person may want to see, and a refused
 * approval or retry is the answer its sender waits for (the client reads it back).
 */
export function deadLetterWhenRejected(verb: Command['verb']): boolean {
  return verb === 'result' || verb === 'cancel' || verb === 'signal' || DECISION_VERBS.has(verb);
}

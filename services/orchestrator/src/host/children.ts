/**
 * The orchestrator's own submits of child runs and continuations, judged where they are
 * decided. A child's id is derived from its parent's, so anyone who can read the parent can
 * work it out: a run already standing under that id is the child only if its `run.started`
 * names the same parent (or predecessor), which only the orchestrator's proven submit can
 * make it say (intake.ts). Anything else is refused, and a refused child's parent hears of it
 * as the child's failure, so its step ends (with its retries) instead of waiting for ever.
 */
import type { RunState } from '@capstan/actors';
import { ErrorCode, type CommandOf, type ErrorRecord, type RunId } from '@capstan/schemas';
import { isChildSubmit } from './intake.js';
import type { Pending } from './types.js';

/**
 * Why a run standing under a submit's id is not the run that submit starts (undefined: it is,
 * and the submit is a duplicate). A submit that names no parent and no predecessor is a
 * client's, for which a standing run is the answer its idempotency asks for.
 */
export function notTheRunSubmitted(state: RunState, body: CommandOf<'submit'>): string | undefined {
  const p = body.parent;
  if (p) {
    const q = state.parent;
    const same = q !== undefined && q.runId === p.runId && q.step === p.step && q.attempt === p.attempt && q.child === p.child;
    if (!same) return `run ${body.runId ?? '?'} exists and is not the child of ${p.runId} step ${p.step} attempt ${p.attempt}: a child is never adopted`;
  }
  if (body.continuedFrom !== undefined && state.continuedFrom !== body.continuedFrom) {
    return `run ${body.runId ?? '?'} exists and does not continue ${body.continuedFrom}: a continuation is never adopted`;
  }
  return undefined;
}

/** Refusals a later attempt of the step (a new child id) may not meet: the workflow may be deployed by then, the id free. */
const RETRYABLE: ReadonlySet<string> = new Set([ErrorCode.UnknownWorkflow, ErrorCode.RunAlreadyExists]);

/**
 * The outcome the parent takes when its child's submit is refused: the child failed, with
 * the refusal's code (`unknown_workflow`, `schema_violation`, `run_already_exists`…). A
 * refusal of anything but the orchestrator's proven child submit tells no parent anything.
 */
export function refusedChildOutcome(p: Pending, error: ErrorRecord): CommandOf<'child'> | undefined {
  if (!isChildSubmit(p.cmd, p.author)) return undefined;
  const parent = p.cmd.body.parent;
  if (!parent) return undefined;
  return {
    runId: parent.runId,
    step: parent.step,
    attempt: parent.attempt,
    // A continuation of a child reports under the id its parent started.
    child: parent.child ?? (p.runId as RunId),
    outcome: 'failed',
    error: { code: error.code, message: `the child run ${p.runId} did not start: ${error.message}`.slice(0, 1000), retryable: RETRYABLE.has(error.code) },
  };
}

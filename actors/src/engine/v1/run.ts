/**
 * Engine 1's run core: start a run, decide on an input. FROZEN with the compiler beside it
 * (see compile.ts): runs recorded under engine 1 replay through exactly this code. Its retry
 * is handled here rather than by the machine, whose `failed` state is final.
 */
import type { AnyMachineSnapshot, AnyStateMachine } from 'xstate';
import { initialTransition, transition } from 'xstate';
import type { DecisionEventBody, InputEventBody, RunEventData } from '@capstan/schemas';
import { ApprovalNotWaitingError, ErrorCode, EventRejectedError, parseEventBody, RunNotRetryableError, RunStatus, SchemaError, TimerKind, TOKEN_PATTERN } from '@capstan/schemas';
import { stateName, type Decision, type RunState } from '../state.js';
import type { WorkflowDefinition } from '../../workflow.js';
import { isPolicyGated, policyQueriesOf, POLICY_REASK_MS, timerId, type RunContext } from './compile.js';

/** Engine 1's decisions (frozen: engine 2 accepts them as its legacy actions). */
export const DECISION_TYPES: ReadonlySet<string> = new Set([
  'step.scheduled',
  'timer.scheduled',
  'step.waiting',
  'policy.requested',
  'approval.requested',
  'run.completed',
  'run.failed',
  'run.cancelled',
]);

function toDecisions(workflowId: string, actions: readonly { type: string; params?: unknown }[]): DecisionEventBody[] {
  const out: DecisionEventBody[] = [];
  for (const a of actions) {
    // Built-in actions (assign, raise…) are applied by `transition` itself.
    if (a.type.startsWith('xstate.')) continue;
    if (!DECISION_TYPES.has(a.type)) {
      throw new SchemaError(`workflow ${workflowId}`, 'action', `${JSON.stringify(a.type)} is not a Capstan decision`);
    }
    const type = a.type as DecisionEventBody['type'];
    out.push({ type, data: parseEventBody(type, a.params ?? {}) } as DecisionEventBody);
  }
  return out;
}

/** Starts a run: the machine's initial state for `run.started` and its first decisions. */
export function startV1(workflow: WorkflowDefinition, machine: AnyStateMachine, started: RunEventData<'run.started'>): Decision {
  const [snapshot, actions] = initialTransition(machine, started.input);
  const decisions = toDecisions(workflow.id, actions);
  return { state: { workflow, engine: 1, machine, snapshot, seq: 1 + decisions.length }, decisions };
}

/**
 * Decides on one input event. Throws {@link EventRejectedError} when the machine does not
 * accept it in its current state (a late result of an old attempt, a timer that no longer
 * applies, anything on a finished run), {@link ApprovalNotWaitingError} for an approval
 * decision about a step that is not waiting for one (decided twice, say), and
 * {@link RunNotRetryableError} for a retry of a run that has not failed: such an input is
 * never recorded. `seq` of the returned state counts the input and its decisions.
 */
export function decideV1(state: RunState, input: InputEventBody): Decision {
  if (input.type === 'run.started') throw rejected(state, input);
  if (input.type === 'run.retried') return retry(state);
  const event = { type: input.type, data: input.data };
  if (state.snapshot.status !== 'active' || !state.snapshot.can(event)) {
    if (input.type === 'approval.decided') throw notWaiting(state, input.data.step);
    throw rejected(state, input);
  }
  const [snapshot, actions] = transition(state.machine, state.snapshot, event);
  const decisions = toDecisions(state.workflow.id, actions);
  return { state: { ...state, snapshot, seq: state.seq + 1 + decisions.length }, decisions };
}

/** Why a step does not take an approval decision now, in an operator's words. */
function notWaiting(state: RunState, step: string): ApprovalNotWaitingError {
  const status = runStatusV1(state);
  const def = state.workflow.steps?.find((s) => s.name === step);
  const ctx = state.snapshot.context as Partial<RunContext> | undefined;
  let why: string;
  if (state.workflow.steps && !def) why = `workflow ${state.workflow.id}@${state.workflow.version} has no step of that name`;
  else if (def && def.kind !== 'signal' && !isPolicyGated(def)) why = 'it is a task step, not an approval';
  else if (ctx?.results && Object.hasOwn(ctx.results, step)) why = 'it has been decided already';
  else if (status === RunStatus.Failed || status === RunStatus.Cancelled || status === RunStatus.Completed) why = `the run is ${status}`;
  else why = `the run is ${status} at ${stateName(state)}`;
  return new ApprovalNotWaitingError(step, why);
}

/**
 * Reopens a failed run at the step that failed, keeping every completed step's result.
 * A task step is rescheduled through the machine's own retry transition (as if its backoff
 * timer had fired), so the next attempt number follows the last one and the step's retry
 * policy starts afresh; an approval step waits for a decision again. Pure: on replay the
 * recorded `run.retried` reopens the run the same way.
 */
function retry(state: RunState): Decision {
  const status = runStatusV1(state);
  if (status !== RunStatus.Failed) throw new RunNotRetryableError(status, `only a failed run can be retried; this one is ${status}`);
  const { workflow } = state;
  const steps = workflow.steps;
  if (!steps) throw new RunNotRetryableError(status, `workflow ${workflow.id}@${workflow.version} is a hand-written machine; only workflows defined by steps can be retried`);
  const ctx = state.snapshot.context as RunContext;
  // Steps run in order and each completed one leaves its result: the first without one failed.
  const index = steps.findIndex((s) => !Object.hasOwn(ctx.results, s.name));
  const step = steps[index];
  if (!step) throw new RunNotRetryableError(status, 'every step has completed');
  const { machine } = state;
  let snapshot: AnyMachineSnapshot;
  let decisions: DecisionEventBody[];
  if (step.kind === 'task' && isPolicyGated(step)) {
    // A gated step goes back through its policy check: a retry never bypasses a denial, and
    // the policy in force now decides.
    const attempt = ctx.attempts[step.name] ?? 1;
    const next = attempt + 1;
    if (next + step.retry.maxAttempts > 1000 || !TOKEN_PATTERN.test(timerId(step.name, next + step.retry.maxAttempts, TimerKind.Timeout))) {
      throw new RunNotRetryableError(status, `step ${step.name} has used ${attempt} attempts; no attempt numbers are left for another round`);
    }
    const context: RunContext = {
      ...ctx,
      attempts: { ...ctx.attempts, [step.name]: next },
      retryBase: { ...ctx.retryBase, [step.name]: attempt },
      startedAttempt: 0,
      policyAsks: 1,
    };
    snapshot = machine.resolveState({ value: `authorize_${index}`, context });
    // What entering the check decides (see the machine's authorize state): the question and its reminder.
    decisions = [
      { type: 'policy.requested', data: parseEventBody('policy.requested', { step: step.name, attempt: next, queries: policyQueriesOf(workflow.id, step) }) },
      {
        type: 'timer.scheduled',
        data: parseEventBody('timer.scheduled', {
          timerId: `${timerId(step.name, next, TimerKind.Policy)}-1`,
          kind: TimerKind.Policy,
          step: step.name,
          attempt: next,
          delayMs: POLICY_REASK_MS,
        }),
      },
    ];
  } else if (step.kind === 'task') {
    const attempt = ctx.attempts[step.name] ?? 1;
    const last = attempt + step.retry.maxAttempts;
    // Attempt numbers are recorded (at most 1000) and name the attempts' timers (subject tokens).
    if (last > 1000 || !TOKEN_PATTERN.test(timerId(step.name, last, TimerKind.Timeout))) {
      throw new RunNotRetryableError(status, `step ${step.name} has used ${attempt} attempts; no attempt numbers are left for another round`);
    }
    const resumed = machine.resolveState({
      value: `retry_${index}`,
      context: { ...ctx, retryBase: { ...ctx.retryBase, [step.name]: attempt } } satisfies RunContext,
    });
    const fired = { type: 'timer.fired', data: { timerId: timerId(step.name, attempt, TimerKind.Retry), kind: TimerKind.Retry, step: step.name, attempt } };
    const [next, actions] = transition(machine, resumed, fired);
    snapshot = next;
    decisions = toDecisions(workflow.id, actions);
  } else {
    // An approval step (denied): it waits for a decision again, as on entry.
    snapshot = machine.resolveState({ value: `step_${index}`, context: ctx });
    decisions = [{ type: 'step.waiting', data: parseEventBody('step.waiting', { step: step.name, signal: step.signal }) }];
  }
  return { state: { ...state, snapshot, seq: state.seq + 1 + decisions.length }, decisions };
}

function rejected(state: RunState, input: InputEventBody): EventRejectedError {
  // Anything about a step attempt the run has moved past (or a run that has ended) is stale.
  const stale = (input.data as { attempt?: number }).attempt !== undefined;
  return new EventRejectedError(stale ? ErrorCode.StaleAttempt : ErrorCode.EventRejected, '', input.type, stateName(state));
}

export function runStatusV1(state: RunState): RunStatus {
  const s = state.snapshot;
  if (s.hasTag('completed')) return RunStatus.Completed;
  if (s.hasTag('failed')) return RunStatus.Failed;
  if (s.hasTag('cancelled')) return RunStatus.Cancelled;
  if (s.hasTag('waiting')) return RunStatus.Waiting;
  // Mode 3b: a running step whose credential request waits for a person.
  if ((s.context as { credentialWait?: string } | undefined)?.credentialWait !== undefined) return RunStatus.Waiting;
  const ctx = s.context as { anyStarted?: boolean } | undefined;
  if (s.hasTag('pending') || ctx?.anyStarted === false) return RunStatus.Pending;
  return RunStatus.Running;
}

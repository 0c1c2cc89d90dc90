/**
 * The pure core of a run: start it, decide on an input event, fold a recorded history.
 * No clock, no I/O: the orchestrator supplies every fact, including the time of a decision.
 */
import type { AnyMachineSnapshot } from 'xstate';
import { initialTransition, transition } from 'xstate';
import type {
  DecisionEventBody,
  InputEventBody,
  RunEvent,
  RunEventData,
  RunEventType,
} from '@capstan/schemas';
import {
  ApprovalNotWaitingError,
  CapstanError,
  DeterminismViolationError,
  ErrorCode,
  EventRejectedError,
  INPUT_EVENT_TYPES,
  parseEventBody,
  RunNotRetryableError,
  RunStatus,
  SchemaError,
  TimerKind,
  TOKEN_PATTERN,
} from '@capstan/schemas';
import type { Registry } from './registry.js';
import { isPolicyGated, policyQueriesOf, POLICY_REASK_MS, timerId, type RunContext, type WorkflowDefinition } from './workflow.js';

/** A run as the machine sees it after folding some events. Immutable. */
export interface RunState {
  readonly workflow: WorkflowDefinition;
  readonly snapshot: AnyMachineSnapshot;
  /** Run-local sequence of the last event folded (1 after `run.started`). */
  readonly seq: number;
}

export interface Decision {
  readonly state: RunState;
  /** Decision events to record after the input, in order. */
  readonly decisions: readonly DecisionEventBody[];
}

const DECISION_TYPES: ReadonlySet<string> = new Set([
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
export function startRun(workflow: WorkflowDefinition, started: RunEventData<'run.started'>): Decision {
  const [snapshot, actions] = initialTransition(workflow.machine, started.input);
  const decisions = toDecisions(workflow.id, actions);
  return { state: { workflow, snapshot, seq: 1 + decisions.length }, decisions };
}

/**
 * Decides on one input event. Throws {@link EventRejectedError} when the machine does not
 * accept it in its current state (a late result of an old attempt, a timer that no longer
 * applies, anything on a finished run), {@link ApprovalNotWaitingError} for an approval
 * decision about a step that is not waiting for one (decided twice, say), and
 * {@link RunNotRetryableError} for a retry of a run that has not failed: such an input is
 * never recorded. `seq` of the returned state counts the input and its decisions.
 */
export function decide(state: RunState, input: InputEventBody): Decision {
  if (input.type === 'run.started') throw rejected(state, input);
  if (input.type === 'run.retried') return retry(state);
  const event = { type: input.type, data: input.data };
  if (state.snapshot.status !== 'active' || !state.snapshot.can(event)) {
    if (input.type === 'approval.decided') throw notWaiting(state, input.data.step);
    throw rejected(state, input);
  }
  const [snapshot, actions] = transition(state.workflow.machine, state.snapshot, event);
  const decisions = toDecisions(state.workflow.id, actions);
  return { state: { workflow: state.workflow, snapshot, seq: state.seq + 1 + decisions.length }, decisions };
}

/** Why a step does not take an approval decision now, in an operator's words. */
function notWaiting(state: RunState, step: string): ApprovalNotWaitingError {
  const status = runStatus(state);
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
  const status = runStatus(state);
  if (status !== RunStatus.Failed) throw new RunNotRetryableError(status, `only a failed run can be retried; this one is ${status}`);
  const { workflow } = state;
  const steps = workflow.steps;
  if (!steps) throw new RunNotRetryableError(status, `workflow ${workflow.id}@${workflow.version} is a hand-written machine; only workflows defined by steps can be retried`);
  const ctx = state.snapshot.context as RunContext;
  // Steps run in order and each completed one leaves its result: the first without one failed.
  const index = steps.findIndex((s) => !Object.hasOwn(ctx.results, s.name));
  const step = steps[index];
  if (!step) throw new RunNotRetryableError(status, 'every step has completed');
  const { machine } = workflow;
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
    const context: RunContext = { ...ctx, attempts: { ...ctx.attempts, [step.name]: next }, retryBase: { ...ctx.retryBase, [step.name]: attempt }, startedAttempt: 0, policyAsks: 1 };
    snapshot = machine.resolveState({ value: `authorize_${index}`, context });
    // What entering the check decides (see the machine's authorize state): the question and its reminder.
    decisions = [
      { type: 'policy.requested', data: parseEventBody('policy.requested', { step: step.name, attempt: next, queries: policyQueriesOf(workflow.id, step) }) },
      {
        type: 'timer.scheduled',
        data: parseEventBody('timer.scheduled', { timerId: `${timerId(step.name, next, TimerKind.Policy)}-1`, kind: TimerKind.Policy, step: step.name, attempt: next, delayMs: POLICY_REASK_MS }),
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
  return { state: { workflow, snapshot, seq: state.seq + 1 + decisions.length }, decisions };
}

function rejected(state: RunState, input: InputEventBody): EventRejectedError {
  // Anything about a step attempt the run has moved past (or a run that has ended) is stale.
  const stale = (input.data as { attempt?: number }).attempt !== undefined;
  return new EventRejectedError(stale ? ErrorCode.StaleAttempt : ErrorCode.EventRejected, '', input.type, stateName(state));
}

/** A readable name for the machine's current state value. */
export function stateName(state: RunState): string {
  const v: unknown = state.snapshot.value;
  return typeof v === 'string' ? v : JSON.stringify(v);
}

export function runStatus(state: RunState): RunStatus {
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

export function isTerminal(state: RunState): boolean {
  return state.snapshot.status !== 'active';
}

/** One step of a replayed timeline: the state after an input and the decisions it produced. */
export interface TimelineEntry {
  readonly seq: number;
  readonly at: number;
  readonly input: RunEventType;
  readonly state: string;
  readonly status: RunStatus;
  readonly decisions: readonly RunEventType[];
}

export interface Fold {
  readonly state: RunState;
  readonly timeline: readonly TimelineEntry[];
}

/**
 * Folds a recorded history through the machine version it names, checking that every
 * recorded decision is exactly what the machine decides again.
 * @throws DeterminismViolationError with a precise diff on the first divergence
 * @throws UnknownWorkflowError when the recorded version is not registered
 */
export function foldRun(registry: Registry, events: readonly RunEvent[]): Fold {
  const first = events[0];
  if (!first || first.type !== 'run.started') {
    throw new DeterminismViolationError(first?.runId ?? '?', first?.seq ?? 0, ['history does not begin with run.started']);
  }
  const runId = first.runId;
  const workflow = registry.get(first.data.workflow, first.data.version);
  let i = 0;
  let state: RunState | undefined;
  const timeline: TimelineEntry[] = [];
  while (i < events.length) {
    const ev = events[i] as RunEvent;
    if (ev.seq !== i + 1) {
      throw new DeterminismViolationError(runId, ev.seq, [`event chain broken: expected seq ${i + 1}, found ${ev.seq}`]);
    }
    if (!INPUT_EVENT_TYPES.has(ev.type)) {
      throw new DeterminismViolationError(runId, ev.seq, [`recorded ${ev.type} at seq ${ev.seq} was not decided by any input`]);
    }
    let decision: Decision;
    try {
      // Only the first event starts the run; a later run.started is refused by decide.
      decision = i === 0 ? startRun(workflow, first.data) : decide(state as RunState, ev as InputEventBody);
    } catch (e) {
      if (isRejection(e)) {
        throw new DeterminismViolationError(runId, ev.seq, [
          `recorded input ${ev.type} at seq ${ev.seq} is not accepted by ${workflow.id}@${workflow.version} in state ${state ? stateName(state) : '(none)'}`,
        ]);
      }
      throw e;
    }
    const recorded: RunEvent[] = [];
    let j = i + 1;
    while (j < events.length && !INPUT_EVENT_TYPES.has((events[j] as RunEvent).type)) {
      const d = events[j] as RunEvent;
      if (d.seq !== j + 1) {
        throw new DeterminismViolationError(runId, d.seq, [`event chain broken: expected seq ${j + 1}, found ${d.seq}`]);
      }
      recorded.push(d);
      j++;
    }
    const diff = diffDecisions(decision.decisions, recorded);
    if (diff.length > 0) throw new DeterminismViolationError(runId, ev.seq, diff);
    state = decision.state;
    timeline.push({
      seq: ev.seq,
      at: ev.at,
      input: ev.type,
      state: stateName(state),
      status: runStatus(state),
      decisions: decision.decisions.map((d) => d.type),
    });
    i = j;
  }
  return { state: state as RunState, timeline };
}

/** The machine (or the run core) refusing an input: recorded, that is a divergence. */
function isRejection(e: unknown): boolean {
  return (
    e instanceof EventRejectedError ||
    (CapstanError.is(e) && (e.code === ErrorCode.ApprovalNotWaiting || e.code === ErrorCode.RunNotRetryable))
  );
}

/** Line-by-line differences between decisions derived now and decisions recorded then. */
export function diffDecisions(derived: readonly DecisionEventBody[], recorded: readonly RunEvent[]): string[] {
  const diff: string[] = [];
  const n = Math.max(derived.length, recorded.length);
  for (let k = 0; k < n; k++) {
    const d = derived[k];
    const r = recorded[k];
    const seq = r?.seq ?? '(missing)';
    if (!d && r) diff.push(`seq ${seq}: recorded ${r.type} ${JSON.stringify(r.data)}, replay decided nothing`);
    else if (d && !r) diff.push(`after the record: replay decided ${d.type} ${JSON.stringify(d.data)}, nothing recorded`);
    else if (d && r) {
      if (d.type !== r.type) diff.push(`seq ${seq}: recorded ${r.type}, replay decided ${d.type}`);
      else {
        for (const line of diffValues(r.data, d.data, 'data')) diff.push(`seq ${seq} ${r.type}: ${line}`);
      }
    }
  }
  return diff;
}

function diffValues(recorded: unknown, derived: unknown, path: string): string[] {
  if (Object.is(recorded, derived)) return [];
  const isObj = (v: unknown): v is Record<string, unknown> => typeof v === 'object' && v !== null;
  if (isObj(recorded) && isObj(derived) && Array.isArray(recorded) === Array.isArray(derived)) {
    const keys = [...new Set([...Object.keys(recorded), ...Object.keys(derived)])].sort();
    return keys.flatMap((k) => diffValues(recorded[k], derived[k], `${path}.${k}`));
  }
  return [`${path}: recorded ${JSON.stringify(recorded)}, replay ${JSON.stringify(derived)}`];
}

/**
 * Engine 2's run core: start a run, decide on an input. A retry is the machine's own
 * transition (`failed` → back where the run was); the core only words refusals, and ends a
 * run that is about to outgrow its event cap, deterministically, before its stream would
 * refuse the append (which would hold up every other run in the same atomic batch).
 */
import type { AnyMachineSnapshot } from 'xstate';
import { initialTransition, transition } from 'xstate';
import type { DecisionEventBody, InputEventBody, RunEventData, RunEventType } from '@capstan/schemas';
import { ApprovalNotWaitingError, ErrorCode, EventRejectedError, parseEventBody, RunNotRetryableError, RunStatus, SchemaError } from '@capstan/schemas';
import type { AnyStateMachine } from 'xstate';
import type { NNode, WorkflowDefinition } from '../../workflow.js';
import { stateName, type Decision, type RunState } from '../state.js';
import { allInstances, BUSY, getInst, OPEN, type RunContext } from './context.js';
import { EVENT_CAP, retryRefusal, START, underReplay } from './states.js';
import { maxAttemptsOf, nodesByName } from './compile.js';
import { DECISION_TYPES as LEGACY_DECISIONS } from '../v1/run.js';

/** Decision types a hand-written machine may still name its actions after (engine 1's vocabulary). */

function toDecisions(workflowId: string, actions: readonly { type: string; params?: unknown }[]): DecisionEventBody[] {
  const out: DecisionEventBody[] = [];
  for (const a of actions) {
    // Built-in actions (assign, raise…) are applied by `transition` itself.
    if (a.type.startsWith('xstate.')) continue;
    if (a.type === 'decide') {
      const body = a.params as { type?: unknown; data?: unknown } | undefined;
      const type = body?.type;
      if (typeof type !== 'string' || !DECISION_TYPES.has(type as RunEventType)) {
        throw new SchemaError(`workflow ${workflowId}`, 'action', `${JSON.stringify(type)} is not a Capstan decision`);
      }
      const t = type as DecisionEventBody['type'];
      out.push({ type: t, data: parseEventBody(t, body?.data ?? {}) } as DecisionEventBody);
      continue;
    }
    if (!LEGACY_DECISIONS.has(a.type)) throw new SchemaError(`workflow ${workflowId}`, 'action', `${JSON.stringify(a.type)} is not a Capstan decision`);
    const t = a.type as DecisionEventBody['type'];
    out.push({ type: t, data: parseEventBody(t, a.params ?? {}) } as DecisionEventBody);
  }
  return out;
}

const DECISION_TYPES: ReadonlySet<RunEventType> = new Set<RunEventType>([
  ...(LEGACY_DECISIONS as ReadonlySet<RunEventType>),
  'step.cancelled',
  'step.skipped',
  'signal.consumed',
  'branch.taken',
  'loop.iteration',
  'fanout.started',
  'child.started',
  'patch.marked',
  'run.continued',
]);

const ctxOf = (s: AnyMachineSnapshot): RunContext | undefined => {
  const c = s.context as Partial<RunContext> | undefined;
  return c && typeof c.inst === 'object' ? (c as RunContext) : undefined;
};

/** Events a run can still record after this decision: one per open instance (its cancel) and the end. */
function reserve(s: AnyMachineSnapshot): number {
  const c = ctxOf(s);
  let open = 0;
  if (c) for (const [, i] of allInstances(c)) if (OPEN.has(i.phase)) open++;
  return open + 3;
}

/** Past its cap, a run ends instead: the input is recorded with the run's ending, nothing more. */
function capped(state: RunState, before: AnyMachineSnapshot, after: AnyMachineSnapshot, decided: number): AnyMachineSnapshot | undefined {
  if (state.seq + 1 + decided + reserve(after) <= state.workflow.maxEvents) return undefined;
  const cap = { type: EVENT_CAP } as const;
  return before.can(cap) ? before : undefined;
}

/**
 * How a transition is decided: live (`undefined`), or replayed from a record, whose
 * decisions for the input are given (a `patched` marker takes the path its record took).
 */
export type Replay = { readonly recorded: readonly { readonly type: string; readonly data: unknown }[] } | undefined;

function marksOf(replay: Replay): ReadonlySet<string> | undefined {
  if (!replay) return undefined;
  const marks = new Set<string>();
  for (const d of replay.recorded) if (d.type === 'patch.marked') marks.add((d.data as { patch: string }).patch);
  return marks;
}

/** Starts a run decided by engine 2 or 3 (`engine`): the same machine, told on start which derives its runs' ids. */
export function startV2(workflow: WorkflowDefinition, machine: AnyStateMachine, started: RunEventData<'run.started'>, engine: 2 | 3, runId?: string, replay?: Replay): Decision {
  return underReplay(marksOf(replay), () => startV2Now(workflow, machine, started, engine, runId));
}

function startV2Now(workflow: WorkflowDefinition, machine: AnyStateMachine, started: RunEventData<'run.started'>, engine: 2 | 3, runId: string | undefined): Decision {
  const [ready, initial] = initialTransition(machine, started.input);
  // A machine made by workflowMachine starts on START; one written without it starts at once.
  // Engine 2's START stays as it was (no engine), so its runs' contexts do too.
  const start = { type: START, ...(runId === undefined ? {} : { runId }), ...(engine === 2 ? {} : { engine }) };
  const [snapshot, actions] = ready.can(start) ? transition(machine, ready, start) : [ready, initial];
  let decisions = toDecisions(workflow.id, actions);
  let snap = snapshot;
  const state: RunState = {
    workflow,
    engine,
    machine,
    snapshot,
    seq: 0,
    ...(runId === undefined ? {} : { runId }),
    ...(started.parent ? { parent: started.parent } : {}),
    ...(started.continuedFrom ? { continuedFrom: started.continuedFrom } : {}),
  };
  if (capped(state, snapshot, snapshot, decisions.length)) {
    const [ended, endActions] = transition(machine, snapshot, { type: EVENT_CAP });
    snap = ended;
    decisions = toDecisions(workflow.id, endActions);
  }
  return { state: { ...state, snapshot: snap, seq: 1 + decisions.length }, decisions };
}

/**
 * Decides on one input event. Throws {@link EventRejectedError} when the machine does not
 * take it (`stale_attempt` for anything about an attempt the run has moved past),
 * {@link ApprovalNotWaitingError} for an approval decision no step waits for, and
 * {@link RunNotRetryableError} for a retry the run cannot take: such an input is never recorded.
 */
export function decideV2(state: RunState, input: InputEventBody, replay?: Replay): Decision {
  return underReplay(marksOf(replay), () => decideV2Now(state, input));
}

function decideV2Now(state: RunState, input: InputEventBody): Decision {
  const event = input;
  if (input.type === 'run.started' || !state.snapshot.can(event)) {
    if (input.type === 'run.retried') {
      const status = runStatusV2(state);
      const c = ctxOf(state.snapshot);
      if (status !== RunStatus.Failed) throw new RunNotRetryableError(status, `only a failed run can be retried; this one is ${status}`);
      const byName = state.workflow.nodes ? nodesByName(state.workflow.nodes) : new Map<string, NNode>();
      const why = c ? retryRefusal(c, (n) => maxAttemptsOf(byName.get(n))) : 'its machine takes no retry';
      throw new RunNotRetryableError(status, why ?? 'it cannot be retried');
    }
    if (input.type === 'approval.decided') throw notWaiting(state, input.data.step);
    const stale = (input.data as { attempt?: number }).attempt !== undefined;
    throw new EventRejectedError(stale ? ErrorCode.StaleAttempt : ErrorCode.EventRejected, '', input.type, stateName(state));
  }
  const [snapshot, actions] = transition(state.machine, state.snapshot, event);
  let decisions = toDecisions(state.workflow.id, actions);
  let next = snapshot;
  const before = capped(state, state.snapshot, snapshot, decisions.length);
  if (before) {
    const [ended, endActions] = transition(state.machine, before, { type: EVENT_CAP });
    next = ended;
    decisions = toDecisions(state.workflow.id, endActions);
  }
  return { state: { ...state, snapshot: next, seq: state.seq + 1 + decisions.length }, decisions };
}

function notWaiting(state: RunState, step: string): ApprovalNotWaitingError {
  const c = ctxOf(state.snapshot);
  const status = runStatusV2(state);
  const i = c ? getInst(c, step) : undefined;
  let why: string;
  const known = state.workflow.nodes ? nodesByName(state.workflow.nodes).has(step.replace(/(-\d+)+$/, '')) || nodesByName(state.workflow.nodes).has(step) : true;
  if (!known) why = `workflow ${state.workflow.id}@${state.workflow.version} has no step of that name`;
  else if (status === RunStatus.Failed || status === RunStatus.Cancelled || status === RunStatus.Completed) why = `the run is ${status}`;
  else if (!i) why = `no step ${step} has been reached (or the workflow has none)`;
  else if (i.phase === 'done') why = 'it has been decided already';
  else if (i.kind !== 'signal' && i.phase !== 'approve') why = 'it is a task step, not an approval';
  else why = `the run is ${status} at ${stateName(state)}`;
  return new ApprovalNotWaitingError(step, why);
}

/**
 * A run's status from its context: `waiting` while a person or a signal is awaited (or the
 * run only sleeps), `pending` until a step has started, else `running`. `statusFromEvents`
 * reads the same from the events alone.
 */
export function runStatusV2(state: RunState): RunStatus {
  const s = state.snapshot;
  if (s.hasTag('completed')) return RunStatus.Completed;
  if (s.hasTag('failed')) return RunStatus.Failed;
  if (s.hasTag('cancelled')) return RunStatus.Cancelled;
  const c = ctxOf(s);
  if (!c) return s.hasTag('waiting') ? RunStatus.Waiting : RunStatus.Running;
  const open = [...allInstances(c)].map(([, i]) => i).filter((i) => OPEN.has(i.phase));
  const person = open.some((i) => i.phase === 'waiting' || i.phase === 'approve' || i.cred === true);
  const busy = open.some((i) => BUSY.has(i.phase) || i.phase === 'started');
  if (person || (!busy && open.some((i) => i.phase === 'sleeping'))) return RunStatus.Waiting;
  return c.anyStarted ? RunStatus.Running : RunStatus.Pending;
}

export function isTerminalV2(state: RunState): boolean {
  return state.snapshot.status !== 'active' || state.snapshot.hasTag('failed');
}

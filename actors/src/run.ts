/**
 * The pure core of a run: start it, decide on an input event, fold a recorded history.
 * No clock, no I/O: the orchestrator supplies every fact, including the time of a decision.
 *
 * A run is decided by the engine its `run.started` names (none: engine 1) for as long as it
 * lives and whenever it is replayed: every engine stays in this package (`engine/v1`,
 * `engine/v2`, which engine 3 shares), and new runs get {@link CURRENT_ENGINE}.
 */
import type { DecisionEventBody, InputEventBody, RunEvent, RunEventData, RunEventType } from '@capstan/schemas';
import { CapstanError, DeterminismViolationError, ErrorCode, INPUT_EVENT_TYPES, InvalidWorkflowError, type RunStatus } from '@capstan/schemas';
import type { Registry } from './registry.js';
import type { WorkflowDefinition } from './workflow.js';
import { CURRENT_ENGINE } from './workflow.js';
import { stateName, type Decision, type RunState } from './engine/state.js';
import { decideV1, runStatusV1, startV1 } from './engine/v1/run.js';
import { decideV2, isTerminalV2, runStatusV2, startV2, type Replay } from './engine/v2/run.js';

export type { RunState, Decision };
export { stateName, CURRENT_ENGINE };

/** The engine a recorded start names. */
export const engineOf = (started: RunEventData<'run.started'>): number => started.engine ?? 1;

/** Starts a run: the machine's initial state for `run.started` and its first decisions. */
export function startRun(workflow: WorkflowDefinition, started: RunEventData<'run.started'>, runId?: string, replay?: Replay): Decision {
  const engine = engineOf(started);
  const machine = workflow.machineFor(engine);
  if (engine === 1) return startV1(workflow, machine, started);
  if (engine === 2 || engine === 3) return startV2(workflow, machine, started, engine, runId, replay);
  throw new InvalidWorkflowError(workflow.id, `engine ${engine} is not known to this build`);
}

/**
 * Decides on one input event (see the engine's own `decide` for what it refuses: stale
 * attempts, approvals nobody waits for, retries of runs that cannot take one). Such an input
 * is never recorded. `seq` of the returned state counts the input and its decisions.
 */
export function decide(state: RunState, input: InputEventBody, replay?: Replay): Decision {
  return state.engine === 1 ? decideV1(state, input) : decideV2(state, input, replay);
}

export function runStatus(state: RunState): RunStatus {
  return state.engine === 1 ? runStatusV1(state) : runStatusV2(state);
}

export function isTerminal(state: RunState): boolean {
  return state.engine === 1 ? state.snapshot.status !== 'active' : isTerminalV2(state);
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
    let decision: Decision;
    try {
      // Only the first event starts the run; a later run.started is refused by decide. The
      // record's decisions go along: a `patched` marker takes the path the record took.
      const replay = { recorded };
      decision = i === 0 ? startRun(workflow, first.data, runId, replay) : decide(state as RunState, ev as InputEventBody, replay);
    } catch (e) {
      if (isRejection(e)) {
        throw new DeterminismViolationError(runId, ev.seq, [
          `recorded input ${ev.type} at seq ${ev.seq} is not accepted by ${workflow.id}@${workflow.version} in state ${state ? stateName(state) : '(none)'}`,
        ]);
      }
      throw e;
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
  const refusals: readonly string[] = [ErrorCode.StaleAttempt, ErrorCode.EventRejected, ErrorCode.ApprovalNotWaiting, ErrorCode.RunNotRetryable];
  return CapstanError.is(e) && refusals.includes(e.code);
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

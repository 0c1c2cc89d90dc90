/** What every engine's run core works on: a run as its machine sees it, and one decision. */
import type { AnyMachineSnapshot, AnyStateMachine } from 'xstate';
import type { DecisionEventBody } from '@capstan/schemas';
import type { WorkflowDefinition } from '../workflow.js';

/** A run as the machine sees it after folding some events. Immutable. */
export interface RunState {
  readonly workflow: WorkflowDefinition;
  /** The engine that decides this run, as its `run.started` recorded it. */
  readonly engine: number;
  /** The workflow compiled by that engine. */
  readonly machine: AnyStateMachine;
  readonly snapshot: AnyMachineSnapshot;
  /** Run-local sequence of the last event folded (1 after `run.started`). */
  readonly seq: number;
  /** The run's id, when it was started or folded with one (engine 2: children and continuations derive from it). */
  readonly runId?: string;
  /** A child run's parent, as its `run.started` recorded it: the parent takes its outcome. */
  readonly parent?: { readonly runId: string; readonly step: string; readonly attempt: number; readonly child?: string };
  /** A continuation's predecessor, as its `run.started` recorded it. */
  readonly continuedFrom?: string;
}

export interface Decision {
  readonly state: RunState;
  /** Decision events to record after the input, in order. */
  readonly decisions: readonly DecisionEventBody[];
}

/**
 * A readable name for the machine's current state value: engine 1's is a string; engine 2's
 * is the active step states, without the run machine's own `active` (`step_load`, and for
 * parallel branches `step_fork(step_a + step_b)`).
 */
export function stateName(state: RunState): string {
  const v: unknown = state.snapshot.value;
  if (typeof v === 'string' || state.engine === 1) return typeof v === 'string' ? v : JSON.stringify(v);
  const name = (x: unknown): string => {
    if (typeof x === 'string') return x;
    if (typeof x !== 'object' || x === null) return String(x);
    const parts = Object.entries(x as Record<string, unknown>).map(([k, sub]) =>
      k === 'active' || /^branch_\d+$/.test(k) || k === 'run' || k === 'iterate' ? name(sub) : `${k}(${name(sub)})`,
    );
    return parts.join(' + ');
  };
  return name(v);
}

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
}

export interface Decision {
  readonly state: RunState;
  /** Decision events to record after the input, in order. */
  readonly decisions: readonly DecisionEventBody[];
}

/** A readable name for the machine's current state value. */
export function stateName(state: RunState): string {
  const v: unknown = state.snapshot.value;
  return typeof v === 'string' ? v : JSON.stringify(v);
}

/**
 * Drives a run through the pure core (startRun / decide) and records its history exactly as
 * the orchestrator's run host does (decideGroup): the input event, then its decisions, each
 * wrapped in a `{ v, type, data, runId, seq, at, causationId }` envelope with consecutive
 * run-local sequence numbers, one `at` and one causation id per input.
 */
import { decide, runStatus, startRun, stateName, timerId, type Decision, type RunState, type TimelineEntry, type WorkflowDefinition } from '@capstan/actors';
import {
  EVENT_ENVELOPE_VERSION,
  EventRejectedError,
  TimerKind,
  makeRunId,
  type InputEventBody,
  type JsonValue,
  type RunEvent,
  type RunEventBody,
  type RunId,
} from '@capstan/schemas';

export const RUN_ID: RunId = makeRunId(1_700_000_000_000, new Uint8Array([1, 2, 3, 4, 5, 6, 7, 8, 9, 10]));

export class RunRecorder {
  readonly events: RunEvent[] = [];
  /** What a replay's timeline must say: one entry per accepted input. */
  readonly timeline: TimelineEntry[] = [];
  /** The state after each accepted input, with the history length at that point. */
  readonly checkpoints: { readonly events: number; readonly state: RunState }[] = [];
  state: RunState;
  /** Decisions of the last accepted input (or of the start). */
  last: Decision;
  private clock: number;
  private commandSeq = 0;

  constructor(
    readonly workflow: WorkflowDefinition,
    input: { [k: string]: JsonValue } = {},
    readonly runId: RunId = RUN_ID,
    startAt = 1_700_000_000_000,
    /** The engine the run records on its start (none: engine 1, as runs before engine versions). */
    engine?: number,
  ) {
    this.clock = startAt;
    const started = { workflow: workflow.id, version: workflow.version, input, ...(engine === undefined ? {} : { engine }) };
    const decision = startRun(workflow, started, runId);
    this.record({ type: 'run.started', data: started }, decision, 0);
    this.state = decision.state;
    this.last = decision;
  }

  /** Decides on `input`; records it and its decisions when accepted. Throws when rejected. */
  apply(input: InputEventBody): Decision {
    const decision = decide(this.state, input);
    this.record(input, decision, this.state.seq);
    this.state = decision.state;
    this.last = decision;
    return decision;
  }

  /** Like {@link apply}, but returns `undefined` (recording nothing) when the run rejects it. */
  tryApply(input: InputEventBody): Decision | undefined {
    try {
      return this.apply(input);
    } catch (e) {
      if (e instanceof EventRejectedError) return undefined;
      throw e;
    }
  }

  /** Decides and records `input`; returns the decision types (for compact assertions). */
  step(input: InputEventBody): string[] {
    return this.apply(input).decisions.map((d) =>
      d.type === 'step.scheduled' || d.type === 'step.cancelled'
        ? `${d.type}:${d.data.step}#${d.data.attempt}`
        : d.type === 'timer.scheduled'
          ? `timer:${d.data.kind}:${d.data.step}`
          : d.type,
    );
  }

  private record(input: RunEventBody, decision: Decision, fromSeq: number): void {
    this.clock += 7;
    const at = this.clock;
    const causationId = `cmd:${++this.commandSeq}`;
    let seq = fromSeq;
    const envelope = (body: RunEventBody): RunEvent => ({ v: EVENT_ENVELOPE_VERSION, ...body, runId: this.runId, seq: ++seq, at, causationId }) as RunEvent;
    this.events.push(envelope(input), ...decision.decisions.map(envelope));
    this.timeline.push({
      seq: fromSeq + 1,
      at,
      input: input.type,
      state: stateName(decision.state),
      status: runStatus(decision.state),
      decisions: decision.decisions.map((d) => d.type),
    });
    this.checkpoints.push({ events: this.events.length, state: decision.state });
  }
}

// Input builders: the events the orchestrator makes from commands (services/orchestrator/src/commands.ts).
export const started = (step: string, attempt: number, worker = 'w-1'): InputEventBody => ({
  type: 'step.started',
  data: { step, attempt, worker },
});
export const completed = (step: string, attempt: number, result: JsonValue = { ok: true }, worker = 'w-1'): InputEventBody => ({
  type: 'step.completed',
  data: { step, attempt, worker, result, durationMs: 5 },
});
export const failed = (step: string, attempt: number, retryable = true, code = 'boom', worker = 'w-1'): InputEventBody => ({
  type: 'step.failed',
  data: { step, attempt, worker, error: { code, message: `${step} broke`, retryable }, durationMs: 5 },
});
export const fired = (step: string, attempt: number, kind: TimerKind): InputEventBody => ({
  type: 'timer.fired',
  data: { timerId: timerId(step, attempt, kind), kind, step, attempt },
});
export const timeoutFired = (step: string, attempt: number) => fired(step, attempt, TimerKind.Timeout);
export const retryFired = (step: string, attempt: number) => fired(step, attempt, TimerKind.Retry);
export const signaled = (name: string, payload?: JsonValue): InputEventBody => ({
  type: 'run.signaled',
  data: payload === undefined ? { name } : { name, payload },
});
export const cancel = (reason?: string): InputEventBody => ({
  type: 'run.cancel-requested',
  data: reason === undefined ? {} : { reason },
});

/** Structured copy, so a tampered history never aliases the recorded one. */
export function cloneEvents(events: readonly RunEvent[]): RunEvent[] {
  return structuredClone(events as RunEvent[]);
}

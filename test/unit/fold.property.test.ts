import { describe, expect, it } from 'vitest';
import fc from 'fast-check';
import { createRegistry, defineWorkflow, foldRun, runStatus, stateName, statusFromEvents, type RunContext, type RunState, type WorkflowDefinition } from '@capstan/actors';
import {
  DeterminismViolationError,
  ErrorCode,
  EventRejectedError,
  INPUT_EVENT_TYPES,
  decode,
  encode,
  parseRunEvent,
  type InputEventBody,
  type JsonValue,
  type RunEvent,
} from '@capstan/schemas';
import { RunRecorder, cancel, cloneEvents, completed, failed, retryFired, signaled, started, timeoutFired } from './support/runs.js';

const WORKFLOWS: WorkflowDefinition[] = [
  defineWorkflow({
    id: 'prop.three',
    version: 1,
    steps: [
      { name: 'a', timeoutMs: 1000, retry: { maxAttempts: 3, initialIntervalMs: 100, backoffCoefficient: 2, maxIntervalMs: 300 } },
      { name: 'b', timeoutMs: 2000, retry: { maxAttempts: 2 } },
      { name: 'c', retry: { maxAttempts: 4, initialIntervalMs: 0 } },
    ],
  }),
  defineWorkflow({
    id: 'prop.review',
    version: 1,
    steps: [{ name: 'draft', retry: { maxAttempts: 2 } }, { name: 'review', signal: 'approve' }, { name: 'publish' }],
  }),
  defineWorkflow({
    id: 'prop.gate',
    version: 1,
    steps: [
      { name: 'gate', signal: 'open' },
      { name: 'work', retry: { maxAttempts: 1 } },
    ],
  }),
];
const registry = createRegistry(WORKFLOWS);
const SIGNALS = ['approve', 'open', 'ping'];

const result: fc.Arbitrary<JsonValue> = fc.oneof(
  fc.constant(null),
  fc.integer(),
  fc.string({ maxLength: 6 }),
  fc.record({ n: fc.integer(), tag: fc.string({ maxLength: 4 }) }),
  fc.array(fc.boolean(), { maxLength: 3 }),
);

/** Which step and attempt an op is about: mostly the current ones, sometimes others. */
const target = fc.record({
  step: fc.oneof({ weight: 4, arbitrary: fc.constant<'current'>('current') }, { weight: 1, arbitrary: fc.nat({ max: 3 }) }),
  attemptDelta: fc.oneof({ weight: 5, arbitrary: fc.constant(0) }, { weight: 1, arbitrary: fc.integer({ min: -2, max: 2 }) }),
});

type Op =
  | { k: 'started' | 'timeout' | 'retry'; at: { step: 'current' | number; attemptDelta: number } }
  | { k: 'completed'; at: { step: 'current' | number; attemptDelta: number }; result: JsonValue }
  | { k: 'failed'; at: { step: 'current' | number; attemptDelta: number }; retryable: boolean; code: string }
  | { k: 'signal'; name: number; payload: JsonValue | undefined }
  | { k: 'cancel'; reason: string | undefined };

const op: fc.Arbitrary<Op> = fc.oneof(
  { weight: 4, arbitrary: fc.record({ k: fc.constant('started' as const), at: target }) },
  { weight: 5, arbitrary: fc.record({ k: fc.constant('completed' as const), at: target, result }) },
  {
    weight: 4,
    arbitrary: fc.record({ k: fc.constant('failed' as const), at: target, retryable: fc.boolean(), code: fc.constantFrom('boom', 'io_error', 'bad_input') }),
  },
  { weight: 2, arbitrary: fc.record({ k: fc.constant('timeout' as const), at: target }) },
  { weight: 4, arbitrary: fc.record({ k: fc.constant('retry' as const), at: target }) },
  {
    weight: 3,
    arbitrary: fc.record({
      k: fc.constant('signal' as const),
      name: fc.nat({ max: SIGNALS.length - 1 }),
      payload: fc.option(
        result.filter((v) => v !== null),
        { nil: undefined },
      ),
    }),
  },
  { weight: 1, arbitrary: fc.record({ k: fc.constant('cancel' as const), reason: fc.option(fc.string({ maxLength: 20 }), { nil: undefined }) }) },
);

const scenario = fc.record({
  workflow: fc.nat({ max: WORKFLOWS.length - 1 }),
  input: fc.dictionary(fc.stringMatching(/^[a-z]{1,6}$/), result, { maxKeys: 3 }),
  ops: fc.array(op, { maxLength: 40 }),
});

interface Scenario {
  readonly workflow: number;
  readonly input: { [k: string]: JsonValue };
  readonly ops: readonly Op[];
}

/** Turns an op into an input event against the run's current state. */
function resolve(o: Op, wf: WorkflowDefinition, state: RunState): InputEventBody {
  if (o.k === 'signal') return signaled(SIGNALS[o.name] as string, o.payload);
  if (o.k === 'cancel') return cancel(o.reason);
  const steps = wf.steps ?? [];
  const m = /^(?:step|retry)_(\d+)$/.exec(stateName(state));
  const index = o.at.step === 'current' ? Number(m?.[1] ?? 0) : o.at.step % steps.length;
  const name = steps[index]?.name ?? 'a';
  const ctx = state.snapshot.context as RunContext;
  const attempt = Math.max(1, (ctx.attempts[name] ?? 1) + o.at.attemptDelta);
  switch (o.k) {
    case 'started':
      return started(name, attempt);
    case 'completed':
      return completed(name, attempt, o.result);
    case 'failed':
      return failed(name, attempt, o.retryable, o.code);
    case 'timeout':
      return timeoutFired(name, attempt);
    case 'retry':
      return retryFired(name, attempt);
  }
}

/** Plays a scenario through decide, skipping rejected inputs (as the orchestrator does). */
function play(s: Scenario): { r: RunRecorder; rejected: number } {
  const wf = WORKFLOWS[s.workflow] as WorkflowDefinition;
  const r = new RunRecorder(wf, s.input);
  let rejected = 0;
  for (const o of s.ops) {
    const input = resolve(o, wf, r.state);
    const before = r.state;
    const length = r.events.length;
    try {
      r.apply(input);
    } catch (e) {
      expect(e).toBeInstanceOf(EventRejectedError);
      expect([ErrorCode.StaleAttempt, ErrorCode.EventRejected]).toContain((e as EventRejectedError).code);
      // a rejected input changes nothing and records nothing
      expect(r.state).toBe(before);
      expect(r.events).toHaveLength(length);
      rejected++;
    }
  }
  return { r, rejected };
}

const same = (a: RunState, b: RunState) => {
  expect(a.snapshot.value).toEqual(b.snapshot.value);
  expect(a.snapshot.context).toEqual(b.snapshot.context);
  expect(a.snapshot.status).toBe(b.snapshot.status);
  expect(a.seq).toBe(b.seq);
  expect(runStatus(a)).toBe(runStatus(b));
};

/** The recorded history cut into batches: each input (or run.started) with the decisions it caused. */
function batches(events: readonly RunEvent[]): { input: RunEvent; decisions: RunEvent[] }[] {
  const out: { input: RunEvent; decisions: RunEvent[] }[] = [];
  for (const e of events) {
    if (INPUT_EVENT_TYPES.has(e.type)) out.push({ input: e, decisions: [] });
    else {
      const current = out.at(-1);
      expect(current, `decision ${e.type} at seq ${e.seq} before any input`).toBeDefined();
      expect(e.causationId).toBe(current?.input.causationId);
      current?.decisions.push(e);
    }
  }
  return out;
}

describe('fold - property: timeout timers are armed by starts', () => {
  it('fold - timeout timers are armed only by an accepted start, once per attempt, with the step timeout', () => {
    let armed = 0;
    let scheduledBatches = 0;
    let quickSteps = 0;
    fc.assert(
      fc.property(scenario, (s) => {
        const { r } = play(s);
        const wf = WORKFLOWS[s.workflow] as WorkflowDefinition;
        const timeoutOf = new Map((wf.steps ?? []).flatMap((st) => (st.kind === 'task' ? [[st.name, st.timeoutMs] as const] : [])));
        const startedAttempts = new Set<string>();
        const timeoutIds = new Set(r.events.flatMap((e) => (e.type === 'timer.scheduled' && e.data.kind === 'timeout' ? [e.data.timerId] : [])));
        for (const { input, decisions } of batches(r.events)) {
          const types = decisions.map((d) => d.type);
          if (input.type === 'step.started') {
            // an accepted start decides exactly its attempt's timeout timer
            const { step, attempt } = input.data;
            const key = `${step}#${attempt}`;
            expect(startedAttempts.has(key), `${key} started twice`).toBe(false);
            startedAttempts.add(key);
            expect(decisions.map((d) => ({ type: d.type, data: d.data }))).toEqual([
              {
                type: 'timer.scheduled',
                data: { timerId: `${step}-a${attempt}-timeout`, kind: 'timeout', step, attempt, delayMs: timeoutOf.get(step) },
              },
            ]);
            armed++;
            continue;
          }
          // anything else never arms a timeout timer…
          for (const d of decisions) {
            if (d.type === 'timer.scheduled') expect(d.data.kind, `${input.type} at seq ${input.seq} armed ${d.data.timerId}`).toBe('retry');
          }
          // …and scheduling a step decides the step.scheduled alone
          if (types.includes('step.scheduled')) {
            scheduledBatches++;
            expect(types).toEqual(['step.scheduled']);
          }
          // a step completed without a recorded start never had a timeout timer
          if (input.type === 'step.completed' && !startedAttempts.has(`${input.data.step}#${input.data.attempt}`)) {
            quickSteps++;
            expect(timeoutIds.has(`${input.data.step}-a${input.data.attempt}-timeout`)).toBe(false);
          }
        }
        // one timeout timer per started attempt, never two for the same attempt
        expect(timeoutIds.size).toBe(startedAttempts.size);
        expect(r.events.filter((e) => e.type === 'timer.scheduled' && e.data.kind === 'timeout')).toHaveLength(startedAttempts.size);
      }),
      { numRuns: 400 },
    );
    expect(armed).toBeGreaterThan(50);
    expect(scheduledBatches).toBeGreaterThan(100);
    expect(quickSteps).toBeGreaterThan(10);
  });
});

describe('fold - property: replay is deterministic', () => {
  it('fold - random command sequences fold twice to the same state, equal to the live one', () => {
    const statuses = new Set<string>();
    const states = new Set<string>();
    let accepted = 0;
    let rejectedTotal = 0;
    fc.assert(
      fc.property(scenario, (s) => {
        const { r, rejected } = play(s);
        rejectedTotal += rejected;
        accepted += r.timeline.length - 1;
        statuses.add(runStatus(r.state));
        for (const t of r.timeline) states.add(t.state);

        // the history is a well-formed chain of valid events
        expect(r.events.map((e) => e.seq)).toEqual(r.events.map((_, i) => i + 1));
        expect(r.events[0]?.type).toBe('run.started');
        const stored = r.events.map((e) => parseRunEvent(decode(encode(e))));
        expect(stored).toEqual(r.events);

        const first = foldRun(registry, r.events);
        const second = foldRun(registry, stored);
        same(first.state, second.state);
        same(first.state, r.state);
        expect(first.timeline).toEqual(second.timeline);
        expect(first.timeline).toEqual(r.timeline);
        expect(statusFromEvents(r.events)).toBe(runStatus(r.state));
        expect(statusFromEvents(stored)).toBe(runStatus(first.state));

        // a prefix ending on any decision boundary folds to the state at that point
        const cp = r.checkpoints[s.ops.length % r.checkpoints.length];
        if (cp) {
          const prefix = foldRun(registry, r.events.slice(0, cp.events));
          same(prefix.state, cp.state);
          expect(statusFromEvents(r.events.slice(0, cp.events))).toBe(runStatus(cp.state));
        }
      }),
      { numRuns: 400 },
    );
    // The generator reaches every outcome, so the property says something about each.
    expect([...statuses].sort()).toEqual(['cancelled', 'completed', 'failed', 'pending', 'running', 'waiting']);
    for (const s of ['step_0', 'retry_0', 'step_1', 'step_2', 'retry_2', 'completed', 'failed', 'cancelled']) expect(states, s).toContain(s);
    expect(accepted).toBeGreaterThan(300);
    expect(rejectedTotal).toBeGreaterThan(100);
  });

  it('fold - tampering with any recorded decision is a determinism violation naming its seq and field', () => {
    fc.assert(
      fc.property(scenario, fc.nat(), (s, pick) => {
        const { r } = play(s);
        const decisions = r.events.map((e, i) => [e, i] as const).filter(([e]) => !INPUT_EVENT_TYPES.has(e.type));
        const [chosen, index] = decisions[pick % decisions.length] as readonly [RunEvent, number];
        const events = cloneEvents(r.events);
        const target = events[index] as RunEvent;
        const data = target.data as Record<string, unknown>;
        let field: string;
        switch (target.type) {
          case 'step.scheduled':
            field = 'timeoutMs';
            data[field] = (data[field] as number) + 1;
            break;
          case 'timer.scheduled':
            field = 'delayMs';
            data[field] = (data[field] as number) + 1;
            break;
          case 'step.waiting':
            field = 'signal';
            data[field] = 'tampered';
            break;
          case 'run.completed':
            field = 'output';
            data[field] = { tampered: true };
            break;
          case 'run.failed':
            field = 'error';
            data[field] = { code: 'tampered', message: 'x', retryable: false };
            break;
          case 'run.cancelled':
            field = 'reason';
            data[field] = `${String(data[field] ?? '')}!`;
            break;
          default:
            throw new Error(`unexpected decision ${target.type}`);
        }
        let caught: unknown;
        try {
          foldRun(registry, events);
        } catch (e) {
          caught = e;
        }
        expect(caught).toBeInstanceOf(DeterminismViolationError);
        const v = caught as DeterminismViolationError;
        expect(v.seq).toBeLessThan(chosen.seq);
        expect(
          v.diff.some((line) => line.includes(`seq ${chosen.seq}`) && line.includes(`data.${field}`)),
          v.diff.join('\n'),
        ).toBe(true);
      }),
      { numRuns: 300 },
    );
  });

  it('fold - dropping any one event, renumbered or not, is a determinism violation', () => {
    fc.assert(
      fc.property(scenario, fc.nat(), fc.boolean(), (s, pick, renumber) => {
        const { r } = play(s);
        fc.pre(r.events.length > 1);
        const drop = 1 + (pick % (r.events.length - 1)); // keep run.started
        const dropped = r.events[drop] as RunEvent;
        let events = cloneEvents(r.events);
        events.splice(drop, 1);
        if (renumber) events = events.map((e, i) => ({ ...e, seq: i + 1 }));
        let caught: unknown;
        try {
          foldRun(registry, events);
        } catch (e) {
          caught = e;
        }
        // Inputs are facts: one that decided nothing can be left out of a renumbered history, or
        // off its end, and the rest still replays. Anything else diverges. Only a signal the run
        // merely recorded decides nothing: every accepted start arms its attempt's timeout timer.
        if (caught === undefined) {
          const last = drop === r.events.length - 1;
          expect(renumber || last).toBe(true);
          expect(INPUT_EVENT_TYPES.has(dropped.type)).toBe(true);
          expect(dropped.type).toBe('run.signaled');
          const next = r.events[drop + 1];
          expect(next === undefined || INPUT_EVENT_TYPES.has(next.type)).toBe(true);
          return;
        }
        expect(caught).toBeInstanceOf(DeterminismViolationError);
        const v = caught as DeterminismViolationError;
        expect(v.diff.length).toBeGreaterThan(0);
        // found at the gap or before it (by the input whose decisions no longer match)
        expect(v.seq).toBeLessThanOrEqual(dropped.seq + 1);
        if (!renumber && v.diff.some((l) => l.startsWith('event chain broken'))) {
          expect(v.diff).toEqual([`event chain broken: expected seq ${dropped.seq}, found ${dropped.seq + 1}`]);
        }
      }),
      { numRuns: 300 },
    );
  });
});

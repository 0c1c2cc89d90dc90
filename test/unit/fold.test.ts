import { describe, expect, it } from 'vitest';
import {
  createRegistry,
  defineWorkflow,
  diffDecisions,
  foldRun,
  runStatus,
  type Fold,
  type Registry,
  type WorkflowDefinition,
} from '@capstan/actors';
import {
  DeterminismViolationError,
  ErrorCode,
  UnknownWorkflowError,
  decode,
  encode,
  parseRunEvent,
  type RunEvent,
} from '@capstan/schemas';
import { RunRecorder, cancel, cloneEvents, completed, failed, retryFired, signaled, started, timeoutFired } from './support/runs.js';

const three = defineWorkflow({
  id: 'fold.three',
  version: 1,
  steps: [
    { name: 'a', timeoutMs: 1000, retry: { maxAttempts: 3, initialIntervalMs: 100, backoffCoefficient: 2, maxIntervalMs: 1000 } },
    { name: 'b', timeoutMs: 2000 },
    { name: 'c', timeoutMs: 3000 },
  ],
});
const review = defineWorkflow({
  id: 'fold.review',
  version: 1,
  steps: [{ name: 'draft' }, { name: 'review', signal: 'approve' }, { name: 'publish' }],
});
const registry = createRegistry([three, review]);

/** A finished history of `three` with a retry, a timeout and a foreign signal in it. */
function threeHistory(): RunRecorder {
  const r = new RunRecorder(three, { order: 1 });
  r.apply(started('a', 1)); // 4
  r.apply(failed('a', 1)); // 5 (+6 retry timer)
  r.apply(retryFired('a', 1)); // 7 (+8, 9)
  r.apply(started('a', 2)); // 10
  r.apply(completed('a', 2, { rows: 1 })); // 11 (+12, 13)
  r.apply(signaled('ping', 1)); // 14
  r.apply(timeoutFired('b', 1)); // 15 (+16 retry timer)
  r.apply(retryFired('b', 1)); // 17 (+18, 19)
  r.apply(completed('b', 2, { rows: 2 })); // 20 (+21, 22)
  r.apply(completed('c', 1, { rows: 3 })); // 23 (+24 run.completed)
  return r;
}

function expectSameRun(fold: Fold, r: RunRecorder): void {
  expect(fold.state.snapshot.value).toEqual(r.state.snapshot.value);
  expect(fold.state.snapshot.context).toEqual(r.state.snapshot.context);
  expect(fold.state.snapshot.status).toBe(r.state.snapshot.status);
  expect(fold.state.seq).toBe(r.state.seq);
  expect(fold.state.workflow).toBe(r.workflow);
  expect(runStatus(fold.state)).toBe(runStatus(r.state));
  expect(fold.timeline).toEqual(r.timeline);
}

function violation(events: readonly RunEvent[], reg: Registry = registry): DeterminismViolationError {
  try {
    foldRun(reg, events);
  } catch (e) {
    expect(e).toBeInstanceOf(DeterminismViolationError);
    expect((e as DeterminismViolationError).code).toBe(ErrorCode.DeterminismViolation);
    return e as DeterminismViolationError;
  }
  throw new Error('expected a DeterminismViolationError');
}

/** Renumbers seq 1..n, as a forger who knows the chain rule would. */
const renumber = (events: RunEvent[]): RunEvent[] => events.map((e, i) => ({ ...e, seq: i + 1 }));

const diffHas = (e: DeterminismViolationError, ...parts: string[]) =>
  expect(e.diff.some((line) => parts.every((p) => line.includes(p))), `${parts.join(' & ')} in\n${e.diff.join('\n')}`).toBe(true);

describe('fold - replay reproduces the run', () => {
  it('fold - a recorded history folds to the live state and timeline', () => {
    const r = threeHistory();
    expect(r.events).toHaveLength(24);
    expect(r.events.at(-1)?.type).toBe('run.completed');
    const fold = foldRun(registry, r.events);
    expectSameRun(fold, r);
    expect(fold.timeline.map((t) => t.seq)).toEqual([1, 4, 5, 7, 10, 11, 14, 15, 17, 20, 23]);
    expect(fold.timeline.at(-1)).toMatchObject({ input: 'step.completed', status: 'completed', state: 'completed', decisions: ['run.completed'] });
    expect(fold.timeline[2]).toMatchObject({ input: 'step.failed', state: 'retry_0', decisions: ['timer.scheduled'] });
  });

  it('fold - a history that went through the codec folds the same', () => {
    const r = threeHistory();
    const stored = r.events.map((e) => parseRunEvent(decode(encode(e))));
    expect(stored).toEqual(r.events);
    expectSameRun(foldRun(registry, stored), r);
  });

  it('fold - every prefix that ends on a decision boundary folds to the state at that point', () => {
    const r = threeHistory();
    for (const cp of r.checkpoints) {
      const fold = foldRun(registry, r.events.slice(0, cp.events));
      expect(fold.state.snapshot.value).toEqual(cp.state.snapshot.value);
      expect(fold.state.snapshot.context).toEqual(cp.state.snapshot.context);
      expect(fold.state.seq).toBe(cp.events);
    }
  });

  it('fold - signal and cancel histories fold to the live state', () => {
    const w = new RunRecorder(review);
    w.apply(completed('draft', 1, 'text'));
    w.apply(signaled('other'));
    expectSameRun(foldRun(registry, w.events), w);
    w.apply(signaled('approve', { by: 'ann' }));
    w.apply(started('publish', 1));
    w.apply(cancel('changed my mind'));
    expectSameRun(foldRun(registry, w.events), w);
    expect(foldRun(registry, w.events).timeline.at(-1)?.status).toBe('cancelled');
  });

  it('fold - times and causation ids are read, not judged', () => {
    const r = threeHistory();
    const events = cloneEvents(r.events).map((e) => ({ ...e, at: e.at + 1000, causationId: `x:${e.seq}` }));
    const fold = foldRun(registry, events);
    expect(fold.state.snapshot.context).toEqual(r.state.snapshot.context);
    expect(fold.timeline.map((t) => t.at)).toEqual(r.timeline.map((t) => t.at + 1000));
  });

  it('fold - a failed run folds to failed', () => {
    const r = new RunRecorder(three);
    r.apply(failed('a', 1, false, 'fatal'));
    const fold = foldRun(registry, r.events);
    expectSameRun(fold, r);
    expect(runStatus(fold.state)).toBe('failed');
  });
});

describe('fold - tampered histories are determinism violations', () => {
  it('fold - changed decision data names the seq and the field', () => {
    const events = cloneEvents(threeHistory().events);
    const target = events[11] as RunEvent; // step.scheduled b
    expect(target.type).toBe('step.scheduled');
    (target.data as { timeoutMs: number }).timeoutMs = 9999;
    const e = violation(events);
    expect(e.seq).toBe(11); // the input that decided it
    expect(e.runId).toBe(target.runId);
    diffHas(e, 'seq 12', 'step.scheduled', 'data.timeoutMs', '9999', '2000');
    expect(e.message).toContain('diverges at event 11');
  });

  it('fold - a changed retry delay names the timer field', () => {
    const events = cloneEvents(threeHistory().events);
    const timer = events[5] as RunEvent;
    expect(timer.type).toBe('timer.scheduled');
    (timer.data as { delayMs: number }).delayMs = 1;
    diffHas(violation(events), 'seq 6', 'timer.scheduled', 'data.delayMs', 'recorded 1', 'replay 100');
  });

  it('fold - a changed run output names the nested field', () => {
    const events = cloneEvents(threeHistory().events);
    const last = events.at(-1) as RunEvent;
    (last.data as { output: { rows: number } }).output.rows = 4;
    const e = violation(events);
    expect(e.seq).toBe(23);
    diffHas(e, 'seq 24', 'run.completed', 'data.output.rows');
  });

  it('fold - a changed input result shows up in what it decided', () => {
    const events = cloneEvents(threeHistory().events);
    const input = events[22] as RunEvent;
    expect(input.type).toBe('step.completed');
    (input.data as { result: unknown }).result = { rows: 99 };
    diffHas(violation(events), 'seq 24', 'data.output.rows', '3', '99');
  });

  it('fold - a changed decision type is named', () => {
    const events = cloneEvents(threeHistory().events);
    (events[2] as { type: string }).type = 'step.waiting';
    diffHas(violation(events), 'seq 3', 'recorded step.waiting', 'replay decided timer.scheduled');
  });

  it('fold - a missing event breaks the chain at its seq', () => {
    const events = cloneEvents(threeHistory().events);
    events.splice(9, 1); // seq 10, step.started a#2
    const e = violation(events);
    expect(e.seq).toBe(11);
    diffHas(e, 'expected seq 10', 'found 11');
  });

  it('fold - a missing decision, even renumbered, is found', () => {
    const events = cloneEvents(threeHistory().events);
    events.splice(2, 1); // timer.scheduled of a#1
    const e = violation(renumber(events));
    expect(e.seq).toBe(1);
    diffHas(e, 'replay decided timer.scheduled', 'nothing recorded');
  });

  it('fold - reordered events break the chain, and renumbered they are refused', () => {
    const swapped = cloneEvents(threeHistory().events);
    [swapped[3], swapped[4]] = [swapped[4] as RunEvent, swapped[3] as RunEvent];
    const e = violation(swapped);
    expect(e.seq).toBe(5);
    diffHas(e, 'expected seq 4', 'found 5');

    // failed before started, renumbered: the failure (now seq 4) has no retry timer after it
    const forged = renumber(swapped);
    const f = violation(forged);
    expect(f.seq).toBe(4);
    diffHas(f, 'replay decided timer.scheduled', '"kind":"retry"', 'nothing recorded');
  });

  it('fold - an extra decision is found', () => {
    const events = cloneEvents(threeHistory().events);
    const dup = cloneEvents([events[1] as RunEvent])[0] as RunEvent;
    events.splice(2, 0, dup);
    const e = violation(renumber(events));
    expect(e.seq).toBe(1);
    diffHas(e, 'seq 3', 'recorded step.scheduled', 'replay decided timer.scheduled');
    diffHas(e, 'seq 4', 'recorded timer.scheduled', 'replay decided nothing');
  });

  it('fold - an extra decision after the final one is found', () => {
    const events = cloneEvents(threeHistory().events);
    events.push({ ...(events.at(-1) as RunEvent), seq: events.length + 1 });
    const e = violation(events);
    diffHas(e, `seq ${events.length}`, 'recorded run.completed', 'replay decided nothing');
  });

  it('fold - a recorded input the machine would not take is named', () => {
    const events = cloneEvents(threeHistory().events);
    const dup = { ...(events[3] as RunEvent), seq: 5 }; // step.started a#1 again, after itself
    events.splice(4, 0, dup);
    const e = violation(renumber(events));
    expect(e.seq).toBe(5);
    diffHas(e, 'recorded input step.started at seq 5 is not accepted', 'fold.three@1');
  });

  it('fold - a decision with no input before it is found', () => {
    const events = cloneEvents(threeHistory().events);
    const e = violation(events.slice(1));
    diffHas(e, 'does not begin with run.started');
    const g = violation([]);
    expect(g.seq).toBe(0);
  });

  it('fold - a second run.started is refused', () => {
    const events = cloneEvents(threeHistory().events.slice(0, 3));
    events.push({ ...(events[0] as RunEvent), seq: 4 });
    diffHas(violation(events), 'run.started at seq 4 is not accepted');
  });

  it('fold - a second run.started with its decisions cannot restart a run', () => {
    const r = threeHistory();
    const partial = cloneEvents(r.events.slice(0, 13)); // a#2 completed, b scheduled
    const restart = cloneEvents(r.events.slice(0, 3)).map((e) => ({ ...e, seq: e.seq + 13 }));
    const e = violation([...partial, ...restart]);
    expect(e.seq).toBe(14);
    diffHas(e, 'recorded input run.started at seq 14 is not accepted');
  });

  it('fold - decisions carry the chain too: a repeated or skipped seq among them is found', () => {
    const repeated = cloneEvents(threeHistory().events);
    (repeated[2] as RunEvent).seq = 2; // two events claim seq 2 (a fork)
    const e = violation(repeated);
    expect(e.seq).toBe(2);
    diffHas(e, 'expected seq 3', 'found 2');

    const skipped = cloneEvents(threeHistory().events);
    (skipped[12] as RunEvent).seq = 14; // seq 13 missing, 14 then twice
    diffHas(violation(skipped), 'expected seq 13', 'found 14');
  });

  it('fold - diffDecisions reports nothing for identical decisions', () => {
    const r = threeHistory();
    const recorded = r.events.slice(-1);
    expect(diffDecisions(r.last.decisions, recorded)).toEqual([]);
    expect(diffDecisions([], [])).toEqual([]);
  });
});

describe('fold - workflow versions', () => {
  const replayWith = (changed: WorkflowDefinition) => createRegistry([changed, review]);

  it('fold - a changed timeout under the same id and version is a violation with a diff', () => {
    const changed = defineWorkflow({
      id: 'fold.three',
      version: 1,
      steps: [
        { name: 'a', timeoutMs: 1500, retry: { maxAttempts: 3, initialIntervalMs: 100, backoffCoefficient: 2, maxIntervalMs: 1000 } },
        { name: 'b', timeoutMs: 2000 },
        { name: 'c', timeoutMs: 3000 },
      ],
    });
    const e = violation(threeHistory().events, replayWith(changed));
    expect(e.seq).toBe(1);
    diffHas(e, 'seq 2', 'data.timeoutMs', 'recorded 1000', 'replay 1500');
    diffHas(e, 'seq 3', 'data.delayMs', 'recorded 1000', 'replay 1500');
  });

  it('fold - changed steps under the same id and version are a violation with a diff', () => {
    const renamed = defineWorkflow({ id: 'fold.three', version: 1, steps: [{ name: 'x', timeoutMs: 1000 }, { name: 'b' }, { name: 'c' }] });
    const e = violation(threeHistory().events, replayWith(renamed));
    diffHas(e, 'seq 2', 'data.step', '"a"', '"x"');
    diffHas(e, 'seq 2', 'data.handler');

    // an extra step at the end: the old history completed where the new version schedules
    const longer = defineWorkflow({
      id: 'fold.three',
      version: 1,
      steps: [
        { name: 'a', timeoutMs: 1000, retry: { maxAttempts: 3, initialIntervalMs: 100, backoffCoefficient: 2, maxIntervalMs: 1000 } },
        { name: 'b', timeoutMs: 2000 },
        { name: 'c', timeoutMs: 3000 },
        { name: 'd' },
      ],
    });
    const l = violation(threeHistory().events, replayWith(longer));
    expect(l.seq).toBe(23);
    diffHas(l, 'seq 24', 'recorded run.completed', 'replay decided step.scheduled');
  });

  it('fold - a changed retry policy is a violation at the failure', () => {
    const slower = defineWorkflow({
      id: 'fold.three',
      version: 1,
      steps: [
        { name: 'a', timeoutMs: 1000, retry: { maxAttempts: 3, initialIntervalMs: 250, backoffCoefficient: 2, maxIntervalMs: 1000 } },
        { name: 'b', timeoutMs: 2000 },
        { name: 'c', timeoutMs: 3000 },
      ],
    });
    const e = violation(threeHistory().events, replayWith(slower));
    expect(e.seq).toBe(5);
    diffHas(e, 'seq 6', 'data.delayMs', 'recorded 100', 'replay 250');

    const fewer = defineWorkflow({
      id: 'fold.three',
      version: 1,
      steps: [{ name: 'a', timeoutMs: 1000, retry: { maxAttempts: 1 } }, { name: 'b', timeoutMs: 2000 }, { name: 'c', timeoutMs: 3000 }],
    });
    const f = violation(threeHistory().events, replayWith(fewer));
    expect(f.seq).toBe(5);
    diffHas(f, 'seq 6', 'recorded timer.scheduled', 'replay decided run.failed');
  });

  it('fold - a history of an unregistered version is UnknownWorkflowError', () => {
    const v2only = createRegistry([defineWorkflow({ id: 'fold.three', version: 2, steps: [{ name: 'a' }] })]);
    let caught: unknown;
    try {
      foldRun(v2only, threeHistory().events);
    } catch (e) {
      caught = e;
    }
    expect(caught).toBeInstanceOf(UnknownWorkflowError);
    expect((caught as UnknownWorkflowError).version).toBe(1);
  });

  it('fold - an old version still replays next to a newer one', () => {
    const v2 = defineWorkflow({ id: 'fold.three', version: 2, steps: [{ name: 'only' }] });
    const both = createRegistry([three, v2, review]);
    expect(both.latest('fold.three')).toBe(v2);
    const r = threeHistory();
    expectSameRun(foldRun(both, r.events), r);
  });
});

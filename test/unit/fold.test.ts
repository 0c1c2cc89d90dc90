import { describe, expect, it } from 'vitest';
import { createRegistry, defineWorkflow, diffDecisions, foldRun, runStatus, type Fold, type Registry, type WorkflowDefinition } from '@capstan/actors';
import { DeterminismViolationError, ErrorCode, UnknownWorkflowError, decode, encode, parseRunEvent, type RunEvent } from '@capstan/schemas';
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

/**
 * A finished history of `three` with a retry, a timeout, a foreign signal and quick steps
 * (completed without a recorded start, so without a timeout timer) in it.
 */
function threeHistory(): RunRecorder {
  const r = new RunRecorder(three, { order: 1 }); // 1 (+2 step.scheduled a#1)
  r.apply(started('a', 1)); // 3 (+4 timeout timer a#1)
  r.apply(failed('a', 1)); // 5 (+6 retry timer a#1)
  r.apply(retryFired('a', 1)); // 7 (+8 step.scheduled a#2)
  r.apply(started('a', 2)); // 9 (+10 timeout timer a#2)
  r.apply(completed('a', 2, { rows: 1 })); // 11 (+12 step.scheduled b#1)
  r.apply(signaled('ping', 1)); // 13
  r.apply(started('b', 1)); // 14 (+15 timeout timer b#1)
  r.apply(timeoutFired('b', 1)); // 16 (+17 retry timer b#1)
  r.apply(retryFired('b', 1)); // 18 (+19 step.scheduled b#2)
  r.apply(completed('b', 2, { rows: 2 })); // 20 (+21 step.scheduled c#1)
  r.apply(completed('c', 1, { rows: 3 })); // 22 (+23 run.completed)
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
  expect(
    e.diff.some((line) => parts.every((p) => line.includes(p))),
    `${parts.join(' & ')} in\n${e.diff.join('\n')}`,
  ).toBe(true);

describe('fold - replay reproduces the run', () => {
  it('fold - a recorded history folds to the live state and timeline', () => {
    const r = threeHistory();
    expect(r.events).toHaveLength(23);
    expect(r.events.at(-1)?.type).toBe('run.completed');
    // timeout timers follow exactly the accepted starts, each for that start's attempt
    expect(r.events.flatMap((e, i) => (e.type === 'timer.scheduled' && e.data.kind === 'timeout' ? [[r.events[i - 1]?.type, e.seq, e.data.timerId, e.data.delayMs]] : []))).toEqual(
      [
        ['step.started', 4, 'a-a1-timeout', 1000],
        ['step.started', 10, 'a-a2-timeout', 1000],
        ['step.started', 15, 'b-a1-timeout', 2000],
      ],
    );
    const fold = foldRun(registry, r.events);
    expectSameRun(fold, r);
    expect(fold.timeline.map((t) => t.seq)).toEqual([1, 3, 5, 7, 9, 11, 13, 14, 16, 18, 20, 22]);
    expect(fold.timeline.map((t) => [t.input, t.state, t.status, t.decisions])).toEqual([
      ['run.started', 'step_0', 'pending', ['step.scheduled']],
      ['step.started', 'step_0', 'running', ['timer.scheduled']],
      ['step.failed', 'retry_0', 'running', ['timer.scheduled']],
      ['timer.fired', 'step_0', 'running', ['step.scheduled']],
      ['step.started', 'step_0', 'running', ['timer.scheduled']],
      ['step.completed', 'step_1', 'running', ['step.scheduled']],
      ['run.signaled', 'step_1', 'running', []],
      ['step.started', 'step_1', 'running', ['timer.scheduled']],
      ['timer.fired', 'retry_1', 'running', ['timer.scheduled']],
      ['timer.fired', 'step_1', 'running', ['step.scheduled']],
      ['step.completed', 'step_2', 'running', ['step.scheduled']],
      ['step.completed', 'completed', 'completed', ['run.completed']],
    ]);
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
    expect(e.seq).toBe(22);
    diffHas(e, 'seq 23', 'run.completed', 'data.output.rows');
  });

  it('fold - a changed input result shows up in what it decided', () => {
    const events = cloneEvents(threeHistory().events);
    const input = events[21] as RunEvent;
    expect(input.type).toBe('step.completed');
    (input.data as { result: unknown }).result = { rows: 99 };
    diffHas(violation(events), 'seq 23', 'data.output.rows', '3', '99');
  });

  it('fold - a changed timeout timer names the seq of its start and the field', () => {
    const events = cloneEvents(threeHistory().events);
    const timer = events[14] as RunEvent; // timeout timer of b#1, armed by its start (seq 14)
    expect(timer.type).toBe('timer.scheduled');
    expect(timer.data).toEqual({ timerId: 'b-a1-timeout', kind: 'timeout', step: 'b', attempt: 1, delayMs: 2000 });
    (timer.data as { delayMs: number }).delayMs = 2001;
    const e = violation(events);
    expect(e.seq).toBe(14);
    expect(e.diff).toEqual(['seq 15 timer.scheduled: data.delayMs: recorded 2001, replay 2000']);
  });

  it('fold - a changed decision type is named', () => {
    const events = cloneEvents(threeHistory().events);
    (events[1] as { type: string }).type = 'step.waiting';
    const e = violation(events);
    expect(e.seq).toBe(1);
    diffHas(e, 'seq 2', 'recorded step.waiting', 'replay decided step.scheduled');

    const timer = cloneEvents(threeHistory().events);
    (timer[3] as { type: string }).type = 'step.waiting'; // the timeout timer armed by step.started a#1
    const t = violation(timer);
    expect(t.seq).toBe(3);
    diffHas(t, 'seq 4', 'recorded step.waiting', 'replay decided timer.scheduled');
  });

  it('fold - a missing event breaks the chain at its seq', () => {
    const events = cloneEvents(threeHistory().events);
    events.splice(8, 1); // seq 9, step.started a#2
    const e = violation(events);
    expect(e.seq).toBe(10);
    diffHas(e, 'expected seq 9', 'found 10');
  });

  it('fold - a start left out with its timer kept is found: the timer was not decided by what precedes it', () => {
    const events = cloneEvents(threeHistory().events);
    events.splice(8, 1); // seq 9, step.started a#2; its timeout timer (seq 10) stays
    const e = violation(renumber(events));
    expect(e.seq).toBe(7); // retry timer fired: it decided only step.scheduled a#2
    expect(e.diff).toEqual(['seq 9: recorded timer.scheduled {"timerId":"a-a2-timeout","kind":"timeout","step":"a","attempt":2,"delayMs":1000}, replay decided nothing']);
  });

  it('fold - a missing decision, even renumbered, is found', () => {
    const events = cloneEvents(threeHistory().events);
    events.splice(1, 1); // step.scheduled of a#1
    const e = violation(renumber(events));
    expect(e.seq).toBe(1);
    diffHas(e, 'replay decided step.scheduled', 'nothing recorded');

    const timer = cloneEvents(threeHistory().events);
    timer.splice(3, 1); // the timeout timer armed by step.started a#1
    const t = violation(renumber(timer));
    expect(t.seq).toBe(3);
    expect(t.diff).toEqual([
      'after the record: replay decided timer.scheduled {"timerId":"a-a1-timeout","kind":"timeout","step":"a","attempt":1,"delayMs":1000}, nothing recorded',
    ]);
  });

  it('fold - reordered events break the chain, and renumbered they are refused', () => {
    const swapped = cloneEvents(threeHistory().events);
    [swapped[2], swapped[3]] = [swapped[3] as RunEvent, swapped[2] as RunEvent]; // a#1's timeout timer before its start
    const e = violation(swapped);
    expect(e.seq).toBe(4);
    expect(e.diff).toEqual(['event chain broken: expected seq 3, found 4']);

    // renumbered: the timer (now seq 3) follows the run's start, which decided only step.scheduled
    const forged = renumber(swapped);
    const f = violation(forged);
    expect(f.seq).toBe(1);
    expect(f.diff).toEqual(['seq 3: recorded timer.scheduled {"timerId":"a-a1-timeout","kind":"timeout","step":"a","attempt":1,"delayMs":1000}, replay decided nothing']);

    // the failure moved between a start and its timer: the start (seq 3) has no timer after it
    const between = cloneEvents(threeHistory().events);
    [between[3], between[4]] = [between[4] as RunEvent, between[3] as RunEvent];
    for (const h of [between, renumber(between)]) {
      const b = violation(h);
      expect(b.seq).toBe(3);
      diffHas(b, 'replay decided timer.scheduled', '"kind":"timeout"', 'nothing recorded');
    }

    // failed before started, renumbered: the failure (now seq 3) has no retry timer after it
    const history = cloneEvents(threeHistory().events);
    const early = renumber([...history.slice(0, 2), history[4] as RunEvent, ...history.slice(2, 4), ...history.slice(5)]);
    expect(early.slice(2, 5).map((x) => x.type)).toEqual(['step.failed', 'step.started', 'timer.scheduled']);
    const g = violation(early);
    expect(g.seq).toBe(3);
    diffHas(g, 'replay decided timer.scheduled', '"kind":"retry"', 'nothing recorded');
  });

  it('fold - an extra decision is found', () => {
    const events = cloneEvents(threeHistory().events);
    const dup = cloneEvents([events[1] as RunEvent])[0] as RunEvent;
    events.splice(2, 0, dup);
    const e = violation(renumber(events));
    expect(e.seq).toBe(1);
    expect(e.diff).toHaveLength(1);
    diffHas(e, 'seq 3', 'recorded step.scheduled', 'replay decided nothing');

    // a second timeout timer after one start
    const twice = cloneEvents(threeHistory().events);
    twice.splice(4, 0, cloneEvents([twice[3] as RunEvent])[0] as RunEvent);
    const t = violation(renumber(twice));
    expect(t.seq).toBe(3);
    expect(t.diff).toHaveLength(1);
    diffHas(t, 'seq 5', 'recorded timer.scheduled', '"timerId":"a-a1-timeout"', 'replay decided nothing');
  });

  it('fold - an extra decision after the final one is found', () => {
    const events = cloneEvents(threeHistory().events);
    events.push({ ...(events.at(-1) as RunEvent), seq: events.length + 1 });
    const e = violation(events);
    diffHas(e, `seq ${events.length}`, 'recorded run.completed', 'replay decided nothing');
  });

  it('fold - a recorded input the machine would not take is named', () => {
    const events = cloneEvents(threeHistory().events);
    const dup = { ...(events[2] as RunEvent) }; // step.started a#1 again, after itself and its timer
    expect(dup.type).toBe('step.started');
    events.splice(4, 0, dup);
    const e = violation(renumber(events));
    expect(e.seq).toBe(5);
    expect(e.diff).toEqual(['recorded input step.started at seq 5 is not accepted by fold.three@1 in state step_0']);

    // a duplicate start with a second timeout timer is refused the same way
    const withTimer = cloneEvents(threeHistory().events);
    withTimer.splice(4, 0, ...cloneEvents(withTimer.slice(2, 4)));
    const t = violation(renumber(withTimer));
    expect(t.seq).toBe(5);
    diffHas(t, 'recorded input step.started at seq 5 is not accepted', 'fold.three@1');
  });

  it('fold - a decision with no input before it is found', () => {
    const events = cloneEvents(threeHistory().events);
    const e = violation(events.slice(1));
    diffHas(e, 'does not begin with run.started');
    const g = violation([]);
    expect(g.seq).toBe(0);
  });

  it('fold - a second run.started is refused', () => {
    const events = cloneEvents(threeHistory().events.slice(0, 2));
    events.push({ ...(events[0] as RunEvent), seq: 3 });
    diffHas(violation(events), 'run.started at seq 3 is not accepted');
  });

  it('fold - a second run.started with its decisions cannot restart a run', () => {
    const r = threeHistory();
    const partial = cloneEvents(r.events.slice(0, 12)); // a#2 completed, b scheduled
    expect(partial.at(-1)?.type).toBe('step.scheduled');
    const restart = cloneEvents(r.events.slice(0, 2)).map((e) => ({ ...e, seq: e.seq + 12 }));
    const e = violation([...partial, ...restart]);
    expect(e.seq).toBe(13);
    diffHas(e, 'recorded input run.started at seq 13 is not accepted');
  });

  it('fold - decisions carry the chain too: a repeated or skipped seq among them is found', () => {
    const repeated = cloneEvents(threeHistory().events);
    expect(repeated[3]?.type).toBe('timer.scheduled');
    (repeated[3] as RunEvent).seq = 3; // two events claim seq 3 (a fork)
    const e = violation(repeated);
    expect(e.seq).toBe(3);
    diffHas(e, 'expected seq 4', 'found 3');

    const skipped = cloneEvents(threeHistory().events);
    expect(skipped[11]?.type).toBe('step.scheduled');
    (skipped[11] as RunEvent).seq = 13; // seq 12 missing, 13 then twice
    diffHas(violation(skipped), 'expected seq 12', 'found 13');
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
    // the run's start schedules the step and nothing else, so that is the only difference there
    expect(e.diff).toEqual(['seq 2 step.scheduled: data.timeoutMs: recorded 1000, replay 1500']);

    // a history of quick steps that never started holds no timer: b's change shows at b's schedule
    const quick = new RunRecorder(three);
    quick.apply(completed('a', 1));
    quick.apply(completed('b', 1));
    quick.apply(completed('c', 1));
    const laterChange = defineWorkflow({
      id: 'fold.three',
      version: 1,
      steps: [
        { name: 'a', timeoutMs: 1000, retry: { maxAttempts: 3, initialIntervalMs: 100, backoffCoefficient: 2, maxIntervalMs: 1000 } },
        { name: 'b', timeoutMs: 2500 },
        { name: 'c', timeoutMs: 3000 },
      ],
    });
    const q = violation(quick.events, replayWith(laterChange));
    expect(q.seq).toBe(3);
    expect(q.diff).toEqual(['seq 4 step.scheduled: data.timeoutMs: recorded 2000, replay 2500']);
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
    expect(l.seq).toBe(22);
    diffHas(l, 'seq 23', 'recorded run.completed', 'replay decided step.scheduled');
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
      steps: [
        { name: 'a', timeoutMs: 1000, retry: { maxAttempts: 1 } },
        { name: 'b', timeoutMs: 2000 },
        { name: 'c', timeoutMs: 3000 },
      ],
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

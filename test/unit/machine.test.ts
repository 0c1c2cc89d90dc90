import { describe, expect, it } from 'vitest';
import fc from 'fast-check';
import {
  DEFAULT_POOL,
  DEFAULT_RETRY,
  DEFAULT_TIMEOUT_MS,
  RunStatus,
  backoffDelay,
  decide,
  defineWorkflow,
  demoFlaky,
  demoSignal,
  demoWorkflows,
  isTerminal,
  runStatus,
  startRun,
  stateName,
  statusFromEvents,
  timerId,
  type RetryPolicy,
  type RunContext,
  type StepDefinition,
  type WorkflowDefinition,
} from '@capstan/actors';
import { CapstanError, ErrorCode, EventRejectedError, InvalidWorkflowError, TOKEN_PATTERN, parseRunEvent, type InputEventBody, type RunEvent } from '@capstan/schemas';
import { RunRecorder, cancel, completed, failed, retryFired, signaled, started, timeoutFired } from './support/runs.js';

const RETRY_A: RetryPolicy = { maxAttempts: 4, initialIntervalMs: 100, backoffCoefficient: 3, maxIntervalMs: 500 };

/** Three task steps with different settings, so every field of a decision is checked. */
const three = defineWorkflow({
  id: 'test.three',
  version: 1,
  steps: [
    { name: 'a', timeoutMs: 1000, retry: RETRY_A },
    { name: 'b', pool: 'gpu', handler: 'custom.b', timeoutMs: 2000 },
    { name: 'c', retry: { maxAttempts: 1 } },
  ],
});

/** Task, signal, task. */
const withSignal = defineWorkflow({
  id: 'test.signal',
  version: 1,
  steps: [
    { name: 'draft', timeoutMs: 500 },
    { name: 'review', signal: 'approve' },
    { name: 'publish', timeoutMs: 500 },
  ],
});

/** A workflow that waits for a signal first and ends on one. */
const signalOnly = defineWorkflow({
  id: 'test.signal-only',
  version: 1,
  steps: [{ name: 'gate', signal: 'open' }],
});

const ctx = (r: RunRecorder) => r.state.snapshot.context as RunContext;

function rejection(fn: () => unknown): EventRejectedError {
  try {
    fn();
  } catch (e) {
    expect(e).toBeInstanceOf(EventRejectedError);
    expect(CapstanError.is(e)).toBe(true);
    return e as EventRejectedError;
  }
  throw new Error('expected the input to be rejected');
}

/**
 * On a finished run, an input about a step attempt is refused as stale or as not accepted
 * (either is a quiet rejection); inputs without an attempt are `event_rejected`.
 */
const AFTER_END = [ErrorCode.StaleAttempt, ErrorCode.EventRejected] as const;
const afterEnd = (input: InputEventBody) => ('attempt' in input.data ? AFTER_END : ([ErrorCode.EventRejected] as const));

/** Expects `input` rejected with `code` (or one of `code`), and the run unchanged. */
function expectRejected(r: RunRecorder, input: InputEventBody, code: string | readonly string[]): void {
  const before = r.state;
  const recorded = r.events.length;
  const e = rejection(() => r.apply(input));
  const codes: readonly string[] = typeof code === 'string' ? [code] : code;
  expect(codes, `${input.type} ${JSON.stringify(input.data)} was rejected with ${e.code}`).toContain(e.code);
  expect(e.eventType).toBe(input.type);
  expect(r.state).toBe(before);
  expect(r.events).toHaveLength(recorded);
}

/** Decisions as plain `{ type, data }`, for exact comparison. */
const bodies = (r: RunRecorder) => r.last.decisions.map((d) => ({ type: d.type, data: d.data }));

/** What entering a task step decides: the step.scheduled decision, and nothing else. */
const scheduled = (step: string, attempt: number, handler: string, mode: number, pool: string, timeoutMs: number) => [
  { type: 'step.scheduled', data: { step, attempt, handler, mode, pool, timeoutMs } },
];

/** What accepting the current attempt's step.started decides: its durable timeout timer. */
const timeoutTimer = (step: string, attempt: number, timeoutMs: number) => [
  { type: 'timer.scheduled', data: { timerId: `${step}-a${attempt}-timeout`, kind: 'timeout', step, attempt, delayMs: timeoutMs } },
];

/** Every timer.scheduled recorded so far, as `[timerId, delayMs]`, in order. */
const timers = (r: RunRecorder, kind?: 'timeout' | 'retry') =>
  r.events.flatMap((e) => (e.type === 'timer.scheduled' && (kind === undefined || e.data.kind === kind) ? [[e.data.timerId, e.data.delayMs] as const] : []));

/** Status from the machine and straight from the recorded events must agree. */
function expectStatus(r: RunRecorder, status: RunStatus): void {
  expect(runStatus(r.state)).toBe(status);
  expect(statusFromEvents(r.events)).toBe(status);
  for (const e of r.events) parseRunEvent(e);
}

describe('machine - happy path', () => {
  it('machine - a 3-step workflow schedules each step alone, arms its timeout when started, then completes with the last result', () => {
    const r = new RunRecorder(three, { order: 42 });
    expect(bodies(r)).toEqual(scheduled('a', 1, 'test.three.a', 0, DEFAULT_POOL, 1000));
    expect(r.state.seq).toBe(2);
    expect(stateName(r.state)).toBe('step_0');
    expectStatus(r, RunStatus.Pending);
    expect(ctx(r).input).toEqual({ order: 42 });
    expect(ctx(r).startedAttempt).toBe(0);

    r.apply(started('a', 1));
    expect(bodies(r)).toEqual(timeoutTimer('a', 1, 1000));
    expect(stateName(r.state)).toBe('step_0');
    expectStatus(r, RunStatus.Running);
    expect(ctx(r).startedAttempt).toBe(1);
    r.apply(completed('a', 1, { rows: 10 }));
    expect(bodies(r)).toEqual(scheduled('b', 1, 'custom.b', 0, 'gpu', 2000));
    expectStatus(r, RunStatus.Running);
    expect(ctx(r).startedAttempt).toBe(0);

    r.apply(started('b', 1));
    expect(bodies(r)).toEqual(timeoutTimer('b', 1, 2000));
    r.apply(completed('b', 1, { rows: 20 }));
    expect(bodies(r)).toEqual(scheduled('c', 1, 'test.three.c', 0, DEFAULT_POOL, DEFAULT_TIMEOUT_MS));

    r.apply(started('c', 1));
    expect(bodies(r)).toEqual(timeoutTimer('c', 1, DEFAULT_TIMEOUT_MS));
    r.apply(completed('c', 1, { rows: 30, final: true }));
    expect(bodies(r)).toEqual([{ type: 'run.completed', data: { output: { rows: 30, final: true } } }]);
    expectStatus(r, RunStatus.Completed);
    expect(isTerminal(r.state)).toBe(true);
    expect(ctx(r).results).toEqual({ a: { rows: 10 }, b: { rows: 20 }, c: { rows: 30, final: true } });
    // run.started + 1, then per step: started + 1, completed + 1
    expect(r.events.map((e) => e.seq)).toEqual(Array.from({ length: r.events.length }, (_, i) => i + 1));
    expect(r.events.map((e) => e.type)).toEqual([
      'run.started',
      'step.scheduled',
      'step.started',
      'timer.scheduled',
      'step.completed',
      'step.scheduled',
      'step.started',
      'timer.scheduled',
      'step.completed',
      'step.scheduled',
      'step.started',
      'timer.scheduled',
      'step.completed',
      'run.completed',
    ]);
    expect(timers(r)).toEqual([
      ['a-a1-timeout', 1000],
      ['b-a1-timeout', 2000],
      ['c-a1-timeout', DEFAULT_TIMEOUT_MS],
    ]);
    expect(r.state.seq).toBe(r.events.length);
  });

  it('machine - a step may complete without a recorded start, and then never arms a timeout timer', () => {
    const r = new RunRecorder(three);
    r.apply(completed('a', 1, 1));
    expect(bodies(r)).toEqual(scheduled('b', 1, 'custom.b', 0, 'gpu', 2000));
    expectStatus(r, RunStatus.Running);
    r.apply(completed('b', 1, 2));
    expect(bodies(r)).toEqual(scheduled('c', 1, 'test.three.c', 0, DEFAULT_POOL, DEFAULT_TIMEOUT_MS));
    r.apply(completed('c', 1, 3));
    expect(bodies(r)).toEqual([{ type: 'run.completed', data: { output: 3 } }]);
    expectStatus(r, RunStatus.Completed);
    // No step was reported started, so the whole history holds no timer at all.
    expect(timers(r)).toEqual([]);
    expect(r.events.map((e) => e.type)).toEqual([
      'run.started',
      'step.scheduled',
      'step.completed',
      'step.scheduled',
      'step.completed',
      'step.scheduled',
      'step.completed',
      'run.completed',
    ]);
    // and a late start of a step that already completed arms nothing either
    expectRejected(r, started('c', 1), AFTER_END);
  });

  it('machine - a step that fails and retries without ever being reported started arms only retry timers', () => {
    const r = new RunRecorder(three);
    r.apply(failed('a', 1));
    expect(bodies(r)).toEqual([{ type: 'timer.scheduled', data: { timerId: 'a-a1-retry', kind: 'retry', step: 'a', attempt: 1, delayMs: 100 } }]);
    r.apply(retryFired('a', 1));
    expect(bodies(r)).toEqual(scheduled('a', 2, 'test.three.a', 0, DEFAULT_POOL, 1000));
    r.apply(completed('a', 2));
    expect(timers(r, 'timeout')).toEqual([]);
    expect(timers(r)).toEqual([['a-a1-retry', 100]]);
  });

  it('machine - a completed result of null becomes the output', () => {
    const one = defineWorkflow({ id: 'one', version: 1, steps: [{ name: 'x' }] });
    const r = new RunRecorder(one);
    r.apply(completed('x', 1, null));
    expect(bodies(r)).toEqual([{ type: 'run.completed', data: { output: null } }]);
  });

  it('machine - run.started is never an input to decide', () => {
    const r = new RunRecorder(three);
    expectRejected(r, { type: 'run.started', data: { workflow: three.id, version: 1, input: {} } }, ErrorCode.EventRejected);
  });
});

describe('machine - step.started', () => {
  it('machine - started is accepted once per attempt and arms its timeout; a duplicate is rejected and arms nothing', () => {
    expect(timerId('a', 1, 'timeout')).toBe('a-a1-timeout');
    const r = new RunRecorder(three);
    r.apply(started('a', 1));
    expect(bodies(r)).toEqual(timeoutTimer('a', 1, 1000));
    expect(ctx(r).startedAttempt).toBe(1);
    expectRejected(r, started('a', 1), ErrorCode.StaleAttempt);
    expectRejected(r, started('a', 1, 'another-worker'), ErrorCode.StaleAttempt);
    // a start for an attempt that is not current, or for another step
    expectRejected(r, started('a', 2), ErrorCode.StaleAttempt);
    expectRejected(r, started('b', 1), ErrorCode.StaleAttempt);
    expect(timers(r)).toEqual([['a-a1-timeout', 1000]]);
    expect(ctx(r).startedAttempt).toBe(1);
    // after a retry, the new attempt may start once, and arms its own timer
    r.apply(failed('a', 1));
    expectRejected(r, started('a', 2), ErrorCode.StaleAttempt); // not scheduled yet
    expectRejected(r, started('a', 1), ErrorCode.StaleAttempt); // waiting for the retry timer
    r.apply(retryFired('a', 1));
    expect(bodies(r)).toEqual(scheduled('a', 2, 'test.three.a', 0, DEFAULT_POOL, 1000));
    expect(ctx(r).startedAttempt).toBe(0);
    r.apply(started('a', 2, 'w-2'));
    expect(bodies(r)).toEqual(timeoutTimer('a', 2, 1000));
    expect(ctx(r).startedAttempt).toBe(2);
    expectRejected(r, started('a', 2), ErrorCode.StaleAttempt);
    expectRejected(r, started('a', 1), ErrorCode.StaleAttempt);
    expectStatus(r, RunStatus.Running);
    expect(timers(r)).toEqual([
      ['a-a1-timeout', 1000],
      ['a-a1-retry', 100],
      ['a-a2-timeout', 1000],
    ]);
    // once the attempt completes, its start is stale; the next step starts once with its own timeout
    r.apply(completed('a', 2));
    expectRejected(r, started('a', 2), ErrorCode.StaleAttempt);
    r.apply(started('b', 1));
    expect(bodies(r)).toEqual(timeoutTimer('b', 1, 2000));
    expectRejected(r, started('b', 1, 'w-2'), ErrorCode.StaleAttempt);
    expect(timers(r, 'timeout')).toEqual([
      ['a-a1-timeout', 1000],
      ['a-a2-timeout', 1000],
      ['b-a1-timeout', 2000],
    ]);
  });

  it('machine - a start after the attempt was completed without one is stale and arms nothing', () => {
    const r = new RunRecorder(three);
    r.apply(completed('a', 1));
    const recorded = r.events.length;
    expectRejected(r, started('a', 1), ErrorCode.StaleAttempt);
    expect(r.events).toHaveLength(recorded);
    expect(timers(r)).toEqual([]);
  });

  it('machine - a start during a signal step is stale; the task after it arms a timer when started', () => {
    const r = new RunRecorder(withSignal);
    r.apply(completed('draft', 1));
    expectRejected(r, started('draft', 1), ErrorCode.StaleAttempt);
    expectRejected(r, started('publish', 1), ErrorCode.StaleAttempt);
    r.apply(signaled('approve'));
    expect(bodies(r)).toEqual(scheduled('publish', 1, 'test.signal.publish', 0, DEFAULT_POOL, 500));
    r.apply(started('publish', 1));
    expect(bodies(r)).toEqual(timeoutTimer('publish', 1, 500));
    expect(timers(r)).toEqual([['publish-a1-timeout', 500]]);
  });
});

describe('machine - failures, retries and backoff', () => {
  it('machine - backoffDelay is exponential and capped', () => {
    expect([2, 3, 4, 5].map((n) => backoffDelay(RETRY_A, n))).toEqual([100, 300, 500, 500]);
    expect([2, 3, 4, 5, 6, 7, 8].map((n) => backoffDelay(DEFAULT_RETRY, n))).toEqual([1000, 2000, 4000, 8000, 16000, 32000, 60000]);
    expect(backoffDelay({ ...DEFAULT_RETRY, backoffCoefficient: 1 }, 9)).toBe(1000);
    expect(backoffDelay({ ...DEFAULT_RETRY, initialIntervalMs: 0 }, 5)).toBe(0);
    expect(backoffDelay({ ...DEFAULT_RETRY, initialIntervalMs: 333, backoffCoefficient: 1.5 }, 3)).toBe(500); // rounded
    // next < 2 is treated as the first retry
    expect(backoffDelay(RETRY_A, 1)).toBe(100);
  });

  it('machine - property: backoff never exceeds the cap and never decreases', () => {
    const policy = fc
      .record({
        maxAttempts: fc.integer({ min: 1, max: 1000 }),
        initialIntervalMs: fc.integer({ min: 0, max: 10_000 }),
        backoffCoefficient: fc.double({ min: 1, max: 10, noNaN: true }),
        extra: fc.integer({ min: 0, max: 1_000_000 }),
      })
      .map(({ extra, ...p }) => ({ ...p, maxIntervalMs: p.initialIntervalMs + extra }));
    fc.assert(
      fc.property(policy, fc.integer({ min: 2, max: 1000 }), (p, n) => {
        const d = backoffDelay(p, n);
        expect(Number.isInteger(d)).toBe(true);
        expect(d).toBeLessThanOrEqual(p.maxIntervalMs);
        expect(d).toBeGreaterThanOrEqual(Math.min(p.initialIntervalMs, p.maxIntervalMs) - 0.5);
        expect(backoffDelay(p, n + 1)).toBeGreaterThanOrEqual(d);
      }),
    );
  });

  it('machine - a retryable failure arms a retry timer with the exact backoff delay, attempt after attempt', () => {
    const r = new RunRecorder(three);
    for (let attempt = 1; attempt < RETRY_A.maxAttempts; attempt++) {
      r.apply(started('a', attempt));
      expect(bodies(r)).toEqual(timeoutTimer('a', attempt, 1000));
      r.apply(failed('a', attempt, true, 'flaky'));
      expect(bodies(r)).toEqual([
        {
          type: 'timer.scheduled',
          data: { timerId: `a-a${attempt}-retry`, kind: 'retry', step: 'a', attempt, delayMs: backoffDelay(RETRY_A, attempt + 1) },
        },
      ]);
      expect(stateName(r.state)).toBe('retry_0');
      expectStatus(r, RunStatus.Running);
      expect(ctx(r).lastError).toEqual({ code: 'flaky', message: 'a broke', retryable: true });
      // Nothing but the retry timer moves it on.
      expectRejected(r, started('a', attempt), ErrorCode.StaleAttempt);
      expectRejected(r, completed('a', attempt), ErrorCode.StaleAttempt);
      expectRejected(r, failed('a', attempt), ErrorCode.StaleAttempt);
      expectRejected(r, timeoutFired('a', attempt), ErrorCode.StaleAttempt);
      expectRejected(r, retryFired('a', attempt + 1), ErrorCode.StaleAttempt);
      r.apply(retryFired('a', attempt));
      expect(bodies(r)).toEqual(scheduled('a', attempt + 1, 'test.three.a', 0, DEFAULT_POOL, 1000));
      expect(ctx(r).attempts['a']).toBe(attempt + 1);
    }
    expect(r.events.filter((e) => e.type === 'timer.scheduled' && e.data.kind === 'retry').map((e) => (e.data as { delayMs: number }).delayMs)).toEqual([100, 300, 500]);
    // the last attempt fails: retries are exhausted
    r.apply(started('a', 4));
    expect(bodies(r)).toEqual(timeoutTimer('a', 4, 1000));
    // one timeout timer per started attempt, each before that attempt's retry timer
    expect(timers(r)).toEqual([
      ['a-a1-timeout', 1000],
      ['a-a1-retry', 100],
      ['a-a2-timeout', 1000],
      ['a-a2-retry', 300],
      ['a-a3-timeout', 1000],
      ['a-a3-retry', 500],
      ['a-a4-timeout', 1000],
    ]);
    r.apply(failed('a', 4, true, 'flaky'));
    expect(r.last.decisions).toHaveLength(1);
    const d = r.last.decisions[0];
    expect(d?.type).toBe('run.failed');
    const error = (d?.data as { error: { code: string; message: string; retryable: boolean } }).error;
    expect(error.code).toBe('flaky');
    expect(error.retryable).toBe(false);
    expect(error.message).toContain('after 4 attempt(s)');
    expectStatus(r, RunStatus.Failed);
    expect(isTerminal(r.state)).toBe(true);
  });

  it('machine - a zero initial interval stays zero through a thousand attempts', () => {
    const wf = defineWorkflow({
      id: 'zero',
      version: 1,
      steps: [{ name: 'z', retry: { maxAttempts: 1000, initialIntervalMs: 0, backoffCoefficient: 3, maxIntervalMs: 10 } }],
    });
    const r = new RunRecorder(wf);
    for (let attempt = 1; attempt < 1000; attempt++) {
      r.apply(failed('z', attempt));
      expect((r.last.decisions[0]?.data as { delayMs: number }).delayMs).toBe(0);
      r.apply(retryFired('z', attempt));
    }
    r.apply(failed('z', 1000));
    expect(r.last.decisions.map((d) => d.type)).toEqual(['run.failed']);
  });

  it('machine - a non-retryable failure fails the run at once', () => {
    const r = new RunRecorder(three);
    r.apply(started('a', 1));
    r.apply(failed('a', 1, false, 'bad_input'));
    expect(bodies(r)).toEqual([{ type: 'run.failed', data: { error: { code: 'bad_input', message: 'step a failed after 1 attempt(s): a broke', retryable: false } } }]);
    expectStatus(r, RunStatus.Failed);
  });

  it('machine - a step with maxAttempts 1 fails on its first retryable failure', () => {
    const r = new RunRecorder(three);
    r.apply(completed('a', 1));
    r.apply(completed('b', 1));
    r.apply(failed('c', 1, true, 'flaky'));
    expect(r.last.decisions.map((d) => d.type)).toEqual(['run.failed']);
    expectStatus(r, RunStatus.Failed);
  });

  it('machine - a failure of another step or attempt is rejected as stale', () => {
    const r = new RunRecorder(three);
    expectRejected(r, failed('b', 1), ErrorCode.StaleAttempt);
    expectRejected(r, failed('a', 2), ErrorCode.StaleAttempt);
    expectRejected(r, completed('a', 2), ErrorCode.StaleAttempt);
    expectRejected(r, failed('nope', 1), ErrorCode.StaleAttempt);
  });
});

describe('machine - timeouts', () => {
  it("machine - the timeout timer armed by the current attempt's start retries with step_timeout", () => {
    const r = new RunRecorder(three);
    r.apply(started('a', 1));
    expect(bodies(r)).toEqual(timeoutTimer('a', 1, 1000));
    r.apply(timeoutFired('a', 1));
    expect(bodies(r)).toEqual([{ type: 'timer.scheduled', data: { timerId: 'a-a1-retry', kind: 'retry', step: 'a', attempt: 1, delayMs: 100 } }]);
    expect(stateName(r.state)).toBe('retry_0');
    expectStatus(r, RunStatus.Running);
    expect(ctx(r).lastError).toEqual({ code: ErrorCode.StepTimeout, message: 'step a attempt 1 timed out after 1000 ms', retryable: true });
    // the timer has done its work: firing it again, or a start or result of the attempt, is stale
    expectRejected(r, timeoutFired('a', 1), ErrorCode.StaleAttempt);
    expectRejected(r, started('a', 1), ErrorCode.StaleAttempt);
    r.apply(retryFired('a', 1));
    expect(bodies(r)).toEqual(scheduled('a', 2, 'test.three.a', 0, DEFAULT_POOL, 1000));
    // the old attempt's timeout (a duplicate) and its late result are stale now
    expectRejected(r, timeoutFired('a', 1), ErrorCode.StaleAttempt);
    expectRejected(r, completed('a', 1), ErrorCode.StaleAttempt);
    expectRejected(r, failed('a', 1), ErrorCode.StaleAttempt);
    expectRejected(r, started('a', 1), ErrorCode.StaleAttempt);
    // the new attempt arms a timer of its own when it starts; the old one's stays stale
    r.apply(started('a', 2));
    expect(bodies(r)).toEqual(timeoutTimer('a', 2, 1000));
    expectRejected(r, timeoutFired('a', 1), ErrorCode.StaleAttempt);
    r.apply(completed('a', 2, 'second'));
    expect(ctx(r).results['a']).toBe('second');
    // a timeout of the finished attempt that fires late is stale
    expectRejected(r, timeoutFired('a', 2), ErrorCode.StaleAttempt);
    expect(timers(r)).toEqual([
      ['a-a1-timeout', 1000],
      ['a-a1-retry', 100],
      ['a-a2-timeout', 1000],
    ]);
  });

  it('machine - a second attempt timing out after its start retries again with the next backoff', () => {
    const r = new RunRecorder(three);
    r.apply(started('a', 1));
    r.apply(timeoutFired('a', 1));
    r.apply(retryFired('a', 1));
    r.apply(started('a', 2));
    r.apply(timeoutFired('a', 2));
    expect(bodies(r)).toEqual([{ type: 'timer.scheduled', data: { timerId: 'a-a2-retry', kind: 'retry', step: 'a', attempt: 2, delayMs: 300 } }]);
    expect(ctx(r).lastError).toEqual({ code: ErrorCode.StepTimeout, message: 'step a attempt 2 timed out after 1000 ms', retryable: true });
  });

  // The machine does not check that the attempt was reported started: a timeout input for the
  // current attempt is honoured even though, since timers are armed on start, no recorded
  // history of this machine produces one.
  it('machine - a timeout input for an attempt never reported started still retries, and the run stays pending', () => {
    const r = new RunRecorder(three);
    r.apply(timeoutFired('a', 1));
    expect(bodies(r)).toEqual([{ type: 'timer.scheduled', data: { timerId: 'a-a1-retry', kind: 'retry', step: 'a', attempt: 1, delayMs: 100 } }]);
    expect(ctx(r).lastError?.code).toBe(ErrorCode.StepTimeout);
    expectStatus(r, RunStatus.Pending);
    r.apply(retryFired('a', 1));
    expectStatus(r, RunStatus.Pending);
    r.apply(started('a', 2));
    expect(bodies(r)).toEqual(timeoutTimer('a', 2, 1000));
    expectStatus(r, RunStatus.Running);
    expect(timers(r)).toEqual([
      ['a-a1-retry', 100],
      ['a-a2-timeout', 1000],
    ]);
  });

  it('machine - the last attempt timing out fails the run with step_timeout', () => {
    const r = new RunRecorder(three);
    r.apply(completed('a', 1));
    r.apply(completed('b', 1));
    r.apply(started('c', 1));
    expect(bodies(r)).toEqual(timeoutTimer('c', 1, DEFAULT_TIMEOUT_MS));
    r.apply(timeoutFired('c', 1));
    expect(bodies(r)).toEqual([
      {
        type: 'run.failed',
        data: {
          error: {
            code: ErrorCode.StepTimeout,
            message: `step c failed after 1 attempt(s): step c attempt 1 timed out after ${DEFAULT_TIMEOUT_MS} ms`,
            retryable: false,
          },
        },
      },
    ]);
    expectStatus(r, RunStatus.Failed);
    expect(timers(r)).toEqual([['c-a1-timeout', DEFAULT_TIMEOUT_MS]]);
  });

  it('machine - timeouts of a finished step, or after the run completed, are rejected', () => {
    const r = new RunRecorder(three);
    r.apply(completed('a', 1));
    expectRejected(r, timeoutFired('a', 1), ErrorCode.StaleAttempt);
    expectRejected(r, retryFired('a', 1), ErrorCode.StaleAttempt);
    // A retry timer in a step state is not a timeout.
    expectRejected(r, retryFired('b', 1), ErrorCode.StaleAttempt);
    r.apply(completed('b', 1));
    r.apply(completed('c', 1));
    expectStatus(r, RunStatus.Completed);
    expectRejected(r, timeoutFired('c', 1), AFTER_END);
    expectRejected(r, completed('c', 1), AFTER_END);
    expectRejected(r, started('c', 1), AFTER_END);
    expectRejected(r, signaled('approve'), ErrorCode.EventRejected);
    expectRejected(r, cancel('late'), ErrorCode.EventRejected);
  });
});

describe('machine - stale attempts', () => {
  it('machine - a result of attempt 1 after attempt 2 was scheduled is stale', () => {
    const r = new RunRecorder(three);
    r.apply(started('a', 1));
    r.apply(failed('a', 1));
    r.apply(retryFired('a', 1));
    expect(bodies(r)).toEqual(scheduled('a', 2, 'test.three.a', 0, DEFAULT_POOL, 1000));
    expectRejected(r, completed('a', 1, 'late'), ErrorCode.StaleAttempt);
    expectRejected(r, failed('a', 1), ErrorCode.StaleAttempt);
    expectRejected(r, retryFired('a', 1), ErrorCode.StaleAttempt);
    expectRejected(r, started('a', 1), ErrorCode.StaleAttempt);
    expectRejected(r, timeoutFired('a', 1), ErrorCode.StaleAttempt);
    expect(ctx(r).results['a']).toBeUndefined();
    r.apply(completed('a', 2, 'fresh'));
    expect(ctx(r).results['a']).toBe('fresh');
    expectRejected(r, completed('a', 2, 'again'), ErrorCode.StaleAttempt);
  });
});

describe('machine - cancellation', () => {
  type Setup = [string, (r: RunRecorder) => void];
  const ACTIVE: Setup[] = [
    ['scheduled (pending)', () => {}],
    ['started', (r) => r.apply(started('a', 1))],
    ['waiting for a retry', (r) => (r.apply(started('a', 1)), r.apply(failed('a', 1)))],
    ['on a later attempt', (r) => (r.apply(failed('a', 1)), r.apply(retryFired('a', 1)))],
    ['on the second step', (r) => r.apply(completed('a', 1))],
    ['on the last step, started', (r) => (r.apply(completed('a', 1)), r.apply(completed('b', 1)), r.apply(started('c', 1)))],
  ];
  for (const [where, setup] of ACTIVE) {
    for (const reason of ['operator asked', undefined]) {
      it(`machine - cancel while ${where} ${reason ? 'with' : 'without'} a reason ends the run`, () => {
        const r = new RunRecorder(three);
        setup(r);
        r.apply(cancel(reason));
        expect(bodies(r)).toEqual([{ type: 'run.cancelled', data: reason === undefined ? {} : { reason } }]);
        expectStatus(r, RunStatus.Cancelled);
        expect(isTerminal(r.state)).toBe(true);
        for (const late of [started('a', 1), completed('a', 1), failed('a', 2), timeoutFired('a', 1), retryFired('a', 1), signaled('x'), cancel('again'), cancel()]) {
          expectRejected(r, late, afterEnd(late));
        }
      });
    }
  }

  it('machine - cancel while waiting for a signal ends the run', () => {
    const r = new RunRecorder(withSignal);
    r.apply(completed('draft', 1));
    expectStatus(r, RunStatus.Waiting);
    r.apply(cancel('no reviewer'));
    expect(bodies(r)).toEqual([{ type: 'run.cancelled', data: { reason: 'no reviewer' } }]);
    expectStatus(r, RunStatus.Cancelled);
    expectRejected(r, signaled('approve'), ErrorCode.EventRejected);
  });

  it('machine - finished runs reject cancel too (failed, completed)', () => {
    const f = new RunRecorder(three);
    f.apply(failed('a', 1, false));
    expectRejected(f, cancel('x'), ErrorCode.EventRejected);
    const c = new RunRecorder(signalOnly);
    c.apply(signaled('open'));
    expectRejected(c, cancel('x'), ErrorCode.EventRejected);
  });
});

describe('machine - signal steps', () => {
  it('machine - a signal step waits; another signal is accepted without advancing; the right one advances with its payload', () => {
    const r = new RunRecorder(withSignal);
    r.apply(started('draft', 1));
    expect(bodies(r)).toEqual(timeoutTimer('draft', 1, 500));
    r.apply(completed('draft', 1, { words: 300 }));
    expect(bodies(r)).toEqual([{ type: 'step.waiting', data: { step: 'review', signal: 'approve' } }]);
    expect(stateName(r.state)).toBe('step_1');
    expectStatus(r, RunStatus.Waiting);

    const other = r.apply(signaled('comment', { text: 'nice' }));
    expect(other.decisions).toEqual([]);
    expect(stateName(r.state)).toBe('step_1');
    expectStatus(r, RunStatus.Waiting);
    expect(ctx(r).signals).toEqual([{ name: 'comment', payload: { text: 'nice' } }]);
    expect(r.events.at(-1)?.type).toBe('run.signaled');

    // task inputs are stale while waiting
    expectRejected(r, started('publish', 1), ErrorCode.StaleAttempt);
    expectRejected(r, completed('draft', 1), ErrorCode.StaleAttempt);
    expectRejected(r, timeoutFired('draft', 1), ErrorCode.StaleAttempt);

    r.apply(signaled('approve', { by: 'ann' }));
    expect(bodies(r)).toEqual(scheduled('publish', 1, 'test.signal.publish', 0, DEFAULT_POOL, 500));
    expect(ctx(r).results['review']).toEqual({ by: 'ann' });
    expect(ctx(r).last).toEqual({ by: 'ann' });
    expectStatus(r, RunStatus.Running);

    // a second approve is no longer a step result, just a recorded signal
    r.apply(signaled('approve', 'again'));
    expect(r.last.decisions).toEqual([]);
    expect(ctx(r).results['review']).toEqual({ by: 'ann' });

    r.apply(completed('publish', 1, 'done'));
    expect(bodies(r)).toEqual([{ type: 'run.completed', data: { output: 'done' } }]);
    expectStatus(r, RunStatus.Completed);
  });

  it('machine - a signal without payload is a null result; a final signal step completes the run with it', () => {
    const r = new RunRecorder(signalOnly);
    expect(bodies(r)).toEqual([{ type: 'step.waiting', data: { step: 'gate', signal: 'open' } }]);
    expectStatus(r, RunStatus.Waiting);
    r.apply(signaled('open'));
    expect(bodies(r)).toEqual([{ type: 'run.completed', data: { output: null } }]);
    expect(ctx(r).results).toEqual({ gate: null });
    expectStatus(r, RunStatus.Completed);

    const p = new RunRecorder(signalOnly);
    p.apply(signaled('open', [1, 2]));
    expect(bodies(p)).toEqual([{ type: 'run.completed', data: { output: [1, 2] } }]);
  });

  it('machine - signals during a task step are recorded without changing the step', () => {
    const r = new RunRecorder(three);
    r.apply(started('a', 1));
    const before = r.state.snapshot.value;
    r.apply(signaled('approve', 1));
    expect(r.last.decisions).toEqual([]);
    expect(r.state.snapshot.value).toEqual(before);
    expectStatus(r, RunStatus.Running);
    expect(ctx(r).signals).toEqual([{ name: 'approve', payload: 1 }]);
  });

  it('machine - a signal-first workflow reports pending again once its next task is scheduled', () => {
    const wf = defineWorkflow({ id: 'gate-then-work', version: 1, steps: [{ name: 'gate', signal: 'go' }, { name: 'work' }] });
    const r = new RunRecorder(wf);
    expectStatus(r, RunStatus.Waiting);
    r.apply(signaled('go'));
    expect(bodies(r)).toEqual(scheduled('work', 1, 'gate-then-work.work', 0, DEFAULT_POOL, DEFAULT_TIMEOUT_MS));
    expectStatus(r, RunStatus.Pending);
    r.apply(started('work', 1));
    expect(bodies(r)).toEqual(timeoutTimer('work', 1, DEFAULT_TIMEOUT_MS));
    expectStatus(r, RunStatus.Running);
  });
});

describe('machine - status', () => {
  it('machine - runStatus and statusFromEvents agree after every input of the demo workflows', () => {
    const scripts: [WorkflowDefinition, InputEventBody[]][] = [
      [
        demoFlaky,
        [
          started('prepare', 1),
          completed('prepare', 1),
          started('call', 1),
          failed('call', 1),
          retryFired('call', 1),
          started('call', 2),
          timeoutFired('call', 2),
          retryFired('call', 2),
          started('call', 3),
          completed('call', 3),
        ],
      ],
      [demoSignal, [completed('draft', 1), signaled('nope'), signaled('approve', { ok: 1 }), started('publish', 1), cancel('stop')]],
    ];
    const seen = new Set<RunStatus>();
    for (const [wf, inputs] of scripts) {
      const r = new RunRecorder(wf);
      seen.add(runStatus(r.state));
      expect(statusFromEvents(r.events)).toBe(runStatus(r.state));
      for (const input of inputs) {
        r.apply(input);
        seen.add(runStatus(r.state));
        expect(statusFromEvents(r.events), `${wf.id} after ${input.type}`).toBe(runStatus(r.state));
      }
    }
    expect([...seen].sort()).toEqual(['cancelled', 'completed', 'pending', 'running', 'waiting']);
  });

  it('machine - statusFromEvents of an empty history is pending', () => {
    expect(statusFromEvents([] as RunEvent[])).toBe(RunStatus.Pending);
  });

  it('machine - the demo workflows are valid and start', () => {
    expect(demoWorkflows.map((w) => w.id)).toEqual([
      'demo.pipeline',
      'demo.flaky',
      'demo.signal',
      'demo.sandboxed',
      'demo.approval',
      'demo.jit',
      'demo.agent',
      'demo.brief',
      'demo.agent',
    ]);
    for (const wf of demoWorkflows) {
      // New runs are engine 2's; the sequences also start under engine 1, which replays their old runs.
      const d = startRun(wf, { workflow: wf.id, version: wf.version, input: {}, engine: 2 });
      expect(d.decisions.length).toBeGreaterThan(0);
      if (wf.steps) expect(startRun(wf, { workflow: wf.id, version: wf.version, input: {} }).decisions.length).toBeGreaterThan(0);
    }
  });
});

describe('machine - defineWorkflow validation', () => {
  const ok: StepDefinition[] = [{ name: 'a' }];
  const BAD: [string, Parameters<typeof defineWorkflow>[0]][] = [
    ['empty id', { id: '', version: 1, steps: ok }],
    ['uppercase id', { id: 'Bad', version: 1, steps: ok }],
    ['id starting with a dot', { id: '.x', version: 1, steps: ok }],
    ['id with a space', { id: 'a b', version: 1, steps: ok }],
    ['id of 129 characters', { id: 'a'.repeat(129), version: 1, steps: ok }],
    ['version 0', { id: 'w', version: 0, steps: ok }],
    ['negative version', { id: 'w', version: -1, steps: ok }],
    ['fractional version', { id: 'w', version: 1.5, steps: ok }],
    ['NaN version', { id: 'w', version: Number.NaN, steps: ok }],
    ['no steps', { id: 'w', version: 1, steps: [] }],
    ['steps missing', { id: 'w', version: 1 }],
    ['duplicate step names', { id: 'w', version: 1, steps: [{ name: 'a' }, { name: 'b' }, { name: 'a' }] }],
    ['duplicate task and signal names', { id: 'w', version: 1, steps: [{ name: 'a' }, { name: 'a', signal: 's' }] }],
    ['uppercase step name', { id: 'w', version: 1, steps: [{ name: 'A' }] }],
    ['empty step name', { id: 'w', version: 1, steps: [{ name: '' }] }],
    ['dotted step name', { id: 'w', version: 1, steps: [{ name: 'a.b' }] }],
    ['step name of 65 characters', { id: 'w', version: 1, steps: [{ name: 'a'.repeat(65) }] }],
    ['step name too long for its timer ids', { id: 'w', version: 1, steps: [{ name: 'a'.repeat(60) }] }],
    ['handler longer than an event allows', { id: 'w'.repeat(100), version: 1, steps: [{ name: 'b'.repeat(40) }] }],
    ['empty explicit handler', { id: 'w', version: 1, steps: [{ name: 'a', handler: '' }] }],
    ['bad signal name', { id: 'w', version: 1, steps: [{ name: 'a', signal: 'Go!' }] }],
    ['maxAttempts 0', { id: 'w', version: 1, steps: [{ name: 'a', retry: { maxAttempts: 0 } }] }],
    ['maxAttempts 1001', { id: 'w', version: 1, steps: [{ name: 'a', retry: { maxAttempts: 1001 } }] }],
    ['fractional maxAttempts', { id: 'w', version: 1, steps: [{ name: 'a', retry: { maxAttempts: 2.5 } }] }],
    ['negative initial interval', { id: 'w', version: 1, steps: [{ name: 'a', retry: { initialIntervalMs: -1 } }] }],
    ['NaN initial interval', { id: 'w', version: 1, steps: [{ name: 'a', retry: { initialIntervalMs: Number.NaN } }] }],
    ['coefficient below 1', { id: 'w', version: 1, steps: [{ name: 'a', retry: { backoffCoefficient: 0.5 } }] }],
    ['max interval below initial', { id: 'w', version: 1, steps: [{ name: 'a', retry: { initialIntervalMs: 1000, maxIntervalMs: 999 } }] }],
    ['infinite coefficient', { id: 'w', version: 1, steps: [{ name: 'a', retry: { backoffCoefficient: Number.POSITIVE_INFINITY } }] }],
    ['infinite max interval', { id: 'w', version: 1, steps: [{ name: 'a', retry: { maxIntervalMs: Number.POSITIVE_INFINITY } }] }],
    ['max interval beyond a safe integer', { id: 'w', version: 1, steps: [{ name: 'a', retry: { initialIntervalMs: 1e20, maxIntervalMs: 1e20 } }] }],
    ['timeout 0', { id: 'w', version: 1, steps: [{ name: 'a', timeoutMs: 0 }] }],
    ['fractional timeout', { id: 'w', version: 1, steps: [{ name: 'a', timeoutMs: 1.5 }] }],
    ['bad pool', { id: 'w', version: 1, steps: [{ name: 'a', pool: 'GPU pool' }] }],
    ['bad mode', { id: 'w', version: 1, steps: [{ name: 'a', mode: 7 as 0 }] }],
  ];
  for (const [what, spec] of BAD) {
    it(`machine - defineWorkflow rejects ${what} with InvalidWorkflowError`, () => {
      let caught: unknown;
      try {
        defineWorkflow(spec);
      } catch (e) {
        caught = e;
      }
      expect(caught).toBeInstanceOf(InvalidWorkflowError);
      expect((caught as InvalidWorkflowError).code).toBe(ErrorCode.InvalidWorkflow);
    });
  }

  it('machine - defineWorkflow rejects steps and a machine together', () => {
    expect(() => defineWorkflow({ id: 'w', version: 1, steps: ok, machine: three.machine })).toThrow(InvalidWorkflowError);
  });

  it('machine - defineWorkflow fills defaults and freezes the definition', () => {
    const wf = defineWorkflow({ id: 'billing.invoice', version: 3, steps: [{ name: 'fetch' }, { name: 'wait', signal: 'go' }] });
    expect(wf.steps).toEqual([
      { kind: 'task', name: 'fetch', handler: 'billing.invoice.fetch', mode: 0, pool: DEFAULT_POOL, timeoutMs: DEFAULT_TIMEOUT_MS, retry: DEFAULT_RETRY },
      { kind: 'signal', name: 'wait', signal: 'go' },
    ]);
    expect(Object.isFrozen(wf)).toBe(true);
    expect(Object.isFrozen(wf.steps)).toBe(true);
    expect(wf.machine.id).toBe('billing.invoice@3');
  });

  it('machine - boundary definitions are accepted and run', () => {
    const wf = defineWorkflow({
      id: `a${'.'.repeat(10)}${'b'.repeat(117)}`,
      version: Number.MAX_SAFE_INTEGER,
      steps: [{ name: 'x'.repeat(50), retry: { maxAttempts: 1000, initialIntervalMs: 0, maxIntervalMs: 0, backoffCoefficient: 1 }, handler: 'h'.repeat(128) }],
    });
    const d = startRun(wf, { workflow: wf.id, version: wf.version, input: {} });
    expect(d.decisions.map((x) => x.type)).toEqual(['step.scheduled']);
    // the longest timer ids (attempt 1000 of a 50-character step) are valid tokens
    const name = 'x'.repeat(50);
    const r = new RunRecorder(wf);
    for (let attempt = 1; attempt < 1000; attempt++) {
      r.apply(failed(name, attempt));
      r.apply(retryFired(name, attempt));
    }
    r.apply(started(name, 1000));
    expect(bodies(r)).toEqual(timeoutTimer(name, 1000, DEFAULT_TIMEOUT_MS));
    expect(`${name}-a1000-timeout`).toMatch(TOKEN_PATTERN);
    expect(`${name}-a999-retry`).toMatch(TOKEN_PATTERN);
    for (const e of r.events) expect(parseRunEvent(e)).toEqual(e);
  });

  it('machine - property: every definition defineWorkflow accepts starts and retries without a schema error', () => {
    const stepName = fc.stringMatching(/^[a-z0-9][a-z0-9_-]{0,70}$/);
    const step = fc.oneof(
      fc.record({ name: stepName, signal: fc.stringMatching(/^[a-z0-9][a-z0-9_-]{0,63}$/) }),
      fc.record(
        {
          name: stepName,
          timeoutMs: fc.integer({ min: 1, max: 10_000_000 }),
          retry: fc.record(
            {
              maxAttempts: fc.integer({ min: 1, max: 1000 }),
              initialIntervalMs: fc.oneof(fc.integer({ min: 0, max: 100_000 }), fc.constant(1e20), fc.constant(0.5)),
              backoffCoefficient: fc.oneof(fc.double({ min: 1, max: 100, noNaN: true }), fc.constant(Number.POSITIVE_INFINITY)),
              maxIntervalMs: fc.oneof(fc.integer({ min: 0, max: 10_000_000 }), fc.constant(1e20), fc.constant(Number.POSITIVE_INFINITY)),
            },
            { requiredKeys: ['maxAttempts'] },
          ),
          pool: fc.stringMatching(/^[a-z0-9][a-z0-9_-]{0,10}$/),
        },
        { requiredKeys: ['name'] },
      ),
    );
    const spec = fc.record({
      id: fc.stringMatching(/^[a-z0-9][a-z0-9._-]{0,140}$/),
      version: fc.integer({ min: 1, max: 10 }),
      steps: fc.uniqueArray(step, { minLength: 1, maxLength: 3, selector: (s) => s.name }),
    });
    let accepted = 0;
    fc.assert(
      fc.property(spec, (s) => {
        let wf: WorkflowDefinition;
        try {
          wf = defineWorkflow(s);
        } catch (e) {
          expect(e).toBeInstanceOf(InvalidWorkflowError);
          return;
        }
        accepted++;
        const r = new RunRecorder(wf);
        // Drive every step: tasks start (arming a timeout timer), fail once (a retry timer when
        // allowed), then start and complete.
        for (const st of wf.steps ?? []) {
          if (st.kind === 'signal') {
            r.apply(signaled(st.signal));
            continue;
          }
          r.apply(started(st.name, 1));
          expect(bodies(r)).toEqual(timeoutTimer(st.name, 1, st.timeoutMs));
          r.apply(failed(st.name, 1, true));
          if (r.state.snapshot.status !== 'active') return;
          r.apply(retryFired(st.name, 1));
          expect(bodies(r)).toEqual(scheduled(st.name, 2, st.handler, st.mode, st.pool, st.timeoutMs));
          r.apply(started(st.name, 2));
          expect(bodies(r)).toEqual(timeoutTimer(st.name, 2, st.timeoutMs));
          r.apply(completed(st.name, 2));
        }
        expect(runStatus(r.state)).toBe(RunStatus.Completed);
        for (const e of r.events) expect(parseRunEvent(e)).toEqual(e);
        for (const e of r.events) {
          if (e.type === 'timer.scheduled') expect(e.data.timerId).toMatch(TOKEN_PATTERN);
        }
      }),
      { numRuns: 300 },
    );
    expect(accepted).toBeGreaterThan(50);
  });

  it('machine - decide refuses inputs on a run whose machine does not speak Capstan decisions', async () => {
    const { setup } = await import('xstate');
    const rogue = setup({ actions: { 'do.something': () => {} } }).createMachine({ id: 'rogue', entry: { type: 'do.something' } });
    const wf = defineWorkflow({ id: 'rogue', version: 1, machine: rogue });
    let caught: unknown;
    try {
      startRun(wf, { workflow: 'rogue', version: 1, input: {} });
    } catch (e) {
      caught = e;
    }
    expect(CapstanError.is(caught)).toBe(true);
    expect((caught as CapstanError).code).toBe(ErrorCode.SchemaViolation);
    // a direct decide on a finished run is an event_rejected, not a crash
    const r = new RunRecorder(signalOnly);
    r.apply(signaled('open'));
    expect(rejection(() => decide(r.state, signaled('open'))).code).toBe(ErrorCode.EventRejected);
  });
});

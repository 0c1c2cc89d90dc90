/**
 * The console's plain-words explanation of a run, and the trace it is shown next to: one
 * case per situation an operator asks about (waiting for approval, failed, stuck pending,
 * retrying, running, done).
 */
import { describe, expect, it } from 'vitest';
import { buildTrace, explainRun, sayDuration, type Approval, type RunSummary, type StepAttempt, type TimelineEvent, type WorkerInfo } from '@capstan/console';

const T0 = Date.parse('2026-03-01T12:00:00Z');
const at = (ms: number) => new Date(T0 + ms).toISOString();

function run(over: Partial<RunSummary> = {}): RunSummary {
  return {
    tenant: 'acme',
    runId: '01J0000000000000000000000A',
    workflow: 'etl',
    version: 1,
    status: 'running',
    currentStep: null,
    attempts: 1,
    errorCode: null,
    errorMessage: null,
    startedAt: at(0),
    updatedAt: at(0),
    endedAt: null,
    lastSeq: 1,
    retries: 0,
    retriedAt: null,
    retriedBy: null,
    ...over,
  };
}

function attempt(step: string, n: number, scheduledMs: number, over: Partial<StepAttempt> = {}): StepAttempt {
  return {
    step,
    attempt: n,
    mode: 'inline',
    pool: 'default',
    handler: `etl.${step}`,
    worker: 'w-1',
    sandbox: null,
    outcome: 'completed',
    scheduledAt: at(scheduledMs),
    startedAt: at(scheduledMs + 5),
    finishedAt: at(scheduledMs + 105),
    durationMs: 100,
    result: null,
    errorCode: null,
    errorMessage: null,
    ...over,
  };
}

function approval(over: Partial<Approval> = {}): Approval {
  return {
    tenant: 'acme',
    runId: '01J0000000000000000000000A',
    step: 'review',
    signal: 'approve',
    status: 'waiting',
    requestedAt: at(0),
    decidedAt: null,
    decidedBy: null,
    reason: null,
    workflow: 'etl',
    ...over,
  };
}

function worker(over: Partial<WorkerInfo> = {}): WorkerInfo {
  return {
    workerId: 'w-1',
    pools: ['default'],
    running: 0,
    lastSeenAt: at(0),
    silentForMs: 1000,
    stale: false,
    admission: 'approved',
    admissionBy: null,
    admissionAt: null,
    admissionReason: null,
    ...over,
  };
}

const ev = (seq: number, type: string): TimelineEvent => ({ seq, type, at: at(seq), streamSeq: seq, causationId: 'c' });

describe('console explain', () => {
  it('console explain - durations read as a person says them', () => {
    expect(sayDuration(0)).toBe('0 s');
    expect(sayDuration(42_400)).toBe('42 s');
    expect(sayDuration(3 * 60_000 + 10_000)).toBe('3 min');
    expect(sayDuration(5 * 3_600_000)).toBe('5 h');
    expect(sayDuration(3 * 86_400_000)).toBe('3 d');
    expect(sayDuration(-5)).toBe('0 s');
  });

  it('console explain - a run waiting for approval names the step, how long ago, and who can act', () => {
    const e = explainRun(
      { run: run({ status: 'waiting', currentStep: 'review' }), steps: [attempt('draft', 1, 0)], approvals: [approval({ requestedAt: at(1000) })], events: [] },
      T0 + 1000 + 3 * 60_000,
    );
    expect(e).toEqual({ tone: 'waiting', step: 'review', text: 'Waiting for approval of step review, requested 3 min ago, by an operator.' });
  });

  it('console explain - an approval waiting on another signal name says which', () => {
    const e = explainRun({ run: run({ status: 'waiting' }), steps: [], approvals: [approval({ signal: 'legal-ok' })], events: [] }, T0 + 5000);
    expect(e.text).toBe('Waiting for approval of step review (signal legal-ok), requested 5 s ago, by an operator.');
  });

  it('console explain - a failed run gives the failing step, its attempt and its error', () => {
    const steps = [
      attempt('extract', 1, 0),
      attempt('load', 1, 200, { outcome: 'failed', errorCode: 'step_failed', errorMessage: 'db down' }),
      attempt('load', 2, 400, { outcome: 'failed', errorCode: 'step_failed', errorMessage: 'db\n  still down' }),
      attempt('load', 3, 800, { outcome: 'failed', errorCode: 'step_failed', errorMessage: 'connection refused' }),
    ];
    const e = explainRun({ run: run({ status: 'failed', errorCode: 'step_failed', errorMessage: 'connection refused' }), steps, approvals: [], events: [] }, T0 + 10_000);
    expect(e).toEqual({ tone: 'error', step: 'load', text: 'Step load failed on attempt 3: step_failed: connection refused.' });
  });

  it('console explain - the run-level error is added when it says more than the step error', () => {
    const steps = [attempt('load', 5, 0, { outcome: 'failed', errorCode: 'step_failed', errorMessage: 'boom' })];
    const e = explainRun({ run: run({ status: 'failed', errorCode: 'retries_exhausted', errorMessage: 'step load failed 5 times' }), steps, approvals: [], events: [] }, T0);
    expect(e.text).toBe('Step load failed on attempt 5: step_failed: boom. The run failed with retries_exhausted: step load failed 5 times.');
  });

  it('console explain - a timed-out attempt reads as a timeout', () => {
    const steps = [attempt('hang', 2, 0, { outcome: 'timed_out', errorCode: null, errorMessage: null })];
    expect(explainRun({ run: run({ status: 'failed' }), steps, approvals: [], events: [] }, T0).text).toBe('Step hang timed out on attempt 2: step_timeout.');
  });

  it('console explain - a denied approval explains the failure with who and why', () => {
    const e = explainRun(
      {
        run: run({ status: 'failed', errorCode: 'approval_denied' }),
        steps: [],
        approvals: [approval({ status: 'denied', decidedBy: 'bob', reason: 'wrong numbers' })],
        events: [],
      },
      T0,
    );
    expect(e).toEqual({ tone: 'error', step: 'review', text: 'Step review was denied by bob: wrong numbers.' });
  });

  it('console explain - a failed run with no step rows falls back to the run error', () => {
    expect(explainRun({ run: run({ status: 'failed', errorCode: 'unknown_workflow', errorMessage: 'no such workflow' }), steps: [], approvals: [], events: [] }, T0).text).toBe(
      'The run failed: unknown_workflow: no such workflow.',
    );
  });

  it('console explain - a pending step says how long no worker of its pool has taken it, and why', () => {
    const steps = [attempt('extract', 1, 0, { pool: 'gpu', outcome: 'scheduled', startedAt: null, finishedAt: null, durationMs: null, worker: null })];
    const input = { run: run({ status: 'pending' }), steps, approvals: [], events: [] };
    const now = T0 + 2 * 60_000;
    expect(explainRun(input, now)).toEqual({ tone: 'waiting', step: 'extract', text: 'Step extract is pending: no worker in pool gpu has taken it for 2 min.' });
    expect(explainRun({ ...input, workers: [worker()] }, now).text).toBe('Step extract is pending: no worker in pool gpu has taken it for 2 min. No worker serves pool gpu.');
    expect(explainRun({ ...input, workers: [worker({ pools: ['gpu'], stale: true, silentForMs: 90_000 })] }, now).text).toBe(
      'Step extract is pending: no worker in pool gpu has taken it for 2 min. The worker serving it has not sent a heartbeat for 2 min.',
    );
    expect(explainRun({ ...input, workers: [worker({ pools: ['gpu'], running: 4 }), worker({ workerId: 'w-2', pools: ['gpu'], running: 1 })] }, now).text).toBe(
      'Step extract is pending: no worker in pool gpu has taken it for 2 min. All 2 live workers are busy.',
    );
    // A revoked worker does not count as serving the pool.
    expect(explainRun({ ...input, workers: [worker({ pools: ['gpu'], admission: 'revoked' })] }, now).text).toContain('No worker serves pool gpu.');
    // An idle live worker: nothing more to say than the wait itself.
    expect(explainRun({ ...input, workers: [worker({ pools: ['gpu'] })] }, now).text).toBe('Step extract is pending: no worker in pool gpu has taken it for 2 min.');
  });

  it('console explain - a running step names its worker and for how long', () => {
    const steps = [attempt('extract', 1, 0), attempt('load', 2, 1000, { outcome: 'running', worker: 'w-9', startedAt: at(2000), finishedAt: null, durationMs: null })];
    expect(explainRun({ run: run(), steps, approvals: [], events: [] }, T0 + 14_000)).toEqual({
      tone: 'progress',
      step: 'load',
      text: 'Step load is running on worker w-9 (attempt 2) for 12 s.',
    });
  });

  it('console explain - a failed attempt of a live run followed by a retry timer says it will be retried', () => {
    const steps = [attempt('call', 1, 0, { outcome: 'failed', errorCode: 'step_failed', errorMessage: 'flaky' })];
    const e = explainRun({ run: run(), steps, approvals: [], events: [ev(1, 'run.started'), ev(2, 'step.failed'), ev(3, 'timer.scheduled')] }, T0 + 500);
    expect(e).toEqual({ tone: 'waiting', step: 'call', text: 'Step call failed on attempt 1: step_failed: flaky. It will be retried after a backoff.' });
  });

  it('console explain - a run accepted but not yet scheduled, a completed one, a cancelled one', () => {
    expect(explainRun({ run: run({ status: 'pending' }), steps: [], approvals: [], events: [] }, T0 + 3000).text).toBe(
      'Accepted 3 s ago; the orchestrator has not scheduled a step yet.',
    );
    const done = explainRun(
      { run: run({ status: 'completed', endedAt: at(4200), attempts: 4 }), steps: [attempt('a', 1, 0), attempt('b', 1, 10), attempt('b', 2, 20)], approvals: [], events: [] },
      T0 + 9000,
    );
    expect(done).toEqual({ tone: 'done', text: 'Completed in 4 s, 2 steps over 4 attempts.' });
    expect(explainRun({ run: run({ status: 'cancelled', currentStep: 'slow', endedAt: at(0) }), steps: [], approvals: [], events: [] }, T0 + 120_000)).toEqual({
      tone: 'info',
      step: 'slow',
      text: 'Cancelled at step slow 2 min ago.',
    });
  });

  it('console explain - a live run that was retried says by whom and when', () => {
    const steps = [attempt('load', 4, 60_000, { outcome: 'running', worker: 'w-2', startedAt: at(61_000), finishedAt: null, durationMs: null })];
    const e = explainRun({ run: run({ retries: 1, retriedAt: at(60_000), retriedBy: 'ann' }), steps, approvals: [], events: [] }, T0 + 120_000);
    expect(e.text).toBe('Step load is running on worker w-2 (attempt 4) for 59 s. Retried by ann 1 min ago.');
    // Once it ends, the retry is history and not repeated.
    expect(
      explainRun({ run: run({ status: 'completed', endedAt: at(2000), retries: 1, retriedAt: at(1000), retriedBy: 'ann' }), steps: [], approvals: [], events: [] }, T0 + 5000).text,
    ).not.toContain('Retried');
  });

  it('console explain - handler messages are cut and kept on one line', () => {
    const steps = [attempt('x', 1, 0, { outcome: 'failed', errorCode: 'step_failed', errorMessage: `line1\nline2 ${'y'.repeat(400)}` })];
    const text = explainRun({ run: run({ status: 'failed', errorCode: 'step_failed' }), steps, approvals: [], events: [] }, T0).text;
    expect(text).not.toContain('\n');
    expect(text.length).toBeLessThan(260);
    expect(text).toMatch(/^Step x failed on attempt 1: step_failed: line1 line2 y+…\.$/);
  });
});

describe('console trace', () => {
  it('console trace - attempts are grouped by step in schedule order, with offsets, spans and busy time', () => {
    const steps = [
      attempt('load', 2, 1500, { durationMs: 300, finishedAt: at(1900) }),
      attempt('extract', 1, 100, { durationMs: 50, finishedAt: at(160) }),
      attempt('load', 1, 500, { outcome: 'failed', durationMs: 200, finishedAt: at(705) }),
      attempt('publish', 1, 2000, { outcome: 'running', finishedAt: null, durationMs: null }),
    ];
    const trace = buildTrace(at(0), steps);
    expect(trace.map((s) => [s.step, s.attempts.map((a) => a.attempt), s.offsetMs, s.spanMs, s.busyMs, s.outcome])).toEqual([
      ['extract', [1], 100, 60, 50, 'completed'],
      ['load', [1, 2], 500, 1400, 500, 'completed'],
      ['publish', [1], 2000, null, 0, 'running'],
    ]);
  });

  it('console trace - a step scheduled before the recorded start (clock skew) is not drawn at a negative offset', () => {
    expect(buildTrace(at(1000), [attempt('a', 1, 0)])[0]?.offsetMs).toBe(0);
  });
});

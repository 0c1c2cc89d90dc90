import { describe, expect, it } from 'vitest';
import {
  ErrorCode,
  INPUT_EVENT_TYPES,
  INPUT_TYPES,
  RUN_EVENT_TYPES,
  SchemaError,
  isInputEvent,
  makeRunId,
  parseEventBody,
  parseRunEvent,
  type RunEventType,
} from '@capstan/schemas';

const RUN = makeRunId(1_700_000_000_000, new Uint8Array(10).fill(1));

const DATA: Record<RunEventType, Record<string, unknown>> = {
  'run.started': { workflow: 'w', version: 1, input: { a: 1 }, idempotencyKey: 'k' },
  'step.started': { step: 's', attempt: 1, worker: 'w' },
  'step.completed': { step: 's', attempt: 1, worker: 'w', result: null, durationMs: 1 },
  'step.failed': { step: 's', attempt: 1, error: { code: 'x', message: 'y', retryable: false } },
  'timer.fired': { timerId: 's-a1-timeout', kind: 'timeout', step: 's', attempt: 1 },
  'run.signaled': { name: 'go' },
  'run.cancel-requested': {},
  'approval.decided': { step: 'review', decision: 'deny', by: 'ann', reason: 'no' },
  'run.retried': { by: 'ann' },
  'policy.decided': { step: 's', attempt: 1, decision: 'allow', version: 3, policies: ['p1'] },
  'credential.decided': { step: 's', attempt: 1, name: 'API_KEY', reason: 'r', decision: 'needs-approval', version: 3, policies: ['p1'], approvers: 'ops' },
  'policy.requested': { step: 's', attempt: 1, queries: [{ action: 'run-step', workflow: 'w', step: 's', mode: 1 }] },
  'approval.requested': { step: 's', attempt: 1, approvers: 'ops', version: 3, policies: ['p1'], expiresInMs: 1000 },
  'step.scheduled': { step: 's', attempt: 1, handler: 'w.s', mode: 0, pool: 'default', timeoutMs: 1 },
  'step.waiting': { step: 's', signal: 'go' },
  'timer.scheduled': { timerId: 's-a1-retry', kind: 'retry', step: 's', attempt: 1, delayMs: 0 },
  'run.completed': { output: { n: 1 } },
  'run.failed': { error: { code: 'x', message: 'y', retryable: false }, step: 's' },
  'run.cancelled': { reason: 'r' },
  'step.cancelled': { step: 's', attempt: 1, reason: 'r' },
  'step.skipped': { step: 's' },
  'signal.consumed': { step: 's', attempt: 1, signal: 'go' },
  'branch.taken': { step: 's', branch: 'then' },
  'loop.iteration': { step: 's', iteration: 2 },
  'fanout.started': { step: 's', items: 3, concurrency: 2 },
  'child.started': { step: 's', attempt: 1, child: RUN, workflow: 'w', input: { a: 1 }, parentClose: 'cancel' },
  'child.completed': { step: 's', attempt: 1, child: RUN, result: { ok: true } },
  'child.failed': { step: 's', attempt: 1, child: RUN, error: { code: 'child_failed', message: 'y', retryable: true } },
  'patch.marked': { patch: 'fix-1' },
  'run.continued': { next: RUN, input: { a: 2 }, reason: 'workflow' },
};

const envelope = (type: RunEventType, extra: Record<string, unknown> = {}) => ({
  v: 1,
  type,
  runId: RUN,
  seq: 1,
  at: 0,
  causationId: 'cmd:1',
  data: DATA[type],
  ...extra,
});

function refused(value: unknown): SchemaError {
  try {
    parseRunEvent(value);
  } catch (e) {
    expect(e).toBeInstanceOf(SchemaError);
    expect((e as SchemaError).code).toBe(ErrorCode.SchemaViolation);
    return e as SchemaError;
  }
  throw new Error('accepted');
}

describe('events - run event envelopes', () => {
  it('events - every type has a schema and the input/decision split is total', () => {
    expect(Object.keys(DATA).sort()).toEqual([...RUN_EVENT_TYPES].sort());
    expect(INPUT_EVENT_TYPES.size).toBe(INPUT_TYPES.length);
    const decisions = RUN_EVENT_TYPES.filter((t) => !INPUT_EVENT_TYPES.has(t));
    expect(decisions.sort()).toEqual([
      'approval.requested',
      'branch.taken',
      'child.started',
      'fanout.started',
      'loop.iteration',
      'patch.marked',
      'policy.requested',
      'run.cancelled',
      'run.completed',
      'run.continued',
      'run.failed',
      'signal.consumed',
      'step.cancelled',
      'step.scheduled',
      'step.skipped',
      'step.waiting',
      'timer.scheduled',
    ]);
  });

  for (const type of Object.keys(DATA) as RunEventType[]) {
    it(`events - ${type}: a valid envelope parses to itself`, () => {
      expect(parseRunEvent(envelope(type))).toEqual(envelope(type));
      expect(isInputEvent({ type, data: DATA[type] } as never)).toBe(INPUT_EVENT_TYPES.has(type));
    });
  }

  it('events - envelope fields are checked', () => {
    expect(refused(envelope('run.started', { v: 2 })).path).toBe('v');
    expect(refused(envelope('run.started', { seq: 0 })).path).toBe('seq');
    expect(refused(envelope('run.started', { at: -1 })).path).toBe('at');
    expect(refused(envelope('run.started', { causationId: '' })).path).toBe('causationId');
    expect(refused(envelope('run.started', { runId: 'x' })).path).toBe('runId');
    expect(refused(envelope('run.started', { extra: 1 })).path).toBe('extra');
    expect(refused(envelope('run.started', { type: 'run.exploded' })).path).toBe('type');
    expect(refused(envelope('run.started', { type: 'constructor' })).path).toBe('type');
    expect(refused({ ...envelope('step.started'), data: DATA['run.started'] }).path).toMatch(/^data\./);
    expect(refused(null).path).toBe('');
  });

  it('events - data fields are checked with their path', () => {
    expect(refused(envelope('run.started', { data: { workflow: 'w', version: 0, input: {} } })).path).toBe('data.version');
    expect(refused(envelope('run.started', { data: { workflow: 'w', version: 1, input: [] } })).path).toBe('data.input');
    expect(refused(envelope('step.scheduled', { data: { ...DATA['step.scheduled'], mode: 4 } })).path).toBe('data.mode');
    expect(refused(envelope('timer.scheduled', { data: { ...DATA['timer.scheduled'], delayMs: -1 } })).path).toBe('data.delayMs');
    expect(refused(envelope('run.completed', { data: {} })).path).toBe('data.output');
  });

  it('events - parseEventBody validates a body before it is sequenced', () => {
    expect(parseEventBody('step.waiting', { step: 's', signal: 'go' })).toEqual({ step: 's', signal: 'go' });
    expect(() => parseEventBody('step.waiting', { step: 's' })).toThrow(SchemaError);
  });
});

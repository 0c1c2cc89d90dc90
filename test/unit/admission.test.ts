/**
 * Worker admission, the pure parts: the fleet stream's names (fenced by tenant, disjoint from
 * every other stream), the admission record's schema, the worker's config keys, and what one
 * record projects to (or why it is a dead letter). Also the rows an approval decision, a
 * retry and a sandboxed attempt project to.
 */
import { describe, expect, it } from 'vitest';
import { defineWorkflow } from '@capstan/actors';
import { fleetStreamConfig, streamConfigs } from '@capstan/kit';
import { projectAdmission, projectRun } from '@capstan/projector';
import { loadConfig } from '@capstan/worker';
import { CapstanError, encode, ErrorCode, parseTenantId, parseWorkerAdmission, Streams, Subjects, type RunEvent, type TenantId } from '@capstan/schemas';
import { RunRecorder, completed, failed, started } from './support/runs.js';

const TENANTS = ['acme', 'a', 'x-1-b', 'abcdefghijklmnopqrstuvwxyz012345'].map((t) => parseTenantId(t));

/** NATS subject matching: `*` one token, `>` one or more at the end. */
function matches(filter: string, subject: string): boolean {
  const f = filter.split('.');
  const s = subject.split('.');
  for (let i = 0; i < f.length; i++) {
    if (f[i] === '>') return s.length > i;
    if (i >= s.length || (f[i] !== '*' && f[i] !== s[i])) return false;
  }
  return f.length === s.length;
}

describe('admission - names', () => {
  for (const t of TENANTS) {
    it(`admission - fleet subjects of ${JSON.stringify(t)} are captured by its fleet stream only, and fenced by cap.<t>.>`, () => {
      const fleet = fleetStreamConfig(t);
      expect(fleet.name).toBe(Streams.fleet(t));
      expect(fleet.name).toMatch(/^[-\w]+$/);
      expect(fleet.subjects).toEqual([Subjects.allFleet(t)]);
      for (const id of ['w-1', 'worker-12345', 'a', 'z'.repeat(64), 'dev_worker']) {
        const subject = Subjects.fleet(t, id);
        expect(subject).toBe(`cap.${t}.fleet.${id}`);
        expect(matches(Subjects.allFleet(t), subject)).toBe(true);
        expect(matches(`cap.${t}.>`, subject)).toBe(true);
        // no run-pipeline stream of any tenant captures it, and no other tenant's fleet stream
        for (const other of TENANTS) {
          for (const c of streamConfigs(other)) for (const f of c.subjects ?? []) expect(matches(f, subject), `${c.name} ${f}`).toBe(false);
          if (other !== t) expect(matches(Subjects.allFleet(other), subject)).toBe(false);
        }
      }
      // and the fleet filter captures none of the tenant's other subjects
      for (const c of streamConfigs(t)) for (const f of c.subjects ?? []) expect(f.startsWith(`cap.${t}.fleet.`)).toBe(false);
    });
  }

  it('admission - a worker id that is not a subject token never becomes a subject', () => {
    for (const bad of ['W-1', 'a.b', 'a*', '>', '', 'x'.repeat(65), 'a b']) {
      let caught: unknown;
      try {
        Subjects.fleet('acme' as TenantId, bad);
      } catch (e) {
        caught = e;
      }
      expect(CapstanError.is(caught) && caught.code, bad).toBe(ErrorCode.InvalidName);
    }
  });

  it('admission - the fleet stream keeps a history per worker, refuses deletes and serves direct gets', () => {
    const c = fleetStreamConfig('acme' as TenantId);
    expect(c).toMatchObject({ max_msgs_per_subject: 64, discard: 'old', deny_delete: true, deny_purge: true, allow_direct: true, storage: 'file' });
  });
});

describe('admission - records and config', () => {
  it('admission - records parse; unknown states, bad ids, bad authors and extra fields are refused', () => {
    const ok = { worker: 'w-1', state: 'approved', by: 'ann@example.com', reason: 'our box' };
    expect(parseWorkerAdmission(ok)).toEqual(ok);
    expect(parseWorkerAdmission({ worker: 'w-1', state: 'revoked', by: 'ann' })).toEqual({ worker: 'w-1', state: 'revoked', by: 'ann' });
    for (const bad of [
      { ...ok, state: 'pending' },
      { ...ok, state: 'maybe' },
      { ...ok, worker: 'W-1' },
      { ...ok, by: '' },
      { ...ok, by: 'a\u0000b' },
      { ...ok, reason: '' },
      { ...ok, extra: 1 },
      null,
    ]) {
      let caught: unknown;
      try {
        parseWorkerAdmission(bad);
      } catch (e) {
        caught = e;
      }
      expect(CapstanError.is(caught) && caught.code, JSON.stringify(bad)).toBe(ErrorCode.SchemaViolation);
    }
  });

  it('admission - WORKER_ADMISSION defaults to required; auto is accepted; anything else is a problem', () => {
    const base = { NATS_URL: 'nats://127.0.0.1:4222', NATS_CREDS: 'svc.creds' };
    expect(loadConfig(base).admission).toBe('required');
    expect(loadConfig({ ...base, WORKER_ADMISSION: 'auto' }).admission).toBe('auto');
    expect(() => loadConfig({ ...base, WORKER_ADMISSION: 'yes' })).toThrow(/WORKER_ADMISSION must be required or auto/);
    expect(() => loadConfig({ ...base, WORKER_ID: 'Host.1' })).toThrow(/WORKER_ID must match/);
    // every problem at once
    let message = '';
    try {
      loadConfig({ ...base, WORKER_ID: 'Host.1', WORKER_ADMISSION: 'yes', WORKER_POOLS: 'A' });
    } catch (e) {
      message = (e as Error).message;
    }
    expect(message).toMatch(/WORKER_ID[\s\S]*WORKER_ADMISSION/);
    expect(message).toContain('WORKER_POOLS');
  });
});

describe('admission - projection', () => {
  const t = 'acme' as TenantId;
  const time = new Date('2026-05-01T10:00:00Z');

  it('admission - a record projects to the worker row and one audit row, both stamped with the stream time', () => {
    const data = encode({ worker: 'w-1', state: 'revoked', by: 'ann', reason: 'stolen laptop' });
    const p = projectAdmission(t, { seq: 7, subject: Subjects.fleet(t, 'w-1'), data, time });
    expect(p).toEqual({
      admission: { tenant: t, workerId: 'w-1', state: 'revoked', changedBy: 'ann', changedAt: time, reason: 'stolen laptop', streamSeq: 7 },
      audit: { tenant: t, runId: '', seq: 7, kind: 'worker.revoked', actor: 'ann', detail: { worker: 'w-1', state: 'revoked', reason: 'stolen laptop' }, at: time, streamSeq: 7 },
    });
  });

  it('admission - garbage, and a record stored under another worker, are dead letters', () => {
    const garbage = projectAdmission(t, { seq: 3, subject: Subjects.fleet(t, 'w-1'), data: new Uint8Array([0xc1, 0xff]), time });
    expect(garbage).toMatchObject({ deadLetter: { tenant: t, stream: Streams.fleet(t), streamSeq: 3, code: ErrorCode.DecodeFailed } });
    const misplaced = projectAdmission(t, { seq: 4, subject: Subjects.fleet(t, 'w-2'), data: encode({ worker: 'w-1', state: 'approved', by: 'x' }), time });
    expect(misplaced).toMatchObject({ deadLetter: { streamSeq: 4, code: ErrorCode.SchemaViolation } });
    expect((misplaced as { deadLetter: { message: string } }).deadLetter.message).toContain('stored on');
  });

  const stored = (events: readonly RunEvent[]) => events.map((event, i) => ({ event, streamSeq: 100 + i, bytes: encode(event) }));

  it('projection - an approval decision fills the approval row and an audit row; a retry reopens the run row', () => {
    const wf = defineWorkflow({
      id: 'p.review',
      version: 1,
      steps: [
        { name: 'draft', retry: { maxAttempts: 1 } },
        { name: 'review', signal: 'approve' },
      ],
    });
    const r = new RunRecorder(wf);
    r.apply(completed('draft', 1));
    r.apply({ type: 'approval.decided', data: { step: 'review', decision: 'deny', by: 'bob', reason: 'no' } });
    let { view, rows } = projectRun('acme', stored(r.events));
    expect([...view.approvals.values()]).toMatchObject([{ step: 'review', status: 'denied', decidedBy: 'bob', reason: 'no' }]);
    expect(view.run).toMatchObject({ status: 'failed', errorCode: ErrorCode.ApprovalDenied, retries: 0, retriedBy: null });
    expect(rows.flatMap((x) => (x.audit ? [x.audit] : []))).toMatchObject([{ kind: 'approval.decided', actor: 'bob', detail: { step: 'review', decision: 'deny', reason: 'no' } }]);

    r.apply({ type: 'run.retried', data: { by: 'ann' } });
    ({ view, rows } = projectRun('acme', stored(r.events)));
    expect(view.run).toMatchObject({ status: 'waiting', errorCode: null, errorMessage: null, endedAt: null, retries: 1, retriedBy: 'ann' });
    expect(view.run?.retriedAt?.getTime()).toBe(r.events.find((e) => e.type === 'run.retried')?.at);
    expect([...view.approvals.values()]).toMatchObject([{ status: 'waiting', decidedBy: null, reason: null }]);
    expect(rows.flatMap((x) => (x.audit ? [x.audit] : [])).map((a) => [a.kind, a.actor, a.detail])).toEqual([
      ['approval.decided', 'bob', { step: 'review', decision: 'deny', reason: 'no' }],
      ['run.retried', 'ann', { reason: null, errorCode: ErrorCode.ApprovalDenied }],
    ]);
  });

  it('projection - a step row records its worker, and the sandbox when the attempt event names one', () => {
    const wf = defineWorkflow({ id: 'p.one', version: 1, steps: [{ name: 'a', retry: { maxAttempts: 2, initialIntervalMs: 0 } }] });
    const r = new RunRecorder(wf);
    r.apply(started('a', 1, 'w-9'));
    r.apply(failed('a', 1, true, 'boom', 'w-9'));
    const events = r.events.map((e) =>
      e.type === 'step.started' || e.type === 'step.failed' ? ({ ...e, data: { ...e.data, sandbox: 'cap-run-a-1' } } as unknown as RunEvent) : e,
    );
    const { view } = projectRun('acme', stored(events));
    expect(view.steps.get('a#1')).toMatchObject({ worker: 'w-9', sandbox: 'cap-run-a-1', outcome: 'failed' });
    const plain = projectRun('acme', stored(r.events)).view;
    expect(plain.steps.get('a#1')).toMatchObject({ worker: 'w-9', sandbox: null });
  });
});

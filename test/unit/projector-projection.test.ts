/**
 * The pure projection: a run's status agrees with `statusFromEvents` after every event (also
 * when the fold resumes from rows as stored, as the projector does batch after batch), and
 * each event type makes the rows the projection promises.
 */
import { createHash } from 'node:crypto';
import { describe, expect, it } from 'vitest';
import fc from 'fast-check';
import { defineWorkflow, stateName, statusFromEvents, type RunContext, type RunState, type WorkflowDefinition } from '@capstan/actors';
import { encode, type InputEventBody, type RunEvent } from '@capstan/schemas';
import { chainDigest, decodeStored, EMPTY_VIEW, pgText, projectEvent, projectRun, viewFromRows, type RunView } from '@capstan/projector';
import { RunRecorder, RUN_ID, cancel, completed, failed, retryFired, signaled, started, timeoutFired } from './support/runs.js';

const TENANT = 'acme';
const WORKFLOWS: WorkflowDefinition[] = [
  defineWorkflow({
    id: 'proj.three',
    version: 1,
    steps: [
      { name: 'a', timeoutMs: 1000, retry: { maxAttempts: 3, initialIntervalMs: 100 } },
      { name: 'b', retry: { maxAttempts: 2 } },
    ],
  }),
  defineWorkflow({ id: 'proj.review', version: 1, steps: [{ name: 'draft', retry: { maxAttempts: 2 } }, { name: 'review', signal: 'approve' }, { name: 'publish' }] }),
  // A signal first: a step scheduled after it is pending, not running (no step has started yet).
  defineWorkflow({
    id: 'proj.gate',
    version: 1,
    steps: [
      { name: 'gate', signal: 'open' },
      { name: 'work', retry: { maxAttempts: 2 } },
    ],
  }),
];
const SIGNALS = ['approve', 'open', 'ping'];

/** Stores events as the stream would: consecutive stream sequences, MessagePack bytes. */
function stored(events: readonly RunEvent[], firstSeq = 1) {
  return events.map((event, i) => ({ event, streamSeq: firstSeq + i, bytes: encode(event) }));
}

type Op = { k: 'started' | 'completed' | 'failed' | 'timeout' | 'retry'; delta: number } | { k: 'signal'; name: number } | { k: 'cancel' };
const op: fc.Arbitrary<Op> = fc.oneof(
  {
    weight: 12,
    arbitrary: fc.record({
      k: fc.constantFrom('started' as const, 'completed' as const, 'failed' as const, 'timeout' as const, 'retry' as const),
      delta: fc.integer({ min: -1, max: 1 }),
    }),
  },
  { weight: 2, arbitrary: fc.record({ k: fc.constant('signal' as const), name: fc.nat({ max: SIGNALS.length - 1 }) }) },
  { weight: 1, arbitrary: fc.record({ k: fc.constant('cancel' as const) }) },
);

function input(o: Op, wf: WorkflowDefinition, state: RunState): InputEventBody {
  if (o.k === 'signal') return signaled(SIGNALS[o.name] as string, { by: 'alice' });
  if (o.k === 'cancel') return cancel('enough');
  const m = /^(?:step|retry)_(\d+)$/.exec(stateName(state));
  const name = wf.steps?.[Number(m?.[1] ?? 0)]?.name ?? 'a';
  const attempt = Math.max(1, ((state.snapshot.context as RunContext).attempts[name] ?? 1) + o.delta);
  switch (o.k) {
    case 'started':
      return started(name, attempt);
    case 'completed':
      return completed(name, attempt);
    case 'failed':
      return failed(name, attempt, true);
    case 'timeout':
      return timeoutFired(name, attempt);
    case 'retry':
      return retryFired(name, attempt);
  }
}

const twice = (ops: Op[]): Op[] => [...ops, ...ops];

/** The view as the projector would load it back from its rows. */
const reload = (v: RunView): RunView => viewFromRows(v.run, [...v.steps.values()], [...v.approvals.values()]);

describe('projector - projection', () => {
  it('projector - status agrees with statusFromEvents after every event, folded straight or resumed from stored rows', () => {
    let checked = 0;
    const seen = new Set<string>();
    fc.assert(
      fc.property(fc.nat({ max: WORKFLOWS.length - 1 }), fc.array(op, { maxLength: 30 }), fc.nat({ max: 5 }), (w, ops, every) => {
        const wf = WORKFLOWS[w] as WorkflowDefinition;
        const r = new RunRecorder(wf);
        for (const o of ops) r.tryApply(input(o, wf, r.state));
        const events = stored(r.events);
        let straight = EMPTY_VIEW;
        let resumed = EMPTY_VIEW;
        events.forEach((s, i) => {
          straight = projectEvent(TENANT, straight, s).view;
          // Batches end anywhere: resume from rows every `every + 1` events.
          resumed = projectEvent(TENANT, i % (every + 1) === 0 ? reload(resumed) : resumed, s).view;
          const want = statusFromEvents(r.events.slice(0, i + 1));
          expect(straight.run?.status).toBe(want);
          expect(resumed.run?.status).toBe(want);
          seen.add(want);
          checked++;
        });
        expect(resumed.run).toEqual(straight.run);
        expect([...resumed.steps.values()]).toEqual([...straight.steps.values()]);
        expect(straight.run?.attempts).toBe(r.events.filter((e) => e.type === 'step.scheduled').length);
        expect(straight.run?.lastSeq).toBe(r.events.length);
      }),
      {
        numRuns: 300,
        // Every status is reached on every run, not only when the generator happens to get there.
        examples: [
          [
            2,
            [
              { k: 'signal', name: 1 },
              ...twice([
                { k: 'started', delta: 0 },
                { k: 'failed', delta: 0 },
                { k: 'retry', delta: 0 },
              ]),
            ],
            0,
          ],
          [
            0,
            [
              { k: 'started', delta: 0 },
              { k: 'completed', delta: 0 },
              { k: 'started', delta: 0 },
              { k: 'completed', delta: 0 },
            ],
            1,
          ],
          [1, [{ k: 'started', delta: 0 }, { k: 'completed', delta: 0 }, { k: 'cancel' }], 2],
        ],
      },
    );
    process.stdout.write(`projection status checked after ${checked} events; statuses seen: ${[...seen].sort().join(', ')}\n`);
    expect([...seen].sort()).toEqual(['cancelled', 'completed', 'failed', 'pending', 'running', 'waiting']);
  });

  it('projector - the chain digests each event over the previous digest, its stream seq and its bytes', () => {
    const r = new RunRecorder(WORKFLOWS[0] as WorkflowDefinition);
    const events = stored(r.events, 41);
    const { view } = projectRun(TENANT, events);
    let chain = '';
    for (const s of events)
      chain = createHash('sha256')
        .update(`${chain}:${s.streamSeq}:${Buffer.from(s.bytes).toString('hex')}`)
        .digest('hex');
    expect(view.run?.chain).toBe(chain);
    expect(chainDigest('', 41, events[0]?.bytes as Uint8Array)).toBe(projectEvent(TENANT, EMPTY_VIEW, events[0] as never).run?.chain);
    // Same events at other stream positions: another chain.
    expect(projectRun(TENANT, stored(r.events, 1)).view.run?.chain).not.toBe(chain);
  });

  it('projector - steps, approvals and audit rows of a run with a retry, a timeout, a signal and a cancel request', () => {
    const wf = WORKFLOWS[1] as WorkflowDefinition;
    const r = new RunRecorder(wf, { customer: 'c-1' });
    r.apply(started('draft', 1));
    r.apply(timeoutFired('draft', 1));
    r.apply(retryFired('draft', 1));
    r.apply(completed('draft', 2, { pages: 3, note: 'nul\u0000here' }));
    r.apply(signaled('approve', { by: 'bob', secret: 'hunter2' }));
    r.apply(cancel('changed my mind'));
    const { view, rows } = projectRun(TENANT, stored(r.events));
    expect(view.steps.get('draft#1')).toMatchObject({ outcome: 'timed_out', worker: 'w-1', attempt: 1 });
    expect(view.steps.get('draft#1')?.finishedAt).toBeInstanceOf(Date);
    expect(view.steps.get('draft#2')).toMatchObject({ outcome: 'completed', durationMs: 5, result: { pages: 3, note: 'nul\uFFFDhere' } });
    expect(view.approvals.get('review')).toMatchObject({ status: 'approved', signal: 'approve' });
    expect(view.approvals.get('review')?.decidedAt).toBeInstanceOf(Date);
    const audit = rows.flatMap((p) => (p.audit ? [p.audit] : []));
    expect(audit.map((a) => [a.kind, a.actor, a.detail])).toEqual([
      ['run.signaled', 'bob', { name: 'approve' }],
      ['run.cancel-requested', null, { reason: 'changed my mind' }],
    ]);
    // Never a payload value in the audit log.
    expect(JSON.stringify(audit)).not.toContain('hunter2');
    expect(view.run).toMatchObject({ status: 'cancelled', attempts: 3, currentStep: 'publish', workflow: 'proj.review' });
    expect(view.run?.endedAt?.getTime()).toBe(r.events.at(-1)?.at);
    expect(rows.map((p) => p.event.seq)).toEqual(r.events.map((e) => e.seq));
  });

  it('projector - a failed run records its error; search fields become rows', () => {
    const wf = defineWorkflow({ id: 'proj.search', version: 2, searchKeys: ['customer'], steps: [{ name: 'only', retry: { maxAttempts: 1 } }] });
    const r = new RunRecorder(wf, { customer: 'c-9' });
    r.apply(failed('only', 1, false, 'bad_input'));
    const first = r.events[0] as RunEvent;
    const withSearch = { ...first, data: { ...first.data, search: { customer: 'c-9' } } } as RunEvent;
    const { view, rows } = projectRun(TENANT, stored([withSearch, ...r.events.slice(1)]));
    expect(view.run).toMatchObject({ status: 'failed', errorCode: 'bad_input', version: 2 });
    expect(view.run?.errorMessage).toContain('only broke');
    expect(rows[0]?.search).toEqual([{ tenant: TENANT, key: 'customer', value: 'c-9', runId: RUN_ID }]);
  });

  it('projector - garbage, and an event stored on another run subject, are refused with their reason', () => {
    const garbage = decodeStored(TENANT, { seq: 7, subject: `cap.${TENANT}.runs.${RUN_ID}`, data: new Uint8Array([0xc1, 0xff, 0x00]) });
    expect(garbage.ok).toBe(false);
    expect(!garbage.ok && garbage.error.code).toBe('decode_failed');
    const r = new RunRecorder(WORKFLOWS[0] as WorkflowDefinition);
    const other = `cap.${TENANT}.runs.01ARZ3NDEKTSV4RRFFQ69G5FAV`;
    const misplaced = decodeStored(TENANT, { seq: 8, subject: other, data: encode(r.events[0]) });
    expect(!misplaced.ok && misplaced.error.code).toBe('schema_violation');
    expect(decodeStored('globex', { seq: 9, subject: `cap.${TENANT}.runs.${RUN_ID}`, data: encode(r.events[0]) }).ok).toBe(false);
    expect(decodeStored(TENANT, { seq: 9, subject: `cap.${TENANT}.runs.${RUN_ID}`, data: encode(r.events[0]) }).ok).toBe(true);
    expect(pgText('a\u0000b')).toBe('a\uFFFDb');
  });
});

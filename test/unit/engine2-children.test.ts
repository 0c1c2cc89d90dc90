/**
 * Engine 2's child workflows, continue-as-new and `patched` markers, through the pure core:
 * the decisions each records, the ids it derives (the same on every replay), the retry and
 * parent-close rules, and a run recorded before a patch replaying on its old path while new
 * runs take the new one. Every run recorded here is folded again and must give the same state.
 */
import { describe, expect, it } from 'vitest';
import { childRunIdOf, continuedRunIdOf, createRegistry, defineWorkflow, foldRun, machineHelpers, runStatus, statusFromEvents, type WorkflowDefinition } from '@capstan/actors';
import { encode, ErrorCode, EVENT_ENVELOPE_VERSION, isRunId, runIdTime, TimerKind, type InputEventBody, type JsonValue, type RunEvent, type RunId } from '@capstan/schemas';
import { projectRun } from '@capstan/projector';
import { RUN_ID, RunRecorder, cancel, completed, fired } from './support/runs.js';

// Engine 2 derives the ids of the runs a run starts outside the reserved space (engine 3 marks them: engine3-ids.test.ts).
const childId = (runId: string, step: string, attempt: number) => childRunIdOf(runId, step, attempt, 2);
const continuedId = (runId: string) => continuedRunIdOf(runId, 2);
const rec = (wf: WorkflowDefinition, input: { [k: string]: JsonValue } = {}) => new RunRecorder(wf, input, undefined, undefined, 2);
const types = (events: readonly RunEvent[]) => events.map((e) => e.type);
const childDone = (step: string, attempt: number, result: JsonValue, child = childId(RUN_ID, step, attempt)): InputEventBody => ({
  type: 'child.completed',
  data: { step, attempt, child, result },
});
const childFailed = (step: string, attempt: number, retryable = true): InputEventBody => ({
  type: 'child.failed',
  data: { step, attempt, child: childId(RUN_ID, step, attempt), error: { code: ErrorCode.ChildFailed, message: 'step_failed: it broke', retryable } },
});

function replays(r: RunRecorder): void {
  const reg = createRegistry([r.workflow]);
  const a = foldRun(reg, r.events);
  const b = foldRun(reg, r.events);
  expect(a.state.snapshot.value).toEqual(r.state.snapshot.value);
  expect(a.state.snapshot.context).toEqual(r.state.snapshot.context);
  expect(b.state.snapshot.context).toEqual(a.state.snapshot.context);
  expect(runStatus(a.state)).toBe(statusFromEvents(r.events));
  for (const cp of r.checkpoints) expect(runStatus(cp.state), `after ${cp.events} events`).toBe(statusFromEvents(r.events.slice(0, cp.events)));
}

describe('engine 2 - derived run ids', () => {
  it("children - a child id is a ULID derived from the parent id, the step and the attempt, with the parent's time", () => {
    const a = childId(RUN_ID, 'ship', 1);
    expect(isRunId(a)).toBe(true);
    expect(childId(RUN_ID, 'ship', 1)).toBe(a);
    expect(runIdTime(a)).toBe(runIdTime(RUN_ID));
    const others = [childId(RUN_ID, 'ship', 2), childId(RUN_ID, 'ship-1', 1), continuedId(RUN_ID), continuedId(a)];
    expect(new Set([a, ...others]).size).toBe(5);
  });
});

describe('engine 2 - child workflows', () => {
  const wf = defineWorkflow({
    id: 'e2.parent',
    version: 1,
    steps: [
      { name: 'prep' },
      { name: 'ship', child: 'e2.shipper', input: ({ results }) => ({ order: results['prep'] ?? null }), retry: { maxAttempts: 2, initialIntervalMs: 10 } },
      { name: 'finish' },
    ],
  });

  it('children - the step starts its child (derived id, the input it computes) and takes its output as its result', () => {
    const r = rec(wf);
    r.apply(completed('prep', 1, { id: 7 }));
    const started = r.events.at(-1);
    expect(started).toMatchObject({
      type: 'child.started',
      data: { step: 'ship', attempt: 1, child: childId(RUN_ID, 'ship', 1), workflow: 'e2.shipper', input: { order: { id: 7 } }, parentClose: 'cancel' },
    });
    expect(runStatus(r.state)).toBe('running');
    expect(r.step(childDone('ship', 1, { tracking: 'T1' }))).toEqual(['step.scheduled:finish#1']);
    r.apply(completed('finish', 1, { shipped: true }));
    expect(r.events.at(-1)?.type).toBe('run.completed');
    expect((r.state.snapshot.context as { results: Record<string, JsonValue> }).results['ship']).toEqual({ tracking: 'T1' });
    replays(r);
  });

  it("children - a failed child is retried by the step's policy with a new child; the last failure fails the run with child_failed", () => {
    const r = rec(wf);
    r.apply(completed('prep', 1));
    expect(r.step(childFailed('ship', 1))).toEqual(['timer:retry:ship']);
    expect(r.step(fired('ship', 1, TimerKind.Retry))).toEqual(['child.started']);
    expect(r.events.at(-1)?.data).toMatchObject({ attempt: 2, child: childId(RUN_ID, 'ship', 2) });
    // A late outcome of the first child is stale.
    expect(r.tryApply(childDone('ship', 1, 'late'))).toBeUndefined();
    expect(r.step(childFailed('ship', 2))).toEqual(['run.failed']);
    expect(r.events.at(-1)?.data).toMatchObject({ error: { code: ErrorCode.ChildFailed }, step: 'ship' });
    // A person's retry starts a third child.
    expect(r.step({ type: 'run.retried', data: { by: 'ops' } })).toEqual(['child.started']);
    expect(r.events.at(-1)?.data).toMatchObject({ attempt: 3, child: childId(RUN_ID, 'ship', 3) });
    replays(r);
  });

  it('children - a cancelled child (not retryable) fails the step at once', () => {
    const r = rec(wf);
    r.apply(completed('prep', 1));
    expect(r.step(childFailed('ship', 1, false))).toEqual(['run.failed']);
    replays(r);
  });

  it('children - cancelling the parent cancels a running child (policy cancel) and abandons one whose policy says so', () => {
    const both = defineWorkflow({
      id: 'e2.two-children',
      version: 1,
      steps: [{ name: 'kids', parallel: [[{ name: 'kept', child: 'e2.a' }], [{ name: 'left', child: 'e2.b', parentClose: 'abandon' }]] }],
    });
    const r = rec(both, { n: 1 });
    expect(types(r.events)).toEqual(['run.started', 'child.started', 'child.started']);
    expect(r.events[1]?.data).toMatchObject({ input: { n: 1 } });
    r.apply(cancel('stop'));
    const cancelled = r.events.filter((e) => e.type === 'step.cancelled').map((e) => e.data);
    expect(cancelled).toEqual([
      { step: 'kept', attempt: 1, reason: 'the run was cancelled', child: childId(RUN_ID, 'kept', 1) },
      { step: 'left', attempt: 1, reason: 'the run was cancelled' },
    ]);
    expect(r.events.at(-1)?.type).toBe('run.cancelled');
    replays(r);
  });

  it('children - a child inside a loop gets one child run per iteration', () => {
    const looped = defineWorkflow({
      id: 'e2.loop-child',
      version: 1,
      steps: [{ name: 'rounds', loop: [{ name: 'sub', child: 'e2.sub' }], until: ({ results }) => results['sub'] === 'stop', maxIterations: 3 }],
    });
    const r = rec(looped);
    expect(r.events.at(-1)?.data).toMatchObject({ step: 'sub-1', child: childId(RUN_ID, 'sub-1', 1) });
    r.apply(childDone('sub-1', 1, 'again'));
    expect(r.events.at(-1)?.data).toMatchObject({ step: 'sub-2', child: childId(RUN_ID, 'sub-2', 1) });
    r.apply(childDone('sub-2', 1, 'stop'));
    expect(r.events.at(-1)).toMatchObject({ type: 'run.completed', data: { output: 'stop' } });
    replays(r);
  });

  it('children - the machine helper decides exactly as the compiled step', () => {
    const h = machineHelpers('e2.parent-m');
    const m = defineWorkflow({
      id: 'e2.parent-m',
      version: 1,
      machine: h.machine({ initial: 'ship', states: { ship: h.child({ name: 'ship', child: 'e2.shipper' }, 'done') } }),
    });
    const c = defineWorkflow({ id: 'e2.parent-m', version: 1, steps: [{ name: 'ship', child: 'e2.shipper' }] });
    const runs = [m, c].map((wf) => {
      const r = rec(wf, { a: 1 });
      r.apply(childFailed('ship', 1));
      r.apply(fired('ship', 1, TimerKind.Retry));
      r.apply(childDone('ship', 2, 'ok'));
      return r;
    });
    expect(runs[0]?.events).toEqual(runs[1]?.events);
    expect(runs[0]?.events.at(-1)).toMatchObject({ type: 'run.completed', data: { output: 'ok' } });
  });

  it('children - the projection shows each child attempt as a step naming its workflow and its child run', () => {
    const r = rec(wf);
    r.apply(completed('prep', 1));
    r.apply(childFailed('ship', 1));
    r.apply(fired('ship', 1, TimerKind.Retry));
    r.apply(childDone('ship', 2, { tracking: 'T2' }));
    const { view } = projectRun(
      'acme',
      r.events.map((event, i) => ({ event, streamSeq: i + 1, bytes: encode(event) })),
    );
    const ship = [...view.steps.values()]
      .filter((s) => s.step === 'ship')
      .map((s) => ({ attempt: s.attempt, handler: s.handler, worker: s.worker, outcome: s.outcome, errorCode: s.errorCode }));
    expect(ship).toEqual([
      { attempt: 1, handler: 'child:e2.shipper', worker: childId(RUN_ID, 'ship', 1), outcome: 'failed', errorCode: ErrorCode.ChildFailed },
      { attempt: 2, handler: 'child:e2.shipper', worker: childId(RUN_ID, 'ship', 2), outcome: 'completed', errorCode: null },
    ]);
    expect(view.run?.status).toBe('running');
  });

  it("children - the projection keeps a child's parent and a continuation's predecessor from their run.started, and a continued run's successor", () => {
    const child = childId(RUN_ID, 'ship', 1);
    const started = (runId: RunId, data: Record<string, JsonValue>): RunEvent =>
      ({
        v: EVENT_ENVELOPE_VERSION,
        type: 'run.started',
        data: { workflow: 'e2.shipper', version: 1, input: {}, engine: 2, ...data },
        runId,
        seq: 1,
        at: 1_700_000_000_000,
        causationId: 'cmd:1',
      }) as RunEvent;
    const project = (e: RunEvent) => projectRun('acme', [{ event: e, streamSeq: 1, bytes: encode(e) }]).view.run;
    expect(project(started(child, { parent: { runId: RUN_ID, step: 'ship', attempt: 1 } }))).toMatchObject({ parentRunId: RUN_ID, parentStep: 'ship', continuedFrom: null });
    expect(project(started(continuedId(child), { continuedFrom: child }))).toMatchObject({ parentRunId: null, parentStep: null, continuedFrom: child, continuedAs: null });
    // And forward: a run that continued as new names its continuation from run.continued.
    const ended: RunEvent[] = [
      started(child, {}),
      { ...started(child, {}), type: 'run.continued', seq: 2, data: { next: continuedId(child), input: {}, reason: 'workflow' } } as RunEvent,
      { ...started(child, {}), type: 'run.completed', seq: 3, data: { output: { continuedAs: continuedId(child) } } } as RunEvent,
    ];
    const view = projectRun(
      'acme',
      ended.map((event, i) => ({ event, streamSeq: i + 1, bytes: encode(event) })),
    ).view.run;
    expect(view).toMatchObject({ continuedFrom: null, continuedAs: continuedId(child), status: 'completed' });
  });

  it('children - a bad child definition is refused at load', () => {
    expect(() => defineWorkflow({ id: 'e2.bad', version: 1, steps: [{ name: 's', child: 'Not An Id' }] })).toThrow(/child must be a workflow id/);
    expect(() => defineWorkflow({ id: 'e2.bad', version: 1, steps: [{ name: 's', child: 'e2.x', parentClose: 'later' as never }] })).toThrow(/parentClose/);
  });
});

describe('engine 2 - continue-as-new', () => {
  const wf = defineWorkflow({
    id: 'e2.poller',
    version: 1,
    steps: [
      { name: 'poll' },
      { name: 'next', when: ({ results }) => results['poll'] !== 'done', continueAsNew: ({ input }) => ({ round: ((input['round'] as number | undefined) ?? 0) + 1 }) },
    ],
  });

  it('continue - the run ends with run.continued (a derived id, the new input) and completes naming its successor', () => {
    const r = rec(wf, { round: 1 });
    r.apply(completed('poll', 1, 'more'));
    const next = continuedId(RUN_ID);
    expect(r.events.slice(-2).map(({ type, data }) => ({ type, data }))).toEqual([
      { type: 'run.continued', data: { next, input: { round: 2 }, reason: 'workflow' } },
      { type: 'run.completed', data: { output: { continuedAs: next } } },
    ]);
    expect(runStatus(r.state)).toBe('completed');
    replays(r);
  });

  it('continue - the condition false: the run completes as usual', () => {
    const r = rec(wf, { round: 1 });
    r.apply(completed('poll', 1, 'done'));
    expect(types(r.events).slice(-2)).toEqual(['step.skipped', 'run.completed']);
    replays(r);
  });

  it('continue - a workflow that opts in continues as new at its event cap instead of failing', () => {
    const capped = defineWorkflow({
      id: 'e2.capped',
      version: 1,
      maxEvents: 16,
      onEventCap: 'continue-as-new',
      continueInput: ({ input, results }) => ({ ...input, carried: results['tick'] ?? null }),
      steps: [{ name: 'ticks', loop: [{ name: 'tick' }], until: () => false, maxIterations: 100 }],
    });
    const r = rec(capped, { k: 1 });
    for (let i = 1; i < 10 && r.events.at(-1)?.type !== 'run.completed'; i++) r.apply(completed(`tick-${i}`, 1, i));
    const tail = r.events.slice(-3).map((e) => e.type);
    expect(tail).toEqual(['step.cancelled', 'run.continued', 'run.completed']);
    expect(r.events.at(-2)?.data).toMatchObject({ next: continuedId(RUN_ID), reason: 'event-cap', input: { k: 1 } });
    expect(r.events.length).toBeLessThanOrEqual(16);
    replays(r);
  });
});

describe('engine 2 - patched markers', () => {
  // Version 1 as first deployed, then edited in place behind a patch id.
  const before = defineWorkflow({ id: 'e2.patchy', version: 1, steps: [{ name: 'a' }, { name: 'old' }] });
  const after = defineWorkflow({ id: 'e2.patchy', version: 1, steps: [{ name: 'a' }, { name: 'fix', patched: 'use-new', then: [{ name: 'new' }], else: [{ name: 'old' }] }] });

  it('patched - a run that reaches the patch live records its marker once and takes the new path', () => {
    const r = rec(after);
    expect(r.step(completed('a', 1))).toEqual(['patch.marked', 'step.scheduled:new#1']);
    r.apply(completed('new', 1, 'n'));
    expect(r.events.at(-1)).toMatchObject({ type: 'run.completed', data: { output: 'n' } });
    replays(r);
  });

  it('patched - a run recorded before the patch replays on the old path, and goes on from there', () => {
    const old = rec(before);
    old.apply(completed('a', 1));
    expect(old.events.at(-1)?.data).toMatchObject({ step: 'old' });
    // Today's build folds the old record with the patched definition: no marker there, so the old path.
    const fold = foldRun(createRegistry([after]), old.events);
    expect(fold.state.seq).toBe(old.events.length);
    const r = Object.assign(Object.create(RunRecorder.prototype) as RunRecorder, old, { state: fold.state, workflow: after });
    r.apply(completed('old', 1, 'o'));
    expect(r.events.at(-1)).toMatchObject({ type: 'run.completed', data: { output: 'o' } });
    foldRun(createRegistry([after]), r.events);
  });

  it('patched - a run that had not reached the patch when it was deployed takes the new path', () => {
    const old = rec(before);
    const fold = foldRun(createRegistry([after]), old.events);
    const r = Object.assign(Object.create(RunRecorder.prototype) as RunRecorder, old, { state: fold.state, workflow: after });
    expect(r.step(completed('a', 1))).toEqual(['patch.marked', 'step.scheduled:new#1']);
    foldRun(createRegistry([after]), r.events);
  });

  it('patched - in a loop, the marker is recorded the first time only', () => {
    const looped = defineWorkflow({
      id: 'e2.patch-loop',
      version: 1,
      steps: [{ name: 'l', loop: [{ name: 'p', patched: 'x', then: [{ name: 'n' }] }], until: ({ results }) => results['n'] === 2, maxIterations: 5 }],
    });
    const r = rec(looped);
    r.apply(completed('n-1', 1, 1));
    r.apply(completed('n-2', 1, 2));
    expect(types(r.events).filter((t) => t === 'patch.marked')).toHaveLength(1);
    expect(r.events.at(-1)?.type).toBe('run.completed');
    replays(r);
  });
});

describe('engine 2 - patched markers in a hand-written machine', () => {
  // As first deployed: a, then old. Edited in place: a, then patched('use-new') between new and old.
  const handWritten = (patched: boolean) => {
    const h = machineHelpers('e2.hand-patchy');
    const a = h.step({ name: 'a' }, patched ? 'fix' : 'old');
    const old = h.step({ name: 'old' }, 'done');
    const machine = patched
      ? h.machine({ initial: 'a', states: { a, fix: h.patched('use-new', { then: 'new', else: 'old' }), new: h.step({ name: 'new' }, 'done'), old } })
      : h.machine({ initial: 'a', states: { a, old } });
    return defineWorkflow({ id: 'e2.hand-patchy', version: 1, machine });
  };
  const before = handWritten(false);
  const after = handWritten(true);
  const compiled = defineWorkflow({
    id: 'e2.hand-patchy',
    version: 1,
    steps: [{ name: 'a' }, { name: 'fix', patched: 'use-new', then: [{ name: 'new' }], else: [{ name: 'old' }] }],
  });
  const resumed = (old: RunRecorder, wf: WorkflowDefinition): RunRecorder => {
    const fold = foldRun(createRegistry([wf]), old.events);
    expect(fold.state.seq).toBe(old.events.length);
    return Object.assign(Object.create(RunRecorder.prototype) as RunRecorder, old, { state: fold.state, workflow: wf });
  };

  it('patched - a new run takes the new path, records its marker once, and decides exactly as the builder', () => {
    const runs = [after, compiled].map((wf) => {
      const r = rec(wf);
      expect(r.step(completed('a', 1))).toEqual(['patch.marked', 'step.scheduled:new#1']);
      r.apply(completed('new', 1, 'n'));
      return r;
    });
    expect(runs[0]?.events).toEqual(runs[1]?.events);
    expect(runs[0]?.events.at(-1)).toMatchObject({ type: 'run.completed', data: { output: 'n' } });
    replays(runs[0] as RunRecorder);
  });

  it('patched - a run recorded before the patch replays on the old path through the patched machine, and goes on from there', () => {
    const old = rec(before);
    old.apply(completed('a', 1));
    expect(old.events.at(-1)).toMatchObject({ type: 'step.scheduled', data: { step: 'old' } });
    const r = resumed(old, after);
    r.apply(completed('old', 1, 'o'));
    expect(r.events.at(-1)).toMatchObject({ type: 'run.completed', data: { output: 'o' } });
    expect(types(r.events)).not.toContain('patch.marked');
    foldRun(createRegistry([after]), r.events);
  });

  it('patched - a run that had not reached the patch when it was deployed takes the new path', () => {
    const r = resumed(rec(before), after);
    expect(r.step(completed('a', 1))).toEqual(['patch.marked', 'step.scheduled:new#1']);
    foldRun(createRegistry([after]), r.events);
  });

  it('patched - a patch id that is not a token is refused when the machine is written', () => {
    expect(() => machineHelpers('e2.bad').patched('Use New', { then: 'a', else: 'b' })).toThrow(/patch id must match/);
  });
});

export const _ids = (x: RunId) => x;

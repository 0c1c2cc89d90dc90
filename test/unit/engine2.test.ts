/**
 * Engine 2 through the pure core: each construct (parallel branches, fan-out with a cap and
 * its fan-ins, conditions, bounded loops, sleeps, waits with timeouts and early signals),
 * cancellation reaching every open step, retry as the machine's own transition, the event
 * cap, and a hand-written machine made with the helpers deciding exactly like the compiled
 * one. Every history recorded here is folded again and must give the same state.
 */
import { mkdtempSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import {
  bindHandlers,
  createRegistry,
  defineWorkflow,
  demoPipeline,
  foldRun,
  inputsRefusedByNewVersion,
  machineHelpers,
  requiredHandlers,
  runStatus,
  statusFromEvents,
  stepInputsOf,
  type WorkflowDefinition,
} from '@capstan/actors';
import { loadHandlers } from '@capstan/worker';
import { CapstanError, ErrorCode, TimerKind, type InputEventBody, type JsonValue, type RunEvent, type StandardSchemaV1 } from '@capstan/schemas';
import { RunRecorder, cancel, completed, failed, fired, signaled, started, timeoutFired } from './support/runs.js';

const E2 = 2;
const rec = (wf: WorkflowDefinition, input: Record<string, never> | { [k: string]: unknown } = {}) => new RunRecorder(wf, input as never, undefined, undefined, E2);
const types = (events: readonly RunEvent[]) => events.map((e) => e.type);
const retried = (by = 'ops'): InputEventBody => ({ type: 'run.retried', data: { by } });
const approve = (step: string, decision: 'approve' | 'deny' = 'approve'): InputEventBody => ({ type: 'approval.decided', data: { step, decision, by: 'ann' } });

/** The fold of a recorded run gives the live state, twice. */
function replays(r: RunRecorder): void {
  const reg = createRegistry([r.workflow]);
  const a = foldRun(reg, r.events);
  const b = foldRun(reg, r.events);
  expect(a.state.snapshot.value).toEqual(r.state.snapshot.value);
  expect(a.state.snapshot.context).toEqual(r.state.snapshot.context);
  expect(b.state.snapshot.context).toEqual(a.state.snapshot.context);
  expect(runStatus(a.state)).toBe(statusFromEvents(r.events));
  // After every decision, the machine's status and the one read off the events agree.
  for (const cp of r.checkpoints) expect(runStatus(cp.state), `after ${cp.events} events`).toBe(statusFromEvents(r.events.slice(0, cp.events)));
}

describe('engine 2 - sequences decide as engine 1 did', () => {
  it('engine 2 - a plain pipeline records the same events as under engine 1', () => {
    const one = new RunRecorder(demoPipeline, { customer: 1 });
    const two = new RunRecorder(demoPipeline, { customer: 1 }, undefined, undefined, E2);
    for (const r of [one, two]) {
      r.apply(started('extract', 1));
      r.apply(completed('extract', 1));
      r.apply(failed('transform', 1));
      r.apply(fired('transform', 1, TimerKind.Retry));
      r.apply(completed('transform', 2));
      r.apply(completed('load', 1, { n: 3 }));
    }
    const strip = (events: readonly RunEvent[]) => events.map(({ type, data }) => ({ type, data: type === 'run.started' ? { ...data, engine: undefined } : data }));
    expect(strip(two.events)).toEqual(strip(one.events));
    expect(two.events.at(-1)).toMatchObject({ type: 'run.completed', data: { output: { n: 3 } } });
    replays(two);
  });
});

describe('engine 2 - signals', () => {
  const wf = defineWorkflow({ id: 'e2.signal', version: 1, steps: [{ name: 'prep' }, { name: 'gate', signal: 'go' }, { name: 'finish' }] });

  it('engine 2 - a signal that arrives before its wait is kept and taken when the wait is reached', () => {
    const r = rec(wf);
    r.apply(started('prep', 1));
    expect(r.step(signaled('go', { early: true }))).toEqual([]);
    expect(r.step(completed('prep', 1))).toEqual(['step.waiting', 'signal.consumed', 'step.scheduled:finish#1']);
    r.apply(completed('finish', 1, { done: true }));
    expect(r.events.at(-1)?.type).toBe('run.completed');
    expect(stepInputsOf(r.checkpoints.at(-2)?.state ?? r.state, 'finish', () => 1).results).toMatchObject({ gate: { early: true } });
    replays(r);
  });

  it('engine 2 - two waits for one signal name: each signal is taken once, oldest wait first', () => {
    const two = defineWorkflow({ id: 'e2.two', version: 1, steps: [{ name: 'both', parallel: [[{ name: 'w1', signal: 'go' }], [{ name: 'w2', signal: 'go' }]] }] });
    const r = rec(two);
    expect(r.step(signaled('go', 1))).toEqual(['signal.consumed']);
    expect(r.events.at(-1)).toMatchObject({ data: { step: 'w1' } });
    expect(r.step(signaled('go', 2))).toEqual(['signal.consumed', 'run.completed']);
    replays(r);
  });

  it('engine 2 - a wait with a timeout fails the run, or continues with { timedOut: true }', () => {
    const strict = defineWorkflow({ id: 'e2.strict', version: 1, steps: [{ name: 'gate', signal: 'go', timeoutMs: 1000 }] });
    const r = rec(strict);
    expect(types(r.events)).toEqual(['run.started', 'step.waiting', 'timer.scheduled']);
    r.apply(fired('gate', 1, TimerKind.Wait));
    expect(r.events.at(-1)).toMatchObject({ type: 'run.failed', data: { error: { code: ErrorCode.SignalTimeout } } });
    replays(r);
    const lax = defineWorkflow({ id: 'e2.lax', version: 1, steps: [{ name: 'gate', signal: 'go', timeoutMs: 1000, onTimeout: 'continue' }, { name: 'after' }] });
    const l = rec(lax);
    expect(l.step(fired('gate', 1, TimerKind.Wait))).toEqual(['step.scheduled:after#1']);
    // A signal after the timeout is kept, not taken by anything.
    expect(l.step(signaled('go'))).toEqual([]);
    replays(l);
  });
});

describe('engine 2 - sleeps', () => {
  it('engine 2 - sleep and sleep-until arm durable timers; the run waits meanwhile', () => {
    const wf = defineWorkflow({
      id: 'e2.sleep',
      version: 1,
      steps: [{ name: 'nap', sleep: { ms: 60_000 } }, { name: 'until', sleep: { until: ({ input }) => Number(input['at']) } }, { name: 'wake' }],
    });
    const r = rec(wf, { at: 1_800_000_000_000 });
    expect(r.events.at(-1)).toMatchObject({ type: 'timer.scheduled', data: { kind: 'sleep', step: 'nap', delayMs: 60_000 } });
    expect(runStatus(r.state)).toBe('waiting');
    r.apply(fired('nap', 1, TimerKind.Sleep));
    expect(r.events.at(-1)).toMatchObject({ type: 'timer.scheduled', data: { kind: 'sleep', step: 'until', delayMs: 0, until: 1_800_000_000_000 } });
    expect(r.step(fired('until', 1, TimerKind.Sleep))).toEqual(['step.scheduled:wake#1']);
    // A sleep's timer that fires again is stale.
    expect(r.tryApply(fired('nap', 1, TimerKind.Sleep))).toBeUndefined();
    replays(r);
  });
});

describe('engine 2 - parallel branches and fan-out', () => {
  it('engine 2 - parallel branches run at once and the step ends when every branch has', () => {
    const wf = defineWorkflow({ id: 'e2.par', version: 1, steps: [{ name: 'fork', parallel: [[{ name: 'a' }, { name: 'a2' }], [{ name: 'b' }]] }, { name: 'join' }] });
    const r = rec(wf);
    expect(types(r.events)).toEqual(['run.started', 'step.scheduled', 'step.scheduled']);
    expect(runStatus(r.state)).toBe('pending');
    expect(r.step(completed('b', 1))).toEqual([]);
    expect(r.step(completed('a', 1))).toEqual(['step.scheduled:a2#1']);
    expect(r.step(completed('a2', 1))).toEqual(['step.scheduled:join#1']);
    const inputs = stepInputsOf(r.state, 'join', () => 1);
    expect(Object.keys(inputs.results ?? {}).sort()).toEqual(['a', 'a2', 'b']);
    replays(r);
  });

  const fan = (join: 'all' | 'first' | { atLeast: number }) =>
    defineWorkflow({
      id: `e2.fan.${typeof join === 'object' ? 'n' : join}`,
      version: 1,
      steps: [
        { name: 'list' },
        { name: 'each', forEach: ({ results }) => (results['list'] as { ids: number[] }).ids, concurrency: 2, join, run: { retry: { maxAttempts: 1 } } },
        { name: 'sum' },
      ],
    });

  it('engine 2 - fan-out: at most `concurrency` items at once, each sees its item; fan-in all collects in list order', () => {
    const r = rec(fan('all'));
    expect(r.step(completed('list', 1, { ids: [10, 20, 30] }))).toEqual(['fanout.started', 'step.scheduled:each-1#1', 'step.scheduled:each-2#1']);
    expect(stepInputsOf(r.state, 'each-2', () => 1)).toMatchObject({ item: 20, index: 2 });
    expect(r.step(completed('each-2', 1, 'two'))).toEqual(['step.scheduled:each-3#1']);
    expect(r.step(completed('each-3', 1, 'three'))).toEqual([]);
    expect(r.step(completed('each-1', 1, 'one'))).toEqual(['step.scheduled:sum#1']);
    expect(stepInputsOf(r.state, 'sum', () => 1).results?.['each']).toEqual(['one', 'two', 'three']);
    replays(r);
  });

  it('engine 2 - fan-in first: the first result ends the fan-out and the other items are cancelled', () => {
    const r = rec(fan('first'));
    r.apply(completed('list', 1, { ids: [1, 2, 3] }));
    expect(r.step(completed('each-2', 1, 'fast'))).toEqual(['step.cancelled:each-1#1', 'step.scheduled:sum#1']);
    // The cancelled item's late result is refused as stale.
    expect(() => r.apply(completed('each-1', 1))).toThrow(expect.objectContaining({ code: ErrorCode.StaleAttempt }));
    expect(stepInputsOf(r.state, 'sum', () => 1).results?.['each']).toBe('fast');
    replays(r);
  });

  it('engine 2 - fan-in N of M tolerates failures until it cannot be met', () => {
    const r = rec(fan({ atLeast: 2 }));
    r.apply(completed('list', 1, { ids: [1, 2, 3, 4] }));
    expect(r.step(failed('each-1', 1, false))).toEqual(['step.scheduled:each-3#1']);
    expect(r.step(completed('each-2', 1, 'b'))).toEqual(['step.scheduled:each-4#1']);
    expect(r.step(failed('each-3', 1, false))).toEqual([]);
    expect(r.step(completed('each-4', 1, 'd'))).toEqual(['step.scheduled:sum#1']);
    replays(r);
    const f = rec(fan({ atLeast: 3 }));
    f.apply(completed('list', 1, { ids: [1, 2, 3] }));
    expect(f.step(failed('each-1', 1, false))).toEqual(['step.cancelled:each-2#1', 'run.failed']);
    expect(f.events.at(-1)).toMatchObject({ data: { error: { code: ErrorCode.FanOutFailed } } });
    replays(f);
  });

  it('engine 2 - an empty list completes at once with []', () => {
    const r = rec(fan('all'));
    expect(r.step(completed('list', 1, { ids: [] }))).toEqual(['fanout.started', 'step.scheduled:sum#1']);
    replays(r);
  });
});

describe('engine 2 - conditions and loops', () => {
  it('engine 2 - a branch records its choice; a step whose `when` fails is skipped', () => {
    const wf = defineWorkflow({
      id: 'e2.branch',
      version: 1,
      steps: [
        { name: 'triage' },
        { name: 'route', if: ({ results }) => (results['triage'] as { urgent: boolean }).urgent, then: [{ name: 'page' }], else: [{ name: 'queue' }] },
        { name: 'notify', when: ({ input }) => input['notify'] === true },
        { name: 'end' },
      ],
    });
    const r = rec(wf, { notify: false });
    expect(r.step(completed('triage', 1, { urgent: true }))).toEqual(['branch.taken', 'step.scheduled:page#1']);
    expect(r.step(completed('page', 1))).toEqual(['step.skipped', 'step.scheduled:end#1']);
    replays(r);
  });

  it('engine 2 - a bounded loop runs its body under per-iteration names until its condition holds, or fails at its limit', () => {
    const wf = defineWorkflow({
      id: 'e2.loop',
      version: 1,
      steps: [
        { name: 'agent', loop: [{ name: 'think' }, { name: 'act' }], until: ({ results }) => (results['act'] as { done?: boolean }).done === true, maxIterations: 3 },
        { name: 'report' },
      ],
    });
    const r = rec(wf);
    expect(types(r.events)).toEqual(['run.started', 'loop.iteration', 'step.scheduled']);
    expect(r.events.at(-1)).toMatchObject({ data: { step: 'think-1' } });
    r.apply(completed('think-1', 1));
    expect(stepInputsOf(r.state, 'act-1', () => 1)).toMatchObject({ iteration: 1 });
    expect(r.step(completed('act-1', 1, { done: false }))).toEqual(['loop.iteration', 'step.scheduled:think-2#1']);
    r.apply(completed('think-2', 1));
    expect(r.step(completed('act-2', 1, { done: true }))).toEqual(['step.scheduled:report#1']);
    replays(r);
    const l = rec(wf);
    for (let i = 1; i <= 3; i++) {
      l.apply(completed(`think-${i}`, 1));
      l.apply(completed(`act-${i}`, 1, { done: false }));
    }
    expect(l.events.at(-1)).toMatchObject({ type: 'run.failed', data: { error: { code: ErrorCode.LoopLimit } } });
    replays(l);
  });
});

describe('engine 2 - cancel, retry, event cap', () => {
  const wf = defineWorkflow({
    id: 'e2.mix',
    version: 1,
    steps: [
      { name: 'fork', parallel: [[{ name: 'work', retry: { maxAttempts: 2, initialIntervalMs: 10 } }], [{ name: 'nap', sleep: { ms: 1000 } }], [{ name: 'ask', signal: 'go' }]] },
      { name: 'end' },
    ],
  });

  it('engine 2 - a cancel cancels every open step (the running one is told to stop) before the run ends', () => {
    const r = rec(wf);
    r.apply(started('work', 1));
    expect(r.step(cancel('enough'))).toEqual(['step.cancelled:work#1', 'step.cancelled:nap#1', 'step.cancelled:ask#1', 'run.cancelled']);
    expect(() => r.apply(completed('work', 1))).toThrow(expect.objectContaining({ code: ErrorCode.StaleAttempt }));
    replays(r);
  });

  it('engine 2 - a failed run retried resumes where it failed: the failed step takes the next attempt, the others start again', () => {
    const r = rec(wf);
    r.apply(fired('nap', 1, TimerKind.Sleep));
    r.apply(failed('work', 1));
    r.apply(fired('work', 1, TimerKind.Retry));
    expect(r.step(timeoutFired('work', 2))).toEqual(['step.cancelled:ask#1', 'run.failed']);
    expect(runStatus(r.state)).toBe('failed');
    expect(() => r.apply(signaled('go'))).toThrow();
    expect(r.step(retried())).toEqual(['step.scheduled:work#3', 'step.waiting']);
    r.apply(completed('work', 3));
    expect(r.step(approve('ask'))).toEqual(['step.scheduled:end#1']);
    replays(r);
  });

  it('engine 2 - a run that has not failed, or failed outside a step, is not retryable', () => {
    const r = rec(wf);
    expect(() => r.apply(retried())).toThrow(expect.objectContaining({ code: ErrorCode.RunNotRetryable }));
  });

  it('engine 2 - a run about to pass its event cap ends with event_cap_reached, its open steps cancelled', () => {
    const capped = defineWorkflow({ id: 'e2.cap', version: 1, maxEvents: 16, steps: [{ name: 'spin', loop: [{ name: 'turn' }], until: () => false, maxIterations: 100 }] });
    const r = rec(capped);
    let i = 1;
    while (r.state.snapshot.status === 'active' && !r.state.snapshot.hasTag('failed')) r.apply(completed(`turn-${i++}`, 1));
    expect(r.events.length).toBeLessThanOrEqual(16);
    expect(r.events.at(-1)).toMatchObject({ type: 'run.failed', data: { error: { code: ErrorCode.EventCapReached } } });
    expect(() => r.apply(retried())).toThrow(expect.objectContaining({ code: ErrorCode.RunNotRetryable }));
    replays(r);
  });
});

describe('engine 2 - hand-written machines with the helpers', () => {
  it('engine 2 - a machine written with step/wait/sleep helpers decides exactly what the compiled workflow decides', () => {
    const compiled = defineWorkflow({
      id: 'e2.same',
      version: 1,
      steps: [{ name: 'fetch', retry: { maxAttempts: 2 } }, { name: 'gate', signal: 'go', timeoutMs: 5000 }, { name: 'nap', sleep: { ms: 10 } }, { name: 'ship' }],
    });
    const h = machineHelpers('e2.same');
    const hand = defineWorkflow({
      id: 'e2.same',
      version: 2,
      machine: h.machine({
        initial: 'fetch',
        states: {
          fetch: h.step({ name: 'fetch', retry: { maxAttempts: 2 } }, 'gate'),
          gate: h.wait({ name: 'gate', signal: 'go', timeoutMs: 5000 }, 'nap'),
          nap: h.sleep({ name: 'nap', sleep: { ms: 10 } }, 'ship'),
          ship: h.step({ name: 'ship' }, 'done'),
        },
      }),
    });
    const drive = (r: RunRecorder) => {
      r.apply(failed('fetch', 1));
      r.apply(fired('fetch', 1, TimerKind.Retry));
      r.apply(completed('fetch', 2, { rows: 1 }));
      r.apply(signaled('go', 'yes'));
      r.apply(fired('nap', 1, TimerKind.Sleep));
      r.apply(completed('ship', 1));
      return r.events.slice(1).map(({ type, data }) => ({ type, data }));
    };
    expect(drive(rec(hand))).toEqual(drive(rec(compiled)));
    const r = rec(hand);
    drive(r);
    replays(r);
  });

  it('engine 2 - a definition error is a typed error naming the step', () => {
    expect(() => defineWorkflow({ id: 'e2.bad', version: 1, steps: [{ name: 'x', loop: [{ name: 'y' }], until: () => true, maxIterations: 0 }] })).toThrow(/maxIterations/);
    expect(() => defineWorkflow({ id: 'e2.bad', version: 1, steps: [{ name: 'each', forEach: () => [], concurrency: 1 }, { name: 'each-1' }] })).toThrow(/collide/);
    try {
      defineWorkflow({ id: 'e2.bad', version: 1, steps: [{ name: 'a' }, { name: 'a' }] });
    } catch (e) {
      expect(CapstanError.is(e) && e.code).toBe(ErrorCode.InvalidWorkflow);
    }
  });
});

describe('engine 2 - typed definitions', () => {
  const schema = (check: (v: unknown) => string | undefined, path = 'customer'): StandardSchemaV1 => ({
    '~standard': { version: 1, vendor: 'test', validate: (v) => (check(v) === undefined ? { value: v } : { issues: [{ message: check(v) ?? '', path: [path] }] }) },
  });
  const isNum = (v: unknown) => (typeof (v as { customer?: unknown }).customer === 'number' ? undefined : 'must be a number');

  it('engine 2 - bound handlers: exactly one per mode-0 step, named as the steps schedule them; results checked against their schema', async () => {
    const wf = defineWorkflow({
      id: 'e2.typed',
      version: 1,
      steps: [
        { name: 'fetch', result: schema((v) => (typeof v === 'object' && v !== null && 'rows' in v ? undefined : 'needs rows'), 'rows') },
        { name: 'each', forEach: () => [1], run: {} },
        { name: 'gate', signal: 'go' },
        { name: 'box', mode: 1, sandbox: { command: ['true'] } },
      ],
    });
    type Ctx = { readonly step: string };
    const h = bindHandlers(wf, { fetch: (_: Ctx) => ({ rows: 1 }), each: (_: Ctx) => null });
    expect(Object.keys(h).sort()).toEqual(['e2.typed.each', 'e2.typed.fetch']);
    expect(requiredHandlers([wf]).sort()).toEqual(['e2.typed.each', 'e2.typed.fetch']);
    await expect(Promise.resolve((h['e2.typed.fetch'] as (c: Ctx) => unknown)({ step: 'fetch' }))).resolves.toEqual({ rows: 1 });
    const bad = bindHandlers(wf, { fetch: (_: Ctx) => ({ nope: 1 }), each: (_: Ctx) => null });
    await expect(Promise.resolve((bad['e2.typed.fetch'] as (c: Ctx) => unknown)({ step: 'fetch' }))).rejects.toMatchObject({ code: ErrorCode.SchemaViolation });
    // @ts-expect-error a misspelled handler does not compile
    bindHandlers(wf, { fetsh: (_: Ctx) => null, each: (_: Ctx) => null });
    // @ts-expect-error a missing handler does not compile
    bindHandlers(wf, { fetch: (_: Ctx) => null });
  });

  it("engine 2 - a worker whose handlers module lacks a workflow step's handler does not start", async () => {
    const dir = mkdtempSync(join(tmpdir(), 'capstan-handlers-'));
    const file = join(dir, 'mod.mjs');
    writeFileSync(file, `export const workflows = [{ id: 'w', handlers: ['w.a', 'w.b'] }];\nexport const handlers = { 'w.a': () => null };\n`);
    await expect(loadHandlers(file)).rejects.toMatchObject({ code: ErrorCode.UnknownHandler, message: expect.stringContaining('no handler: w.b') as unknown });
  });

  it('engine 2 - append-only inputs: the helper names every input the new version refuses', async () => {
    const v1 = defineWorkflow({ id: 'e2.in', version: 1, input: schema(isNum), steps: [{ name: 'a' }] });
    const v2ok = defineWorkflow({ id: 'e2.in', version: 2, input: schema((v) => (isNum(v) === undefined ? undefined : 'must be a number')), steps: [{ name: 'a' }] });
    const v2bad = defineWorkflow({
      id: 'e2.in',
      version: 3,
      input: schema((v) => (typeof (v as { region?: unknown }).region === 'string' ? undefined : 'is required'), 'region'),
      steps: [{ name: 'a' }],
    });
    const recorded: JsonValue[] = [{ customer: 1 }, { customer: 2, region: 'eu' }, { customer: 'x' }];
    expect(await inputsRefusedByNewVersion(v1, v2ok, recorded)).toEqual([]);
    expect(await inputsRefusedByNewVersion(v1, v2bad, recorded)).toEqual([{ input: { customer: 1 }, issues: ['region: is required'] }]);
  });
});

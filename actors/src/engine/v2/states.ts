/**
 * Engine 2's per-state builders: each returns one typed XState state config for one step of a
 * workflow (a task, a wait, a sleep, a fan-out, parallel branches, a branch, a loop), and
 * `workflowMachine` wraps states into a run machine. The step compiler (compile.ts) is built
 * from exactly these, and authors who write an XState machine themselves use the same ones
 * (`machineHelpers`), so a hand-written machine behaves exactly like a compiled one.
 *
 * Conventions: a state's `next` is the state to go to when its step has ended (a sibling's
 * name, or `done` for the end of the enclosing sequence); a failure goes to the run's
 * `failed` state, which cancels every open instance and records `run.failed`. The machine's
 * only action is `decide`, whose params are a decision event: the run core records them.
 */
import { enqueueActions, setup } from 'xstate';
import type { DecisionEventBody, InputEventBody, JsonValue, RunEventData } from '@capstan/schemas';
import { ErrorCode, TOKEN_PATTERN } from '@capstan/schemas';
import type { NChild, NContinue, NFanOut, NSignal, NSleep, NTask, RunData } from '../../workflow.js';
import { continuedRunIdOf } from './ids.js';
import { dataOf, failure, getInst, OPEN, type Instance, type KeyOf, type RunContext, type Step } from './context.js';
import { cancelOpen, deliverSignal, evaluate, feedChild, feedSignal, feedSleep, feedTask, startChild, startSignal, startSleep, startTask, type Extra } from './lifecycle.js';
import { initialContext } from './context.js';

/** The run core's own event: the run is at its event cap and must end now (never recorded). */
export const EVENT_CAP = 'capstan.event-cap' as const;
/**
 * The run core's own event that starts a run (never recorded: `run.started` stands for it).
 * The machine's initial state only waits for it, because XState works out a machine's initial
 * state on every transition; kept trivial, that costs nothing, whatever the first step is.
 */
export const START = 'capstan.start' as const;
export type MachineEvent = InputEventBody | { readonly type: typeof EVENT_CAP } | { readonly type: typeof START; readonly runId?: string; readonly engine?: number };

/** A fan-out takes at most this many items. */
export const MAX_ITEMS = 10_000;

export const capstan = setup({
  types: {
    context: {} as RunContext,
    events: {} as MachineEvent,
    input: {} as { readonly [k: string]: JsonValue },
  },
  actions: {
    // The run's decisions: recorded by the run core, acted on by the orchestrator.
    decide: (_, _params: DecisionEventBody) => {},
  },
});

type DecideAction = { type: 'decide'; params: DecisionEventBody };
type Enqueue = Parameters<Parameters<typeof enqueueActions<RunContext, MachineEvent, undefined, MachineEvent, never, DecideAction, never, never, never>>[0]>[0]['enqueue'];

/** Applies one pure step: its context, then its decisions, in order. */
function apply(enqueue: Enqueue, step: Step): void {
  enqueue.assign(() => ({ ...step.ctx }));
  for (const d of step.out) enqueue({ type: 'decide', params: d });
}

const FAILED = '#capstan-failed';

/** The input events that concern one step instance (they name it in `data.step`). */
type InstanceEvent = Extract<
  InputEventBody,
  { type: 'step.started' | 'step.completed' | 'step.failed' | 'timer.fired' | 'policy.decided' | 'credential.decided' | 'approval.decided' | 'child.completed' | 'child.failed' }
>;
const INSTANCE_EVENTS = [
  'step.started',
  'step.completed',
  'step.failed',
  'timer.fired',
  'policy.decided',
  'credential.decided',
  'approval.decided',
  'child.completed',
  'child.failed',
] as const;

/** Transitions taking the instance events `feed` accepts (refused ones are never recorded). */
function instanceOn(feed: (c: RunContext, ev: InstanceEvent) => Step | undefined) {
  // The guard's answer is what the action applies: computed once per event and context.
  const memo = new WeakMap<object, { context: RunContext; step: Step | undefined }>();
  const fed = (context: RunContext, event: InstanceEvent) => {
    const m = memo.get(event);
    if (m && m.context === context) return m.step;
    const step = feed(context, event);
    memo.set(event, { context, step });
    return step;
  };
  const t = {
    guard: ({ context, event }: { context: RunContext; event: MachineEvent }) => isInstanceEvent(event) && fed(context, event) !== undefined,
    actions: enqueueActions(({ context, event, enqueue }: { context: RunContext; event: MachineEvent; enqueue: Enqueue }) => {
      const step = isInstanceEvent(event) ? fed(context, event) : undefined;
      if (step) apply(enqueue, step);
    }),
  };
  return Object.fromEntries(INSTANCE_EVENTS.map((type) => [type, t])) as Record<InstanceEvent['type'], typeof t>;
}

function isInstanceEvent(e: MachineEvent): e is InstanceEvent {
  return (INSTANCE_EVENTS as readonly string[]).includes(e.type);
}

const phaseOf = (c: RunContext, key: string) => getInst(c, key)?.phase;

/** Leaving for `failed`: every other open instance is cancelled first. */
const failRun = enqueueActions(({ context, enqueue }: { context: RunContext; enqueue: Enqueue }) => apply(enqueue, cancelOpen(context, 'the run failed')));

/** Where a one-instance step goes when its instance has ended: on when done, to `failed` when failed. */
function ended(keyOf: KeyOf, next: string) {
  return [
    { guard: ({ context }: { context: RunContext }) => phaseOf(context, keyOf(context)) === 'done', target: next },
    { guard: ({ context }: { context: RunContext }) => phaseOf(context, keyOf(context)) === 'failed', target: FAILED, actions: failRun },
  ];
}

/** A task: its policy check (sandboxed modes), its attempts, retries and timeouts. */
export function taskState(workflowId: string, node: NTask, keyOf: KeyOf, next: string, extraOf?: (c: RunContext) => Extra) {
  return capstan.createStateConfig({
    entry: enqueueActions(({ context, enqueue }) => apply(enqueue, startTask(context, workflowId, keyOf(context), node, extraOf?.(context)))),
    on: instanceOn((c, ev) => feedTask(c, workflowId, keyOf(c), node, ev)),
    always: ended(keyOf, next),
  });
}

/** A wait for a signal (kept if it came early), decided by a person too, with an optional timeout. */
export function signalState(node: NSignal, keyOf: KeyOf, next: string, extraOf?: (c: RunContext) => Extra) {
  return capstan.createStateConfig({
    entry: enqueueActions(({ context, enqueue }) => apply(enqueue, startSignal(context, keyOf(context), node, extraOf?.(context)))),
    on: instanceOn((c, ev) => feedSignal(c, keyOf(c), node, ev)),
    always: ended(keyOf, next),
  });
}

/** A child workflow: started, awaited; its output is the step's result, its failure the step's (with retries). */
export function childState(node: NChild, keyOf: KeyOf, next: string, extraOf?: (c: RunContext) => Extra) {
  return capstan.createStateConfig({
    entry: enqueueActions(({ context, enqueue }) => apply(enqueue, startChild(context, keyOf(context), node, extraOf?.(context)))),
    on: instanceOn((c, ev) => feedChild(c, keyOf(c), node, ev)),
    always: ended(keyOf, next),
  });
}

/** Continue-as-new: the run ends (open instances cancelled) and a fresh run continues it with new input. */
export function continueState(node: NContinue, keyOf: KeyOf) {
  return capstan.createStateConfig({
    entry: decideOnEntry(keyOf, (c, key) => {
      const r = evaluate(() => node.input(dataOf(c)), `step ${key}: continueAsNew`);
      if (!r.ok) return { error: r.error };
      const v: unknown = r.value;
      if (v === null || typeof v !== 'object' || Array.isArray(v))
        return { error: failure(ErrorCode.WorkflowFunctionFailed, `step ${key}: continueAsNew must return an object (the new run's input), got ${JSON.stringify(v)}`, false) };
      const cont = continued(c, r.value, 'workflow', `step ${key} continued the run as new`);
      return 'error' in cont ? cont : { flow: 'continue', ctx: cont.ctx, out: [...cont.out] };
    }),
    always: [
      { guard: flowIs(keyOf, 'continue'), target: CONTINUED },
      { guard: flowIs(keyOf, 'error'), target: FAILED, actions: failRun },
    ],
  });
}

const CONTINUED = '#capstan-continued';

/** Ends a run by continuing it as new: cancels what is open, records `run.continued` (its successor's id derived from the run's). */
function continued(c: RunContext, input: { readonly [k: string]: JsonValue }, reason: 'workflow' | 'event-cap', why: string): Step | { error: ReturnType<typeof failure> } {
  if (c.runId === undefined) return { error: failure(ErrorCode.WorkflowFunctionFailed, "continue-as-new needs the run's id (start the run with one)", false) };
  const cancelled = cancelOpen(c, why);
  const next = continuedRunIdOf(c.runId, c.engine ?? 2);
  return { ctx: { ...cancelled.ctx, last: { continuedAs: next } }, out: [...cancelled.out, { type: 'run.continued', data: { next, input, reason } }] };
}

/**
 * Whether the run is being replayed from its record, and which `patched` markers the record
 * holds for the input being folded: set by the run core around one synchronous transition
 * (undefined: a live decision). A patch evaluated live takes the new path and records its
 * marker; on replay it takes the path its record took.
 */
let replayMarks: ReadonlySet<string> | undefined;

export function underReplay<T>(marks: ReadonlySet<string> | undefined, f: () => T): T {
  const before = replayMarks;
  replayMarks = marks;
  try {
    return f();
  } finally {
    replayMarks = before;
  }
}

/**
 * Which path a run takes at `patched(id)`, recorded under the instance's name (`then` or
 * `else`): the path it took before if it has been here, else the new one live and the one
 * its record took on replay.
 */
function pickPatch(patch: string, keyOf: KeyOf) {
  return decideOnEntry(keyOf, (c) => {
    const known = c.patches?.[patch];
    const taken = known ?? (replayMarks ? replayMarks.has(patch) : true);
    const ctx = { ...c, patches: { ...c.patches, [patch]: taken } };
    // The marker is recorded once per run, the first time a run takes the new path.
    const out: DecisionEventBody[] = known === undefined && taken ? [{ type: 'patch.marked', data: { patch } }] : [];
    return { flow: taken ? 'then' : 'else', ctx, out };
  });
}

/** `patched(id)`: `then` (the new logic) for runs that reach it live or recorded its marker, `else` for runs that passed it before. */
export function patchState(patch: string, keyOf: KeyOf, then: Sequence, otherwise: Sequence | undefined, next: string) {
  return capstan.createStateConfig({
    initial: 'pick',
    states: {
      pick: {
        entry: pickPatch(patch, keyOf),
        always: [
          { guard: flowIs(keyOf, 'then'), target: 'then' },
          { guard: flowIs(keyOf, 'else'), target: otherwise ? 'else' : 'done' },
        ],
      },
      then: { initial: then.initial, states: { ...then.states, done: { type: 'final' } }, onDone: 'done' },
      ...(otherwise ? { else: { initial: otherwise.initial, states: { ...otherwise.states, done: { type: 'final' as const } }, onDone: 'done' } } : {}),
      done: { type: 'final' },
    },
    onDone: next,
  });
}

/**
 * `patched(id)` in a machine written by hand: a choice between two states of the author's
 * own, `then` (the new logic) and `otherwise` (the old), with exactly `patchState`'s rule and
 * marker. The choice is recorded under `keyOf`.
 */
export function patchChoiceState(patch: string, keyOf: KeyOf, then: string, otherwise: string) {
  return capstan.createStateConfig({
    entry: pickPatch(patch, keyOf),
    always: [
      { guard: flowIs(keyOf, 'then'), target: then },
      { guard: flowIs(keyOf, 'else'), target: otherwise },
    ],
  });
}

/** A durable sleep. */
export function sleepState(node: NSleep, keyOf: KeyOf, next: string, extraOf?: (c: RunContext) => Extra) {
  return capstan.createStateConfig({
    entry: enqueueActions(({ context, enqueue }) => apply(enqueue, startSleep(context, keyOf(context), node, extraOf?.(context)))),
    on: instanceOn((c, ev) => feedSleep(c, keyOf(c), ev)),
    always: ended(keyOf, next),
  });
}

/** The item number of a fan-out instance name (`<fan>-<n>`), if it is one. */
function itemOf(fanKey: string, key: string): number | undefined {
  if (!key.startsWith(`${fanKey}-`)) return undefined;
  const n = Number(key.slice(fanKey.length + 1));
  return Number.isSafeInteger(n) && n >= 1 ? n : undefined;
}

/** Starts items while fewer than `concurrency` run and the fan-in is not met. */
function refill(c: RunContext, workflowId: string, node: NFanOut, key: string, extra: Extra): Step {
  let ctx = c;
  const out: DecisionEventBody[] = [];
  const fan = ctx.fan[key];
  if (!fan) return { ctx, out };
  let next = fan.next;
  let running = fan.insts.filter((i) => i !== undefined && OPEN.has(i.phase)).length;
  // `next` is moved on before each start, so the item's instance lands in the fan-out's arrays.
  ctx = { ...ctx, fan: { ...ctx.fan, [key]: { ...fan, next: fan.next } } };
  while (next <= fan.items.length && fan.order.length < fan.need && running < node.concurrency) {
    const s = startTask(ctx, workflowId, `${key}-${next}`, node.task, { ...extra, item: fan.items[next - 1] ?? null, index: next });
    ctx = s.ctx;
    out.push(...s.out);
    next++;
    running++;
  }
  const now = ctx.fan[key] ?? fan;
  return { ctx: { ...ctx, fan: { ...ctx.fan, [key]: { ...now, next } } }, out };
}

const fanFailed = (c: RunContext, key: string) => {
  const fan = c.fan[key];
  return fan !== undefined && fan.items.length - fan.failed < fan.need;
};
const fanMet = (c: RunContext, key: string) => {
  const fan = c.fan[key];
  return fan !== undefined && fan.order.length >= fan.need;
};

/** The fan-in's result: every item's (in list order), the first one, or the first n in the order they came. */
function fanResult(c: RunContext, key: string, node: NFanOut): JsonValue {
  const fan = c.fan[key];
  if (!fan) return null;
  const of = (n: number) => fan.results[n - 1] ?? null;
  if (node.join === 'all') return fan.items.map((_, i) => of(i + 1));
  if (node.join === 'first') return of(fan.order[0] ?? 0);
  return fan.order.slice(0, fan.need).map(of);
}

/** A task once per element of a list, `concurrency` at a time, with its fan-in. */
export function fanOutState(workflowId: string, node: NFanOut, keyOf: KeyOf, next: string, extraOf?: (c: RunContext) => Extra) {
  return capstan.createStateConfig({
    entry: enqueueActions(({ context, enqueue }) => {
      const key = keyOf(context);
      const extra = extraOf?.(context) ?? {};
      const fan = context.fan[key];
      if (fan) {
        // Entered again after a retry: items that failed or were cancelled run again, done ones stay done.
        let ctx: RunContext = { ...context, fan: { ...context.fan, [key]: { ...fan, failed: 0 } } };
        const out: DecisionEventBody[] = [];
        for (let n = 1; n < fan.next; n++) {
          const phase = getInst(ctx, `${key}-${n}`)?.phase;
          if (phase === 'failed' || phase === 'cancelled') {
            const s = startTask(ctx, workflowId, `${key}-${n}`, node.task, { ...extra, item: fan.items[n - 1] ?? null, index: n });
            ctx = s.ctx;
            out.push(...s.out);
          }
        }
        const more = refill(ctx, workflowId, node, key, extra);
        apply(enqueue, { ctx: more.ctx, out: [...out, ...more.out] });
        return;
      }
      const listed = evaluate(() => node.forEach(dataOf(context)), `step ${key}: forEach`);
      const bad = (message: string) =>
        apply(enqueue, {
          ctx: { ...context, flow: { ...context.flow, [key]: 'error' }, lastError: failure(ErrorCode.WorkflowFunctionFailed, message, false), failedAt: null },
          out: [],
        });
      if (!listed.ok) return bad(listed.error.message);
      const value: unknown = listed.value;
      if (!Array.isArray(value)) return bad(`step ${key}: forEach must return an array, got ${typeof value}`);
      const items = listed.value;
      if (items.length > MAX_ITEMS) {
        return apply(enqueue, {
          ctx: {
            ...context,
            flow: { ...context.flow, [key]: 'error' },
            lastError: failure(ErrorCode.FanOutFailed, `step ${key}: ${items.length} items; a fan-out takes at most ${MAX_ITEMS}`, false),
            failedAt: null,
          },
          out: [],
        });
      }
      const need = node.join === 'all' ? items.length : node.join === 'first' ? 1 : node.join.atLeast;
      const started: Step = {
        ctx: { ...context, fan: { ...context.fan, [key]: { items: [...items], need, order: [], failed: 0, next: 1, insts: [], results: [] } } },
        out: [{ type: 'fanout.started', data: { step: key, items: items.length, concurrency: node.concurrency } }],
      };
      const filled = refill(started.ctx, workflowId, node, key, extra);
      apply(enqueue, { ctx: filled.ctx, out: [...started.out, ...filled.out] });
    }),
    on: instanceOn((c, ev) => {
      const key = keyOf(c);
      const n = itemOf(key, ev.data.step);
      const fan = c.fan[key];
      if (n === undefined || !fan || n >= fan.next) return undefined;
      const fed = feedTask(c, workflowId, ev.data.step, node.task, ev);
      if (!fed) return undefined;
      const phase = getInst(fed.ctx, ev.data.step)?.phase;
      if (phase !== 'done' && phase !== 'failed') return fed;
      // An item ended: count it, and start the next one while the fan-in still needs results.
      const now = fed.ctx.fan[key] ?? fan;
      const counted = { ...now, order: phase === 'done' ? [...now.order, n] : now.order, failed: phase === 'failed' ? now.failed + 1 : now.failed };
      const ctx: RunContext = { ...fed.ctx, fan: { ...fed.ctx.fan, [key]: counted } };
      const more = fanFailed(ctx, key) ? { ctx, out: [] } : refill(ctx, workflowId, node, key, extraOf?.(c) ?? {});
      return { ctx: more.ctx, out: [...fed.out, ...more.out] };
    }),
    always: [
      {
        guard: ({ context }) => fanMet(context, keyOf(context)),
        target: next,
        actions: enqueueActions(({ context, enqueue }) => {
          const key = keyOf(context);
          // The fan-in has what it needs: items still running are not waited for.
          const cancelled = cancelOpen(context, 'the fan-in had what it needed', (k) => itemOf(key, k) !== undefined);
          const result = fanResult(cancelled.ctx, key, node);
          apply(enqueue, { ctx: { ...cancelled.ctx, results: { ...cancelled.ctx.results, [key]: result, [node.name]: result }, last: result }, out: cancelled.out });
        }),
      },
      {
        guard: ({ context }) => context.flow[keyOf(context)] === 'error' || fanFailed(context, keyOf(context)),
        target: FAILED,
        actions: enqueueActions(({ context, enqueue }) => {
          const key = keyOf(context);
          const fan = context.fan[key];
          const error =
            context.flow[key] === 'error' || !fan || (node.join === 'all' && context.lastError)
              ? context.lastError
              : failure(ErrorCode.FanOutFailed, `step ${key}: ${fan.failed} of ${fan.items.length} items failed; the fan-in needs ${fan.need} results`, false);
          const cancelled = cancelOpen({ ...context, lastError: error }, 'the run failed');
          apply(enqueue, cancelled);
        }),
      },
    ],
  });
}

/** Evaluates a workflow function once on entry and records what it decided under the instance's name. */
function decideOnEntry(
  keyOf: KeyOf,
  decideFn: (c: RunContext, key: string) => { flow: string; out?: DecisionEventBody[]; ctx?: RunContext } | { error: ReturnType<typeof failure> },
) {
  return enqueueActions(({ context, enqueue }: { context: RunContext; enqueue: Enqueue }) => {
    const key = keyOf(context);
    const r = decideFn(context, key);
    if ('error' in r) {
      apply(enqueue, { ctx: { ...context, flow: { ...context.flow, [key]: 'error' }, lastError: r.error, failedAt: null }, out: [] });
      return;
    }
    const base = r.ctx ?? context;
    apply(enqueue, { ctx: { ...base, flow: { ...base.flow, [key]: r.flow } }, out: r.out ?? [] });
  });
}

const flowIs =
  (keyOf: KeyOf, v: string) =>
  ({ context }: { context: RunContext }) =>
    context.flow[keyOf(context)] === v;

/** A sequence's states compiled into a compound state that ends in `done`. */
export interface Sequence {
  readonly initial: string;
  readonly states: Record<string, ReturnType<typeof capstan.createStateConfig>>;
}

/** Runs the step only when `when` holds for the run's data; else records it skipped. */
export function guardedState(name: string, when: (data: RunData) => boolean, keyOf: KeyOf, inner: ReturnType<typeof capstan.createStateConfig>, next: string) {
  const checkKey: KeyOf = (c) => `${keyOf(c)}`;
  return capstan.createStateConfig({
    initial: 'check',
    states: {
      check: {
        entry: decideOnEntry(checkKey, (c, key) => {
          const r = evaluate(() => when(dataOf(c)), `step ${key}: when`);
          if (!r.ok) return { error: r.error };
          return r.value ? { flow: 'run' } : { flow: 'skip', out: [{ type: 'step.skipped', data: { step: key } }] };
        }),
        always: [
          { guard: flowIs(checkKey, 'run'), target: 'run' },
          { guard: flowIs(checkKey, 'skip'), target: 'done' },
          { guard: flowIs(checkKey, 'error'), target: FAILED, actions: failRun },
        ],
      },
      run: inner,
      done: { type: 'final' },
    },
    onDone: next,
    // The name is for readers of the machine only.
    meta: { step: name },
  });
}

/** Branches that run at once; done when every branch is. */
export function parallelState(branches: readonly Sequence[], next: string) {
  return capstan.createStateConfig({
    type: 'parallel',
    states: Object.fromEntries(branches.map((b, i) => [`branch_${i + 1}`, { initial: b.initial, states: { ...b.states, done: { type: 'final' as const } } }])),
    onDone: next,
  });
}

/** A condition on the run's data: `then` or `else`, with the choice on the record. */
export function branchState(test: (data: RunData) => boolean, keyOf: KeyOf, then: Sequence, otherwise: Sequence | undefined, next: string) {
  return capstan.createStateConfig({
    initial: 'pick',
    states: {
      pick: {
        entry: decideOnEntry(keyOf, (c, key) => {
          const r = evaluate(() => test(dataOf(c)), `step ${key}: if`);
          if (!r.ok) return { error: r.error };
          const branch = r.value ? 'then' : 'else';
          return { flow: branch, out: [{ type: 'branch.taken', data: { step: key, branch } }] };
        }),
        always: [
          { guard: flowIs(keyOf, 'then'), target: 'then' },
          { guard: flowIs(keyOf, 'else'), target: otherwise ? 'else' : 'done' },
          { guard: flowIs(keyOf, 'error'), target: FAILED, actions: failRun },
        ],
      },
      then: { initial: then.initial, states: { ...then.states, done: { type: 'final' } }, onDone: 'done' },
      ...(otherwise ? { else: { initial: otherwise.initial, states: { ...otherwise.states, done: { type: 'final' as const } }, onDone: 'done' } } : {}),
      done: { type: 'final' },
    },
    onDone: next,
  });
}

/** A bounded loop: the body, then `until`; again while it does not hold, at most `max` times. */
export function loopState(until: (data: RunData) => boolean, max: number, keyOf: KeyOf, body: Sequence, next: string) {
  const iteration = (c: RunContext, key: string): Step => ({
    ctx: { ...c, iter: { ...c.iter, [key]: (c.iter[key] ?? 0) + 1 } },
    out: [{ type: 'loop.iteration', data: { step: key, iteration: (c.iter[key] ?? 0) + 1 } }],
  });
  return capstan.createStateConfig({
    initial: 'iterate',
    states: {
      iterate: {
        // The first entry starts iteration 1; entering again after a retry resumes the same one.
        entry: enqueueActions(({ context, enqueue }) => {
          const key = keyOf(context);
          if (context.iter[key] === undefined) apply(enqueue, iteration(context, key));
        }),
        initial: body.initial,
        states: { ...body.states, done: { type: 'final' } },
        onDone: 'check',
      },
      check: {
        entry: decideOnEntry(keyOf, (c, key) => {
          const r = evaluate(() => until(dataOf(c)), `step ${key}: until`);
          if (!r.ok) return { error: r.error };
          if (r.value) return { flow: 'exit' };
          const n = c.iter[key] ?? 1;
          if (n >= max) return { error: failure(ErrorCode.LoopLimit, `step ${key}: ${max} iteration(s) ran and its exit condition never held`, false) };
          const next = iteration(c, key);
          return { flow: 'again', ctx: next.ctx, out: [...next.out] };
        }),
        always: [
          { guard: flowIs(keyOf, 'exit'), target: 'done' },
          { guard: flowIs(keyOf, 'again'), target: 'iterate' },
          { guard: flowIs(keyOf, 'error'), target: FAILED, actions: failRun },
        ],
      },
      done: { type: 'final' },
    },
    onDone: next,
  });
}

/** Whether a failed run can be retried, and why not. */
export function retryRefusal(c: RunContext, maxAttemptsOf: (node: string) => number | undefined): string | undefined {
  if (c.lastError?.code === ErrorCode.EventCapReached) return 'it ended at its event cap; continue its work in a new run';
  const key = c.failedAt;
  const i = key ? getInst(c, key) : undefined;
  if (!key || !i) return `it failed with ${c.lastError?.code ?? 'an error'} outside any step, and would fail the same way again`;
  const max = i.kind === 'task' || i.kind === 'child' ? (maxAttemptsOf(i.node) ?? 1) : 1;
  const last = i.attempt + max;
  if (last > 1000 || !TOKEN_PATTERN.test(`${key}-a${last}-approval-99`)) return `step ${key} has used ${i.attempt} attempts; no attempt numbers are left for another round`;
  return undefined;
}

/**
 * Wraps a workflow's states into a run machine: the states run inside `active`; a cancel or
 * a failure cancels every open instance; `failed` waits (tagged, not final) for a person's
 * retry, which resumes the states the run was in (a deep history), each starting again what
 * had not finished.
 */
export function workflowMachine(
  id: string,
  seq: Sequence,
  opts: {
    readonly signalOf: (node: string) => string | undefined;
    readonly maxAttemptsOf: (node: string) => number | undefined;
    /** At the event cap, continue as new (with this input of the run's data) rather than fail. */
    readonly continueAtCap?: (data: RunData) => { readonly [k: string]: JsonValue };
  },
) {
  const atCap = opts.continueAtCap;
  return capstan.createMachine({
    id,
    context: ({ input }) => initialContext(input ?? {}),
    initial: 'ready',
    states: {
      ready: {
        on: {
          [START]: {
            target: 'active',
            // The run's id and engine, for the ids of the runs it starts (children, its continuation).
            actions: enqueueActions(({ context, event, enqueue }) => {
              if (event.type !== START || event.runId === undefined) return;
              apply(enqueue, { ctx: { ...context, runId: event.runId, ...(event.engine === undefined ? {} : { engine: event.engine }) }, out: [] });
            }),
          },
        },
      },
      active: {
        initial: seq.initial,
        states: { ...seq.states, done: { type: 'final' }, resume: { type: 'history', history: 'deep' } },
        onDone: 'completed',
        on: {
          'run.cancel-requested': { target: 'cancelled', actions: enqueueActions(({ context, enqueue }) => apply(enqueue, cancelOpen(context, 'the run was cancelled'))) },
          'run.signaled': {
            actions: enqueueActions(({ context, event, enqueue }) => apply(enqueue, deliverSignal(context, event.data.name, event.data.payload ?? null, opts.signalOf))),
          },
          [EVENT_CAP]: [
            {
              guard: ({ context }) => atCap !== undefined && context.runId !== undefined && evaluate(() => atCap(dataOf(context)), 'continueInput').ok,
              target: 'continued',
              actions: enqueueActions(({ context, enqueue }) => {
                const r = evaluate(() => atCap?.(dataOf(context)) ?? context.input, 'continueInput');
                const input = r.ok && r.value !== null && typeof r.value === 'object' && !Array.isArray(r.value) ? r.value : context.input;
                const cont = continued(context, input, 'event-cap', 'the run reached its event cap and continued as new');
                if (!('error' in cont)) apply(enqueue, cont);
              }),
            },
            {
              target: 'failed',
              actions: enqueueActions(({ context, enqueue }) => {
                const error = failure(ErrorCode.EventCapReached, 'the run reached its event cap and was ended; continue its work in a new run', false);
                apply(enqueue, cancelOpen({ ...context, lastError: error, failedAt: null }, 'the run reached its event cap'));
              }),
            },
          ],
        },
      },
      failed: {
        id: 'capstan-failed',
        tags: ['failed'],
        entry: { type: 'decide', params: ({ context }) => ({ type: 'run.failed', data: failedData(context) }) },
        on: {
          'run.retried': {
            guard: ({ context }) => retryRefusal(context, opts.maxAttemptsOf) === undefined,
            target: 'active.resume',
            actions: enqueueActions(({ context, enqueue }) => apply(enqueue, { ctx: { ...context, lastError: null, flow: {} }, out: [] })),
          },
        },
      },
      completed: { type: 'final', tags: ['completed'], entry: { type: 'decide', params: ({ context }) => ({ type: 'run.completed', data: { output: context.last } }) } },
      // Continued as new: the run completed, its output names its successor.
      continued: {
        id: 'capstan-continued',
        type: 'final',
        tags: ['completed'],
        entry: { type: 'decide', params: ({ context }) => ({ type: 'run.completed', data: { output: context.last } }) },
      },
      cancelled: {
        type: 'final',
        tags: ['cancelled'],
        entry: {
          type: 'decide',
          params: ({ event }) => ({ type: 'run.cancelled', data: event.type === 'run.cancel-requested' && event.data.reason !== undefined ? { reason: event.data.reason } : {} }),
        },
      },
    },
  });
}

function failedData(c: RunContext): RunEventData<'run.failed'> {
  const error = c.lastError ?? failure(ErrorCode.StepFailed, 'step failed', false);
  return c.failedAt ? { error, step: c.failedAt } : { error };
}

export type { Instance };

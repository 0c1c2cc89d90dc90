/**
 * `defineWorkflow`: a workflow is a versioned tree of steps (tasks, waits for signals, sleeps,
 * parallel branches, fan-outs, branches, bounded loops, child workflows, continue-as-new,
 * `patched` markers), or an XState machine written with
 * Capstan's state helpers (`engine/v2/states.ts`). Either way the current engine compiles it
 * to an XState v5 machine; the definition keeps what every engine needs, so a run replays
 * through the engine it recorded (`machineFor`).
 *
 * Functions in a definition (`when`, `if`, `forEach`, `until`, sleep `until`) are part of the
 * workflow's logic: they must be pure functions of the run's data (its input and the results
 * so far), since replay calls them again. Changing one is a new version (or a `patched` id).
 */
import type { AnyStateMachine } from 'xstate';
import type { JsonValue, SandboxSpec, StandardSchemaV1 } from '@capstan/schemas';
import { InvalidWorkflowError, isStandardSchema, MAX_RUN_EVENTS, Mode, sandboxSpecSchema, SEARCH_KEY_PATTERN, TimerKind, TOKEN_PATTERN } from '@capstan/schemas';
import { compileV2 } from './engine/v2/compile.js';
import { CURRENT_ENGINE } from './engine/current.js';
import { compileSteps, DEFAULT_POOL, DEFAULT_RETRY, DEFAULT_TIMEOUT_MS, timerId, type NormalisedStep, type RetryPolicy } from './engine/v1/compile.js';

/** What a workflow's functions see: the run's input and every result so far, by step name. */
export interface RunData<I = { readonly [k: string]: JsonValue }> {
  readonly input: I;
  readonly results: Readonly<Record<string, JsonValue>>;
}

interface Node {
  readonly name: string;
  /** Run the step only when this holds (else it is recorded as skipped). */
  readonly when?: (data: RunData) => boolean;
}

/** A step a worker executes. */
export interface TaskStep extends Node {
  /** Registered handler name; defaults to `<workflowId>.<name>`. */
  readonly handler?: string;
  /** Execution mode: 0 inline in the worker (default); 1–3 in a sandbox, which `sandbox` describes. */
  readonly mode?: Mode;
  /** What runs in the sandbox (modes 1–3 only). Recorded on the run with every attempt. */
  readonly sandbox?: SandboxSpec;
  /** Worker pool (capability label) that may run it. Default `default`. */
  readonly pool?: string;
  /** Per-attempt timeout, enforced by the worker and by a durable timer. Default 5 min. */
  readonly timeoutMs?: number;
  readonly retry?: Partial<RetryPolicy>;
  /** The result's schema (Standard Schema): the worker checks every result against it. */
  readonly result?: StandardSchemaV1;
}

/**
 * A step that waits until the run receives the named signal (one that arrived earlier is
 * kept and taken at once); its payload is the step's result. A person's approve or deny
 * decides it too. With `timeoutMs`, the wait ends then: the run fails (`signal_timeout`) or,
 * with `onTimeout: 'continue'`, the step's result is `{ timedOut: true }`.
 */
export interface SignalStep extends Node {
  readonly signal: string;
  readonly timeoutMs?: number;
  readonly onTimeout?: 'fail' | 'continue';
}

/** A durable sleep: `ms` from when it is reached, or until a point in time (epoch ms) from the run's data. */
export interface SleepStep extends Node {
  readonly sleep: { readonly ms: number } | { readonly until: (data: RunData) => number };
}

/** Branches that run at once; the step ends when every branch has. */
export interface ParallelStep extends Node {
  readonly parallel: readonly (readonly StepDefinition[])[];
}

/**
 * A task run once per element of a list (taken from the input or earlier results), at most
 * `concurrency` at a time. Item i runs as the step `<name>-<i>` and sees `item` and `index`.
 * Fan-in: `all` (default; the result is every item's result, in list order), `first` (the
 * first result; the others are cancelled) or `{ atLeast: n }` (the first n results, in the
 * order they came; the rest are cancelled). The fan-out fails once its fan-in cannot be met.
 */
export interface FanOutStep extends Node {
  readonly forEach: (data: RunData) => readonly JsonValue[];
  readonly concurrency?: number;
  readonly join?: 'all' | 'first' | { readonly atLeast: number };
  /** How each item runs (handler defaults to `<workflowId>.<name>`). */
  readonly run?: Omit<TaskStep, 'name' | 'when'>;
}

/** A condition on earlier results: `then` runs when it holds, else `else` (if any). */
export interface BranchStep extends Node {
  readonly if: (data: RunData) => boolean;
  readonly then: readonly StepDefinition[];
  readonly else?: readonly StepDefinition[];
}

/**
 * The body again and again until `until` holds after an iteration, at most `maxIterations`
 * times (then the run fails with `loop_limit`). Iteration i's steps run as `<name>-<i>` and
 * `results[<name>]` is always the latest one.
 */
export interface LoopStep extends Node {
  readonly loop: readonly StepDefinition[];
  readonly until: (data: RunData) => boolean;
  readonly maxIterations: number;
}

/**
 * A child workflow: a run of workflow `child` (its latest version), in the same tenant, started
 * with `input` (default: this run's input) and awaited; its output is the step's result, its
 * failure fails the step, which `retry` may start again (a new child per attempt). The child's
 * run id is derived from this run's id, the step and the attempt, so it is started once. When
 * this run ends first (cancelled, failed elsewhere, continued as new), `parentClose` says
 * what happens to the child: `cancel` (default) or `abandon` (it runs on, unawaited).
 */
export interface ChildStep extends Node {
  readonly child: string;
  readonly input?: (data: RunData) => { readonly [k: string]: JsonValue };
  readonly parentClose?: 'cancel' | 'abandon';
  readonly retry?: Partial<RetryPolicy>;
}

/**
 * Continue-as-new: the run ends here and a fresh run of the same workflow (its latest
 * version) starts with the input this returns, its id derived from this run's and recorded
 * in `run.continued`. For long loops: the new run starts with an empty history.
 */
export interface ContinueStep extends Node {
  readonly continueAsNew: (data: RunData) => { readonly [k: string]: JsonValue };
}

/**
 * New logic guarded by a patch id (`patched(id)`): a run that reaches it takes `then` and
 * records the marker `patch.marked` the first time; a run whose history passed this point
 * before the patch existed (no marker recorded) takes `else` (the old steps, or none) on
 * replay. Lets a version's in-flight runs take new logic safely, without a new version.
 */
export interface PatchStep extends Node {
  readonly patched: string;
  readonly then: readonly StepDefinition[];
  readonly else?: readonly StepDefinition[];
}

export type StepDefinition = TaskStep | SignalStep | SleepStep | ParallelStep | FanOutStep | BranchStep | LoopStep | ChildStep | ContinueStep | PatchStep;

export interface WorkflowSpec {
  readonly id: string;
  readonly version: number;
  /**
   * Input keys recorded on the run for queries (at most 8): the projections index their
   * values, so "failed runs of this workflow with customer=42" is one indexed lookup.
   */
  readonly searchKeys?: readonly string[];
  /** The input's schema (Standard Schema: zod, valibot, …), checked at submit. */
  readonly input?: StandardSchemaV1;
  readonly steps?: readonly StepDefinition[];
  /** A hand-written machine (see `workflowMachine` and the state helpers): instead of `steps`. */
  readonly machine?: AnyStateMachine;
  /** Events one run may record, at most (and by default) 10,000; a run reaching it fails with `event_cap_reached`. */
  readonly maxEvents?: number;
  /**
   * At the event cap: `fail` (default; `event_cap_reached`) or `continue-as-new`, which ends
   * the run and continues it in a fresh one, with `continueInput` of the run's data (default:
   * the run's own input).
   */
  readonly onEventCap?: 'fail' | 'continue-as-new';
  readonly continueInput?: (data: RunData) => { readonly [k: string]: JsonValue };
}

export type NTask = {
  readonly kind: 'task';
  readonly name: string;
  readonly handler: string;
  readonly mode: Mode;
  readonly pool: string;
  readonly timeoutMs: number;
  readonly retry: RetryPolicy;
  readonly sandbox?: SandboxSpec;
  readonly when?: (data: RunData) => boolean;
};
export type NSignal = {
  readonly kind: 'signal';
  readonly name: string;
  readonly signal: string;
  readonly timeoutMs?: number;
  readonly onTimeout?: 'fail' | 'continue';
  readonly when?: (data: RunData) => boolean;
};
export type NSleep = {
  readonly kind: 'sleep';
  readonly name: string;
  readonly ms?: number;
  readonly until?: (data: RunData) => number;
  readonly when?: (data: RunData) => boolean;
};
export type NParallel = { readonly kind: 'parallel'; readonly name: string; readonly branches: readonly (readonly NNode[])[]; readonly when?: (data: RunData) => boolean };
export type NFanOut = {
  readonly kind: 'fanout';
  readonly name: string;
  readonly forEach: (data: RunData) => readonly JsonValue[];
  readonly concurrency: number;
  readonly join: 'all' | 'first' | { readonly atLeast: number };
  readonly task: NTask;
  readonly when?: (data: RunData) => boolean;
};
export type NBranch = {
  readonly kind: 'branch';
  readonly name: string;
  readonly test: (data: RunData) => boolean;
  readonly then: readonly NNode[];
  readonly else: readonly NNode[];
  readonly when?: (data: RunData) => boolean;
};
export type NLoop = {
  readonly kind: 'loop';
  readonly name: string;
  readonly body: readonly NNode[];
  readonly until: (data: RunData) => boolean;
  readonly max: number;
  readonly when?: (data: RunData) => boolean;
};
export type NChild = {
  readonly kind: 'child';
  readonly name: string;
  readonly workflow: string;
  readonly input?: (data: RunData) => { readonly [k: string]: JsonValue };
  readonly parentClose: 'cancel' | 'abandon';
  readonly retry: RetryPolicy;
  readonly when?: (data: RunData) => boolean;
};
export type NContinue = {
  readonly kind: 'continue';
  readonly name: string;
  readonly input: (data: RunData) => { readonly [k: string]: JsonValue };
  readonly when?: (data: RunData) => boolean;
};
export type NPatch = {
  readonly kind: 'patch';
  readonly name: string;
  readonly patch: string;
  readonly then: readonly NNode[];
  readonly else: readonly NNode[];
  readonly when?: (data: RunData) => boolean;
};
/** A step of the definition tree, with every default filled in. */
export type NNode = NTask | NSignal | NSleep | NParallel | NFanOut | NBranch | NLoop | NChild | NContinue | NPatch;

export interface WorkflowDefinition<S extends WorkflowSpec = WorkflowSpec> {
  /** The spec it was defined from, for the type checker only (handler binding). */
  readonly spec?: S;
  readonly id: string;
  readonly version: number;
  readonly searchKeys: readonly string[];
  readonly input?: StandardSchemaV1;
  /** The step tree, when the workflow was defined by steps. */
  readonly nodes?: readonly NNode[];
  /** Normalised steps, when the workflow is a plain sequence of tasks and signal waits (what engine 1 can run). */
  readonly steps?: readonly NormalisedStep[];
  readonly maxEvents: number;
  readonly onEventCap: 'fail' | 'continue-as-new';
  readonly continueInput?: (data: RunData) => { readonly [k: string]: JsonValue };
  /** The handler names its mode-0 steps schedule: what a worker serving it must have. */
  readonly handlers: readonly string[];
  /** Result schemas by task name. */
  readonly resultSchemas: ReadonlyMap<string, StandardSchemaV1>;
  /** The machine the current engine runs. */
  readonly machine: AnyStateMachine;
  /**
   * The workflow compiled by the given engine: every engine that ever recorded a run stays.
   * @throws InvalidWorkflowError when that engine cannot run this definition
   */
  machineFor(engine: number): AnyStateMachine;
}

export { DEFAULT_RETRY, DEFAULT_TIMEOUT_MS, DEFAULT_POOL };
export type { RetryPolicy, NormalisedStep };

const WORKFLOW_ID = /^[a-z0-9][a-z0-9._-]{0,127}$/;
/** A fan-out takes at most this many items, so its steps' names stay short subject tokens. */
export const MAX_FANOUT_ITEMS = 10_000;
const MAX_LOOP_ITERATIONS = 10_000;

/**
 * Defines a workflow version. Definitions are immutable: a change of behaviour is a new
 * version, and old versions stay registered so their runs replay.
 * @throws InvalidWorkflowError on a malformed definition
 * @example
 * defineWorkflow({ id: 'billing.invoice', version: 1, steps: [
 *   { name: 'fetch', timeoutMs: 30_000, retry: { maxAttempts: 5 } },
 *   { name: 'lines', forEach: ({ results }) => (results['fetch'] as { ids: string[] }).ids, concurrency: 8 },
 *   { name: 'approve', signal: 'approve', timeoutMs: 86_400_000 },
 *   { name: 'render' },
 * ] });
 */
export function defineWorkflow<const S extends WorkflowSpec>(spec: S): WorkflowDefinition<S> {
  const { id, version } = spec;
  if (!WORKFLOW_ID.test(id)) throw new InvalidWorkflowError(id, `id must match ${WORKFLOW_ID.source}`);
  if (!Number.isSafeInteger(version) || version < 1) throw new InvalidWorkflowError(id, 'version must be a positive integer');
  const searchKeys = Object.freeze([...(spec.searchKeys ?? [])]);
  if (searchKeys.length > 8 || searchKeys.some((k) => !SEARCH_KEY_PATTERN.test(k)) || new Set(searchKeys).size !== searchKeys.length) {
    throw new InvalidWorkflowError(id, 'searchKeys must be at most 8 distinct keys matching ^[a-z0-9][a-z0-9_-]{0,63}$');
  }
  if (spec.input !== undefined && !isStandardSchema(spec.input)) throw new InvalidWorkflowError(id, '`input` must be a Standard Schema (zod, valibot, …)');
  const maxEvents = spec.maxEvents ?? MAX_RUN_EVENTS;
  if (!Number.isSafeInteger(maxEvents) || maxEvents < 16 || maxEvents > MAX_RUN_EVENTS) throw new InvalidWorkflowError(id, `maxEvents must be 16..${MAX_RUN_EVENTS}`);
  const onEventCap = spec.onEventCap ?? 'fail';
  if (onEventCap !== 'fail' && onEventCap !== 'continue-as-new') throw new InvalidWorkflowError(id, 'onEventCap must be fail or continue-as-new');
  if (spec.continueInput !== undefined && typeof spec.continueInput !== 'function') throw new InvalidWorkflowError(id, "continueInput must be a function of the run's data");
  const common = {
    id,
    version,
    searchKeys,
    maxEvents,
    onEventCap,
    ...(spec.continueInput ? { continueInput: spec.continueInput } : {}),
    ...(spec.input ? { input: spec.input } : {}),
  };
  if (spec.machine) {
    if (spec.steps) throw new InvalidWorkflowError(id, 'give steps or a machine, not both');
    const machine = spec.machine;
    return Object.freeze({ ...common, handlers: [], resultSchemas: new Map(), machine, machineFor: () => machine }) as WorkflowDefinition<S>;
  }
  if (!spec.steps || spec.steps.length === 0) throw new InvalidWorkflowError(id, 'needs at least one step');
  const resultSchemas = new Map<string, StandardSchemaV1>();
  const nodes = Object.freeze(spec.steps.map((s) => normaliseNode(id, s, resultSchemas, '')));
  checkNames(id, nodes);
  // Engine 1 ran plain sequences of tasks and signal waits; keep what it compiles from.
  const sequence = nodes.every((n) => (n.kind === 'task' && !n.when) || (n.kind === 'signal' && !n.when && n.timeoutMs === undefined));
  const steps = sequence ? Object.freeze(nodes.map(toV1Step)) : undefined;
  const machines = new Map<number, AnyStateMachine>();
  const def: WorkflowDefinition = {
    ...common,
    handlers: Object.freeze(handlersOf(nodes)),
    nodes,
    ...(steps ? { steps } : {}),
    resultSchemas,
    get machine() {
      return this.machineFor(CURRENT_ENGINE);
    },
    machineFor(engine: number) {
      let m = machines.get(engine);
      if (m) return m;
      if (engine === 1) {
        if (!steps) throw new InvalidWorkflowError(id, 'engine 1 runs only plain sequences of tasks and signal waits');
        m = compileSteps(id, version, steps);
      } else if (engine === 2 || engine === 3) {
        // Engine 3 decides as engine 2 but for the ids of the runs a run starts, which the run
        // core tells the machine on start (`START`): one machine serves both.
        m = engine === 3 ? def.machineFor(2) : compileV2(def);
      } else {
        throw new InvalidWorkflowError(id, `engine ${engine} is not known to this build (it knows 1..${CURRENT_ENGINE})`);
      }
      machines.set(engine, m);
      return m;
    },
  };
  // Compile now: a definition the compiler refuses fails at load, not at a run's first step.
  void def.machine;
  return Object.freeze(def) as WorkflowDefinition<S>;
}

export { CURRENT_ENGINE };

function toV1Step(n: NNode): NormalisedStep {
  if (n.kind === 'signal') return { kind: 'signal', name: n.name, signal: n.signal };
  if (n.kind !== 'task') throw new Error('unreachable: not a sequence');
  const { when: _when, ...task } = n;
  return task;
}

const bad = (id: string, why: string) => new InvalidWorkflowError(id, why);

function normaliseNode(id: string, s: StepDefinition, results: Map<string, StandardSchemaV1>, path: string): NNode {
  if (!TOKEN_PATTERN.test(s.name)) throw bad(id, `step name ${JSON.stringify(s.name)} must match ${TOKEN_PATTERN.source}`);
  const when = s.when === undefined ? {} : { when: fn(id, s.name, 'when', s.when) };
  if ('signal' in s) {
    if (!TOKEN_PATTERN.test(s.signal)) throw bad(id, `signal ${JSON.stringify(s.signal)} must match ${TOKEN_PATTERN.source}`);
    if (s.timeoutMs !== undefined && (!Number.isSafeInteger(s.timeoutMs) || s.timeoutMs < 1)) throw bad(id, `step ${s.name}: timeoutMs must be a positive integer`);
    if (s.onTimeout !== undefined && s.onTimeout !== 'fail' && s.onTimeout !== 'continue') throw bad(id, `step ${s.name}: onTimeout must be fail or continue`);
    return { kind: 'signal', name: s.name, signal: s.signal, ...(s.timeoutMs !== undefined ? { timeoutMs: s.timeoutMs, onTimeout: s.onTimeout ?? 'fail' } : {}), ...when };
  }
  if ('sleep' in s) {
    const sl = s.sleep;
    if ('ms' in sl) {
      if (!Number.isSafeInteger(sl.ms) || sl.ms < 0) throw bad(id, `step ${s.name}: sleep.ms must be a non-negative integer`);
      return { kind: 'sleep', name: s.name, ms: sl.ms, ...when };
    }
    return { kind: 'sleep', name: s.name, until: fn(id, s.name, 'sleep.until', sl.until), ...when };
  }
  if ('parallel' in s) {
    if (s.parallel.length < 1) throw bad(id, `step ${s.name}: parallel needs at least one branch`);
    const branches = s.parallel.map((b, i) => {
      if (b.length === 0) throw bad(id, `step ${s.name}: branch ${i + 1} is empty`);
      return Object.freeze(b.map((x: StepDefinition) => normaliseNode(id, x, results, path)));
    });
    return { kind: 'parallel', name: s.name, branches, ...when };
  }
  if ('child' in s) {
    if (!WORKFLOW_ID.test(s.child)) throw bad(id, `step ${s.name}: child must be a workflow id matching ${WORKFLOW_ID.source}`);
    const parentClose = s.parentClose ?? 'cancel';
    if (parentClose !== 'cancel' && parentClose !== 'abandon') throw bad(id, `step ${s.name}: parentClose must be cancel or abandon`);
    const retry = checkRetry(id, s.name, { ...DEFAULT_RETRY, ...s.retry });
    if (!TOKEN_PATTERN.test(timerId(s.name, retry.maxAttempts, TimerKind.Retry))) throw bad(id, `step ${s.name}: name is too long for its timer ids (${TOKEN_PATTERN.source})`);
    return { kind: 'child', name: s.name, workflow: s.child, parentClose, retry, ...(s.input === undefined ? {} : { input: fn(id, s.name, 'input', s.input) }), ...when };
  }
  if ('continueAsNew' in s) {
    return { kind: 'continue', name: s.name, input: fn(id, s.name, 'continueAsNew', s.continueAsNew), ...when };
  }
  if ('patched' in s) {
    if (!TOKEN_PATTERN.test(s.patched)) throw bad(id, `step ${s.name}: patched must be an id matching ${TOKEN_PATTERN.source}`);
    const then = Object.freeze(s.then.map((x) => normaliseNode(id, x, results, path)));
    const otherwise = Object.freeze((s.else ?? []).map((x) => normaliseNode(id, x, results, path)));
    if (then.length === 0) throw bad(id, `step ${s.name}: then needs at least one step`);
    return { kind: 'patch', name: s.name, patch: s.patched, then, else: otherwise, ...when };
  }
  if ('forEach' in s) {
    const concurrency = s.concurrency ?? 10;
    if (!Number.isSafeInteger(concurrency) || concurrency < 1 || concurrency > MAX_FANOUT_ITEMS) throw bad(id, `step ${s.name}: concurrency must be 1..${MAX_FANOUT_ITEMS}`);
    const join = s.join ?? 'all';
    if (typeof join === 'object' && (!Number.isSafeInteger(join.atLeast) || join.atLeast < 1)) throw bad(id, `step ${s.name}: join.atLeast must be a positive integer`);
    if (typeof join !== 'object' && join !== 'all' && join !== 'first') throw bad(id, `step ${s.name}: join must be all, first or { atLeast: n }`);
    const task = normaliseTask(id, { ...s.run, name: s.name }, results);
    return { kind: 'fanout', name: s.name, forEach: fn(id, s.name, 'forEach', s.forEach), concurrency, join, task, ...when };
  }
  if ('if' in s) {
    const then = Object.freeze(s.then.map((x) => normaliseNode(id, x, results, path)));
    const otherwise = Object.freeze((s.else ?? []).map((x) => normaliseNode(id, x, results, path)));
    if (then.length === 0) throw bad(id, `step ${s.name}: then needs at least one step`);
    return { kind: 'branch', name: s.name, test: fn(id, s.name, 'if', s.if), then, else: otherwise, ...when };
  }
  if ('loop' in s) {
    if (!Number.isSafeInteger(s.maxIterations) || s.maxIterations < 1 || s.maxIterations > MAX_LOOP_ITERATIONS)
      throw bad(id, `step ${s.name}: maxIterations must be 1..${MAX_LOOP_ITERATIONS}`);
    if (s.loop.length === 0) throw bad(id, `step ${s.name}: the loop body needs at least one step`);
    const body = Object.freeze(s.loop.map((x) => normaliseNode(id, x, results, `${path}-99999`)));
    return { kind: 'loop', name: s.name, body, until: fn(id, s.name, 'until', s.until), max: s.maxIterations, ...when };
  }
  return { ...normaliseTask(id, s, results), ...when };
}

function fn<F>(id: string, step: string, what: string, f: F): F {
  if (typeof f !== 'function') throw bad(id, `step ${step}: ${what} must be a function of the run's data`);
  return f;
}

function normaliseTask(id: string, s: Omit<TaskStep, 'when'>, results: Map<string, StandardSchemaV1>): NTask {
  const retry = checkRetry(id, s.name, { ...DEFAULT_RETRY, ...s.retry });
  const mode = s.mode ?? Mode.Inline;
  const pool = s.pool ?? DEFAULT_POOL;
  const timeoutMs = s.timeoutMs ?? DEFAULT_TIMEOUT_MS;
  if (!Number.isSafeInteger(timeoutMs) || timeoutMs < 1) throw bad(id, `step ${s.name}: timeoutMs must be a positive integer`);
  if (!TOKEN_PATTERN.test(pool)) throw bad(id, `step ${s.name}: pool must match ${TOKEN_PATTERN.source}`);
  if (![0, 1, 2, 3].includes(mode)) throw bad(id, `step ${s.name}: mode must be 0, 1, 2 or 3`);
  const handler = s.handler ?? `${id}.${s.name}`;
  // What the step.scheduled / timer.scheduled schemas accept, checked here rather than at run time.
  if (handler.length < 1 || handler.length > 128) throw bad(id, `step ${s.name}: handler must have 1..128 characters`);
  if (
    !TOKEN_PATTERN.test(timerId(s.name, retry.maxAttempts, TimerKind.Timeout)) ||
    (mode !== Mode.Inline && !TOKEN_PATTERN.test(`${timerId(s.name, retry.maxAttempts, TimerKind.Policy)}-99`))
  ) {
    throw bad(id, `step ${s.name}: name is too long for its timer ids (${TOKEN_PATTERN.source})`);
  }
  const sandbox = s.sandbox === undefined ? undefined : checkSandbox(id, s.name, mode, s.sandbox);
  if (mode !== Mode.Inline && !sandbox) throw bad(id, `step ${s.name}: mode ${mode} needs a \`sandbox\` (a command, or an agent and a task)`);
  if (s.result !== undefined) {
    if (!isStandardSchema(s.result)) throw bad(id, `step ${s.name}: result must be a Standard Schema`);
    results.set(s.name, s.result);
  }
  return { kind: 'task', name: s.name, handler, mode, pool, timeoutMs, retry, ...(sandbox ? { sandbox } : {}) };
}

function checkRetry(id: string, step: string, retry: RetryPolicy): RetryPolicy {
  if (!Number.isSafeInteger(retry.maxAttempts) || retry.maxAttempts < 1 || retry.maxAttempts > 1000) {
    throw bad(id, `step ${step}: retry.maxAttempts must be 1..1000`);
  }
  if (
    !(retry.initialIntervalMs >= 0) ||
    !(retry.backoffCoefficient >= 1) ||
    !Number.isFinite(retry.backoffCoefficient) ||
    !(retry.maxIntervalMs >= retry.initialIntervalMs) ||
    // Every delay is recorded as a safe integer (timer.scheduled.delayMs).
    !(retry.maxIntervalMs <= Number.MAX_SAFE_INTEGER)
  ) {
    throw bad(id, `step ${step}: retry intervals must be >= 0, coefficient >= 1, max >= initial`);
  }
  return retry;
}

/** The sandbox rules a definition can be held to before any run starts. */
function checkSandbox(id: string, step: string, mode: Mode, raw: SandboxSpec): SandboxSpec {
  let spec: SandboxSpec;
  try {
    spec = sandboxSpecSchema.parse(raw, `step ${step}.sandbox`);
  } catch (e) {
    throw new InvalidWorkflowError(id, (e as Error).message);
  }
  const no = (why: string) => bad(id, `step ${step}: ${why}`);
  if (mode === Mode.Inline) throw no('a mode-0 step runs in the worker; `sandbox` needs mode 1, 2 or 3');
  if (spec.jit && mode !== Mode.Agent) throw no('`sandbox.jit` (credentials asked for at run time) needs mode 3');
  if (mode === Mode.Agent) {
    // An agent adapter on a task, or a CLI agent given as a command.
    if (spec.agent ? !spec.task || spec.command : !spec.command?.length) throw no('mode 3 needs `sandbox.agent` (an adapter name) and `sandbox.task`, or a `sandbox.command`');
  } else {
    if (!spec.command || spec.command.length === 0) throw no(`mode ${mode} needs \`sandbox.command\``);
    if (spec.agent) throw no('`sandbox.agent` needs mode 3');
  }
  // Mode 1 is the untrusted-code mode: no credentials, no network, whatever the step asks.
  if (mode === Mode.Sandboxed && (spec.secrets?.length || spec.egress?.length)) throw no('mode 1 has no secrets and no egress; use mode 2');
  if (mode === Mode.SandboxedWithLease && !spec.secrets?.length) throw no('mode 2 needs `sandbox.secrets` (key names)');
  return spec;
}

/**
 * Names are unique in the whole tree, and the names steps run under (`<name>-<iteration>`
 * in a loop, `<name>-<item>` in a fan-out) are subject tokens that no other step can take.
 */
function checkNames(id: string, nodes: readonly NNode[]): void {
  const all: { name: string; suffixes: number }[] = [];
  const walk = (ns: readonly NNode[], depth: number) => {
    for (const n of ns) {
      all.push({ name: n.name, suffixes: depth + (n.kind === 'fanout' ? 1 : 0) });
      if (n.kind === 'parallel') n.branches.forEach((b) => walk(b, depth));
      else if (n.kind === 'branch' || n.kind === 'patch') {
        walk(n.then, depth);
        walk(n.else, depth);
      } else if (n.kind === 'loop') walk(n.body, depth + 1);
    }
  };
  walk(nodes, 0);
  const names = new Set<string>();
  for (const { name, suffixes } of all) {
    if (names.has(name)) throw bad(id, `step names must be unique; ${JSON.stringify(name)} appears twice`);
    names.add(name);
    // The longest id a step's timers can get inside loops and fan-outs: every suffix at its
    // widest, the widest timer kind. (A step outside them is held to its own timers' ids.)
    if (suffixes === 0) continue;
    const widest = `${name}${'-99999'.repeat(suffixes)}-a1000-approval-99`;
    if (!TOKEN_PATTERN.test(widest)) throw bad(id, `step ${name}: name is too long for the ids its runs make (${widest.length} > 64 characters)`);
  }
  for (const { name, suffixes } of all) {
    if (suffixes === 0) continue;
    const taken = [...names].find((other) => other !== name && new RegExp(`^${name.replace(/[-_]/g, '\\$&')}(-\\d+)+$`).test(other));
    if (taken) throw bad(id, `step ${taken} would collide with the runs of ${name} (${name}-<n>); rename one`);
  }
}

/** The handler names a step tree's mode-0 tasks (and fan-outs) schedule. */
function handlersOf(nodes: readonly NNode[]): string[] {
  const out = new Set<string>();
  const walk = (ns: readonly NNode[]) => {
    for (const n of ns) {
      if (n.kind === 'task' && n.mode === Mode.Inline) out.add(n.handler);
      else if (n.kind === 'fanout' && n.task.mode === Mode.Inline) out.add(n.task.handler);
      else if (n.kind === 'parallel') n.branches.forEach(walk);
      else if (n.kind === 'branch' || n.kind === 'patch') {
        walk(n.then);
        walk(n.else);
      } else if (n.kind === 'loop') walk(n.body);
    }
  };
  walk(nodes);
  return [...out];
}

/** The search fields a run records: its declared keys' scalar input values, as strings. */
export function searchFieldsOf(def: WorkflowDefinition, input: { readonly [k: string]: JsonValue }): Record<string, string> | undefined {
  const out: Record<string, string> = {};
  for (const k of def.searchKeys) {
    const v = input[k];
    if (typeof v === 'string' || typeof v === 'number' || typeof v === 'boolean') out[k] = String(v).slice(0, 256);
  }
  return Object.keys(out).length > 0 ? out : undefined;
}

/**
 * One step definition with every default filled in and every rule checked, as
 * `defineWorkflow` does for its steps (the machine helpers use it for hand-written machines).
 * @throws InvalidWorkflowError
 */
export function normaliseStep(workflowId: string, s: StepDefinition): NNode {
  const node = normaliseNode(workflowId, s, new Map(), '');
  checkNames(workflowId, [node]);
  return node;
}

/**
 * Inputs are append-only: a new version must accept every input the old one accepted (new
 * fields optional; a rename or a retype is a new workflow). A test helper for authors: give it
 * the two versions and inputs the old one took (the `run.started` inputs of recorded runs, say);
 * it returns each input the old version accepts and the new one refuses, with why. No schema on
 * the new version accepts everything; no schema on the old one means every input counts.
 * @example
 * expect(await inputsRefusedByNewVersion(v1, v2, recordedInputs)).toEqual([]);
 */
export async function inputsRefusedByNewVersion(
  previous: Pick<WorkflowDefinition, 'input'>,
  next: Pick<WorkflowDefinition, 'input'>,
  inputs: Iterable<JsonValue>,
): Promise<{ input: JsonValue; issues: string[] }[]> {
  const out: { input: JsonValue; issues: string[] }[] = [];
  const check = async (schema: StandardSchemaV1 | undefined, v: JsonValue) => (schema ? await schema['~standard'].validate(v) : { value: v });
  for (const input of inputs) {
    if ((await check(previous.input, input)).issues) continue;
    const r = await check(next.input, input);
    if (r.issues) out.push({ input, issues: r.issues.map((i) => `${(i.path ?? []).map((p) => String(typeof p === 'object' ? p.key : p)).join('.') || '(root)'}: ${i.message}`) });
  }
  return out;
}

/**
 * Capstan's step, wait, sleep, fan-out, child, continue-as-new and `patched` helpers for authors who write the XState machine
 * themselves: each returns the very state config the step compiler makes for that step, so a
 * hand-written machine and a compiled one behave the same (same decisions, same retries,
 * timeouts, policy gate and approvals). `machine` wraps the states into a run machine
 * (cancel, failure, retry, completion) and `state` types a plain state of your own.
 *
 * @example
 * const h = machineHelpers('billing.manual');
 * export const manual = defineWorkflow({ id: 'billing.manual', version: 1, machine: h.machine({
 *   initial: 'fetch',
 *   states: {
 *     fetch: h.step({ name: 'fetch', timeoutMs: 30_000 }, 'route'),
 *     // Your own XState: a guarded choice on an earlier result.
 *     route: h.state({ always: [{ guard: ({ context }) => context.results['fetch'] === 'big', target: 'review' }, { target: 'done' }] }),
 *     review: h.wait({ name: 'review', signal: 'approve', timeoutMs: 3_600_000 }, 'ship'),
 *     // New logic for runs that reach this point from now on; runs already past it replay as before.
 *     ship: h.patched('express-shipping', { then: 'express', else: 'post' }),
 *     // A child workflow, awaited: its output is results['express'].
 *     express: h.child({ name: 'express', child: 'billing.express' }, 'done'),
 *     post: h.step({ name: 'post' }, 'done'),
 *   },
 * }) });
 */
import type { ChildStep, ContinueStep, FanOutStep, SignalStep, SleepStep, TaskStep } from '../../workflow.js';
import { normaliseStep } from '../../workflow.js';
import { capstan, childState, continueState, fanOutState, patchChoiceState, signalState, sleepState, taskState, workflowMachine, type Sequence } from './states.js';
import { InvalidWorkflowError, TOKEN_PATTERN } from '@capstan/schemas';

export interface MachineHelpers {
  /** A task; `next` is where the machine goes when it has completed (`done` ends the run). */
  step(spec: TaskStep, next: string): ReturnType<typeof taskState>;
  /** A wait for a signal (early signals kept), with an optional timeout. */
  wait(spec: SignalStep, next: string): ReturnType<typeof signalState>;
  sleep(spec: SleepStep, next: string): ReturnType<typeof sleepState>;
  fanOut(spec: FanOutStep, next: string): ReturnType<typeof fanOutState>;
  /** A child workflow, awaited: its output is the step's result (`results[name]`). */
  child(spec: ChildStep, next: string): ReturnType<typeof childState>;
  /** Ends the run and continues it in a fresh run of the same workflow. */
  continueAsNew(spec: ContinueStep): ReturnType<typeof continueState>;
  /**
   * `patched(id)`: goes to `then` (the new logic) in a run that reaches it live, recording
   * `patch.marked` once, and to `else` (the old) in a run whose record passed it before the
   * patch was deployed: exactly the builder's `{ patched: id }` step.
   */
  patched(id: string, targets: { readonly then: string; readonly else: string }): ReturnType<typeof patchChoiceState>;
  /** Types a state of your own (guards and targets over the run context). */
  state: typeof capstan.createStateConfig;
  /** The run machine around your states; reaching `done` completes the run. */
  machine(config: Sequence): ReturnType<typeof workflowMachine>;
}

export function machineHelpers(workflowId: string): MachineHelpers {
  const signals = new Map<string, string>();
  const attempts = new Map<string, number>();
  const names = new Set<string>();
  const take = (name: string) => {
    if (names.has(name)) throw new InvalidWorkflowError(workflowId, `step names must be unique; ${JSON.stringify(name)} appears twice`);
    names.add(name);
  };
  return {
    step(spec, next) {
      const n = normaliseStep(workflowId, spec);
      if (n.kind !== 'task') throw new InvalidWorkflowError(workflowId, `step ${spec.name} is not a task`);
      take(n.name);
      attempts.set(n.name, n.retry.maxAttempts);
      return taskState(workflowId, n, () => n.name, next);
    },
    wait(spec, next) {
      const n = normaliseStep(workflowId, spec);
      if (n.kind !== 'signal') throw new InvalidWorkflowError(workflowId, `step ${spec.name} is not a wait`);
      take(n.name);
      signals.set(n.name, n.signal);
      return signalState(n, () => n.name, next);
    },
    sleep(spec, next) {
      const n = normaliseStep(workflowId, spec);
      if (n.kind !== 'sleep') throw new InvalidWorkflowError(workflowId, `step ${spec.name} is not a sleep`);
      take(n.name);
      return sleepState(n, () => n.name, next);
    },
    fanOut(spec, next) {
      const n = normaliseStep(workflowId, spec);
      if (n.kind !== 'fanout') throw new InvalidWorkflowError(workflowId, `step ${spec.name} is not a fan-out`);
      take(n.name);
      attempts.set(n.name, n.task.retry.maxAttempts);
      return fanOutState(workflowId, n, () => n.name, next);
    },
    child(spec, next) {
      const n = normaliseStep(workflowId, spec);
      if (n.kind !== 'child') throw new InvalidWorkflowError(workflowId, `step ${spec.name} is not a child workflow`);
      take(n.name);
      attempts.set(n.name, n.retry.maxAttempts);
      return childState(n, () => n.name, next);
    },
    continueAsNew(spec) {
      const n = normaliseStep(workflowId, spec);
      if (n.kind !== 'continue') throw new InvalidWorkflowError(workflowId, `step ${spec.name} is not a continue-as-new`);
      take(n.name);
      return continueState(n, () => n.name);
    },
    patched(id, targets) {
      if (!TOKEN_PATTERN.test(id)) throw new InvalidWorkflowError(workflowId, `patched(${JSON.stringify(id)}): a patch id must match ${TOKEN_PATTERN.source}`);
      // The choice is kept under a name no step can have (step names are tokens).
      return patchChoiceState(id, () => `patched:${id}`, targets.then, targets.else);
    },
    state: capstan.createStateConfig,
    machine(config) {
      return workflowMachine(workflowId, config, { signalOf: (n) => signals.get(n), maxAttemptsOf: (n) => attempts.get(n) });
    },
  };
}

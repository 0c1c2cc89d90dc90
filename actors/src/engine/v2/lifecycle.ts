/**
 * The lifecycle of one step instance, as pure functions of the run context: start it, feed
 * it an input event, cancel it. Each returns the new context and the decisions made, or
 * `undefined` for an input the instance does not take (a result of an attempt it has moved
 * past, a timer that no longer applies): such an input is refused and never recorded.
 *
 * Task: [authorize → (approve →)] scheduled → started → done | backoff → scheduled … | failed.
 * Signal wait: waiting → done (a signal, an approval, or a timeout that continues) | failed.
 * Sleep: sleeping → done.
 * Child: started (its child run is running) → done | backoff → started (a new child) … | failed.
 */
import type { DecisionEventBody, InputEventBody, JsonValue } from '@capstan/schemas';
import { ApprovalDecision, ErrorCode, Mode, PolicyVerdict, TimerKind } from '@capstan/schemas';
import { backoffDelay, DEFAULT_APPROVAL_TTL_MS, POLICY_REASK_MS, policyQueriesOf, timerId } from '../v1/compile.js';
import type { NChild, NSignal, NSleep, NTask } from '../../workflow.js';
import { childRunIdOf } from './ids.js';
import { allInstances, dataOf, failure, fanItem, getInst, OPEN, withInstance, type Instance, type RunContext, type Step } from './context.js';

/** Who approves when a needs-approval policy names nobody. */
const DEFAULT_APPROVERS = 'operators';

export interface Extra {
  readonly item?: JsonValue;
  readonly index?: number;
  readonly iteration?: number;
}

const none = (ctx: RunContext): Step => ({ ctx, out: [] });

/** The attempt a (re)started instance takes: the first, or the one after its last. */
function nextAttempt(prev: Instance | undefined): { attempt: number; base: number } {
  return prev ? { attempt: prev.attempt + 1, base: prev.attempt } : { attempt: 1, base: 0 };
}

function scheduled(workflowId: string, key: string, node: NTask, attempt: number): DecisionEventBody {
  return {
    type: 'step.scheduled',
    data: { step: key, attempt, handler: node.handler, mode: node.mode, pool: node.pool, timeoutMs: node.timeoutMs, ...(node.sandbox ? { sandbox: node.sandbox } : {}) },
  };
}

function askPolicy(workflowId: string, key: string, node: NTask, attempt: number, asks: number): DecisionEventBody[] {
  return [
    // The questions are about the step as defined (its name), whichever instance asks.
    { type: 'policy.requested', data: { step: key, attempt, queries: policyQueriesOf(workflowId, node) } },
    // The durable reminder: no answer recorded by then, the question is asked again.
    { type: 'timer.scheduled', data: { timerId: `${timerId(key, attempt, TimerKind.Policy)}-${asks}`, kind: TimerKind.Policy, step: key, attempt, delayMs: POLICY_REASK_MS } },
  ];
}

/** Starts a task instance: its policy check first when it is sandboxed, else its first attempt. */
export function startTask(c: RunContext, workflowId: string, key: string, node: NTask, extra: Extra = {}): Step {
  const prev = getInst(c, key);
  if (prev?.phase === 'done') return none(c);
  const { attempt, base } = nextAttempt(prev);
  const gated = node.mode !== Mode.Inline;
  const inst: Instance = { kind: 'task', node: node.name, attempt, base, phase: gated ? 'authorize' : 'scheduled', ...(gated ? { asks: 1 } : {}), ...extra };
  return { ctx: withInstance(c, key, inst), out: gated ? askPolicy(workflowId, key, node, attempt, 1) : [scheduled(workflowId, key, node, attempt)] };
}

/** Marks an instance done with a result: by its own name, and by its step's name (the latest). */
export function complete(c: RunContext, key: string, i: Instance, result: JsonValue, alias = true): RunContext {
  const done = withInstance(c, key, { ...i, phase: 'done', started: false, cred: false });
  const f = fanItem(done, key);
  if (f) {
    // A fan-out item's result stays with its fan-out (the fan-in makes the step's result).
    const results = f.fan.results.slice();
    results[f.n - 1] = result;
    return { ...done, fan: { ...done.fan, [f.fanKey]: { ...f.fan, results } }, last: result };
  }
  const results = { ...c.results, [key]: result, ...(alias && key !== i.node ? { [i.node]: result } : {}) };
  return { ...done, results, last: result };
}

function failed(c: RunContext, key: string, i: Instance, code: string, message: string): RunContext {
  return { ...withInstance(c, key, { ...i, phase: 'failed', started: false, cred: false }), lastError: failure(code, message, false), failedAt: key };
}

const isFor = (d: { step: string; attempt?: number }, key: string, i: Instance) => d.step === key && (d.attempt === undefined || d.attempt === i.attempt);

/** Feeds a task instance one input event about it; `undefined` when the instance does not take it. */
export function feedTask(c: RunContext, workflowId: string, key: string, node: NTask, ev: InputEventBody): Step | undefined {
  const i = getInst(c, key);
  if (!i || !OPEN.has(i.phase)) return undefined;
  const round = i.attempt - i.base;
  const retryOrFail = (err: { code: string; message: string; retryable: boolean }): Step => {
    if (err.retryable && round < node.retry.maxAttempts) {
      const next: Instance = { ...i, phase: 'backoff', started: false, cred: false };
      return {
        ctx: { ...withInstance(c, key, next), lastError: err, anyStarted: true },
        out: [
          {
            type: 'timer.scheduled',
            data: { timerId: timerId(key, i.attempt, TimerKind.Retry), kind: TimerKind.Retry, step: key, attempt: i.attempt, delayMs: backoffDelay(node.retry, round + 1) },
          },
        ],
      };
    }
    return { ctx: { ...failed(c, key, i, err.code, `step ${key} failed after ${i.attempt} attempt(s): ${err.message}`), anyStarted: true }, out: [] };
  };
  switch (ev.type) {
    case 'policy.decided': {
      if (i.phase !== 'authorize' || !isFor(ev.data, key, i)) return undefined;
      const d = ev.data;
      if (d.decision === PolicyVerdict.Allow) return { ctx: withInstance(c, key, { ...i, phase: 'scheduled', asks: 1 }), out: [scheduled(workflowId, key, node, i.attempt)] };
      if (d.decision === PolicyVerdict.NeedsApproval) {
        const approval = { version: d.version, policies: d.policies, approvers: d.approvers ?? DEFAULT_APPROVERS, expiresInMs: d.expiresInMs ?? DEFAULT_APPROVAL_TTL_MS };
        return {
          ctx: withInstance(c, key, { ...i, phase: 'approve', asks: 1, approval }),
          out: [
            { type: 'approval.requested', data: { step: key, attempt: i.attempt, ...approval } },
            {
              type: 'timer.scheduled',
              data: { timerId: timerId(key, i.attempt, TimerKind.Approval), kind: TimerKind.Approval, step: key, attempt: i.attempt, delayMs: approval.expiresInMs },
            },
          ],
        };
      }
      const by = d.policies.length > 0 ? ` (${d.policies.join(', ')})` : ' (no policy allows it: default deny)';
      const errs = d.errors?.length ? `; ${d.errors.join('; ')}` : '';
      return { ctx: failed(c, key, i, ErrorCode.PolicyDenied, `step ${key} (mode ${node.mode}) was denied by policy version ${d.version}${by}${errs}`), out: [] };
    }
    case 'approval.decided': {
      if (ev.data.step !== key) return undefined;
      if (i.phase === 'approve') {
        if (ev.data.decision === ApprovalDecision.Approve) return { ctx: withInstance(c, key, { ...i, phase: 'scheduled' }), out: [scheduled(workflowId, key, node, i.attempt)] };
        const why = ev.data.reason === undefined ? '' : `: ${ev.data.reason}`;
        return {
          ctx: {
            ...withInstance(c, key, { ...i, phase: 'failed' }),
            lastError: failure(ErrorCode.ApprovalDenied, `step ${key} was denied by ${ev.data.by}${why}`, false),
            failedAt: key,
          },
          out: [],
        };
      }
      // Mode 3b: a person decided the running step's credential request; the step goes on.
      if ((i.phase === 'scheduled' || i.phase === 'started') && i.cred) return { ctx: withInstance(c, key, { ...i, cred: false }), out: [] };
      return undefined;
    }
    case 'credential.decided': {
      if ((i.phase !== 'scheduled' && i.phase !== 'started') || !isFor(ev.data, key, i)) return undefined;
      const d = ev.data;
      if (d.decision !== PolicyVerdict.NeedsApproval || i.cred) return { ctx: c, out: [] };
      return {
        ctx: withInstance(c, key, { ...i, cred: true }),
        out: [
          {
            type: 'approval.requested',
            data: {
              step: key,
              attempt: d.attempt,
              approvers: d.approvers ?? DEFAULT_APPROVERS,
              version: d.version,
              policies: d.policies,
              expiresInMs: d.expiresInMs ?? DEFAULT_APPROVAL_TTL_MS,
            },
          },
        ],
      };
    }
    case 'step.started': {
      if (i.phase !== 'scheduled' || !isFor(ev.data, key, i)) return undefined;
      // The durable timeout is armed when a worker says the attempt runs: a quick step never needs one.
      return {
        ctx: { ...withInstance(c, key, { ...i, phase: 'started', started: true }), anyStarted: true },
        out: [
          {
            type: 'timer.scheduled',
            data: { timerId: timerId(key, i.attempt, TimerKind.Timeout), kind: TimerKind.Timeout, step: key, attempt: i.attempt, delayMs: node.timeoutMs },
          },
        ],
      };
    }
    case 'step.completed':
      if ((i.phase !== 'scheduled' && i.phase !== 'started') || !isFor(ev.data, key, i)) return undefined;
      return { ctx: { ...complete(c, key, i, ev.data.result, i.index === undefined), anyStarted: true }, out: [] };
    case 'step.failed':
      if ((i.phase !== 'scheduled' && i.phase !== 'started') || !isFor(ev.data, key, i)) return undefined;
      return retryOrFail(ev.data.error);
    case 'timer.fired': {
      if (!isFor(ev.data, key, i)) return undefined;
      const d = ev.data;
      if (d.kind === TimerKind.Timeout && (i.phase === 'scheduled' || i.phase === 'started')) {
        return retryOrFail(failure(ErrorCode.StepTimeout, `step ${key} attempt ${i.attempt} timed out after ${node.timeoutMs} ms`, true));
      }
      if (d.kind === TimerKind.Retry && i.phase === 'backoff') {
        const next: Instance = { ...i, attempt: i.attempt + 1, phase: 'scheduled', started: false };
        return { ctx: withInstance(c, key, next), out: [scheduled(workflowId, key, node, next.attempt)] };
      }
      if (d.kind === TimerKind.Policy && i.phase === 'authorize' && d.timerId === `${timerId(key, i.attempt, TimerKind.Policy)}-${i.asks ?? 1}`) {
        const asks = (i.asks ?? 1) + 1;
        return { ctx: withInstance(c, key, { ...i, asks }), out: askPolicy(workflowId, key, node, i.attempt, asks) };
      }
      if (d.kind === TimerKind.Approval && i.phase === 'approve') {
        const a = i.approval;
        const msg = `nobody approved step ${key} within ${Math.round((a?.expiresInMs ?? DEFAULT_APPROVAL_TTL_MS) / 1000)} s (approvers: ${a?.approvers ?? DEFAULT_APPROVERS})`;
        return { ctx: { ...withInstance(c, key, { ...i, phase: 'failed' }), lastError: failure(ErrorCode.ApprovalExpired, msg, false), failedAt: key }, out: [] };
      }
      return undefined;
    }
    default:
      return undefined;
  }
}

/** Opens a wait for a signal; one that arrived before is taken at once. */
export function startSignal(c: RunContext, key: string, node: NSignal, extra: Extra = {}): Step {
  const { attempt, base } = nextAttempt(getInst(c, key));
  const inst: Instance = { kind: 'signal', node: node.name, attempt, base, phase: 'waiting', ...extra };
  const opened: Step = { ctx: withInstance(c, key, inst), out: [{ type: 'step.waiting', data: { step: key, signal: node.signal } }] };
  const early = c.signals.findIndex((s) => s.name === node.signal);
  if (early >= 0) {
    const s = c.signals[early] as { name: string; payload: JsonValue };
    const ctx = { ...complete(opened.ctx, key, inst, s.payload), signals: c.signals.filter((_, k) => k !== early) };
    return { ctx, out: [...opened.out, { type: 'signal.consumed', data: { step: key, attempt, signal: node.signal, ...senderOf(s.payload) } }] };
  }
  if (node.timeoutMs === undefined) return opened;
  return {
    ctx: opened.ctx,
    out: [...opened.out, { type: 'timer.scheduled', data: { timerId: timerId(key, attempt, TimerKind.Wait), kind: TimerKind.Wait, step: key, attempt, delayMs: node.timeoutMs } }],
  };
}

/** Who sent a signal, when its payload says so (`{ by: '…' }`). */
function senderOf(payload: JsonValue): { by?: string } {
  const by = payload !== null && typeof payload === 'object' && !Array.isArray(payload) ? payload['by'] : undefined;
  return typeof by === 'string' && by.length > 0 ? { by: by.slice(0, 128) } : {};
}

/** A signal arrives: the oldest wait for it takes it, or it is kept for a wait still to come. */
export function deliverSignal(c: RunContext, name: string, payload: JsonValue, signalOf: (node: string) => string | undefined): Step {
  for (const [key, i] of Object.entries(c.inst)) {
    if (i.kind === 'signal' && i.phase === 'waiting' && signalOf(i.node) === name) {
      return { ctx: complete(c, key, i, payload), out: [{ type: 'signal.consumed', data: { step: key, attempt: i.attempt, signal: name, ...senderOf(payload) } }] };
    }
  }
  return { ctx: { ...c, signals: [...c.signals, { name, payload }] }, out: [] };
}

export function feedSignal(c: RunContext, key: string, node: NSignal, ev: InputEventBody): Step | undefined {
  const i = getInst(c, key);
  if (!i || i.phase !== 'waiting') return undefined;
  if (ev.type === 'approval.decided' && ev.data.step === key) {
    // A person's decision: approve completes the wait (its result says who and why), deny fails the run.
    if (ev.data.decision === ApprovalDecision.Approve) {
      const result: JsonValue = { decision: ev.data.decision, by: ev.data.by, ...(ev.data.reason === undefined ? {} : { reason: ev.data.reason }) };
      return { ctx: complete(c, key, i, result), out: [] };
    }
    const why = ev.data.reason === undefined ? '' : `: ${ev.data.reason}`;
    return {
      ctx: {
        ...withInstance(c, key, { ...i, phase: 'failed' }),
        lastError: failure(ErrorCode.ApprovalDenied, `step ${key} was denied by ${ev.data.by}${why}`, false),
        failedAt: key,
      },
      out: [],
    };
  }
  if (ev.type === 'timer.fired' && ev.data.kind === TimerKind.Wait && isFor(ev.data, key, i)) {
    if (node.onTimeout === 'continue') return { ctx: complete(c, key, i, { timedOut: true }), out: [] };
    const msg = `no ${node.signal} signal reached step ${key} within ${node.timeoutMs ?? 0} ms`;
    return { ctx: { ...withInstance(c, key, { ...i, phase: 'failed' }), lastError: failure(ErrorCode.SignalTimeout, msg, false), failedAt: key }, out: [] };
  }
  return undefined;
}

/** Starts a durable sleep: a timer, for a duration or until a point in time the run's data names. */
export function startSleep(c: RunContext, key: string, node: NSleep, extra: Extra = {}): Step {
  const { attempt, base } = nextAttempt(getInst(c, key));
  const inst: Instance = { kind: 'sleep', node: node.name, attempt, base, phase: 'sleeping', ...extra };
  let timing: { delayMs: number; until?: number };
  if (node.until) {
    const until = evaluate(() => node.until?.(dataOf(c)), `step ${key}: sleep.until`);
    if (!until.ok) return { ctx: { ...withInstance(c, key, { ...inst, phase: 'failed' }), lastError: until.error, failedAt: null }, out: [] };
    const at = until.value;
    if (typeof at !== 'number' || !Number.isSafeInteger(at) || at < 0) {
      return {
        ctx: {
          ...withInstance(c, key, { ...inst, phase: 'failed' }),
          lastError: failure(ErrorCode.WorkflowFunctionFailed, `step ${key}: sleep.until must return epoch milliseconds, got ${JSON.stringify(at)}`, false),
          failedAt: null,
        },
        out: [],
      };
    }
    timing = { delayMs: 0, until: at };
  } else {
    timing = { delayMs: node.ms ?? 0 };
  }
  return {
    ctx: withInstance(c, key, inst),
    out: [{ type: 'timer.scheduled', data: { timerId: timerId(key, attempt, TimerKind.Sleep), kind: TimerKind.Sleep, step: key, attempt, ...timing } }],
  };
}

export function feedSleep(c: RunContext, key: string, ev: InputEventBody): Step | undefined {
  const i = getInst(c, key);
  if (!i || i.phase !== 'sleeping' || ev.type !== 'timer.fired' || ev.data.kind !== TimerKind.Sleep || !isFor(ev.data, key, i)) return undefined;
  // A sleep has no result of its own: the data the next step sees is unchanged.
  return { ctx: withInstance(c, key, { ...i, phase: 'done' }), out: [] };
}

/** Starts a child run for a child step's next attempt (its id derived from this run's, the step and the attempt). */
export function startChild(c: RunContext, key: string, node: NChild, extra: Extra = {}): Step {
  const prev = getInst(c, key);
  if (prev?.phase === 'done') return none(c);
  const { attempt, base } = nextAttempt(prev);
  return launchChild(c, key, node, { kind: 'child', node: node.name, attempt, base, phase: 'started', close: node.parentClose, ...extra });
}

function launchChild(c: RunContext, key: string, node: NChild, inst: Instance): Step {
  const failNow = (message: string): Step => ({
    ctx: { ...withInstance(c, key, { ...inst, phase: 'failed' }), lastError: failure(ErrorCode.WorkflowFunctionFailed, message, false), failedAt: null },
    out: [],
  });
  if (c.runId === undefined) return failNow(`step ${key}: a child workflow needs the run's id (start the run with one)`);
  let input: { readonly [k: string]: JsonValue } = c.input;
  if (node.input) {
    const r = evaluate(() => node.input?.(dataOf(c)), `step ${key}: input`);
    if (!r.ok) return failNow(r.error.message);
    const v: unknown = r.value;
    if (v === null || typeof v !== 'object' || Array.isArray(v)) return failNow(`step ${key}: input must return an object, got ${JSON.stringify(v)}`);
    input = r.value as { readonly [k: string]: JsonValue };
  }
  const child = childRunIdOf(c.runId, key, inst.attempt, c.engine ?? 2);
  return {
    ctx: { ...withInstance(c, key, { ...inst, child }), anyStarted: true },
    out: [{ type: 'child.started', data: { step: key, attempt: inst.attempt, child, workflow: node.workflow, input, parentClose: node.parentClose } }],
  };
}

/** Feeds a child step its child's outcome, or its retry timer; `undefined` when it does not take the input. */
export function feedChild(c: RunContext, key: string, node: NChild, ev: InputEventBody): Step | undefined {
  const i = getInst(c, key);
  if (!i || !OPEN.has(i.phase)) return undefined;
  if ((ev.type === 'child.completed' || ev.type === 'child.failed') && i.phase === 'started' && isFor(ev.data, key, i) && ev.data.child === i.child) {
    if (ev.type === 'child.completed') return { ctx: complete(c, key, i, ev.data.result), out: [] };
    const err = ev.data.error;
    const round = i.attempt - i.base;
    if (err.retryable && round < node.retry.maxAttempts) {
      return {
        ctx: { ...withInstance(c, key, { ...i, phase: 'backoff' }), lastError: err },
        out: [
          {
            type: 'timer.scheduled',
            data: { timerId: timerId(key, i.attempt, TimerKind.Retry), kind: TimerKind.Retry, step: key, attempt: i.attempt, delayMs: backoffDelay(node.retry, round + 1) },
          },
        ],
      };
    }
    return { ctx: failed(c, key, i, ErrorCode.ChildFailed, `step ${key}: child run ${ev.data.child} failed after ${i.attempt} attempt(s): ${err.code}: ${err.message}`), out: [] };
  }
  if (ev.type === 'timer.fired' && ev.data.kind === TimerKind.Retry && i.phase === 'backoff' && isFor(ev.data, key, i)) {
    return launchChild(c, key, node, { ...i, attempt: i.attempt + 1, phase: 'started' });
  }
  return undefined;
}

/** Cancels open instances (all, or those `which` picks): their workers are told, their results refused. */
export function cancelOpen(c: RunContext, reason: string, which: (key: string, i: Instance) => boolean = () => true): Step {
  const out: DecisionEventBody[] = [];
  let ctx = c;
  for (const [key, i] of [...allInstances(c)]) {
    if (!OPEN.has(i.phase) || !which(key, i)) continue;
    ctx = withInstance(ctx, key, { ...i, phase: 'cancelled', started: false, cred: false });
    // A running child is cancelled with its parent, unless its parent-close policy abandons it.
    const child = i.kind === 'child' && i.phase === 'started' && i.close === 'cancel' && i.child !== undefined ? { child: i.child } : {};
    out.push({ type: 'step.cancelled', data: { step: key, attempt: i.attempt, reason, ...child } });
  }
  return { ctx, out };
}

/** Calls a workflow function; what it throws becomes a run failure naming the step. */
export function evaluate<T>(f: () => T, what: string): { ok: true; value: T } | { ok: false; error: ReturnType<typeof failure> } {
  try {
    return { ok: true, value: f() };
  } catch (e) {
    return { ok: false, error: failure(ErrorCode.WorkflowFunctionFailed, `${what} threw: ${e instanceof Error ? e.message : String(e)}`, false) };
  }
}

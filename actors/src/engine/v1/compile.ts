/**
 * Engine 1: the step compiler every run recorded before engines had versions was decided
 * by. FROZEN: runs recorded under it replay through it for ever, so nothing here changes
 * behaviour, ever (test/unit/histories.test.ts replays the recorded ones). A workflow that
 * is a plain sequence of task and signal steps compiles here for those runs; new runs are
 * decided by the current engine.
 *
 * The machine's **events** are the run's input events (`{ type, data }`, see
 * `@capstan/schemas`), and its **actions** are decisions: an action whose type is a
 * decision event type (`step.scheduled`, `timer.scheduled`, `step.waiting`,
 * `run.completed`, `run.failed`, `run.cancelled`) with the event's data as params. Status
 * comes from state tags: `pending`, `waiting`, and on final states `completed`, `failed`,
 * `cancelled`; anything else is `running`.
 */
import type { AnyStateMachine } from 'xstate';
import { assign, setup } from 'xstate';
import type { ErrorRecord, InputEventBody, JsonValue, RunEventData, SandboxSpec } from '@capstan/schemas';
import { ApprovalDecision, ErrorCode, Mode, PolicyVerdict, TimerKind } from '@capstan/schemas';

export interface RetryPolicy {
  /** Attempts in all, the first included. Default 3. */
  readonly maxAttempts: number;
  /** Delay before the second attempt. Default 1000 ms. */
  readonly initialIntervalMs: number;
  /** Each later delay is the previous one times this. Default 2. */
  readonly backoffCoefficient: number;
  /** Delays never exceed this. Default 60 s. */
  readonly maxIntervalMs: number;
}

export type NormalisedStep =
  | {
      readonly kind: 'task';
      readonly name: string;
      readonly handler: string;
      readonly mode: Mode;
      readonly pool: string;
      readonly timeoutMs: number;
      readonly retry: RetryPolicy;
      readonly sandbox?: SandboxSpec;
    }
  | { readonly kind: 'signal'; readonly name: string; readonly signal: string };

export const DEFAULT_RETRY: RetryPolicy = Object.freeze({
  maxAttempts: 3,
  initialIntervalMs: 1000,
  backoffCoefficient: 2,
  maxIntervalMs: 60_000,
});
export const DEFAULT_TIMEOUT_MS = 5 * 60_000;
export const DEFAULT_POOL = 'default';

/** Delay before attempt `next` (2, 3, …): exponential, capped. Pure. */
export function backoffDelay(retry: RetryPolicy, next: number): number {
  const raw = retry.initialIntervalMs * retry.backoffCoefficient ** Math.max(0, next - 2);
  // 0 * Infinity is NaN: a zero initial interval stays zero however large the exponent grows.
  return Math.round(Math.min(Number.isNaN(raw) ? 0 : raw, retry.maxIntervalMs));
}

/** Deterministic timer id, a valid subject token. */
export function timerId(step: string, attempt: number, kind: TimerKind): string {
  return `${step}-a${attempt}-${kind}`;
}

export interface RunContext {
  readonly input: { [k: string]: JsonValue };
  /** Current attempt per step name. */
  readonly attempts: Readonly<Record<string, number>>;
  /** Attempt of the current step a worker reported started, if any. */
  readonly startedAttempt: number;
  readonly anyStarted: boolean;
  readonly results: Readonly<Record<string, JsonValue>>;
  readonly last: JsonValue;
  readonly lastError: ErrorRecord | null;
  readonly signals: readonly { name: string; payload: JsonValue }[];
  /**
   * Per step, the attempts used before the run was last retried (`run.retried`): a retried
   * step gets its retry policy afresh, its attempt numbers going on. Absent until a retry.
   */
  readonly retryBase?: Readonly<Record<string, number>>;
  /** Mode 3b: `<step>:<attempt>` while that attempt's credential request waits for a person. */
  readonly credentialWait?: string;
  /** How many times the current gated step has asked the policy (names its reminder timers). */
  readonly policyAsks?: number;
  /** The needs-approval decision the current gated step waits on. */
  readonly approval?: { readonly version: number; readonly policies: readonly string[]; readonly approvers: string; readonly expiresInMs: number };
}

/** Who approves when a needs-approval policy names nobody. */
const DEFAULT_APPROVERS = 'operators';

type Ev = InputEventBody;
type Data<K extends Ev['type']> = Extract<Ev, { type: K }>['data'];

const decided = (event: Ev, step: string, decision: ApprovalDecision): boolean => event.type === 'approval.decided' && event.data.step === step && event.data.decision === decision;

/** How long a gated step waits for the policy's answer before asking again. */
export const POLICY_REASK_MS = 30_000;

/** How long a needs-approval step waits for a person when the decision does not say. */
export const DEFAULT_APPROVAL_TTL_MS = 24 * 60 * 60 * 1000;

/**
 * Steps the tenant's policy must allow before they are scheduled: every sandboxed step
 * (modes 1–3: isolation, secrets, egress). Mode-0 steps run the tenant's own handler in its
 * own worker, with no tenant secrets, and are not asked about.
 */
export function isPolicyGated(step: NormalisedStep): boolean {
  return step.kind === 'task' && step.mode !== Mode.Inline;
}

/** The questions a gated step puts to the policy: its mode, each secret, each egress host. */
export function policyQueriesOf(workflowId: string, step: Extract<NormalisedStep, { kind: 'task' }>): { [k: string]: JsonValue }[] {
  const base = { workflow: workflowId, step: step.name };
  return [
    { action: 'run-step', ...base, mode: step.mode },
    ...(step.sandbox?.secrets ?? []).map((secret) => ({ action: 'lease-secret', ...base, secret })),
    ...(step.sandbox?.egress ?? []).map((host) => ({ action: 'egress', ...base, host })),
  ];
}

export function compileSteps(id: string, version: number, steps: readonly NormalisedStep[]): AnyStateMachine {
  const stateOf = (i: number) => `step_${i}`;
  const backoffOf = (i: number) => `retry_${i}`;
  // A gated step is entered through its policy check.
  const entryOf = (i: number) => (isPolicyGated(steps[i] as NormalisedStep) ? `authorize_${i}` : stateOf(i));
  const after = (i: number) => (i + 1 < steps.length ? entryOf(i + 1) : 'completed');

  const m = setup({
    types: {
      context: {} as RunContext,
      events: {} as Ev,
      input: {} as { [k: string]: JsonValue },
    },
    actions: {
      // Decisions: the host records them; no implementation runs inside the machine.
      'step.scheduled': (_, _p: RunEventData<'step.scheduled'>) => {},
      'timer.scheduled': (_, _p: RunEventData<'timer.scheduled'>) => {},
      'step.waiting': (_, _p: RunEventData<'step.waiting'>) => {},
      'policy.requested': (_, _p: RunEventData<'policy.requested'>) => {},
      'approval.requested': (_, _p: RunEventData<'approval.requested'>) => {},
      'run.completed': (_, _p: RunEventData<'run.completed'>) => {},
      'run.failed': (_, _p: RunEventData<'run.failed'>) => {},
      'run.cancelled': (_, _p: RunEventData<'run.cancelled'>) => {},
    },
  });

  const states: Record<string, unknown> = {};
  steps.forEach((step, i) => {
    const attemptOf = (c: RunContext) => c.attempts[step.name] ?? 1;
    const isCurrent = (c: RunContext, d: { step: string; attempt: number }) => d.step === step.name && d.attempt === attemptOf(c);
    const next = after(i);
    if (step.kind === 'signal') {
      states[stateOf(i)] = {
        tags: ['waiting'],
        entry: { type: 'step.waiting', params: { step: step.name, signal: step.signal } },
        on: {
          'run.signaled': {
            guard: ({ event }: { event: Ev }) => (event.data as Data<'run.signaled'>).name === step.signal,
            target: next,
            actions: assign(({ context, event }: { context: RunContext; event: Ev }) => {
              const payload = (event.data as Data<'run.signaled'>).payload ?? null;
              return { results: { ...context.results, [step.name]: payload }, last: payload };
            }),
          },
          // A person's decision names the step: approve completes it (its result says who and
          // why), deny fails the run.
          'approval.decided': [
            {
              guard: ({ event }: { event: Ev }) => decided(event, step.name, ApprovalDecision.Approve),
              target: next,
              actions: assign(({ context, event }: { context: RunContext; event: Ev }) => {
                const d = event.data as Data<'approval.decided'>;
                const result: JsonValue = { decision: d.decision, by: d.by, ...(d.reason === undefined ? {} : { reason: d.reason }) };
                return { results: { ...context.results, [step.name]: result }, last: result };
              }),
            },
            {
              guard: ({ event }: { event: Ev }) => decided(event, step.name, ApprovalDecision.Deny),
              target: 'failed',
              actions: assign({
                lastError: ({ event }: { event: Ev }) => {
                  const d = event.data as Data<'approval.decided'>;
                  const why = d.reason === undefined ? '' : `: ${d.reason}`;
                  return { code: ErrorCode.ApprovalDenied, message: `step ${step.name} was denied by ${d.by}${why}`.slice(0, 1000), retryable: false };
                },
              }),
            },
          ],
        },
      };
      return;
    }
    const failure = (code: string, message: string, retryable: boolean) => ({ code, message, retryable });
    const waitKey = (c: RunContext) => `${step.name}:${attemptOf(c)}`;
    const roundOf = (c: RunContext) => attemptOf(c) - (c.retryBase?.[step.name] ?? 0);
    const canRetry = (c: RunContext, e: ErrorRecord) => e.retryable && roundOf(c) < step.retry.maxAttempts;
    const timeoutError = (c: RunContext) => failure(ErrorCode.StepTimeout, `step ${step.name} attempt ${attemptOf(c)} timed out after ${step.timeoutMs} ms`, true);
    const finalError = (c: RunContext, e: ErrorRecord): ErrorRecord => ({
      code: e.code,
      message: `step ${step.name} failed after ${attemptOf(c)} attempt(s): ${e.message}`.slice(0, 1000),
      retryable: false,
    });
    states[stateOf(i)] = {
      tags: [],
      // A credential wait belongs to the attempt: it ends with it.
      exit: assign({ credentialWait: undefined }),
      entry: [
        {
          type: 'step.scheduled',
          params: ({ context }: { context: RunContext }) => ({
            step: step.name,
            attempt: attemptOf(context),
            handler: step.handler,
            mode: step.mode,
            pool: step.pool,
            timeoutMs: step.timeoutMs,
            ...(step.sandbox ? { sandbox: step.sandbox } : {}),
          }),
        },
      ],
      on: {
        // The durable timeout timer is armed when a worker reports the attempt started (it
        // does for any step still running after a short while): a quick step never needs one,
        // and a worker that dies earlier is caught by redelivery (`worker_lost`).
        'step.started': {
          guard: ({ context, event }: { context: RunContext; event: Ev }) =>
            isCurrent(context, event.data as Data<'step.started'>) && context.startedAttempt !== attemptOf(context),
          actions: [
            assign(({ context }: { context: RunContext }) => ({ startedAttempt: attemptOf(context), anyStarted: true })),
            {
              type: 'timer.scheduled',
              params: ({ context }: { context: RunContext }) => ({
                timerId: timerId(step.name, attemptOf(context), TimerKind.Timeout),
                kind: TimerKind.Timeout,
                step: step.name,
                attempt: attemptOf(context),
                delayMs: step.timeoutMs,
              }),
            },
          ],
        },
        // Mode 3b: the running step's credential requests, as the policy answered them. A
        // needs-approval answer asks for a person; their decision lets the step's request go
        // on (or be refused) without leaving the step.
        'credential.decided': [
          {
            guard: ({ context, event }: { context: RunContext; event: Ev }) => {
              const d = event.data as Data<'credential.decided'>;
              return isCurrent(context, d) && d.decision === PolicyVerdict.NeedsApproval && context.credentialWait !== waitKey(context);
            },
            actions: [
              assign({ credentialWait: ({ context }: { context: RunContext }) => waitKey(context) }),
              {
                type: 'approval.requested',
                params: ({ event }: { event: Ev }) => {
                  const d = event.data as Data<'credential.decided'>;
                  return {
                    step: step.name,
                    attempt: d.attempt,
                    approvers: d.approvers ?? DEFAULT_APPROVERS,
                    version: d.version,
                    policies: d.policies,
                    expiresInMs: d.expiresInMs ?? DEFAULT_APPROVAL_TTL_MS,
                  };
                },
              },
            ],
          },
          {
            guard: ({ context, event }: { context: RunContext; event: Ev }) => {
              const d = event.data as Data<'credential.decided'>;
              return isCurrent(context, d) && d.decision !== PolicyVerdict.NeedsApproval;
            },
            // Recorded, nothing to decide (an accepted input needs an action to be taken at all).
            actions: assign({ credentialWait: ({ context }: { context: RunContext }) => context.credentialWait }),
          },
        ],
        'approval.decided': {
          guard: ({ context, event }: { context: RunContext; event: Ev }) =>
            context.credentialWait === waitKey(context) && (event.data as Data<'approval.decided'>).step === step.name,
          actions: assign({ credentialWait: undefined }),
        },
        'step.completed': {
          guard: ({ context, event }: { context: RunContext; event: Ev }) => isCurrent(context, event.data as Data<'step.completed'>),
          target: next,
          actions: assign(({ context, event }: { context: RunContext; event: Ev }) => {
            const result = (event.data as Data<'step.completed'>).result;
            return { results: { ...context.results, [step.name]: result }, last: result, startedAttempt: 0, anyStarted: true };
          }),
        },
        'step.failed': [
          {
            guard: ({ context, event }: { context: RunContext; event: Ev }) =>
              isCurrent(context, event.data as Data<'step.failed'>) && canRetry(context, (event.data as Data<'step.failed'>).error),
            target: backoffOf(i),
            actions: assign({ lastError: ({ event }: { event: Ev }) => (event.data as Data<'step.failed'>).error, anyStarted: true }),
          },
          {
            guard: ({ context, event }: { context: RunContext; event: Ev }) => isCurrent(context, event.data as Data<'step.failed'>),
            target: 'failed',
            actions: assign({
              lastError: ({ context, event }: { context: RunContext; event: Ev }) => finalError(context, (event.data as Data<'step.failed'>).error),
              // An attempt has ended, as statusFromEvents counts it (it matters once a retry reopens the run).
              anyStarted: true,
            }),
          },
        ],
        'timer.fired': [
          {
            guard: ({ context, event }: { context: RunContext; event: Ev }) => {
              const d = event.data as Data<'timer.fired'>;
              return d.kind === TimerKind.Timeout && isCurrent(context, d) && canRetry(context, timeoutError(context));
            },
            target: backoffOf(i),
            actions: assign({ lastError: ({ context }: { context: RunContext }) => timeoutError(context) }),
          },
          {
            guard: ({ context, event }: { context: RunContext; event: Ev }) => {
              const d = event.data as Data<'timer.fired'>;
              return d.kind === TimerKind.Timeout && isCurrent(context, d);
            },
            target: 'failed',
            actions: assign({ lastError: ({ context }: { context: RunContext }) => finalError(context, timeoutError(context)) }),
          },
        ],
      },
    };
    if (isPolicyGated(step)) {
      const queries = policyQueriesOf(id, step);
      const verdict =
        (v: PolicyVerdict) =>
        ({ context, event }: { context: RunContext; event: Ev }) => {
          const d = event.data as Data<'policy.decided'>;
          return isCurrent(context, d) && d.decision === v;
        };
      const approvalOf = (c: RunContext) => c.approval ?? { version: 0, policies: [], approvers: DEFAULT_APPROVERS, expiresInMs: DEFAULT_APPROVAL_TTL_MS };
      const askId = (c: RunContext) => `${timerId(step.name, attemptOf(c), TimerKind.Policy)}-${c.policyAsks ?? 1}`;
      states[`authorize_${i}`] = {
        tags: [],
        entry: [
          { type: 'policy.requested', params: ({ context }: { context: RunContext }) => ({ step: step.name, attempt: attemptOf(context), queries }) },
          // The durable reminder: if no answer is recorded by then (the policy service was
          // down, or the orchestrator died before its answer went out), the question is asked again.
          {
            type: 'timer.scheduled',
            params: ({ context }: { context: RunContext }) => ({
              timerId: askId(context),
              kind: TimerKind.Policy,
              step: step.name,
              attempt: attemptOf(context),
              delayMs: POLICY_REASK_MS,
            }),
          },
        ],
        on: {
          'timer.fired': {
            guard: ({ context, event }: { context: RunContext; event: Ev }) => {
              const d = event.data as Data<'timer.fired'>;
              return d.kind === TimerKind.Policy && isCurrent(context, d) && d.timerId === askId(context);
            },
            target: `authorize_${i}`,
            reenter: true,
            actions: assign({ policyAsks: ({ context }: { context: RunContext }) => (context.policyAsks ?? 1) + 1 }),
          },
          'policy.decided': [
            { guard: verdict(PolicyVerdict.Allow), target: stateOf(i), actions: assign({ policyAsks: 1 }) },
            {
              guard: verdict(PolicyVerdict.NeedsApproval),
              target: `approve_${i}`,
              actions: assign({
                policyAsks: 1,
                approval: ({ event }: { event: Ev }) => {
                  const d = event.data as Data<'policy.decided'>;
                  return { version: d.version, policies: d.policies, approvers: d.approvers ?? DEFAULT_APPROVERS, expiresInMs: d.expiresInMs ?? DEFAULT_APPROVAL_TTL_MS };
                },
              }),
            },
            {
              guard: verdict(PolicyVerdict.Deny),
              target: 'failed',
              actions: assign({
                lastError: ({ event }: { event: Ev }) => {
                  const d = event.data as Data<'policy.decided'>;
                  const by = d.policies.length > 0 ? ` (${d.policies.join(', ')})` : ' (no policy allows it: default deny)';
                  const errs = d.errors?.length ? `; ${d.errors.join('; ')}` : '';
                  return failure(ErrorCode.PolicyDenied, `step ${step.name} (mode ${step.mode}) was denied by policy version ${d.version}${by}${errs}`.slice(0, 1000), false);
                },
              }),
            },
          ],
        },
      };
      states[`approve_${i}`] = {
        tags: ['waiting'],
        entry: [
          {
            type: 'approval.requested',
            params: ({ context }: { context: RunContext }) => ({ step: step.name, attempt: attemptOf(context), ...approvalOf(context) }),
          },
          {
            type: 'timer.scheduled',
            params: ({ context }: { context: RunContext }) => ({
              timerId: timerId(step.name, attemptOf(context), TimerKind.Approval),
              kind: TimerKind.Approval,
              step: step.name,
              attempt: attemptOf(context),
              delayMs: approvalOf(context).expiresInMs,
            }),
          },
        ],
        on: {
          'approval.decided': [
            { guard: ({ event }: { event: Ev }) => decided(event, step.name, ApprovalDecision.Approve), target: stateOf(i) },
            {
              guard: ({ event }: { event: Ev }) => decided(event, step.name, ApprovalDecision.Deny),
              target: 'failed',
              actions: assign({
                lastError: ({ event }: { event: Ev }) => {
                  const d = event.data as Data<'approval.decided'>;
                  const why = d.reason === undefined ? '' : `: ${d.reason}`;
                  return failure(ErrorCode.ApprovalDenied, `step ${step.name} was denied by ${d.by}${why}`.slice(0, 1000), false);
                },
              }),
            },
          ],
          'timer.fired': {
            guard: ({ context, event }: { context: RunContext; event: Ev }) => {
              const d = event.data as Data<'timer.fired'>;
              return d.kind === TimerKind.Approval && isCurrent(context, d);
            },
            target: 'failed',
            actions: assign({
              lastError: ({ context }: { context: RunContext }) =>
                failure(
                  ErrorCode.ApprovalExpired,
                  `nobody approved step ${step.name} within ${Math.round(approvalOf(context).expiresInMs / 1000)} s (approvers: ${approvalOf(context).approvers})`,
                  false,
                ),
            }),
          },
        },
      };
    }
    states[backoffOf(i)] = {
      entry: {
        type: 'timer.scheduled',
        params: ({ context }: { context: RunContext }) => ({
          timerId: timerId(step.name, attemptOf(context), TimerKind.Retry),
          kind: TimerKind.Retry,
          step: step.name,
          attempt: attemptOf(context),
          delayMs: backoffDelay(step.retry, roundOf(context) + 1),
        }),
      },
      on: {
        'timer.fired': {
          guard: ({ context, event }: { context: RunContext; event: Ev }) => {
            const d = event.data as Data<'timer.fired'>;
            return d.kind === TimerKind.Retry && isCurrent(context, d);
          },
          target: stateOf(i),
          actions: assign(({ context }: { context: RunContext }) => ({
            attempts: { ...context.attempts, [step.name]: attemptOf(context) + 1 },
            startedAttempt: 0,
          })),
        },
      },
    };
  });

  return m.createMachine({
    id: `${id}@${version}`,
    context: ({ input }) => ({
      input,
      attempts: {},
      startedAttempt: 0,
      anyStarted: false,
      results: {},
      last: null,
      lastError: null,
      signals: [],
    }),
    initial: entryOf(0),
    on: {
      'run.cancel-requested': { target: '.cancelled' },
      'run.signaled': {
        actions: assign({
          signals: ({ context, event }) => {
            const d = event.data as Data<'run.signaled'>;
            return [...context.signals, { name: d.name, payload: d.payload ?? null }];
          },
        }),
      },
    },
    states: {
      ...(states as Record<string, object>),
      completed: {
        type: 'final',
        tags: ['completed'],
        entry: { type: 'run.completed', params: ({ context }) => ({ output: context.last }) },
      },
      failed: {
        type: 'final',
        tags: ['failed'],
        entry: {
          type: 'run.failed',
          params: ({ context }) => ({
            error: context.lastError ?? { code: ErrorCode.StepFailed, message: 'step failed', retryable: false },
          }),
        },
      },
      cancelled: {
        type: 'final',
        tags: ['cancelled'],
        entry: {
          type: 'run.cancelled',
          params: ({ event }) => {
            const reason = event.type === 'run.cancel-requested' ? event.data.reason : undefined;
            return reason === undefined ? {} : { reason };
          },
        },
      },
    },
  }) as unknown as AnyStateMachine;
}

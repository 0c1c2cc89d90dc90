/**
 * Run events: the truth about a run, stored in `cap.<t>.runs.<runId>`.
 *
 * Two families share one envelope:
 * - **inputs** are facts from outside the machine (a run was submitted, a worker finished a
 *   step, a timer fired, a signal arrived). The orchestrator folds them through the run's
 *   machine, on a live decision and on replay alike.
 * - **decisions** record what the machine decided in answer (schedule a step, arm a timer,
 *   finish the run). Replay derives them again from the inputs and compares: any difference
 *   is a determinism violation, reported as a diff.
 */
import { EVENT_ENVELOPE_VERSION, LIMITS } from './limits.js';
import type { ErrorRecord } from './errors.js';
import { SchemaError } from './errors.js';
import { sandboxSpecSchema } from './sandbox-spec.js';
import { runTraceSchema } from './trace.js';
import type { RunId } from './ids.js';
import { RUN_ID_PATTERN } from './ids.js';
import { SEARCH_KEY_PATTERN, TOKEN_PATTERN } from './names.js';
import type { Infer, JsonValue, Schema } from './validate.js';
import { arr, bool, int, json, jsonObject, literal, obj, optional, str, tagged } from './validate.js';

const stepName = str({ min: 1, max: 64, pattern: TOKEN_PATTERN });
const attempt = int({ min: 1, max: 1000 });
const token = str({ min: 1, max: 64, pattern: TOKEN_PATTERN });
const runIdSchema = str({ pattern: RUN_ID_PATTERN });

/** Longest error message a recorded error (an event's `error`) may carry, in characters. */
export const MAX_ERROR_MESSAGE_CHARS = 1000;

export const errorRecordSchema: Schema<ErrorRecord> = obj('error', {
  code: str({ min: 1, max: 64 }),
  message: str({ max: MAX_ERROR_MESSAGE_CHARS }),
  retryable: bool(),
});

/** Execution modes (see DESIGN.md): 0 inline in the worker; 1–3 sandboxed. */
export const Mode = { Inline: 0, Sandboxed: 1, SandboxedWithLease: 2, Agent: 3 } as const;
export type Mode = (typeof Mode)[keyof typeof Mode];

export const TimerKind = {
  Retry: 'retry',
  Timeout: 'timeout',
  Approval: 'approval',
  Policy: 'policy',
  /** A durable sleep (engine 2). */
  Sleep: 'sleep',
  /** The timeout of a wait for a signal (engine 2). */
  Wait: 'wait',
} as const;
export type TimerKind = (typeof TimerKind)[keyof typeof TimerKind];

/** Every timer kind, as the schemas of `timer.scheduled`, `timer.fired` and `cmd.timer` accept them. */
export const timerKinds = literal(TimerKind.Retry, TimerKind.Timeout, TimerKind.Approval, TimerKind.Policy, TimerKind.Sleep, TimerKind.Wait);

/** What a person decides about a step waiting for approval. */
export const ApprovalDecision = { Approve: 'approve', Deny: 'deny' } as const;
export type ApprovalDecision = (typeof ApprovalDecision)[keyof typeof ApprovalDecision];

/** A policy's answer (see `services/policy`): default deny; needs-approval names approvers. */
export const PolicyVerdict = { Allow: 'allow', Deny: 'deny', NeedsApproval: 'needs-approval' } as const;
export type PolicyVerdict = (typeof PolicyVerdict)[keyof typeof PolicyVerdict];

/**
 * Who did something (a user id from the console's session or the CLI's `--as`): printable,
 * no control characters, no leading or trailing space. Recorded on the run and in the audit
 * log, so it is an id, never a secret.
 */
export const ACTOR_PATTERN = /^[^\s\u0000-\u001f\u007f](?:[^\u0000-\u001f\u007f]*[^\s\u0000-\u001f\u007f])?$/;
export const actorSchema: Schema<string> = str({ min: 1, max: 128, pattern: ACTOR_PATTERN });
/**
 * The credential that signed a command, as its proof names it (see kit's proof.ts): the
 * JWT's name and public key, and its role. Written by the orchestrator from the verified
 * proof, never from a command's body.
 */
export const signerSchema = obj('signer', {
  name: actorSchema,
  key: str({ pattern: /^U[A-Z2-7]{55}$/ }),
  role: optional(str({ min: 1, max: 64 })),
});
export type SignerRecord = Infer<typeof signerSchema>;
/** Longest reason a person may give, in characters. */
export const MAX_REASON_CHARS = 500;
/** Why, in a person's words: shown to operators and kept in the audit log. */
export const reasonSchema: Schema<string> = str({ min: 1, max: MAX_REASON_CHARS });

/** Up to 8 search fields: key (a token) → value (a string of at most 256 characters). */
const searchFields: Schema<Record<string, string>> = {
  name: 'search fields',
  parse(v, path = '') {
    const o = jsonObject().parse(v, path);
    const keys = Object.keys(o);
    if (keys.length > 8) throw new SchemaError('search fields', path, 'must have at most 8 keys');
    const out: Record<string, string> = {};
    for (const k of keys) {
      out[str({ min: 1, max: 64, pattern: SEARCH_KEY_PATTERN }).parse(k, `${path}.${k}`)] = str({ max: 256 }).parse(o[k], `${path}.${k}`);
    }
    return out;
  },
};

/** A policy's answer as a run records it (`policy.decided`, `credential.decided`, and their commands). */
export const policyAnswer = {
  decision: literal(PolicyVerdict.Allow, PolicyVerdict.Deny, PolicyVerdict.NeedsApproval),
  version: int({ min: 0 }),
  policies: arr(str({ min: 1, max: 256 }), { max: 64 }),
  approvers: optional(str({ min: 1, max: 128 })),
  errors: optional(arr(str({ max: 1000 }), { max: 16 })),
  expiresInMs: optional(int({ min: 1 })),
  /** The policy lets a run's requester approve it (`@self_approval("allowed")`); absent: it may not. */
  selfApproval: optional(bool()),
};
/** What a mode-3b step asked for. */
export const credentialAsked = {
  name: str({ min: 1, max: 64, pattern: /^[A-Z_][A-Z0-9_]{0,63}$/ }),
  reason: str({ max: 500 }),
};

const eventData = {
  'run.started': obj('run.started', {
    workflow: str({ min: 1, max: 128 }),
    version: int({ min: 1 }),
    input: jsonObject(),
    idempotencyKey: optional(str({ min: 1, max: 256 })),
    /** Values of the workflow's declared search keys, taken from the input, for queries. */
    search: optional(searchFields),
    /**
     * The run engine (the compiler and run core) that decides this run, for ever: replay uses
     * the same one. Absent on runs recorded before engines had versions: those are engine 1.
     */
    engine: optional(int({ min: 1, max: 1000 })),
    /** The trace the run belongs to (a caller's `traceparent`, or one begun for it). */
    trace: optional(runTraceSchema),
    /** sha256 of the workflow version's definition when the run started (see `workflowFingerprint`). */
    fingerprint: optional(str({ pattern: /^[0-9a-f]{64}$/ })),
    /**
     * A child run: the parent run and the step (and attempt) that started it; its ending is
     * reported there. In a continuation of a child, `child` is the id the parent started.
     */
    parent: optional(obj('parent', { runId: runIdSchema, step: stepName, attempt, child: optional(runIdSchema) })),
    /** A run started by another's continue-as-new: the run it continues. */
    continuedFrom: optional(runIdSchema),
    /** Who submitted the run, when the submit was signed: a requester may not approve their own run. */
    submittedBy: optional(actorSchema),
    submitter: optional(signerSchema),
  }),
  'step.started': obj('step.started', {
    step: stepName,
    attempt,
    worker: str({ min: 1, max: 128 }),
    /** The worker credential that signed `cmd.started` (absent on runs recorded before it was signed). */
    signer: optional(signerSchema),
  }),
  'step.completed': obj('step.completed', {
    step: stepName,
    attempt,
    worker: str({ min: 1, max: 128 }),
    result: json(),
    durationMs: int({ min: 0 }),
  }),
  'step.failed': obj('step.failed', {
    step: stepName,
    attempt,
    worker: optional(str({ min: 1, max: 128 })),
    error: errorRecordSchema,
    durationMs: optional(int({ min: 0 })),
  }),
  'timer.fired': obj('timer.fired', {
    timerId: token,
    kind: timerKinds,
    step: stepName,
    attempt,
  }),
  'run.signaled': obj('run.signaled', { name: token, payload: optional(json()) }),
  /** `by` and `signer`: who asked, from the command's proof (absent on runs recorded before cancels were signed). */
  'run.cancel-requested': obj('run.cancel-requested', { reason: optional(str({ max: 500 })), by: optional(actorSchema), signer: optional(signerSchema) }),
  /**
   * A person approved or denied a step waiting for approval (a signal step). `by` is who
   * decided: the signing credential's name, or the signed-in user a console (or the admin)
   * vouches for; `signer` is the credential whose proof the orchestrator verified (absent on
   * decisions recorded before decisions were signed).
   */
  'approval.decided': obj('approval.decided', {
    step: stepName,
    decision: literal(ApprovalDecision.Approve, ApprovalDecision.Deny),
    by: actorSchema,
    reason: optional(reasonSchema),
    signer: optional(signerSchema),
  }),
  /** A person reopened a failed run: the step that failed runs again, completed steps stay done. */
  'run.retried': obj('run.retried', { by: actorSchema, reason: optional(reasonSchema), signer: optional(signerSchema) }),
  /**
   * The policy's answer for a step (modes 1–3), recorded before it is scheduled: replay uses
   * this record, never a fresh evaluation. `version` is the policy version that decided (0:
   * the tenant has none, or checks are off); `expiresInMs` bounds a needs-approval wait.
   */
  'policy.decided': obj('policy.decided', { step: stepName, attempt, ...policyAnswer }),
  /**
   * Mode 3b: a running step asked for credential `name` and the tenant's policy answered
   * (recorded by the worker before any lease is issued). A needs-approval answer makes the
   * run ask for a person; the step keeps waiting on its request meanwhile.
   */
  'credential.decided': obj('credential.decided', { step: stepName, attempt, ...credentialAsked, ...policyAnswer }),
  /** A child run the step started completed: its output is the step's result. */
  'child.completed': obj('child.completed', { step: stepName, attempt, child: runIdSchema, result: json() }),
  /** A child run the step started failed or was cancelled: the step fails (and may be retried, with a new child). */
  'child.failed': obj('child.failed', { step: stepName, attempt, child: runIdSchema, error: errorRecordSchema }),
  // decisions
  'step.scheduled': obj('step.scheduled', {
    step: stepName,
    attempt,
    handler: str({ min: 1, max: 128 }),
    mode: literal(Mode.Inline, Mode.Sandboxed, Mode.SandboxedWithLease, Mode.Agent),
    pool: token,
    timeoutMs: int({ min: 1 }),
    /** Sandboxed steps (modes 1–3): the command, secret key names and egress, on the record. */
    sandbox: optional(sandboxSpecSchema),
  }),
  'step.waiting': obj('step.waiting', { step: stepName, signal: token }),
  /** The questions a step puts to the tenant's policy before it may be scheduled. */
  'policy.requested': obj('policy.requested', { step: stepName, attempt, queries: arr(jsonObject(), { max: 64 }) }),
  /** The policy wants a person: who may approve, under which policies, for how long. */
  'approval.requested': obj('approval.requested', {
    step: stepName,
    attempt,
    approvers: str({ min: 1, max: 128 }),
    version: int({ min: 0 }),
    policies: arr(str({ min: 1, max: 256 }), { max: 64 }),
    expiresInMs: int({ min: 1 }),
  }),
  'timer.scheduled': obj('timer.scheduled', {
    timerId: token,
    kind: timerKinds,
    step: stepName,
    attempt,
    delayMs: int({ min: 0 }),
    /** A sleep until a point in time (epoch ms): the timer fires then, or at once if that has passed. */
    until: optional(int({ min: 0 })),
  }),
  /**
   * A step instance the run no longer waits for (the run was cancelled or failed elsewhere,
   * or a fan-in had what it needed): its worker is told to stop, and its result, should it
   * still arrive, is refused as stale.
   */
  'step.cancelled': obj('step.cancelled', {
    step: stepName,
    attempt,
    reason: optional(str({ max: 200 })),
    /** A child step whose parent-close policy is `cancel`: the child run is cancelled too. */
    child: optional(runIdSchema),
  }),
  /** A step whose condition (`when`) did not hold: it did not run. */
  'step.skipped': obj('step.skipped', { step: stepName }),
  /** A wait took a signal (one that was waiting for it, or one that arrived while it waited). */
  'signal.consumed': obj('signal.consumed', {
    step: stepName,
    attempt,
    signal: token,
    /** Who sent it, when its payload says (`{ by }`): for the audit of an approval by signal. */
    by: optional(str({ min: 1, max: 128 })),
  }),
  /** A branch chose its path. */
  'branch.taken': obj('branch.taken', { step: stepName, branch: literal('then', 'else') }),
  /** A bounded loop began an iteration. */
  'loop.iteration': obj('loop.iteration', { step: stepName, iteration: int({ min: 1, max: 10_000 }) }),
  /** A fan-out took its list: its items run as the steps `<step>-1` … `<step>-<items>`. */
  'fanout.started': obj('fanout.started', { step: stepName, items: int({ min: 0, max: 10_000 }), concurrency: int({ min: 1, max: 10_000 }) }),

  /**
   * A child run was started for a step attempt: its id is derived from this run's id, the
   * step and the attempt (so a redelivery or a crash can never start two), in this tenant.
   */
  'child.started': obj('child.started', {
    step: stepName,
    attempt,
    child: runIdSchema,
    workflow: str({ min: 1, max: 128 }),
    input: jsonObject(),
    parentClose: literal('cancel', 'abandon'),
  }),
  /** A `patched(id)` marker, recorded the first time the run evaluates it: the run takes the new path for ever. */
  'patch.marked': obj('patch.marked', { patch: token }),
  /** The run ends and a fresh run of the same workflow continues it with this input (its id derived from this run's). */
  'run.continued': obj('run.continued', { next: runIdSchema, input: jsonObject(), reason: literal('workflow', 'event-cap') }),

  'run.completed': obj('run.completed', { output: json() }),
  'run.failed': obj('run.failed', { error: errorRecordSchema, step: optional(stepName) }),
  'run.cancelled': obj('run.cancelled', { reason: optional(str({ max: 500 })) }),
} as const;

export type RunEventType = keyof typeof eventData;
export const RUN_EVENT_TYPES = Object.keys(eventData) as RunEventType[];

/** Event types that are facts from outside; the rest are the machine's recorded decisions. */
export const INPUT_TYPES = [
  'run.started',
  'step.started',
  'step.completed',
  'step.failed',
  'timer.fired',
  'run.signaled',
  'run.cancel-requested',
  'approval.decided',
  'run.retried',
  'policy.decided',
  'credential.decided',
  'child.completed',
  'child.failed',
] as const satisfies readonly RunEventType[];
export type InputEventType = (typeof INPUT_TYPES)[number];
export const INPUT_EVENT_TYPES: ReadonlySet<RunEventType> = new Set(INPUT_TYPES);
/** The machine's recorded decisions: every event type that is not an input. */
export const DECISION_EVENT_TYPES: ReadonlySet<RunEventType> = new Set(RUN_EVENT_TYPES.filter((t) => !INPUT_EVENT_TYPES.has(t)));

export type RunEventData<K extends RunEventType> = Infer<(typeof eventData)[K]>;

/** A run event without its envelope: what a decision produces before it is sequenced. */
export type RunEventBody = { [K in RunEventType]: { type: K; data: RunEventData<K> } }[RunEventType];
export type InputEventBody = Extract<RunEventBody, { type: InputEventType }>;
export type DecisionEventBody = Exclude<RunEventBody, { type: InputEventType }>;

/**
 * The versioned envelope. `seq` is the run-local sequence (1, 2, …), `at` is the decision
 * time in epoch milliseconds set by the orchestrator (machines never read a clock), and
 * `causationId` names the command or event that caused it.
 */
export type RunEvent = RunEventBody & {
  v: typeof EVENT_ENVELOPE_VERSION;
  runId: RunId;
  seq: number;
  at: number;
  causationId: string;
};

const bodySchema = tagged(
  'run event',
  Object.fromEntries(
    Object.entries(eventData).map(([type, data]) => [
      type,
      obj(type, {
        v: literal(EVENT_ENVELOPE_VERSION),
        type: literal(type),
        runId: str({ pattern: RUN_ID_PATTERN }),
        seq: int({ min: 1 }),
        at: int({ min: 0 }),
        causationId: str({ min: 1, max: 256 }),
        data,
      }),
    ]),
  ) as Record<RunEventType, Schema<unknown>>,
);

/** Validates a decoded run event. @throws SchemaError */
export function parseRunEvent(value: unknown): RunEvent {
  return bodySchema.parse(value) as RunEvent;
}

/** Validates an event body (type + data) before it is sequenced. @throws SchemaError */
export function parseEventBody<K extends RunEventType>(type: K, data: unknown): RunEventData<K> {
  return eventData[type].parse(data, 'data') as RunEventData<K>;
}

export function isInputEvent(e: RunEventBody): e is InputEventBody {
  return INPUT_EVENT_TYPES.has(e.type);
}

export type { JsonValue };
export { LIMITS };

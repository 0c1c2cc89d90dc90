/**
 * Commands into the control plane, published to `cap.<t>.cmd.<verb>` (JSON or MessagePack).
 * The verb comes from the subject; the payload is checked against the verb's schema.
 */
import { PayloadTooLargeError, SchemaError } from './errors.js';
import type { RunId } from './ids.js';
import { RUN_ID_PATTERN } from './ids.js';
import { LIMITS } from './limits.js';
import type { CommandVerb } from './names.js';
import { TOKEN_PATTERN } from './names.js';
import type { Infer, Schema } from './validate.js';
import { arr, int, json, jsonObject, literal, obj, optional, str } from './validate.js';
import { actorSchema, credentialAsked, errorRecordSchema, policyAnswer, reasonSchema, timerKinds } from './events.js';
import { bytes } from './secrets.js';

const runId = str({ pattern: RUN_ID_PATTERN }) as unknown as Schema<RunId>;
const stepName = str({ min: 1, max: 64, pattern: TOKEN_PATTERN });
const token = str({ min: 1, max: 64, pattern: TOKEN_PATTERN });
const attempt = int({ min: 1, max: 1000 });
const worker = str({ min: 1, max: 128 });

const commandSchemas = {
  submit: obj('submit', {
    workflow: str({ min: 1, max: 128 }),
    input: optional(jsonObject()),
    runId: optional(runId),
    idempotencyKey: optional(str({ min: 1, max: 256 })),
    /** The orchestrator's own, for a child run: the parent run and the step that started it. */
    parent: optional(obj('parent', { runId, step: stepName, attempt, child: optional(runId) })),
    /** The orchestrator's own, for a continue-as-new: the run this one continues. */
    continuedFrom: optional(runId),
  }),
  /** Signed (see kit's proof.ts): who cancels comes from the proof; `by` as for approve. */
  cancel: obj('cancel', { runId, reason: optional(str({ max: 500 })), by: optional(actorSchema) }),
  signal: obj('signal', { runId, name: token, payload: optional(json()) }),
  started: obj('started', { runId, step: stepName, attempt, worker }),
  result: obj('result', {
    runId,
    step: stepName,
    attempt,
    worker,
    outcome: literal('completed', 'failed'),
    result: optional(json()),
    error: optional(errorRecordSchema),
    durationMs: int({ min: 0 }),
  }),
  timer: obj('timer', {
    runId,
    timerId: token,
    kind: timerKinds,
    step: stepName,
    attempt,
  }),
  /**
   * A person approves a step waiting for approval. The command is signed (proof headers):
   * who decided is the signing credential. `by` and `groups` are heard only from a signer
   * that acts for people it signed in (the console, the admin): its user and that user's
   * approver groups in the tenant. From anyone else they are ignored.
   */
  approve: obj('approve', { runId, step: stepName, by: optional(actorSchema), groups: optional(arr(token, { max: 32 })), reason: optional(reasonSchema) }),
  /** A person denies a step waiting for approval: the run fails with `approval_denied`. Signed, as approve. */
  deny: obj('deny', { runId, step: stepName, by: optional(actorSchema), groups: optional(arr(token, { max: 32 })), reason: optional(reasonSchema) }),
  /** A person reopens a failed run from the step that failed. Signed, as approve. */
  retry: obj('retry', { runId, by: optional(actorSchema), reason: optional(reasonSchema) }),
  /**
   * A mode-3b credential answer, signed by the worker holding the attempt. `answer` is the
   * policy service's signed answer as the worker received it (the request, the reply and
   * the reply's proof headers): the decision recorded is the policy's, never the worker's word.
   */
  credential: obj('credential', {
    runId,
    step: stepName,
    attempt,
    ...credentialAsked,
    ...policyAnswer,
    answer: optional(
      obj('signed policy answer', {
        request: bytes({ min: 1, max: 64 * 1024 }),
        answer: bytes({ min: 1, max: 64 * 1024 }),
        signer: str({ min: 1, max: 16_384 }),
        signature: str({ min: 1, max: 256 }),
      }),
    ),
  }),
  /** The policy's answer to a step's questions, as the orchestrator received it. */
  policy: obj('policy', { runId, step: stepName, attempt, ...policyAnswer }),
  /** The orchestrator's own: a child run ended; `runId` is its parent, which takes the outcome. */
  child: obj('child', {
    runId,
    step: stepName,
    attempt,
    child: runId,
    outcome: literal('completed', 'failed'),
    result: optional(json()),
    error: optional(errorRecordSchema),
  }),
} as const satisfies Record<CommandVerb, Schema<unknown>>;

export type CommandOf<V extends CommandVerb> = Infer<(typeof commandSchemas)[V]>;
export type SubmitCommand = CommandOf<'submit'>;
export type ResultCommand = CommandOf<'result'>;
export type TimerCommand = CommandOf<'timer'>;
export type ApproveCommand = CommandOf<'approve'>;
export type DenyCommand = CommandOf<'deny'>;
export type RetryCommand = CommandOf<'retry'>;
export type Command = { [V in CommandVerb]: { verb: V; body: CommandOf<V> } }[CommandVerb];

export const COMMAND_VERBS = Object.keys(commandSchemas) as CommandVerb[];

export function isCommandVerb(v: string): v is CommandVerb {
  return Object.hasOwn(commandSchemas, v);
}

/**
 * Validates a decoded command body for its verb, including the size caps a schema cannot
 * see (input, result and signal payloads are measured encoded).
 * @throws SchemaError | PayloadTooLargeError
 */
export function parseCommand<V extends CommandVerb>(verb: V, value: unknown, sizeOf: (v: unknown) => number): Command {
  const body = commandSchemas[verb].parse(value) as Record<string, unknown>;
  const capped: [string, number][] = [
    ['input', LIMITS.inputBytes],
    ['result', LIMITS.resultBytes],
    ['payload', LIMITS.signalBytes],
  ];
  for (const [field, limit] of capped) {
    if (body[field] === undefined) continue;
    const size = sizeOf(body[field]);
    if (size > limit) throw new PayloadTooLargeError(`${verb}.${field}`, size, limit);
  }
  if (verb === 'result' && body['outcome'] === 'failed' && body['error'] === undefined) {
    throw new SchemaError('result', 'error', 'is required when outcome is "failed"');
  }
  return { verb, body } as Command;
}

/** Verbs that carry a person's decision about a run: their refusal is always worth a dead letter. */
export const DECISION_VERBS: ReadonlySet<CommandVerb> = new Set<CommandVerb>(['approve', 'deny', 'retry']);

// ---------------------------------------------------------------------------------------
// Worker admission. Not a run command: an admin's record on `cap.<t>.fleet.<workerId>`
// (stream CAP_FLEET_<t>), whose last message is the worker's state. Publishing there is
// the command; NATS permissions decide who may (admins, and workers only where they are
// auto-approved).

/** A worker's admission: `pending` (no record yet), `approved`, `revoked`. */
export const WorkerAdmissionState = { Pending: 'pending', Approved: 'approved', Revoked: 'revoked' } as const;
export type WorkerAdmissionState = (typeof WorkerAdmissionState)[keyof typeof WorkerAdmissionState];

/** Worker ids are subject tokens: they name the worker's admission subject. */
export const WORKER_ID_PATTERN: RegExp = TOKEN_PATTERN;

const workerAdmissionSchema = obj('worker admission', {
  worker: str({ min: 1, max: 64, pattern: WORKER_ID_PATTERN }),
  state: literal(WorkerAdmissionState.Approved, WorkerAdmissionState.Revoked),
  by: actorSchema,
  reason: optional(reasonSchema),
});

/** One admission record as published; its time is the stream's (one clock judges "when"). */
export type WorkerAdmissionRecord = Infer<typeof workerAdmissionSchema>;

/** Validates a decoded admission record. @throws SchemaError */
export function parseWorkerAdmission(value: unknown): WorkerAdmissionRecord {
  return workerAdmissionSchema.parse(value);
}

/**
 * Sandboxed steps (modes 1–3): what a workflow declares, what the worker asks the sandbox
 * service for on `cap.<t>.svc.sandbox.exec`, and what comes back. Results are metadata
 * only (exit status, sizes, artifact digests); output and secret values never travel here.
 */
import type { RunId } from './ids.js';
import { RUN_ID_PATTERN } from './ids.js';
import { errorRecordSchema, Mode } from './events.js';
import type { Infer, Schema } from './validate.js';
import { arr, bool, int, json, jsonObject, literal, obj, optional, str, tagged } from './validate.js';
import { sandboxSpecSchema } from './sandbox-spec.js';

export const sandboxModeSchema = literal(Mode.Sandboxed, Mode.SandboxedWithLease, Mode.Agent);

/**
 * A work item exactly as the worker received it from its pool: the subject it came on, its
 * bytes (base64) and the orchestrator's proof headers. The sandbox service checks the proof
 * itself and runs only what the signed item says.
 */
const signedWorkSchema = obj('signed work item', {
  subject: str({ min: 1, max: 256 }),
  item: str({ min: 1, max: 4_000_000 }),
  signer: str({ max: 16_384 }),
  signature: str({ max: 256 }),
});
export type SignedWork = Infer<typeof signedWorkSchema>;

const execRequestSchema = obj('sandbox exec request', {
  runId: str({ pattern: RUN_ID_PATTERN }) as unknown as Schema<RunId>,
  workflow: str({ min: 1, max: 128 }),
  step: str({ min: 1, max: 64 }),
  attempt: int({ min: 1 }),
  mode: sandboxModeSchema,
  spec: sandboxSpecSchema,
  timeoutMs: int({ min: 1 }),
  input: jsonObject(),
  previous: optional(json()),
  /** A lease the worker had issued for `spec.secrets` (names only ever reach the worker). */
  leaseId: optional(str({ min: 1, max: 128 })),
  /** Mode 3b: the worker's inbox for credential requests from the running step. */
  credentials: optional(str({ min: 1, max: 256 })),
  /** The orchestrator's signed work item this request runs (required: nothing unsigned runs). */
  work: optional(signedWorkSchema),
});
export type SandboxExecRequest = Infer<typeof execRequestSchema>;

/** @throws SchemaError */
export function parseSandboxExecRequest(value: unknown): SandboxExecRequest {
  return execRequestSchema.parse(value);
}

const artifactSchema = obj('artifact', { path: str({ min: 1, max: 1024 }), bytes: int({ min: 0 }), sha256: str({ min: 64, max: 64 }) });
export type Artifact = Infer<typeof artifactSchema>;

/** What a sandboxed attempt reports as its step result: metadata only. */
const resultSchema = obj('sandbox result', {
  sandbox: str({ min: 1, max: 128 }),
  warm: bool(),
  exitCode: int({ min: -1, max: 255 }),
  signal: optional(str({ max: 16 })),
  timedOut: bool(),
  durationMs: int({ min: 0 }),
  stdoutBytes: int({ min: 0 }),
  stderrBytes: int({ min: 0 }),
  artifacts: arr(artifactSchema, { max: 1000 }),
  refused: arr(obj('refused artifact', { path: str({ min: 1, max: 1024 }), reason: str({ max: 64 }) }), { max: 1000 }),
  /** Where artifacts and logs were written (a URI of the destination). */
  destination: optional(str({ max: 2048 })),
});
export type SandboxResult = Infer<typeof resultSchema>;

/** Replies on the request's inbox: accepted, beats while it runs, then one `done`. */
const replySchema = tagged('sandbox reply', {
  accepted: obj('accepted', { type: literal('accepted'), sandbox: str({ min: 1, max: 128 }), warm: bool() }),
  beat: obj('beat', { type: literal('beat'), stdoutBytes: int({ min: 0 }), stderrBytes: int({ min: 0 }) }),
  done: obj('done', { type: literal('done'), result: optional(resultSchema), error: optional(errorRecordSchema) }),
});
export type SandboxReply = Infer<typeof replySchema>;

/** A running step's request for a credential (mode 3b), sent to the worker's inbox. */
const credentialRequestSchema = obj('credential request', { name: str({ min: 1, max: 64, pattern: /^[A-Z_][A-Z0-9_]{0,63}$/ }), reason: str({ max: 500 }) });
export type CredentialRequest = Infer<typeof credentialRequestSchema>;
export function parseCredentialRequest(value: unknown): CredentialRequest {
  return credentialRequestSchema.parse(value);
}
/** The worker's answer: granted (with a lease, when leases are in use) or refused. */
const credentialAnswerSchema = obj('credential answer', { granted: bool(), leaseId: optional(str({ min: 1, max: 128 })), error: optional(errorRecordSchema) });
export type CredentialAnswer = Infer<typeof credentialAnswerSchema>;
export function parseCredentialAnswer(value: unknown): CredentialAnswer {
  return credentialAnswerSchema.parse(value);
}

/**
 * Cancels one attempt (`cap.<t>.svc.sandbox.cancel`): the service holding it kills its
 * process and container (or drops it from the queue) and answers `{ cancelled: true }`; the
 * attempt's exec request then ends with `done` and the error `cancelled`.
 */
const cancelRequestSchema = obj('sandbox cancel request', {
  runId: str({ pattern: RUN_ID_PATTERN }) as unknown as Schema<RunId>,
  step: str({ min: 1, max: 64 }),
  attempt: int({ min: 1 }),
});
export type SandboxCancelRequest = Infer<typeof cancelRequestSchema>;
/** @throws SchemaError */
export function parseSandboxCancelRequest(value: unknown): SandboxCancelRequest {
  return cancelRequestSchema.parse(value);
}

/**
 * The answer to a cancel: `cancelled` when this service held the attempt (running or queued)
 * and has killed it, with how long the kill took; `found: false` when no instance holds it
 * (it ended already, or never reached a sandbox); `error` for a malformed request.
 */
const cancelReplySchema = obj('sandbox cancel reply', {
  cancelled: bool(),
  sandbox: optional(str({ min: 1, max: 128 })),
  killMs: optional(int({ min: 0 })),
  error: optional(errorRecordSchema),
});
export type SandboxCancelReply = Infer<typeof cancelReplySchema>;
/** @throws SchemaError */
export function parseSandboxCancelReply(value: unknown): SandboxCancelReply {
  return cancelReplySchema.parse(value);
}

/** @throws SchemaError */
export function parseSandboxReply(value: unknown): SandboxReply {
  return replySchema.parse(value);
}

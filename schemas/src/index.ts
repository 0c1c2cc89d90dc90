/**
 * @capstan/schemas — the vocabulary every Capstan package shares: ids, subject and stream
 * names, run events, commands, work items, the wire codec and typed errors. Pure: no I/O,
 * no clock, no randomness, so the deterministic `actors/` package may import it.
 */
export {
  ErrorCode,
  CapstanError,
  toErrorRecord,
  InvalidNameError,
  DecodeError,
  SchemaError,
  PayloadTooLargeError,
  UnknownWorkflowError,
  InvalidWorkflowError,
  RunNotFoundError,
  ConcurrencyConflictError,
  EventRejectedError,
  DeterminismViolationError,
  ConfigError,
  InvalidArgumentError,
  UnavailableError,
  ApprovalNotWaitingError,
  RunNotRetryableError,
  CommandRejectedError,
} from './errors.js';
export type { ErrorRecord } from './errors.js';
export {
  TENANT_ID_PATTERN,
  RUN_ID_PATTERN,
  isTenantId,
  parseTenantId,
  isRunId,
  parseRunId,
  makeRunId,
  runIdTime,
} from './ids.js';
export type { TenantId, RunId } from './ids.js';
export {
  TOKEN_PATTERN,
  parseToken,
  CommandVerb,
  DeadLetterSource,
  Subjects,
  Streams,
  StreamKind,
  Consumers,
  Headers,
  MsgIds,
  tenantTokenOf,
  runIdOfSubject,
} from './names.js';
export { EVENT_ENVELOPE_VERSION, LIMITS } from './limits.js';
export {
  Mode,
  TimerKind,
  RUN_EVENT_TYPES,
  INPUT_TYPES,
  INPUT_EVENT_TYPES,
  parseRunEvent,
  parseEventBody,
  isInputEvent,
  errorRecordSchema,
  ApprovalDecision,
  ACTOR_PATTERN,
  actorSchema,
  reasonSchema,
} from './events.js';
export type {
  RunEvent,
  RunEventType,
  RunEventBody,
  RunEventData,
  InputEventType,
  InputEventBody,
  DecisionEventBody,
} from './events.js';
export { parseCommand, isCommandVerb, COMMAND_VERBS, DECISION_VERBS, WorkerAdmissionState, WORKER_ID_PATTERN, parseWorkerAdmission } from './commands.js';
export type {
  Command,
  CommandOf,
  SubmitCommand,
  ResultCommand,
  TimerCommand,
  ApproveCommand,
  DenyCommand,
  RetryCommand,
  WorkerAdmissionRecord,
} from './commands.js';
export { parseWorkItem, parseWorkerHeartbeat } from './work.js';
export type { WorkItem, WorkerHeartbeat } from './work.js';
export { encode, decode, encodedSize } from './codec.js';
export { str, int, num, bool, literal, optional, arr, obj, json, jsonObject, tagged, isPlainObject } from './validate.js';
export type { Schema, Infer, JsonValue } from './validate.js';
export * as db from './db.js';
export { RunStatus, RUN_STATUSES, isRunStatus } from './status.js';
export { ENV_NAME_PATTERN, EGRESS_PATTERN, sandboxSpecSchema, sandboxName } from './sandbox-spec.js';
export type { SandboxSpec } from './sandbox-spec.js';
export { parseSandboxExecRequest, parseSandboxReply } from './sandbox.js';
export type { SandboxExecRequest, SandboxReply, SandboxResult, Artifact } from './sandbox.js';

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
  ProjectionOutOfSyncError,
  ApprovalNotWaitingError,
  RunNotRetryableError,
  CommandRejectedError,
  PermissionDeniedError,
  CredentialsError,
  ExportDamagedError,
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
  SecretsVerb,
  PolicyVerb,
  TriggerVerb,
  DeadLetterSource,
  Subjects,
  Streams,
  StreamKind,
  Consumers,
  Headers,
  MsgIds,
  tenantTokenOf,
  JsApi,
  Platform,
  runIdOfSubject,
} from './names.js';
export { EVENT_ENVELOPE_VERSION, LIMITS, MAX_RUN_EVENTS } from './limits.js';
export { isStandardSchema, issuePath, validateStandard } from './standard-schema.js';
export type { StandardSchemaV1 } from './standard-schema.js';
export { runTraceSchema, parseTraceParent, formatTraceParent, isTraceId, isSpanId } from './trace.js';
export type { RunTrace, TraceParent } from './trace.js';
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
  timerKinds,
  ApprovalDecision,
  PolicyVerdict,
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
export { parseWorkItem, parseWorkerHeartbeat, parseStepCancel } from './work.js';
export type { WorkItem, WorkerHeartbeat, StepCancel } from './work.js';
export { encode, decode, encodedSize } from './codec.js';
export { str, int, num, bool, literal, optional, arr, obj, json, jsonObject, tagged, isPlainObject } from './validate.js';
export type { Schema, Infer, JsonValue, ObjOf } from './validate.js';
export * as db from './db.js';
export { RunStatus, RUN_STATUSES, isRunStatus } from './status.js';
export { ENV_NAME_PATTERN, EGRESS_PATTERN, sandboxSpecSchema, sandboxName } from './sandbox-spec.js';
export type { SandboxSpec } from './sandbox-spec.js';
export { parseSandboxExecRequest, parseSandboxReply, parseCredentialRequest, parseCredentialAnswer, parseSandboxCancelRequest, parseSandboxCancelReply } from './sandbox.js';
export type { SandboxExecRequest, SandboxReply, SandboxResult, Artifact, CredentialRequest, CredentialAnswer, SandboxCancelRequest, SandboxCancelReply } from './sandbox.js';
export {
  Lifecycle,
  LIFECYCLES,
  AuthKind,
  REFRESHABLE_AUTH,
  SECRET_NAME_PATTERN,
  LEASE_ID_PATTERN,
  MAX_LEASE_KEYS,
  MAX_SECRET_BYTES,
  SEALED_BOX_VERSION,
  authStrategySchema,
  connectorSchema,
  sealedBoxSchema,
  leaseAad,
  putAad,
  parseLeaseRequest,
  parseLeaseGrant,
  parseRedeemRequest,
  parseRedeemReply,
  parseClaimRequest,
  parseClaimReply,
  parseRevokeRequest,
  parseRevokeReply,
  parsePutRequest,
  parseRotateRequest,
  parseDeleteRequest,
  parseListRequest,
  parseKeyRequest,
  parseSecretReply,
  parseListReply,
  parseKeyReply,
  LeaseDeniedError,
  SecretNotFoundError,
  SecretsUnavailableError,
  secretsErrorFromWire,
} from './secrets.js';
export type {
  AuthStrategy,
  Connector,
  SealedBox,
  LeaseRequest,
  LeaseGrant,
  RedeemRequest,
  RedeemReply,
  ClaimRequest,
  ClaimReply,
  RevokeRequest,
  RevokeReply,
  PutRequest,
  RotateRequest,
  DeleteRequest,
  ListRequest,
  KeyReply,
  SecretInfo,
  LeaseDenialCode,
} from './secrets.js';
export {
  PolicyAction,
  POLICY_ACTIONS,
  POLICY_DECISION_LIMITS,
  MAX_POLICY_QUERIES,
  MAX_POLICY_TEXT_BYTES,
  POLICY_WORKFLOW_PATTERN,
  POLICY_STEP_PATTERN,
  APPROVERS_PATTERN,
  parsePolicyDecision,
  combineDecisions,
  boundDecision,
  parsePolicyVersionRecord,
  parsePolicyRequest,
  parsePolicyReply,
  isPolicyVerb,
  formatDiagnostic,
  policyErrorReply,
  PolicyInvalidError,
  PolicyUnavailableError,
  PolicyVersionNotFoundError,
} from './policy.js';
export type {
  PolicyQuery,
  PolicyDecision,
  PolicyVersionRecord,
  PolicyVersionSummary,
  PolicyRequest,
  PolicyReply,
  PolicyDiagnostic,
  PolicyErrorReply,
} from './policy.js';
export {
  Role,
  TENANT_ROLES,
  SERVICE_ROLES,
  isServiceRole,
  isTenantRole,
  inboxPrefixFor,
  permissionsFor,
  platformPermissions,
} from './permissions.js';
export type { TenantRole, ServiceRole, RolePermissions, RoleScope } from './permissions.js';
export { DEFAULT_TENANT_QUOTA, tenantQuotaSchema, parseTenantRecord } from './tenancy.js';
export type { TenantQuota, TenantRecord } from './tenancy.js';
export {
  TRIGGER_ID_PATTERN,
  JSON_POINTER_PATTERN,
  OverlapPolicy,
  CatchupPolicy,
  ScheduleStatus,
  ScheduleOp,
  SCHEDULE_LIMITS,
  parseScheduleSpec,
  parseScheduleCommand,
  parseScheduleRecord,
  parseScheduleFire,
  parseScheduleState,
  parseWebhookRoute,
  parseSeenDelivery,
  parseVerifyRequest,
  parseVerifyReply,
  MAX_VERIFY_BODY_BYTES,
} from './triggers.js';
export type { VerifyRequest, VerifyReply, ScheduleSpec, ScheduleCommand, ScheduleRecord, ScheduleFire, ScheduleState, WebhookRoute, SeenDelivery } from './triggers.js';

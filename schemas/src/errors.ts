/**
 * Typed errors shared by every Capstan package.
 *
 * One class per failure a caller can act on. Each carries a stable string `code`
 * (the contract: branch on it, never on the message), says whether retrying can help,
 * and sets `name` from its class so a serialized error still says what it was.
 * Messages never contain payloads or secret values: data goes in typed fields.
 */

/** Every error code Capstan emits, on the wire (`Capstan-Error-Code`) and in events. */
export const ErrorCode = {
  /** A message that must be signed carries no valid signature from a trusted author. */
  Unproven: 'unproven',
  /**
   * A work item a worker or the sandbox service will not execute: unsigned, signed by anyone
   * but the orchestrator, altered after signing, or not the one its run recorded.
   */
  WorkRejected: 'work_rejected',
  /**
   * A proven decision by someone the run does not accept for it: outside the approver group
   * the policy named, the run's own requester where the policy does not allow that, or a
   * credential whose role may not decide.
   */
  ApproverNotAllowed: 'approver_not_allowed',
  /**
   * A report about a step attempt (a mode-3b credential answer) signed by a worker the run's
   * record does not show holding that attempt: another pool, another worker than the one
   * recorded as running it, or an attempt that is not a running mode-3b step.
   */
  StepNotHeld: 'step_not_held',
  InvalidTenantId: 'invalid_tenant_id',
  InvalidRunId: 'invalid_run_id',
  InvalidName: 'invalid_name',
  DecodeFailed: 'decode_failed',
  SchemaViolation: 'schema_violation',
  PayloadTooLarge: 'payload_too_large',
  UnknownWorkflow: 'unknown_workflow',
  UnknownTenant: 'unknown_tenant',
  UnknownHandler: 'unknown_handler',
  InvalidWorkflow: 'invalid_workflow',
  RunNotFound: 'run_not_found',
  RunAlreadyExists: 'run_already_exists',
  /**
   * A submit that names a run id in the space the engine derives children's and
   * continuations' ids in (see `isDerivedRunId`): only the orchestrator starts runs there.
   */
  RunIdReserved: 'run_id_reserved',
  EventRejected: 'event_rejected',
  StaleAttempt: 'stale_attempt',
  ConcurrencyConflict: 'concurrency_conflict',
  DeterminismViolation: 'determinism_violation',
  StepFailed: 'step_failed',
  StepTimeout: 'step_timeout',
  WorkerLost: 'worker_lost',
  RetriesExhausted: 'retries_exhausted',
  Cancelled: 'cancelled',
  InvalidConfig: 'invalid_config',
  InvalidArgument: 'invalid_argument',
  Unavailable: 'unavailable',
  /**
   * A tenant's projections no longer follow its run stream (the stream was created again, or
   * ends before what the projections applied): reads of the tenant are refused rather than
   * served from rows of another stream. `capstan projections rebuild` repairs it.
   */
  ProjectionOutOfSync: 'projection_out_of_sync',
  NatsServerMissing: 'nats_server_missing',
  SandboxImageFailed: 'sandbox_image_failed',
  /** No sandbox backend can run the step (no Docker engine, no sandbox service): never run unsandboxed. */
  SandboxUnavailable: 'sandbox_unavailable',
  /** The sandbox or the service driving it went away mid-step; a new attempt gets a new sandbox. */
  SandboxLost: 'sandbox_lost',
  SandboxFailed: 'sandbox_failed',
  /** A container with this attempt's deterministic name already exists. */
  SandboxConflict: 'sandbox_conflict',
  /** The step's command exited non-zero or was killed. */
  SandboxExit: 'sandbox_exit',
  /** The step wrote more than the sandbox's output cap (`SANDBOX_MAX_OUTPUT_MB`); it was killed there. */
  SandboxOutputLimit: 'sandbox_output_limit',
  SecretNotFound: 'secret_not_found',
  /** A lease id the tenant never issued. */
  LeaseNotFound: 'lease_not_found',
  /** A lease redeemed after its expiry, by the lease database's clock. */
  LeaseExpired: 'lease_expired',
  /** A lease redeemed a second time: leases are single use. */
  LeaseUsed: 'lease_used',
  /** A lease of a run that was revoked (by request, or because the run ended). */
  LeaseRevoked: 'lease_revoked',
  /** A lease redeemed for another run, step or attempt than it was issued for. */
  LeaseScopeMismatch: 'lease_scope_mismatch',
  /**
   * A lease the run's record does not warrant: no such step attempt, key names it did not
   * declare (or its policy did not allow), or a caller it does not name.
   */
  LeaseNotWarranted: 'lease_not_warranted',
  /** A redemption or claim by anyone but the sandbox service the lease is bound to. */
  LeaseWrongRedeemer: 'lease_wrong_redeemer',
  /**
   * A worker's second lease for a key of one step attempt: a key is leased to a worker's
   * attempt once (its declared keys in one lease, each mode-3b credential in one more).
   */
  LeaseAlreadyIssued: 'lease_already_issued',
  /** A token endpoint a credential refresher will not call (not https, or an address it may not reach). */
  EndpointRefused: 'endpoint_refused',
  /** The secrets service's sealing key is not the one pinned when the tenant was added. */
  SealingKeyMismatch: 'sealing_key_mismatch',
  /** No lease service answered, or it cannot reach its store. Retryable. */
  SecretsUnavailable: 'secrets_unavailable',
  /** A refreshable credential could not be refreshed through its connector. Retryable. */
  CredentialRefreshFailed: 'credential_refresh_failed',
  EgressDenied: 'egress_denied',
  /** The tenant's policy refused a step (its mode, a secret, an egress host). */
  PolicyDenied: 'policy_denied',
  /** A policy text Cedar refused; the error carries Cedar's diagnostics. Nothing was stored. */
  PolicyInvalid: 'policy_invalid',
  /** No policy service answered. Retryable; never read as an allow. */
  PolicyUnavailable: 'policy_unavailable',
  PolicyVersionNotFound: 'policy_version_not_found',
  /** Nobody decided a needs-approval step before its approval expired. */
  ApprovalExpired: 'approval_expired',
  /** A person denied a step waiting for approval; the run failed. */
  ApprovalDenied: 'approval_denied',
  ApprovalNotWaiting: 'approval_not_waiting',
  RunNotRetryable: 'run_not_retryable',
  /** A wait for a signal reached its timeout and the workflow says that fails the run. */
  SignalTimeout: 'signal_timeout',
  /** A bounded loop ran its last iteration without its exit condition holding. */
  LoopLimit: 'loop_limit',
  /** A fan-out cannot reach the results its fan-in needs (too many items failed), or has too many items. */
  FanOutFailed: 'fan_out_failed',
  /** The run reached its event cap; it ended rather than be refused by its stream. */
  EventCapReached: 'event_cap_reached',
  /** A child run failed or was cancelled: the step that started it fails (its retries may start another). */
  ChildFailed: 'child_failed',
  /** A workflow function (a condition, a list to fan out over) threw or returned the wrong kind of value. */
  WorkflowFunctionFailed: 'workflow_function_failed',
  /**
   * The audit store did not take the intent of an external write, so the write was not done
   * (audit first). Retryable: the step's next attempt asks again.
   */
  AuditUnavailable: 'audit_unavailable',
  /** nats-server refused a publish, subscription or API call: the credential does not allow it. */
  PermissionDenied: 'permission_denied',
  /** The tenant's account reached a quota (storage, streams, consumers, connections). */
  QuotaExceeded: 'quota_exceeded',
  /** A credentials file that is missing, unreadable, malformed, or for another tenant or role. */
  CredentialsInvalid: 'credentials_invalid',
  /** A tenant's replica count or placement tags that the servers cannot satisfy (too few nodes, no node with the tags). */
  PlacementInvalid: 'placement_invalid',
  /** The operator's key store (`CAPSTAN_AUTH_DIR`) is missing or incomplete. */
  AuthStoreMissing: 'auth_store_missing',
  /** A schedule id the tenant has no (live) schedule under. */
  ScheduleNotFound: 'schedule_not_found',
  /** A schedule id already taken by a live schedule: delete it first. */
  ScheduleExists: 'schedule_exists',
  /** A webhook route the tenant does not have (or has disabled). */
  RouteNotFound: 'route_not_found',
  /** A webhook delivery whose signature headers are missing or match none of the route's secrets. */
  WebhookSignatureInvalid: 'webhook_signature_invalid',
  /** A webhook delivery whose timestamp is outside the tolerance window (too old, or in the future). */
  WebhookTimestampInvalid: 'webhook_timestamp_invalid',
  /** A `webhook-id` seen before with a different body: a delivery id may not be reused. */
  WebhookIdConflict: 'webhook_id_conflict',
  /** Too many requests for the tenant; retry after the time the answer names. */
  RateLimited: 'rate_limited',
  /**
   * An incident-review export file that is damaged, truncated or altered: a record does not
   * parse, does not chain to the one before it, or the file does not end with its checksum.
   */
  ExportDamaged: 'export_damaged',
  /** No connection, model or destination by that id in the tenant. */
  DatasyncNotFound: 'datasync_not_found',
  /** No datasync service answered, or its state database is away. Retryable. */
  DatasyncUnavailable: 'datasync_unavailable',
  /** A preview query that is not one read-only SELECT/WITH; nothing reached the source. */
  QueryRefused: 'query_refused',
  /** A preview query that ran past its statement timeout (the source cancelled it). */
  QueryTimeout: 'query_timeout',
  /** The source or destination database cannot be reached. Retryable. */
  SourceUnavailable: 'source_unavailable',
  /** The source or destination database refused a statement (permissions, types, constraints). */
  SourceFailed: 'source_failed',
  /** The model names a table or column the source does not have, or keys that are not unique. */
  SchemaMismatch: 'schema_mismatch',
  /** Another run of the same pipeline holds it (or this step of this run is running already). Retryable. */
  PipelineBusy: 'pipeline_busy',
} as const;
export type ErrorCode = (typeof ErrorCode)[keyof typeof ErrorCode];

const kCapstanError = Symbol.for('capstan.CapstanError');

/** Plain-data form of an error, as recorded in events and dead letters. */
export interface ErrorRecord {
  readonly code: ErrorCode | (string & {});
  readonly message: string;
  readonly retryable: boolean;
}

/**
 * Base class. Use {@link CapstanError.is} rather than `instanceof`: errors cross package
 * copies, worker threads and replays, where `instanceof` does not hold.
 */
export class CapstanError extends Error {
  declare readonly [kCapstanError]: true;
  constructor(
    readonly code: ErrorCode,
    message: string,
    readonly retryable = false,
    options?: ErrorOptions,
  ) {
    super(message, options);
    this.name = new.target.name;
  }

  /**
   * Whether `e` is a Capstan error (by its brand, not its class), and with `code`, one with
   * that code: `CapstanError.is(e, ErrorCode.SchemaViolation)` rather than `instanceof SchemaError`.
   */
  static is(e: unknown, code?: ErrorCode): e is CapstanError {
    return typeof e === 'object' && e !== null && kCapstanError in e && (code === undefined || (e as CapstanError).code === code);
  }

  toRecord(): ErrorRecord {
    return { code: this.code, message: this.message, retryable: this.retryable };
  }
}
Object.defineProperty(CapstanError.prototype, kCapstanError, { value: true });

/** Turns anything thrown into an {@link ErrorRecord}; unknown errors become `step_failed`. */
export function toErrorRecord(e: unknown, fallback: ErrorCode = ErrorCode.StepFailed): ErrorRecord {
  if (CapstanError.is(e)) return e.toRecord();
  const message = e instanceof Error ? e.message : String(e);
  return { code: fallback, message: message.slice(0, 500), retryable: true };
}

/** `String(v)` that cannot throw (a null-prototype object, a hostile `toString`): for untrusted values in messages. */
export function showValue(v: unknown): string {
  try {
    return String(v);
  } catch {
    return `[${typeof v}]`;
  }
}

/** A name (tenant id, subject token, stream name) failed validation; it never became a subject. */
export class InvalidNameError extends CapstanError {
  constructor(
    code: typeof ErrorCode.InvalidTenantId | typeof ErrorCode.InvalidRunId | typeof ErrorCode.InvalidName,
    readonly kind: string,
    readonly value: string,
    readonly rule: string,
  ) {
    // The value is shown escaped and cut: it is untrusted input.
    super(code, `invalid ${kind} ${JSON.stringify(value.slice(0, 64))}: must match ${rule}`);
  }
}

/** Bytes that could not be decoded (not MessagePack, not JSON, or a hostile structure). */
export class DecodeError extends CapstanError {
  constructor(reason: string, options?: ErrorOptions) {
    super(ErrorCode.DecodeFailed, `cannot decode message: ${reason}`, false, options);
  }
}

/** A decoded value that does not match its runtime schema. `path` points at the first problem. */
export class SchemaError extends CapstanError {
  constructor(
    readonly schema: string,
    readonly path: string,
    readonly problem: string,
  ) {
    super(ErrorCode.SchemaViolation, `${schema}: ${path || '(root)'} ${problem}`);
  }
}

export class PayloadTooLargeError extends CapstanError {
  constructor(
    readonly what: string,
    readonly size: number,
    readonly limit: number,
  ) {
    super(ErrorCode.PayloadTooLarge, `${what} is ${size} bytes; the limit is ${limit}`);
  }
}

export class UnknownWorkflowError extends CapstanError {
  constructor(
    readonly workflow: string,
    readonly version?: number,
  ) {
    super(
      ErrorCode.UnknownWorkflow,
      version === undefined ? `unknown workflow ${JSON.stringify(workflow.slice(0, 64))}` : `workflow ${JSON.stringify(workflow)} has no registered version ${version}`,
    );
  }
}

export class InvalidWorkflowError extends CapstanError {
  constructor(
    readonly workflow: string,
    problem: string,
  ) {
    super(ErrorCode.InvalidWorkflow, `workflow ${JSON.stringify(workflow)}: ${problem}`);
  }
}

export class RunNotFoundError extends CapstanError {
  constructor(
    readonly tenant: string,
    readonly runId: string,
  ) {
    super(ErrorCode.RunNotFound, `run ${runId} not found in tenant ${tenant}`);
  }
}

/**
 * A run id a client chose lies in the engine's reserved space (`isDerivedRunId`): a run there
 * could take the id a parent derives for its child or its continuation. Choose another id.
 */
export class RunIdReservedError extends CapstanError {
  constructor(readonly runId: string) {
    super(ErrorCode.RunIdReserved, `run id ${runId} is reserved for runs the engine derives (children, continuations); choose another id`);
  }
}

/** The run's stream moved on under us (another writer appended). Reload and decide again. */
export class ConcurrencyConflictError extends CapstanError {
  constructor(
    readonly runId: string,
    readonly expectedSeq: number,
    options?: ErrorOptions,
  ) {
    super(ErrorCode.ConcurrencyConflict, `run ${runId} changed since stream seq ${expectedSeq}`, true, options);
  }
}

/** The run's machine does not accept this event in its current state (stale or out of order). */
export class EventRejectedError extends CapstanError {
  constructor(
    code: typeof ErrorCode.EventRejected | typeof ErrorCode.StaleAttempt,
    readonly runId: string,
    readonly eventType: string,
    readonly state: string,
  ) {
    super(code, `${runId ? `run ${runId}` : 'run'} in state ${state} does not accept ${eventType}`);
  }
}

/**
 * An approval decision for a step that is not waiting for one: decided already (approved,
 * denied or signaled), not reached yet, or not an approval step. Nothing is recorded.
 */
export class ApprovalNotWaitingError extends CapstanError {
  constructor(
    readonly step: string,
    readonly why: string,
  ) {
    super(ErrorCode.ApprovalNotWaiting, `step ${JSON.stringify(step.slice(0, 64))} is not waiting for an approval decision: ${why}`);
  }
}

/** A retry of a run that cannot be retried (it has not failed, or its workflow cannot resume). */
export class RunNotRetryableError extends CapstanError {
  constructor(
    readonly status: string,
    why: string,
  ) {
    super(ErrorCode.RunNotRetryable, `the run cannot be retried: ${why}`);
  }
}

/**
 * A command the control plane refused after storing it, rebuilt by the client from the
 * dead letter's headers (`Capstan-Error-Code`, `Capstan-Error`). `code` is the refusal's own
 * code (`approval_not_waiting`, `run_not_retryable`, `run_not_found`, …): branch on it.
 */
export class CommandRejectedError extends CapstanError {
  constructor(
    code: string,
    message: string,
    readonly verb: string,
    /** Stream sequence of the refused command (its PubAck's `seq`). */
    readonly commandSeq: number,
    readonly runId?: string,
  ) {
    super(code as ErrorCode, message);
  }
}

/** Replay of recorded events through the recorded machine version did not reproduce the record. */
export class DeterminismViolationError extends CapstanError {
  constructor(
    readonly runId: string,
    readonly seq: number,
    readonly diff: readonly string[],
  ) {
    super(ErrorCode.DeterminismViolation, `run ${runId} diverges at event ${seq}:\n  ${diff.join('\n  ')}`);
  }
}

/** Every configuration problem at once, so one restart fixes them all. */
export class ConfigError extends CapstanError {
  constructor(readonly problems: readonly string[]) {
    super(ErrorCode.InvalidConfig, `invalid configuration:\n  - ${problems.join('\n  - ')}`);
  }
}

export class InvalidArgumentError extends CapstanError {
  constructor(message: string) {
    super(ErrorCode.InvalidArgument, message);
  }
}

/** A replica count or placement the cluster cannot give: nothing was created or changed. */
export class PlacementError extends CapstanError {
  constructor(message: string) {
    super(ErrorCode.PlacementInvalid, message);
  }
}

export class UnavailableError extends CapstanError {
  constructor(message: string, options?: ErrorOptions) {
    super(ErrorCode.Unavailable, message, true, options);
  }
}

/** nats-server refused an operation for this credential; the subject names what. Not retryable. */
export class PermissionDeniedError extends CapstanError {
  constructor(
    readonly operation: string,
    readonly subject: string,
    options?: ErrorOptions,
  ) {
    super(ErrorCode.PermissionDenied, `permission denied: this credential may not ${operation} ${subject}`, false, options);
  }
}

/** A credentials file that cannot be used; `path` names it, never its content. */
export class CredentialsError extends CapstanError {
  constructor(
    readonly path: string,
    problem: string,
    options?: ErrorOptions,
  ) {
    super(ErrorCode.CredentialsInvalid, `credentials ${path}: ${problem}`, false, options);
  }
}

/** See {@link ErrorCode.ProjectionOutOfSync}. Retryable: a rebuild (automatic in dev) clears it. */
export class ProjectionOutOfSyncError extends CapstanError {
  constructor(
    readonly tenant: string,
    message: string,
  ) {
    super(ErrorCode.ProjectionOutOfSync, message, true);
  }
}

/**
 * An export file (`capstan export`) that cannot be trusted: `record` is the 1-based number of
 * the first bad record (line), or the record count + 1 when the file ends too early.
 */
export class ExportDamagedError extends CapstanError {
  constructor(
    readonly record: number,
    readonly problem: string,
  ) {
    super(ErrorCode.ExportDamaged, `export file damaged at record ${record}: ${problem}`);
  }
}

/** See {@link ErrorCode.Unproven}: a missing, malformed, untrusted or wrong signature. */
export class UnprovenError extends CapstanError {
  constructor(problem: string, options?: ErrorOptions) {
    super(ErrorCode.Unproven, `unproven: ${problem}`, false, options);
  }
}

/** See {@link ErrorCode.WorkRejected}: nothing ran and nothing was leased. */
export class WorkRejectedError extends CapstanError {
  constructor(problem: string, options?: ErrorOptions) {
    super(ErrorCode.WorkRejected, `work item rejected: ${problem}`, false, options);
  }
}

/** See {@link ErrorCode.StepNotHeld}: nothing is recorded on the run. */
export class StepNotHeldError extends CapstanError {
  constructor(message: string) {
    super(ErrorCode.StepNotHeld, message, false);
  }
}

/** See {@link ErrorCode.ApproverNotAllowed}. */
export class ApproverNotAllowedError extends CapstanError {
  constructor(message: string) {
    super(ErrorCode.ApproverNotAllowed, message, false);
  }
}

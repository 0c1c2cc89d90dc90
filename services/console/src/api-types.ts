/**
 * The console's HTTP API contract: every request and response shape under `/api`, shared by
 * the server and the web UI. Self-contained on purpose (no imports): the UI compiles it for
 * the browser. Times are ISO 8601 strings (UTC); absent values are `null`, never omitted,
 * unless a field is marked optional.
 *
 * Stability: fields are added, never renamed or removed.
 *
 * Conventions
 * - JSON in and out. Errors are `ApiErrorBody` with status 400 (bad input), 401 (no or
 *   expired session, a bad or expired token), 403 (role or tenant not allowed, CSRF check
 *   failed, a token used for anything but a read), 404 (no such
 *   run, approval, worker or endpoint), 409 (the action does not apply to the current state),
 *   429 (too many failed sign-ins for one user; wait and retry),
 *   501 (reserved: an action whose command the control plane lacks), 503 (NATS or the
 *   database is unreachable, or no orchestrator decided an approve/deny/retry in time).
 *   A refusal by the control plane itself (`approval_not_waiting`, `run_not_retryable`, …)
 *   is a 409 carrying the control plane's code and message.
 * - The session is an HttpOnly cookie set by sign-in; the UI never reads it. Every call that
 *   is not a GET must carry the header `x-csrf-token` (`CSRF_HEADER`) equal to
 *   `SessionInfo.csrfToken`, and be same-origin (the browser's `Origin` header is checked).
 * - Programs (the `capstan` CLI, scripts) send `Authorization: Bearer <token>` instead: an API
 *   token of a console user (`tokens` in the users file, see docs/console.md). It reads what
 *   that user's session would read, in the same tenants with the same roles; it never acts
 *   (any call but GET/HEAD answers 403 `token_read_only`), so it needs no CSRF token. It is
 *   taken from that header only, never from a cookie. A request with the header is judged
 *   by it alone: a malformed or unknown token is 401 `bad_token`, an expired one 401
 *   `token_expired`, whatever cookie comes with it.
 * - Tenant routes are `/api/tenants/:tenant/...`; a tenant not in `SessionInfo.tenants`
 *   answers 403.
 * - Unauthenticated: `GET /healthz`, `POST /api/auth/signin`, `POST /api/auth/link`, and the
 *   UI's static files (the `/signin` page included). Everything else needs a session.
 *
 * Endpoints
 *   POST /api/auth/signin                                   SignInRequest      → SessionInfo (sets the cookie)
 *   POST /api/auth/link                                     LinkSignInRequest  → SessionInfo (one-time token from a sign-in link)
 *   POST /api/auth/signout                                  {}                 → 204
 *   GET  /api/session                                                          → SessionInfo
 *   GET  /api/tenants/:tenant/runs                          RunsQuery          → RunsPageResponse
 *   GET  /api/tenants/:tenant/runs/stream                   (SSE)              → events named by RunStreamEventName
 *   GET  /api/tenants/:tenant/runs/:runId                                      → RunDetailResponse
 *   POST /api/tenants/:tenant/runs/:runId/cancel            CancelRequest      → ActionResponse (operator)
 *   POST /api/tenants/:tenant/runs/:runId/signal            SignalRequest      → ActionResponse (operator)
 *   POST /api/tenants/:tenant/runs/:runId/retry             RetryRequest       → ActionResponse (operator)
 *   POST /api/tenants/:tenant/runs/:runId/approvals/:step/approve  DecisionRequest → ActionResponse (operator)
 *   POST /api/tenants/:tenant/runs/:runId/approvals/:step/deny     DecisionRequest → ActionResponse (operator)
 *   GET  /api/tenants/:tenant/approvals                     ApprovalsQuery     → ApprovalsResponse
 *   GET  /api/tenants/:tenant/workers                                          → WorkersResponse
 *   POST /api/tenants/:tenant/workers/:workerId/approve     WorkerActionRequest → ActionResponse (admin)
 *   POST /api/tenants/:tenant/workers/:workerId/revoke      WorkerActionRequest → ActionResponse (admin)
 *   GET  /api/tenants/:tenant/audit                         AuditQuery         → AuditPageResponse
 *   GET  /api/tenants/:tenant/audit.csv                     AuditQuery (no cursor; limit up to AUDIT_CSV_MAX_ROWS) → text/csv
 *   GET  /api/tenants/:tenant/system                                           → SystemResponse
 *   GET  /api/system                                                           → PlatformSystemResponse (the caller's tenants)
 *   GET  /api/tenants/:tenant/policies                                         → PoliciesResponse
 *   GET  /api/tenants/:tenant/policies/:version                                → PolicyVersionResponse (400 bad version, 404 none)
 *   GET  /api/tenants/:tenant/workflows                                        → WorkflowsResponse (503: no orchestrator answered)
 *   POST /api/tenants/:tenant/runs                          StartRunRequest    → ActionResponse (operator; 404 unknown workflow)
 *   GET  /api/tenants/:tenant/schedules                                        → SchedulesResponse
 *   POST /api/tenants/:tenant/schedules                     CreateScheduleRequest → ActionResponse (operator)
 *   POST /api/tenants/:tenant/schedules/:id/{pause,resume,trigger,delete}  ScheduleActionRequest → ActionResponse (operator)
 *   GET  /api/tenants/:tenant/routes                                           → RoutesResponse
 *   GET  /api/tenants/:tenant/datasync                                         → DatasyncResponse
 *   POST /api/tenants/:tenant/datasync/:kind/:id            DatasyncPutRequest → DatasyncEntityResponse (admin)
 *   POST /api/tenants/:tenant/datasync/:kind/:id/delete     {}                 → DatasyncEntityResponse (admin)
 *   POST /api/tenants/:tenant/datasync/runs                 PipelineRunRequest → ActionResponse (operator)
 *   POST /api/tenants/:tenant/datasync/preview              PreviewRequest     → PreviewResponse (operator)
 *
 * Paths are built with `apiPaths` below; path segments are percent-encoded there.
 */

// ---------------------------------------------------------------------------------------
// Roles and sessions.

export const ROLES = ['viewer', 'operator', 'admin'] as const;
export type Role = (typeof ROLES)[number];

/** What each action needs at least; a higher role may do everything a lower one may. */
export const ACTION_ROLE = {
  cancel: 'operator',
  signal: 'operator',
  retry: 'operator',
  approve: 'operator',
  deny: 'operator',
  approveWorker: 'admin',
  revokeWorker: 'admin',
  start: 'operator',
  createSchedule: 'operator',
  pauseSchedule: 'operator',
  resumeSchedule: 'operator',
  triggerSchedule: 'operator',
  deleteSchedule: 'operator',
  runPipeline: 'operator',
  /** The preview returns rows of the tenant's data: more than a viewer sees. */
  preview: 'operator',
  putEntity: 'admin',
  deleteEntity: 'admin',
} as const satisfies Record<string, Role>;
export type ActionName = keyof typeof ACTION_ROLE;

/** True when `role` may perform `action` (the server checks again; this is for the UI). */
export function roleAllows(role: Role, action: ActionName): boolean {
  return ROLES.indexOf(role) >= ROLES.indexOf(ACTION_ROLE[action]);
}

export const CSRF_HEADER = 'x-csrf-token';

export interface SignInRequest {
  readonly userId: string;
  readonly password: string;
}

/** The token of a one-time sign-in link (`/signin?token=…`): single use, expires in minutes. */
export interface LinkSignInRequest {
  readonly token: string;
}

export interface SessionInfo {
  readonly userId: string;
  readonly orgId: string;
  readonly role: Role;
  /** The tenants this session may see; every tenant route is scoped to one of them. */
  readonly tenants: readonly string[];
  /** Send back as the `x-csrf-token` header on every non-GET call (empty for a token, which only reads). */
  readonly csrfToken: string;
  readonly expiresAt: string;
  /** The name of the API token the request came with, when it came with one rather than a session. */
  readonly token?: string;
}

// ---------------------------------------------------------------------------------------
// Errors.

/**
 * Codes of the console itself; codes of the platform (`invalid_argument`, `run_not_found`, …)
 * pass through. Each is answered with the status kit's http-status.ts gives it, the table
 * every Capstan API shares.
 */
export const ApiErrorCode = {
  Unauthenticated: 'unauthenticated',
  Forbidden: 'forbidden',
  CsrfFailed: 'csrf_failed',
  BadCredentials: 'bad_credentials',
  BadToken: 'bad_token',
  TokenExpired: 'token_expired',
  TokenReadOnly: 'token_read_only',
  TooManyAttempts: 'too_many_attempts',
  NotFound: 'not_found',
  Conflict: 'conflict',
  NotImplemented: 'not_implemented',
  InvalidArgument: 'invalid_argument',
  Unavailable: 'unavailable',
  Internal: 'internal',
} as const;
export type ApiErrorCode = (typeof ApiErrorCode)[keyof typeof ApiErrorCode];

/**
 * The mark of the run ids runs derive for the runs they start (`DERIVED_RUN_ID_MARK` in
 * @capstan/schemas, repeated here for the browser, which imports nothing; a unit test holds
 * the two together): an id the browser makes must not carry it, or the start is refused
 * (`run_id_reserved`).
 */
export const DERIVED_RUN_ID_MARK = 'CAPS';

export interface ApiErrorBody {
  readonly error: {
    readonly code: ApiErrorCode | (string & {});
    readonly message: string;
  };
}

// ---------------------------------------------------------------------------------------
// Runs.

export const RUN_STATUS_VALUES = ['pending', 'running', 'waiting', 'completed', 'failed', 'cancelled'] as const;
export type RunStatusName = (typeof RUN_STATUS_VALUES)[number];

/**
 * Query parameters of the runs list (all optional, each at most once except `where`):
 * - `status`: one of RUN_STATUS_VALUES
 * - `workflow`: exact workflow name
 * - `since` / `until`: started at or after / before; a duration back from now (`30m`, `2h`,
 *   `7d`, `1w`) or an ISO 8601 time with a zone
 * - `where`: `key=value`, repeatable (up to 8): typed search fields, a run matches all
 * - `limit`: 1 to 500, default 50
 * - `cursor`: the `nextCursor` of the previous page
 */
export interface RunsQuery {
  readonly status?: RunStatusName;
  readonly workflow?: string;
  readonly since?: string;
  readonly until?: string;
  readonly where?: readonly string[];
  readonly limit?: number;
  readonly cursor?: string;
}

export interface RunSummary {
  readonly tenant: string;
  readonly runId: string;
  readonly workflow: string;
  readonly version: number;
  readonly status: RunStatusName;
  readonly currentStep: string | null;
  /** Attempts scheduled so far, over all steps. */
  readonly attempts: number;
  readonly errorCode: string | null;
  readonly errorMessage: string | null;
  readonly startedAt: string;
  readonly updatedAt: string;
  readonly endedAt: string | null;
  /** Run-local sequence of the last event the projections applied. */
  readonly lastSeq: number;
  /** Times a person retried the run after it failed (0 where retries are not recorded). */
  readonly retries: number;
  readonly retriedAt: string | null;
  readonly retriedBy: string | null;
}

export interface RunsPageResponse {
  /** Newest first (by start time). */
  readonly runs: RunSummary[];
  /** Present when more runs follow: pass it back as `cursor`. */
  readonly nextCursor?: string;
}

export const STEP_MODES = ['inline', 'sandboxed', 'sandboxed-lease', 'agent'] as const;
export type StepMode = (typeof STEP_MODES)[number];

/** One attempt of one step (a row of the `steps` projection). */
export interface StepAttempt {
  readonly step: string;
  readonly attempt: number;
  readonly mode: StepMode;
  readonly pool: string;
  readonly handler: string;
  readonly worker: string | null;
  /** The sandbox (container) the attempt ran in, when it ran in one. */
  readonly sandbox: string | null;
  /** `scheduled`, `running`, `completed`, `failed`, … as the projector records it. */
  readonly outcome: string;
  readonly scheduledAt: string;
  readonly startedAt: string | null;
  readonly finishedAt: string | null;
  readonly durationMs: number | null;
  /** The step's metadata result (small JSON), when it completed. */
  readonly result: JsonValue | null;
  readonly errorCode: string | null;
  readonly errorMessage: string | null;
}

/** One step of the run's trace with all its attempts, for a waterfall. */
export interface TraceStep {
  readonly step: string;
  readonly mode: StepMode;
  readonly pool: string;
  readonly handler: string;
  /** The last attempt's outcome. */
  readonly outcome: string;
  readonly attempts: readonly StepAttempt[];
  /** First attempt scheduled, as milliseconds after the run started (never negative). */
  readonly offsetMs: number;
  /** From the first attempt scheduled to the last attempt finished; null while unfinished. */
  readonly spanMs: number | null;
  /** Sum of the attempts' own durations (time actually spent running). */
  readonly busyMs: number;
}

/**
 * One hop of the run's trace, derived from what the run recorded (its events, step attempts
 * and audit rows): the run, each policy question, each step attempt with its time queued,
 * on a worker and in the sandbox's tool, each lease issued and redeemed, each wait for a person.
 * `parent` is another hop's `id` (null for the run). Drawn as a waterfall.
 */
export interface TraceHop {
  readonly id: string;
  readonly parent: string | null;
  /** `run`, `step`, `policy`, `approval`, `wait`, `sleep`, `backoff`, `queued`, `worker`, `tool`, `lease`, `event`. */
  readonly kind: string;
  readonly name: string;
  readonly start: string;
  /** Null while the hop is open. */
  readonly end: string | null;
  readonly durationMs: number | null;
  /** `ok`, `error`, `open` (still going), `ended` (the run ended around it). */
  readonly status: string;
  readonly error: string | null;
  /** A few words more (who, which version, which sandbox). */
  readonly detail: string | null;
  /** Nesting depth under the run (0 for the run). */
  readonly depth: number;
}

/** A run event's place in the timeline; the event body stays in the run stream. */
export interface TimelineEvent {
  readonly seq: number;
  readonly type: string;
  readonly at: string;
  readonly streamSeq: number;
  readonly causationId: string;
  /** The step (and attempt) the event is about, when it is about one. */
  readonly step?: string | null;
  readonly attempt?: number | null;
}

export interface Approval {
  readonly tenant: string;
  readonly runId: string;
  readonly step: string;
  readonly signal: string;
  /** `waiting`, `approved`, `denied`. */
  readonly status: string;
  readonly requestedAt: string;
  readonly decidedAt: string | null;
  /** Who decided, when the decision recorded it. */
  readonly decidedBy: string | null;
  readonly reason: string | null;
  /** The run's workflow (null when the run row is not projected yet). */
  readonly workflow: string | null;
}

export type ExplanationTone = 'info' | 'progress' | 'waiting' | 'error' | 'done';

/** Plain words on where the run stands: why it waits, why it failed. */
export interface Explanation {
  readonly tone: ExplanationTone;
  /** One or two sentences, ready to show as they are. */
  readonly text: string;
  /** The step the explanation is about, when there is one. */
  readonly step?: string;
}

export interface SearchFieldValue {
  readonly key: string;
  readonly value: string;
}

/**
 * A policy's answer for one step of the run: `policy.decided` (before the step is scheduled)
 * or `credential.decided` (a running step asked for the credential `credential`).
 */
export interface PolicyDecision {
  readonly kind: 'policy.decided' | 'credential.decided';
  readonly step: string;
  readonly attempt: number | null;
  /** `allow`, `deny` or `needs-approval`. */
  readonly decision: string;
  /** The policy version that decided (0: the tenant has none, or checks are off). */
  readonly version: number | null;
  /** Ids of the policies that decided. */
  readonly policies: readonly string[];
  /** Who may approve, when the answer needs a person (null otherwise or when not recorded). */
  readonly approvers: string | null;
  /** The credential's key name (credential.decided only). */
  readonly credential: string | null;
  readonly at: string;
}

/** One row of the secrets-lease service's audit about this run: key names, never values. */
export interface LeaseEntry {
  /** `lease.issued`, `lease.redeemed`, `lease.denied`, `lease.revoked`, `lease.reopened`. */
  readonly kind: string;
  readonly keys: readonly string[];
  readonly leaseId: string | null;
  readonly step: string | null;
  readonly attempt: number | null;
  /** A refusal's code (`lease.denied`) or a revocation's reason. */
  readonly code: string | null;
  readonly at: string;
  readonly actor: string | null;
}

/** The run that started this one: its parent, and the parent's step whose child it is. */
export interface RunParent {
  readonly runId: string;
  readonly step: string | null;
}

/** A run a child step started: one per attempt (a retried child step starts a new run). */
export interface RunChild {
  readonly step: string;
  readonly attempt: number;
  readonly workflow: string;
  readonly runId: string;
  /** The child step's outcome as the parent recorded it (`running`, `completed`, `failed`, `cancelled`). */
  readonly outcome: string;
}

export interface RunDetailResponse {
  readonly run: RunSummary;
  /** The run whose child step started this one; null for a run nobody started. */
  readonly parent: RunParent | null;
  /** The run this one continues as new, when it is a continuation. */
  readonly continuedFrom: string | null;
  /** The run that continues this one, once it has continued as new (its output's `continuedAs`). */
  readonly continuedAs: string | null;
  /** The runs its child steps started, in the order they started. */
  readonly children: readonly RunChild[];
  /** The policy's answers for the run's steps, oldest first. */
  readonly policyDecisions: readonly PolicyDecision[];
  /** Credential leases of the run (issue, redemption, refusal, revocation), oldest first. */
  readonly leases: readonly LeaseEntry[];
  readonly search: readonly SearchFieldValue[];
  /** Every attempt, ordered by schedule time then attempt. */
  readonly steps: readonly StepAttempt[];
  /** Steps grouped with their attempts, in the order they were first scheduled. */
  readonly trace: readonly TraceStep[];
  /** The run's hops, parents before children, for the trace waterfall. */
  readonly hops: readonly TraceHop[];
  /** The run's OpenTelemetry trace id, when it records one (to find it in a tracing backend). */
  readonly traceId: string | null;
  /** Ordered by seq. */
  readonly events: readonly TimelineEvent[];
  readonly approvals: readonly Approval[];
  readonly explanation: Explanation;
  /** Which actions apply to the run as it stands (the role is not considered here). */
  readonly actions: {
    readonly cancel: boolean;
    readonly signal: boolean;
    readonly retry: boolean;
  };
}

// ---------------------------------------------------------------------------------------
// Live updates (server-sent events on /api/tenants/:tenant/runs/stream).
//
// `ready` once on connect, then `runs` whenever runs changed (at most once a second), with
// the changed runs as they are now. The stream is not filtered: apply the list's filters in
// the UI. A comment line (`: keep-alive`) comes every 15 s. EventSource reconnects by itself.

export const RunStreamEventName = { Ready: 'ready', Runs: 'runs' } as const;
export type RunStreamEventName = (typeof RunStreamEventName)[keyof typeof RunStreamEventName];

export interface RunStreamReady {
  readonly tenant: string;
}

export interface RunStreamChange {
  /** Runs that changed since the previous message, newest change last. */
  readonly runs: RunSummary[];
  /**
   * True when more changed than one message carries (a burst of thousands of events):
   * `runs` then holds only the latest changes, and the UI should reload the list.
   */
  readonly resync?: boolean;
}

// ---------------------------------------------------------------------------------------
// Actions. Each publishes the same NATS command as the CLI and answers 202 once JetStream
// stored it; the projections show the effect a moment later (watch the stream).

export interface CancelRequest {
  readonly reason?: string;
}

export interface SignalRequest {
  readonly name: string;
  readonly payload?: JsonValue;
}

export interface RetryRequest {
  readonly reason?: string;
}

export interface DecisionRequest {
  readonly reason?: string;
}

/** Body of the worker admission calls (approve / revoke). */
export interface WorkerActionRequest {
  readonly reason?: string;
}

export interface ActionResponse {
  readonly accepted: true;
  readonly action: ActionName;
  readonly tenant: string;
  readonly runId?: string;
  readonly step?: string;
  readonly workerId?: string;
  readonly scheduleId?: string;
}

// ---------------------------------------------------------------------------------------
// Approvals, workers, audit, system.

/** `status` (a lowercase word: `waiting`, `approved`, `denied`; default all) and `limit` (1–500, default 50). */
export interface ApprovalsQuery {
  readonly status?: string;
  readonly limit?: number;
}

export interface ApprovalsResponse {
  /** Newest request first. */
  readonly approvals: Approval[];
}

export type WorkerAdmission = 'pending' | 'approved' | 'revoked';

export interface WorkerInfo {
  readonly workerId: string;
  /** Capability labels: the pools it pulls work from. */
  readonly pools: string[];
  /** Work items in progress at its last heartbeat. */
  readonly running: number;
  readonly lastSeenAt: string;
  /** Milliseconds since the last heartbeat, at the time of the answer. */
  readonly silentForMs: number;
  /** True when no heartbeat came for WORKER_STALE_MS. */
  readonly stale: boolean;
  /** `pending` until an admin approves it (or it approved itself under auto admission). */
  readonly admission: WorkerAdmission;
  /** Who approved or revoked it last, when, and why; null while pending. */
  readonly admissionBy: string | null;
  readonly admissionAt: string | null;
  readonly admissionReason: string | null;
}

export const WORKER_STALE_MS = 30_000;

export interface WorkersResponse {
  readonly workers: WorkerInfo[];
}

/**
 * `run` (a run id), `since` (like RunsQuery.since), `kind` and `actor` (exact matches, 1–256
 * characters), `limit` (1–500, default 50), `cursor`.
 */
export interface AuditQuery {
  readonly run?: string;
  readonly since?: string;
  readonly kind?: string;
  readonly actor?: string;
  readonly limit?: number;
  readonly cursor?: string;
}

export interface AuditEntry {
  readonly id: number;
  readonly runId: string;
  readonly seq: number;
  readonly kind: string;
  readonly actor: string | null;
  readonly detail: JsonValue;
  readonly at: string;
  readonly streamSeq: number;
}

export interface AuditPageResponse {
  /** Newest first. */
  readonly entries: AuditEntry[];
  readonly nextCursor?: string;
}

/** audit.csv: the columns, in order, of the CSV export (header row included). */
export const AUDIT_CSV_COLUMNS = ['id', 'at', 'run_id', 'seq', 'kind', 'actor', 'detail', 'stream_seq'] as const;
/** audit.csv takes `limit` up to this (default all up to this); pages of the JSON API are 500 at most. */
export const AUDIT_CSV_MAX_ROWS = 100_000;

export interface SystemResponse {
  readonly tenant: string;
  /** Run-stream events not yet in the projections; null when unknown. */
  readonly projectionLag: number | null;
  /** The last run-stream sequence the projections applied. */
  readonly checkpoint: number;
  /**
   * Present when the projections do not follow the tenant's run stream
   * (`projection_out_of_sync`): every other tenant route answers 503 until they do again.
   */
  readonly outOfSync?: { readonly code: string; readonly message: string };
}

/** A tenant's projections against its run stream, as `GET /api/system` lists them. */
export interface ProjectionLagEntry {
  readonly tenant: string;
  /** The run stream's name; empty when the console is not connected to NATS. */
  readonly stream: string;
  /** Null when unknown (no NATS, or the stream did not answer). */
  readonly streamLastSeq: number | null;
  readonly checkpoint: number;
  /** Null when unknown, and while the projections are out of sync. */
  readonly lag: number | null;
  /** Why the lag is unknown: `projection_out_of_sync`, or the stream's error. */
  readonly error?: { readonly code: string; readonly message: string };
}

/** The NATS server and JetStream usage, summed over the caller's tenants' accounts. */
export interface NatsSummary {
  readonly server?: { readonly name: string; readonly id: string; readonly version: string; readonly jetstream: boolean };
  readonly jetstream: { readonly streams: number; readonly consumers: number; readonly storageBytes: number; readonly memoryBytes: number };
}

/** `capstan status --system`: over every tenant of the caller, never another's. */
export interface PlatformSystemResponse {
  /** Null when the console is not connected to NATS. */
  readonly nats: NatsSummary | null;
  /** One entry per tenant of the caller, in the order of `SessionInfo.tenants`. */
  readonly projection: ProjectionLagEntry[];
}

// ---------------------------------------------------------------------------------------
// Policy versions (viewer and up). A version is immutable; a change is a new version.

export interface PolicyVersionSummary {
  readonly version: number;
  /** Hex SHA-256 of the text. */
  readonly sha256: string;
  /** Who set it, and why (null when no reason was given). */
  readonly by: string;
  readonly reason: string | null;
  readonly at: string;
}

export interface PoliciesResponse {
  /** Newest version first (at most 500). */
  readonly versions: PolicyVersionSummary[];
}

export interface PolicyVersionResponse extends PolicyVersionSummary {
  /** The Cedar policy text as set. */
  readonly text: string;
}

// ---------------------------------------------------------------------------------------
// Starting runs, schedules and webhook routes.

/** A registered workflow, as the orchestrators describe it. */
export interface WorkflowSummary {
  readonly id: string;
  /** The latest version: what a new run gets. */
  readonly version: number;
  readonly versions: readonly number[];
  readonly steps: readonly string[];
  readonly searchKeys: readonly string[];
  /** A JSON Schema of the input, when the workflow declares one (the form is built from it). */
  readonly inputSchema?: { readonly [k: string]: JsonValue };
}

export interface WorkflowsResponse {
  readonly workflows: WorkflowSummary[];
}

/**
 * Starts a run now. `runId` (a ULID the caller makes) makes a retried request start one
 * run; without it the server makes one. `input` is a JSON object (64 KiB at most).
 */
export interface StartRunRequest {
  readonly workflow: string;
  readonly input?: { readonly [k: string]: JsonValue };
  readonly runId?: string;
}

export const OVERLAP_POLICIES = ['skip', 'buffer-one', 'allow-all'] as const;
export const CATCHUP_POLICIES = ['skip', 'last', 'all'] as const;

export interface ScheduleInfo {
  readonly scheduleId: string;
  /** `active`, `paused`, `deleted`. */
  readonly status: string;
  readonly workflow: string;
  /** A cron expression, or null for an interval schedule. */
  readonly cron: string | null;
  readonly timezone: string | null;
  readonly everyMs: number | null;
  readonly startAt: string | null;
  readonly endAt: string | null;
  readonly input: JsonValue;
  readonly overlap: (typeof OVERLAP_POLICIES)[number];
  readonly catchup: (typeof CATCHUP_POLICIES)[number];
  readonly catchupWindowMs: number;
  /** The next firing times (up to 3); empty when paused, deleted or past its end. */
  readonly next: readonly string[];
  /** The last change: `create`, `pause`, `resume`, `trigger`, `delete`; by whom, when, why. */
  readonly lastOp: string;
  readonly changedBy: string;
  readonly changedAt: string;
  readonly reason: string | null;
}

export interface SchedulesResponse {
  /** By id; deleted ones only with `?all=true`. */
  readonly schedules: ScheduleInfo[];
}

/** A new schedule: exactly one of `cron` and `everyMs`. Times are ISO 8601 with a zone. */
export interface CreateScheduleRequest {
  readonly schedule: string;
  readonly workflow: string;
  readonly cron?: string;
  readonly timezone?: string;
  readonly everyMs?: number;
  readonly startAt?: string;
  readonly endAt?: string;
  readonly input?: { readonly [k: string]: JsonValue };
  readonly overlap?: (typeof OVERLAP_POLICIES)[number];
  readonly catchup?: (typeof CATCHUP_POLICIES)[number];
  readonly catchupWindowMs?: number;
  readonly reason?: string;
}

export interface ScheduleActionRequest {
  readonly reason?: string;
}

export const SCHEDULE_ACTIONS = ['pause', 'resume', 'trigger', 'delete'] as const;
export type ScheduleAction = (typeof SCHEDULE_ACTIONS)[number];

export interface RouteInfo {
  readonly routeId: string;
  readonly workflow: string;
  /** Names of the signing secrets (never values). */
  readonly secrets: readonly string[];
  /** Input key → JSON Pointer into the body; null: the body is the input. */
  readonly fields: { readonly [k: string]: string } | null;
  /** `enabled`, `disabled`. */
  readonly status: string;
  /** Where deliveries go on ingress: `/hooks/<tenant>/<route>`. */
  readonly path: string;
  readonly changedBy: string;
  readonly changedAt: string;
}

// Data sync: the catalog (identifiers and safe facts; specs stay in the data plane),
// pipeline runs with their steps, the bounded preview.

export const DATASYNC_KINDS = ['connection', 'model', 'destination'] as const;
export type DatasyncKind = (typeof DATASYNC_KINDS)[number];
export const PIPELINE_STEP_NAMES = ['retrieve', 'refresh', 'build', 'resolve', 'load'] as const;

export interface DatasyncEntity {
  readonly kind: DatasyncKind;
  readonly id: string;
  readonly name: string;
  readonly version: number;
  readonly status: 'active' | 'deleted';
  /** sha256 of the spec in the data plane. */
  readonly fingerprint: string;
  /** Safe facts: type, auth strategy kind, TLS mode, format, entity names, counts. */
  readonly summary: { readonly [k: string]: JsonValue };
  readonly changedBy: string;
  readonly changedAt: string;
}

export interface RoutesResponse {
  readonly routes: RouteInfo[];
}

export interface PipelineStepProgress {
  readonly step: string;
  /** `pending` (not reached), `running`, `completed`, `failed`, `waiting` (retry backoff). */
  readonly status: string;
  readonly attempts: number;
  /** The step's metadata, once completed: rows, bytes, duration. */
  readonly rows: number | null;
  readonly bytes: number | null;
  readonly durationMs: number | null;
}

export interface PipelineRun extends RunSummary {
  readonly connection: string | null;
  readonly model: string | null;
  readonly destination: string | null;
  readonly steps: PipelineStepProgress[];
}

export interface DatasyncResponse {
  readonly entities: DatasyncEntity[];
  /** The latest pipeline runs, newest first (at most 20). */
  readonly runs: PipelineRun[];
}

export interface DatasyncPutRequest {
  readonly name?: string;
  /** The spec: names secrets, never holds one. Checked by the datasync service. */
  readonly spec: JsonValue;
}

export interface DatasyncEntityResponse {
  readonly entity: DatasyncEntity;
}

export interface PipelineRunRequest {
  readonly connection: string;
  readonly model: string;
  readonly destination: string;
}

export interface PreviewRequest {
  readonly connection: string;
  readonly sql: string;
  readonly timeoutMs?: number;
}

export interface PreviewResponse {
  readonly columns: { readonly name: string; readonly type: string }[];
  /** At most 100 rows; cells cut to 200 characters and cleaned of control characters; null is null. */
  readonly rows: (string | null)[][];
  readonly truncated: boolean;
  readonly cellsTruncated: number;
  readonly durationMs: number;
  readonly fingerprint: string;
}

// ---------------------------------------------------------------------------------------
// Paths.

const seg = encodeURIComponent;

export const apiPaths = {
  signIn: '/api/auth/signin',
  linkSignIn: '/api/auth/link',
  signOut: '/api/auth/signout',
  session: '/api/session',
  runs: (t: string) => `/api/tenants/${seg(t)}/runs`,
  runStream: (t: string) => `/api/tenants/${seg(t)}/runs/stream`,
  run: (t: string, runId: string) => `/api/tenants/${seg(t)}/runs/${seg(runId)}`,
  /** The run as an incident-review export file (`capstan replay --from` reads it). */
  runExport: (t: string, runId: string) => `/api/tenants/${seg(t)}/runs/${seg(runId)}/export`,
  cancel: (t: string, runId: string) => `/api/tenants/${seg(t)}/runs/${seg(runId)}/cancel`,
  signal: (t: string, runId: string) => `/api/tenants/${seg(t)}/runs/${seg(runId)}/signal`,
  retry: (t: string, runId: string) => `/api/tenants/${seg(t)}/runs/${seg(runId)}/retry`,
  approve: (t: string, runId: string, step: string) => `/api/tenants/${seg(t)}/runs/${seg(runId)}/approvals/${seg(step)}/approve`,
  deny: (t: string, runId: string, step: string) => `/api/tenants/${seg(t)}/runs/${seg(runId)}/approvals/${seg(step)}/deny`,
  approvals: (t: string) => `/api/tenants/${seg(t)}/approvals`,
  workers: (t: string) => `/api/tenants/${seg(t)}/workers`,
  approveWorker: (t: string, workerId: string) => `/api/tenants/${seg(t)}/workers/${seg(workerId)}/approve`,
  revokeWorker: (t: string, workerId: string) => `/api/tenants/${seg(t)}/workers/${seg(workerId)}/revoke`,
  audit: (t: string) => `/api/tenants/${seg(t)}/audit`,
  auditCsv: (t: string) => `/api/tenants/${seg(t)}/audit.csv`,
  system: (t: string) => `/api/tenants/${seg(t)}/system`,
  platformSystem: '/api/system',
  policies: (t: string) => `/api/tenants/${seg(t)}/policies`,
  policyVersion: (t: string, version: number | string) => `/api/tenants/${seg(t)}/policies/${seg(String(version))}`,
  workflows: (t: string) => `/api/tenants/${seg(t)}/workflows`,
  schedules: (t: string) => `/api/tenants/${seg(t)}/schedules`,
  scheduleAction: (t: string, id: string, action: ScheduleAction) => `/api/tenants/${seg(t)}/schedules/${seg(id)}/${action}`,
  routes: (t: string) => `/api/tenants/${seg(t)}/routes`,
  datasync: (t: string) => `/api/tenants/${seg(t)}/datasync`,
  datasyncEntity: (t: string, kind: string, id: string) => `/api/tenants/${seg(t)}/datasync/${seg(kind)}/${seg(id)}`,
  datasyncDelete: (t: string, kind: string, id: string) => `/api/tenants/${seg(t)}/datasync/${seg(kind)}/${seg(id)}/delete`,
  datasyncRuns: (t: string) => `/api/tenants/${seg(t)}/datasync/runs`,
  datasyncPreview: (t: string) => `/api/tenants/${seg(t)}/datasync/preview`,
} as const;

/** A JSON value as it travels in request and response bodies. */
export type JsonValue = string | number | boolean | null | JsonValue[] | { [k: string]: JsonValue };

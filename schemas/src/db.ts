/**
 * The projections: Postgres tables derived from the run streams, for queries and audit.
 * Nothing here is the truth; every row can be dropped and rebuilt from the streams. Only
 * the projector writes them, and every table is keyed by tenant first, so every query is
 * scoped by tenant.
 *
 * The exception is at the end of this file: the secrets-lease service's own state
 * (encrypted secrets, data keys, leases, revocations), which is the truth and is written
 * only by that service; it also appends its audit rows to `audit_log`.
 */
import { sql } from 'drizzle-orm';
import { bigint, bigserial, boolean, customType, index, integer, jsonb, pgTable, primaryKey, text, timestamp, uniqueIndex } from 'drizzle-orm/pg-core';

const ts = (name: string) => timestamp(name, { withTimezone: true, mode: 'date' });

/** One row per run: its current state as the projector last folded it. */
/** The stored form of a run's progress (see `RunProgress` in @capstan/actors). */
export interface RunProgressRow {
  readonly anyStarted: boolean;
  readonly busy: readonly string[];
  readonly waits: Readonly<Record<string, string>>;
  readonly sleeps: readonly string[];
  readonly asking: readonly string[];
}

export const runs = pgTable(
  'runs',
  {
    tenant: text('tenant').notNull(),
    runId: text('run_id').notNull(),
    workflow: text('workflow').notNull(),
    version: integer('version').notNull(),
    status: text('status').notNull(),
    currentStep: text('current_step'),
    /** Attempts scheduled so far, over all steps. */
    attempts: integer('attempts').notNull().default(0),
    errorCode: text('error_code'),
    errorMessage: text('error_message'),
    /** Times a person reopened the run after it failed (`run.retried`), and the last of them. */
    retries: integer('retries').notNull().default(0),
    retriedAt: ts('retried_at'),
    retriedBy: text('retried_by'),
    startedAt: ts('started_at').notNull(),
    updatedAt: ts('updated_at').notNull(),
    endedAt: ts('ended_at'),
    /** Run-local sequence of the last event applied. */
    lastSeq: integer('last_seq').notNull(),
    lastStreamSeq: bigint('last_stream_seq', { mode: 'number' }).notNull(),
    /** Chained digest of the run's events: sha256(previous digest, stream seq, event bytes). */
    chain: text('chain').notNull(),
    /** The engine that decides the run (`run.started`; 1 for runs that name none). */
    engine: integer('engine').notNull().default(1),
    /**
     * The run's open steps as its events say (busy, waiting, sleeping): what its status is
     * computed from, kept so the next batch continues the fold (`progressAfter` in actors).
     */
    progress: jsonb('progress').$type<RunProgressRow>(),
    /** The trace the run records on `run.started` (`{ id, parent?, sampled }`), if any. */
    trace: jsonb('trace'),
    /**
     * A child run's parent and the parent's step that started it (`run.started`'s `parent`);
     * a parent's children are its steps whose handler is `child:<workflow>`.
     */
    parentRunId: text('parent_run_id'),
    parentStep: text('parent_step'),
    /** The run a continue-as-new run continues (`run.started`'s `continuedFrom`). */
    continuedFrom: text('continued_from'),
    /** The run that continues this one, once it has continued as new (`run.continued`'s `next`). */
    continuedAs: text('continued_as'),
  },
  (t) => [
    primaryKey({ columns: [t.tenant, t.runId] }),
    index('runs_tenant_status_started').on(t.tenant, t.status, t.startedAt),
    index('runs_tenant_workflow_started').on(t.tenant, t.workflow, t.startedAt),
    index('runs_tenant_started').on(t.tenant, t.startedAt),
  ],
);

/** Typed search fields: declared input keys (and their values) of each run. */
export const runSearch = pgTable(
  'run_search',
  {
    tenant: text('tenant').notNull(),
    key: text('key').notNull(),
    value: text('value').notNull(),
    runId: text('run_id').notNull(),
  },
  (t) => [primaryKey({ columns: [t.tenant, t.key, t.value, t.runId] }), index('run_search_run').on(t.tenant, t.runId)],
);

/** One row per step attempt. `result` is the step's metadata result (a few KiB at most). */
export const steps = pgTable(
  'steps',
  {
    tenant: text('tenant').notNull(),
    runId: text('run_id').notNull(),
    step: text('step').notNull(),
    attempt: integer('attempt').notNull(),
    mode: integer('mode').notNull(),
    pool: text('pool').notNull(),
    handler: text('handler').notNull(),
    /** The worker that ran the attempt, as it reported itself. */
    worker: text('worker'),
    /** The sandbox (container name) the attempt ran in, when its events say so. */
    sandbox: text('sandbox'),
    outcome: text('outcome').notNull(),
    scheduledAt: ts('scheduled_at').notNull(),
    startedAt: ts('started_at'),
    finishedAt: ts('finished_at'),
    durationMs: integer('duration_ms'),
    result: jsonb('result'),
    errorCode: text('error_code'),
    errorMessage: text('error_message'),
  },
  (t) => [primaryKey({ columns: [t.tenant, t.runId, t.step, t.attempt] })],
);

/** Every event's place: run, sequence, type, time, and stream sequence. */
export const events = pgTable(
  'events',
  {
    tenant: text('tenant').notNull(),
    runId: text('run_id').notNull(),
    seq: integer('seq').notNull(),
    type: text('type').notNull(),
    at: ts('at').notNull(),
    streamSeq: bigint('stream_seq', { mode: 'number' }).notNull(),
    causationId: text('causation_id').notNull(),
    /** The step and attempt the event is about, when its data names them (for a run's hops). */
    step: text('step'),
    attempt: integer('attempt'),
  },
  (t) => [primaryKey({ columns: [t.tenant, t.runId, t.seq] }), uniqueIndex('events_tenant_stream_seq').on(t.tenant, t.streamSeq)],
);

/**
 * Human decisions a run waits for (signal steps): `waiting`, then `approved` (an approve
 * decision or the step's signal) or `denied`, with who decided and why when recorded.
 */
export const approvals = pgTable(
  'approvals',
  {
    tenant: text('tenant').notNull(),
    runId: text('run_id').notNull(),
    step: text('step').notNull(),
    signal: text('signal').notNull(),
    status: text('status').notNull(),
    requestedAt: ts('requested_at').notNull(),
    decidedAt: ts('decided_at'),
    decidedBy: text('decided_by'),
    reason: text('reason'),
    /** Policy approvals (`signal` = `policy`): who may approve, under which policy version and policies, until when. */
    approvers: text('approvers'),
    policyVersion: integer('policy_version'),
    policies: text('policies'),
    expiresAt: ts('expires_at'),
  },
  (t) => [primaryKey({ columns: [t.tenant, t.runId, t.step] }), index('approvals_tenant_status').on(t.tenant, t.status)],
);

/** The worker fleet as last heard from (heartbeats carry capability labels). */
export const workers = pgTable(
  'workers',
  {
    tenant: text('tenant').notNull(),
    workerId: text('worker_id').notNull(),
    pools: jsonb('pools').notNull(),
    running: integer('running').notNull(),
    lastSeenAt: ts('last_seen_at').notNull(),
  },
  (t) => [primaryKey({ columns: [t.tenant, t.workerId] })],
);

/**
 * Worker admission as last recorded in the tenant's fleet stream (CAP_FLEET_<t>): a worker
 * id without a row is `pending`. Kept apart from `workers` (heartbeats): a worker can be
 * approved before it is first seen, and admission is derived exactly once from a stream.
 */
export const workerAdmissions = pgTable(
  'worker_admissions',
  {
    tenant: text('tenant').notNull(),
    workerId: text('worker_id').notNull(),
    /** `approved` or `revoked`. */
    state: text('state').notNull(),
    changedBy: text('changed_by').notNull(),
    changedAt: ts('changed_at').notNull(),
    reason: text('reason'),
    /** Fleet stream sequence of the record. */
    streamSeq: bigint('stream_seq', { mode: 'number' }).notNull(),
  },
  (t) => [primaryKey({ columns: [t.tenant, t.workerId] })],
);

/**
 * A tenant's policy versions, from its policy stream (CAP_POLICY_<t>): one row per version,
 * never changed (a version is immutable; a change is a new version). `text` is the Cedar
 * policy as set; `sha256` its digest; `by`/`reason` who set it and why.
 */
export const policies = pgTable(
  'policies',
  {
    tenant: text('tenant').notNull(),
    version: integer('version').notNull(),
    sha256: text('sha256').notNull(),
    by: text('by').notNull(),
    reason: text('reason'),
    at: ts('at').notNull(),
    text: text('text').notNull(),
    /** Policy stream sequence of the version (equal to it). */
    streamSeq: bigint('stream_seq', { mode: 'number' }).notNull(),
  },
  (t) => [primaryKey({ columns: [t.tenant, t.version] })],
);

/**
 * Schedules as last recorded on the tenant's triggers stream (`cap.<t>.schedules.<id>`,
 * CAP_TRIGGERS_<t>): one row per schedule id, deleted ones kept with status `deleted`. Next
 * firing times are computed from these columns when read.
 */
export const schedules = pgTable(
  'schedules',
  {
    tenant: text('tenant').notNull(),
    scheduleId: text('schedule_id').notNull(),
    /** Stream sequence of the command that made this schedule (a re-made id has a new one). */
    generation: bigint('generation', { mode: 'number' }).notNull(),
    /** `active`, `paused` or `deleted`. */
    status: text('status').notNull(),
    workflow: text('workflow').notNull(),
    /** The spec as recorded (cron or everyMs, timezone, startAt, endAt, input, policies). */
    spec: jsonb('spec').notNull(),
    /** Interval schedules count their slots from here. */
    anchorAt: ts('anchor_at').notNull(),
    changedBy: text('changed_by').notNull(),
    changedAt: ts('changed_at').notNull(),
    /** The last change: create, pause, resume, trigger, delete. */
    lastOp: text('last_op').notNull(),
    reason: text('reason'),
    streamSeq: bigint('stream_seq', { mode: 'number' }).notNull(),
  },
  (t) => [primaryKey({ columns: [t.tenant, t.scheduleId] })],
);

/** Webhook routes as last recorded (`cap.<t>.routes.<id>`): secret names only, never a value. */
export const webhookRoutes = pgTable(
  'webhook_routes',
  {
    tenant: text('tenant').notNull(),
    routeId: text('route_id').notNull(),
    workflow: text('workflow').notNull(),
    /** Names of the signing secrets in the tenant's secrets store. */
    secrets: jsonb('secrets').notNull(),
    /** Input key → JSON Pointer into the body; null: the body is the input. */
    fields: jsonb('fields'),
    /** `enabled`, `disabled` or `deleted`. */
    status: text('status').notNull(),
    changedBy: text('changed_by').notNull(),
    changedAt: ts('changed_at').notNull(),
    reason: text('reason'),
    streamSeq: bigint('stream_seq', { mode: 'number' }).notNull(),
  },
  (t) => [primaryKey({ columns: [t.tenant, t.routeId] })],
);

/**
 * The audit log: append-only, enforced by the database (a trigger refuses UPDATE and
 * DELETE; see the migration). Key names and actors only, never secret values. Rows about a
 * run carry its id and the event's run-local seq; rows about the fleet (worker admission)
 * have an empty `run_id`, and `seq` and `stream_seq` are then the fleet stream's sequence.
 * Rows about the tenant's policy (a new version) have an empty `run_id`, `seq` = minus the
 * version (so they never meet the fleet's, which count up from 1) and `stream_seq` = the
 * policy stream's sequence. Rows about a schedule have `run_id` `schedule:<id>`, about a
 * webhook route `route:<id>`, and `seq` = `stream_seq` = the triggers stream's sequence.
 */
export const auditLog = pgTable(
  'audit_log',
  {
    id: bigserial('id', { mode: 'number' }).primaryKey(),
    tenant: text('tenant').notNull(),
    runId: text('run_id').notNull(),
    seq: integer('seq').notNull(),
    kind: text('kind').notNull(),
    actor: text('actor'),
    detail: jsonb('detail').notNull(),
    at: ts('at').notNull(),
    streamSeq: bigint('stream_seq', { mode: 'number' }).notNull(),
  },
  (t) => [uniqueIndex('audit_log_event').on(t.tenant, t.runId, t.seq), index('audit_log_tenant_at').on(t.tenant, t.at)],
);

/** Per tenant stream: the last stream sequence applied, committed with the rows it covers. */
export const checkpoints = pgTable(
  'checkpoints',
  {
    tenant: text('tenant').notNull(),
    stream: text('stream').notNull(),
    lastStreamSeq: bigint('last_stream_seq', { mode: 'number' }).notNull(),
    updatedAt: ts('updated_at')
      .notNull()
      .default(sql`now()`),
    /**
     * Which stream the checkpoint counts in: its creation time as the server reports it
     * (null until recorded). A stream of the same name created again (a new store, a
     * recreated tenant) has another, and its sequences mean other events.
     */
    streamCreated: text('stream_created'),
    /** The stream's first sequence when its identity was recorded. */
    streamFirstSeq: bigint('stream_first_seq', { mode: 'number' }),
    /**
     * Why the projections no longer follow the stream (`projection_out_of_sync`), set by a
     * projector that refuses to go on; null while they do. Readers refuse the tenant meanwhile.
     */
    outOfSync: text('out_of_sync'),
  },
  (t) => [primaryKey({ columns: [t.tenant, t.stream] })],
);

/** Events the projector could not use, with the reason and where they are in the stream. */
export const deadLetters = pgTable(
  'dead_letters',
  {
    id: bigserial('id', { mode: 'number' }).primaryKey(),
    tenant: text('tenant').notNull(),
    stream: text('stream').notNull(),
    streamSeq: bigint('stream_seq', { mode: 'number' }).notNull(),
    subject: text('subject').notNull(),
    code: text('code').notNull(),
    message: text('message').notNull(),
    at: ts('at')
      .notNull()
      .default(sql`now()`),
  },
  (t) => [uniqueIndex('dead_letters_position').on(t.tenant, t.stream, t.streamSeq)],
);

// ---------------------------------------------------------------------------------------
// The secrets-lease service's own tables (the truth, not projections; never rebuilt).

const bytea = customType<{ data: Uint8Array; driverData: Uint8Array }>({ dataType: () => 'bytea' });

/**
 * Per-tenant data keys (envelope encryption): a random AES-256 key per tenant and version,
 * stored only wrapped (AES-256-GCM) by the master key from the service's config.
 * `master_key_id` is a fingerprint of the wrapping master key, so a wrong master key is told
 * apart from a damaged row.
 */
export const secretDataKeys = pgTable(
  'secret_data_keys',
  {
    tenant: text('tenant').notNull(),
    version: integer('version').notNull(),
    /** nonce (12) ‖ ciphertext (32) ‖ tag (16). */
    wrapped: bytea('wrapped').notNull(),
    masterKeyId: text('master_key_id').notNull(),
    createdAt: ts('created_at')
      .notNull()
      .default(sql`now()`),
  },
  (t) => [primaryKey({ columns: [t.tenant, t.version] })],
);

/**
 * A tenant's secrets, one row per name holding the current version only (a rotation
 * overwrites the ciphertext: old values are not kept). A deleted secret keeps its row
 * (name, version, dates) with the ciphertext erased, so versions go on if it comes back.
 */
export const secrets = pgTable(
  'secrets',
  {
    tenant: text('tenant').notNull(),
    name: text('name').notNull(),
    version: integer('version').notNull(),
    /** The tenant data key version the value is encrypted with. */
    keyVersion: integer('key_version').notNull(),
    nonce: bytea('nonce'),
    ciphertext: bytea('ciphertext'),
    /** `static`, `refreshable`, `exchangeable` or `ambient`. */
    lifecycle: text('lifecycle').notNull(),
    /** The connector and its auth strategy (names and URLs only; secrets it needs are named). */
    connector: jsonb('connector'),
    refreshWindowMs: integer('refresh_window_ms'),
    /** When the current value stops working, if known (an access token's expiry). */
    expiresAt: ts('expires_at'),
    refreshedAt: ts('refreshed_at'),
    createdAt: ts('created_at').notNull(),
    rotatedAt: ts('rotated_at'),
    deletedAt: ts('deleted_at'),
    updatedBy: text('updated_by').notNull(),
  },
  (t) => [primaryKey({ columns: [t.tenant, t.name] })],
);

/**
 * Leases: key names an attempt may receive, once, before `expires_at` by the database's own
 * clock. Never holds a value.
 */
export const leases = pgTable(
  'leases',
  {
    id: text('id').primaryKey(),
    tenant: text('tenant').notNull(),
    runId: text('run_id').notNull(),
    step: text('step').notNull(),
    attempt: integer('attempt').notNull(),
    keys: text('keys').array().notNull(),
    issuedAt: ts('issued_at').notNull(),
    /** Until claimed: the end of its claim window; once claimed: the claim plus its TTL. */
    expiresAt: ts('expires_at').notNull(),
    /** The TTL, counted from the claim (null on leases issued before claims existed). */
    ttlMs: integer('ttl_ms'),
    /** When the sandbox that redeems it claimed it. */
    claimedAt: ts('claimed_at'),
    redeemedAt: ts('redeemed_at'),
    revokedAt: ts('revoked_at'),
    /**
     * The public key of the only principal that may claim and redeem it: the tenant's
     * sandbox service as the registry named it when the lease was issued (null on leases
     * issued before leases were bound).
     */
    redeemer: text('redeemer'),
  },
  (t) => [index('leases_tenant_run').on(t.tenant, t.runId)],
);

/**
 * Runs whose leases are revoked (`revoked`), or were and are open again (a failed run
 * retried). A run-end row carries the run stream sequence of the event it follows, so a
 * later event wins whatever order they are handled in; a revocation by request has none
 * and stands.
 */
export const leaseRevocations = pgTable(
  'lease_revocations',
  {
    tenant: text('tenant').notNull(),
    runId: text('run_id').notNull(),
    revoked: boolean('revoked').notNull(),
    /** `requested`, or the run event: `run.completed`, `run.failed`, `run.cancelled`, `run.retried`. */
    reason: text('reason').notNull(),
    streamSeq: bigint('stream_seq', { mode: 'number' }),
    changedAt: ts('changed_at').notNull(),
  },
  (t) => [primaryKey({ columns: [t.tenant, t.runId] })],
);

// ---------------------------------------------------------------------------------------
// Data-sync pipelines.

/**
 * The tenant's data-sync catalog as the control plane sees it (a projection of
 * CAP_CATALOG_<t>): one row per connection, model or destination, from its last record.
 * Identifiers and safe facts only (`summary`); specs stay in the data plane.
 */
export const datasyncEntities = pgTable(
  'datasync_entities',
  {
    tenant: text('tenant').notNull(),
    kind: text('kind').notNull(),
    id: text('id').notNull(),
    name: text('name').notNull(),
    version: integer('version').notNull(),
    /** `active` or `deleted`. */
    status: text('status').notNull(),
    fingerprint: text('fingerprint').notNull(),
    summary: jsonb('summary').notNull(),
    changedBy: text('changed_by').notNull(),
    changedAt: ts('changed_at').notNull(),
    /** Catalog stream sequence of the record. */
    streamSeq: bigint('stream_seq', { mode: 'number' }).notNull(),
  },
  (t) => [primaryKey({ columns: [t.tenant, t.kind, t.id] })],
);

/**
 * The datasync service's own state (the data plane's truth, never rebuilt): each entity's
 * spec (hosts, users, tables, folders, secret names; never a secret value).
 */
export const datasyncSpecs = pgTable(
  'datasync_specs',
  {
    tenant: text('tenant').notNull(),
    kind: text('kind').notNull(),
    id: text('id').notNull(),
    name: text('name').notNull(),
    version: integer('version').notNull(),
    spec: jsonb('spec').notNull(),
    fingerprint: text('fingerprint').notNull(),
    updatedBy: text('updated_by').notNull(),
    updatedAt: ts('updated_at')
      .notNull()
      .default(sql`now()`),
    deletedAt: ts('deleted_at'),
  },
  (t) => [primaryKey({ columns: [t.tenant, t.kind, t.id] })],
);

/**
 * One row per pipeline (a connection, a model and a destination of a tenant): the
 * incremental cursors and fingerprints of its last committed load, and the run that holds
 * it now. Cursors live here, in the data plane, never in a run's input.
 */
export const datasyncPipelines = pgTable(
  'datasync_pipelines',
  {
    tenant: text('tenant').notNull(),
    /** sha256 of tenant, connection, model and destination ids (cut): names its state tables. */
    pipeline: text('pipeline').notNull(),
    connection: text('connection').notNull(),
    model: text('model').notNull(),
    destination: text('destination').notNull(),
    /** Per entity: the cursor column's last loaded value, as text. */
    cursors: jsonb('cursors')
      .notNull()
      .default(sql`'{}'::jsonb`),
    /** Fingerprint of the model and destination specs the state was built for: a change means a full run. */
    specFingerprint: text('spec_fingerprint'),
    committedRun: text('committed_run'),
    committedAt: ts('committed_at'),
    claimedBy: text('claimed_by'),
    claimExpiresAt: ts('claim_expires_at'),
  },
  (t) => [primaryKey({ columns: [t.tenant, t.pipeline] })],
);

/**
 * Each finished step of each pipeline run: what it handed on (pending cursors, the run's
 * plan) and the result it returned, so a repeated attempt of a finished step answers the
 * same without doing the work twice.
 */
export const datasyncRunSteps = pgTable(
  'datasync_run_steps',
  {
    tenant: text('tenant').notNull(),
    runId: text('run_id').notNull(),
    step: text('step').notNull(),
    pipeline: text('pipeline').notNull(),
    state: jsonb('state').notNull(),
    result: jsonb('result').notNull(),
    finishedAt: ts('finished_at')
      .notNull()
      .default(sql`now()`),
  },
  (t) => [primaryKey({ columns: [t.tenant, t.runId, t.step] })],
);

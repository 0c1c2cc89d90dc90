/**
 * Read queries over the projections, for the console's API (which the CLI reads through).
 * Every query takes the tenant and filters by it first: the tenant is the leading column of
 * every index, and a row of another tenant must never be reachable, not even by a guessed
 * run id.
 *
 * Lists page by keyset (a cursor holding the last row's sort key), never by offset, so page
 * 50 costs what page 1 costs and rows inserted meanwhile neither repeat nor go missing.
 */
import { and, asc, desc, eq, gte, inArray, lt, lte, or, sql, getTableColumns, type SQL } from 'drizzle-orm';
import { alias } from 'drizzle-orm/pg-core';
import {
  db as schema,
  ErrorCode,
  InvalidArgumentError,
  isRunStatus,
  RUN_STATUSES,
  RunNotFoundError,
  Streams,
  WorkerAdmissionState,
  type RunStatus,
  type TenantId,
  LEASE_KIND_PREFIX,
  POLICY_DECISION_KINDS,
} from '@capstan/schemas';
import type { Database } from './db.js';
import { outOfSyncError, outOfSyncReason, readFollowed, readStreamNow, type StreamSide } from './projection-sync.js';

export type RunRow = typeof schema.runs.$inferSelect;
export type StepRow = typeof schema.steps.$inferSelect;
export type ApprovalRow = typeof schema.approvals.$inferSelect;
/** A worker as last heard from, with its admission (`pending` when nothing is recorded). */
export type WorkerRow = typeof schema.workers.$inferSelect & {
  readonly admission: WorkerAdmissionState;
  /** Who approved or revoked it last, and when; null while pending. */
  readonly admissionBy: string | null;
  readonly admissionAt: Date | null;
  readonly admissionReason: string | null;
};
export type AuditRow = typeof schema.auditLog.$inferSelect;
/** An event's place in its run; the event itself stays in the run stream. */
export type EventIndexRow = Omit<typeof schema.events.$inferSelect, 'tenant' | 'runId'>;

export const DEFAULT_LIMIT = 50;
export const MAX_LIMIT = 500;
/** Each pair is one more join; a handful is what a person types, more is a mistake. */
export const MAX_WHERE_PAIRS = 8;
const MAX_WORKFLOW_LENGTH = 256;
const MAX_KEY_LENGTH = 128;
const MAX_VALUE_LENGTH = 1024;

// ---------------------------------------------------------------------------------------
// Parameter parsing: each helper turns one raw query parameter into a typed value or an
// InvalidArgumentError that names the parameter and says what it accepts.

const DURATION = /^(\d{1,9})(s|m|h|d|w)$/;
const UNIT_MS = { s: 1_000, m: 60_000, h: 3_600_000, d: 86_400_000, w: 604_800_000 } as const;
// A time of day must carry its zone: a bare local time would mean something different on
// the server and on the laptop that typed it.
const ISO = /^\d{4}-\d{2}-\d{2}(T\d{2}:\d{2}(:\d{2}(\.\d{1,9})?)?(Z|[+-]\d{2}:?\d{2}))?$/;

/**
 * A point in time, given as a duration back from `now` (`30m`, `1h`, `2d`, `1w`, `45s`)
 * or an ISO 8601 timestamp (`2026-01-31`, `2026-01-31T12:00:00Z`, `…+02:00`).
 */
export function parseTime(name: string, raw: string, now: number = Date.now()): Date {
  const d = DURATION.exec(raw);
  if (d) return new Date(now - Number(d[1]) * UNIT_MS[d[2] as keyof typeof UNIT_MS]);
  if (ISO.test(raw)) {
    const ms = Date.parse(raw);
    if (!Number.isNaN(ms)) return new Date(ms);
  }
  throw new InvalidArgumentError(`${name} must be a duration back from now (30m, 1h, 2d) or an ISO 8601 timestamp with a zone (2026-01-31T12:00:00Z); got ${quote(raw)}`);
}

export function parseSince(raw: string, now?: number): Date {
  return parseTime('since', raw, now);
}

export function parseStatus(raw: string): RunStatus {
  if (!isRunStatus(raw)) throw new InvalidArgumentError(`status must be one of ${RUN_STATUSES.join(', ')}; got ${quote(raw)}`);
  return raw;
}

export function parseLimit(raw: string | undefined, fallback = DEFAULT_LIMIT): number {
  if (raw === undefined) return fallback;
  const n = /^\d{1,4}$/.test(raw) ? Number(raw) : NaN;
  return checkLimit(n, raw);
}

/** `key=value` pairs (split at the first `=`), each key at most once. */
export function parseWhere(pairs: readonly string[]): Record<string, string> {
  const out: Record<string, string> = {};
  for (const p of pairs) {
    const i = p.indexOf('=');
    if (i <= 0) throw new InvalidArgumentError(`where must be key=value; got ${quote(p)}`);
    const key = p.slice(0, i);
    if (Object.hasOwn(out, key)) throw new InvalidArgumentError(`where gives the key ${quote(key)} more than once`);
    out[key] = p.slice(i + 1);
  }
  checkWhere(out);
  return out;
}

function checkLimit(n: number, raw: unknown = n): number {
  if (!Number.isSafeInteger(n) || n < 1 || n > MAX_LIMIT) throw new InvalidArgumentError(`limit must be an integer from 1 to ${MAX_LIMIT}; got ${quote(String(raw))}`);
  return n;
}

function checkWhere(where: Readonly<Record<string, string>>): [string, string][] {
  const pairs = Object.entries(where);
  if (pairs.length > MAX_WHERE_PAIRS) throw new InvalidArgumentError(`where takes at most ${MAX_WHERE_PAIRS} key=value pairs; got ${pairs.length}`);
  for (const [k, v] of pairs) {
    if (k.length === 0 || k.length > MAX_KEY_LENGTH || hasNul(k)) throw new InvalidArgumentError(`a where key must have 1 to ${MAX_KEY_LENGTH} characters, none of them NUL`);
    if (typeof v !== 'string' || v.length > MAX_VALUE_LENGTH || hasNul(v)) {
      throw new InvalidArgumentError(`the where value of ${quote(k)} must be a string of at most ${MAX_VALUE_LENGTH} characters, none of them NUL`);
    }
  }
  return pairs;
}

/** Postgres text cannot hold NUL: refused here as a bad parameter rather than failing in the driver. */
function hasNul(s: string): boolean {
  return s.includes('\u0000');
}

/** Untrusted input in a message: escaped and cut, never echoed whole. */
function quote(raw: string): string {
  return JSON.stringify(raw.length > 64 ? `${raw.slice(0, 64)}…` : raw);
}

// ---------------------------------------------------------------------------------------
// Cursors: opaque to callers (base64url), typed by list so one list's cursor is refused by
// another.

const CURSOR_TEXT = /^[A-Za-z0-9_-]{1,400}$/;
const RUNS_CURSOR = /^runs:(-?\d{1,17}):([0-9A-Za-z_-]{1,128})$/;
const AUDIT_CURSOR = /^audit:(\d{1,17})$/;

function encodeCursor(s: string): string {
  return Buffer.from(s, 'utf8').toString('base64url');
}

function decodeCursor(raw: string, shape: RegExp): RegExpExecArray {
  // Node's base64url decoder skips characters it does not know; check the alphabet first.
  const m = CURSOR_TEXT.test(raw) ? shape.exec(Buffer.from(raw, 'base64url').toString('utf8')) : null;
  if (!m) throw new InvalidArgumentError('cursor is malformed: pass back the nextCursor of a previous page of the same list');
  return m;
}

// ---------------------------------------------------------------------------------------
// Runs.

export interface ListRunsOptions {
  readonly status?: RunStatus;
  readonly workflow?: string;
  /** Started at or after. */
  readonly since?: Date;
  /** Started before. */
  readonly until?: Date;
  /** Search fields (run_search): a run matches when it has every pair. */
  readonly where?: Readonly<Record<string, string>>;
  readonly limit?: number;
  readonly cursor?: string;
}

export interface RunsPage {
  readonly runs: RunRow[];
  /** Present when more runs follow; pass it back as `cursor` for the next page. */
  readonly nextCursor?: string;
}

/**
 * The sort key in microseconds, as Postgres holds it. A JavaScript Date keeps only
 * milliseconds, so a cursor built from one could skip or repeat runs started within the
 * same millisecond by a writer with finer timestamps. (Exact because `extract` answers a
 * numeric since Postgres 14; PGlite is 17.)
 */
const startedMicros = sql<string>`(extract(epoch from ${schema.runs.startedAt}) * 1000000)::bigint::text`;
const fromMicros = (us: string) => sql`(timestamptz 'epoch' + ${us}::bigint * interval '1 microsecond')`;

/** Runs newest first (started_at desc, run_id desc), filtered, one page at a time. */
export async function listRuns(d: Database, tenant: TenantId, o: ListRunsOptions = {}): Promise<RunsPage> {
  const limit = checkLimit(o.limit ?? DEFAULT_LIMIT);
  const r = schema.runs;
  const conds: SQL[] = [eq(r.tenant, tenant)];
  if (o.status !== undefined) conds.push(eq(r.status, parseStatus(o.status)));
  if (o.workflow !== undefined) {
    if (o.workflow.length === 0 || o.workflow.length > MAX_WORKFLOW_LENGTH || hasNul(o.workflow)) {
      throw new InvalidArgumentError(`workflow must have 1 to ${MAX_WORKFLOW_LENGTH} characters, none of them NUL`);
    }
    conds.push(eq(r.workflow, o.workflow));
  }
  if (o.since) conds.push(gte(r.startedAt, validDate('since', o.since)));
  if (o.until) conds.push(lt(r.startedAt, validDate('until', o.until)));
  if (o.cursor !== undefined) {
    const [, us, runId] = decodeCursor(o.cursor, RUNS_CURSOR) as unknown as [string, string, string];
    // Spelled out rather than as a row comparison: the first term is a plain range on the
    // indexed started_at, whichever index the planner picks; the second breaks ties.
    conds.push(lte(r.startedAt, fromMicros(us)), or(lt(r.startedAt, fromMicros(us)), lt(r.runId, runId)) as SQL);
  }

  let q = d.db
    .select({ ...getTableColumns(r), sortKey: startedMicros })
    .from(r)
    .$dynamic();
  // One join per pair on run_search's primary key (tenant, key, value, run_id): at most one
  // row per run each, so no duplicates, and a rare value narrows the runs before the sort.
  checkWhere(o.where ?? {}).forEach(([key, value], i) => {
    const s = alias(schema.runSearch, `s${i}`);
    q = q.innerJoin(s, and(eq(s.tenant, tenant), eq(s.key, key), eq(s.value, value), eq(s.runId, r.runId)));
  });
  const rows = await q
    .where(and(...conds))
    .orderBy(desc(r.startedAt), desc(r.runId))
    .limit(limit + 1);

  const more = rows.length > limit;
  const page = more ? rows.slice(0, limit) : rows;
  const last = page.at(-1);
  return {
    runs: page.map(({ sortKey: _, ...run }) => run),
    ...(more && last ? { nextCursor: encodeCursor(`runs:${last.sortKey}:${last.runId}`) } : {}),
  };
}

function validDate(name: string, v: Date): Date {
  if (!(v instanceof Date) || Number.isNaN(v.getTime())) throw new InvalidArgumentError(`${name} is not a valid date`);
  return v;
}

export interface SearchField {
  readonly key: string;
  readonly value: string;
}

export interface RunDetail {
  readonly run: RunRow;
  readonly search: SearchField[];
  /** Ordered by scheduled_at, then attempt. */
  readonly steps: StepRow[];
  /** Ordered by seq. */
  readonly events: EventIndexRow[];
  readonly approvals: ApprovalRow[];
}

/** One run with its steps, event index and approvals; RunNotFoundError if the tenant has no such run. */
export async function getRun(d: Database, tenant: TenantId, runId: string): Promise<RunDetail> {
  // One snapshot: the projector commits a run's rows together, and reading them in one
  // repeatable-read transaction never shows a run row newer than its steps.
  return d.db.transaction(
    async (tx) => {
      const [run] = await tx
        .select()
        .from(schema.runs)
        .where(and(eq(schema.runs.tenant, tenant), eq(schema.runs.runId, runId)));
      if (!run) throw new RunNotFoundError(tenant, runId);
      const s = schema.steps;
      const e = schema.events;
      const a = schema.approvals;
      const rs = schema.runSearch;
      const steps = await tx
        .select()
        .from(s)
        .where(and(eq(s.tenant, tenant), eq(s.runId, runId)))
        .orderBy(asc(s.scheduledAt), asc(s.attempt), asc(s.step));
      const events = await tx
        .select({ seq: e.seq, type: e.type, at: e.at, streamSeq: e.streamSeq, causationId: e.causationId, step: e.step, attempt: e.attempt })
        .from(e)
        .where(and(eq(e.tenant, tenant), eq(e.runId, runId)))
        .orderBy(asc(e.seq));
      const approvals = await tx
        .select()
        .from(a)
        .where(and(eq(a.tenant, tenant), eq(a.runId, runId)))
        .orderBy(asc(a.requestedAt), asc(a.step));
      const search = await tx
        .select({ key: rs.key, value: rs.value })
        .from(rs)
        .where(and(eq(rs.tenant, tenant), eq(rs.runId, runId)))
        .orderBy(asc(rs.key), asc(rs.value));
      return { run, search, steps, events, approvals };
    },
    { isolationLevel: 'repeatable read', accessMode: 'read only' },
  );
}

// ---------------------------------------------------------------------------------------
// Audit, approvals, workers.

export interface ListAuditOptions {
  readonly runId?: string;
  /** At or after. */
  readonly since?: Date;
  /** Exact kind (`run.cancel-requested`, `lease.issued`, …). */
  readonly kind?: string;
  /** Exact actor (a user id, `policy`, …). */
  readonly actor?: string;
  readonly limit?: number;
  readonly cursor?: string;
}

export interface AuditPage {
  readonly entries: AuditRow[];
  readonly nextCursor?: string;
}

/** The audit log newest first (by id, which is insertion order), one page at a time. */
export async function listAudit(d: Database, tenant: TenantId, o: ListAuditOptions = {}): Promise<AuditPage> {
  const limit = checkLimit(o.limit ?? DEFAULT_LIMIT);
  const l = schema.auditLog;
  const conds: SQL[] = [eq(l.tenant, tenant)];
  if (o.runId !== undefined) conds.push(eq(l.runId, o.runId));
  if (o.since) conds.push(gte(l.at, validDate('since', o.since)));
  // In the WHERE clause with the cursor, so a page is `limit` matching rows and the next
  // cursor continues after the last match rather than after the last row scanned.
  if (o.kind !== undefined) conds.push(eq(l.kind, auditText('kind', o.kind)));
  if (o.actor !== undefined) conds.push(eq(l.actor, auditText('actor', o.actor)));
  if (o.cursor !== undefined) {
    const [, id] = decodeCursor(o.cursor, AUDIT_CURSOR) as unknown as [string, string];
    conds.push(lt(l.id, Number(id)));
  }
  const rows = await d.db
    .select()
    .from(l)
    .where(and(...conds))
    .orderBy(desc(l.id))
    .limit(limit + 1);
  const more = rows.length > limit;
  const entries = more ? rows.slice(0, limit) : rows;
  const last = entries.at(-1);
  return { entries, ...(more && last ? { nextCursor: encodeCursor(`audit:${last.id}`) } : {}) };
}

const MAX_AUDIT_TEXT_LENGTH = 256;

function auditText(name: string, v: string): string {
  if (typeof v !== 'string' || v.length === 0 || v.length > MAX_AUDIT_TEXT_LENGTH || hasNul(v)) {
    throw new InvalidArgumentError(`${name} must have 1 to ${MAX_AUDIT_TEXT_LENGTH} characters, none of them NUL`);
  }
  return v;
}

export { POLICY_DECISION_KINDS, LEASE_KIND_PREFIX };

export interface RunGovernance {
  /** The run's policy answers (`policy.decided`, `credential.decided` rows), in order. */
  readonly decisions: AuditRow[];
  /** The run's lease rows (`lease.*`), in order: key names and lease ids, never values. */
  readonly leases: AuditRow[];
  /** Waiting or decided policy approvals of the run (signal `policy`), by step. */
  readonly policyApprovals: ApprovalRow[];
}

/**
 * What the policy decided for a run and which credentials it leased, from the audit log
 * (rows in insertion order). Empty lists for a run with neither (or no such run: the caller
 * reads the run itself first).
 */
export async function getRunGovernance(d: Database, tenant: TenantId, runId: string): Promise<RunGovernance> {
  const l = schema.auditLog;
  const a = schema.approvals;
  // The prefix is a constant without LIKE wildcards; `_` in `lease.` is not one either.
  const rows = await d.db
    .select()
    .from(l)
    .where(and(eq(l.tenant, tenant), eq(l.runId, runId), or(inArray(l.kind, [...POLICY_DECISION_KINDS]), sql`starts_with(${l.kind}, ${LEASE_KIND_PREFIX})`)))
    .orderBy(asc(l.id));
  const policyApprovals = await d.db
    .select()
    .from(a)
    .where(and(eq(a.tenant, tenant), eq(a.runId, runId), eq(a.signal, 'policy')))
    .orderBy(asc(a.requestedAt), asc(a.step));
  return {
    decisions: rows.filter((r) => (POLICY_DECISION_KINDS as readonly string[]).includes(r.kind)),
    leases: rows.filter((r) => r.kind.startsWith(LEASE_KIND_PREFIX)),
    policyApprovals,
  };
}

// ---------------------------------------------------------------------------------------
// Policy versions.

export type PolicyVersionRow = typeof schema.policies.$inferSelect;
/** A version without its text, for lists. */
export type PolicyVersionSummary = Omit<PolicyVersionRow, 'text' | 'tenant' | 'streamSeq'>;

const MAX_POLICY_VERSIONS = 500;

/** A policy version from a path or flag: a positive integer. */
export function parsePolicyVersion(raw: string): number {
  const n = /^\d{1,9}$/.test(raw) ? Number(raw) : NaN;
  if (!(n >= 1)) throw new InvalidArgumentError(`version must be a positive integer; got ${quote(raw)}`);
  return n;
}

/** The tenant's policy versions, newest first, without their text (at most 500). */
export async function listPolicies(d: Database, tenant: TenantId): Promise<PolicyVersionSummary[]> {
  const p = schema.policies;
  return d.db
    .select({ version: p.version, sha256: p.sha256, by: p.by, reason: p.reason, at: p.at })
    .from(p)
    .where(eq(p.tenant, tenant))
    .orderBy(desc(p.version))
    .limit(MAX_POLICY_VERSIONS);
}

/** One policy version with its text; undefined when the tenant has no such version. */
export async function getPolicyVersion(d: Database, tenant: TenantId, version: number): Promise<PolicyVersionRow | undefined> {
  if (!Number.isSafeInteger(version) || version < 1) throw new InvalidArgumentError(`version must be a positive integer; got ${quote(String(version))}`);
  const p = schema.policies;
  const [row] = await d.db
    .select()
    .from(p)
    .where(and(eq(p.tenant, tenant), eq(p.version, version)));
  return row;
}

const APPROVAL_STATUS = /^[a-z][a-z_-]{0,31}$/;

export interface ListApprovalsOptions {
  readonly status?: string;
  readonly limit?: number;
}

/** Approvals newest first; at most `limit` (default 50, at most 500). */
export async function listApprovals(d: Database, tenant: TenantId, o: ListApprovalsOptions = {}): Promise<ApprovalRow[]> {
  const limit = checkLimit(o.limit ?? DEFAULT_LIMIT);
  const a = schema.approvals;
  const conds: SQL[] = [eq(a.tenant, tenant)];
  if (o.status !== undefined) {
    if (!APPROVAL_STATUS.test(o.status)) throw new InvalidArgumentError(`status must be a lowercase word (such as pending); got ${quote(o.status)}`);
    conds.push(eq(a.status, o.status));
  }
  return d.db
    .select()
    .from(a)
    .where(and(...conds))
    .orderBy(desc(a.requestedAt), asc(a.runId), asc(a.step))
    .limit(limit);
}

/**
 * The tenant's workers as last heard from (heartbeats), by id, each with its admission
 * state. A worker approved before it ever announced itself is not listed until it does
 * (its record is in `worker_admissions` and the audit log).
 */
export async function listWorkers(d: Database, tenant: TenantId): Promise<WorkerRow[]> {
  const w = schema.workers;
  const a = schema.workerAdmissions;
  const rows = await d.db
    .select({ ...getTableColumns(w), state: a.state, admissionBy: a.changedBy, admissionAt: a.changedAt, admissionReason: a.reason })
    .from(w)
    .leftJoin(a, and(eq(a.tenant, w.tenant), eq(a.workerId, w.workerId)))
    .where(eq(w.tenant, tenant))
    .orderBy(asc(w.workerId));
  return rows.map(({ state, ...r }) => ({
    ...r,
    admission: state === WorkerAdmissionState.Approved || state === WorkerAdmissionState.Revoked ? state : WorkerAdmissionState.Pending,
  }));
}

// ---------------------------------------------------------------------------------------
// Projection lag.

export interface ProjectionLag {
  readonly tenant: TenantId;
  readonly stream: string;
  /** The run stream's last sequence; null when the stream does not exist. */
  readonly streamLastSeq: number | null;
  /** The last stream sequence the projections applied (0 before the first). */
  readonly checkpoint: number;
  /** Events in the stream not yet in the projections; null when the stream does not exist. */
  readonly lag: number | null;
  readonly error?: { readonly code: string; readonly message: string };
}

/**
 * Stream sequences the projector has not applied yet, per tenant. A tenant whose projections
 * do not follow its stream (see projection-sync.ts) has no lag to speak of: it is reported
 * with lag null and the error `projection_out_of_sync`, never as 0.
 */
export async function projectionLag(d: Database, access: StreamSide, tenants: readonly TenantId[]): Promise<ProjectionLag[]> {
  // Checkpoints before streams (see judgeSync).
  const followed = await readFollowed(d.db, tenants);
  return Promise.all(
    tenants.map(async (t): Promise<ProjectionLag> => {
      const stream = Streams.runs(t);
      const f = followed.get(t);
      const checkpoint = f?.checkpoint ?? 0;
      const now = await readStreamNow(access, t);
      if (!now) return { tenant: t, stream, streamLastSeq: null, checkpoint, lag: null, error: { code: 'unknown_tenant', message: `tenant ${t} has no run stream` } };
      const reason = outOfSyncReason(stream, f, now);
      if (reason)
        return { tenant: t, stream, streamLastSeq: now.lastSeq, checkpoint, lag: null, error: { code: ErrorCode.ProjectionOutOfSync, message: outOfSyncError(t, reason).message } };
      return { tenant: t, stream, streamLastSeq: now.lastSeq, checkpoint, lag: now.lastSeq - checkpoint };
    }),
  );
}

/** Each tenant's run-stream checkpoint (tenants without one are absent). */
export async function readCheckpoints(d: Database, tenants: readonly TenantId[]): Promise<Map<TenantId, number>> {
  const out = new Map<TenantId, number>();
  if (tenants.length === 0) return out;
  const c = schema.checkpoints;
  const rows = await d.db
    .select({ tenant: c.tenant, stream: c.stream, lastStreamSeq: c.lastStreamSeq })
    .from(c)
    .where(inArray(c.tenant, [...tenants]));
  for (const t of tenants) {
    const row = rows.find((x) => x.tenant === t && x.stream === Streams.runs(t));
    if (row) out.set(t, row.lastStreamSeq);
  }
  return out;
}

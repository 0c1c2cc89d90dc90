/**
 * Applying run stream messages to the projection tables, exactly once.
 *
 * A batch is applied in one transaction together with the tenant's checkpoint (the last
 * stream sequence applied), under a transaction-scoped advisory lock on the tenant, so two
 * appliers of one tenant (two projector processes, or a rebuild and a live projector) take
 * turns. Inside, messages at or below the checkpoint are skipped: a redelivery or a replay
 * applies nothing twice. Rows are upserts keyed by their primary keys; audit rows are
 * inserted or left alone (the table is append-only).
 *
 * Messages are applied only in stream order with nothing missing: a message that arrives
 * after a gap (an earlier one is still with a crashed process, waiting for redelivery) is
 * held back, else the checkpoint would move past the missing one and lose it for good.
 *
 * A message that is not a valid run event becomes a dead_letters row and the checkpoint
 * moves past it; so does a valid event whose rows Postgres refuses (a value out of a
 * column's range, say). One bad message never stalls a tenant.
 */
import { and, eq, getTableColumns, inArray, sql, type SQL } from 'drizzle-orm';
import type { PgColumn, PgTable } from 'drizzle-orm/pg-core';
import { db as schema, ErrorCode, Streams, type ErrorRecord, type RunTrace, type TenantId } from '@capstan/schemas';
import { dbErrorMessage, outOfSyncError, readFollowed, type ProjectionDb } from '@capstan/kit';
import {
  decodeStored,
  pgText,
  projectEvent,
  stepKey,
  viewFromRows,
  type ApprovalRow,
  type AuditRow,
  type EventRow,
  type RunRow,
  type RunView,
  type SearchRow,
  type StepRow,
  type StoredEvent,
  type StreamMessage,
} from './projection.js';

export type DeadLetterRow = Omit<typeof schema.deadLetters.$inferSelect, 'id' | 'at'>;

export interface ApplyOptions {
  /**
   * The stream sequence of the first run event at or after `from` (undefined: none yet).
   * Tells a gap left by a message that is not a run event (an idempotency claim) from a
   * missing one. Omitted when the messages are known to be every run event in order (a
   * rebuild reading the stream itself).
   */
  readonly nextSeq?: (from: number) => Promise<number | undefined>;
  /** Called in the transaction after every write, just before the commit. */
  readonly beforeCommit?: () => void;
  /**
   * The creation time of the stream the messages come from. When the checkpoint row names
   * another stream, nothing is applied (`projection_out_of_sync`): the fence is in the same
   * transaction as the write, whatever the caller checked before.
   */
  readonly streamCreated?: string;
}

export interface ApplyResult {
  /** The checkpoint after the batch: every message at or below it may be acknowledged. */
  readonly checkpoint: number;
  /** Messages applied now (as rows, or as dead letters). */
  readonly applied: number;
  /** Messages at or below the checkpoint before the batch: already applied. */
  readonly skipped: number;
  readonly deadLettered: number;
  /** The first message held back because an earlier run event has not arrived. */
  readonly blockedAt: number | undefined;
  /** Audit rows written (for their trace spans), with the trace of their run. */
  readonly audited?: readonly AuditedEvent[];
  /** Codes of the messages dead-lettered. */
  readonly deadLetterCodes?: readonly string[];
}

/** An audit row the batch wrote: which run event it records, and that run's trace. */
export interface AuditedEvent {
  readonly runId: string;
  readonly seq: number;
  readonly kind: string;
  readonly trace: RunTrace | undefined;
}

/** The lock key of a tenant's projection: every applier of the tenant takes it first. */
export async function lockTenant(tx: ProjectionDb, tenant: TenantId): Promise<void> {
  await tx.execute(sql`select pg_advisory_xact_lock(hashtextextended(${`capstan.projector:${tenant}`}, 0))`);
}

export async function readCheckpoint(tx: ProjectionDb, tenant: TenantId): Promise<number> {
  const c = schema.checkpoints;
  const rows = await tx
    .select({ seq: c.lastStreamSeq })
    .from(c)
    .where(and(eq(c.tenant, tenant), eq(c.stream, Streams.runs(tenant))));
  return rows[0]?.seq ?? 0;
}

export async function writeCheckpoint(tx: ProjectionDb, tenant: TenantId, seq: number): Promise<void> {
  const c = schema.checkpoints;
  await tx
    .insert(c)
    .values({ tenant, stream: Streams.runs(tenant), lastStreamSeq: seq })
    .onConflictDoUpdate({ target: [c.tenant, c.stream], set: { lastStreamSeq: seq, updatedAt: sql`now()` } });
}

/** Applies a batch of one tenant's run stream messages in one transaction (see the file comment). */
export async function applyBatch(db: ProjectionDb, tenant: TenantId, msgs: readonly StreamMessage[], opts: ApplyOptions = {}): Promise<ApplyResult> {
  return db.transaction(async (tx) => {
    await lockTenant(tx, tenant);
    const result = await applyLocked(tx, tenant, msgs, opts);
    opts.beforeCommit?.();
    return result;
  });
}

/**
 * Applies messages inside a transaction that already holds the tenant's lock. If Postgres
 * refuses the batch's rows, the batch is applied again in halves (each in a savepoint) down
 * to the refused event, which is dead-lettered.
 */
export async function applyLocked(tx: ProjectionDb, tenant: TenantId, msgs: readonly StreamMessage[], opts: ApplyOptions = {}): Promise<ApplyResult> {
  try {
    return await tx.transaction((sp) => applyOnce(sp, tenant, msgs, opts));
  } catch (e) {
    if (!isRefusal(e)) throw e;
    if (msgs.length > 1) {
      // Halve until the refused event is alone: the rest applies in a few savepoints.
      const sorted = [...msgs].sort((a, b) => a.seq - b.seq);
      const half = Math.ceil(sorted.length / 2);
      const first = await applyLocked(tx, tenant, sorted.slice(0, half), opts);
      if (first.blockedAt !== undefined) return first;
      const second = await applyLocked(tx, tenant, sorted.slice(half), opts);
      return {
        checkpoint: second.checkpoint,
        applied: first.applied + second.applied,
        skipped: first.skipped + second.skipped,
        deadLettered: first.deadLettered + second.deadLettered,
        blockedAt: second.blockedAt,
        audited: [...(first.audited ?? []), ...(second.audited ?? [])],
        deadLetterCodes: [...(first.deadLetterCodes ?? []), ...(second.deadLetterCodes ?? [])],
      };
    }
    const refused: ErrorRecord = {
      code: ErrorCode.SchemaViolation,
      message: `the projection tables cannot hold this event: ${dbErrorMessage(e)}`.slice(0, 1000),
      retryable: false,
    };
    return applyOnce(tx, tenant, msgs, { ...opts, refused });
  }
}

/**
 * Postgres refusing the rows themselves (a data exception, a constraint), or a value the
 * driver cannot send (an out-of-range date): the same rows would be refused again. Anything
 * else (the server away, a lost connection) is worth retrying, and is thrown to the caller.
 */
function isRefusal(e: unknown): boolean {
  const code = sqlState(e) ?? '';
  return /^(21|22|23)/.test(code) || e instanceof RangeError || (e as { cause?: unknown }).cause instanceof RangeError;
}

function sqlState(e: unknown): string | undefined {
  for (let x: unknown = e, i = 0; x && i < 4; x = (x as { cause?: unknown }).cause, i++) {
    const code = (x as { code?: unknown }).code;
    if (typeof code === 'string' && /^[0-9A-Z]{5}$/.test(code)) return code;
  }
  return undefined;
}

async function applyOnce(tx: ProjectionDb, tenant: TenantId, msgs: readonly StreamMessage[], opts: ApplyOptions & { refused?: ErrorRecord }): Promise<ApplyResult> {
  const followed = (await readFollowed(tx, [tenant])).get(tenant);
  if (opts.streamCreated !== undefined && followed?.created && followed.created !== opts.streamCreated) {
    throw outOfSyncError(tenant, `the messages come from ${Streams.runs(tenant)} created at ${opts.streamCreated}; the projections follow the one created at ${followed.created}`);
  }
  const checkpoint = followed?.checkpoint ?? 0;
  const sorted = [...new Map(msgs.map((m) => [m.seq, m])).values()].sort((a, b) => a.seq - b.seq);
  const fresh = sorted.filter((m) => m.seq > checkpoint);
  const skipped = sorted.length - fresh.length;

  // The contiguous prefix: each message must be the stream's next run event.
  const ready: StreamMessage[] = [];
  let blockedAt: number | undefined;
  let prev = checkpoint;
  for (const m of fresh) {
    if (m.seq !== prev + 1 && opts.nextSeq && (await opts.nextSeq(prev + 1)) !== m.seq) {
      blockedAt = m.seq;
      break;
    }
    ready.push(m);
    prev = m.seq;
  }
  if (ready.length === 0) return { checkpoint, applied: 0, skipped, deadLettered: 0, blockedAt };

  const stored: StoredEvent[] = [];
  const deadLetters: DeadLetterRow[] = [];
  for (const m of ready) {
    const d = opts.refused ? { ok: false as const, error: opts.refused } : decodeStored(tenant, m);
    if (d.ok) stored.push(d.stored);
    else deadLetters.push(deadLetterOf(tenant, m, d.error));
  }

  const views = await loadViews(tx, tenant, [...new Set(stored.map((s) => s.event.runId))]);
  const rows = foldBatch(tenant, views, stored);
  await writeRows(tx, rows, deadLetters);
  const last = (ready.at(-1) as StreamMessage).seq;
  await writeCheckpoint(tx, tenant, last);
  const audited = rows.audit.map((a) => ({ runId: a.runId, seq: a.seq, kind: a.kind, trace: (rows.runs.get(a.runId)?.trace ?? undefined) as RunTrace | undefined }));
  return { checkpoint: last, applied: ready.length, skipped, deadLettered: deadLetters.length, blockedAt, audited, deadLetterCodes: deadLetters.map((d) => d.code) };
}

/** The dead letter row of a message the projection cannot use. */
export function deadLetterOf(tenant: TenantId, m: StreamMessage, error: ErrorRecord): DeadLetterRow {
  return { tenant, stream: Streams.runs(tenant), streamSeq: m.seq, subject: m.subject, code: pgText(error.code), message: pgText(error.message.slice(0, 1000)) };
}

/** Every row a batch writes, each once, in its final state. */
export interface BatchRows {
  readonly runs: Map<string, RunRow>;
  readonly steps: Map<string, StepRow>;
  readonly approvals: Map<string, ApprovalRow>;
  readonly events: EventRow[];
  readonly search: SearchRow[];
  readonly audit: AuditRow[];
}

/** Folds a batch's events over the views of their runs (pure). */
export function foldBatch(tenant: TenantId, views: Map<string, RunView>, stored: readonly StoredEvent[]): BatchRows {
  const out: BatchRows = { runs: new Map(), steps: new Map(), approvals: new Map(), events: [], search: [], audit: [] };
  for (const s of stored) {
    const runId = s.event.runId;
    const p = projectEvent(tenant, views.get(runId) ?? viewFromRows(undefined, [], []), s);
    views.set(runId, p.view);
    out.events.push(p.event);
    if (p.run) out.runs.set(runId, p.run);
    // One row per key: Postgres refuses an upsert that touches a row twice.
    for (const st of p.steps) out.steps.set(`${runId}/${stepKey(st.step, st.attempt)}`, st);
    for (const a of p.approvals) out.approvals.set(`${runId}/${a.step}`, a);
    out.search.push(...p.search);
    if (p.audit) out.audit.push(p.audit);
  }
  return out;
}

async function loadViews(tx: ProjectionDb, tenant: TenantId, runIds: readonly string[]): Promise<Map<string, RunView>> {
  const views = new Map<string, RunView>();
  if (runIds.length === 0) return views;
  const ids = [...runIds];
  // One after another: a transaction is one connection, which runs one query at a time.
  const runs = await tx
    .select()
    .from(schema.runs)
    .where(and(eq(schema.runs.tenant, tenant), inArray(schema.runs.runId, ids)));
  const steps = await tx
    .select()
    .from(schema.steps)
    .where(and(eq(schema.steps.tenant, tenant), inArray(schema.steps.runId, ids)));
  const approvals = await tx
    .select()
    .from(schema.approvals)
    .where(and(eq(schema.approvals.tenant, tenant), inArray(schema.approvals.runId, ids)));
  const group = <T extends { runId: string }>(rows: T[]) => {
    const m = new Map<string, T[]>();
    for (const r of rows) {
      const list = m.get(r.runId);
      if (list) list.push(r);
      else m.set(r.runId, [r]);
    }
    return m;
  };
  const runById = new Map(runs.map((r) => [r.runId, r]));
  const stepsByRun = group(steps);
  const approvalsByRun = group(approvals);
  for (const id of ids) views.set(id, viewFromRows(runById.get(id), stepsByRun.get(id) ?? [], approvalsByRun.get(id) ?? []));
  return views;
}

/**
 * One statement per table, whatever the batch size: each column's values travel as one
 * array parameter and `unnest` turns them back into rows. Building a multi-row VALUES list
 * through the query builder cost more CPU than Postgres spent on the batch.
 */
function bulkInsert(table: PgTable, rows: readonly object[], onConflict: { key: readonly string[] } | 'nothing'): SQL | undefined {
  const first = rows[0];
  if (!first) return undefined;
  const columns = getTableColumns(table);
  // The rows' own properties: a database-numbered id or defaulted time is left out.
  const props = Object.keys(first).filter((p) => p in columns);
  const cols = props.map((p) => columns[p] as PgColumn);
  const arrays = props.map((p, i) => {
    const type = (cols[i] as PgColumn).getSQLType();
    const values = rows.map((r) => toParam((r as Record<string, unknown>)[p], type));
    return sql`${sql.param(values)}::${sql.raw(type)}[]`;
  });
  const names = sql.join(
    cols.map((c) => sql.identifier(c.name)),
    sql`, `,
  );
  const conflict =
    onConflict === 'nothing'
      ? sql`on conflict do nothing`
      : sql`on conflict (${sql.join(
          onConflict.key.map((p) => sql.identifier((columns[p] as PgColumn).name)),
          sql`, `,
        )}) do update set ${sql.join(
          cols.filter((_, i) => !onConflict.key.includes(props[i] as string)).map((c) => sql`${sql.identifier(c.name)} = excluded.${sql.identifier(c.name)}`),
          sql`, `,
        )}`;
  return sql`insert into ${table} (${names}) select * from unnest(${sql.join(arrays, sql`, `)}) ${conflict}`;
}

/** A value as an element of a Postgres array parameter of `type`. */
function toParam(v: unknown, type: string): unknown {
  if (v === null || v === undefined) return null;
  if (v instanceof Date) return v.toISOString();
  if (type === 'jsonb' || type === 'json') return JSON.stringify(v);
  return v;
}

async function writeRows(tx: ProjectionDb, rows: BatchRows, deadLetters: readonly DeadLetterRow[]): Promise<void> {
  const statements = [
    bulkInsert(schema.runs, [...rows.runs.values()], { key: ['tenant', 'runId'] }),
    bulkInsert(schema.steps, [...rows.steps.values()], { key: ['tenant', 'runId', 'step', 'attempt'] }),
    bulkInsert(schema.approvals, [...rows.approvals.values()], { key: ['tenant', 'runId', 'step'] }),
    bulkInsert(schema.events, rows.events, { key: ['tenant', 'runId', 'seq'] }),
    bulkInsert(schema.runSearch, rows.search, 'nothing'),
    // Append-only: a replayed audit event finds its row there already and leaves it alone.
    bulkInsert(schema.auditLog, rows.audit, 'nothing'),
    bulkInsert(schema.deadLetters, deadLetters, 'nothing'),
  ];
  for (const q of statements) if (q) await tx.execute(q);
}

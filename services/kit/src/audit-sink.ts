/**
 * The audit store for what the data plane is about to do ("audit first"): a step's external
 * write is preceded by an intent row in `audit_log`, and when that row cannot be written the
 * write does not happen.
 *
 * These rows share the table with the projector's, so they follow a key scheme that cannot
 * collide with them (the unique key is `(tenant, run_id, seq)`):
 * - the projector's rows about a run have `seq` = the event's run-local seq (1, 2, …); its
 *   rows about no run have an empty `run_id` (the fleet: positive `seq`; policy versions:
 *   `seq` = minus the version), so the empty `run_id` is not this scheme's to use;
 * - rows a data-plane service writes at the moment it acts carry the run's id and a
 *   **negative** `seq`, taken just below the run's lowest (-1, -2, …) with the unique index
 *   as the only arbiter, and `stream_seq` = 0: they come from no stream, so verifying or
 *   rebuilding the projections leaves them alone. Any service adds such a row with
 *   {@link appendAuditRow}, inside its own transaction if it has one.
 *
 * An intent is identified by its idempotency key (`detail.key`): at most one row per key,
 * however many attempts, workers or racing calls ask.
 */
import { sql } from 'drizzle-orm';
import { CapstanError, ErrorCode, type JsonValue, type RunId, type TenantId } from '@capstan/schemas';
import { dbErrorMessage, type Database, type ProjectionDb } from './db.js';

/** `stream_seq` of a row no stream produced. */
export const DATA_PLANE_STREAM_SEQ = 0;

/**
 * The audit store did not take an intent (refused, unreachable, not configured), so the
 * action it announces must not happen. Retryable: a later attempt asks again.
 */
export class AuditUnavailableError extends CapstanError {
  constructor(message: string, options?: ErrorOptions) {
    super(ErrorCode.AuditUnavailable, message, true, options);
  }
}

/** A row about a run, written by the service that acts rather than derived from the run's stream. */
export interface DataPlaneAuditRow {
  readonly tenant: TenantId;
  readonly runId: RunId;
  /** `external_write.intent`, `lease.issued`, …: `<subject>.<what>`. */
  readonly kind: string;
  /** Who acts: a worker id, a service name. Never a secret. */
  readonly actor: string;
  /** Names, ids and keys only: never a secret value or a payload. */
  readonly detail: { readonly [k: string]: JsonValue };
}

/** An intent to act, identified by its idempotency key. */
export interface AuditIntent extends DataPlaneAuditRow {
  /** At most one row per key; recorded as `detail.key`. */
  readonly key: string;
}

export const AuditAppend = {
  /** This call wrote the intent's row. */
  Appended: 'appended',
  /** A row with this key was there already (an earlier attempt, or a racing call, wrote it). */
  Exists: 'exists',
} as const;
export type AuditAppend = (typeof AuditAppend)[keyof typeof AuditAppend];

export interface AuditSink {
  /**
   * Makes sure the intent is durably recorded: writes its row, or finds the row its key
   * already has. Only a resolved promise means "recorded"; the caller acts only then.
   * @throws AuditUnavailableError when the store refuses or cannot be reached. The row may
   *   still have been committed (a connection lost during COMMIT); the next call with the
   *   same key then answers `exists`, never a second row.
   */
  appendIntent(intent: AuditIntent): Promise<AuditAppend>;
  close(): Promise<void>;
}

/** A failed insert is retried this often on a `seq` another writer took first, then given up. */
const MAX_SEQ_RACES = 32;

/**
 * Inserts a data-plane row at the run's next free negative `seq` and returns that `seq`.
 * Racing writers of the same run both aim at the same `seq`; the unique index lets one in,
 * and the other takes the next one down (each statement sees what was committed before it).
 */
export async function appendAuditRow(tx: ProjectionDb, row: DataPlaneAuditRow): Promise<number> {
  for (let i = 0; i < MAX_SEQ_RACES; i++) {
    const res = (await tx.execute(sql`
      insert into audit_log (tenant, run_id, seq, kind, actor, detail, at, stream_seq)
      select ${row.tenant}, ${row.runId}, coalesce(min(seq), 0) - 1, ${row.kind}, ${row.actor}, ${JSON.stringify(row.detail)}::jsonb, now(), ${DATA_PLANE_STREAM_SEQ}
        from audit_log where tenant = ${row.tenant} and run_id = ${row.runId} and seq < 0
      on conflict (tenant, run_id, seq) do nothing
      returning seq`)) as unknown as { rows: { seq: number }[] };
    const seq = res.rows[0]?.seq;
    if (seq !== undefined) return Number(seq);
  }
  throw new AuditUnavailableError(`audit row for run ${row.runId} lost the race for a seq ${MAX_SEQ_RACES} times`);
}

/**
 * The Postgres (or PGlite) audit store. Needs SELECT and INSERT on `audit_log` and USAGE on
 * its id sequence, nothing more: the table refuses UPDATE and DELETE to everyone.
 * `closeDatabase`: whether `close()` also closes `d` (when the sink opened it).
 */
export function createAuditSink(d: Database, opts: { closeDatabase?: boolean } = {}): AuditSink {
  return {
    async appendIntent(intent) {
      try {
        return await d.db.transaction(async (tx) => {
          // Same key, one writer at a time: the lookup and the insert cannot interleave.
          await tx.execute(sql`select pg_advisory_xact_lock(hashtextextended(${`capstan.audit.intent:${intent.tenant}:${intent.key}`}, 0))`);
          const found = (await tx.execute(sql`
            select 1 from audit_log
             where tenant = ${intent.tenant} and run_id = ${intent.runId} and seq < 0
               and kind = ${intent.kind} and detail->>'key' = ${intent.key}
             limit 1`)) as unknown as { rows: unknown[] };
          if (found.rows.length > 0) return AuditAppend.Exists;
          await appendAuditRow(tx, { ...intent, detail: { ...intent.detail, key: intent.key } });
          return AuditAppend.Appended;
        });
      } catch (e) {
        if (CapstanError.is(e) && e.code === ErrorCode.AuditUnavailable) throw e;
        // The database's message says why (a permission, a trigger, a connection); it holds
        // no values: the row carries names and keys only.
        throw new AuditUnavailableError(`the audit store did not record the intent: ${dbErrorMessage(e).split('\n')[0]?.slice(0, 300) ?? ''}`, { cause: e });
      }
    },
    async close() {
      if (opts.closeDatabase) await d.close();
    },
  };
}

/** A store that records nothing: every intent fails with `why`, so nothing it guards happens. */
export function unavailableAuditSink(why: string): AuditSink {
  return {
    appendIntent: () => Promise.reject(new AuditUnavailableError(why)),
    close: () => Promise.resolve(),
  };
}

/** Small helpers over the drizzle database both drivers (`pg`, PGlite) share. */
import { sql, type SQL } from 'drizzle-orm';
import { appendAuditRow, type ProjectionDb } from '@capstan/kit';
import { AuditKind, type JsonValue, type RunId, type TenantId } from '@capstan/schemas';

/** A database or an open transaction: anything that runs statements. */
export type Executor = Pick<ProjectionDb, 'execute'>;

/** The rows of a raw statement (both drivers answer `{ rows }`). */
export async function rows<T>(x: Executor, query: SQL): Promise<T[]> {
  const res = (await x.execute(query)) as unknown as { rows: T[] };
  return res.rows;
}

/** `ARRAY[…]::text[]` of names (a bare JS array in a template would become a list). */
export function textArray(values: readonly string[]): SQL {
  return values.length === 0
    ? sql`array[]::text[]`
    : sql`array[${sql.join(
        values.map((v) => sql`${v}`),
        sql`, `,
      )}]::text[]`;
}

/** Who the lease service's own audit rows name as the actor. */
export const SERVICE_ACTOR = 'secrets-lease';

/**
 * The `run_id` of audit rows about one secret's administration (put, rotate, refresh,
 * delete): `secret:<NAME>`, never a run id (those are ULIDs) and never the empty run id the
 * projector's rows about no run use (the fleet, policy versions, with seqs of their own).
 * So a secret's history reads as one "run" of the audit log, and its rows take negative
 * seqs like every data-plane row about a run.
 */
export function secretAuditRun(name: string): RunId {
  return `secret:${name}` as RunId;
}

/**
 * Takes the run's audit lock for the rest of the transaction. Data-plane audit rows of a run
 * take the next free negative `seq` (see `appendAuditRow`); writers of one run that queue
 * here find it free the first time, where racing ones would retry on the unique index (and,
 * sixteen redeemers to a lease, give up). Taken first in a transaction, before any row lock,
 * so lock order is the same everywhere.
 */
export async function lockRunAudit(tx: Executor, tenant: TenantId, runId: string): Promise<void> {
  await tx.execute(sql`select pg_advisory_xact_lock(hashtextextended(${`capstan.audit.run:${tenant}:${runId}`}, 0))`);
}

/**
 * Appends one audit row inside `tx`: names, ids and codes only, never a value. The caller
 * holds the run's audit lock ({@link lockRunAudit}), taken when its transaction began.
 */
export function audit(tx: ProjectionDb, tenant: TenantId, runId: RunId, kind: string, actor: string, detail: { readonly [k: string]: JsonValue }): Promise<number> {
  return appendAuditRow(tx, { tenant, runId, kind, actor, detail });
}

/** Audit kinds the lease service writes (`Lease*`, `Secret*`; spelled in @capstan/schemas). */
export const SecretsAudit = AuditKind;

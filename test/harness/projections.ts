/**
 * Projection rows for read-side tests and benchmarks, written straight into the tables
 * (the projector is not involved): complete rows with plausible defaults, and batched
 * inserts that stay under Postgres' 65,535 bind parameters per statement.
 */
import { randomBytes } from 'node:crypto';
import type { PgTable } from 'drizzle-orm/pg-core';
import type { Database } from '@capstan/kit';
import { makeRunId, type db as schema, type RunId, type TenantId } from '@capstan/schemas';

export type RunInsert = typeof schema.runs.$inferInsert;
export type StepInsert = typeof schema.steps.$inferInsert;

/** A run id whose time part is `at`, so ids sort like their start times (as real ones do). */
export function runIdAt(at: Date | number): RunId {
  return makeRunId(typeof at === 'number' ? at : at.getTime(), randomBytes(10));
}

export function runRow(tenant: TenantId, runId: string, over: Partial<RunInsert> = {}): RunInsert {
  const startedAt = over.startedAt ?? new Date();
  return {
    tenant,
    runId,
    workflow: 'demo.pipeline',
    version: 1,
    status: 'completed',
    currentStep: null,
    attempts: 3,
    startedAt,
    updatedAt: startedAt,
    endedAt: null,
    lastSeq: 8,
    lastStreamSeq: 8,
    chain: 'c'.repeat(64),
    ...over,
  };
}

export function stepRow(tenant: TenantId, runId: string, step: string, attempt: number, scheduledAt: Date, over: Partial<StepInsert> = {}): StepInsert {
  return {
    tenant,
    runId,
    step,
    attempt,
    mode: 0,
    pool: 'default',
    handler: `demo.${step}`,
    worker: 'w-1',
    outcome: 'completed',
    scheduledAt,
    startedAt: scheduledAt,
    finishedAt: new Date(scheduledAt.getTime() + 12),
    durationMs: 12,
    result: { ok: true },
    errorCode: null,
    errorMessage: null,
    ...over,
  };
}

/** Inserts `rows` in statements of at most `batch` rows. */
export async function insertBatched<T extends PgTable>(d: Database, table: T, rows: readonly T['$inferInsert'][], batch = 1000): Promise<void> {
  for (let i = 0; i < rows.length; i += batch) {
    await d.db.insert(table).values(rows.slice(i, i + batch) as T['$inferInsert'][]);
  }
}

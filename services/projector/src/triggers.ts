/**
 * Schedules and webhook routes: the tenant's triggers stream (CAP_TRIGGERS_<t>) folded into
 * `schedules` and `webhook_routes` and one audit row per change, exactly once (each record
 * is applied in a transaction with the stream's checkpoint, under its own advisory lock).
 * Schedule state records (`schedstate`, written at every firing) are not projected: they
 * are the orchestrator's working state, and the runs they start are on the run streams.
 */
import { eq } from 'drizzle-orm';
import type { JetStreamManager } from '@nats-io/jetstream';
import type { NatsConnection } from '@nats-io/transport-node';
import { db as schema, decode, ErrorCode, parseScheduleRecord, parseWebhookRoute, SchemaError, Streams, Subjects, toErrorRecord, type TenantId, AuditKind } from '@capstan/schemas';
import type { Logger, ProjectionDb } from '@capstan/kit';
import { pgText, type AuditRow } from './projection.js';
import type { DeadLetterRow } from './apply.js';
import type { StreamFollower, StreamMessage } from './follow.js';
import { applySide, followSide, rebuildSide, type SideStream } from './side.js';

export type ScheduleRow = typeof schema.schedules.$inferSelect;
export type RouteRow = typeof schema.webhookRoutes.$inferSelect;

/** Audit kinds of schedule changes (`schedule.<op>`) and route records. */
export const TriggerAuditKind = {
  create: AuditKind.ScheduleCreated,
  pause: AuditKind.SchedulePaused,
  resume: AuditKind.ScheduleResumed,
  trigger: AuditKind.ScheduleTriggered,
  delete: AuditKind.ScheduleDeleted,
  routeEnabled: AuditKind.RouteSaved,
  routeDisabled: AuditKind.RouteDisabled,
  routeDeleted: AuditKind.RouteDeleted,
} as const;

type Projected = { schedule: ScheduleRow; audit: AuditRow } | { route: RouteRow; audit: AuditRow } | { deadLetter: DeadLetterRow } | { skip: true };

/** What one triggers stream record does to the projections (pure). */
export function projectTrigger(t: TenantId, m: StreamMessage): Projected {
  const kind = m.subject.split('.')[2];
  const id = m.subject.slice(m.subject.lastIndexOf('.') + 1);
  try {
    if (kind === 'schedules') {
      const r = parseScheduleRecord(decode(m.data));
      if (m.subject !== Subjects.schedule(t, r.schedule)) throw new SchemaError('schedule record', 'schedule', `is ${r.schedule}, but the record is stored on ${m.subject}`);
      const by = pgText(r.change.by);
      const reason = r.change.reason === undefined ? null : pgText(r.change.reason);
      const { spec } = r;
      return {
        schedule: {
          tenant: t,
          scheduleId: r.schedule,
          generation: r.generation,
          status: r.status,
          workflow: pgText(spec.workflow),
          spec: JSON.parse(JSON.stringify(spec)) as object,
          anchorAt: new Date(r.anchorMs),
          changedBy: by,
          changedAt: m.time,
          lastOp: r.change.op,
          reason,
          streamSeq: m.seq,
        },
        audit: {
          tenant: t,
          runId: `schedule:${r.schedule}`,
          seq: m.seq,
          kind: TriggerAuditKind[r.change.op],
          actor: by,
          detail: {
            schedule: r.schedule,
            status: r.status,
            workflow: spec.workflow,
            ...(spec.cron !== undefined ? { cron: spec.cron, timezone: spec.timezone ?? 'UTC' } : { everyMs: spec.everyMs ?? null }),
            generation: r.generation,
            reason,
            ...(r.change.runId ? { runId: r.change.runId } : {}),
          },
          at: m.time,
          streamSeq: m.seq,
        },
      };
    }
    if (kind === 'routes') {
      const r = parseWebhookRoute(decode(m.data));
      if (r.route !== id) throw new SchemaError('webhook route', 'route', `is ${r.route}, but the record is stored on ${m.subject}`);
      const by = pgText(r.by);
      const reason = r.reason === undefined ? null : pgText(r.reason);
      return {
        route: {
          tenant: t,
          routeId: r.route,
          workflow: pgText(r.workflow),
          secrets: [...r.secrets],
          fields: r.fields ?? null,
          status: r.status,
          changedBy: by,
          changedAt: m.time,
          reason,
          streamSeq: m.seq,
        },
        audit: {
          tenant: t,
          runId: `route:${r.route}`,
          seq: m.seq,
          kind: r.status === 'enabled' ? TriggerAuditKind.routeEnabled : r.status === 'disabled' ? TriggerAuditKind.routeDisabled : TriggerAuditKind.routeDeleted,
          actor: by,
          detail: { route: r.route, status: r.status, workflow: r.workflow, secrets: [...r.secrets], fields: r.fields ?? null, reason },
          at: m.time,
          streamSeq: m.seq,
        },
      };
    }
    return { skip: true };
  } catch (e) {
    const error = toErrorRecord(e, ErrorCode.DecodeFailed);
    return {
      deadLetter: { tenant: t, stream: Streams.triggers(t), streamSeq: m.seq, subject: m.subject, code: pgText(error.code), message: pgText(error.message.slice(0, 1000)) },
    };
  }
}

async function writeTrigger(tx: ProjectionDb, t: TenantId, m: StreamMessage): Promise<void> {
  const p = projectTrigger(t, m);
  if ('skip' in p) return;
  if ('deadLetter' in p) {
    await tx.insert(schema.deadLetters).values(p.deadLetter).onConflictDoNothing();
    return;
  }
  if ('schedule' in p) {
    const s = schema.schedules;
    const { tenant: _t, scheduleId: _s, ...set } = p.schedule;
    await tx
      .insert(s)
      .values(p.schedule)
      .onConflictDoUpdate({ target: [s.tenant, s.scheduleId], set });
  } else {
    const r = schema.webhookRoutes;
    const { tenant: _t, routeId: _r, ...set } = p.route;
    await tx
      .insert(r)
      .values(p.route)
      .onConflictDoUpdate({ target: [r.tenant, r.routeId], set });
  }
  // Append-only: a re-applied record finds its audit row there already.
  await tx.insert(schema.auditLog).values(p.audit).onConflictDoNothing();
}

/** Schedule records and route records: two kinds on the triggers stream, each followed on its own. */
export const SCHEDULES: SideStream = { lock: 'schedules', stream: Streams.triggers, subject: Subjects.allSchedules, write: writeTrigger, what: 'a schedule record' };
export const ROUTES: SideStream = { lock: 'routes', stream: Streams.triggers, subject: Subjects.allRoutes, write: writeTrigger, what: 'a webhook route record' };

/** Applies one triggers stream record exactly once (skipped at or below its kind's checkpoint). */
export const applyTrigger = (db: ProjectionDb, t: TenantId, m: StreamMessage): Promise<boolean> => applySide(db, m.subject.split('.')[2] === 'routes' ? ROUTES : SCHEDULES, t, m);

/** Re-derives a tenant's `schedules` and `webhook_routes` from its triggers stream in the caller's transaction. */
export async function rebuildTriggers(tx: ProjectionDb, jsm: JetStreamManager, t: TenantId): Promise<number> {
  const schedules = await rebuildSide(tx, jsm, SCHEDULES, t, async () => {
    await tx.delete(schema.schedules).where(eq(schema.schedules.tenant, t));
  });
  const routes = await rebuildSide(tx, jsm, ROUTES, t, async () => {
    await tx.delete(schema.webhookRoutes).where(eq(schema.webhookRoutes.tenant, t));
  });
  return schedules.applied + routes.applied;
}

/** Follows a tenant's schedule and route records into the projections. */
export function followTriggers(nc: NatsConnection, jsm: JetStreamManager, db: ProjectionDb, t: TenantId, log: Logger): StreamFollower[] {
  return [followSide(nc, jsm, db, SCHEDULES, t, log), followSide(nc, jsm, db, ROUTES, t, log)];
}

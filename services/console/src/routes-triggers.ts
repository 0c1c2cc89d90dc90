/**
 * Starting runs and what starts them: the workflow catalog (asked of the orchestrators),
 * "Run now" (a submit), schedules (read from the projections, changed by the orchestrator's
 * schedule commands) and webhook routes (read from the projections).
 */
import type { FastifyInstance } from 'fastify';
import { checkScheduleSpec, nextSlots } from '@capstan/kit';
import {
  CatchupPolicy,
  type db as schema,
  encodedSize,
  jsonObject,
  LIMITS,
  MAX_REASON_CHARS,
  obj,
  optional,
  OverlapPolicy,
  PayloadTooLargeError,
  RUN_ID_PATTERN,
  SCHEDULE_LIMITS,
  scheduleSpecShape,
  str,
  triggerIdSchema,
  UnknownWorkflowError,
  type RunId,
  type ScheduleSpec,
} from '@capstan/schemas';
import { apiPaths, SCHEDULE_ACTIONS, type RouteInfo, type RoutesResponse, type ScheduleInfo, type SchedulesResponse, type WorkflowsResponse } from './api-types.js';
import { pattern, queryOf, sessionOf } from './http.js';
import { postAction, type RouteDeps } from './routes.js';

const reason = optional(str({ max: MAX_REASON_CHARS }));
const startBody = obj('start run', { workflow: str({ min: 1, max: 128 }), input: optional(jsonObject()), runId: optional(str({ pattern: RUN_ID_PATTERN })) });
// The spec's fields as the schedule command takes them (one definition, in schemas).
const createBody = obj('new schedule', { schedule: triggerIdSchema, ...scheduleSpecShape, reason });
const actionBody = obj('schedule action', { reason });

type ScheduleRow = typeof schema.schedules.$inferSelect;
type RouteRow = typeof schema.webhookRoutes.$inferSelect;

export function toScheduleInfo(r: ScheduleRow, now: number): ScheduleInfo {
  const spec = r.spec as ScheduleSpec;
  let next: string[] = [];
  if (r.status === 'active') {
    try {
      next = nextSlots(spec, r.anchorAt.getTime(), now, 3).map((ms) => new Date(ms).toISOString());
    } catch {
      // A spec the orchestrator accepted always parses; a row from another build might not.
    }
  }
  return {
    scheduleId: r.scheduleId,
    status: r.status,
    workflow: r.workflow,
    cron: spec.cron ?? null,
    timezone: spec.cron !== undefined ? (spec.timezone ?? 'UTC') : null,
    everyMs: spec.everyMs ?? null,
    startAt: spec.startAt ?? null,
    endAt: spec.endAt ?? null,
    input: spec.input ?? {},
    overlap: spec.overlap ?? OverlapPolicy.Skip,
    catchup: spec.catchup ?? CatchupPolicy.All,
    catchupWindowMs: spec.catchupWindowMs ?? SCHEDULE_LIMITS.defaultCatchupWindowMs,
    next,
    lastOp: r.lastOp,
    changedBy: r.changedBy,
    changedAt: r.changedAt.toISOString(),
    reason: r.reason,
  };
}

export function toRouteInfo(r: RouteRow): RouteInfo {
  return {
    routeId: r.routeId,
    workflow: r.workflow,
    secrets: (r.secrets as string[]) ?? [],
    fields: (r.fields as Record<string, string> | null) ?? null,
    status: r.status,
    path: `/hooks/${r.tenant}/${r.routeId}`,
    changedBy: r.changedBy,
    changedAt: r.changedAt.toISOString(),
  };
}

export function registerTriggerRoutes(app: FastifyInstance, d: RouteDeps): void {
  app.get<{ Params: { tenant: string } }>(pattern(apiPaths.workflows(':tenant')), async (req): Promise<WorkflowsResponse> => {
    const t = d.tenantOf(sessionOf(req), req.params.tenant);
    queryOf(req, []);
    return { workflows: await d.commands().workflows(t) };
  });

  postAction<{ tenant: string }>(app, d, 'start', pattern(apiPaths.runs(':tenant')), async (c, t, _p, body) => {
    const b = startBody.parse(body);
    // The orchestrator would dead-letter an unknown workflow; the operator hears it now.
    if (!(await c.workflows(t)).some((w) => w.id === b.workflow)) throw new UnknownWorkflowError(b.workflow);
    const input = b.input ?? {};
    const size = encodedSize(input);
    if (size > LIMITS.inputBytes) throw new PayloadTooLargeError('input', size, LIMITS.inputBytes);
    const runId = await c.start(t, b.workflow, input, b.runId as RunId | undefined);
    return { runId };
  });

  app.get<{ Params: { tenant: string } }>(pattern(apiPaths.schedules(':tenant')), async (req): Promise<SchedulesResponse> => {
    const t = d.tenantOf(sessionOf(req), req.params.tenant);
    const all = queryOf(req, ['all']).one('all') === 'true';
    const rows = await d.db.db.query.schedules.findMany({ where: (s, { eq }) => eq(s.tenant, t), orderBy: (s, { asc }) => [asc(s.scheduleId)] });
    const now = Date.now();
    return { schedules: rows.filter((r) => all || r.status !== 'deleted').map((r) => toScheduleInfo(r, now)) };
  });

  postAction<{ tenant: string }>(app, d, 'createSchedule', pattern(apiPaths.schedules(':tenant')), async (c, t, _p, body, by) => {
    const { schedule, reason: why, ...rest } = createBody.parse(body);
    // Refused here with the parser's own words, before the orchestrator is asked.
    const spec = checkScheduleSpec(Object.fromEntries(Object.entries(rest).filter(([, v]) => v !== undefined)));
    await c.schedule(t, { op: 'create', schedule, spec, by, ...(why ? { reason: why } : {}) });
    return { scheduleId: schedule };
  });

  for (const action of SCHEDULE_ACTIONS) {
    postAction<{ tenant: string; id: string }>(app, d, `${action}Schedule`, pattern(apiPaths.scheduleAction(':tenant', ':id', action)), async (c, t, p, body, by) => {
      const { reason: why } = actionBody.parse(body);
      const stored = await c.schedule(t, { op: action, schedule: p.id, by, ...(why ? { reason: why } : {}) });
      return { scheduleId: p.id, ...(stored.record.change.runId ? { runId: stored.record.change.runId } : {}) };
    });
  }

  app.get<{ Params: { tenant: string } }>(pattern(apiPaths.routes(':tenant')), async (req): Promise<RoutesResponse> => {
    const t = d.tenantOf(sessionOf(req), req.params.tenant);
    queryOf(req, []);
    const rows = await d.db.db.query.webhookRoutes.findMany({ where: (r, { eq }) => eq(r.tenant, t), orderBy: (r, { asc }) => [asc(r.routeId)] });
    return { routes: rows.filter((r) => r.status !== 'deleted').map(toRouteInfo) };
  });
}

/**
 * Approvals queue, worker fleet (with admission actions) and the tenant's projection lag.
 */
import type { FastifyInstance } from 'fastify';
import { listApprovals, listWorkers, outOfSyncError, parseLimit, projectionLag, readFollowed } from '@capstan/kit';
import { ErrorCode, MAX_REASON_CHARS, obj, optional, str } from '@capstan/schemas';
import { apiPaths, type ApprovalsResponse, type SystemResponse, type WorkersResponse } from './api-types.js';
import { notFound, pattern, queryOf, sessionOf } from './http.js';
import { postAction, type RouteDeps } from './routes.js';
import { toApproval, toWorkerInfo } from './views.js';

type WorkerParams = { tenant: string; workerId: string };
const admissionBody = obj('worker admission', { reason: optional(str({ max: MAX_REASON_CHARS })) });

export function registerFleetRoutes(app: FastifyInstance, d: RouteDeps): void {
  app.get<{ Params: { tenant: string } }>(pattern(apiPaths.approvals(':tenant')), async (req): Promise<ApprovalsResponse> => {
    const t = d.tenantOf(sessionOf(req), req.params.tenant);
    const q = queryOf(req, ['status', 'limit']);
    const status = q.one('status');
    const rows = await listApprovals(d.db, t, { ...(status !== undefined ? { status } : {}), limit: parseLimit(q.one('limit')) });
    // The queue says what is being approved: each run's workflow, in one keyed read.
    const ids = [...new Set(rows.map((a) => a.runId))];
    const runs =
      ids.length === 0
        ? []
        : await d.db.db.query.runs.findMany({ columns: { runId: true, workflow: true }, where: (r, { and, eq, inArray }) => and(eq(r.tenant, t), inArray(r.runId, ids)) });
    const workflowOf = new Map(runs.map((r) => [r.runId, r.workflow]));
    return { approvals: rows.map((a) => toApproval(a, workflowOf.get(a.runId) ?? null)) };
  });

  app.get<{ Params: { tenant: string } }>(pattern(apiPaths.workers(':tenant')), async (req): Promise<WorkersResponse> => {
    const t = d.tenantOf(sessionOf(req), req.params.tenant);
    queryOf(req, []);
    const now = Date.now();
    return { workers: (await listWorkers(d.db, t)).map((w) => toWorkerInfo(w, now)) };
  });

  for (const [name, path] of [
    ['approveWorker', pattern(apiPaths.approveWorker(':tenant', ':workerId'))],
    ['revokeWorker', pattern(apiPaths.revokeWorker(':tenant', ':workerId'))],
  ] as const) {
    postAction<WorkerParams>(app, d, name, path, async (c, t, p, body, by) => {
      const { reason } = admissionBody.parse(body);
      // Only a worker the fleet view knows: a typo must not admit a name nobody runs.
      const known = (await listWorkers(d.db, t)).some((w) => w.workerId === p.workerId);
      if (!known) throw notFound(`tenant ${t} has no worker ${JSON.stringify(p.workerId.slice(0, 128))}`);
      const author = { by, ...(reason !== undefined ? { reason } : {}) };
      await (name === 'approveWorker' ? c.approveWorker(t, p.workerId, author) : c.revokeWorker(t, p.workerId, author));
      return { workerId: p.workerId };
    });
  }

  app.get<{ Params: { tenant: string } }>(pattern(apiPaths.system(':tenant')), async (req): Promise<SystemResponse> => {
    const t = d.tenantOf(sessionOf(req), req.params.tenant);
    queryOf(req, []);
    const access = d.access();
    if (access) {
      const [lag] = await projectionLag(d.db, access, [t]);
      const outOfSync = lag?.error?.code === ErrorCode.ProjectionOutOfSync ? { outOfSync: lag.error } : {};
      return { tenant: t, projectionLag: lag?.lag ?? null, checkpoint: lag?.checkpoint ?? 0, ...outOfSync };
    }
    // Without NATS: the checkpoint, and a projector's out-of-sync mark.
    const f = (await readFollowed(d.db.db, [t])).get(t);
    const outOfSync = f?.outOfSync ? { outOfSync: { code: ErrorCode.ProjectionOutOfSync, message: outOfSyncError(t, f.outOfSync).message } } : {};
    return { tenant: t, projectionLag: null, checkpoint: f?.checkpoint ?? 0, ...outOfSync };
  });
}

/**
 * Approvals queue, worker fleet (with admission actions) and projection lag: a tenant's, and
 * every tenant's of the caller with the NATS server (`capstan status --system`).
 */
import type { FastifyInstance } from 'fastify';
import { listApprovals, listWorkers, outOfSyncError, parseLimit, projectionLag, readFollowed, type TenantAccess } from '@capstan/kit';
import { ErrorCode, MAX_REASON_CHARS, obj, optional, str, type TenantId } from '@capstan/schemas';
import {
  apiPaths,
  type ApprovalsResponse,
  type NatsSummary,
  type PlatformSystemResponse,
  type ProjectionLagEntry,
  type SystemResponse,
  type WorkersResponse,
} from './api-types.js';
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

  /** Each tenant's projections against its run stream; without NATS, the checkpoints and a projector's out-of-sync mark. */
  const lagOf = async (tenants: readonly TenantId[]): Promise<ProjectionLagEntry[]> => {
    const access = d.access();
    if (access) return projectionLag(d.db, access, tenants);
    const followed = await readFollowed(d.db.db, tenants);
    return tenants.map((t) => {
      const f = followed.get(t);
      const lag: ProjectionLagEntry = { tenant: t, stream: '', streamLastSeq: null, checkpoint: f?.checkpoint ?? 0, lag: null };
      return f?.outOfSync ? { ...lag, error: { code: ErrorCode.ProjectionOutOfSync, message: outOfSyncError(t, f.outOfSync).message } } : lag;
    });
  };

  app.get<{ Params: { tenant: string } }>(pattern(apiPaths.system(':tenant')), async (req): Promise<SystemResponse> => {
    const t = d.tenantOf(sessionOf(req), req.params.tenant);
    queryOf(req, []);
    const [lag] = await lagOf([t]);
    const outOfSync = lag?.error?.code === ErrorCode.ProjectionOutOfSync ? { outOfSync: lag.error } : {};
    return { tenant: t, projectionLag: lag?.lag ?? null, checkpoint: lag?.checkpoint ?? 0, ...outOfSync };
  });

  // Every tenant of the caller (never another's), out of sync or not: this is where it shows.
  app.get(apiPaths.platformSystem, async (req): Promise<PlatformSystemResponse> => {
    const s = sessionOf(req);
    queryOf(req, []);
    const tenants = s.tenants.map((t) => d.tenantOf(s, t));
    const access = d.access();
    return { nats: access ? await natsSummary(access, tenants) : null, projection: await lagOf(tenants) };
  });
}

/** The server, and JetStream usage summed over the tenants' accounts (a tenant that does not answer counts nothing). */
async function natsSummary(access: Pick<TenantAccess, 'tenant'>, tenants: readonly TenantId[]): Promise<NatsSummary> {
  const conns = await Promise.all(tenants.map((t) => access.tenant(t).catch(() => undefined)));
  const live = conns.filter((c) => c !== undefined);
  const info = live[0]?.nc.info;
  const accounts = await Promise.all(live.map((c) => c.jsm.getAccountInfo().catch(() => undefined)));
  const sum = (f: (a: NonNullable<(typeof accounts)[number]>) => number) => accounts.reduce((n, a) => n + (a ? f(a) : 0), 0);
  return {
    ...(info ? { server: { name: info.server_name, id: info.server_id, version: info.version, jetstream: info.jetstream === true } } : {}),
    jetstream: { streams: sum((a) => a.streams), consumers: sum((a) => a.consumers), storageBytes: sum((a) => a.storage), memoryBytes: sum((a) => a.memory) },
  };
}

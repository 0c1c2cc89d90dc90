/**
 * Data sync: the tenant's catalog as the control plane knows it (identifiers and safe facts,
 * from the `datasync_entities` projection), the latest pipeline runs with the progress of
 * their five steps (from the runs and steps projections), and the actions: define or delete
 * an entity (admin; the spec goes to the data plane's datasync service, which keeps it),
 * start a pipeline run (operator; a plain submit with identifiers), and the bounded preview
 * (operator: its answer holds rows of the tenant's data).
 */
import type { FastifyInstance } from 'fastify';
import { and, desc, eq, inArray } from 'drizzle-orm';
import { listRuns } from '@capstan/kit';
import {
  CATALOG_KINDS,
  db as schema,
  json,
  obj,
  optional,
  parsePipelineInput,
  PIPELINE_STEPS,
  PIPELINE_WORKFLOW,
  PREVIEW_LIMITS,
  int,
  str,
  type CatalogKind,
  type CatalogRecord,
  type JsonValue,
} from '@capstan/schemas';
import {
  apiPaths,
  type ActionResponse,
  type DatasyncEntity,
  type DatasyncEntityResponse,
  type DatasyncResponse,
  type PipelineRun,
  type PipelineStepProgress,
  type PreviewResponse,
} from './api-types.js';
import { badRequest, bodyOf, pattern, queryOf, requireAction, sessionOf, toHttpError } from './http.js';
import type { RouteDeps } from './routes.js';
import { toRunSummary } from './views.js';

const putBody = obj('datasync put', { name: optional(str({ min: 1, max: 128 })), spec: json() });
const previewBody = obj('preview', {
  connection: str({ min: 1, max: 64 }),
  sql: str({ min: 1, max: PREVIEW_LIMITS.sqlChars }),
  timeoutMs: optional(int({ min: 100, max: PREVIEW_LIMITS.maxTimeoutMs })),
});
const RUNS_SHOWN = 20;

function kindOf(raw: string): CatalogKind {
  if (!(CATALOG_KINDS as readonly string[]).includes(raw)) throw badRequest(`${JSON.stringify(raw.slice(0, 32))} is not one of ${CATALOG_KINDS.join(', ')}`);
  return raw as CatalogKind;
}

function toEntity(r: {
  kind: string;
  id: string;
  name: string;
  version: number;
  status: string;
  fingerprint: string;
  summary: unknown;
  changedBy: string;
  changedAt: Date;
}): DatasyncEntity {
  return {
    kind: r.kind as DatasyncEntity['kind'],
    id: r.id,
    name: r.name,
    version: r.version,
    status: r.status as DatasyncEntity['status'],
    fingerprint: r.fingerprint,
    summary: r.summary as { [k: string]: JsonValue },
    changedBy: r.changedBy,
    changedAt: r.changedAt.toISOString(),
  };
}

/** The entity as the datasync service answered (the projection follows a moment later). */
function fromRecord(r: CatalogRecord): DatasyncEntity {
  return {
    kind: r.kind,
    id: r.id,
    name: r.name,
    version: r.version,
    status: r.status,
    fingerprint: r.fingerprint,
    summary: r.summary as { [k: string]: JsonValue },
    changedBy: r.by,
    changedAt: r.at,
  };
}

export function registerDatasyncRoutes(app: FastifyInstance, d: RouteDeps): void {
  app.get<{ Params: { tenant: string } }>(pattern(apiPaths.datasync(':tenant')), async (req): Promise<DatasyncResponse> => {
    const t = d.tenantOf(sessionOf(req), req.params.tenant);
    queryOf(req, []);
    const e = schema.datasyncEntities;
    const entities = await d.db.db.select().from(e).where(eq(e.tenant, t)).orderBy(e.kind, e.id);
    const page = await listRuns(d.db, t, { workflow: PIPELINE_WORKFLOW, limit: RUNS_SHOWN });
    const ids = page.runs.map((r) => r.runId);
    const s = schema.steps;
    const attempts =
      ids.length === 0
        ? []
        : await d.db.db
            .select()
            .from(s)
            .where(and(eq(s.tenant, t), inArray(s.runId, ids)))
            .orderBy(s.runId, s.step, desc(s.attempt));
    const search = schema.runSearch;
    const keys =
      ids.length === 0
        ? []
        : await d.db.db
            .select()
            .from(search)
            .where(and(eq(search.tenant, t), inArray(search.runId, ids)));
    const runs: PipelineRun[] = page.runs.map((r) => {
      const mine = attempts.filter((a) => a.runId === r.runId);
      const steps: PipelineStepProgress[] = PIPELINE_STEPS.map((step) => {
        const tries = mine.filter((a) => a.step === step);
        const last = tries[0];
        const result = (last?.result ?? null) as { rows?: unknown; bytes?: unknown; durationMs?: unknown } | null;
        const num = (v: unknown) => (typeof v === 'number' ? v : null);
        return {
          step,
          status: !last ? 'pending' : (last.outcome ?? (r.currentStep === step ? 'running' : 'pending')),
          attempts: tries.length,
          rows: num(result?.rows),
          bytes: num(result?.bytes),
          durationMs: num(result?.durationMs),
        };
      });
      const key = (k: string) => keys.find((x) => x.runId === r.runId && x.key === k)?.value ?? null;
      return { ...toRunSummary(r), connection: key('connection'), model: key('model'), destination: key('destination'), steps };
    });
    return { entities: entities.map(toEntity), runs };
  });

  app.post<{ Params: { tenant: string; kind: string; id: string } }>(pattern(apiPaths.datasyncEntity(':tenant', ':kind', ':id')), async (req): Promise<DatasyncEntityResponse> => {
    const s = sessionOf(req);
    const t = d.tenantOf(s, req.params.tenant);
    requireAction(s, 'putEntity', t);
    queryOf(req, []);
    const kind = kindOf(req.params.kind);
    const body = putBody.parse(bodyOf(req));
    try {
      const r = await d.commands().putEntity(t, kind, req.params.id, body.name, body.spec, { by: s.userId });
      req.log.info({ userId: s.userId, tenant: t, action: 'putEntity', kind, id: r.id, version: r.version }, 'console action');
      return { entity: fromRecord(r) };
    } catch (e) {
      throw toHttpError(e, true);
    }
  });

  app.post<{ Params: { tenant: string; kind: string; id: string } }>(pattern(apiPaths.datasyncDelete(':tenant', ':kind', ':id')), async (req): Promise<DatasyncEntityResponse> => {
    const s = sessionOf(req);
    const t = d.tenantOf(s, req.params.tenant);
    requireAction(s, 'deleteEntity', t);
    queryOf(req, []);
    const kind = kindOf(req.params.kind);
    try {
      const r = await d.commands().deleteEntity(t, kind, req.params.id, { by: s.userId });
      req.log.info({ userId: s.userId, tenant: t, action: 'deleteEntity', kind, id: r.id, version: r.version }, 'console action');
      return { entity: fromRecord(r) };
    } catch (e) {
      throw toHttpError(e, true);
    }
  });

  app.post<{ Params: { tenant: string } }>(pattern(apiPaths.datasyncRuns(':tenant')), async (req, reply): Promise<ActionResponse> => {
    const s = sessionOf(req);
    const t = d.tenantOf(s, req.params.tenant);
    requireAction(s, 'runPipeline', t);
    queryOf(req, []);
    const input = parsePipelineInput(bodyOf(req));
    let runId: string;
    try {
      runId = await d.commands().runPipeline(t, input);
    } catch (e) {
      throw toHttpError(e, true);
    }
    req.log.info({ userId: s.userId, tenant: t, action: 'runPipeline', runId }, 'console action');
    reply.code(202);
    return { accepted: true, action: 'runPipeline', tenant: t, runId };
  });

  app.post<{ Params: { tenant: string } }>(pattern(apiPaths.datasyncPreview(':tenant')), async (req): Promise<PreviewResponse> => {
    const s = sessionOf(req);
    const t = d.tenantOf(s, req.params.tenant);
    requireAction(s, 'preview', t);
    queryOf(req, []);
    const body = previewBody.parse(bodyOf(req));
    try {
      // The answer goes to this browser and nowhere else: never logged, never stored.
      return await d.commands().preview(t, body, { by: s.userId });
    } catch (e) {
      throw toHttpError(e, true);
    }
  });
}

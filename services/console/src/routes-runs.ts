/**
 * Runs: the list (filters, keyset pages), one run in detail (timeline, trace, approvals,
 * the plain-words explanation), and the actions on a run. Reads go to the projections;
 * actions are NATS commands, checked first against the run as the projections show it so
 * an action that cannot apply is a 409 now rather than a silent no-op later.
 */
import type { FastifyInstance } from 'fastify';
import { exportRuns, getRun, getRunGovernance, listRuns, listWorkers, parseLimit, parseStatus, parseTime, parseWhere, type ListRunsOptions } from '@capstan/kit';
import { encode, json, MAX_REASON_CHARS, obj, optional, parseCommand, parseRunId, str, UnavailableError, type RunTrace, type TenantId } from '@capstan/schemas';
import { buildHops } from './hops.js';
import { apiPaths, type ActionName, type RunDetailResponse, type RunsPageResponse } from './api-types.js';
import { explainRun } from './explain.js';
import { conflict, notFound, pattern, queryOf, sessionOf, type Query } from './http.js';
import { postAction, type ActionHandler, type RouteDeps } from './routes.js';
import { buildTrace, childrenOf, parentOf, toApproval, toLeaseEntry, toPolicyDecision, toRunSummary, toStepAttempt, toTimelineEvent, toWorkerInfo } from './views.js';

type RunParams = { tenant: string; runId: string };
type StepParams = RunParams & { step: string };

const reason = optional(str({ max: MAX_REASON_CHARS }));
const cancelBody = obj('cancel', { reason });
const retryBody = obj('retry', { reason });
const decisionBody = obj('decision', { reason });
const signalBody = obj('signal', { name: str({ min: 1, max: 64 }), payload: optional(json()) });

const TERMINAL = new Set(['completed', 'failed', 'cancelled']);

/** The run list's query parameters, checked by kit's parsers (the CLI checks its flags with them too). */
function runsFilter(q: Query, now: number): ListRunsOptions {
  const o: { -readonly [K in keyof ListRunsOptions]: ListRunsOptions[K] } = { limit: parseLimit(q.one('limit')) };
  const status = q.one('status');
  if (status !== undefined) o.status = parseStatus(status);
  const workflow = q.one('workflow');
  if (workflow !== undefined) o.workflow = workflow;
  for (const bound of ['since', 'until'] as const) {
    const raw = q.one(bound);
    if (raw !== undefined) o[bound] = parseTime(bound, raw, now);
  }
  const where = q.all('where');
  if (where.length > 0) o.where = parseWhere(where);
  const cursor = q.one('cursor');
  if (cursor !== undefined) o.cursor = cursor;
  return o;
}

export function registerRunRoutes(app: FastifyInstance, d: RouteDeps): void {
  app.get<{ Params: { tenant: string } }>(pattern(apiPaths.runs(':tenant')), async (req): Promise<RunsPageResponse> => {
    const t = d.tenantOf(sessionOf(req), req.params.tenant);
    const q = queryOf(req, ['status', 'workflow', 'since', 'until', 'where', 'limit', 'cursor'], ['where']);
    const page = await listRuns(d.db, t, runsFilter(q, Date.now()));
    return { runs: page.runs.map(toRunSummary), ...(page.nextCursor !== undefined ? { nextCursor: page.nextCursor } : {}) };
  });

  app.get<{ Params: RunParams }>(pattern(apiPaths.run(':tenant', ':runId')), async (req): Promise<RunDetailResponse> => {
    const t = d.tenantOf(sessionOf(req), req.params.tenant);
    queryOf(req, []);
    const runId = parseRunId(req.params.runId);
    const detail = await getRun(d.db, t, runId);
    const governance = await getRunGovernance(d.db, t, runId);
    const now = Date.now();
    const run = toRunSummary(detail.run);
    const steps = detail.steps.map(toStepAttempt);
    const events = detail.events.map(toTimelineEvent);
    const approvals = detail.approvals.map((a) => toApproval(a, detail.run.workflow));
    const active = !TERMINAL.has(run.status);
    // Only an active run's explanation looks at the fleet (is anyone serving its pool?).
    const workers = active ? (await listWorkers(d.db, t)).map((w) => toWorkerInfo(w, now)) : undefined;
    const policyDecisions = governance.decisions.map((a) => toPolicyDecision(a, governance.policyApprovals));
    const leases = governance.leases.map(toLeaseEntry);
    return {
      run,
      parent: parentOf(detail.run),
      continuedFrom: detail.run.continuedFrom,
      continuedAs: detail.run.continuedAs,
      children: childrenOf(detail.steps),
      policyDecisions,
      leases,
      search: detail.search,
      steps,
      trace: buildTrace(run.startedAt, steps),
      hops: buildHops({ events: detail.events, steps, decisions: policyDecisions, leases, approvals, workflow: run.workflow, version: run.version, errorCode: run.errorCode }, now),
      traceId: (detail.run.trace as RunTrace | null)?.id ?? null,
      events,
      approvals,
      explanation: explainRun({ run, steps, approvals, events, ...(workers ? { workers } : {}) }, now),
      actions: { cancel: active, signal: active, retry: run.status === 'failed' },
    };
  });

  // The run as an incident-review file, read from its stream (the truth, not the projections).
  app.get<{ Params: RunParams }>(pattern(apiPaths.runExport(':tenant', ':runId')), async (req, reply) => {
    const t = d.tenantOf(sessionOf(req), req.params.tenant);
    queryOf(req, []);
    const runId = parseRunId(req.params.runId);
    await getRun(d.db, t, runId);
    const access = d.access();
    if (!access) throw new UnavailableError('export needs the run stream: the console is not connected to NATS');
    const { file } = await exportRuns((await access.tenant(t)).jsm, t, { runs: [runId] });
    req.log.info({ tenant: t, runId, by: sessionOf(req).userId, bytes: file.length }, 'run exported');
    return reply
      .header('content-type', 'application/x-ndjson')
      .header('content-disposition', `attachment; filename="capstan-${t}-${runId}.jsonl"`)
      .header('cache-control', 'no-store')
      .send(file);
  });

  const action = <P extends RunParams>(name: ActionName, path: string, handle: ActionHandler<P>) => postAction(app, d, name, path, handle);

  /** The run as the projections have it, refusing actions on a finished one. */
  const activeRun = async (t: TenantId, raw: string, what: string) => {
    const runId = parseRunId(raw);
    const { run, approvals } = await getRun(d.db, t, runId);
    if (TERMINAL.has(run.status)) throw conflict(`cannot ${what} run ${runId}: it is ${run.status}`);
    return { runId, approvals };
  };

  action('cancel', pattern(apiPaths.cancel(':tenant', ':runId')), async (c, t, p, body, by) => {
    const b = cancelBody.parse(body);
    const { runId } = await activeRun(t, p.runId, 'cancel');
    await c.cancel(t, runId, { by, ...(b.reason !== undefined ? { reason: b.reason } : {}) });
    return { runId };
  });

  action('signal', pattern(apiPaths.signal(':tenant', ':runId')), async (c, t, p, body, by) => {
    const b = signalBody.parse(body);
    const { runId } = await activeRun(t, p.runId, 'signal');
    // The command's own schema and size caps, checked here so a bad signal is a 400 now.
    parseCommand('signal', { runId, name: b.name, ...(b.payload !== undefined ? { payload: b.payload } : {}) }, (v) => encode(v).length);
    await c.signal(t, runId, b.name, b.payload, { by });
    return { runId };
  });

  action('retry', pattern(apiPaths.retry(':tenant', ':runId')), async (c, t, p, body, by) => {
    const b = retryBody.parse(body);
    const runId = parseRunId(p.runId);
    const { run } = await getRun(d.db, t, runId);
    if (run.status !== 'failed') throw conflict(`cannot retry run ${runId}: it is ${run.status}, and only a failed run can be retried`);
    await c.retry(t, runId, { by, ...(b.reason !== undefined ? { reason: b.reason } : {}) });
    return { runId };
  });

  for (const decision of ['approve', 'deny'] as const) {
    action<StepParams>(decision, pattern(apiPaths[decision](':tenant', ':runId', ':step')), async (c, t, p, body, by, groups) => {
      const b = decisionBody.parse(body);
      const { runId, approvals } = await activeRun(t, p.runId, decision);
      const a = approvals.find((x) => x.step === p.step);
      if (!a) throw notFound(`run ${runId} has no approval for step ${JSON.stringify(p.step.slice(0, 64))}`);
      if (a.status !== 'waiting') throw conflict(`the approval of step ${a.step} is already ${a.status}`);
      // The console signs as itself and states who its user is and their groups in this tenant.
      const author = { by, groups, ...(b.reason !== undefined ? { reason: b.reason } : {}) };
      if (decision === 'approve') await c.approve(t, runId, a.step, author);
      else await c.deny(t, runId, a.step, author);
      return { runId, step: a.step };
    });
  }
}

/**
 * The audit log: JSON pages, and the same filters as a streamed CSV file.
 */
import { Readable } from 'node:stream';
import type { FastifyInstance } from 'fastify';
import { listAudit, MAX_LIMIT, parseLimit, parseTime, type AuditRow, type ListAuditOptions } from '@capstan/kit';
import { InvalidArgumentError, parseRunId, type TenantId } from '@capstan/schemas';
import { apiPaths, AUDIT_CSV_COLUMNS, AUDIT_CSV_MAX_ROWS, type AuditPageResponse } from './api-types.js';
import { pattern, queryOf, sessionOf, type Query } from './http.js';
import type { RouteDeps } from './routes.js';
import { toAuditEntry } from './views.js';

type AuditFilter = Pick<ListAuditOptions, 'runId' | 'since' | 'kind' | 'actor'>;

/** The filters shared by the JSON pages and the CSV export; `kind` and `actor` are checked by listAudit. */
function auditFilter(q: Query): AuditFilter {
  const run = q.one('run');
  const since = q.one('since');
  const kind = q.one('kind');
  const actor = q.one('actor');
  return {
    ...(run !== undefined ? { runId: parseRunId(run) } : {}),
    ...(since !== undefined ? { since: parseTime('since', since) } : {}),
    ...(kind !== undefined ? { kind } : {}),
    ...(actor !== undefined ? { actor } : {}),
  };
}

function csvLimit(raw: string | undefined): number {
  if (raw === undefined) return AUDIT_CSV_MAX_ROWS;
  const n = /^\d{1,6}$/.test(raw) ? Number(raw) : NaN;
  if (!(n >= 1 && n <= AUDIT_CSV_MAX_ROWS)) throw new InvalidArgumentError(`limit must be an integer from 1 to ${AUDIT_CSV_MAX_ROWS}; got ${JSON.stringify(raw.slice(0, 64))}`);
  return n;
}

/**
 * One CSV field (RFC 4180): quoted when it holds a comma, quote or line break, quotes
 * doubled. Text that a spreadsheet would run as a formula (`=`, `+`, `-`, `@`, tab, CR at
 * the start) gets a leading `'`: audit fields carry text from users and handlers.
 */
export function csvField(v: string | number | null): string {
  if (v === null) return '';
  if (typeof v === 'number') return String(v);
  const safe = /^[=+\-@\t\r]/.test(v) ? `'${v}` : v;
  return /[",\r\n]/.test(safe) ? `"${safe.replace(/"/g, '""')}"` : safe;
}

export function csvRow(a: AuditRow): string {
  const cells: Record<(typeof AUDIT_CSV_COLUMNS)[number], string | number | null> = {
    id: a.id,
    at: a.at.toISOString(),
    run_id: a.runId,
    seq: a.seq,
    kind: a.kind,
    actor: a.actor,
    detail: JSON.stringify(a.detail),
    stream_seq: a.streamSeq,
  };
  return `${AUDIT_CSV_COLUMNS.map((c) => csvField(cells[c])).join(',')}\r\n`;
}

/** Pages of the audit log as CSV lines, header first, read one page ahead of the client. */
async function* csvLines(d: RouteDeps, t: TenantId, filter: AuditFilter, limit: number): AsyncGenerator<string> {
  yield `${AUDIT_CSV_COLUMNS.join(',')}\r\n`;
  let left = limit;
  let cursor: string | undefined;
  while (left > 0) {
    const page = await listAudit(d.db, t, { ...filter, limit: Math.min(MAX_LIMIT, left), ...(cursor !== undefined ? { cursor } : {}) });
    if (page.entries.length > 0) yield page.entries.map(csvRow).join('');
    left -= page.entries.length;
    cursor = page.nextCursor;
    if (cursor === undefined) return;
  }
}

export function registerAuditRoutes(app: FastifyInstance, d: RouteDeps): void {
  app.get<{ Params: { tenant: string } }>(pattern(apiPaths.audit(':tenant')), async (req): Promise<AuditPageResponse> => {
    const t = d.tenantOf(sessionOf(req), req.params.tenant);
    const q = queryOf(req, ['run', 'since', 'kind', 'actor', 'limit', 'cursor']);
    const cursor = q.one('cursor');
    const page = await listAudit(d.db, t, { ...auditFilter(q), limit: parseLimit(q.one('limit')), ...(cursor !== undefined ? { cursor } : {}) });
    return { entries: page.entries.map(toAuditEntry), ...(page.nextCursor !== undefined ? { nextCursor: page.nextCursor } : {}) };
  });

  app.get<{ Params: { tenant: string } }>(pattern(apiPaths.auditCsv(':tenant')), async (req, reply) => {
    const t = d.tenantOf(sessionOf(req), req.params.tenant);
    const q = queryOf(req, ['run', 'since', 'kind', 'actor', 'limit']);
    const filter = auditFilter(q);
    const limit = csvLimit(q.one('limit'));
    // The first page is read before answering, so a failing database is still a clean
    // error status rather than a cut-off 200.
    const lines = csvLines(d, t, filter, limit);
    const header = await lines.next();
    const first = await lines.next();
    async function* all(): AsyncGenerator<string> {
      if (!header.done) yield header.value;
      if (!first.done) yield first.value;
      yield* lines;
    }
    const stream = Readable.from(all());
    stream.on('error', (err) => req.log.error({ err, tenant: t }, 'audit CSV export failed midway'));
    return reply
      .header('content-type', 'text/csv; charset=utf-8')
      .header('content-disposition', `attachment; filename="audit-${t}-${new Date().toISOString().slice(0, 10)}.csv"`)
      .header('cache-control', 'no-store')
      .send(stream);
  });
}

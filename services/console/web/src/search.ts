/**
 * The runs search language, one line an operator can type or paste:
 *
 *   status:failed  workflow:demo.pipeline  since:1h  until:2026-03-01T00:00:00Z  customer=42
 *
 * `key=value` pairs are the workflow's typed search fields (quote values with spaces:
 * region="eu west"). A bare status word (`failed`) is a status, a bare run id opens the run,
 * any other bare word is a workflow name. The URL holds the same filters as query parameters,
 * so a search is a link.
 */
import { RUN_STATUS_VALUES, type RunStatusName } from '../../src/api-types.js';

export interface RunFilters {
  readonly status?: RunStatusName;
  readonly workflow?: string;
  readonly since?: string;
  readonly until?: string;
  readonly where: readonly string[];
}

export type Parsed = { ok: true; filters: RunFilters; runId?: string } | { ok: false; message: string };

const RUN_ID = /^[0-9A-HJKMNP-TV-Z]{26}$/i;

function isStatus(s: string): s is RunStatusName {
  return (RUN_STATUS_VALUES as readonly string[]).includes(s);
}

/** Splits at spaces outside double quotes; quotes are removed. */
export function tokenize(line: string): string[] | string {
  const out: string[] = [];
  let cur = '';
  let quoted = false;
  let any = false;
  for (const ch of line) {
    if (ch === '"') {
      quoted = !quoted;
      any = true;
    } else if (!quoted && /\s/.test(ch)) {
      if (any) out.push(cur);
      cur = '';
      any = false;
    } else {
      cur += ch;
      any = true;
    }
  }
  if (quoted) return 'A quote is not closed.';
  if (any) out.push(cur);
  return out;
}

export function parseSearch(line: string): Parsed {
  const tokens = tokenize(line);
  if (typeof tokens === 'string') return { ok: false, message: tokens };
  let status: RunStatusName | undefined;
  let workflow: string | undefined;
  let since: string | undefined;
  let until: string | undefined;
  let runId: string | undefined;
  const where: string[] = [];
  for (const t of tokens) {
    const eq = t.indexOf('=');
    const colon = t.indexOf(':');
    if (eq > 0 && (colon < 0 || eq < colon)) {
      where.push(t);
      continue;
    }
    if (colon > 0) {
      const key = t.slice(0, colon).toLowerCase();
      const value = t.slice(colon + 1);
      if (!value) return { ok: false, message: `${key}: needs a value (for example ${key}:${EXAMPLE[key] ?? 'x'}).` };
      if (key === 'status' || key === 'is') {
        if (!isStatus(value)) return { ok: false, message: `status must be one of ${RUN_STATUS_VALUES.join(', ')}; "${value}" is not.` };
        status = value;
      } else if (key === 'workflow' || key === 'wf') workflow = value;
      else if (key === 'since') since = value;
      else if (key === 'until') until = value;
      else if (key === 'run' || key === 'id') runId = value;
      else return { ok: false, message: `"${key}:" is not a search field. Use status:, workflow:, since:, until:, or key=value for the workflow's search fields.` };
      continue;
    }
    if (isStatus(t.toLowerCase())) status = t.toLowerCase() as RunStatusName;
    else if (RUN_ID.test(t)) runId = t.toUpperCase();
    else workflow = t;
  }
  const filters: RunFilters = { where, ...(status ? { status } : {}), ...(workflow ? { workflow } : {}), ...(since ? { since } : {}), ...(until ? { until } : {}) };
  return runId ? { ok: true, filters, runId } : { ok: true, filters };
}

const EXAMPLE: Record<string, string> = { status: 'failed', workflow: 'demo.pipeline', since: '1h', until: '30m' };

function quoteIfNeeded(s: string): string {
  return /\s|"/.test(s) ? `"${s.replace(/"/g, '')}"` : s;
}

export function formatSearch(f: RunFilters): string {
  const parts: string[] = [];
  if (f.status) parts.push(`status:${f.status}`);
  if (f.workflow) parts.push(`workflow:${quoteIfNeeded(f.workflow)}`);
  if (f.since) parts.push(`since:${quoteIfNeeded(f.since)}`);
  if (f.until) parts.push(`until:${quoteIfNeeded(f.until)}`);
  for (const w of f.where) {
    const i = w.indexOf('=');
    parts.push(`${w.slice(0, i)}=${quoteIfNeeded(w.slice(i + 1))}`);
  }
  return parts.join(' ');
}

export function filtersFromQuery(q: URLSearchParams): RunFilters {
  const status = q.get('status') ?? undefined;
  const workflow = q.get('workflow') || undefined;
  const since = q.get('since') || undefined;
  const until = q.get('until') || undefined;
  return {
    where: q.getAll('where').filter(Boolean),
    ...(status && isStatus(status) ? { status } : {}),
    ...(workflow ? { workflow } : {}),
    ...(since ? { since } : {}),
    ...(until ? { until } : {}),
  };
}

export function filtersToQuery(f: RunFilters, extra: Record<string, string | undefined> = {}): string {
  const u = new URLSearchParams();
  if (f.status) u.set('status', f.status);
  if (f.workflow) u.set('workflow', f.workflow);
  if (f.since) u.set('since', f.since);
  if (f.until) u.set('until', f.until);
  for (const w of f.where) u.append('where', w);
  for (const [k, v] of Object.entries(extra)) if (v) u.set(k, v);
  const s = u.toString();
  return s ? `?${s}` : '';
}

export function hasFilters(f: RunFilters): boolean {
  return Boolean(f.status || f.workflow || f.since || f.until || f.where.length);
}

const DURATION = /^(\d{1,9})(s|m|h|d|w)$/;
const UNIT = { s: 1_000, m: 60_000, h: 3_600_000, d: 86_400_000, w: 604_800_000 } as const;

function instant(raw: string, now: number): number | undefined {
  const d = DURATION.exec(raw);
  if (d) return now - Number(d[1]) * UNIT[d[2] as keyof typeof UNIT];
  const t = Date.parse(raw);
  return Number.isNaN(t) ? undefined : t;
}

/**
 * Whether a run pushed by the live stream belongs in the list as filtered. Search fields are
 * not in a run summary, so with `where` filters the answer is "unknown" (undefined).
 */
export function matchesFilters(run: { status: string; workflow: string; startedAt: string }, f: RunFilters, now: number): boolean | undefined {
  if (f.status && run.status !== f.status) return false;
  if (f.workflow && run.workflow !== f.workflow) return false;
  const started = Date.parse(run.startedAt);
  if (f.since) {
    const t = instant(f.since, now);
    if (t !== undefined && started < t) return false;
  }
  if (f.until) {
    const t = instant(f.until, now);
    if (t !== undefined && started >= t) return false;
  }
  return f.where.length > 0 ? undefined : true;
}

/**
 * The runs list: one search line (typed fields), quick filters, keyset pages, and live
 * updates: rows change in place as the stream reports them; new runs that match the
 * filters appear at the top of the first page.
 */
import { useEffect, useMemo, useState, type FormEvent, type ReactNode } from 'react';
import { apiPaths, RUN_STATUS_VALUES, type RunStatusName, type RunSummary, type RunsPageResponse } from '../../../src/api-types.js';
import { qs } from '../api.js';
import { Ago, Empty, ErrorAlert, Link, Loading, StatusBadge, useApp } from '../components.js';
import { duration, shortId } from '../format.js';
import { useGet, useNow, useRunStream, useSystem } from '../hooks.js';
import { navigate, useLocation, useTitle } from '../router.js';
import { filtersFromQuery, filtersToQuery, formatSearch, hasFilters, matchesFilters, parseSearch, type RunFilters } from '../search.js';

const TIME_RANGES = [
  { value: '', label: 'Any time' },
  { value: '15m', label: 'Last 15 minutes' },
  { value: '1h', label: 'Last hour' },
  { value: '24h', label: 'Last 24 hours' },
  { value: '7d', label: 'Last 7 days' },
  { value: '30d', label: 'Last 30 days' },
];

const PAGE_SIZES = [25, 50, 100, 200];

export function RunsView() {
  useTitle('Runs');
  const { tenant } = useApp();
  const loc = useLocation();
  const search = loc.query.toString();
  const filters = useMemo(() => filtersFromQuery(new URLSearchParams(search)), [search]);
  const cursor = loc.query.get('cursor') ?? undefined;
  const limit = PAGE_SIZES.includes(Number(loc.query.get('limit'))) ? Number(loc.query.get('limit')) : 50;
  const base = `/t/${encodeURIComponent(tenant)}/runs`;

  const path = `${apiPaths.runs(tenant)}${qs({ status: filters.status, workflow: filters.workflow, since: filters.since, until: filters.until, where: filters.where, limit, cursor })}`;
  const page = useGet<RunsPageResponse>(path);

  // Cursors of the pages before this one, to go back; reset when the filters change.
  const filterKey = filtersToQuery(filters, { limit: String(limit) });
  const [back, setBack] = useState<{ key: string; stack: (string | undefined)[] }>({ key: filterKey, stack: [] });
  const stack = back.key === filterKey ? back.stack : [];

  const go = (f: RunFilters, extra: { cursor?: string; limit?: number } = {}) => {
    const l = extra.limit ?? limit;
    navigate(`${base}${filtersToQuery(f, { ...(l !== 50 ? { limit: String(l) } : {}), cursor: extra.cursor })}`);
  };

  // Live: rows as the stream last reported them, plus runs that started since the page loaded.
  const [live, setLive] = useState<{ path: string; changed: Map<string, RunSummary>; added: RunSummary[]; unknown: number }>({ path, changed: new Map(), added: [], unknown: 0 });
  const [flash, setFlash] = useState<Set<string>>(new Set());
  const state = live.path === path ? live : { path, changed: new Map<string, RunSummary>(), added: [], unknown: 0 };
  const now = useNow(5000);

  useRunStream(tenant, (runs) => {
    const loaded = page.data?.runs;
    if (!loaded) return;
    const shown = new Set([...loaded.map((r) => r.runId), ...state.added.map((r) => r.runId)]);
    const changed = new Map(state.changed);
    let added = [...state.added];
    let unknown = state.unknown;
    const touched = new Set<string>();
    for (const r of runs) {
      if (shown.has(r.runId)) {
        changed.set(r.runId, r);
        added = added.map((a) => (a.runId === r.runId ? r : a));
        touched.add(r.runId);
        continue;
      }
      if (cursor) continue;
      const m = matchesFilters(r, filters, Date.now());
      if (m === true) {
        added = [r, ...added];
        shown.add(r.runId);
        touched.add(r.runId);
      } else if (m === undefined) unknown++;
    }
    added.sort((a, b) => (a.startedAt < b.startedAt ? 1 : a.startedAt > b.startedAt ? -1 : 0));
    setLive({ path, changed, added, unknown });
    if (touched.size > 0) setFlash(touched);
  });

  useEffect(() => {
    if (flash.size === 0) return undefined;
    const t = setTimeout(() => setFlash(new Set()), 1500);
    return () => clearTimeout(t);
  }, [flash]);

  const rows = useMemo(() => {
    const loaded = (page.data?.runs ?? []).map((r) => state.changed.get(r.runId) ?? r);
    const ids = new Set(loaded.map((r) => r.runId));
    return [...state.added.filter((r) => !ids.has(r.runId)), ...loaded];
  }, [page.data, state.changed, state.added]);

  return (
    <>
      <div className="page-head">
        <div>
          <h1>Runs</h1>
          <div className="sub">Every run of {tenant}, newest first. Changes appear as they happen.</div>
        </div>
        <div className="actions">
          <ProjectionLag tenant={tenant} />
          <Link to={`/t/${encodeURIComponent(tenant)}/start`} className="btn btn-primary" data-testid="run-now">
            Run now…
          </Link>
        </div>
      </div>
      <div className="card">
        <SearchBar filters={filters} onSearch={(f) => go(f)} onOpenRun={(id) => navigate(`${base}/${encodeURIComponent(id)}`)}>
          <div className="field">
            <label htmlFor="f-status">Status</label>
            <select
              id="f-status"
              value={filters.status ?? ''}
              onChange={(e) => {
                const { status: _s, ...rest } = filters;
                go(e.target.value ? { ...rest, status: e.target.value as RunStatusName } : rest);
              }}
              data-testid="filter-status"
            >
              <option value="">All statuses</option>
              {RUN_STATUS_VALUES.map((s) => (
                <option key={s} value={s}>
                  {s}
                </option>
              ))}
            </select>
          </div>
          <div className="field">
            <label htmlFor="f-since">Started</label>
            <select
              id="f-since"
              value={TIME_RANGES.some((t) => t.value === (filters.since ?? '')) ? (filters.since ?? '') : 'custom'}
              onChange={(e) => {
                const { since: _s, ...rest } = filters;
                go(e.target.value ? { ...rest, since: e.target.value } : rest);
              }}
              data-testid="filter-since"
            >
              {TIME_RANGES.map((t) => (
                <option key={t.value} value={t.value}>
                  {t.label}
                </option>
              ))}
              {!TIME_RANGES.some((t) => t.value === (filters.since ?? '')) ? <option value="custom">Since {filters.since}</option> : null}
            </select>
          </div>
          {hasFilters(filters) ? (
            <button type="button" className="btn btn-ghost" onClick={() => go({ where: [] })} data-testid="clear-filters">
              Clear filters
            </button>
          ) : null}
        </SearchBar>
        <Chips filters={filters} onChange={(f) => go(f)} />
        {state.unknown > 0 && !cursor ? (
          <div className="banner-new">
            <button type="button" className="btn btn-sm" onClick={page.reload}>
              {state.unknown === 1 ? '1 run changed' : `${state.unknown} runs changed`} that may match: refresh
            </button>
          </div>
        ) : null}
        {page.error ? (
          <div className="card-body">
            <ErrorAlert error={page.error} title="The runs could not be listed" onRetry={page.reload} />
          </div>
        ) : null}
        {page.loading && !page.data ? <Loading what="runs" /> : null}
        {page.data && rows.length === 0 ? (
          hasFilters(filters) ? (
            <Empty title="No runs match these filters." testid="runs-empty">
              <div>
                Try a wider time range, or{' '}
                <a
                  href={base}
                  onClick={(e) => {
                    e.preventDefault();
                    go({ where: [] });
                  }}
                >
                  clear the filters
                </a>
                .
              </div>
            </Empty>
          ) : (
            <Empty title="No runs yet." testid="runs-empty">
              <div>
                Submit one with <code>capstan submit &lt;workflow&gt; --tenant {tenant}</code>; it shows up here at once.
              </div>
            </Empty>
          )
        ) : null}
        {rows.length > 0 ? <RunsTable rows={rows} base={base} flash={flash} now={now} /> : null}
        {page.data && rows.length > 0 ? (
          <div className="pager">
            <div className="actions">
              {cursor ? (
                <button type="button" className="btn btn-sm" onClick={() => go(filters)} data-testid="page-first">
                  First page
                </button>
              ) : null}
              {stack.length > 0 ? (
                <button
                  type="button"
                  className="btn btn-sm"
                  onClick={() => {
                    const prev = stack[stack.length - 1];
                    setBack({ key: filterKey, stack: stack.slice(0, -1) });
                    go(filters, prev ? { cursor: prev } : {});
                  }}
                  data-testid="page-prev"
                >
                  ← Newer
                </button>
              ) : null}
            </div>
            <div className="actions hint">
              <span>{rows.length} runs on this page</span>
              <label htmlFor="f-limit" className="hint" style={{ fontWeight: 400 }}>
                · per page
              </label>
              <select id="f-limit" value={limit} onChange={(e) => go(filters, { limit: Number(e.target.value) })} style={{ height: 26 }}>
                {PAGE_SIZES.map((n) => (
                  <option key={n} value={n}>
                    {n}
                  </option>
                ))}
              </select>
            </div>
            {page.data.nextCursor ? (
              <button
                type="button"
                className="btn btn-sm"
                onClick={() => {
                  setBack({ key: filterKey, stack: [...stack, cursor] });
                  go(filters, { cursor: page.data?.nextCursor as string });
                }}
                data-testid="page-next"
              >
                Older →
              </button>
            ) : (
              <span />
            )}
          </div>
        ) : null}
      </div>
    </>
  );
}

/** How far the projections (what this console reads) are behind the run streams. */
function ProjectionLag({ tenant }: { tenant: string }) {
  const sys = useSystem(tenant);
  const lag = sys.data?.projectionLag;
  if (lag === undefined || lag === null) return null;
  return (
    <span className="lag" data-behind={lag >= 100} data-testid="projection-lag" title={`The projections have applied the run streams up to sequence ${sys.data?.checkpoint ?? 0}.`}>
      {lag === 0 ? 'Projections up to date' : `Projections ${lag} ${lag === 1 ? 'event' : 'events'} behind the run streams`}
    </span>
  );
}

function SearchBar({
  filters,
  onSearch,
  onOpenRun,
  children,
}: {
  filters: RunFilters;
  onSearch: (f: RunFilters) => void;
  onOpenRun: (runId: string) => void;
  children: ReactNode;
}) {
  const canonical = formatSearch(filters);
  const [text, setText] = useState(canonical);
  const [problem, setProblem] = useState<string | null>(null);
  const [shown, setShown] = useState(canonical);
  if (shown !== canonical) {
    // The filters changed elsewhere (a select, a chip, the back button): show them.
    setShown(canonical);
    setText(canonical);
    setProblem(null);
  }
  const submit = (e: FormEvent) => {
    e.preventDefault();
    const p = parseSearch(text);
    if (!p.ok) {
      setProblem(p.message);
      return;
    }
    setProblem(null);
    if (p.runId) onOpenRun(p.runId);
    else onSearch(p.filters);
  };
  return (
    <form className="filters" role="search" onSubmit={submit}>
      <div className="field search-box">
        <label htmlFor="runs-search">Search</label>
        <div style={{ position: 'relative' }}>
          <input
            id="runs-search"
            type="text"
            data-search
            data-testid="runs-search"
            value={text}
            onChange={(e) => setText(e.target.value)}
            placeholder="status:failed workflow:demo.pipeline since:1h customer=42"
            aria-describedby="runs-search-help"
            aria-invalid={problem ? true : undefined}
            autoComplete="off"
            spellCheck={false}
          />
          <kbd aria-hidden="true">/</kbd>
        </div>
      </div>
      <button type="submit" className="btn btn-primary" data-testid="runs-search-submit">
        Search
      </button>
      {children}
      <span id="runs-search-help" className={problem ? 'hint err-text search-help' : 'hint search-help'} data-testid={problem ? 'search-problem' : undefined}>
        {problem ?? (
          <>
            Fields: <code>status:</code> <code>workflow:</code> <code>since:1h</code> <code>until:</code> and the workflow&apos;s search fields as <code>key=value</code>. A run id
            opens the run.
          </>
        )}
      </span>
    </form>
  );
}

function Chips({ filters, onChange }: { filters: RunFilters; onChange: (f: RunFilters) => void }) {
  if (!hasFilters(filters)) return null;
  const chips: { label: string; drop: () => RunFilters }[] = [];
  const { status, workflow, since, until, where } = filters;
  if (status) chips.push({ label: `status: ${status}`, drop: () => ({ ...filters, status: undefined }) });
  if (workflow) chips.push({ label: `workflow: ${workflow}`, drop: () => ({ ...filters, workflow: undefined }) });
  if (since) chips.push({ label: `since ${since}`, drop: () => ({ ...filters, since: undefined }) });
  if (until) chips.push({ label: `until ${until}`, drop: () => ({ ...filters, until: undefined }) });
  for (const w of where) chips.push({ label: w, drop: () => ({ ...filters, where: where.filter((x) => x !== w) }) });
  return (
    <div className="chips" aria-label="Active filters" data-testid="filter-chips">
      <span className="hint">Filtered by</span>
      {chips.map((c) => (
        <span key={c.label} className="chip">
          {c.label}
          <button type="button" aria-label={`Remove filter ${c.label}`} onClick={() => onChange(clean(c.drop()))}>
            ×
          </button>
        </span>
      ))}
    </div>
  );
}

function clean(f: RunFilters): RunFilters {
  return Object.fromEntries(Object.entries(f).filter(([, v]) => v !== undefined)) as unknown as RunFilters;
}

function RunsTable({ rows, base, flash, now }: { rows: readonly RunSummary[]; base: string; flash: ReadonlySet<string>; now: number }) {
  return (
    <div className="table-wrap">
      <table className="data" data-testid="runs-table">
        <thead>
          <tr>
            <th scope="col">Run</th>
            <th scope="col">Workflow</th>
            <th scope="col">Status</th>
            <th scope="col">Step</th>
            <th scope="col" className="num">
              Attempts
            </th>
            <th scope="col">Started</th>
            <th scope="col" className="num">
              Took
            </th>
            <th scope="col">Error</th>
          </tr>
        </thead>
        <tbody>
          {rows.map((r) => {
            const href = `${base}/${encodeURIComponent(r.runId)}`;
            const took = (r.endedAt ? Date.parse(r.endedAt) : now) - Date.parse(r.startedAt);
            return (
              <tr
                key={r.runId}
                className={`row-link${flash.has(r.runId) ? ' flash' : ''}`}
                data-testid="run-row"
                data-run-id={r.runId}
                data-status={r.status}
                onClick={(e) => {
                  if ((e.target as HTMLElement).closest('a,button')) return;
                  navigate(href);
                }}
              >
                <td className="nowrap">
                  <Link to={href} title={r.runId} data-testid="run-link" data-row-link="">
                    <span className="mono">{shortId(r.runId)}</span>
                  </Link>
                </td>
                <td>
                  {r.workflow}
                  <span className="muted">@{r.version}</span>
                </td>
                <td>
                  <StatusBadge status={r.status} />
                </td>
                <td className={r.status === 'completed' ? 'muted' : undefined}>{r.currentStep ?? <span className="muted">–</span>}</td>
                <td className="num">{r.attempts}</td>
                <td className="nowrap">
                  <Ago at={r.startedAt} />
                </td>
                <td className="num nowrap">
                  {r.endedAt ? (
                    duration(took)
                  ) : (
                    <span className="muted" title="still going">
                      {duration(took)}
                    </span>
                  )}
                </td>
                <td>
                  {r.errorCode ? (
                    <span className="err-text truncate" title={`${r.errorCode}: ${r.errorMessage ?? ''}`}>
                      <code>{r.errorCode}</code> {r.errorMessage}
                    </span>
                  ) : (
                    <span className="muted">–</span>
                  )}
                </td>
              </tr>
            );
          })}
        </tbody>
      </table>
    </div>
  );
}

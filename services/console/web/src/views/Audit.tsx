/** The audit log: who did what to which run, newest first; filters by run, time, kind and actor; CSV export. */
import { useState, type FormEvent } from 'react';
import { apiPaths, type AuditEntry, type AuditPageResponse, type JsonValue } from '../../../src/api-types.js';
import { qs } from '../api.js';
import { Ago, Empty, ErrorAlert, Link, Loading, useApp, TableHead } from '../components.js';
import { shortId, when } from '../format.js';
import { useGet, useRunStream, useThrottled } from '../hooks.js';
import { navigate, useLocation, useTitle } from '../router.js';

const TIME_RANGES = [
  { value: '', label: 'Any time' },
  { value: '1h', label: 'Last hour' },
  { value: '24h', label: 'Last 24 hours' },
  { value: '7d', label: 'Last 7 days' },
  { value: '30d', label: 'Last 30 days' },
];

function detailText(d: JsonValue): string {
  if (d === null) return '';
  if (typeof d !== 'object') return String(d);
  if (Array.isArray(d)) return JSON.stringify(d);
  return Object.entries(d)
    .filter(([, v]) => v !== null && v !== undefined && v !== '')
    .map(([k, v]) => `${k}=${typeof v === 'string' ? v : JSON.stringify(v)}`)
    .join('  ');
}

/** What an entry is about: a run (linked), else a worker named in its detail. */
function Subject({ entry, base }: { entry: AuditEntry; base: string }) {
  if (entry.runId) {
    return (
      <>
        <Link to={`${base}/runs/${encodeURIComponent(entry.runId)}`} title={entry.runId} data-row-link="">
          <span className="mono">{shortId(entry.runId)}</span>
        </Link>{' '}
        <span className="muted">#{entry.seq}</span>
      </>
    );
  }
  const d = entry.detail;
  const worker = typeof d === 'object' && d !== null && !Array.isArray(d) && typeof d['worker'] === 'string' ? d['worker'] : null;
  if (worker) {
    return (
      <Link to={`${base}/workers`} title="The worker fleet">
        worker <span className="mono">{worker}</span>
      </Link>
    );
  }
  return <span className="muted">–</span>;
}

export function AuditView() {
  useTitle('Audit log');
  const { tenant } = useApp();
  const loc = useLocation();
  const run = loc.query.get('run') ?? '';
  const since = loc.query.get('since') ?? '';
  const kind = loc.query.get('kind') ?? '';
  const actor = loc.query.get('actor') ?? '';
  const cursor = loc.query.get('cursor') ?? undefined;
  const base = `/t/${encodeURIComponent(tenant)}`;
  const list = useGet<AuditPageResponse>(
    `${apiPaths.audit(tenant)}${qs({ run: run || undefined, since: since || undefined, kind: kind || undefined, actor: actor || undefined, cursor, limit: 100 })}`,
  );
  const refresh = useThrottled(list.reload, 1000);
  // New entries come from run events; on the first page, follow them.
  useRunStream(tenant, () => {
    if (!cursor) refresh();
  });
  const [runText, setRunText] = useState(run);
  const [kindText, setKindText] = useState(kind);
  const [actorText, setActorText] = useState(actor);
  // The fields follow the address when it changes under them (back, "only this run").
  const [shown, setShown] = useState({ run, kind, actor });
  if (shown.run !== run || shown.kind !== kind || shown.actor !== actor) {
    setShown({ run, kind, actor });
    setRunText(run);
    setKindText(kind);
    setActorText(actor);
  }

  type Filters = { run?: string; since?: string; kind?: string; actor?: string; cursor?: string };
  const current: Filters = { run, since, kind, actor };
  const go = (p: Filters) =>
    navigate(`${base}/audit${qs({ run: p.run || undefined, since: p.since || undefined, kind: p.kind || undefined, actor: p.actor || undefined, cursor: p.cursor })}`);
  const submit = (e: FormEvent) => {
    e.preventDefault();
    go({ run: runText.trim(), since, kind: kindText.trim(), actor: actorText.trim() });
  };
  const filtered = Boolean(run || since || kind || actor);
  const csv = `${apiPaths.auditCsv(tenant)}${qs({ run: run || undefined, since: since || undefined, kind: kind || undefined, actor: actor || undefined })}`;
  const entries = list.data?.entries ?? [];

  return (
    <>
      <div className="page-head">
        <div>
          <h1>Audit log</h1>
          <div className="sub">Every signal, cancel, approval and admission change, with who made it. Append-only.</div>
        </div>
        <a className="btn" href={csv} download={`audit-${tenant}.csv`} data-testid="audit-csv">
          Export CSV
        </a>
      </div>
      <div className="card">
        <form className="filters" role="search" onSubmit={submit}>
          <div className="field search-box" style={{ flex: '0 1 360px' }}>
            <label htmlFor="audit-run">Run id</label>
            <div style={{ position: 'relative' }}>
              <input
                id="audit-run"
                type="text"
                data-search
                value={runText}
                onChange={(e) => setRunText(e.target.value)}
                placeholder="01J…"
                autoComplete="off"
                spellCheck={false}
                data-testid="audit-run"
              />
              <kbd aria-hidden="true">/</kbd>
            </div>
          </div>
          <div className="field">
            <label htmlFor="audit-since">Time</label>
            <select id="audit-since" value={since} onChange={(e) => go({ ...current, since: e.target.value })} data-testid="audit-since">
              {TIME_RANGES.map((t) => (
                <option key={t.value} value={t.value}>
                  {t.label}
                </option>
              ))}
              {!TIME_RANGES.some((t) => t.value === since) ? <option value={since}>Since {since}</option> : null}
            </select>
          </div>
          <div className="field">
            <label htmlFor="audit-kind">Kind</label>
            <input
              id="audit-kind"
              type="text"
              value={kindText}
              onChange={(e) => setKindText(e.target.value)}
              placeholder="lease.issued"
              autoComplete="off"
              spellCheck={false}
              list="audit-kinds"
              data-testid="audit-kind"
            />
            <datalist id="audit-kinds">
              {[...new Set(entries.map((x) => x.kind))].sort().map((k) => (
                <option key={k} value={k} />
              ))}
            </datalist>
          </div>
          <div className="field">
            <label htmlFor="audit-actor">Actor</label>
            <input
              id="audit-actor"
              type="text"
              value={actorText}
              onChange={(e) => setActorText(e.target.value)}
              placeholder="a user id, policy"
              autoComplete="off"
              spellCheck={false}
              data-testid="audit-actor"
            />
          </div>
          <button type="submit" className="btn btn-primary" data-testid="audit-filter">
            Filter
          </button>
          {filtered ? (
            <button type="button" className="btn btn-ghost" onClick={() => go({})}>
              Clear filters
            </button>
          ) : null}
        </form>
        {list.error ? (
          <div className="card-body">
            <ErrorAlert error={list.error} title="The audit log could not be read" onRetry={list.reload} />
          </div>
        ) : null}
        {list.loading && !list.data ? <Loading what="the audit log" /> : null}
        {list.data && entries.length === 0 ? (
          <Empty title={filtered ? 'No entries match these filters.' : 'The audit log is empty.'} testid="audit-empty">
            <div>Signals, cancels, approvals and worker admission changes are recorded here.</div>
          </Empty>
        ) : null}
        {entries.length > 0 ? (
          <div className="table-wrap">
            <table className="data" data-testid="audit-table">
              <TableHead columns={['When', 'Kind', 'Actor', 'About', 'Detail']} />
              <tbody>
                {entries.map((e) => (
                  <tr key={e.id} data-testid="audit-row" data-kind={e.kind}>
                    <td className="nowrap" title={e.at}>
                      {when(e.at)}
                      <span className="sub">
                        <Ago at={e.at} />
                      </span>
                    </td>
                    <td className="mono">{e.kind}</td>
                    <td>{e.actor ?? <span className="muted">system</span>}</td>
                    <td className="nowrap">
                      <Subject entry={e} base={base} />
                      {e.runId && run !== e.runId ? (
                        <button type="button" className="btn-link" onClick={() => go({ ...current, run: e.runId })} title="Show only this run">
                          only this run
                        </button>
                      ) : null}
                    </td>
                    <td>
                      <span className="mono truncate" style={{ maxWidth: '60ch' }} title={JSON.stringify(e.detail)}>
                        {detailText(e.detail)}
                      </span>
                    </td>
                  </tr>
                ))}
              </tbody>
            </table>
          </div>
        ) : null}
        {list.data && (cursor || list.data.nextCursor) ? (
          <div className="pager">
            {cursor ? (
              <button type="button" className="btn btn-sm" onClick={() => go(current)}>
                Newest
              </button>
            ) : (
              <span />
            )}
            {list.data.nextCursor ? (
              <button type="button" className="btn btn-sm" onClick={() => go({ ...current, cursor: list.data?.nextCursor })} data-testid="audit-next">
                Older →
              </button>
            ) : null}
          </div>
        ) : null}
      </div>
    </>
  );
}

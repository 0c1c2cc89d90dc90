/**
 * Data sync: pipeline runs with the progress of their five steps, starting a run, the
 * tenant's catalog (connections, models, destinations: identifiers and safe facts, their
 * specs stay in the data plane), defining one, and the bounded preview of a connection.
 */
import { useEffect, useState, type FormEvent } from 'react';
import {
  apiPaths,
  DATASYNC_KINDS,
  roleAllows,
  type ActionResponse,
  type DatasyncEntity,
  type DatasyncEntityResponse,
  type DatasyncKind,
  type DatasyncResponse,
  type PipelineRun,
  type PreviewResponse,
} from '../../../src/api-types.js';
import { describeError, post } from '../api.js';
import { Ago, Empty, ErrorAlert, Link, Loading, RoleNote, StatusBadge, TableHead, useApp, useConfirm } from '../components.js';
import { duration } from '../format.js';
import { useGet, useRunStream, useThrottled } from '../hooks.js';
import { useTitle } from '../router.js';

const STEP_LABEL: Record<string, string> = { retrieve: 'Retrieve', refresh: 'Refresh', build: 'Build model', resolve: 'Resolve associations', load: 'Load' };

const SPEC_EXAMPLES: Record<DatasyncKind, string> = {
  connection: JSON.stringify(
    {
      type: 'postgres',
      host: 'db.internal',
      port: 5432,
      database: 'shop',
      tls: { mode: 'verify-full' },
      auth: { type: 'username_password', username: 'reader', passwordKey: 'SHOP_PG_PASSWORD' },
    },
    null,
    2,
  ),
  model: JSON.stringify(
    {
      entities: [
        {
          name: 'customer',
          source: { table: 'customers' },
          key: ['id'],
          cursor: 'updated_at',
          fields: [
            { name: 'id', column: 'id' },
            { name: 'name', column: 'name' },
          ],
        },
      ],
      associations: [],
    },
    null,
    2,
  ),
  destination: JSON.stringify({ type: 'files', path: 'exports/shop', format: 'jsonl' }, null, 2),
};

function facts(e: DatasyncEntity): string {
  const s = e.summary;
  const parts: string[] = [];
  for (const k of ['type', 'auth', 'tls', 'format'] as const) if (typeof s[k] === 'string') parts.push(k === 'tls' ? `tls ${String(s[k])}` : String(s[k]));
  if (typeof s['connection'] === 'string') parts.push(`on ${s['connection']}`);
  if (Array.isArray(s['entities'])) parts.push(`entities: ${s['entities'].join(', ')}`);
  if (typeof s['associations'] === 'number') parts.push(`${s['associations']} associations`);
  return parts.join(' · ');
}

export function DatasyncView() {
  useTitle('Data sync');
  const { tenant, session } = useApp();
  const data = useGet<DatasyncResponse>(apiPaths.datasync(tenant));
  const refresh = useThrottled(data.reload, 1000);
  // Step progress comes with run changes: follow the runs stream, and poll while a run is running.
  useRunStream(tenant, refresh);
  const running = data.data?.runs.some((r) => r.status === 'running' || r.status === 'pending') ?? false;
  useEffect(() => {
    if (!running) return;
    const t = setInterval(data.reload, 2000);
    return () => clearInterval(t);
  }, [running, data.reload]);

  const active = (data.data?.entities ?? []).filter((e) => e.status === 'active');
  return (
    <>
      <div className="page-head">
        <div>
          <h1>Data sync</h1>
          <div className="sub">
            Pipelines move a connection's tables through a model into a destination: Retrieve → Refresh → Build model → Resolve associations → Load. Runs carry identifiers only;
            specs and credentials stay in the data plane.
          </div>
        </div>
      </div>
      {data.error ? <ErrorAlert error={data.error} title="Data sync could not be read" onRetry={data.reload} /> : null}
      {data.loading && !data.data ? <Loading what="pipelines" /> : null}
      {data.data ? (
        <>
          <div className="section">
            <RunsCard runs={data.data.runs} />
          </div>
          <div className="section">
            <RunForm entities={active} allowed={roleAllows(session.role, 'runPipeline')} onDone={data.reload} />
          </div>
          <div className="section">
            <PreviewCard connections={active.filter((e) => e.kind === 'connection')} allowed={roleAllows(session.role, 'preview')} />
          </div>
          <CatalogCard entities={data.data.entities} allowed={roleAllows(session.role, 'putEntity')} onChange={data.reload} />
        </>
      ) : null}
    </>
  );
}

function RunsCard({ runs }: { runs: readonly PipelineRun[] }) {
  const { tenant } = useApp();
  return (
    <div className="card" data-testid="pipeline-runs">
      <div className="card-head">
        <strong>Pipeline runs</strong>
        <span className="hint">latest {runs.length}</span>
      </div>
      {runs.length === 0 ? (
        <Empty title="No pipeline has run yet." testid="pipeline-runs-empty">
          <div>
            Start one below, or with <code>capstan datasync run</code>.
          </div>
        </Empty>
      ) : (
        <div className="table-wrap">
          <table className="data">
            <TableHead columns={['Run', 'Pipeline', 'Status', 'Steps', 'Started']} />
            <tbody>
              {runs.map((r) => (
                <tr key={r.runId} data-testid="pipeline-run" data-run-id={r.runId} data-status={r.status}>
                  <td className="mono">
                    <Link to={`/t/${encodeURIComponent(tenant)}/runs/${encodeURIComponent(r.runId)}`}>{r.runId}</Link>
                  </td>
                  <td>
                    {r.connection ?? '?'} → {r.model ?? '?'} → {r.destination ?? '?'}
                  </td>
                  <td>
                    <StatusBadge status={r.status} />
                    {r.errorCode ? <div className="err-text">{r.errorCode}</div> : null}
                  </td>
                  <td>
                    <span className="kv" data-testid="pipeline-steps">
                      {r.steps.map((s) => (
                        <span
                          key={s.step}
                          title={`${STEP_LABEL[s.step] ?? s.step}: ${s.status}${s.attempts > 1 ? `, ${s.attempts} attempts` : ''}`}
                          data-step={s.step}
                          data-step-status={s.status}
                        >
                          <StatusBadge
                            status={s.status === 'completed' ? (STEP_LABEL[s.step] ?? s.step) : `${STEP_LABEL[s.step] ?? s.step}: ${s.status}`}
                            tone={s.status === 'pending' && r.currentStep === s.step ? 'running' : s.status}
                            testid="pipeline-step"
                          />
                          {s.rows !== null ? (
                            <span className="muted">
                              {' '}
                              {s.rows.toLocaleString()} rows{s.durationMs !== null ? `, ${duration(s.durationMs)}` : ''}
                            </span>
                          ) : null}
                        </span>
                      ))}
                    </span>
                  </td>
                  <td className="nowrap">
                    <Ago at={r.startedAt} />
                  </td>
                </tr>
              ))}
            </tbody>
          </table>
        </div>
      )}
    </div>
  );
}

function RunForm({ entities, allowed, onDone }: { entities: readonly DatasyncEntity[]; allowed: boolean; onDone: () => void }) {
  const { tenant, toast } = useApp();
  const of = (k: DatasyncKind) => entities.filter((e) => e.kind === k);
  const [pick, setPick] = useState<Record<DatasyncKind, string>>({ connection: '', model: '', destination: '' });
  const [busy, setBusy] = useState(false);
  const value = (k: DatasyncKind) => pick[k] || of(k)[0]?.id || '';
  const submit = async (ev: FormEvent) => {
    ev.preventDefault();
    setBusy(true);
    try {
      const r = await post<ActionResponse>(apiPaths.datasyncRuns(tenant), { connection: value('connection'), model: value('model'), destination: value('destination') });
      toast(`Pipeline run ${r.runId ?? ''} started.`);
      for (const ms of [300, 1000, 2000]) setTimeout(onDone, ms);
    } catch (e) {
      const { code, message } = describeError(e);
      toast(`${message} (${code})`, 'error');
    } finally {
      setBusy(false);
    }
  };
  return (
    <form className="card" onSubmit={(e) => void submit(e)} data-testid="pipeline-run-form">
      <div className="card-head">
        <strong>Run a pipeline</strong>
      </div>
      <div className="card-body filters" style={{ borderBottom: 'none' }}>
        {(['connection', 'model', 'destination'] as const).map((k) => (
          <div className="field" key={k}>
            <label htmlFor={`run-${k}`}>{k[0]?.toUpperCase() + k.slice(1)}</label>
            <select id={`run-${k}`} value={value(k)} onChange={(e) => setPick({ ...pick, [k]: e.target.value })} disabled={!allowed} data-testid={`run-${k}`}>
              {of(k).map((e) => (
                <option key={e.id} value={e.id}>
                  {e.name === e.id ? e.id : `${e.name} (${e.id})`}
                </option>
              ))}
            </select>
          </div>
        ))}
        <button
          type="submit"
          className="btn btn-primary"
          disabled={!allowed || busy || !value('connection') || !value('model') || !value('destination')}
          data-testid="run-pipeline"
        >
          Run
        </button>
      </div>
      {!allowed ? (
        <div className="card-body">
          <RoleNote allowed={allowed} need="operator" />
        </div>
      ) : null}
    </form>
  );
}

function PreviewCard({ connections, allowed }: { connections: readonly DatasyncEntity[]; allowed: boolean }) {
  const { tenant } = useApp();
  const [connection, setConnection] = useState('');
  const [sql, setSql] = useState('select * from ');
  const [busy, setBusy] = useState(false);
  const [result, setResult] = useState<PreviewResponse | null>(null);
  const [error, setError] = useState<unknown>(null);
  const conn = connection || connections[0]?.id || '';
  const run = async (ev: FormEvent) => {
    ev.preventDefault();
    setBusy(true);
    setError(null);
    try {
      setResult(await post<PreviewResponse>(apiPaths.datasyncPreview(tenant), { connection: conn, sql }));
    } catch (e) {
      setResult(null);
      setError(e);
    } finally {
      setBusy(false);
    }
  };
  return (
    <div className="card" data-testid="preview">
      <div className="card-head">
        <strong>Preview</strong>
        <span className="hint">one SELECT or WITH, read-only, at most 100 rows, cells cut at 200 characters</span>
      </div>
      <form className="card-body" onSubmit={(e) => void run(e)}>
        <div className="field">
          <label htmlFor="preview-connection">Connection</label>
          <select id="preview-connection" value={conn} onChange={(e) => setConnection(e.target.value)} disabled={!allowed} data-testid="preview-connection">
            {connections.map((c) => (
              <option key={c.id} value={c.id}>
                {c.id}
              </option>
            ))}
          </select>
        </div>
        <div className="field" style={{ marginTop: 8 }}>
          <label htmlFor="preview-sql">Query</label>
          <textarea
            id="preview-sql"
            className="mono"
            rows={4}
            value={sql}
            onChange={(e) => setSql(e.target.value)}
            spellCheck={false}
            disabled={!allowed}
            data-testid="preview-sql"
          />
        </div>
        <div className="actions" style={{ marginTop: 8 }}>
          <button type="submit" className="btn btn-primary" disabled={!allowed || busy || !conn} data-testid="preview-run">
            {busy ? 'Running…' : 'Preview'}
          </button>
          <RoleNote allowed={allowed} need="operator" />
        </div>
      </form>
      {error ? (
        <div className="card-body">
          <ErrorAlert error={error} title="The preview was refused" />
        </div>
      ) : null}
      {result ? (
        <>
          <div className="table-wrap table-scroll">
            <table className="data" data-testid="preview-table">
              <thead>
                <tr>
                  {result.columns.map((c, i) => (
                    <th scope="col" key={i} title={c.type}>
                      {c.name}
                    </th>
                  ))}
                </tr>
              </thead>
              <tbody>
                {result.rows.map((row, i) => (
                  <tr key={i} data-testid="preview-row">
                    {row.map((cell, j) => (
                      <td key={j} className="mono">
                        {cell === null ? <span className="muted">null</span> : cell}
                      </td>
                    ))}
                  </tr>
                ))}
              </tbody>
            </table>
          </div>
          <div className="card-body hint" data-testid="preview-summary">
            {result.rows.length} row{result.rows.length === 1 ? '' : 's'}
            {result.truncated ? ' (more not shown)' : ''} · {result.cellsTruncated} cell{result.cellsTruncated === 1 ? '' : 's'} cut · {duration(result.durationMs)}
          </div>
        </>
      ) : null}
    </div>
  );
}

function CatalogCard({ entities, allowed, onChange }: { entities: readonly DatasyncEntity[]; allowed: boolean; onChange: () => void }) {
  const { tenant, toast } = useApp();
  const [dialog, confirm] = useConfirm();
  const [kind, setKind] = useState<DatasyncKind>('connection');
  const [id, setId] = useState('');
  const [name, setName] = useState('');
  const [spec, setSpec] = useState(SPEC_EXAMPLES.connection);
  const [busy, setBusy] = useState(false);

  const save = async (ev: FormEvent) => {
    ev.preventDefault();
    let parsed: unknown;
    try {
      parsed = JSON.parse(spec);
    } catch (e) {
      toast(`The spec is not JSON: ${(e as Error).message}`, 'error');
      return;
    }
    setBusy(true);
    try {
      const r = await post<DatasyncEntityResponse>(apiPaths.datasyncEntity(tenant, kind, id), { spec: parsed, ...(name ? { name } : {}) });
      toast(`Stored ${r.entity.kind} ${r.entity.id} (version ${r.entity.version}).`);
      for (const ms of [300, 1000, 2000]) setTimeout(onChange, ms);
    } catch (e) {
      const { code, message } = describeError(e);
      toast(`${message} (${code})`, 'error');
    } finally {
      setBusy(false);
    }
  };

  const remove = async (e: DatasyncEntity) => {
    const ok = await confirm({
      title: `Delete ${e.kind} ${e.id}?`,
      body: <>Pipelines that name it stop at their next step. Its history stays in the audit log.</>,
      confirm: `Delete ${e.kind}`,
      danger: true,
    });
    if (!ok) return;
    try {
      await post<DatasyncEntityResponse>(apiPaths.datasyncDelete(tenant, e.kind, e.id), {});
      toast(`Deleted ${e.kind} ${e.id}.`);
      for (const ms of [300, 1000, 2000]) setTimeout(onChange, ms);
    } catch (err) {
      const { code, message } = describeError(err);
      toast(`${message} (${code})`, 'error');
    }
  };

  return (
    <div className="card section" data-testid="catalog">
      {dialog}
      <div className="card-head">
        <strong>Connections, models and destinations</strong>
        <span className="hint">specs live in the data plane; this is what the control plane knows</span>
      </div>
      {entities.length === 0 ? (
        <Empty title="Nothing defined yet." testid="catalog-empty">
          <div>
            Define a connection, a model and a destination below, or with <code>capstan datasync put</code>.
          </div>
        </Empty>
      ) : (
        <div className="table-wrap">
          <table className="data" data-testid="catalog-table">
            <TableHead columns={['Kind', 'Id', 'Name', 'Version', 'What', 'Changed', { srOnly: 'Actions' }]} />
            <tbody>
              {entities.map((e) => (
                <tr key={`${e.kind}:${e.id}`} data-testid="catalog-row" data-kind={e.kind} data-id={e.id} data-status={e.status}>
                  <td>{e.kind}</td>
                  <td className="mono">{e.id}</td>
                  <td>{e.name}</td>
                  <td className="num">v{e.version}</td>
                  <td>{e.status === 'deleted' ? <StatusBadge status="deleted" tone="failed" /> : facts(e)}</td>
                  <td className="nowrap">
                    {e.changedBy}, <Ago at={e.changedAt} />
                  </td>
                  <td>
                    {allowed && e.status === 'active' ? (
                      <button type="button" className="btn btn-sm btn-danger" onClick={() => void remove(e)} data-testid="catalog-delete">
                        Delete
                      </button>
                    ) : null}
                  </td>
                </tr>
              ))}
            </tbody>
          </table>
        </div>
      )}
      <form className="card-body" onSubmit={(e) => void save(e)} data-testid="catalog-form">
        <div className="filters" style={{ padding: 0, borderBottom: 'none' }}>
          <div className="field">
            <label htmlFor="catalog-kind">Kind</label>
            <select
              id="catalog-kind"
              value={kind}
              onChange={(e) => {
                const k = e.target.value as DatasyncKind;
                setKind(k);
                setSpec(SPEC_EXAMPLES[k]);
              }}
              disabled={!allowed}
            >
              {DATASYNC_KINDS.map((k) => (
                <option key={k} value={k}>
                  {k}
                </option>
              ))}
            </select>
          </div>
          <div className="field">
            <label htmlFor="catalog-id">Id</label>
            <input id="catalog-id" type="text" value={id} onChange={(e) => setId(e.target.value)} placeholder="shop-db" disabled={!allowed} data-testid="catalog-id" />
          </div>
          <div className="field">
            <label htmlFor="catalog-name">Name</label>
            <input id="catalog-name" type="text" value={name} onChange={(e) => setName(e.target.value)} placeholder="(the id)" disabled={!allowed} />
          </div>
        </div>
        <div className="field" style={{ marginTop: 8 }}>
          <label htmlFor="catalog-spec">Spec (JSON; name secrets by key, never paste a password)</label>
          <textarea
            id="catalog-spec"
            className="mono"
            rows={8}
            value={spec}
            onChange={(e) => setSpec(e.target.value)}
            spellCheck={false}
            disabled={!allowed}
            data-testid="catalog-spec"
          />
        </div>
        <div className="actions" style={{ marginTop: 8 }}>
          <button type="submit" className="btn btn-primary" disabled={!allowed || busy || !id} data-testid="catalog-save">
            Save
          </button>
          <RoleNote allowed={allowed} need="admin" />
        </div>
      </form>
    </div>
  );
}

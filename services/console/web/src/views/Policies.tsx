/**
 * The tenant's policy versions: who set each one, when and why; the text of one; and a line
 * diff of any two (computed here, from the two texts). The selection lives in the address
 * (`?a=&b=&show=`), so a comparison can be pasted into a review.
 */
import { apiPaths, type PoliciesResponse, type PolicyVersionResponse, type PolicyVersionSummary } from '../../../src/api-types.js';
import { qs } from '../api.js';
import { Ago, Empty, ErrorAlert, Loading, useApp, TableHead } from '../components.js';
import { lineDiff, splitLines, type DiffLine } from '../diff.js';
import { plural, when } from '../format.js';
import { useGet } from '../hooks.js';
import { navigate, useLocation, useTitle } from '../router.js';

function versionParam(raw: string | null): number | undefined {
  return raw !== null && /^[1-9]\d{0,8}$/.test(raw) ? Number(raw) : undefined;
}

export function PoliciesView() {
  useTitle('Policies');
  const { tenant } = useApp();
  const loc = useLocation();
  const base = `/t/${encodeURIComponent(tenant)}`;
  const list = useGet<PoliciesResponse>(apiPaths.policies(tenant));
  const versions = list.data?.versions ?? [];
  const picked = [versionParam(loc.query.get('a')), versionParam(loc.query.get('b'))].filter((v): v is number => v !== undefined);
  const newest = versions[0]?.version;
  const shown = versionParam(loc.query.get('show')) ?? newest;

  const go = (p: { picked: readonly number[]; show: number | undefined }) =>
    navigate(`${base}/policies${qs({ a: p.picked[0], b: p.picked[1], show: p.show !== newest ? p.show : undefined })}`, { replace: true });
  // Picking a third version lets go of the earliest pick: two are compared at a time.
  const toggle = (v: number) => go({ picked: picked.includes(v) ? picked.filter((x) => x !== v) : [...picked, v].slice(-2), show: shown });

  const [older, newer] = picked.length === 2 ? [Math.min(...picked), Math.max(...picked)] : [undefined, undefined];

  return (
    <>
      <div className="page-head">
        <div>
          <h1>Policies</h1>
          <div className="sub">Every version of the tenant's Cedar policy. A version never changes; a change is a new version. Tick two to compare them.</div>
        </div>
      </div>
      <div className="card">
        {list.error ? (
          <div className="card-body">
            <ErrorAlert error={list.error} title="The policy versions could not be read" onRetry={list.reload} />
          </div>
        ) : null}
        {list.loading && !list.data ? <Loading what="the policy versions" /> : null}
        {list.data && versions.length === 0 ? (
          <Empty title="This tenant has no policy yet." testid="policies-empty">
            <div>
              Until one is set, every step runs as its workflow asks. Set one with <code>capstan policy set</code>.
            </div>
          </Empty>
        ) : null}
        {versions.length > 0 ? (
          <div className="table-wrap">
            <table className="data" data-testid="policies-table">
              <TableHead columns={['Compare', 'Version', 'Set by', 'When', 'Reason', 'SHA-256']} />
              <tbody>
                {versions.map((v) => (
                  <VersionRow
                    key={v.version}
                    v={v}
                    picked={picked.includes(v.version)}
                    shown={v.version === shown}
                    onToggle={() => toggle(v.version)}
                    onShow={() => go({ picked, show: v.version })}
                  />
                ))}
              </tbody>
            </table>
          </div>
        ) : null}
      </div>

      {older !== undefined && newer !== undefined ? <DiffCard tenant={tenant} older={older} newer={newer} onClear={() => go({ picked: [], show: shown })} /> : null}
      {versions.length > 1 && picked.length < 2 ? (
        <p className="hint section" data-testid="policy-diff-hint">
          {picked.length === 0 ? 'Tick two versions to see what changed between them.' : `Version ${picked[0]} ticked; tick one more to compare.`}
        </p>
      ) : null}
      {shown !== undefined ? <TextCard tenant={tenant} version={shown} latest={shown === newest} /> : null}
    </>
  );
}

function VersionRow({ v, picked, shown, onToggle, onShow }: { v: PolicyVersionSummary; picked: boolean; shown: boolean; onToggle: () => void; onShow: () => void }) {
  return (
    <tr data-testid="policy-row" data-version={v.version} aria-selected={shown}>
      <td>
        <input type="checkbox" checked={picked} onChange={onToggle} aria-label={`Compare version ${v.version}`} data-testid="policy-pick" />
      </td>
      <td className="nowrap">
        <button type="button" className="btn-link" onClick={onShow} aria-pressed={shown} title="Show this version's text" data-testid="policy-show">
          v{v.version}
        </button>
      </td>
      <td>{v.by}</td>
      <td className="nowrap" title={when(v.at)}>
        <Ago at={v.at} />
      </td>
      <td>{v.reason ?? <span className="muted">–</span>}</td>
      <td className="mono" title={v.sha256}>
        {v.sha256.slice(0, 12)}
      </td>
    </tr>
  );
}

function DiffCard({ tenant, older, newer, onClear }: { tenant: string; older: number; newer: number; onClear: () => void }) {
  const a = useGet<PolicyVersionResponse>(apiPaths.policyVersion(tenant, older));
  const b = useGet<PolicyVersionResponse>(apiPaths.policyVersion(tenant, newer));
  const error = a.error ?? b.error;
  const diff = a.data && b.data ? lineDiff(a.data.text, b.data.text) : undefined;
  const added = diff?.filter((l) => l.op === 'add').length ?? 0;
  const removed = diff?.filter((l) => l.op === 'del').length ?? 0;
  return (
    <div className="card section" data-testid="policy-diff">
      <div className="card-head">
        <h2>
          v{older} → v{newer}
        </h2>
        <span className="hint" data-testid="policy-diff-stats">
          {diff ? `${plural(added, 'line')} added, ${plural(removed, 'line')} removed` : null}
        </span>
        <button type="button" className="btn btn-sm btn-ghost" onClick={onClear}>
          Clear
        </button>
      </div>
      {error ? (
        <div className="card-body">
          <ErrorAlert error={error} title="A version could not be read" onRetry={() => (a.error ? a.reload() : b.reload())} />
        </div>
      ) : null}
      {!error && (a.loading || b.loading) && !diff ? <Loading what="the two versions" /> : null}
      {diff === null ? <div className="card-body hint">These versions are too long to compare here; read each one's text below.</div> : null}
      {diff && added + removed === 0 ? <div className="card-body hint">The two texts are the same.</div> : null}
      {diff && added + removed > 0 ? <DiffTable lines={diff} /> : null}
    </div>
  );
}

const MARK: Record<DiffLine['op'], string> = { same: ' ', add: '+', del: '−' };

function DiffTable({ lines }: { lines: readonly DiffLine[] }) {
  return (
    <div className="table-wrap">
      <table className="diff" data-testid="policy-diff-lines">
        <tbody>
          {lines.map((l, i) => (
            <tr key={i} className={`diff-${l.op}`} data-op={l.op} data-testid="diff-line">
              <td className="diff-no">{l.oldNo ?? ''}</td>
              <td className="diff-no">{l.newNo ?? ''}</td>
              <td className="diff-mark" aria-label={l.op === 'same' ? undefined : l.op === 'add' ? 'added' : 'removed'}>
                {MARK[l.op]}
              </td>
              <td className="diff-text">{l.text}</td>
            </tr>
          ))}
        </tbody>
      </table>
    </div>
  );
}

function TextCard({ tenant, version, latest }: { tenant: string; version: number; latest: boolean }) {
  const v = useGet<PolicyVersionResponse>(apiPaths.policyVersion(tenant, version));
  return (
    <div className="card section" data-testid="policy-text">
      <div className="card-head">
        <h2>
          Version {version}
          {latest ? <span className="muted"> (in force)</span> : null}
        </h2>
        {v.data ? (
          <span className="hint">
            {plural(splitLines(v.data.text).length, 'line')} · set by {v.data.by} {when(v.data.at)}
          </span>
        ) : null}
      </div>
      {v.error ? (
        <div className="card-body">
          <ErrorAlert error={v.error} title="The version could not be read" onRetry={v.reload} />
        </div>
      ) : null}
      {v.loading && !v.data ? <Loading what={`version ${version}`} /> : null}
      {v.data ? (
        <pre className="policy-text" data-testid="policy-text-body">
          {v.data.text}
        </pre>
      ) : null}
    </div>
  );
}

/** The approvals queue: steps waiting for a person, oldest request first, with approve and deny. */
import { useState } from 'react';
import { apiPaths, roleAllows, type ActionResponse, type Approval, type ApprovalsResponse } from '../../../src/api-types.js';
import { describeError, post, qs } from '../api.js';
import { Ago, Empty, ErrorAlert, Link, Loading, StatusBadge, useApp, useConfirm } from '../components.js';
import { duration, shortId } from '../format.js';
import { useGet, useNow, useRunStream, useThrottled } from '../hooks.js';
import { navigate, useLocation, useTitle } from '../router.js';

const TABS = [
  { value: 'waiting', label: 'Waiting' },
  { value: 'approved', label: 'Approved' },
  { value: 'denied', label: 'Denied' },
  { value: '', label: 'All' },
] as const;

export function ApprovalsView() {
  useTitle('Approvals');
  const { tenant, session, toast } = useApp();
  const loc = useLocation();
  const status = loc.query.get('status') ?? 'waiting';
  const list = useGet<ApprovalsResponse>(`${apiPaths.approvals(tenant)}${qs({ status: status || undefined, limit: 500 })}`);
  const refresh = useThrottled(list.reload, 500);
  useRunStream(tenant, refresh);
  const [dialog, confirm] = useConfirm();
  const [busy, setBusy] = useState<string | null>(null);
  const now = useNow(5000);
  const allowed = roleAllows(session.role, 'approve');
  const base = `/t/${encodeURIComponent(tenant)}`;

  const decide = async (a: Approval, decision: 'approve' | 'deny') => {
    let reason = '';
    if (decision === 'deny') {
      const ok = await confirm({
        title: `Deny ${a.step}?`,
        body: (
          <>
            Run <code>{a.runId}</code> fails with approval_denied. Your name and reason are recorded on the run and in the audit log.
          </>
        ),
        confirm: 'Deny',
        danger: true,
        reason: { label: 'Reason', placeholder: 'why this is denied' },
      });
      if (!ok) return;
      reason = ok.reason;
    }
    const key = `${a.runId}:${a.step}`;
    setBusy(key);
    try {
      const path = decision === 'approve' ? apiPaths.approve(tenant, a.runId, a.step) : apiPaths.deny(tenant, a.runId, a.step);
      await post<ActionResponse>(path, reason ? { reason } : {});
      toast(`${decision === 'approve' ? 'Approved' : 'Denied'} ${a.step} of run ${shortId(a.runId)}.`);
      refresh();
    } catch (e) {
      const { code, message } = describeError(e);
      toast(`${message} (${code})`, 'error');
    } finally {
      setBusy(null);
    }
  };

  // Oldest waiting first: the one that has waited longest is the one to look at.
  const rows = [...(list.data?.approvals ?? [])];
  if (status === 'waiting') rows.reverse();

  return (
    <>
      <div className="page-head">
        <div>
          <h1>Approvals</h1>
          <div className="sub">Steps that wait for a person to approve or deny them.{allowed ? '' : ' You can see them; deciding needs the operator role.'}</div>
        </div>
      </div>
      <div className="card">
        <div className="tabs" role="tablist" aria-label="Approval status">
          {TABS.map((t) => (
            <button
              key={t.value}
              type="button"
              role="tab"
              aria-selected={status === t.value}
              onClick={() => navigate(`${base}/approvals${t.value === 'waiting' ? '' : `?status=${t.value || ''}`}`)}
              data-testid={`approvals-tab-${t.value || 'all'}`}
            >
              {t.label}
            </button>
          ))}
        </div>
        {list.error ? (
          <div className="card-body">
            <ErrorAlert error={list.error} title="The approvals could not be listed" onRetry={list.reload} />
          </div>
        ) : null}
        {list.loading && !list.data ? <Loading what="approvals" /> : null}
        {list.data && rows.length === 0 ? (
          <Empty title={status === 'waiting' ? 'Nothing is waiting for a decision.' : 'No approvals here.'} testid="approvals-empty">
            {status === 'waiting' ? <div>Runs that reach a step needing approval appear here at once.</div> : null}
          </Empty>
        ) : null}
        {rows.length > 0 ? (
          <div className="table-wrap">
            <table className="data" data-testid="approvals-table">
              <thead>
                <tr>
                  <th scope="col">Run</th>
                  <th scope="col">Workflow</th>
                  <th scope="col">Step</th>
                  <th scope="col">Signal</th>
                  <th scope="col">Status</th>
                  <th scope="col">Requested</th>
                  <th scope="col">{status === 'waiting' ? 'Waiting for' : 'Decided'}</th>
                  <th scope="col">By</th>
                  <th scope="col">Reason</th>
                  <th scope="col">
                    <span className="sr-only">Decide</span>
                  </th>
                </tr>
              </thead>
              <tbody>
                {rows.map((a) => {
                  const key = `${a.runId}:${a.step}`;
                  return (
                    <tr key={key} data-testid="approval-row" data-run-id={a.runId} data-step={a.step} data-status={a.status}>
                      <td className="nowrap">
                        <Link to={`${base}/runs/${encodeURIComponent(a.runId)}`} title={a.runId} data-row-link="">
                          <span className="mono">{shortId(a.runId)}</span>
                        </Link>
                      </td>
                      <td>{a.workflow ?? <span className="muted">–</span>}</td>
                      <td>
                        <strong>{a.step}</strong>
                      </td>
                      <td className="mono">{a.signal}</td>
                      <td>
                        <StatusBadge status={a.status} />
                      </td>
                      <td className="nowrap">
                        <Ago at={a.requestedAt} />
                      </td>
                      <td className="nowrap">{a.status === 'waiting' ? duration(now - Date.parse(a.requestedAt)) : <Ago at={a.decidedAt} />}</td>
                      <td>{a.decidedBy ?? <span className="muted">–</span>}</td>
                      <td>{a.reason ? <span className="truncate">{a.reason}</span> : <span className="muted">–</span>}</td>
                      <td>
                        {a.status === 'waiting' ? (
                          <div className="actions" style={{ flexWrap: 'nowrap' }}>
                            <button
                              type="button"
                              className="btn btn-primary btn-sm"
                              disabled={!allowed || busy !== null}
                              title={allowed ? `Approve ${a.step}` : 'Needs the operator role'}
                              onClick={() => void decide(a, 'approve')}
                              data-testid="approve"
                            >
                              {busy === key ? 'Working…' : 'Approve'}
                            </button>
                            <button
                              type="button"
                              className="btn btn-danger btn-sm"
                              disabled={!allowed || busy !== null}
                              title={allowed ? `Deny ${a.step}` : 'Needs the operator role'}
                              onClick={() => void decide(a, 'deny')}
                              data-testid="deny"
                            >
                              Deny…
                            </button>
                          </div>
                        ) : null}
                      </td>
                    </tr>
                  );
                })}
              </tbody>
            </table>
          </div>
        ) : null}
      </div>
      {dialog}
    </>
  );
}

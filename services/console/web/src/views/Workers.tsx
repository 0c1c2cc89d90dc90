/** The worker fleet: labels (pools), heartbeats, load, admission; approve and revoke for admins. */
import { useEffect, useState } from 'react';
import { apiPaths, roleAllows, WORKER_STALE_MS, type ActionResponse, type WorkerInfo, type WorkersResponse } from '../../../src/api-types.js';
import { describeError, post } from '../api.js';
import { Ago, Empty, ErrorAlert, Loading, StatusBadge, useApp, useConfirm } from '../components.js';
import { duration } from '../format.js';
import { useGet } from '../hooks.js';
import { useTitle } from '../router.js';

const ADMISSION_TONE = { pending: 'waiting', approved: 'completed', revoked: 'failed' } as const;

/** Heartbeats are not on the runs stream: the fleet is polled while the view is open. */
const POLL_MS = 5000;

export function WorkersView() {
  useTitle('Workers');
  const { tenant, session, toast } = useApp();
  const list = useGet<WorkersResponse>(apiPaths.workers(tenant));
  const [dialog, confirm] = useConfirm();
  const [busy, setBusy] = useState<string | null>(null);
  const allowed = roleAllows(session.role, 'revokeWorker');
  const { reload } = list;

  useEffect(() => {
    const t = setInterval(reload, POLL_MS);
    return () => clearInterval(t);
  }, [reload]);

  const act = async (w: WorkerInfo, action: 'approve' | 'revoke') => {
    if (action === 'revoke') {
      const ok = await confirm({
        title: `Revoke ${w.workerId}?`,
        body: <>The worker stops taking work within a few seconds. Work it holds is handed to other workers. It cannot take work again until an admin approves it.</>,
        confirm: 'Revoke worker',
        danger: true,
      });
      if (!ok) return;
    }
    setBusy(w.workerId);
    try {
      await post<ActionResponse>(action === 'approve' ? apiPaths.approveWorker(tenant, w.workerId) : apiPaths.revokeWorker(tenant, w.workerId), {});
      toast(action === 'approve' ? `Approved ${w.workerId}.` : `Revoked ${w.workerId}.`);
      // The fleet view follows the projection, a moment behind the command: look again soon.
      for (const ms of [300, 1000, 2000, 4000]) setTimeout(reload, ms);
    } catch (e) {
      const { code, message } = describeError(e);
      toast(`${message} (${code})`, 'error');
    } finally {
      setBusy(null);
    }
  };

  const workers = list.data?.workers ?? [];
  const pending = workers.filter((w) => w.admission === 'pending').length;
  const stale = workers.filter((w) => w.stale).length;

  return (
    <>
      <div className="page-head">
        <div>
          <h1>Workers</h1>
          <div className="sub">
            The data plane of {tenant} as last heard from; a worker is stale after {duration(WORKER_STALE_MS)} without a heartbeat.
            {allowed ? '' : ' Approving and revoking needs the admin role.'}
          </div>
        </div>
        {list.data ? (
          <div className="hint" data-testid="fleet-summary">
            {workers.length} workers · {stale} stale · {pending} awaiting approval
          </div>
        ) : null}
      </div>
      <div className="card">
        {list.error ? (
          <div className="card-body">
            <ErrorAlert error={list.error} title="The fleet could not be listed" onRetry={reload} />
          </div>
        ) : null}
        {list.loading && !list.data ? <Loading what="workers" /> : null}
        {list.data && workers.length === 0 ? (
          <Empty title="No worker has reported yet." testid="workers-empty">
            <div>
              Start one with <code>NATS_URL=… CAPSTAN_TENANTS={tenant} node services/worker/dist/main.js</code>; it appears after its first heartbeat.
            </div>
          </Empty>
        ) : null}
        {workers.length > 0 ? (
          <div className="table-wrap">
            <table className="data" data-testid="workers-table">
              <thead>
                <tr>
                  <th scope="col">Worker</th>
                  <th scope="col">Pools</th>
                  <th scope="col">Admission</th>
                  <th scope="col">Heartbeat</th>
                  <th scope="col" className="num">
                    Running
                  </th>
                  <th scope="col">Changed by</th>
                  <th scope="col">
                    <span className="sr-only">Actions</span>
                  </th>
                </tr>
              </thead>
              <tbody>
                {workers.map((w) => (
                  <tr key={w.workerId} data-testid="worker-row" data-worker-id={w.workerId} data-admission={w.admission ?? 'unknown'}>
                    <td className="mono">{w.workerId}</td>
                    <td>
                      <span className="kv">
                        {w.pools.map((p) => (
                          <span key={p}>{p}</span>
                        ))}
                      </span>
                    </td>
                    <td>
                      {w.admission ? (
                        <StatusBadge status={w.admission} tone={ADMISSION_TONE[w.admission]} testid="worker-admission" />
                      ) : (
                        <span className="muted">not recorded</span>
                      )}
                    </td>
                    <td className="nowrap">
                      {w.stale ? <StatusBadge status="stale" tone="failed" testid="worker-health" /> : <StatusBadge status="online" tone="completed" testid="worker-health" />}{' '}
                      <Ago at={w.lastSeenAt} />
                    </td>
                    <td className="num">{w.running}</td>
                    <td>
                      {w.admissionBy ? (
                        <>
                          {w.admissionBy} <span className="sub">{w.admissionAt ? <Ago at={w.admissionAt} /> : null}</span>
                        </>
                      ) : (
                        <span className="muted">–</span>
                      )}
                    </td>
                    <td>
                      <div className="actions" style={{ flexWrap: 'nowrap', justifyContent: 'flex-end' }}>
                        {w.admission !== 'approved' ? (
                          <button
                            type="button"
                            className="btn btn-sm btn-primary"
                            disabled={!allowed || busy !== null}
                            title={allowed ? 'Let this worker take work' : 'Needs the admin role'}
                            onClick={() => void act(w, 'approve')}
                            data-testid="worker-approve"
                          >
                            Approve
                          </button>
                        ) : null}
                        {w.admission !== 'revoked' ? (
                          <button
                            type="button"
                            className="btn btn-sm btn-danger"
                            disabled={!allowed || busy !== null}
                            title={allowed ? 'Stop this worker from taking work' : 'Needs the admin role'}
                            onClick={() => void act(w, 'revoke')}
                            data-testid="worker-revoke"
                          >
                            Revoke…
                          </button>
                        ) : null}
                      </div>
                    </td>
                  </tr>
                ))}
              </tbody>
            </table>
          </div>
        ) : null}
      </div>
      {dialog}
    </>
  );
}

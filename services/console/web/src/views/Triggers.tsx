/**
 * What starts runs besides a person: schedules (next firings, pause, resume, run now,
 * delete, and a form for a new one) and webhook routes (read only: they are made with
 * `capstan routes create`).
 */
import { useState, type FormEvent } from 'react';
import {
  apiPaths,
  type CATCHUP_POLICIES,
  type OVERLAP_POLICIES,
  roleAllows,
  type ActionResponse,
  type CreateScheduleRequest,
  type RoutesResponse,
  type ScheduleAction,
  type ScheduleInfo,
  type SchedulesResponse,
  type WorkflowsResponse,
} from '../../../src/api-types.js';
import { describeError, post } from '../api.js';
import { Ago, Empty, ErrorAlert, Link, Loading, StatusBadge, TableHead, useApp, useConfirm } from '../components.js';
import { duration, when } from '../format.js';
import { useGet } from '../hooks.js';
import { useTitle } from '../router.js';
import { useJsonText } from '../schema-form.js';

const STATUS_TONE = { active: 'running', paused: 'waiting', deleted: 'cancelled' } as const;

function rule(s: ScheduleInfo): string {
  if (s.cron !== null) return `${s.cron} (${s.timezone ?? 'UTC'})`;
  return `every ${duration(s.everyMs ?? 0)}`;
}

export function TriggersView() {
  useTitle('Triggers');
  const { tenant, session, toast } = useApp();
  const schedules = useGet<SchedulesResponse>(apiPaths.schedules(tenant));
  const routes = useGet<RoutesResponse>(apiPaths.routes(tenant));
  const [dialog, confirm] = useConfirm();
  const [busy, setBusy] = useState<string | null>(null);
  const [creating, setCreating] = useState(false);
  const allowed = roleAllows(session.role, 'pauseSchedule');
  const reload = schedules.reload;
  const again = () => {
    for (const ms of [300, 1000, 2500]) setTimeout(reload, ms);
  };

  const act = async (s: ScheduleInfo, action: ScheduleAction) => {
    if (action === 'delete') {
      const ok = await confirm({
        title: `Delete schedule ${s.scheduleId}?`,
        body: <>It stops firing at once. Runs it started are kept. The id can be used again for a new schedule.</>,
        confirm: 'Delete schedule',
        danger: true,
      });
      if (!ok) return;
    }
    setBusy(s.scheduleId);
    try {
      const res = await post<ActionResponse>(apiPaths.scheduleAction(tenant, s.scheduleId, action), {});
      toast(action === 'trigger' ? `Started ${res.runId ?? 'a run'} from ${s.scheduleId}.` : `Schedule ${s.scheduleId}: ${action} recorded.`);
      again();
    } catch (e) {
      const { code, message } = describeError(e);
      toast(`${message} (${code})`, 'error');
    } finally {
      setBusy(null);
    }
  };

  const list = schedules.data?.schedules ?? [];
  return (
    <>
      <div className="page-head">
        <div>
          <h1>Triggers</h1>
          <div className="sub">
            Schedules and webhook routes of {tenant}: what starts runs without a person.{allowed ? '' : ' Changing schedules needs the operator role.'}
          </div>
        </div>
        <div className="actions">
          <Link to={`/t/${encodeURIComponent(tenant)}/start`} className="btn" data-testid="triggers-run-now">
            Run now…
          </Link>
          <button type="button" className="btn btn-primary" disabled={!allowed} onClick={() => setCreating((c) => !c)} data-testid="schedule-new">
            New schedule
          </button>
        </div>
      </div>
      {creating ? (
        <NewSchedule
          onDone={() => {
            setCreating(false);
            again();
          }}
        />
      ) : null}
      <div className="card">
        <div className="card-head">
          <h2 style={{ fontSize: '1rem', margin: 0 }}>Schedules</h2>
        </div>
        {schedules.error ? (
          <div className="card-body">
            <ErrorAlert error={schedules.error} title="The schedules could not be listed" onRetry={reload} />
          </div>
        ) : null}
        {schedules.loading && !schedules.data ? <Loading what="schedules" /> : null}
        {schedules.data && list.length === 0 ? (
          <Empty title="No schedules yet." testid="schedules-empty">
            <div>
              Make one with <strong>New schedule</strong>, or <code>capstan schedules create nightly --tenant {tenant} --workflow … --cron "0 3 * * *"</code>.
            </div>
          </Empty>
        ) : null}
        {list.length > 0 ? (
          <div className="table-wrap">
            <table className="data" data-testid="schedules-table">
              <TableHead columns={['Schedule', 'Status', 'When', 'Workflow', 'Next firing', 'Policies', 'Last change', { srOnly: 'Actions' }]} />
              <tbody>
                {list.map((s) => (
                  <tr key={s.scheduleId} data-testid="schedule-row" data-schedule-id={s.scheduleId} data-status={s.status}>
                    <td className="mono">{s.scheduleId}</td>
                    <td>
                      <StatusBadge status={s.status} tone={STATUS_TONE[s.status as keyof typeof STATUS_TONE] ?? 'pending'} />
                    </td>
                    <td className="mono">{rule(s)}</td>
                    <td>{s.workflow}</td>
                    <td className="nowrap" data-testid="schedule-next">
                      {s.next[0] ? when(s.next[0]) : <span className="muted">–</span>}
                    </td>
                    <td className="hint">
                      overlap {s.overlap}, catch-up {s.catchup}
                      {s.catchup === 'all' ? ` (${duration(s.catchupWindowMs)})` : ''}
                    </td>
                    <td>
                      {s.lastOp} by {s.changedBy}{' '}
                      <span className="sub">
                        <Ago at={s.changedAt} />
                      </span>
                    </td>
                    <td>
                      <div className="actions" style={{ flexWrap: 'nowrap', justifyContent: 'flex-end' }}>
                        <button
                          type="button"
                          className="btn btn-sm"
                          disabled={!allowed || busy !== null}
                          onClick={() => void act(s, 'trigger')}
                          data-testid="schedule-trigger"
                          title="Start a run now, outside the schedule's slots"
                        >
                          Run now
                        </button>
                        {s.status === 'active' ? (
                          <button type="button" className="btn btn-sm" disabled={!allowed || busy !== null} onClick={() => void act(s, 'pause')} data-testid="schedule-pause">
                            Pause
                          </button>
                        ) : (
                          <button type="button" className="btn btn-sm" disabled={!allowed || busy !== null} onClick={() => void act(s, 'resume')} data-testid="schedule-resume">
                            Resume
                          </button>
                        )}
                        <button
                          type="button"
                          className="btn btn-sm btn-danger"
                          disabled={!allowed || busy !== null}
                          onClick={() => void act(s, 'delete')}
                          data-testid="schedule-delete"
                        >
                          Delete…
                        </button>
                      </div>
                    </td>
                  </tr>
                ))}
              </tbody>
            </table>
          </div>
        ) : null}
      </div>
      <div className="card" style={{ marginTop: 16 }}>
        <div className="card-head">
          <h2 style={{ fontSize: '1rem', margin: 0 }}>Webhook routes</h2>
          <span className="hint">Signed deliveries (Standard Webhooks) to ingress at the path shown start the workflow.</span>
        </div>
        {routes.error ? (
          <div className="card-body">
            <ErrorAlert error={routes.error} title="The routes could not be listed" onRetry={routes.reload} />
          </div>
        ) : null}
        {routes.data && routes.data.routes.length === 0 ? (
          <Empty title="No webhook routes." testid="routes-empty">
            <div>
              Make one with <code>capstan routes create github --tenant {tenant} --workflow … --secret GITHUB_HOOK</code>.
            </div>
          </Empty>
        ) : null}
        {routes.data && routes.data.routes.length > 0 ? (
          <div className="table-wrap">
            <table className="data" data-testid="routes-table">
              <TableHead columns={['Route', 'Status', 'Path', 'Workflow', 'Signing secrets', 'Input', 'Changed']} />
              <tbody>
                {routes.data.routes.map((r) => (
                  <tr key={r.routeId} data-testid="route-row" data-route-id={r.routeId}>
                    <td className="mono">{r.routeId}</td>
                    <td>
                      <StatusBadge status={r.status} tone={r.status === 'enabled' ? 'completed' : 'cancelled'} />
                    </td>
                    <td className="mono">POST {r.path}</td>
                    <td>{r.workflow}</td>
                    <td className="mono">{r.secrets.join(', ')}</td>
                    <td className="mono">
                      {r.fields
                        ? Object.entries(r.fields)
                            .map(([k, p]) => `${k} = ${p}`)
                            .join(', ')
                        : 'the body'}
                    </td>
                    <td>
                      {r.changedBy}{' '}
                      <span className="sub">
                        <Ago at={r.changedAt} />
                      </span>
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

function NewSchedule({ onDone }: { onDone: () => void }) {
  const { tenant, toast } = useApp();
  const catalog = useGet<WorkflowsResponse>(apiPaths.workflows(tenant));
  const [id, setId] = useState('');
  const [workflow, setWorkflow] = useState('');
  const [kind, setKind] = useState<'cron' | 'every'>('cron');
  const [cron, setCron] = useState('0 * * * *');
  const [timezone, setTimezone] = useState(() => Intl.DateTimeFormat().resolvedOptions().timeZone || 'UTC');
  const [everyS, setEveryS] = useState('300');
  const [overlap, setOverlap] = useState<(typeof OVERLAP_POLICIES)[number]>('skip');
  const [catchup, setCatchup] = useState<(typeof CATCHUP_POLICIES)[number]>('all');
  const [text, setText] = useState('{}');
  const input = useJsonText(text);
  const [error, setError] = useState<unknown>(null);
  const [busy, setBusy] = useState(false);
  const chosen = workflow || catalog.data?.workflows[0]?.id || '';

  const submit = async (e: FormEvent) => {
    e.preventDefault();
    if (!input.value) return;
    const body: CreateScheduleRequest = {
      schedule: id,
      workflow: chosen,
      ...(kind === 'cron' ? { cron, timezone } : { everyMs: Math.round(Number(everyS) * 1000) }),
      input: input.value,
      overlap,
      catchup,
    };
    setBusy(true);
    setError(null);
    try {
      await post<ActionResponse>(apiPaths.schedules(tenant), body);
      toast(`Schedule ${id} created.`);
      onDone();
    } catch (err) {
      setError(err);
    } finally {
      setBusy(false);
    }
  };

  return (
    <div className="card" style={{ marginBottom: 16 }}>
      <div className="card-body">
        <form onSubmit={(e) => void submit(e)} data-testid="schedule-form">
          <div className="form-grid">
            <div className="field">
              <label htmlFor="sc-id">Id</label>
              <input
                id="sc-id"
                type="text"
                value={id}
                onChange={(e) => setId(e.target.value)}
                placeholder="nightly-sync"
                required
                pattern="[a-z0-9][a-z0-9_\-]{0,63}"
                data-testid="schedule-id"
              />
            </div>
            <div className="field">
              <label htmlFor="sc-workflow">Workflow</label>
              <select id="sc-workflow" value={chosen} onChange={(e) => setWorkflow(e.target.value)} data-testid="schedule-workflow">
                {(catalog.data?.workflows ?? []).map((w) => (
                  <option key={w.id} value={w.id}>
                    {w.id}
                  </option>
                ))}
              </select>
            </div>
            <div className="field">
              <label htmlFor="sc-kind">Fires</label>
              <select id="sc-kind" value={kind} onChange={(e) => setKind(e.target.value as 'cron' | 'every')} data-testid="schedule-kind">
                <option value="cron">on a cron expression</option>
                <option value="every">at an interval</option>
              </select>
            </div>
            {kind === 'cron' ? (
              <>
                <div className="field">
                  <label htmlFor="sc-cron">Cron (5 fields, or 6 with seconds)</label>
                  <input id="sc-cron" type="text" value={cron} onChange={(e) => setCron(e.target.value)} className="mono" data-testid="schedule-cron" />
                </div>
                <div className="field">
                  <label htmlFor="sc-tz">Time zone</label>
                  <input id="sc-tz" type="text" value={timezone} onChange={(e) => setTimezone(e.target.value)} data-testid="schedule-timezone" />
                </div>
              </>
            ) : (
              <div className="field">
                <label htmlFor="sc-every">Every (seconds)</label>
                <input id="sc-every" type="number" min={1} value={everyS} onChange={(e) => setEveryS(e.target.value)} data-testid="schedule-every" />
              </div>
            )}
            <div className="field">
              <label htmlFor="sc-overlap">While the last run is still going</label>
              <select id="sc-overlap" value={overlap} onChange={(e) => setOverlap(e.target.value as typeof overlap)} data-testid="schedule-overlap">
                <option value="skip">skip the firing</option>
                <option value="buffer-one">start one when it ends</option>
                <option value="allow-all">start anyway</option>
              </select>
            </div>
            <div className="field">
              <label htmlFor="sc-catchup">Firings missed during downtime</label>
              <select id="sc-catchup" value={catchup} onChange={(e) => setCatchup(e.target.value as typeof catchup)} data-testid="schedule-catchup">
                <option value="all">run all (within 1 h)</option>
                <option value="last">run the last one</option>
                <option value="skip">skip them</option>
              </select>
            </div>
            <div className="field wide">
              <label htmlFor="sc-input">Input (a JSON object)</label>
              <textarea id="sc-input" value={text} onChange={(e) => setText(e.target.value)} spellCheck={false} style={{ minHeight: 80 }} data-testid="schedule-input" />
              {input.error ? <span className="field-error">{input.error}</span> : null}
            </div>
          </div>
          <div className="actions" style={{ marginTop: 12 }}>
            <button type="submit" className="btn btn-primary" disabled={busy || !id || !chosen || input.value === null} data-testid="schedule-create">
              {busy ? 'Creating…' : 'Create schedule'}
            </button>
          </div>
          {error ? (
            <div style={{ marginTop: 12 }}>
              <ErrorAlert error={error} title="The schedule was not created" />
            </div>
          ) : null}
        </form>
      </div>
    </div>
  );
}

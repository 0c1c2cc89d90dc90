/**
 * One run: where it stands in plain words (the server's explanation), its actions, the
 * approvals it waits for, a step-by-step waterfall of every attempt, and the event timeline.
 * It refreshes itself whenever the live stream reports the run changed.
 */
import { useState } from 'react';
import {
  apiPaths,
  roleAllows,
  type ActionResponse,
  type Approval,
  type Explanation,
  type LeaseEntry,
  type PolicyDecision,
  type Role,
  type RunDetailResponse,
  type StepAttempt,
  type TimelineEvent,
  type TraceHop,
} from '../../../src/api-types.js';
import { describeError, post } from '../api.js';
import { Ago, Empty, ErrorAlert, Link, Loading, StatusBadge, useApp, useConfirm, TableHead } from '../components.js';
import { clock, duration, modeLabel, offset, plural, when } from '../format.js';
import { useGet, useNow, useRunStream, useThrottled } from '../hooks.js';
import { useTitle } from '../router.js';

const TONE_STATUS: Record<Explanation['tone'], string> = { error: 'failed', waiting: 'waiting', progress: 'running', done: 'completed', info: 'info' };
const TONE_LABEL: Record<Explanation['tone'], string> = {
  error: 'Why it failed',
  waiting: 'Why it is waiting',
  progress: 'What it is doing',
  done: 'How it ended',
  info: 'Where it stands',
};

export function RunView({ runId }: { runId: string }) {
  const { tenant, session, toast } = useApp();
  useTitle(`Run ${runId.slice(-6)}`);
  const detail = useGet<RunDetailResponse>(apiPaths.run(tenant, runId));
  const refresh = useThrottled(detail.reload, 250);
  useRunStream(tenant, (runs) => {
    if (runs.some((r) => r.runId === runId)) refresh();
  });
  const [dialog, confirm] = useConfirm();
  const [busy, setBusy] = useState<string | null>(null);
  const base = `/t/${encodeURIComponent(tenant)}`;

  const act = async (key: string, path: string, body: object, done: string) => {
    setBusy(key);
    try {
      await post<ActionResponse>(path, body);
      toast(done);
      refresh();
    } catch (e) {
      const { code, message } = describeError(e);
      toast(`${message} (${code})`, 'error');
    } finally {
      setBusy(null);
    }
  };

  const crumbs = (
    <div className="crumbs">
      <Link to={`${base}/runs`}>Runs</Link> / <span className="mono">{runId}</span>
    </div>
  );

  if (detail.error && !detail.data) {
    return (
      <>
        {crumbs}
        <ErrorAlert error={detail.error} title="This run could not be shown" onRetry={detail.reload} />
      </>
    );
  }
  if (!detail.data) {
    return (
      <>
        {crumbs}
        <Loading what="the run" />
      </>
    );
  }
  const d = detail.data;
  const r = d.run;
  const role = session.role;
  const waiting = d.approvals.filter((a) => a.status === 'waiting');

  const cancel = async () => {
    const ok = await confirm({
      title: 'Cancel this run?',
      body: (
        <>
          Run <code>{r.runId}</code> of <strong>{r.workflow}</strong> stops at its next decision. Steps already running finish, but nothing new is scheduled. This cannot be undone.
        </>
      ),
      confirm: 'Cancel run',
      danger: true,
      reason: { label: 'Reason (recorded in the audit log)', placeholder: 'optional' },
    });
    if (ok) await act('cancel', apiPaths.cancel(tenant, r.runId), ok.reason ? { reason: ok.reason } : {}, 'Cancel requested: the run stops at its next decision.');
  };
  const signal = async () => {
    const ok = await confirm({
      title: 'Send a signal',
      body: <>The run receives the signal as an event; a step waiting for it continues.</>,
      confirm: 'Send signal',
      input: { label: 'Signal name', placeholder: 'approve', initial: waiting[0]?.signal ?? '' },
    });
    if (ok) await act('signal', apiPaths.signal(tenant, r.runId), { name: ok.input }, `Signal ${ok.input} sent.`);
  };
  const retry = async () => {
    const failedStep = d.trace.find((s) => s.outcome === 'failed')?.step ?? r.currentStep;
    const ok = await confirm({
      title: 'Retry this run?',
      body: (
        <>
          The run continues from {failedStep ? <strong>{failedStep}</strong> : 'the step that failed'} with a new attempt. Steps that completed keep their results and do not run
          again.
        </>
      ),
      confirm: 'Retry run',
      reason: { label: 'Reason (recorded in the audit log)', placeholder: 'optional' },
    });
    if (ok) await act('retry', apiPaths.retry(tenant, r.runId), ok.reason ? { reason: ok.reason } : {}, 'Retry requested.');
  };
  const approve = (a: Approval) => act(`approve:${a.step}`, apiPaths.approve(tenant, a.runId, a.step), {}, `Approved ${a.step}.`);
  const deny = async (a: Approval) => {
    const ok = await confirm({
      title: `Deny ${a.step}?`,
      body: <>The run fails with approval_denied. Your name and reason are recorded on the run and in the audit log.</>,
      confirm: 'Deny',
      danger: true,
      reason: { label: 'Reason', placeholder: 'why this is denied' },
    });
    if (ok) await act(`deny:${a.step}`, apiPaths.deny(tenant, a.runId, a.step), ok.reason ? { reason: ok.reason } : {}, `Denied ${a.step}.`);
  };

  const canOperate = roleAllows(role, 'cancel');
  const roleHint = canOperate ? undefined : 'Needs the operator role';

  return (
    <>
      {crumbs}
      <div className="page-head">
        <div>
          <h1>
            {r.workflow}
            <span className="muted" style={{ fontWeight: 400 }}>
              @{r.version}
            </span>{' '}
            <StatusBadge status={r.status} testid="run-status" />
          </h1>
          <div className="sub mono" data-testid="run-id">
            {r.runId}
          </div>
        </div>
        <div className="actions" data-testid="run-actions">
          <a
            className="btn"
            href={apiPaths.runExport(tenant, r.runId)}
            download
            title="Download the run's events, workflow fingerprint and policy versions as one checksummed file: capstan replay --from <file> replays it anywhere, with no server"
            data-testid="action-export"
          >
            Export
          </a>
          <button
            type="button"
            className="btn"
            disabled={!d.actions.signal || !roleAllows(role, 'signal') || busy !== null}
            title={roleHint ?? (d.actions.signal ? 'Send a signal to the run' : 'The run is not waiting for signals')}
            onClick={() => void signal()}
            data-testid="action-signal"
          >
            Signal…
          </button>
          <button
            type="button"
            className="btn"
            disabled={!d.actions.retry || !roleAllows(role, 'retry') || busy !== null}
            title={roleHint ?? (d.actions.retry ? 'Continue from the failed step' : 'Only a failed run can be retried')}
            onClick={() => void retry()}
            data-testid="action-retry"
          >
            Retry
          </button>
          <button
            type="button"
            className="btn btn-danger"
            disabled={!d.actions.cancel || !roleAllows(role, 'cancel') || busy !== null}
            title={roleHint ?? (d.actions.cancel ? 'Stop the run' : 'The run has ended')}
            onClick={() => void cancel()}
            data-testid="action-cancel"
          >
            Cancel run
          </button>
        </div>
      </div>

      <div className="why" data-status={TONE_STATUS[d.explanation.tone]} data-testid="why" role="status">
        <div className="why-label">{TONE_LABEL[d.explanation.tone]}</div>
        <div style={{ flex: 1 }}>
          <p data-testid="why-text">{d.explanation.text}</p>
          {waiting.length > 0 ? (
            <div className="actions" style={{ marginTop: 10 }}>
              {waiting.map((a) => (
                <ApprovalButtons key={a.step} a={a} busy={busy} role={role} onApprove={() => void approve(a)} onDeny={() => void deny(a)} where="why" />
              ))}
              {!roleAllows(role, 'approve') ? <span className="hint">Approving needs the operator role.</span> : null}
            </div>
          ) : null}
        </div>
      </div>

      <div className="card">
        <div className="card-body">
          <Summary d={d} />
        </div>
      </div>

      {d.parent || d.continuedFrom || d.continuedAs || d.children.length > 0 ? <RelatedRuns d={d} base={base} /> : null}

      {d.policyDecisions.length > 0 || d.leases.length > 0 ? <PolicyCard decisions={d.policyDecisions} leases={d.leases} /> : null}

      {d.approvals.length > 0 ? <ApprovalsCard approvals={d.approvals} busy={busy} role={role} onApprove={approve} onDeny={deny} /> : null}

      <div className="card section" data-testid="run-trace">
        <div className="card-head">
          <h2>Trace</h2>
          <span className="hint" data-testid="trace-id">
            {d.traceId ? (
              <>
                trace <code>{d.traceId}</code> · every hop, from what the run recorded
              </>
            ) : (
              'every hop, from what the run recorded'
            )}
          </span>
        </div>
        <HopWaterfall hops={d.hops} endedAt={r.endedAt} />
      </div>

      <div className="card section">
        <div className="card-head">
          <h2>Steps</h2>
          <div className="legend" aria-hidden="true">
            <span className="l-queued">queued</span>
            <span>ran</span>
            <span className="l-running">running</span>
            <span className="l-failed">failed</span>
            <span className="l-wait">waiting for a person</span>
          </div>
        </div>
        <Waterfall d={d} />
      </div>

      <div className="card section">
        <div className="card-head">
          <h2>Timeline</h2>
          <span className="hint">{plural(d.events.length, 'event')} · the run stream is the record; this is its index</span>
        </div>
        <Timeline events={d.events} startedAt={r.startedAt} />
      </div>
      {dialog}
    </>
  );
}

function ApprovalButtons({
  a,
  busy,
  role,
  onApprove,
  onDeny,
  where,
}: {
  a: Approval;
  busy: string | null;
  role: Role;
  onApprove: () => void;
  onDeny: () => void;
  where: 'why' | 'table';
}) {
  const allowed = roleAllows(role, 'approve');
  return (
    <>
      <button
        type="button"
        className="btn btn-primary"
        disabled={!allowed || busy !== null}
        onClick={onApprove}
        data-testid={where === 'why' ? 'approve' : 'approval-approve'}
        data-step={a.step}
        title={allowed ? `Approve ${a.step}` : 'Needs the operator role'}
      >
        {busy === `approve:${a.step}` ? 'Approving…' : `Approve ${a.step}`}
      </button>
      <button
        type="button"
        className="btn btn-danger"
        disabled={!allowed || busy !== null}
        onClick={onDeny}
        data-testid={where === 'why' ? 'deny' : 'approval-deny'}
        data-step={a.step}
        title={allowed ? `Deny ${a.step}` : 'Needs the operator role'}
      >
        Deny…
      </button>
    </>
  );
}

function Summary({ d }: { d: RunDetailResponse }) {
  const r = d.run;
  const now = useNow(1000);
  const took = (r.endedAt ? Date.parse(r.endedAt) : now) - Date.parse(r.startedAt);
  return (
    <dl className="summary" data-testid="run-summary">
      <div>
        <dt>Started</dt>
        <dd title={r.startedAt}>
          {when(r.startedAt)}{' '}
          <span className="muted">
            (<Ago at={r.startedAt} />)
          </span>
        </dd>
      </div>
      <div>
        <dt>{r.endedAt ? 'Ended' : 'Last change'}</dt>
        <dd>{r.endedAt ? when(r.endedAt) : <Ago at={r.updatedAt} />}</dd>
      </div>
      <div>
        <dt>{r.endedAt ? 'Took' : 'Running for'}</dt>
        <dd>{duration(took)}</dd>
      </div>
      <div>
        <dt>Current step</dt>
        <dd>{r.currentStep ?? <span className="muted">–</span>}</dd>
      </div>
      <div>
        <dt>Attempts</dt>
        <dd>
          {r.attempts} over {plural(d.trace.length, 'step')}
        </dd>
      </div>
      <div>
        <dt>Search fields</dt>
        <dd>
          {d.search.length === 0 ? (
            <span className="muted">none</span>
          ) : (
            <span className="kv">
              {d.search.map((s) => (
                <span key={`${s.key}=${s.value}`}>
                  {s.key}={s.value}
                </span>
              ))}
            </span>
          )}
        </dd>
      </div>
      {r.errorCode ? (
        <div style={{ gridColumn: '1 / -1' }}>
          <dt>Error</dt>
          <dd className="err-text" data-testid="run-error">
            <code>{r.errorCode}</code>: {r.errorMessage}
          </dd>
        </div>
      ) : null}
    </dl>
  );
}

/** The runs this one is linked to: the parent that started it, the run it continues, the run that continues it, the children it started. */
function RelatedRuns({ d, base }: { d: RunDetailResponse; base: string }) {
  const runLink = (runId: string, testid: string) => (
    <Link to={`${base}/runs/${encodeURIComponent(runId)}`} className="mono" data-testid={testid} data-run-id={runId}>
      {runId}
    </Link>
  );
  return (
    <div className="card section" data-testid="run-related">
      <div className="card-head">
        <h2>Related runs</h2>
        <span className="hint">child workflows and continue-as-new, from what the runs recorded</span>
      </div>
      {d.parent || d.continuedFrom || d.continuedAs ? (
        <div className="card-body">
          <dl className="summary">
            {d.parent ? (
              // A run id is long: two columns keep it on one line.
              <div style={{ gridColumn: 'span 2' }}>
                <dt>Started by</dt>
                <dd>
                  {runLink(d.parent.runId, 'run-parent')}
                  {d.parent.step ? <span className="muted"> · step {d.parent.step}</span> : null}
                </dd>
              </div>
            ) : null}
            {d.continuedFrom ? (
              <div style={{ gridColumn: 'span 2' }}>
                <dt>Continues</dt>
                <dd>{runLink(d.continuedFrom, 'run-continued-from')}</dd>
              </div>
            ) : null}
            {d.continuedAs ? (
              <div style={{ gridColumn: 'span 2' }}>
                <dt>Continued as</dt>
                <dd>{runLink(d.continuedAs, 'run-continued-as')}</dd>
              </div>
            ) : null}
          </dl>
        </div>
      ) : null}
      {d.children.length > 0 ? (
        <div className="table-wrap">
          <table className="data" data-testid="run-children">
            <TableHead columns={['Step', 'Attempt', 'Workflow', 'Child run', 'Outcome']} />
            <tbody>
              {d.children.map((c) => (
                <tr key={c.runId} data-testid="run-child" data-step={c.step} data-child-id={c.runId}>
                  <td>{c.step}</td>
                  <td>{c.attempt}</td>
                  <td>{c.workflow}</td>
                  <td>{runLink(c.runId, 'run-child-link')}</td>
                  <td>
                    <StatusBadge status={c.outcome} testid="child-outcome" />
                  </td>
                </tr>
              ))}
            </tbody>
          </table>
        </div>
      ) : null}
    </div>
  );
}

const DECISION_TONE: Record<string, string> = { allow: 'completed', deny: 'failed', 'needs-approval': 'waiting' };
const LEASE_TONE: Record<string, string> = { 'lease.issued': 'running', 'lease.redeemed': 'completed', 'lease.denied': 'failed', 'lease.revoked': 'cancelled' };

function Keys({ keys }: { keys: readonly string[] }) {
  if (keys.length === 0) return <span className="muted">–</span>;
  return (
    <span className="keys">
      {keys.map((k) => (
        <code key={k}>{k}</code>
      ))}
    </span>
  );
}

/** What the policy answered for each step, and the credential leases (key names only). */
function PolicyCard({ decisions, leases }: { decisions: readonly PolicyDecision[]; leases: readonly LeaseEntry[] }) {
  return (
    <div className="card section" data-testid="run-policy">
      <div className="card-head">
        <h2>Policy and credentials</h2>
        <span className="hint">
          {plural(decisions.length, 'decision')} · {plural(leases.length, 'lease event')} · key names only, never values
        </span>
      </div>
      {decisions.length > 0 ? (
        <div className="table-wrap">
          <table className="data" data-testid="run-decisions">
            <TableHead columns={['Step', 'Asked', 'Decision', 'Version', 'Policies', 'Approvers', 'When']} />
            <tbody>
              {decisions.map((p, i) => (
                <tr key={i} data-testid="run-decision" data-step={p.step} data-decision={p.decision}>
                  <td>
                    {p.step}
                    {p.attempt !== null && p.attempt > 1 ? <span className="muted"> #{p.attempt}</span> : null}
                  </td>
                  <td>{p.credential ? <Keys keys={[p.credential]} /> : <span className="muted">to run</span>}</td>
                  <td>
                    <StatusBadge status={p.decision} tone={DECISION_TONE[p.decision] ?? 'cancelled'} testid="decision" />
                  </td>
                  <td className="mono">
                    {p.version === null ? (
                      '–'
                    ) : p.version === 0 ? (
                      <span className="muted" title="No policy was in force">
                        none
                      </span>
                    ) : (
                      `v${p.version}`
                    )}
                  </td>
                  <td className="mono">{p.policies.length > 0 ? p.policies.join(', ') : <span className="muted">–</span>}</td>
                  <td>{p.approvers ?? <span className="muted">–</span>}</td>
                  <td className="nowrap">
                    <Ago at={p.at} />
                  </td>
                </tr>
              ))}
            </tbody>
          </table>
        </div>
      ) : null}
      {leases.length > 0 ? (
        <div className="table-wrap">
          <table className="data" data-testid="run-leases">
            <TableHead columns={['Lease', 'Keys', 'Step', 'Code or reason', 'Actor', 'When']} />
            <tbody>
              {leases.map((l, i) => (
                <tr key={i} data-testid="run-lease" data-kind={l.kind}>
                  <td>
                    <StatusBadge status={l.kind.replace(/^lease\./, '')} tone={LEASE_TONE[l.kind] ?? 'cancelled'} testid="lease-kind" />
                  </td>
                  <td>
                    <Keys keys={l.keys} />
                  </td>
                  <td>
                    {l.step ?? <span className="muted">–</span>}
                    {l.attempt !== null && l.attempt > 1 ? <span className="muted"> #{l.attempt}</span> : null}
                  </td>
                  <td className="mono">{l.code ?? <span className="muted">–</span>}</td>
                  <td>{l.actor ?? <span className="muted">system</span>}</td>
                  <td className="nowrap">
                    <Ago at={l.at} />
                  </td>
                </tr>
              ))}
            </tbody>
          </table>
        </div>
      ) : null}
    </div>
  );
}

function ApprovalsCard({
  approvals,
  busy,
  role,
  onApprove,
  onDeny,
}: {
  approvals: readonly Approval[];
  busy: string | null;
  role: Role;
  onApprove: (a: Approval) => Promise<void>;
  onDeny: (a: Approval) => Promise<void>;
}) {
  return (
    <div className="card section">
      <div className="card-head">
        <h2>Approvals</h2>
      </div>
      <div className="table-wrap">
        <table className="data" data-testid="run-approvals">
          <TableHead columns={['Step', 'Signal', 'Status', 'Requested', 'Decided', 'By', 'Reason', { srOnly: 'Actions' }]} />
          <tbody>
            {approvals.map((a) => (
              <tr key={a.step} data-testid="run-approval" data-step={a.step}>
                <td>{a.step}</td>
                <td className="mono">{a.signal}</td>
                <td>
                  <StatusBadge status={a.status === 'waiting' ? 'waiting' : a.status} />
                </td>
                <td>
                  <Ago at={a.requestedAt} />
                </td>
                <td>{a.decidedAt ? <Ago at={a.decidedAt} /> : <span className="muted">–</span>}</td>
                <td>{a.decidedBy ?? <span className="muted">–</span>}</td>
                <td>{a.reason ?? <span className="muted">–</span>}</td>
                <td>
                  {a.status === 'waiting' ? (
                    <div className="actions">
                      <ApprovalButtons a={a} busy={busy} role={role} onApprove={() => void onApprove(a)} onDeny={() => void onDeny(a)} where="table" />
                    </div>
                  ) : null}
                </td>
              </tr>
            ))}
          </tbody>
        </table>
      </div>
    </div>
  );
}

/** When an attempt started running: its start, else its finish minus its duration (quick steps report no start). */
function ranFrom(a: StepAttempt): number | null {
  if (a.startedAt) return Date.parse(a.startedAt);
  if (a.finishedAt && a.durationMs !== null) return Date.parse(a.finishedAt) - a.durationMs;
  return null;
}

/** A waterfall's time axis from `t0` to `t1`: where a time falls on it, and how wide an interval is, in %. */
function timeScale(t0: number, t1: number) {
  const span = t1 - t0;
  const share = (ms: number) => `${Math.max(0, Math.min(100, (ms / span) * 100)).toFixed(2)}%`;
  return { span, pct: (t: number) => share(t - t0), width: (a: number, b: number) => share(b - a) };
}

/** A waterfall's header: its own columns, the duration, and the time axis in quarters. */
function WaterfallHead({ columns, span }: { columns: readonly string[]; span: number }) {
  return (
    <thead>
      <tr>
        {columns.map((c) => (
          <th key={c} scope="col">
            {c}
          </th>
        ))}
        <th scope="col" style={{ textAlign: 'right' }}>
          Duration
        </th>
        <th scope="col">
          <div className="axis">
            <span>0</span>
            <span>{duration(span / 4)}</span>
            <span>{duration(span / 2)}</span>
            <span>{duration((span * 3) / 4)}</span>
            <span>{duration(span)}</span>
          </div>
        </th>
      </tr>
    </thead>
  );
}

type TraceItem = { kind: 'step'; at: number; step: RunDetailResponse['trace'][number] } | { kind: 'approval'; at: number; approval: Approval };

function Waterfall({ d }: { d: RunDetailResponse }) {
  const now = useNow(1000);
  const t0 = Date.parse(d.run.startedAt);
  const ends = [...d.steps.map((a) => (a.finishedAt ? Date.parse(a.finishedAt) : now)), ...d.approvals.map((a) => (a.decidedAt ? Date.parse(a.decidedAt) : now))];
  const t1 = Math.max(d.run.endedAt ? Date.parse(d.run.endedAt) : now, ...ends, t0 + 1);
  const { span, pct, width } = timeScale(t0, t1);

  // Steps and the human waits between them, in the order they began.
  const items: TraceItem[] = [
    ...d.trace.map((s) => ({ kind: 'step' as const, at: t0 + s.offsetMs, step: s })),
    ...d.approvals.map((a) => ({ kind: 'approval' as const, at: Date.parse(a.requestedAt), approval: a })),
  ].sort((a, b) => a.at - b.at);

  if (items.length === 0) return <Empty title="No step has been scheduled yet." />;
  return (
    <div className="table-wrap">
      <table className="waterfall" data-testid="waterfall">
        <WaterfallHead columns={['Step', 'Attempt', 'Outcome', 'Mode', 'Worker', 'Sandbox']} span={span} />
        <tbody>
          {items.flatMap((item) => {
            if (item.kind === 'approval') {
              const a = item.approval;
              const from = Date.parse(a.requestedAt);
              const to = a.decidedAt ? Date.parse(a.decidedAt) : now;
              return [
                <tr key={`approval:${a.step}`} data-testid="trace-approval" data-step={a.step} data-outcome={a.status}>
                  <td>
                    <strong>{a.step}</strong>
                  </td>
                  <td className="muted">–</td>
                  <td>
                    <StatusBadge status={a.status} testid="attempt-outcome" />
                  </td>
                  <td>approval ({a.signal})</td>
                  <td>{a.decidedBy ?? <span className="muted">{a.status === 'waiting' ? 'a person' : '–'}</span>}</td>
                  <td className="muted">–</td>
                  <td style={{ textAlign: 'right' }}>{duration(to - from)}</td>
                  <td className="track-cell">
                    <div className="track" aria-label={`${a.step}: ${a.status === 'waiting' ? 'waiting for a decision' : a.status} for ${duration(to - from)}`}>
                      <div className="wait" data-outcome={a.status} style={{ left: pct(from), width: width(from, to) }} />
                    </div>
                  </td>
                </tr>,
              ];
            }
            const s = item.step;
            return s.attempts.flatMap((a, i) => {
              const sched = Date.parse(a.scheduledAt);
              const ran = ranFrom(a);
              const end = a.finishedAt ? Date.parse(a.finishedAt) : now;
              const queuedTo = ran ?? end;
              const ranMs = a.durationMs ?? (ran !== null ? end - ran : null);
              const rows = [
                <tr
                  key={`${a.step}#${a.attempt}`}
                  className={a.errorCode ? 'has-error' : undefined}
                  data-testid="trace-row"
                  data-step={a.step}
                  data-attempt={a.attempt}
                  data-outcome={a.outcome}
                >
                  <td>{i === 0 ? <strong>{a.step}</strong> : <span className="muted">↳ retry</span>}</td>
                  <td>
                    {a.attempt}
                    {i === 0 && s.attempts.length > 1 ? <span className="muted"> of {s.attempts.length}</span> : null}
                  </td>
                  <td>
                    <StatusBadge status={a.outcome} testid="attempt-outcome" />
                  </td>
                  <td title={`pool ${a.pool}, handler ${a.handler}`}>{modeLabel(a.mode)}</td>
                  <td className="mono">{a.worker ?? <span className="muted">–</span>}</td>
                  <td className="mono">{a.sandbox ?? <span className="muted">–</span>}</td>
                  <td style={{ textAlign: 'right' }} title={ran !== null ? `queued ${duration(queuedTo - sched)}` : 'not started'}>
                    {ranMs !== null ? duration(ranMs) : <span className="muted">–</span>}
                  </td>
                  <td className="track-cell">
                    <div className="track" aria-label={`${a.step} attempt ${a.attempt}: queued ${duration(queuedTo - sched)}, ran ${duration(ranMs)}`}>
                      <div className="queued" style={{ left: pct(sched), width: width(sched, queuedTo) }} />
                      {ran !== null ? <div className="ran" data-outcome={a.outcome} style={{ left: pct(ran), width: width(ran, end) }} /> : null}
                    </div>
                  </td>
                </tr>,
              ];
              if (a.errorCode) {
                rows.push(
                  <tr key={`${a.step}#${a.attempt}:error`} className="attempt-error">
                    <td />
                    <td colSpan={7} data-testid="attempt-error">
                      <code>{a.errorCode}</code>: {a.errorMessage}
                    </td>
                  </tr>,
                );
              }
              return rows;
            });
          })}
        </tbody>
      </table>
    </div>
  );
}

const HOP_BAR: Record<string, string> = { queued: 'queued', wait: 'wait', approval: 'wait', sleep: 'wait', backoff: 'queued' };

/** The run's hops on one time axis, nested under their parents, each with its duration. */
function HopWaterfall({ hops, endedAt }: { hops: readonly TraceHop[]; endedAt: string | null }) {
  const now = useNow(1000);
  if (hops.length === 0) return <Empty title="No hop has been recorded yet." />;
  const t0 = Math.min(...hops.map((h) => Date.parse(h.start)));
  const t1 = Math.max(endedAt ? Date.parse(endedAt) : now, ...hops.map((h) => (h.end ? Date.parse(h.end) : now)), t0 + 1);
  const { span, pct, width } = timeScale(t0, t1);
  return (
    <div className="table-wrap">
      <table className="waterfall" data-testid="hop-waterfall">
        <WaterfallHead columns={['Hop', 'Detail']} span={span} />
        <tbody>
          {hops.map((h) => {
            const from = Date.parse(h.start);
            const to = h.end ? Date.parse(h.end) : now;
            const bar = HOP_BAR[h.kind] ?? 'ran';
            const outcome = h.status === 'error' ? 'failed' : h.status === 'open' ? 'running' : h.status === 'ended' ? 'pending' : bar === 'wait' ? 'approved' : 'completed';
            return (
              <tr key={h.id} data-testid="hop" data-kind={h.kind} data-status={h.status} data-parent={h.parent ?? ''} data-id={h.id}>
                <td>
                  <span className="hop-name" style={{ paddingLeft: `${h.depth * 16}px` }}>
                    {h.depth > 0 ? <span className="muted">└ </span> : null}
                    {h.depth === 0 ? <strong>{h.name}</strong> : h.name}
                  </span>
                </td>
                <td className="muted">
                  {h.error ? <code className="err-text">{h.error}</code> : null} {h.detail ?? ''}
                </td>
                <td style={{ textAlign: 'right' }} data-testid="hop-duration">
                  {h.kind === 'lease' || h.kind === 'event' ? <span className="muted">·</span> : `${duration(h.durationMs)}${h.end ? '' : '…'}`}
                </td>
                <td className="track-cell">
                  <div className="track" aria-label={`${h.name}: ${h.status}, ${duration(h.durationMs)}`}>
                    <div className={bar} data-outcome={outcome} style={{ left: pct(from), width: width(from, to) }} />
                  </div>
                </td>
              </tr>
            );
          })}
        </tbody>
      </table>
    </div>
  );
}

const EVENT_WORDS: Record<string, [string, 'ok' | 'bad' | 'wait' | 'human' | 'plain']> = {
  'run.started': ['Run started', 'plain'],
  'step.scheduled': ['Step scheduled', 'plain'],
  'step.started': ['Step started on a worker', 'plain'],
  'step.completed': ['Step completed', 'ok'],
  'step.failed': ['Step failed', 'bad'],
  'step.waiting': ['Waiting for a signal', 'wait'],
  'timer.scheduled': ['Timer set', 'plain'],
  'timer.fired': ['Timer fired', 'plain'],
  'run.signaled': ['Signal received', 'human'],
  'run.cancel-requested': ['Cancel requested', 'human'],
  'run.completed': ['Run completed', 'ok'],
  'run.failed': ['Run failed', 'bad'],
  'run.cancelled': ['Run cancelled', 'bad'],
  'run.retried': ['Retry requested', 'human'],
  'approval.decided': ['Approval decided', 'human'],
};

function Timeline({ events, startedAt }: { events: readonly TimelineEvent[]; startedAt: string }) {
  if (events.length === 0) return <Empty title="No events yet." />;
  return (
    <ol className="timeline" data-testid="timeline">
      {events.map((e) => {
        const [words, kind] = EVENT_WORDS[e.type] ?? [e.type, 'plain'];
        return (
          <li key={e.seq} data-kind={kind} data-testid="timeline-event" data-type={e.type}>
            <span className="seq">#{e.seq}</span>
            <span className="offset">{offset(startedAt, e.at)}</span>
            <span className="what">
              {words}
              <small className="mono">{e.type}</small>
            </span>
            <time className="at" dateTime={e.at} title={`${when(e.at)} · stream seq ${e.streamSeq}`}>
              {clock(e.at)}
            </time>
          </li>
        );
      })}
    </ol>
  );
}

/**
 * The projection as pure functions: what one run event does to its run's rows. The live
 * projector, a rebuild and the verifier all fold events through {@link projectEvent}, so
 * any row in Postgres can be checked by computing it again from the stream.
 *
 * A run's rows are folded from a {@link RunView} (the run row, its step attempts and its
 * approvals). The projector loads the view of each run a batch touches, folds the batch's
 * events over it in memory and writes the rows that changed; the verifier folds a run from
 * an empty view. No clock is read: every time comes from the event's `at`, so a rebuild
 * writes exactly the rows the live projector wrote.
 */
import { createHash } from 'node:crypto';
import { NO_PROGRESS, progressAfter, type RunProgress } from '@capstan/actors';
import {
  decode,
  ErrorCode,
  isRunStatus,
  parseRunEvent,
  runIdOfSubject,
  RunStatus,
  sandboxName,
  SchemaError,
  tenantTokenOf,
  toErrorRecord,
  type db,
  type ErrorRecord,
  type JsonValue,
  type RunEvent,
  AuditKind,
  CHILD_HANDLER,
} from '@capstan/schemas';

export type RunRow = typeof db.runs.$inferSelect;
export type StepRow = typeof db.steps.$inferSelect;
export type EventRow = typeof db.events.$inferSelect;
export type ApprovalRow = typeof db.approvals.$inferSelect;
export type SearchRow = typeof db.runSearch.$inferSelect;
/** An audit row before the database numbers it; `(tenant, runId, seq)` is its identity. */
export type AuditRow = Omit<typeof db.auditLog.$inferSelect, 'id'>;

export const StepOutcome = {
  Scheduled: 'scheduled',
  Running: 'running',
  Completed: 'completed',
  Failed: 'failed',
  TimedOut: 'timed_out',
  /** Engine 2: the run stopped waiting for it (cancelled, failed elsewhere, a fan-in met). */
  Cancelled: 'cancelled',
  /** Engine 2: its condition did not hold. */
  Skipped: 'skipped',
  /** Engine 2: a durable sleep (its row has handler `sleep`). */
  Sleeping: 'sleeping',
} as const;

export const ApprovalStatus = { Waiting: 'waiting', Approved: 'approved', Denied: 'denied', Expired: 'expired' } as const;
/** The `signal` of an approval a policy asked for (not a signal step). */
export const POLICY_APPROVAL = 'policy';

export { AuditKind };

/**
 * The sandbox (container name) an attempt's event names, when it names one as a string.
 * Read defensively: only sandboxed attempts carry it, and the field is optional.
 */
function sandboxOf(data: object, fallback: string | null): string | null {
  const v = (data as { sandbox?: unknown }).sandbox;
  return typeof v === 'string' ? pgText(v) : fallback;
}

const TERMINAL: ReadonlySet<string> = new Set([RunStatus.Completed, RunStatus.Failed, RunStatus.Cancelled]);

/** What the projection knows about one run before its next event. */
export interface RunView {
  /** Absent until the run's `run.started` has been applied. */
  readonly run: RunRow | undefined;
  /** Step attempts by {@link stepKey}. */
  readonly steps: ReadonlyMap<string, StepRow>;
  /** Approvals by step name. */
  readonly approvals: ReadonlyMap<string, ApprovalRow>;
  /**
   * Whether any attempt has started, completed or failed: from then on a newly scheduled
   * step leaves the run `running` rather than `pending` (as in `statusFromEvents`).
   */
  readonly anyStarted: boolean;
  /** The run's open steps, as its events say: its status is computed from them. */
  readonly progress: RunProgress;
}

export const EMPTY_VIEW: RunView = Object.freeze({ run: undefined, steps: new Map(), approvals: new Map(), anyStarted: false, progress: NO_PROGRESS });

/** A run event as stored: decoded, with its place in the stream and its exact bytes. */
export interface StoredEvent {
  readonly event: RunEvent;
  readonly streamSeq: number;
  readonly bytes: Uint8Array;
}

/** The rows one event produced or changed, each in its final state after the event. */
export interface Projected {
  readonly view: RunView;
  readonly event: EventRow;
  readonly run: RunRow | undefined;
  readonly steps: readonly StepRow[];
  readonly approvals: readonly ApprovalRow[];
  readonly search: readonly SearchRow[];
  readonly audit: AuditRow | undefined;
}

/** A message of a run stream, as the projector receives it. */
export interface StreamMessage {
  readonly seq: number;
  readonly subject: string;
  readonly data: Uint8Array;
}

/**
 * Decodes and validates a run stream message. An event must be well formed and belong
 * where it is stored: its run id is its subject's, and the subject is the tenant's.
 * Anything else is returned as the reason it cannot be projected.
 */
export function decodeStored(tenant: string, m: StreamMessage): { ok: true; stored: StoredEvent } | { ok: false; error: ErrorRecord } {
  try {
    const event = parseRunEvent(decode(m.data));
    const subjectRun = runIdOfSubject(m.subject);
    if (tenantTokenOf(m.subject) !== tenant || subjectRun !== event.runId) {
      throw new SchemaError('run event', 'runId', `is ${event.runId}, but the event is stored on ${m.subject}`);
    }
    return { ok: true, stored: { event, streamSeq: m.seq, bytes: m.data } };
  } catch (e) {
    return { ok: false, error: toErrorRecord(e, ErrorCode.DecodeFailed) };
  }
}

export const stepKey = (step: string, attempt: number): string => `${step}#${attempt}`;

/**
 * The run's chained digest after one more event: sha256 over the previous digest, the
 * event's stream sequence and its bytes (all as text), so it pins both what was recorded
 * and where. A run's chain starts from '' at `run.started`.
 */
export function chainDigest(prev: string, streamSeq: number, bytes: Uint8Array): string {
  return createHash('sha256')
    .update(`${prev}:${streamSeq}:`)
    .update(Buffer.from(bytes.buffer, bytes.byteOffset, bytes.byteLength).toString('hex'))
    .digest('hex');
}

/**
 * Postgres text cannot hold U+0000 (neither can a jsonb string), and one such character in
 * a worker's error message must not stall a tenant's projection. Replaced, deterministically,
 * so the verifier computes the same value.
 */
export function pgText(s: string): string {
  return s.includes('\u0000') ? s.replaceAll('\u0000', '\uFFFD') : s;
}

function pgJson(v: JsonValue): JsonValue {
  if (typeof v === 'string') return pgText(v);
  if (Array.isArray(v)) return v.map(pgJson);
  if (v !== null && typeof v === 'object') {
    const out: { [k: string]: JsonValue } = {};
    for (const [k, x] of Object.entries(v)) out[pgText(k)] = pgJson(x as JsonValue);
    return out;
  }
  return v;
}

/** Rebuilds a run's view from its rows as stored. */
export function viewFromRows(run: RunRow | undefined, steps: readonly StepRow[], approvals: readonly ApprovalRow[]): RunView {
  // An attempt was started, completed or failed exactly when its row has a start time or
  // ended so. (A timeout alone is not a start: a timer can fire for an attempt no worker
  // ever reported started, and its row then has neither.)
  const anyStarted = run?.status === RunStatus.Running || steps.some((s) => s.startedAt !== null || s.outcome === StepOutcome.Completed || s.outcome === StepOutcome.Failed);
  const status = isRunStatus(run?.status) ? run.status : RunStatus.Pending;
  // Rows projected before progress was kept: what the rows say is open (engine 1 ran one step at a time).
  const stored = run?.progress ?? {
    anyStarted,
    busy: [...new Set(steps.filter((s) => s.outcome === StepOutcome.Scheduled || s.outcome === StepOutcome.Running).map((s) => s.step))],
    waits: Object.fromEntries(approvals.filter((a) => a.status === ApprovalStatus.Waiting).map((a) => [a.step, a.signal === POLICY_APPROVAL ? '' : a.signal])),
    sleeps: [],
    asking: [],
  };
  return {
    run,
    steps: new Map(steps.map((s) => [stepKey(s.step, s.attempt), s])),
    approvals: new Map(approvals.map((a) => [a.step, a])),
    anyStarted,
    progress: { ...stored, status, engine: run?.engine ?? 1 },
  };
}

/** A step row with nothing known yet but its name and when it began. */
function blankStep(tenant: string, runId: string, step: string, attempt: number, at: Date): StepRow {
  return {
    tenant,
    runId,
    step,
    attempt,
    mode: 0,
    pool: '',
    handler: '',
    worker: null,
    sandbox: null,
    outcome: StepOutcome.Scheduled,
    scheduledAt: at,
    startedAt: null,
    finishedAt: null,
    durationMs: null,
    result: null,
    errorCode: null,
    errorMessage: null,
  };
}

/** Folds one event of a run into its view; returns the new view and the rows to write. */
export function projectEvent(tenant: string, view: RunView, stored: StoredEvent): Projected {
  const { event: e, streamSeq, bytes } = stored;
  const at = new Date(e.at);
  const runId = e.runId;
  let run: RunRow | undefined = view.run ? { ...view.run } : undefined;
  let steps = view.steps;
  let approvals = view.approvals;
  const changedSteps: StepRow[] = [];
  const changedApprovals: ApprovalRow[] = [];
  let search: SearchRow[] = [];
  let audit: AuditRow | undefined;

  const putStep = (row: StepRow) => {
    if (steps === view.steps) steps = new Map(steps);
    (steps as Map<string, StepRow>).set(stepKey(row.step, row.attempt), row);
    changedSteps.push(row);
  };
  const putApproval = (row: ApprovalRow) => {
    if (approvals === view.approvals) approvals = new Map(approvals);
    (approvals as Map<string, ApprovalRow>).set(row.step, row);
    changedApprovals.push(row);
  };
  // Only an attempt that was scheduled has a row: its pool, mode and handler come from there.
  const attemptRow = (step: string, attempt: number) => steps.get(stepKey(step, attempt));
  const wasTerminal = run !== undefined && TERMINAL.has(run.status);

  switch (e.type) {
    case 'run.started':
      // The run subject admits one start (appended with expected sequence 0); should another
      // ever appear, the first one stands, as it does for the machine.
      if (run) break;
      run = {
        tenant,
        runId,
        workflow: pgText(e.data.workflow),
        version: e.data.version,
        status: RunStatus.Pending,
        currentStep: null,
        attempts: 0,
        errorCode: null,
        errorMessage: null,
        retries: 0,
        retriedAt: null,
        retriedBy: null,
        startedAt: at,
        updatedAt: at,
        endedAt: null,
        lastSeq: e.seq,
        lastStreamSeq: streamSeq,
        chain: '',
        engine: e.data.engine ?? 1,
        progress: null,
        trace: e.data.trace ? { ...e.data.trace } : null,
        parentRunId: e.data.parent?.runId ?? null,
        parentStep: e.data.parent?.step ?? null,
        continuedFrom: e.data.continuedFrom ?? null,
        continuedAs: null,
      };
      search = Object.entries(e.data.search ?? {}).map(([key, value]) => ({ tenant, key, value: pgText(value), runId }));
      break;
    case 'step.scheduled':
      putStep({
        tenant,
        runId,
        step: e.data.step,
        attempt: e.data.attempt,
        mode: e.data.mode,
        pool: e.data.pool,
        handler: pgText(e.data.handler),
        worker: null,
        // A sandboxed attempt's container has a deterministic name (the claim).
        sandbox: e.data.mode > 0 ? sandboxName(runId, e.data.step, e.data.attempt) : null,
        outcome: StepOutcome.Scheduled,
        scheduledAt: at,
        startedAt: null,
        finishedAt: null,
        durationMs: null,
        result: null,
        errorCode: null,
        errorMessage: null,
      });
      if (run) {
        run.currentStep = e.data.step;
        run.attempts += 1;
      }
      break;
    case 'step.started': {
      const row = attemptRow(e.data.step, e.data.attempt);
      if (row) putStep({ ...row, outcome: StepOutcome.Running, worker: pgText(e.data.worker), sandbox: sandboxOf(e.data, row.sandbox), startedAt: at });
      break;
    }
    case 'step.completed': {
      const row = attemptRow(e.data.step, e.data.attempt);
      if (row) {
        putStep({
          ...row,
          outcome: StepOutcome.Completed,
          worker: pgText(e.data.worker),
          sandbox: sandboxOf(e.data, row.sandbox),
          finishedAt: at,
          durationMs: e.data.durationMs,
          result: pgJson(e.data.result),
        });
      }
      break;
    }
    case 'step.failed': {
      const row = attemptRow(e.data.step, e.data.attempt);
      if (row) {
        putStep({
          ...row,
          outcome: StepOutcome.Failed,
          worker: e.data.worker === undefined ? row.worker : pgText(e.data.worker),
          sandbox: sandboxOf(e.data, row.sandbox),
          finishedAt: at,
          durationMs: e.data.durationMs ?? null,
          errorCode: pgText(e.data.error.code),
          errorMessage: pgText(e.data.error.message),
        });
      }
      break;
    }
    case 'timer.fired': {
      const row = attemptRow(e.data.step, e.data.attempt);
      if (e.data.kind === 'sleep' && row && row.outcome === StepOutcome.Sleeping) {
        putStep({ ...row, outcome: StepOutcome.Completed, finishedAt: at, durationMs: Math.max(0, e.at - (row.scheduledAt?.getTime() ?? e.at)) });
      }
      if (e.data.kind === 'timeout' && row && (row.outcome === StepOutcome.Scheduled || row.outcome === StepOutcome.Running)) {
        putStep({ ...row, outcome: StepOutcome.TimedOut, finishedAt: at, durationMs: row.startedAt ? Math.max(0, e.at - row.startedAt.getTime()) : null });
      }
      // Recorded only when it applied: an approval nobody decided in time fails its run, and a
      // wait for a signal that timed out has moved on (nobody can answer it any more).
      const a = e.data.kind === 'approval' || e.data.kind === 'wait' ? approvals.get(e.data.step) : undefined;
      if (a && a.status === ApprovalStatus.Waiting)
        putApproval({ ...a, status: ApprovalStatus.Expired, decidedAt: at, ...(e.data.kind === 'wait' ? { reason: 'timed out' } : {}) });
      break;
    }
    case 'step.waiting':
      // A retried run asks again: the row starts over (its history is in the audit log).
      putApproval({
        tenant,
        runId,
        step: e.data.step,
        signal: e.data.signal,
        status: ApprovalStatus.Waiting,
        requestedAt: at,
        decidedAt: null,
        decidedBy: null,
        reason: null,
        approvers: null,
        policyVersion: null,
        policies: null,
        expiresAt: null,
      });
      // The run is at this step as much as at a scheduled one.
      if (run) run.currentStep = e.data.step;
      break;
    case 'run.signaled': {
      // Who signaled, and which signal; the payload itself is not audit material.
      const by = e.data.payload !== null && typeof e.data.payload === 'object' && !Array.isArray(e.data.payload) ? e.data.payload['by'] : undefined;
      const actor = typeof by === 'string' ? pgText(by) : null;
      // Engine 1 takes a signal in every wait for it; engine 2 says which wait took it (signal.consumed).
      for (const a of run?.engine === 1 || run === undefined ? [...approvals.values()] : []) {
        if (a.status === ApprovalStatus.Waiting && a.signal === e.data.name) putApproval({ ...a, status: ApprovalStatus.Approved, decidedAt: at, decidedBy: actor });
      }
      audit = { tenant, runId, seq: e.seq, kind: AuditKind.Signaled, actor, detail: { name: e.data.name }, at, streamSeq };
      break;
    }
    case 'approval.requested':
      // A policy wants a person before this step may run.
      putApproval({
        tenant,
        runId,
        step: e.data.step,
        signal: POLICY_APPROVAL,
        status: ApprovalStatus.Waiting,
        requestedAt: at,
        decidedAt: null,
        decidedBy: null,
        reason: null,
        approvers: pgText(e.data.approvers),
        policyVersion: e.data.version,
        policies: pgText(e.data.policies.join(', ')),
        expiresAt: new Date(at.getTime() + e.data.expiresInMs),
      });
      if (run) run.currentStep = e.data.step;
      break;
    case 'policy.requested':
      // The question is on the run; its answer (policy.decided) is what the audit log keeps.
      break;
    case 'credential.decided':
      audit = {
        tenant,
        runId,
        seq: e.seq,
        kind: AuditKind.CredentialDecided,
        actor: 'policy',
        detail: { step: e.data.step, attempt: e.data.attempt, name: e.data.name, decision: e.data.decision, version: e.data.version, policies: e.data.policies },
        at,
        streamSeq,
      };
      break;
    case 'policy.decided':
      audit = {
        tenant,
        runId,
        seq: e.seq,
        kind: AuditKind.PolicyDecided,
        actor: 'policy',
        detail: { step: e.data.step, attempt: e.data.attempt, decision: e.data.decision, version: e.data.version, policies: e.data.policies },
        at,
        streamSeq,
      };
      break;
    case 'approval.decided': {
      const { step, decision, by } = e.data;
      const reason = e.data.reason === undefined ? null : pgText(e.data.reason);
      const a = approvals.get(step);
      if (a && a.status === ApprovalStatus.Waiting) {
        putApproval({ ...a, status: decision === 'approve' ? ApprovalStatus.Approved : ApprovalStatus.Denied, decidedAt: at, decidedBy: pgText(by), reason });
      }
      audit = { tenant, runId, seq: e.seq, kind: AuditKind.ApprovalDecided, actor: pgText(by), detail: { step, decision, reason }, at, streamSeq };
      break;
    }
    case 'run.retried': {
      const by = pgText(e.data.by);
      const reason = e.data.reason === undefined ? null : pgText(e.data.reason);
      if (run) {
        // The run is open again: the failure it ended with is history (events, audit log).
        audit = { tenant, runId, seq: e.seq, kind: AuditKind.Retried, actor: by, detail: { reason, errorCode: run.errorCode }, at, streamSeq };
        run.retries += 1;
        run.retriedAt = at;
        run.retriedBy = by;
        run.errorCode = null;
        run.errorMessage = null;
        run.endedAt = null;
      } else {
        audit = { tenant, runId, seq: e.seq, kind: AuditKind.Retried, actor: by, detail: { reason, errorCode: null }, at, streamSeq };
      }
      break;
    }
    case 'run.cancel-requested':
      // Who asked is on cancels recorded since cancels are signed; earlier ones name nobody.
      audit = {
        tenant,
        runId,
        seq: e.seq,
        kind: AuditKind.CancelRequested,
        actor: e.data.by === undefined ? null : pgText(e.data.by),
        detail: { reason: e.data.reason === undefined ? null : pgText(e.data.reason) },
        at,
        streamSeq,
      };
      break;
    case 'run.failed':
      if (run && !wasTerminal) {
        run.errorCode = pgText(e.data.error.code);
        run.errorMessage = pgText(e.data.error.message);
      }
      break;
    case 'signal.consumed': {
      const a = approvals.get(e.data.step);
      if (a && a.status === ApprovalStatus.Waiting)
        putApproval({ ...a, status: ApprovalStatus.Approved, decidedAt: at, decidedBy: e.data.by === undefined ? null : pgText(e.data.by) });
      break;
    }
    case 'timer.scheduled':
      // A durable sleep is a step of the run: it shows as one, sleeping until its timer fires.
      if (e.data.kind === 'sleep') {
        putStep({ ...blankStep(tenant, runId, e.data.step, e.data.attempt, at), handler: 'sleep', outcome: StepOutcome.Sleeping });
        if (run) run.currentStep = e.data.step;
      }
      break;
    case 'step.cancelled': {
      const row = attemptRow(e.data.step, e.data.attempt);
      if (row && (row.outcome === StepOutcome.Scheduled || row.outcome === StepOutcome.Running || row.outcome === StepOutcome.Sleeping)) {
        putStep({ ...row, outcome: StepOutcome.Cancelled, finishedAt: at, errorCode: 'cancelled', errorMessage: pgText(e.data.reason ?? 'cancelled') });
      }
      const a = approvals.get(e.data.step);
      if (a && a.status === ApprovalStatus.Waiting) putApproval({ ...a, status: ApprovalStatus.Expired, decidedAt: at, reason: pgText(e.data.reason ?? 'cancelled') });
      break;
    }
    case 'step.skipped':
      putStep({ ...blankStep(tenant, runId, e.data.step, 1, at), handler: 'skipped', outcome: StepOutcome.Skipped, finishedAt: at });
      break;
    case 'child.started':
      // A child step is a step of the run: its handler names the child's workflow (`child:<id>`)
      // and its worker column the child run, which is the link readers follow.
      putStep({
        ...blankStep(tenant, runId, e.data.step, e.data.attempt, at),
        pool: 'child',
        handler: pgText(`${CHILD_HANDLER}${e.data.workflow}`),
        worker: e.data.child,
        outcome: StepOutcome.Running,
        startedAt: at,
      });
      if (run) {
        run.currentStep = e.data.step;
        run.attempts += 1;
      }
      break;
    case 'child.completed':
    case 'child.failed': {
      const row = attemptRow(e.data.step, e.data.attempt);
      if (!row) break;
      const took = row.startedAt ? Math.max(0, at.getTime() - row.startedAt.getTime()) : null;
      if (e.type === 'child.completed') putStep({ ...row, outcome: StepOutcome.Completed, finishedAt: at, durationMs: took, result: pgJson(e.data.result) });
      else putStep({ ...row, outcome: StepOutcome.Failed, finishedAt: at, durationMs: took, errorCode: pgText(e.data.error.code), errorMessage: pgText(e.data.error.message) });
      break;
    }
    case 'run.continued':
      // The forward link: the run's row names its continuation, as the continuation's names it.
      if (run) run.continuedAs = e.data.next;
      break;
    case 'patch.marked':
      // On the record (the events index, the timeline); no row of its own.
      break;
    case 'branch.taken':
    case 'loop.iteration':
    case 'fanout.started':
      // On the record (the events index, the timeline); no row of their own.
      break;
    case 'run.completed':
    case 'run.cancelled':
      break;
  }
  // A run that has ended can be asked nothing: whatever it still waited for is closed, so the
  // approvals list never offers a finished run (engine 1 could end past a wait its signal
  // came too early for).
  if (e.type === 'run.completed' || e.type === 'run.failed' || e.type === 'run.cancelled') {
    for (const a of [...approvals.values()]) if (a.status === ApprovalStatus.Waiting) putApproval({ ...a, status: ApprovalStatus.Expired, decidedAt: at, reason: 'run ended' });
  }

  const anyStarted = view.anyStarted || e.type === 'step.started' || e.type === 'step.completed' || e.type === 'step.failed';
  const progress = progressAfter(view.progress, e);
  if (run) {
    run.status = progress.status;
    const { status: _s, engine: _e, ...open } = progress;
    run.progress = open;
    if (!wasTerminal && TERMINAL.has(run.status)) run.endedAt = at;
    run.lastSeq = e.seq;
    run.lastStreamSeq = streamSeq;
    run.updatedAt = at;
    run.chain = chainDigest(run.chain, streamSeq, bytes);
  }
  return {
    view: { run, steps, approvals, anyStarted, progress },
    event: { tenant, runId, seq: e.seq, type: e.type, at, streamSeq, causationId: pgText(e.causationId), ...stepOf(e.data) },
    run,
    steps: changedSteps,
    approvals: changedApprovals,
    search,
    audit,
  };
}

/** The step and attempt an event's data names (any event type that has them), for the event index. */
function stepOf(data: object): { step: string | null; attempt: number | null } {
  const d = data as { step?: unknown; attempt?: unknown };
  return { step: typeof d.step === 'string' ? pgText(d.step) : null, attempt: typeof d.attempt === 'number' && Number.isSafeInteger(d.attempt) ? d.attempt : null };
}

/** Folds a whole run from nothing, in stream order: what its rows must be. */
export function projectRun(tenant: string, events: readonly StoredEvent[]): { view: RunView; rows: Projected[] } {
  let view = EMPTY_VIEW;
  const rows: Projected[] = [];
  for (const s of events) {
    const p = projectEvent(tenant, view, s);
    rows.push(p);
    view = p.view;
  }
  return { view, rows };
}

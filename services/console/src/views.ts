/**
 * Projection rows to the API's shapes (`api-types.ts`): times as ISO strings, step modes as
 * words, steps grouped into a trace. Pure.
 */
import type { ApprovalRow, AuditRow, EventIndexRow, PolicyVersionRow, PolicyVersionSummary as PolicyVersionSummaryRow, RunRow, StepRow, WorkerRow } from '@capstan/kit';
import { CHILD_HANDLER } from '@capstan/schemas';
import {
  STEP_MODES,
  WORKER_STALE_MS,
  type Approval,
  type AuditEntry,
  type JsonValue,
  type LeaseEntry,
  type PolicyDecision,
  type PolicyVersionResponse,
  type PolicyVersionSummary,
  type RunChild,
  type RunParent,
  type RunStatusName,
  type RunSummary,
  type StepAttempt,
  type StepMode,
  type TimelineEvent,
  type TraceStep,
  type WorkerInfo,
} from './api-types.js';

const iso = (d: Date) => d.toISOString();
const isoOrNull = (d: Date | null | undefined) => (d ? d.toISOString() : null);

export function toRunSummary(r: RunRow): RunSummary {
  return {
    tenant: r.tenant,
    runId: r.runId,
    workflow: r.workflow,
    version: r.version,
    status: r.status as RunStatusName,
    currentStep: r.currentStep,
    attempts: r.attempts,
    errorCode: r.errorCode,
    errorMessage: r.errorMessage,
    startedAt: iso(r.startedAt),
    updatedAt: iso(r.updatedAt),
    endedAt: isoOrNull(r.endedAt),
    lastSeq: r.lastSeq,
    retries: r.retries,
    retriedAt: isoOrNull(r.retriedAt),
    retriedBy: r.retriedBy,
  };
}

/** The child runs among a run's step attempts: a child step's row names the child's workflow and, as its worker, the child run. */
export function childrenOf(steps: readonly StepRow[]): RunChild[] {
  return steps.flatMap((s) =>
    s.handler.startsWith(CHILD_HANDLER) && s.worker !== null
      ? [{ step: s.step, attempt: s.attempt, workflow: s.handler.slice(CHILD_HANDLER.length), runId: s.worker, outcome: s.outcome }]
      : [],
  );
}

/** Where a run came from: the parent that started it, or nobody. */
export function parentOf(r: RunRow): RunParent | null {
  return r.parentRunId ? { runId: r.parentRunId, step: r.parentStep } : null;
}

export function stepMode(mode: number): StepMode {
  return STEP_MODES[mode] ?? 'inline';
}

export function toStepAttempt(s: StepRow): StepAttempt {
  return {
    step: s.step,
    attempt: s.attempt,
    mode: stepMode(s.mode),
    pool: s.pool,
    handler: s.handler,
    worker: s.worker,
    sandbox: s.sandbox,
    outcome: s.outcome,
    scheduledAt: iso(s.scheduledAt),
    startedAt: isoOrNull(s.startedAt),
    finishedAt: isoOrNull(s.finishedAt),
    durationMs: s.durationMs,
    result: (s.result ?? null) as JsonValue | null,
    errorCode: s.errorCode,
    errorMessage: s.errorMessage,
  };
}

export function toTimelineEvent(e: EventIndexRow): TimelineEvent {
  return { seq: e.seq, type: e.type, at: iso(e.at), streamSeq: e.streamSeq, causationId: e.causationId, step: e.step, attempt: e.attempt };
}

export function toApproval(a: ApprovalRow, workflow: string | null): Approval {
  return {
    tenant: a.tenant,
    runId: a.runId,
    step: a.step,
    signal: a.signal,
    status: a.status,
    requestedAt: iso(a.requestedAt),
    decidedAt: isoOrNull(a.decidedAt),
    decidedBy: a.decidedBy,
    reason: a.reason,
    workflow,
  };
}

export function toWorkerInfo(w: WorkerRow, now: number): WorkerInfo {
  const silentForMs = Math.max(0, now - w.lastSeenAt.getTime());
  return {
    workerId: w.workerId,
    pools: Array.isArray(w.pools) ? w.pools.filter((p): p is string => typeof p === 'string') : [],
    running: w.running,
    lastSeenAt: iso(w.lastSeenAt),
    silentForMs,
    stale: silentForMs > WORKER_STALE_MS,
    admission: w.admission,
    admissionBy: w.admissionBy,
    admissionAt: isoOrNull(w.admissionAt),
    admissionReason: w.admissionReason,
  };
}

export function toAuditEntry(a: AuditRow): AuditEntry {
  return { id: a.id, runId: a.runId, seq: a.seq, kind: a.kind, actor: a.actor, detail: a.detail as JsonValue, at: iso(a.at), streamSeq: a.streamSeq };
}

/** Attempts grouped by step, steps in the order first scheduled, timed from the run's start. */
export function buildTrace(runStartedAt: string, attempts: readonly StepAttempt[]): TraceStep[] {
  const start = Date.parse(runStartedAt);
  const byStep = new Map<string, StepAttempt[]>();
  const sorted = [...attempts].sort((a, b) => Date.parse(a.scheduledAt) - Date.parse(b.scheduledAt) || a.attempt - b.attempt);
  for (const a of sorted) byStep.set(a.step, [...(byStep.get(a.step) ?? []), a]);
  return [...byStep.entries()].map(([step, xs]) => {
    const first = xs[0] as StepAttempt;
    const last = xs.at(-1) as StepAttempt;
    const firstAt = Date.parse(first.scheduledAt);
    return {
      step,
      mode: last.mode,
      pool: last.pool,
      handler: last.handler,
      outcome: last.outcome,
      attempts: xs,
      offsetMs: Math.max(0, firstAt - start),
      spanMs: last.finishedAt ? Math.max(0, Date.parse(last.finishedAt) - firstAt) : null,
      busyMs: xs.reduce((n, a) => n + (a.durationMs ?? 0), 0),
    };
  });
}

// Audit details are JSON written by other services; each field is read for its type and
// anything else is left out, so an odd row shows as less, never as a failed page.
type Detail = Record<string, unknown>;
const detailOf = (d: unknown): Detail => (typeof d === 'object' && d !== null && !Array.isArray(d) ? (d as Detail) : {});
const strOf = (v: unknown): string | null => (typeof v === 'string' ? v : null);
const intOf = (v: unknown): number | null => (typeof v === 'number' && Number.isSafeInteger(v) ? v : null);
const strsOf = (v: unknown): string[] => (Array.isArray(v) ? v.filter((x): x is string => typeof x === 'string') : []);

/**
 * A `policy.decided` / `credential.decided` audit row as a decision. Who may approve is in
 * the row when it was recorded there, else in the step's policy approval.
 */
export function toPolicyDecision(a: AuditRow, policyApprovals: readonly ApprovalRow[]): PolicyDecision {
  const d = detailOf(a.detail);
  const step = strOf(d['step']) ?? '';
  const approval = policyApprovals.find((x) => x.step === step);
  return {
    kind: a.kind === 'credential.decided' ? 'credential.decided' : 'policy.decided',
    step,
    attempt: intOf(d['attempt']),
    decision: strOf(d['decision']) ?? 'unknown',
    version: intOf(d['version']),
    policies: strsOf(d['policies']),
    approvers: strOf(d['approvers']) ?? (strOf(d['decision']) === 'needs-approval' ? (approval?.approvers ?? null) : null),
    credential: strOf(d['name']),
    at: iso(a.at),
  };
}

/** A `lease.*` audit row: key names, lease id, step; never a value (the rows hold none). */
export function toLeaseEntry(a: AuditRow): LeaseEntry {
  const d = detailOf(a.detail);
  return {
    kind: a.kind,
    keys: strsOf(d['keys']),
    leaseId: strOf(d['leaseId']),
    step: strOf(d['step']),
    attempt: intOf(d['attempt']),
    code: strOf(d['code']) ?? strOf(d['reason']),
    at: iso(a.at),
    actor: a.actor,
  };
}

export function toPolicyVersionSummary(p: PolicyVersionSummaryRow): PolicyVersionSummary {
  return { version: p.version, sha256: p.sha256, by: p.by, reason: p.reason, at: iso(p.at) };
}

export function toPolicyVersion(p: PolicyVersionRow): PolicyVersionResponse {
  return { ...toPolicyVersionSummary(p), text: p.text };
}

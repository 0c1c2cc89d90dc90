/**
 * A run's trace for the console's waterfall, from the projections: the event index folded
 * into hops by the same rules the orchestrator exports spans with (kit's `HopFold`), then
 * each step attempt opened up into its hops from its projected row and audit rows: queued
 * (scheduled → a worker had it), on the worker, in the sandbox's tool, and the lease issued
 * and redeemed for it. Pure.
 */
import { foldHops, HopStatus, type Hop, type HopInput } from '@capstan/kit';
import type { EventIndexRow } from '@capstan/kit';
import type { Approval, LeaseEntry, PolicyDecision, StepAttempt, TraceHop } from './api-types.js';

export interface HopSources {
  readonly events: readonly EventIndexRow[];
  readonly steps: readonly StepAttempt[];
  readonly decisions: readonly PolicyDecision[];
  readonly leases: readonly LeaseEntry[];
  readonly approvals: readonly Approval[];
  readonly workflow: string;
  readonly version: number;
  /** The run's error code, when it failed (the index does not keep it). */
  readonly errorCode: string | null;
}

const iso = (ms: number) => new Date(ms).toISOString();

/** The index keeps an event's type, time, step and attempt: the fold reads what it has. */
function inputOf(e: EventIndexRow): HopInput {
  return { seq: e.seq, type: e.type, at: e.at.getTime(), data: { ...(e.step !== null ? { step: e.step } : {}), ...(e.attempt !== null ? { attempt: e.attempt } : {}) } };
}

/** Toolrun time a sandboxed attempt reports in its result (`durationMs` of the command). */
function toolMs(result: unknown): number | null {
  const r = result as { durationMs?: unknown; sandbox?: unknown } | null;
  return r && typeof r.durationMs === 'number' && typeof r.sandbox === 'string' ? r.durationMs : null;
}

export function buildHops(src: HopSources, now: number): TraceHop[] {
  const folded = foldHops(src.events.map(inputOf));
  const out: TraceHop[] = [];
  const add = (h: Omit<TraceHop, 'durationMs' | 'depth'> & { depth?: number }) => {
    const end = h.end === null ? null : Date.parse(h.end);
    out.push({ ...h, durationMs: (end ?? now) - Date.parse(h.start), depth: h.depth ?? 0 });
  };
  const status = (h: Hop) => h.status;
  for (const h of folded) {
    let name = h.name;
    let detail: string | null = null;
    let st: string = status(h);
    let error = h.error ?? null;
    let end = h.end;
    if (h.kind === 'run' && h.key === 'run') {
      name = `run ${src.workflow}@${src.version}`;
      if (error && src.errorCode) error = src.errorCode;
    }
    if (h.kind === 'policy') {
      // The index has no decision: the audit row of policy.decided has it.
      const [, step, attempt] = h.key.split(':');
      const d = src.decisions.find((x) => x.kind === 'policy.decided' && x.step === step && String(x.attempt) === attempt);
      if (d) {
        detail = `${d.decision}${d.version ? ` under version ${d.version}` : ''}${d.policies.length ? ` (${d.policies.join(', ')})` : ''}`;
        if (d.decision === 'deny') [st, error] = [HopStatus.Error, 'policy_denied'];
      }
    }
    if (h.kind === 'wait' || h.kind === 'approval') {
      const step = h.key.split(':')[1];
      const a = src.approvals.find((x) => x.step === step);
      if (a?.decidedAt && (h.status === HopStatus.Ended || h.status === HopStatus.Open)) {
        end = Date.parse(a.decidedAt);
        st = a.status === 'denied' || a.status === 'expired' ? HopStatus.Error : HopStatus.Ok;
      }
      if (a?.decidedBy) detail = `${a.status} by ${a.decidedBy}`;
    }
    add({ id: h.key, parent: h.parent ?? null, kind: h.kind, name, start: iso(h.start), end: end === undefined ? null : iso(end), status: st, error, detail });

    if (h.kind !== 'step') continue;
    // The attempt's own hops, from its projected row.
    const [, step, attempt] = h.key.split(':');
    const a = src.steps.find((x) => x.step === step && String(x.attempt) === attempt);
    if (!a) continue;
    const scheduled = Date.parse(a.scheduledAt);
    const finished = a.finishedAt ? Date.parse(a.finishedAt) : null;
    const ran = a.startedAt ? Date.parse(a.startedAt) : finished !== null && a.durationMs !== null ? finished - a.durationMs : null;
    const id = (k: string) => `${h.key}:${k}`;
    add({
      id: id('queued'),
      parent: h.key,
      kind: 'queued',
      name: 'queued',
      start: a.scheduledAt,
      end: ran !== null ? iso(Math.max(scheduled, ran)) : finished !== null ? iso(finished) : null,
      status: ran !== null || finished !== null ? HopStatus.Ok : HopStatus.Open,
      error: null,
      detail: `pool ${a.pool}`,
    });
    if (ran === null) continue;
    const failed = a.outcome === 'failed' || a.outcome === 'timed_out';
    add({
      id: id('worker'),
      parent: h.key,
      kind: 'worker',
      name: `worker ${a.worker ?? ''}`.trim(),
      start: iso(ran),
      end: finished !== null ? iso(finished) : null,
      status: finished === null ? HopStatus.Open : failed ? HopStatus.Error : HopStatus.Ok,
      error: failed ? (a.errorCode ?? a.outcome) : null,
      detail: a.mode === 'inline' ? `handler ${a.handler}` : `${a.mode}, handler ${a.handler}`,
    });
    for (const l of src.leases.filter(
      (x) => x.step === step && String(x.attempt) === attempt && (x.kind === 'lease.issued' || x.kind === 'lease.redeemed' || x.kind === 'lease.denied'),
    )) {
      add({
        id: id(`${l.kind}:${l.at}`),
        parent: id('worker'),
        kind: 'lease',
        name: l.kind.replace('.', ' '),
        start: l.at,
        end: l.at,
        status: l.kind === 'lease.denied' ? HopStatus.Error : HopStatus.Ok,
        error: l.kind === 'lease.denied' ? l.code : null,
        detail: l.keys.join(', '),
      });
    }
    const tool = toolMs(a.result);
    if (tool !== null && finished !== null) {
      // The sandbox reports how long the command ran; it ended before the worker reported.
      add({
        id: id('tool'),
        parent: id('worker'),
        kind: 'tool',
        name: 'tool call',
        start: iso(Math.max(ran, finished - tool)),
        end: iso(finished),
        status: failed ? HopStatus.Error : HopStatus.Ok,
        error: null,
        detail: a.sandbox ? `in ${a.sandbox}` : null,
      });
    }
  }
  // Parents before children, each subtree in start order.
  const byParent = new Map<string | null, TraceHop[]>();
  for (const h of out) byParent.set(h.parent, [...(byParent.get(h.parent) ?? []), h]);
  const ordered: TraceHop[] = [];
  const walk = (parent: string | null, depth: number) => {
    for (const h of (byParent.get(parent) ?? []).sort((x, y) => Date.parse(x.start) - Date.parse(y.start))) {
      ordered.push({ ...h, depth });
      walk(h.id, depth + 1);
    }
  };
  walk(null, 0);
  return ordered;
}

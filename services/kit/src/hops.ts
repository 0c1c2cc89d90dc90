/**
 * A run's hops, derived from what the run recorded: the run itself, each step attempt from
 * its scheduling to its result, each policy question from asking to answer, each wait for a
 * person or a signal, each retry backoff. Pure: the same events give the same hops, with
 * the same keys (and so the same span ids, see `hopSpanId`), wherever they are folded.
 *
 * The orchestrator folds a run's events as it records them and exports each finished hop as
 * a span; the console folds the event index to draw the run's waterfall. Nothing here runs
 * a workflow: hops come from records, never from replayed code.
 *
 * Event types are handled by {@link HOP_RULES}; a type with no rule (a new one) shows as an
 * instant on its run, so a new event type needs a rule only to get a duration.
 */

/** An event as the fold needs it: its place, type, time and data (or the part of it an index keeps). */
export interface HopInput {
  readonly seq: number;
  readonly type: string;
  /** Epoch milliseconds (the event's `at`). */
  readonly at: number;
  readonly data: Readonly<Record<string, unknown>>;
}

export const HopKind = {
  Run: 'run',
  Step: 'step',
  Policy: 'policy',
  Approval: 'approval',
  Wait: 'wait',
  Backoff: 'backoff',
  /** A durable sleep (engine 2). */
  Sleep: 'sleep',
  Event: 'event',
} as const;
export type HopKind = (typeof HopKind)[keyof typeof HopKind];

export const HopStatus = { Ok: 'ok', Error: 'error', Open: 'open', Ended: 'ended' } as const;
export type HopStatus = (typeof HopStatus)[keyof typeof HopStatus];

export interface Hop {
  /** Stable within the run (`run`, `step:<step>:<attempt>`, …): with the run id it names the hop's span. */
  readonly key: string;
  /** The enclosing hop; absent for the run's root. */
  readonly parent?: string;
  readonly kind: HopKind;
  readonly name: string;
  readonly start: number;
  /** Absent while the hop is open. */
  readonly end?: number;
  /** `ok`, `error` (see `error`), `open`, or `ended` (the run ended around it). */
  readonly status: HopStatus;
  readonly error?: string;
  readonly attributes: Readonly<Record<string, string | number | boolean>>;
  /** Sequences of the events that opened and closed it. */
  readonly startSeq: number;
  readonly endSeq?: number;
}

interface OpenHop {
  key: string;
  parent?: string;
  kind: HopKind;
  name: string;
  start: number;
  startSeq: number;
  attributes: Record<string, string | number | boolean>;
}

const ROOT = 'run';
const str = (v: unknown): string | undefined => (typeof v === 'string' ? v : undefined);
const num = (v: unknown): number | undefined => (typeof v === 'number' ? v : undefined);
const stepKey = (kind: string, d: Readonly<Record<string, unknown>>) => `${kind}:${str(d['step']) ?? '?'}:${num(d['attempt']) ?? 0}`;
const label = (d: Readonly<Record<string, unknown>>) => `${str(d['step']) ?? '?'}#${num(d['attempt']) ?? '?'}`;

/** What a rule may do while folding one event. */
export interface HopFoldOps {
  open(h: { key: string; kind: HopKind; name: string; parent?: string; attributes?: Record<string, string | number | boolean> }): void;
  /** Closes the hop `key` if it is open; returns whether it was. */
  close(key: string, status?: HopStatus, error?: string, attributes?: Record<string, string | number | boolean>): boolean;
  /** Open hops whose key starts with `prefix`. */
  openKeys(prefix: string): string[];
  /** Adds attributes to an open hop. */
  annotate(key: string, attributes: Record<string, string | number | boolean>): void;
  /** A zero-length hop at this event. */
  instant(name: string, parent?: string, attributes?: Record<string, string | number | boolean>, error?: string): void;
  /** The hop this event belongs to (its checkpoint's parent); default the run. */
  belongsTo(key: string): void;
  /** Closes the run's current segment and every hop still open. */
  endRun(status: HopStatus, error?: string): void;
}

type HopRule = (e: HopInput, f: HopFoldOps) => void;

const errorCodeOf = (d: Readonly<Record<string, unknown>>): string | undefined => str((d['error'] as Record<string, unknown> | undefined)?.['code']);

/**
 * How each event type moves the hops. A type without a rule is an instant on its run;
 * `run.retried` and `run.signaled` are folded by {@link HopFold} itself (they need its state).
 */
export const HOP_RULES: Readonly<Record<string, HopRule>> = {
  'run.started': (e, f) => {
    const wf = str(e.data['workflow']);
    const v = num(e.data['version']);
    f.open({
      key: ROOT,
      kind: HopKind.Run,
      name: wf ? `run ${wf}@${v ?? '?'}` : 'run',
      attributes: { ...(wf ? { 'capstan.workflow': wf } : {}), ...(v !== undefined ? { 'capstan.workflow.version': v } : {}) },
    });
  },
  'step.scheduled': (e, f) => {
    const d = e.data;
    const attrs: Record<string, string | number | boolean> = { 'capstan.step': str(d['step']) ?? '?', 'capstan.attempt': num(d['attempt']) ?? 0 };
    for (const [k, a] of [
      ['mode', 'capstan.mode'],
      ['pool', 'capstan.pool'],
      ['handler', 'capstan.handler'],
    ] as const) {
      const v = d[k];
      if (typeof v === 'string' || typeof v === 'number') attrs[a] = v;
    }
    f.open({ key: stepKey('step', d), kind: HopKind.Step, name: `step ${label(d)}`, attributes: attrs });
  },
  'step.started': (e, f) => {
    const key = stepKey('step', e.data);
    const worker = str(e.data['worker']);
    if (worker) f.annotate(key, { 'capstan.worker': worker });
    f.belongsTo(key);
  },
  'step.completed': (e, f) => {
    const key = stepKey('step', e.data);
    const worker = str(e.data['worker']);
    f.close(key, HopStatus.Ok, undefined, worker ? { 'capstan.worker': worker } : {});
    f.belongsTo(key);
  },
  'step.failed': (e, f) => {
    const key = stepKey('step', e.data);
    f.close(key, HopStatus.Error, errorCodeOf(e.data) ?? 'step_failed');
    f.belongsTo(key);
  },
  'policy.requested': (e, f) => {
    const key = stepKey('policy', e.data);
    // A reminder asks again: the question stays open from its first asking.
    if (f.openKeys(key).length === 0) f.open({ key, kind: HopKind.Policy, name: `policy ${label(e.data)}`, attributes: { 'capstan.step': str(e.data['step']) ?? '?' } });
  },
  'policy.decided': (e, f) => {
    const key = stepKey('policy', e.data);
    const decision = str(e.data['decision']) ?? '?';
    f.close(key, decision === 'deny' ? HopStatus.Error : HopStatus.Ok, decision === 'deny' ? 'policy_denied' : undefined, {
      'capstan.policy.decision': decision,
      'capstan.policy.version': num(e.data['version']) ?? 0,
    });
    f.belongsTo(key);
  },
  'approval.requested': (e, f) => {
    const step = stepKey('step', e.data);
    // A credential's approval belongs to its running step; a step's own to the run.
    const parent = f.openKeys(step).length > 0 ? step : ROOT;
    f.open({
      key: stepKey('approval', e.data),
      parent,
      kind: HopKind.Approval,
      name: `approval ${label(e.data)}`,
      attributes: { 'capstan.approvers': str(e.data['approvers']) ?? '' },
    });
  },
  'approval.decided': (e, f) => {
    const step = str(e.data['step']) ?? '?';
    const decision = str(e.data['decision']);
    const status = decision === 'deny' ? HopStatus.Error : HopStatus.Ok;
    const error = decision === 'deny' ? 'approval_denied' : undefined;
    const by = str(e.data['by']);
    const attrs = { ...(decision ? { 'capstan.approval.decision': decision } : {}), ...(by ? { 'capstan.approval.by': by } : {}) };
    for (const key of [...f.openKeys(`approval:${step}:`), ...f.openKeys(`wait:${step}`)]) {
      f.close(key, status, error, attrs);
      f.belongsTo(key);
    }
  },
  'step.waiting': (e, f) => {
    const step = str(e.data['step']) ?? '?';
    const signal = str(e.data['signal']) ?? '?';
    f.open({ key: `wait:${step}`, kind: HopKind.Wait, name: `wait ${step} (${signal})`, attributes: { 'capstan.step': step, 'capstan.signal': signal } });
  },
  'timer.scheduled': (e, f) => {
    const step = str(e.data['step']) ?? '?';
    if (e.data['kind'] === 'retry') f.open({ key: stepKey('backoff', e.data), kind: HopKind.Backoff, name: `backoff ${label(e.data)}`, attributes: { 'capstan.step': step } });
    else if (e.data['kind'] === 'sleep') f.open({ key: `sleep:${step}`, kind: HopKind.Sleep, name: `sleep ${step}`, attributes: { 'capstan.step': step } });
  },
  'timer.fired': (e, f) => {
    const kind = e.data['kind'];
    if (kind === 'retry') {
      f.close(stepKey('backoff', e.data));
      f.belongsTo(stepKey('backoff', e.data));
    } else if (kind === 'timeout') {
      if (f.close(stepKey('step', e.data), HopStatus.Error, 'step_timeout')) f.belongsTo(stepKey('step', e.data));
    } else if (kind === 'approval') {
      if (f.close(stepKey('approval', e.data), HopStatus.Error, 'approval_expired')) f.belongsTo(stepKey('approval', e.data));
    } else if (kind === 'policy') {
      f.belongsTo(stepKey('policy', e.data));
    } else if (kind === 'sleep') {
      const key = `sleep:${str(e.data['step']) ?? '?'}`;
      if (f.close(key)) f.belongsTo(key);
    } else if (kind === 'wait') {
      const key = `wait:${str(e.data['step']) ?? '?'}`;
      if (f.close(key, HopStatus.Error, 'wait_timeout')) f.belongsTo(key);
    }
  },
  // Engine 2: a wait that took its signal, and attempts the run no longer wants.
  'signal.consumed': (e, f) => {
    const key = `wait:${str(e.data['step']) ?? '?'}`;
    const signal = str(e.data['signal']);
    if (f.close(key, HopStatus.Ok, undefined, signal ? { 'capstan.signal': signal } : {})) f.belongsTo(key);
  },
  'step.cancelled': (e, f) => {
    const key = stepKey('step', e.data);
    if (f.close(key, HopStatus.Error, 'cancelled')) f.belongsTo(key);
  },
  'credential.decided': (e, f) => {
    const step = stepKey('step', e.data);
    const decision = str(e.data['decision']) ?? '?';
    f.instant(
      `credential ${str(e.data['name']) ?? '?'}: ${decision}`,
      f.openKeys(step).length > 0 ? step : ROOT,
      { 'capstan.policy.decision': decision, 'capstan.policy.version': num(e.data['version']) ?? 0 },
      decision === 'deny' ? 'policy_denied' : undefined,
    );
    f.belongsTo(step);
  },
  'run.completed': (_e, f) => f.endRun(HopStatus.Ok),
  'run.failed': (e, f) => f.endRun(HopStatus.Error, errorCodeOf(e.data) ?? 'run_failed'),
  'run.cancelled': (_e, f) => f.endRun(HopStatus.Error, 'cancelled'),
};

/**
 * Folds a run's events into hops, event by event. `add` returns the hops the event closed
 * (to export them as they finish); `open()` what is still running.
 */
export class HopFold {
  private readonly hops = new Map<string, OpenHop>();
  private readonly signals = new Map<string, string>();
  private segment = ROOT;
  private retries = 0;
  /** Sequence of the last event folded. */
  seq = 0;

  /** Folds one event; returns the hops it finished and the key of the hop it belongs to. */
  add(e: HopInput): { finished: Hop[]; belongsTo: string } {
    const finished: Hop[] = [];
    let belongs = ROOT;
    this.seq = e.seq;
    const hops = this.hops;
    const finish = (h: OpenHop, status: HopStatus, error?: string, attributes?: Record<string, string | number | boolean>) => {
      hops.delete(h.key);
      finished.push({
        key: h.key,
        ...(h.parent !== undefined ? { parent: h.parent } : {}),
        kind: h.kind,
        name: h.name,
        start: h.start,
        end: Math.max(h.start, e.at),
        status,
        ...(error !== undefined ? { error } : {}),
        attributes: attributes ? { ...h.attributes, ...attributes } : h.attributes,
        startSeq: h.startSeq,
        endSeq: e.seq,
      });
    };
    const ops: HopFoldOps = {
      open: (h) => {
        if (hops.has(h.key)) return;
        const parent = h.key === ROOT ? undefined : (h.parent ?? ROOT);
        hops.set(h.key, {
          key: h.key,
          ...(parent !== undefined ? { parent } : {}),
          kind: h.kind,
          name: h.name,
          start: e.at,
          startSeq: e.seq,
          attributes: { ...(h.attributes ?? {}) },
        });
        belongs = h.key;
        if (h.kind === HopKind.Wait) this.signals.set(h.key, String(h.attributes?.['capstan.signal'] ?? ''));
      },
      close: (key, status = HopStatus.Ok, error, attributes) => {
        const h = hops.get(key);
        if (!h) return false;
        finish(h, status, error, attributes);
        this.signals.delete(key);
        return true;
      },
      openKeys: (prefix) => [...hops.keys()].filter((k) => k.startsWith(prefix)),
      annotate: (key, attributes) => {
        const h = hops.get(key);
        if (h) Object.assign(h.attributes, attributes);
      },
      instant: (name, parent = ROOT, attributes = {}, error) => {
        finished.push({
          key: `event:${e.seq}`,
          parent,
          kind: HopKind.Event,
          name,
          start: e.at,
          end: e.at,
          status: error ? HopStatus.Error : HopStatus.Ok,
          ...(error ? { error } : {}),
          attributes,
          startSeq: e.seq,
          endSeq: e.seq,
        });
      },
      belongsTo: (key) => {
        belongs = key;
      },
      endRun: (status, error) => {
        for (const h of [...hops.values()]) if (h.key !== this.segment) finish(h, HopStatus.Ended);
        const seg = hops.get(this.segment);
        if (seg) finish(seg, status, error);
        this.signals.clear();
      },
    };
    if (e.type === 'run.retried') {
      // The run is open again: a new segment under the run, ended by its next terminal event.
      this.retries++;
      this.segment = `retry:${this.retries}`;
      const by = typeof e.data['by'] === 'string' ? e.data['by'] : undefined;
      ops.open({ key: this.segment, kind: HopKind.Run, name: `retry ${this.retries}`, attributes: by ? { 'capstan.retried_by': by } : {} });
    } else if (e.type === 'run.signaled') {
      const name = e.data['name'];
      for (const [key, signal] of [...this.signals]) {
        if (signal === name) {
          ops.close(key);
          belongs = key;
        }
      }
    } else {
      const rule = HOP_RULES[e.type];
      if (rule) rule(e, ops);
      else ops.instant(e.type, ROOT);
    }
    return { finished, belongsTo: belongs };
  }

  /** The hops still open, as of the last event (no end, status `open`). */
  open(): Hop[] {
    return [...this.hops.values()].map((h) => ({
      key: h.key,
      ...(h.parent !== undefined ? { parent: h.parent } : {}),
      kind: h.kind,
      name: h.name,
      start: h.start,
      status: HopStatus.Open,
      attributes: h.attributes,
      startSeq: h.startSeq,
    }));
  }
}

/** Every hop of a recorded history: finished ones in the order they ended, then the open ones. */
export function foldHops(events: readonly HopInput[]): Hop[] {
  const fold = new HopFold();
  const out: Hop[] = [];
  for (const e of events) out.push(...fold.add(e).finished);
  return [...out, ...fold.open()];
}

/**
 * What the orchestrator tells the outside about the runs it records: metrics, and the
 * run's trace.
 *
 * Spans here are derived from records: after an append lands, its events are folded into
 * the run's hops (`HopFold`, kit) and each hop they finish is exported with its recorded
 * times and an id derived from the run; each recorded input also gets a `checkpoint` span,
 * from the moment its command was stored to the moment its decision was. Loading, replaying
 * or recovering a run never makes a span: a run this process has not followed is folded
 * from its stream silently, and only what it appends from then on is exported.
 *
 * With tracing off nothing is kept and every call returns at once.
 */
import type { JetStreamManager, JsMsg } from '@nats-io/jetstream';
import type { RunState, WorkflowDefinition } from '@capstan/actors';
import { beginRunTrace, emitSpan, HopFold, hopSpanId, hopTraceParent, metrics, readRun, SpanKind, tracingOn, workflowFingerprint, type Hop, type Logger } from '@capstan/kit';
import { formatTraceParent, Headers, INPUT_EVENT_TYPES, type RunEvent, type RunId, type RunTrace, type TenantId } from '@capstan/schemas';

const COMPONENT = 'orchestrator';
const TERMINAL: ReadonlySet<string> = new Set(['run.completed', 'run.failed', 'run.cancelled']);
/** The fold of runs whose trace is not sampled: never used, never filled. */
const UNSAMPLED = new HopFold();
/** Runs whose hop state is kept; a run beyond it is folded again from its stream when it next moves. */
const MAX_FOLLOWED = 10_000;

interface Followed {
  /** The run's recorded trace; undefined when it has none. Spans are derived only when it is sampled. */
  trace: RunTrace | undefined;
  fold: HopFold;
  /** Work on this run's spans, in order. */
  chain: Promise<void>;
}

export interface RunObserver {
  /** Counts and traces events just appended to a run. `commands`: the messages decided into them. */
  recorded(
    runId: RunId,
    state: RunState | undefined,
    events: readonly RunEvent[],
    commands: readonly { readonly info: { readonly streamSequence: number; readonly timestampNanos: number } }[],
  ): void;
  /** The run's trace (for the traceparent of its effects); undefined when it has none or tracing is off. */
  traceOf(runId: RunId): Promise<RunTrace | undefined>;
  /** Headers of the work item for a scheduled attempt: its dispatch hop's traceparent. */
  workHeaders(runId: RunId, step: string, attempt: number): Promise<Record<string, string> | undefined>;
  /** The work of these attempts is stored: their dispatch spans end now. */
  dispatched(items: readonly { runId: RunId; event: RunEvent }[]): void;
}

export function createRunObserver(o: { tenant: TenantId; jsm: JetStreamManager; log: Logger }): RunObserver {
  const { tenant: t, jsm, log } = o;
  const followed = new Map<RunId, Followed>();

  function remember(runId: RunId, f: Followed): void {
    followed.delete(runId);
    followed.set(runId, f);
    if (followed.size > MAX_FOLLOWED) followed.delete(followed.keys().next().value as RunId);
  }

  /** Folds the run's recorded events before `beforeSeq` without exporting anything. */
  async function prime(runId: RunId, f: Followed, beforeSeq: number): Promise<void> {
    const { events } = await readRun(jsm, t, runId);
    const first = events[0];
    if (first?.type === 'run.started' && f.fold.seq === 0) f.trace = first.data.trace;
    if (!f.trace?.sampled) return;
    for (const e of events) if (e.seq > f.fold.seq && e.seq < beforeSeq) f.fold.add(e);
  }

  function follow(runId: RunId, first: RunEvent | undefined): Followed {
    let f = followed.get(runId);
    if (f) {
      remember(runId, f);
      return f;
    }
    f = { trace: undefined, fold: new HopFold(), chain: Promise.resolve() };
    if (first?.type === 'run.started' && first.seq === 1) f.trace = first.data.trace;
    else {
      const g = f;
      g.chain = prime(runId, g, first?.seq ?? Number.MAX_SAFE_INTEGER).catch((e: unknown) => log.debug({ err: e, runId }, 'cannot read the run to follow its trace'));
    }
    remember(runId, f);
    return f;
  }

  function exportHop(runId: RunId, trace: RunTrace, h: Hop): void {
    emitSpan(COMPONENT, {
      traceId: trace.id,
      spanId: hopSpanId(runId, h.key),
      ...(h.parent !== undefined ? { parentSpanId: hopSpanId(runId, h.parent) } : trace.parent ? { parentSpanId: trace.parent } : {}),
      sampled: true,
      name: h.name,
      start: h.start,
      end: h.end ?? h.start,
      attributes: { ...h.attributes, 'capstan.tenant': t, 'capstan.run_id': runId, 'capstan.hop': h.kind },
      ...(h.error ? { error: h.error } : {}),
      ok: h.status === 'ok',
    });
  }

  function derive(runId: RunId, f: Followed, events: readonly RunEvent[], stored: ReadonlyMap<string, number>, appendedAt: number): void {
    const trace = f.trace;
    if (!trace?.sampled) return;
    for (const e of events) {
      if (e.seq <= f.fold.seq) continue;
      const { finished, belongsTo } = f.fold.add(e);
      for (const h of finished) exportHop(runId, trace, h);
      if (INPUT_EVENT_TYPES.has(e.type)) {
        emitSpan(COMPONENT, {
          traceId: trace.id,
          spanId: hopSpanId(runId, `checkpoint:${e.seq}`),
          parentSpanId: hopSpanId(runId, belongsTo),
          sampled: true,
          name: `checkpoint ${e.type}`,
          kind: SpanKind.CONSUMER,
          start: Math.min(stored.get(e.causationId) ?? e.at, e.at),
          end: appendedAt,
          attributes: { 'capstan.tenant': t, 'capstan.run_id': runId, 'capstan.event': e.type, 'capstan.seq': e.seq, 'capstan.hop': 'checkpoint' },
        });
      }
    }
  }

  function count(workflow: string, events: readonly RunEvent[]): void {
    metrics.appended.inc({ tenant: t }, events.length);
    for (const e of events) {
      switch (e.type) {
        case 'run.started':
          metrics.runsStarted.inc({ tenant: t, workflow });
          break;
        case 'run.completed':
          metrics.runsCompleted.inc({ tenant: t, workflow });
          break;
        case 'run.failed':
          metrics.runsFailed.inc({ tenant: t, workflow, code: e.data.error.code });
          break;
        case 'run.cancelled':
          metrics.runsCancelled.inc({ tenant: t, workflow });
          break;
        case 'step.scheduled':
          metrics.stepsScheduled.inc({ tenant: t, mode: String(e.data.mode) });
          break;
        default:
          break;
      }
    }
  }

  async function traceOf(runId: RunId): Promise<RunTrace | undefined> {
    if (!tracingOn()) return undefined;
    const known = followed.get(runId);
    if (known?.fold === UNSAMPLED) return known.trace;
    const f = follow(runId, undefined);
    await f.chain;
    return f.trace;
  }

  return {
    recorded(runId, state, events, commands) {
      const first = events[0];
      const workflow = state?.workflow.id ?? (first?.type === 'run.started' ? first.data.workflow : 'unknown');
      count(workflow, events);
      if (!tracingOn() || !first) return;
      // A new run whose trace is not sampled needs no hops: only its trace, for its effects' headers.
      if (first.type === 'run.started' && !first.data.trace?.sampled) {
        remember(runId, { trace: first.data.trace, fold: UNSAMPLED, chain: Promise.resolve() });
        return;
      }
      const f = follow(runId, first);
      if (f.fold === UNSAMPLED) {
        if (events.some((e) => TERMINAL.has(e.type))) followed.delete(runId);
        return;
      }
      const appendedAt = Date.now();
      const stored = new Map(commands.map((m) => [`cmd:${m.info.streamSequence}`, Math.floor(m.info.timestampNanos / 1e6)]));
      f.chain = f.chain
        .then(async () => {
          // Another orchestrator appended in between: fold its events silently first.
          if (f.trace?.sampled && f.fold.seq !== 0 && f.fold.seq + 1 < first.seq) await prime(runId, f, first.seq);
          derive(runId, f, events, stored, appendedAt);
          // A finished run is forgotten; a retry folds it again from its stream.
          if (events.some((e) => TERMINAL.has(e.type))) followed.delete(runId);
        })
        .catch((e: unknown) => log.debug({ err: e, runId }, 'run spans not derived'));
    },
    traceOf,
    async workHeaders(runId, step, attempt) {
      const trace = await traceOf(runId);
      return trace ? { [Headers.TraceParent]: formatTraceParent(hopTraceParent(trace, runId, `dispatch:${step}:${attempt}`)) } : undefined;
    },
    dispatched(items) {
      if (!tracingOn()) return;
      const now = Date.now();
      for (const { runId, event } of items) {
        if (event.type !== 'step.scheduled') continue;
        const trace = followed.get(runId)?.trace;
        if (!trace?.sampled) continue;
        const { step, attempt, pool } = event.data;
        emitSpan(COMPONENT, {
          traceId: trace.id,
          spanId: hopSpanId(runId, `dispatch:${step}:${attempt}`),
          parentSpanId: hopSpanId(runId, `step:${step}:${attempt}`),
          sampled: true,
          name: `dispatch ${pool}`,
          kind: SpanKind.PRODUCER,
          start: event.at,
          end: now,
          attributes: { 'capstan.tenant': t, 'capstan.run_id': runId, 'capstan.step': step, 'capstan.attempt': attempt, 'capstan.pool': pool, 'capstan.hop': 'dispatch' },
        });
      }
    },
  };
}

/**
 * What a new run records about where it came from: its workflow version's fingerprint, and
 * its trace (the submit's `traceparent`, or a new trace when this process traces).
 */
export function startRecord(msg: Pick<JsMsg, 'headers'>, wf: WorkflowDefinition): { fingerprint: string; trace?: RunTrace } {
  const trace = beginRunTrace(msg.headers?.get(Headers.TraceParent));
  return { fingerprint: workflowFingerprint(wf), ...(trace ? { trace } : {}) };
}

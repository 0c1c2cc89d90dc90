/**
 * W3C trace context as Capstan records and carries it. A run's trace is recorded on its
 * `run.started` (`trace`), and hops carry it between services in the NATS `traceparent`
 * header (`Headers.TraceParent`). Pure: parsing and formatting only; ids are made elsewhere.
 */
import { bool, obj, optional, str, type Infer } from './validate.js';

const TRACE_ID = /^(?!0{32})[0-9a-f]{32}$/;
const SPAN_ID = /^(?!0{16})[0-9a-f]{16}$/;
// version 00 exactly; later versions may append fields after the flags (W3C: "-" and more).
const TRACEPARENT = /^([0-9a-f]{2})-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})(?:-.*)?$/;

/**
 * The trace a run belongs to, as `run.started` records it: the trace id, the caller's span
 * the run continues (absent when the run began its own trace), and whether the trace is
 * sampled. The run's own spans have ids derived from its run id, so nothing else is needed.
 */
export const runTraceSchema = obj('trace', {
  id: str({ pattern: TRACE_ID }),
  parent: optional(str({ pattern: SPAN_ID })),
  sampled: bool(),
});
export type RunTrace = Infer<typeof runTraceSchema>;

/** A span's place in a trace, as a `traceparent` carries it. */
export interface TraceParent {
  readonly traceId: string;
  readonly spanId: string;
  readonly sampled: boolean;
}

/**
 * Reads a `traceparent` header value; undefined when it is absent or not a valid W3C
 * traceparent (an invalid one is ignored, as the W3C spec says: a new trace starts).
 */
export function parseTraceParent(value: string | undefined | null): TraceParent | undefined {
  if (!value) return undefined;
  const m = TRACEPARENT.exec(value.trim().toLowerCase());
  if (!m) return undefined;
  const [, version, traceId, spanId, flags] = m as unknown as [string, string, string, string, string];
  // Version ff is forbidden; version 00 has nothing after the flags.
  if (version === 'ff' || (version === '00' && value.trim().length !== 55)) return undefined;
  if (!TRACE_ID.test(traceId) || !SPAN_ID.test(spanId)) return undefined;
  return { traceId, spanId, sampled: (parseInt(flags, 16) & 1) === 1 };
}

export function formatTraceParent(p: TraceParent): string {
  return `00-${p.traceId}-${p.spanId}-${p.sampled ? '01' : '00'}`;
}

export function isTraceId(v: string): boolean {
  return TRACE_ID.test(v);
}

export function isSpanId(v: string): boolean {
  return SPAN_ID.test(v);
}

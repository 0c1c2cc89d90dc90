/**
 * Traces: OpenTelemetry (`@opentelemetry/sdk-node`), configured by the standard `OTEL_*`
 * variables and exported over OTLP/HTTP (protobuf unless `OTEL_EXPORTER_OTLP_PROTOCOL` says
 * otherwise). Off unless an exporter is configured; then nothing is loaded and every helper
 * here returns at once, so a process without a collector pays nothing.
 *
 * Two kinds of span:
 * - **live spans**, made by the code doing the work (a worker running a step, the policy
 *   service deciding, the sandbox running a tool), parented by the `traceparent` a NATS
 *   message carries ({@link inSpan});
 * - **derived spans**, made from what a run recorded ({@link emitSpan}): their times are
 *   event times, and their ids are derived from the run id and the hop ({@link hopSpanId}),
 *   so the orchestrator can name a hop's span (in a work item's `traceparent`, say) before
 *   the hop has ended, and nothing replayed ever makes a span of its own.
 *
 * One SDK per process: `capstan dev` runs every service in one process and starts it once;
 * each component gets its own tracer (instrumentation scope `capstan.<component>`).
 */
import { randomBytes } from 'node:crypto';
import { context, ROOT_CONTEXT, SamplingDecision, SpanKind, SpanStatusCode, trace, TraceFlags, type Attributes, type Context, type Span, type Tracer } from '@opentelemetry/api';
import { headers as natsHeaders, type MsgHdrs } from '@nats-io/transport-node';
import { formatTraceParent, Headers, parseTraceParent, type RunTrace, type TraceParent } from '@capstan/schemas';
import type { Env } from './env.js';

export { SpanKind };
export type { Span, Attributes };

/** `OTEL_TRACES_SAMPLER` values Capstan understands (the spec's, less the vendor-specific ones). */
const SAMPLERS = ['always_on', 'always_off', 'traceidratio', 'parentbased_always_on', 'parentbased_always_off', 'parentbased_traceidratio'] as const;
type SamplerName = (typeof SAMPLERS)[number];

export interface TracingConfig {
  /** An exporter is configured and the SDK is not disabled. */
  readonly enabled: boolean;
  readonly sampler: SamplerName;
  /** For the ratio samplers: the fraction of new traces sampled, 0..1. */
  readonly ratio: number;
  /** `OTEL_SERVICE_NAME`, when set; else the service's own name. */
  readonly serviceName?: string;
}

/**
 * Reads the standard variables. Tracing is on when `OTEL_TRACES_EXPORTER` names an exporter
 * (`otlp`, `console`, `zipkin`), or when it is unset and an OTLP endpoint is
 * (`OTEL_EXPORTER_OTLP_ENDPOINT`, `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`); `OTEL_SDK_DISABLED=true`
 * turns it off whatever else is set. Pure; problems are added to `problems`.
 */
export function tracingConfig(env: Env, problems: string[]): TracingConfig {
  const exporters = (env['OTEL_TRACES_EXPORTER'] ?? '')
    .split(',')
    .map((s) => s.trim())
    .filter(Boolean);
  const disabled = (env['OTEL_SDK_DISABLED'] ?? '').trim().toLowerCase() === 'true';
  const endpoint = Boolean(env['OTEL_EXPORTER_OTLP_ENDPOINT'] || env['OTEL_EXPORTER_OTLP_TRACES_ENDPOINT']);
  for (const e of exporters) {
    if (!['otlp', 'console', 'zipkin', 'none'].includes(e)) problems.push(`OTEL_TRACES_EXPORTER has an unknown exporter ${JSON.stringify(e)} (otlp, console, zipkin or none)`);
  }
  const enabled = !disabled && (exporters.length > 0 ? exporters.some((e) => e !== 'none') : endpoint);
  const rawSampler = (env['OTEL_TRACES_SAMPLER'] ?? '').trim() || 'parentbased_always_on';
  let sampler: SamplerName = 'parentbased_always_on';
  if ((SAMPLERS as readonly string[]).includes(rawSampler)) sampler = rawSampler as SamplerName;
  else problems.push(`OTEL_TRACES_SAMPLER must be one of ${SAMPLERS.join(', ')} (got ${JSON.stringify(rawSampler)})`);
  let ratio = 1;
  const rawArg = (env['OTEL_TRACES_SAMPLER_ARG'] ?? '').trim();
  if (rawArg !== '' && sampler.endsWith('traceidratio')) {
    const n = Number(rawArg);
    if (Number.isFinite(n) && n >= 0 && n <= 1) ratio = n;
    else problems.push(`OTEL_TRACES_SAMPLER_ARG must be a number from 0 to 1 (got ${JSON.stringify(rawArg)})`);
  }
  const serviceName = env['OTEL_SERVICE_NAME']?.trim();
  return { enabled, sampler, ratio, ...(serviceName ? { serviceName } : {}) };
}

/** The parts of the SDK's sampler this module calls. */
interface SamplerLike {
  shouldSample(ctx: Context, traceId: string, name: string, kind: SpanKind, attributes: Attributes, links: []): { decision: SamplingDecision };
}

/** Random hex from a pooled buffer: one `randomBytes` call serves hundreds of ids. */
const pool = { buf: Buffer.alloc(0), at: 0 };
function randomHex(bytes: number): string {
  if (pool.at + bytes > pool.buf.length) {
    pool.buf = randomBytes(4096);
    pool.at = 0;
  }
  const hex = pool.buf.toString('hex', pool.at, pool.at + bytes);
  pool.at += bytes;
  return /^0+$/.test(hex) ? randomHex(bytes) : hex;
}

/**
 * Span ids the SDK would otherwise make at random. A derived span's ids are set here just
 * before the (synchronous) `startSpan` that consumes them.
 */
class DerivedIds {
  private traceId: string | undefined;
  private spanId: string | undefined;
  set(traceId: string, spanId: string): void {
    this.traceId = traceId;
    this.spanId = spanId;
  }
  clear(): void {
    this.traceId = undefined;
    this.spanId = undefined;
  }
  generateTraceId(): string {
    const v = this.traceId;
    this.traceId = undefined;
    return v ?? randomHex(16);
  }
  generateSpanId(): string {
    const v = this.spanId;
    this.spanId = undefined;
    return v ?? randomHex(8);
  }
}

interface Active {
  readonly service: string;
  readonly sampler: SamplerLike;
  readonly ids: DerivedIds;
  readonly tracers: Map<string, Tracer>;
  shutdown(): Promise<void>;
}

let active: Active | undefined;
let starting: Promise<TracingHandle> | undefined;

export interface TracingHandle {
  /** Whether this process exports spans. */
  readonly enabled: boolean;
  /** Exports what is buffered and stops; later spans are dropped. */
  stop(): Promise<void>;
}

const OFF: TracingHandle = { enabled: false, stop: () => Promise.resolve() };

/** Whether spans are being made in this process. */
export function tracingOn(): boolean {
  return active !== undefined;
}

/**
 * Starts the SDK for this process when the environment configures an exporter; otherwise
 * loads nothing. A second call (several services in one process) returns the first one's
 * handle. The SDK is loaded on demand: a process without tracing never imports it.
 */
export function startTracing(service: string, config: TracingConfig): Promise<TracingHandle> {
  if (!config.enabled) return Promise.resolve(OFF);
  starting ??= (async () => {
    const { NodeSDK, tracing } = await import('@opentelemetry/sdk-node');
    const root = config.sampler.endsWith('always_off')
      ? new tracing.AlwaysOffSampler()
      : config.sampler.endsWith('traceidratio')
        ? new tracing.TraceIdRatioBasedSampler(config.ratio)
        : new tracing.AlwaysOnSampler();
    const sampler = config.sampler.startsWith('parentbased_') ? new tracing.ParentBasedSampler({ root }) : root;
    const ids = new DerivedIds();
    const sdk = new NodeSDK({
      serviceName: config.serviceName ?? `capstan-${service}`,
      sampler,
      idGenerator: ids,
      // Metrics are Prometheus (kit's metrics.ts) and logs are pino: the SDK exports spans only.
      metricReaders: [],
      logRecordProcessors: [],
      instrumentations: [],
    });
    sdk.start();
    active = { service, sampler: sampler as unknown as SamplerLike, ids, tracers: new Map(), shutdown: () => sdk.shutdown() };
    return {
      enabled: true,
      async stop() {
        const a = active;
        active = undefined;
        starting = undefined;
        await a?.shutdown();
      },
    };
  })();
  return starting;
}

function tracerOf(a: Active, component: string): Tracer {
  let t = a.tracers.get(component);
  if (!t) {
    t = trace.getTracer(`capstan.${component}`);
    a.tracers.set(component, t);
  }
  return t;
}

/**
 * pino `mixin`: the active span's ids on every log line written inside a span. (pino merges
 * the line into the object returned, so it is a new one each time.)
 */
export function traceLogFields(): { traceId?: string; spanId?: string } {
  if (!active) return {};
  const sc = trace.getSpan(context.active())?.spanContext();
  return sc && trace.isSpanContextValid(sc) ? { traceId: sc.traceId, spanId: sc.spanId } : {};
}

/** The context a `traceparent` (a header value, or parsed) points at; the active one otherwise. */
function contextOf(parent: TraceParent | string | null | undefined): Context {
  const p = typeof parent === 'string' ? parseTraceParent(parent) : parent;
  if (p === null) return ROOT_CONTEXT;
  if (!p) return context.active();
  return trace.setSpanContext(ROOT_CONTEXT, { traceId: p.traceId, spanId: p.spanId, traceFlags: p.sampled ? TraceFlags.SAMPLED : TraceFlags.NONE, isRemote: true });
}

/** The `traceparent` header of a NATS message, when it has a valid one. */
export function traceParentOf(h: MsgHdrs | undefined): TraceParent | undefined {
  return h ? parseTraceParent(h.get(Headers.TraceParent)) : undefined;
}

/** The active span as a `traceparent` value; undefined outside a span or with tracing off. */
export function activeTraceParent(): string | undefined {
  if (!active) return undefined;
  const sc = trace.getSpan(context.active())?.spanContext();
  if (!sc || !trace.isSpanContextValid(sc)) return undefined;
  return formatTraceParent({ traceId: sc.traceId, spanId: sc.spanId, sampled: (sc.traceFlags & 1) === 1 });
}

/**
 * Headers carrying the active span's `traceparent` (added to `h`, or new ones), for a
 * request or publish made inside a span; `h` unchanged (possibly undefined) otherwise.
 */
export function withTraceHeader(h?: MsgHdrs): MsgHdrs | undefined {
  const tp = activeTraceParent();
  if (!tp) return h;
  const out = h ?? natsHeaders();
  out.set(Headers.TraceParent, tp);
  return out;
}

export interface SpanOptions {
  readonly kind?: SpanKind;
  /**
   * The parent: a traceparent (a header value, or parsed); `null` begins a new trace;
   * undefined (or an invalid value) means the active span. Without any, no span is made:
   * spans belong to a trace someone began, never to stray work.
   */
  readonly parent?: TraceParent | string | null | undefined;
  readonly attributes?: Attributes;
}

/**
 * Runs `fn` inside a new span of `component` (active for everything `fn` awaits, so log lines
 * and outgoing requests carry it), ending it when `fn` settles; a thrown error marks it
 * failed with its code. With tracing off, or no parent (see {@link SpanOptions.parent}), `fn`
 * runs alone.
 */
export async function inSpan<T>(component: string, name: string, o: SpanOptions, fn: (span: Span | undefined) => Promise<T> | T): Promise<T> {
  const a = active;
  if (!a) return fn(undefined);
  const parent = contextOf(o.parent);
  const sc = trace.getSpan(parent)?.spanContext();
  // No trace to join, or one not sampled: the work runs unrecorded (every Capstan sampler
  // follows its parent's decision, so nothing below would be recorded either).
  if (o.parent !== null && (!sc || (sc.traceFlags & 1) === 0)) return fn(undefined);
  const span = tracerOf(a, component).startSpan(name, { kind: o.kind ?? SpanKind.INTERNAL, ...(o.attributes ? { attributes: o.attributes } : {}) }, parent);
  try {
    return await context.with(trace.setSpan(parent, span), () => fn(span));
  } catch (e) {
    failSpan(span, e);
    throw e;
  } finally {
    span.end();
  }
}

/** Marks a span failed with an error's code (never its payload). */
export function failSpan(span: Span | undefined, e: unknown): void {
  if (!span) return;
  const code = (e as { code?: unknown } | null)?.code;
  span.setStatus({ code: SpanStatusCode.ERROR, message: typeof code === 'string' ? code : e instanceof Error ? e.name : 'error' });
  if (typeof code === 'string') span.setAttribute('capstan.error.code', code);
}

/** A span made from recorded times rather than observed ones. */
export interface DerivedSpan {
  readonly traceId: string;
  readonly spanId: string;
  /** The parent span in the same trace; absent for a trace's root. */
  readonly parentSpanId?: string;
  readonly sampled: boolean;
  readonly name: string;
  readonly kind?: SpanKind;
  /** Epoch milliseconds. */
  readonly start: number;
  readonly end: number;
  readonly attributes?: Attributes;
  /** An error code: the span is failed. */
  readonly error?: string;
  /** The hop is known to have succeeded (status OK; otherwise unset). */
  readonly ok?: boolean;
}

/** Exports a derived span (see the module comment). Nothing happens with tracing off or for an unsampled trace. */
export function emitSpan(component: string, s: DerivedSpan): void {
  const a = active;
  if (!a || !s.sampled) return;
  const parent = s.parentSpanId ? contextOf({ traceId: s.traceId, spanId: s.parentSpanId, sampled: true }) : ROOT_CONTEXT;
  a.ids.set(s.traceId, s.spanId);
  let span: Span;
  try {
    span = tracerOf(a, component).startSpan(s.name, { kind: s.kind ?? SpanKind.INTERNAL, startTime: s.start, ...(s.attributes ? { attributes: s.attributes } : {}) }, parent);
  } finally {
    a.ids.clear();
  }
  if (s.error) span.setStatus({ code: SpanStatusCode.ERROR, message: s.error });
  else if (s.ok) span.setStatus({ code: SpanStatusCode.OK });
  span.end(Math.max(s.start, s.end));
}

/** MurmurHash3's 32-bit mixing of one code unit into `h`. */
function mix(h: number, c: number): number {
  let k = Math.imul(c, 0xcc9e2d51);
  k = Math.imul((k << 15) | (k >>> 17), 0x1b873593);
  h ^= k;
  return Math.imul((h << 13) | (h >>> 19), 5) + 0xe6546b64;
}

function finish(h: number, length: number): number {
  h ^= length;
  h = Math.imul(h ^ (h >>> 16), 0x85ebca6b);
  h = Math.imul(h ^ (h >>> 13), 0xc2b2ae35);
  return (h ^ (h >>> 16)) >>> 0;
}

const HEX = Array.from({ length: 256 }, (_, i) => i.toString(16).padStart(2, '0'));
const hex8 = (n: number): string => (HEX[n >>> 24] as string) + (HEX[(n >>> 16) & 255] as string) + (HEX[(n >>> 8) & 255] as string) + (HEX[n & 255] as string);

/**
 * The id of a run's hop span, derived from the run id and the hop's key (scheme
 * `capstan/hop/v1`: two 32-bit MurmurHash3 (x86) halves with seeds 0x9747b28c and 0x5bd1e995
 * over the UTF-16 code units of `<runId>\n<key>`), so every service and every later reader
 * names the same hop with the same id. Span ids need to be unique within their trace, not
 * secret, and this runs for every hop: one pass computing both halves, no string built.
 */
export function hopSpanId(runId: string, key: string): string {
  let a = 0x9747b28c;
  let b = 0x5bd1e995;
  for (let i = 0; i < runId.length; i++) {
    const c = runId.charCodeAt(i);
    a = mix(a, c);
    b = mix(b, c);
  }
  a = mix(a, 10);
  b = mix(b, 10);
  for (let i = 0; i < key.length; i++) {
    const c = key.charCodeAt(i);
    a = mix(a, c);
    b = mix(b, c);
  }
  const length = runId.length + 1 + key.length;
  const id = hex8(finish(a, length)) + hex8(finish(b, length));
  // An all-zero id is invalid.
  return id === '0000000000000000' ? '0000000000000001' : id;
}

/** The `traceparent` of one of a run's hops. */
export function hopTraceParent(runTrace: RunTrace, runId: string, key: string): TraceParent {
  return { traceId: runTrace.id, spanId: hopSpanId(runId, key), sampled: runTrace.sampled };
}

/**
 * The trace a new run records on `run.started`: the caller's, when its submit carried a
 * valid `traceparent` (its span becomes the run's parent); else, with tracing on, a new
 * trace, sampled as the configured sampler decides; else none.
 */
export function beginRunTrace(callerTraceParent: string | undefined | null): RunTrace | undefined {
  const caller = parseTraceParent(callerTraceParent);
  const a = active;
  if (caller) {
    // A parent-based sampler follows the caller's flag; another one decides by itself.
    const sampled = a
      ? a.sampler.shouldSample(contextOf(caller), caller.traceId, 'run', SpanKind.INTERNAL, {}, []).decision === SamplingDecision.RECORD_AND_SAMPLED
      : caller.sampled;
    return { id: caller.traceId, parent: caller.spanId, sampled };
  }
  if (!a) return undefined;
  const id = randomHex(16);
  return { id, sampled: a.sampler.shouldSample(ROOT_CONTEXT, id, 'run', SpanKind.INTERNAL, {}, []).decision === SamplingDecision.RECORD_AND_SAMPLED };
}

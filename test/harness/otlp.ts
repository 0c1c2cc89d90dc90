/**
 * An OTLP/HTTP trace receiver for tests and benchmarks: a local HTTP server taking
 * `POST /v1/traces` (protobuf, gzip or not), decoding each request with the official
 * OpenTelemetry protocol definitions (`test/fixtures/otlp`, loaded by protobufjs) and
 * keeping the spans. Services point `OTEL_EXPORTER_OTLP_ENDPOINT` at `url`.
 */
import { createServer, type IncomingMessage } from 'node:http';
import type { AddressInfo } from 'node:net';
import { join } from 'node:path';
import { gunzipSync } from 'node:zlib';
import protobuf from 'protobufjs';
import { PROJECT_ROOT } from '@capstan/kit';

const PROTO_ROOT = join(PROJECT_ROOT, 'test', 'fixtures', 'otlp');

/** A span as received, with ids as hex and times as epoch milliseconds. */
export interface ReceivedSpan {
  readonly traceId: string;
  readonly spanId: string;
  /** '' for a root span. */
  readonly parentSpanId: string;
  readonly name: string;
  /** OTLP SpanKind: 1 internal, 2 server, 3 client, 4 producer, 5 consumer. */
  readonly kind: number;
  readonly start: number;
  readonly end: number;
  /** The exporting process's `service.name`. */
  readonly service: string;
  /** The instrumentation scope (`capstan.<component>`). */
  readonly scope: string;
  readonly attributes: Readonly<Record<string, string | number | boolean>>;
  /** OTLP status code: 0 unset, 1 ok, 2 error. */
  readonly status: number;
  readonly statusMessage: string;
}

export interface OtlpReceiver {
  /** The endpoint base (`OTEL_EXPORTER_OTLP_ENDPOINT`). */
  readonly url: string;
  spans(): readonly ReceivedSpan[];
  /** Requests taken, and bytes received (as sent, compressed or not). */
  stats(): { requests: number; bytes: number; spans: number };
  stop(): Promise<void>;
}

let types: { request: protobuf.Type; response: protobuf.Type } | undefined;

/** The OTLP trace service's request and response types, from the vendored .proto files. */
export function otlpTypes(): { request: protobuf.Type; response: protobuf.Type } {
  if (!types) {
    const root = new protobuf.Root();
    // Imports are written from the repository root (`opentelemetry/proto/...`).
    root.resolvePath = (_origin, target) => join(PROTO_ROOT, target);
    root.loadSync('opentelemetry/proto/collector/trace/v1/trace_service.proto', { keepCase: false });
    types = {
      request: root.lookupType('opentelemetry.proto.collector.trace.v1.ExportTraceServiceRequest'),
      response: root.lookupType('opentelemetry.proto.collector.trace.v1.ExportTraceServiceResponse'),
    };
  }
  return types;
}

type AnyValue = { stringValue?: string; boolValue?: boolean; intValue?: string | number; doubleValue?: number };
const valueOf = (v: AnyValue | undefined): string | number | boolean => v?.stringValue ?? v?.boolValue ?? (v?.intValue !== undefined ? Number(v.intValue) : (v?.doubleValue ?? ''));
const attrs = (list: { key: string; value?: AnyValue }[] | undefined) => Object.fromEntries((list ?? []).map((a) => [a.key, valueOf(a.value)]));
const hex = (b: Uint8Array | undefined) => (b ? Buffer.from(b).toString('hex') : '');
const ms = (nanos: string | number | undefined) => Number(BigInt(nanos ?? 0) / 1_000_000n);

/** Decodes one `ExportTraceServiceRequest` body into spans. */
export function decodeSpans(body: Uint8Array): ReceivedSpan[] {
  const { request } = otlpTypes();
  const msg = request.toObject(request.decode(body), { longs: String, defaults: false }) as {
    resourceSpans?: {
      resource?: { attributes?: { key: string; value?: AnyValue }[] };
      scopeSpans?: { scope?: { name?: string }; spans?: Record<string, unknown>[] }[];
    }[];
  };
  const out: ReceivedSpan[] = [];
  for (const rs of msg.resourceSpans ?? []) {
    const service = String(attrs(rs.resource?.attributes)['service.name'] ?? '');
    for (const ss of rs.scopeSpans ?? []) {
      for (const s of ss.spans ?? []) {
        const status = (s['status'] as { code?: number; message?: string } | undefined) ?? {};
        out.push({
          traceId: hex(s['traceId'] as Uint8Array),
          spanId: hex(s['spanId'] as Uint8Array),
          parentSpanId: hex(s['parentSpanId'] as Uint8Array | undefined),
          name: String(s['name'] ?? ''),
          kind: Number(s['kind'] ?? 0),
          start: ms(s['startTimeUnixNano'] as string),
          end: ms(s['endTimeUnixNano'] as string),
          service,
          scope: ss.scope?.name ?? '',
          attributes: attrs(s['attributes'] as { key: string; value?: AnyValue }[]),
          status: Number(status.code ?? 0),
          statusMessage: status.message ?? '',
        });
      }
    }
  }
  return out;
}

function readBody(req: IncomingMessage): Promise<Buffer> {
  return new Promise((resolve, reject) => {
    const chunks: Buffer[] = [];
    req.on('data', (c: Buffer) => chunks.push(c));
    req.on('end', () => resolve(Buffer.concat(chunks)));
    req.on('error', reject);
  });
}

/** `decode: false` keeps counts only (a benchmark's sink, cheap). */
export async function startOtlpReceiver(o: { decode?: boolean } = {}): Promise<OtlpReceiver> {
  const decode = o.decode ?? true;
  const spans: ReceivedSpan[] = [];
  const stats = { requests: 0, bytes: 0, spans: 0 };
  const okBody = decode ? otlpTypes().response.encode({}).finish() : new Uint8Array(0);
  const server = createServer((req, res) => {
    readBody(req).then(
      (raw) => {
        if (req.method !== 'POST' || req.url !== '/v1/traces') {
          res.writeHead(404).end();
          return;
        }
        stats.requests++;
        stats.bytes += raw.length;
        if (decode) {
          const body = req.headers['content-encoding'] === 'gzip' ? gunzipSync(raw) : raw;
          const got = decodeSpans(body);
          stats.spans += got.length;
          spans.push(...got);
        }
        res.writeHead(200, { 'content-type': 'application/x-protobuf' }).end(okBody);
      },
      () => res.writeHead(400).end(),
    );
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', () => resolve()));
  const { port } = server.address() as AddressInfo;
  return {
    url: `http://127.0.0.1:${port}`,
    spans: () => spans,
    stats: () => ({ ...stats }),
    stop: () => new Promise<void>((resolve) => server.close(() => resolve())),
  };
}

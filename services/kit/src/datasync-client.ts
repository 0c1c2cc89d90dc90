/**
 * The client of the datasync service (`cap.<t>.svc.datasync.<verb>`): the catalog's
 * administration (connections, models, destinations), the bounded preview, and the
 * worker's side of a pipeline step (one request, then `accepted`, `beat`s and one `done` on
 * an inbox, as for a sandboxed step). Requests carry identifiers; replies carry catalog
 * records, metadata-only step results, or the preview's bounded table.
 */
import { createHash } from 'node:crypto';
import { NoRespondersError, RequestError } from '@nats-io/transport-node';
import {
  CapstanError,
  datasyncErrorFromWire,
  DatasyncVerb,
  decode,
  encode,
  ErrorCode,
  makeRunId,
  parseDatasyncStepReply,
  parseListRecordsReply,
  parsePreviewReply,
  parseRecordReply,
  PREVIEW_LIMITS,
  Subjects,
  type CatalogKind,
  type CatalogRecord,
  type DatasyncProgress,
  type DatasyncStepRequest,
  type DatasyncStepResult,
  type ErrorRecord,
  type PreviewReply,
  type PreviewRequest,
  type RunId,
  type TenantId,
} from '@capstan/schemas';
import type { NatsConnection } from './nats.js';
import type { Signer } from './proof.js';
import { callService } from './rpc.js';

export interface DatasyncCallOptions {
  /** How long to wait for the answer (default 10 s: a put may check a source). */
  readonly timeoutMs?: number;
}

function call<T>(nc: NatsConnection, t: TenantId, verb: DatasyncVerb, body: object, parse: (v: unknown) => T, timeoutMs = 10_000, signer?: Signer): Promise<T> {
  return callService(nc, {
    subject: Subjects.datasync(t, verb),
    body,
    parse,
    timeoutMs,
    ...(signer ? { signer } : {}),
    unavailable: (why, cause) => new CapstanError(ErrorCode.DatasyncUnavailable, `datasync service, ${verb}: ${why} (tenant ${t})`, true, { cause }),
    fromWire: datasyncErrorFromWire,
  });
}

export interface PutEntityInput {
  readonly kind: CatalogKind;
  readonly id: string;
  readonly name?: string;
  /** The spec; checked by the service against its kind's schema. Names secrets, never holds one. */
  readonly spec: unknown;
  readonly by: string;
}

/** Creates or changes a connection, model or destination; resolves with its catalog record (a new version). */
export async function putEntity(nc: NatsConnection, t: TenantId, e: PutEntityInput, o: DatasyncCallOptions = {}): Promise<CatalogRecord> {
  const body = { kind: e.kind, id: e.id, spec: e.spec, by: e.by, ...(e.name !== undefined ? { name: e.name } : {}) };
  return (await call(nc, t, DatasyncVerb.Put, body, parseRecordReply, o.timeoutMs)).record;
}

export async function deleteEntity(nc: NatsConnection, t: TenantId, kind: CatalogKind, id: string, by: string, o: DatasyncCallOptions = {}): Promise<CatalogRecord> {
  return (await call(nc, t, DatasyncVerb.Delete, { kind, id, by }, parseRecordReply, o.timeoutMs)).record;
}

export async function getEntity(nc: NatsConnection, t: TenantId, kind: CatalogKind, id: string, o: DatasyncCallOptions = {}): Promise<CatalogRecord> {
  return (await call(nc, t, DatasyncVerb.Get, { kind, id }, parseRecordReply, o.timeoutMs)).record;
}

export async function listEntities(nc: NatsConnection, t: TenantId, o: DatasyncCallOptions & { kind?: CatalogKind; includeDeleted?: boolean } = {}): Promise<CatalogRecord[]> {
  const body = { ...(o.kind ? { kind: o.kind } : {}), ...(o.includeDeleted ? { includeDeleted: true } : {}) };
  return (await call(nc, t, DatasyncVerb.List, body, parseListRecordsReply, o.timeoutMs)).records;
}

/**
 * The bounded preview: one read-only SELECT/WITH against a connection, at most 100 rows,
 * cells cut and sanitized. A refused query is `query_refused` (nothing reached the source);
 * one past its statement timeout is `query_timeout`.
 */
export async function previewQuery(nc: NatsConnection, t: TenantId, req: PreviewRequest, o: { readonly signer?: Signer } = {}): Promise<PreviewReply> {
  // Signed and dated: the signed request is what warrants the lease of the connection's
  // credentials (once, while fresh); an unsigned one reaches only a connection without secrets.
  const body: PreviewRequest = { ...req, at: req.at ?? Date.now() };
  // The statement timeout is the source's; the answer may take a connection and a lease longer.
  return call(nc, t, DatasyncVerb.Preview, body, parsePreviewReply, (req.timeoutMs ?? PREVIEW_LIMITS.defaultTimeoutMs) + 10_000, o.signer);
}

/**
 * The id a preview is leased and audited under: from the signed request's date and
 * signature, so the same signed request always names the same scope, and the lease service,
 * which issues each scope's keys once, leases nothing to a replay of it.
 */
export function previewRunId(at: number, signature: string): RunId {
  return makeRunId(at, createHash('sha256').update(signature).digest().subarray(0, 10));
}

export interface DatasyncStepOptions {
  /** Longest wait for the first reply. Default 10 s. */
  readonly firstReplyMs?: number;
  /** Longest silence between replies before the attempt is reported lost. Default 10 s. */
  readonly stallMs?: number;
  readonly signal?: AbortSignal;
  readonly onProgress?: (p: DatasyncProgress) => void;
}

export type DatasyncStepOutcome = { result: DatasyncStepResult; error?: undefined } | { result?: undefined; error: ErrorRecord };

/**
 * Runs one pipeline step in the datasync service and waits for its metadata. Silence for
 * `stallMs` is `datasync_unavailable` (retryable: the step's next attempt finds the work
 * done, or does it); an aborted call asks the service to stop the step.
 */
export async function runDatasyncStep(nc: NatsConnection, t: TenantId, req: DatasyncStepRequest, o: DatasyncStepOptions = {}): Promise<DatasyncStepOutcome> {
  const stallMs = o.stallMs ?? 10_000;
  const lost = (message: string): DatasyncStepOutcome => ({ error: { code: ErrorCode.DatasyncUnavailable, message, retryable: true } });
  let replies: AsyncIterable<{ data: Uint8Array }>;
  try {
    replies = await nc.requestMany(Subjects.datasync(t, DatasyncVerb.Step), encode(req), { strategy: 'stall', stall: stallMs, maxWait: o.firstReplyMs ?? 10_000 });
  } catch (e) {
    if (e instanceof NoRespondersError || (e instanceof RequestError && e.isNoResponders())) return lost(`no datasync service is running for tenant ${t}`);
    return lost(`datasync step request failed: ${(e as Error).message}`);
  }
  const cancel = () => nc.publish(Subjects.datasync(t, DatasyncVerb.Cancel), encode({ runId: req.runId, step: req.step, attempt: req.attempt }));
  o.signal?.addEventListener('abort', cancel, { once: true });
  let accepted = false;
  try {
    for await (const m of replies) {
      if (o.signal?.aborted) break;
      const r = parseDatasyncStepReply(decode(m.data));
      if (r.type === 'accepted') accepted = true;
      else if (r.type === 'beat') o.onProgress?.(r.progress);
      else if (r.result) return { result: r.result };
      else return { error: r.error ?? { code: ErrorCode.DatasyncUnavailable, message: 'the datasync service answered without a result', retryable: true } };
    }
  } catch (e) {
    if (CapstanError.is(e)) return { error: { ...e.toRecord(), retryable: false } };
    return lost(`datasync step failed: ${(e as Error).message}`);
  } finally {
    o.signal?.removeEventListener('abort', cancel);
  }
  if (o.signal?.aborted) return { error: { code: ErrorCode.Cancelled, message: `step ${req.step} attempt ${req.attempt} was stopped`, retryable: true } };
  return lost(
    accepted
      ? `the datasync service stopped answering for ${stallMs} ms while step ${req.step} attempt ${req.attempt} ran`
      : `no datasync service took step ${req.step} attempt ${req.attempt}`,
  );
}

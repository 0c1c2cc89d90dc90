/**
 * The one shape of a Capstan service request (core NATS request/reply, MessagePack): an
 * answer is a MessagePack body; a refusal carries the `Capstan-Error-Code` and `Capstan-Error`
 * headers and a body that is empty or holds the refusal's structured details (a policy's
 * diagnostics, say), rebuilt into its typed error on the caller's side. No service answering,
 * or none in time, is the service's own "unavailable" error (retryable).
 *
 * Policy, secrets, data-sync and sandbox cancels use it; the sandbox's exec is the one
 * exchange that is not a single answer (accepted, beats, then done: see sandbox-client.ts).
 */
import { headers as natsHeaders, NoRespondersError, RequestError, TimeoutError, type Msg } from '@nats-io/transport-node';
import { CapstanError, decode, encode, Headers } from '@capstan/schemas';
import { dbErrorMessage } from './db.js';
import type { NatsConnection } from './nats.js';
import { withTraceHeader } from './tracing.js';
import { proofHeaders, type Signer } from './proof.js';

export interface ServiceCall<T> {
  readonly subject: string;
  readonly body: object;
  readonly parse: (v: unknown) => T;
  /** How long to wait for the answer (default 5 s). */
  readonly timeoutMs?: number;
  /** The service's own unavailable error: `why` says what happened. */
  readonly unavailable: (why: string, cause: unknown) => CapstanError;
  /** Rebuilds a refusal from its headers and its details (the decoded body; undefined when empty). */
  readonly fromWire: (code: string, message: string, details?: unknown) => CapstanError;
  /** Signs the request (subject and body), for a service that acts only for a proven caller. */
  readonly signer?: Signer;
  /** Checks the answer before it is parsed (a reply the service signed, say); throws to refuse it. */
  readonly checkReply?: (msg: Msg) => void;
  /** Checks a refusal before it is believed (for a service that signs its refusals too). */
  readonly checkRefusal?: (msg: Msg) => void;
}

export async function callService<T>(nc: NatsConnection, c: ServiceCall<T>): Promise<T> {
  const timeout = c.timeoutMs ?? 5000;
  let msg;
  try {
    // The caller's trace travels with the request (when tracing is on).
    const data = encode(c.body);
    let headers = withTraceHeader();
    if (c.signer) headers = proofHeaders(c.signer, c.subject, data, headers ?? natsHeaders());
    msg = await nc.request(c.subject, data, { timeout, ...(headers ? { headers } : {}) });
  } catch (e) {
    if (e instanceof NoRespondersError || (e instanceof RequestError && e.isNoResponders())) throw c.unavailable('no service is running for this tenant', e);
    if (e instanceof TimeoutError || (e instanceof RequestError && e.cause instanceof TimeoutError)) throw c.unavailable(`no answer within ${timeout} ms`, e);
    throw c.unavailable(`request failed: ${(e as Error).message}`, e);
  }
  const code = msg.headers?.get(Headers.ErrorCode);
  if (code) {
    c.checkRefusal?.(msg);
    throw c.fromWire(code, msg.headers?.get(Headers.Error) ?? code, msg.data.length > 0 ? decode(msg.data) : undefined);
  }
  c.checkReply?.(msg);
  return c.parse(decode(msg.data));
}

/** Answers a request with `body`, signed over the request's subject when `signer` is given (a reply the caller can prove came from this service). */
export function answerRequest(msg: Msg, body: object, signer?: Signer): void {
  const data = encode(body);
  msg.respond(data, signer ? { headers: proofHeaders(signer, msg.subject, data) } : undefined);
}

export interface RefusalOptions {
  /** Structured details for the caller (MessagePack body); the code and message say it all otherwise. */
  readonly details?: object;
  /** Signs the refusal: over `proofSubject` (default `refusalProofSubject(msg.subject, code)`) and the body. */
  readonly signer?: Signer;
  readonly proofSubject?: string;
}

/** What a signed refusal is signed over besides its body: the subject it answers and its code. */
export function refusalProofSubject(subject: string, code: string): string {
  return `${subject}!${code}`;
}

/** Answers a request with a refusal: the code and a one-line message in headers, details (if any) in the body. */
export function refuseRequest(msg: Msg, code: string, message: string, o: RefusalOptions = {}): void {
  const data = o.details ? encode(o.details) : new Uint8Array(0);
  const h = o.signer ? proofHeaders(o.signer, o.proofSubject ?? refusalProofSubject(msg.subject, code), data) : natsHeaders();
  h.set(Headers.ErrorCode, code);
  // Header values are one line.
  h.set(Headers.Error, message.replace(/[\r\n]+/g, ' ').slice(0, 1000));
  msg.respond(data, { headers: h });
}

/**
 * What a service tells its caller about a failure: a typed error as itself (`typed`), anything
 * else (a database that went away, a bug) as the service's own "unavailable" code with the
 * cause's first line, which holds no value (services never put one in a statement's text).
 */
export function wireError(e: unknown, unavailableCode: string, what: string): { code: string; message: string; typed: boolean } {
  if (CapstanError.is(e)) return { code: e.code, message: e.message, typed: true };
  return { code: unavailableCode, message: `${what}: ${dbErrorMessage(e).split('\n')[0]?.slice(0, 300) ?? ''}`, typed: false };
}

/**
 * The worker's side of a sandboxed step: one request on `cap.<t>.svc.sandbox.exec`, then
 * the service's replies on an inbox (`accepted`, `beat`s, one `done`). Silence for
 * `stallMs` means the service went away mid-step: the attempt is `sandbox_lost` (a new
 * attempt gets a new sandbox); no service at all is `sandbox_unavailable`. Either way the
 * step never runs anywhere but in a sandbox.
 */
import { NoRespondersError, nuid, RequestError, type Subscription } from '@nats-io/transport-node';
import {
  CapstanError,
  decode,
  encode,
  ErrorCode,
  parseCredentialRequest,
  parseSandboxCancelReply,
  parseSandboxReply,
  Subjects,
  toErrorRecord,
  type CredentialAnswer,
  type CredentialRequest,
  type ErrorRecord,
  type SandboxCancelReply,
  type SandboxExecRequest,
  type SandboxResult,
  type TenantId,
} from '@capstan/schemas';
import type { NatsConnection } from './nats.js';
import { callService } from './rpc.js';
import { withTraceHeader } from './tracing.js';

/**
 * Asks the tenant's sandbox service to kill one attempt (`cap.<t>.svc.sandbox.cancel`), through
 * kit's request/reply helper: `{ cancelled: false }` when no instance holds it (it is then
 * refused if it arrives later), a malformed request its typed refusal.
 * @throws CapstanError (`sandbox_unavailable` when no service answers in time, or the refusal's code)
 */
export function cancelInSandbox(
  nc: NatsConnection,
  t: TenantId,
  attempt: { runId: string; step: string; attempt: number },
  o: { timeoutMs?: number } = {},
): Promise<SandboxCancelReply> {
  return callService(nc, {
    subject: Subjects.sandboxCancel(t),
    body: attempt,
    parse: parseSandboxCancelReply,
    timeoutMs: o.timeoutMs ?? 2000,
    unavailable: (why, cause) => new CapstanError(ErrorCode.SandboxUnavailable, `sandbox cancel of step ${attempt.step} attempt ${attempt.attempt}: ${why}`, true, { cause }),
    fromWire: (code, message) => new CapstanError(code as ErrorCode, message, false),
  });
}

export interface SandboxCallOptions {
  /** Longest wait for the first reply (the service may be queueing the step). Default 10 s. */
  readonly firstReplyMs?: number;
  /** Longest silence between replies before the attempt is reported lost. Default 5 s. */
  readonly stallMs?: number;
  /** Called once the service has claimed a sandbox for the attempt. */
  readonly onAccepted?: (sandbox: string, warm: boolean) => void;
  readonly signal?: AbortSignal;
  /**
   * Mode 3b: decides a running step's request for a credential. Resolve with a lease id (or
   * none, when the sandbox reads secrets without leases); throw a CapstanError to refuse.
   */
  readonly onCredential?: (request: CredentialRequest) => Promise<{ leaseId?: string }>;
}

export type SandboxOutcome = { result: SandboxResult; error?: ErrorRecord } | { result?: undefined; error: ErrorRecord };

export async function execInSandbox(nc: NatsConnection, tenant: TenantId, req: SandboxExecRequest, o: SandboxCallOptions = {}): Promise<SandboxOutcome> {
  const stallMs = o.stallMs ?? 5000;
  let credentials: Subscription | undefined;
  if (o.onCredential) {
    const decide = o.onCredential;
    // The route only workers may listen on and only the sandbox service may ask on.
    credentials = nc.subscribe(Subjects.jitRoute(tenant, nuid.next().toLowerCase()), {
      callback: (err, m) => {
        if (err) return;
        const answer = (a: CredentialAnswer) => m.respond(encode(a));
        let request: CredentialRequest;
        try {
          request = parseCredentialRequest(decode(m.data));
        } catch (e) {
          answer({ granted: false, error: toErrorRecord(e, ErrorCode.SchemaViolation) });
          return;
        }
        decide(request).then(
          (g) => answer({ granted: true, ...(g.leaseId ? { leaseId: g.leaseId } : {}) }),
          (e: unknown) => answer({ granted: false, error: toErrorRecord(e, ErrorCode.PolicyDenied) }),
        );
      },
    });
  }
  try {
    return await exchange(nc, tenant, credentials ? { ...req, credentials: credentials.getSubject() } : req, stallMs, o);
  } finally {
    credentials?.unsubscribe();
  }
}

async function exchange(nc: NatsConnection, tenant: TenantId, req: SandboxExecRequest, stallMs: number, o: SandboxCallOptions): Promise<SandboxOutcome> {
  let replies: AsyncIterable<{ data: Uint8Array }>;
  try {
    const headers = withTraceHeader();
    replies = await nc.requestMany(Subjects.sandboxExec(tenant), encode(req), {
      strategy: 'stall',
      stall: stallMs,
      maxWait: o.firstReplyMs ?? 10_000,
      ...(headers ? { headers } : {}),
    });
  } catch (e) {
    return { error: unavailable(e) };
  }
  let accepted = false;
  try {
    for await (const m of replies) {
      if (o.signal?.aborted) break;
      const r = parseSandboxReply(decode(m.data));
      if (r.type === 'accepted') {
        accepted = true;
        o.onAccepted?.(r.sandbox, r.warm);
      } else if (r.type === 'done') {
        if (r.result) return r.error ? { result: r.result, error: r.error } : { result: r.result };
        return { error: r.error ?? { code: ErrorCode.SandboxFailed, message: 'the sandbox service answered without a result', retryable: true } };
      }
    }
  } catch (e) {
    return { error: unavailable(e) };
  }
  return {
    error: {
      code: ErrorCode.SandboxLost,
      message: accepted
        ? `the sandbox service stopped answering for ${stallMs} ms while step ${req.step} attempt ${req.attempt} ran`
        : `no sandbox service took step ${req.step} attempt ${req.attempt}`,
      retryable: true,
    },
  };
}

function unavailable(e: unknown): ErrorRecord {
  if (e instanceof NoRespondersError || (e instanceof RequestError && e.isNoResponders())) {
    return { code: ErrorCode.SandboxUnavailable, message: 'no sandbox service is running for this tenant; sandboxed steps never run unsandboxed', retryable: true };
  }
  return { code: ErrorCode.SandboxLost, message: `sandbox request failed: ${(e as Error).message}`, retryable: true };
}

/**
 * The worker's side of a sandboxed step: one request on `cap.<t>.svc.sandbox.exec`, then
 * the service's replies on an inbox (`accepted`, `beat`s, one `done`). Silence for
 * `stallMs` means the service went away mid-step: the attempt is `sandbox_lost` (a new
 * attempt gets a new sandbox); no service at all is `sandbox_unavailable`. Either way the
 * step never runs anywhere but in a sandbox.
 */
import { NoRespondersError, RequestError } from '@nats-io/transport-node';
import {
  decode,
  encode,
  ErrorCode,
  parseSandboxReply,
  Subjects,
  type ErrorRecord,
  type SandboxExecRequest,
  type SandboxResult,
  type TenantId,
} from '@capstan/schemas';
import type { NatsConnection } from './nats.js';

export interface SandboxCallOptions {
  /** Longest wait for the first reply (the service may be queueing the step). Default 10 s. */
  readonly firstReplyMs?: number;
  /** Longest silence between replies before the attempt is reported lost. Default 5 s. */
  readonly stallMs?: number;
  /** Called once the service has claimed a sandbox for the attempt. */
  readonly onAccepted?: (sandbox: string, warm: boolean) => void;
  readonly signal?: AbortSignal;
}

export type SandboxOutcome = { result: SandboxResult; error?: ErrorRecord } | { result?: undefined; error: ErrorRecord };

export async function execInSandbox(nc: NatsConnection, tenant: TenantId, req: SandboxExecRequest, o: SandboxCallOptions = {}): Promise<SandboxOutcome> {
  const stallMs = o.stallMs ?? 5000;
  let replies: AsyncIterable<{ data: Uint8Array }>;
  try {
    replies = await nc.requestMany(Subjects.sandboxExec(tenant), encode(req), { strategy: 'stall', stall: stallMs, maxWait: o.firstReplyMs ?? 10_000 });
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

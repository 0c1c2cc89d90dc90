/**
 * Dead letters: a message Capstan cannot use (undecodable, invalid, for an unknown
 * workflow, a stale result…) is published once to `cap.<t>.dlq.<source>` with the error
 * code and message in headers and the original bytes as the body, then acknowledged, so
 * it is never retried forever and the submitter can find out why.
 */
import type { JetStreamClient } from '@nats-io/jetstream';
import { headers as natsHeaders } from '@nats-io/transport-node';
import { Headers, Subjects, type DeadLetterSource, type ErrorRecord, type TenantId } from '@capstan/schemas';

export interface DeadLetterOrigin {
  readonly subject: string;
  /** Stream sequence of the original message, when it came from a stream. */
  readonly seq?: number;
  readonly data: Uint8Array;
  readonly runId?: string;
}

const MAX_BODY = 1024 * 1024;

export async function deadLetter(js: JetStreamClient, t: TenantId, source: DeadLetterSource, error: ErrorRecord, origin: DeadLetterOrigin): Promise<void> {
  const h = natsHeaders();
  h.set(Headers.ErrorCode, error.code);
  // Header values cannot hold newlines.
  h.set(Headers.Error, error.message.replace(/[\r\n]+/g, ' ').slice(0, 1000));
  h.set(Headers.SourceSubject, origin.subject);
  if (origin.seq !== undefined) h.set(Headers.SourceSeq, String(origin.seq));
  if (origin.runId) h.set(Headers.RunId, origin.runId);
  const msgID = origin.seq !== undefined ? `dlq:${origin.subject}:${origin.seq}` : undefined;
  await js.publish(Subjects.deadLetter(t, source), origin.data.subarray(0, MAX_BODY), { headers: h, ...(msgID ? { msgID } : {}) });
}

/** Reading a tenant's run events straight from its stream, in order, for a rebuild or a verify. */
import { JetStreamApiCodes, JetStreamApiError, JetStreamError, type JetStreamManager } from '@nats-io/jetstream';
import { Streams, Subjects, type TenantId } from '@capstan/schemas';
import type { StreamMessage } from './projection.js';

/** What one direct batch get asks the server for. */
const PAGE = 1000;

/**
 * Yields the tenant's run events (idempotency claims left out) from `from` on, in pages of
 * up to `page`, stopping after `upTo` when given, else at the end of the stream as it is
 * when read.
 */
export async function* readRunStream(jsm: JetStreamManager, t: TenantId, opts: { from?: number; upTo?: number; page?: number } = {}): AsyncGenerator<StreamMessage[]> {
  const stream = Streams.runs(t);
  const page = Math.min(opts.page ?? PAGE, PAGE);
  const upTo = opts.upTo ?? Number.MAX_SAFE_INTEGER;
  let from = opts.from ?? 1;
  while (from <= upTo) {
    const out: StreamMessage[] = [];
    try {
      const iter = await jsm.direct.getBatch(stream, { seq: from, next_by_subj: Subjects.allRuns(t), batch: page });
      for await (const m of iter) {
        if (m.seq > upTo) break;
        out.push({ seq: m.seq, subject: m.subject, data: m.data });
      }
    } catch (e) {
      if (!isEndOfStream(e)) throw e;
    }
    if (out.length > 0) yield out;
    if (out.length < page) return;
    from = (out.at(-1) as StreamMessage).seq + 1;
  }
}

/** Nothing at or after the sequence asked for: the end of the stream. */
function isEndOfStream(e: unknown): boolean {
  if (e instanceof JetStreamApiError) return e.code === JetStreamApiCodes.NoMessageFound || e.status === 404;
  // A batch get past the last message ends with a 404 status rather than an API error.
  return e instanceof JetStreamError && (e as { code?: unknown }).code === 404;
}

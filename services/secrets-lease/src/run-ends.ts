/**
 * Revoking the leases of runs that end. Per tenant, a durable pull consumer
 * (`secrets-lease`, shared by every instance) over the run subjects; each `run.completed`,
 * `run.failed` or `run.cancelled` revokes the run's open leases and refuses new ones, and a
 * `run.retried` (a failed run reopened) lifts that again. The ledger orders these by stream
 * sequence, so instances handling a run's events out of order still end where the stream
 * does.
 *
 * A message is acknowledged after its revocation committed; the database being away means
 * redelivery, never a skipped revocation. The consumer is made with the tenant (capstan
 * tenant add), from the first event: a run that ended before any instance watched still has
 * its leases revoked.
 */
import type { ConsumerMessages, JetStreamClient, JetStreamManager } from '@nats-io/jetstream';
import { Consumers, decode, runIdOfSubject, Streams, type RunId, type TenantId } from '@capstan/schemas';
import { metrics, type Logger } from '@capstan/kit';
import type { LeaseLedger } from './leases.js';

/** Events that close a run's leases, and the one that opens them again. */
const ENDS: ReadonlySet<string> = new Set(['run.completed', 'run.failed', 'run.cancelled']);
const REOPENS = 'run.retried';

export interface RunEndWatch {
  /** Runs revoked because they ended, since start. */
  readonly revokedRuns: number;
  stop(): Promise<void>;
}

/** The event type of a stored run event, without validating the rest (only two types matter here). */
function eventType(data: Uint8Array): string | undefined {
  try {
    const t = decode(data)['type'];
    return typeof t === 'string' ? t : undefined;
  } catch {
    return undefined;
  }
}

export function watchRunEnds(js: JetStreamClient, _jsm: JetStreamManager, t: TenantId, ledger: LeaseLedger, log: Logger): RunEndWatch {
  const stream = Streams.runs(t);
  let stopped = false;
  let messages: ConsumerMessages | undefined;
  let revokedRuns = 0;
  let done: Promise<void> = Promise.resolve();

  const consume = async (): Promise<void> => {
    const consumer = await js.consumers.get(stream, Consumers.secretsLease);
    const iter = await consumer.consume({ max_messages: 256 });
    messages = iter;
    for await (const m of iter) {
      const type = eventType(m.data);
      const runId = runIdOfSubject(m.subject) as RunId | undefined;
      if (!runId || !type || (!ENDS.has(type) && type !== REOPENS)) {
        m.ack();
        continue;
      }
      try {
        const n = await ledger.revoke(t, runId, { kind: 'run-event', event: type, streamSeq: m.seq });
        if (ENDS.has(type)) revokedRuns++;
        if (n > 0) {
          metrics.leases.inc({ tenant: t, event: 'revoked' }, n);
          log.info({ tenant: t, runId, leases: n, event: type }, 'revoked the leases of an ended run');
        }
        m.ack();
      } catch (e) {
        log.warn({ tenant: t, runId, event: type, reason: e instanceof Error ? e.message.split('\n')[0] : String(e) }, 'revoking an ended run failed; it will be redelivered');
        m.nak(1000);
      }
    }
  };

  const loop = (): void => {
    done = consume()
      .catch((e: unknown) => log.warn({ tenant: t, reason: e instanceof Error ? e.message : String(e) }, 'run-end consumer failed'))
      .finally(() => {
        // It ends when we close it; ended any other way, consuming starts again.
        if (!stopped) setTimeout(loop, 1000).unref();
      });
  };
  loop();

  return {
    get revokedRuns() {
      return revokedRuns;
    },
    async stop() {
      stopped = true;
      await messages?.close();
      await done;
    },
  };
}

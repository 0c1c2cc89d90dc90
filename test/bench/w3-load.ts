/**
 * The W3 load client shared by the benchmarks: submits `bench.w3` runs and learns of each
 * run's end from one consumer over the tenant's run stream (committed events only).
 */
import { DeliverPolicy, jetstream } from '@nats-io/jetstream';
import { createClient, newRunId, type NatsConnection, type TenantConnection } from '@capstan/kit';
import { decode, runIdOfSubject, Streams, Subjects, type TenantId } from '@capstan/schemas';

export interface W3Load {
  /** Submits one run and resolves when it has ended. */
  runOne(): Promise<void>;
  /** Runs `n` runs with `inflight` in flight at a time. */
  run(n: number, inflight: number): Promise<void>;
  close(): Promise<void>;
}

/**
 * `submitter`: the tenant's client (its own credential, as an application has); `watcher`: a
 * connection that may read the run stream with a consumer of its own (the admin's).
 */
export async function createW3Load(submitter: TenantConnection, watcher: NatsConnection, t: TenantId): Promise<W3Load> {
  const client = await createClient(submitter);
  const waiters = new Map<string, () => void>();
  const consumer = await jetstream(watcher).consumers.get(Streams.runs(t), { filter_subjects: [Subjects.allRuns(t)], deliver_policy: DeliverPolicy.New });
  const messages = await consumer.consume({ max_messages: 2000 });
  void (async () => {
    for await (const m of messages) {
      // The load client only needs each event's type: skip full schema validation.
      const type = decode(m.data)['type'];
      if (type === 'run.completed' || type === 'run.failed' || type === 'run.cancelled') waiters.get(runIdOfSubject(m.subject) ?? '')?.();
    }
  })();
  const runOne = async (): Promise<void> => {
    const id = newRunId();
    const done = new Promise<void>((r) => waiters.set(id, r));
    await client.submit(t, 'bench.w3', { runId: id });
    await done;
    waiters.delete(id);
  };
  return {
    runOne,
    async run(n, inflight) {
      let next = 0;
      await Promise.all(
        Array.from({ length: inflight }, async () => {
          while (next < n) {
            next++;
            await runOne();
          }
        }),
      );
    },
    close: () => messages.close().then(() => undefined),
  };
}

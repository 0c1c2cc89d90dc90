/**
 * The W3 load client shared by the benchmarks: submits `bench.w3` runs and learns of each
 * run's end from one consumer over the tenant's run stream (committed events only).
 */
import { DeliverPolicy, jetstream } from '@nats-io/jetstream';
import { createClient, newRunId, type NatsConnection, type TenantConnection } from '@capstan/kit';
import { decode, runIdOfSubject, Streams, Subjects, type TenantId } from '@capstan/schemas';

/**
 * Where one run's time went, in ms, from the clocks its record carries: the client's submit,
 * each decision's time (`at`, the orchestrator's clock when it decided), each event's stored
 * time (the server's) and when the client read the terminal event back. One machine, so the
 * clocks agree to well under a millisecond.
 */
export interface Hops {
  /** Submit publish → stored → delivered to an orchestrator → parsed → decided (run.started's `at`). */
  commandIn: number;
  /** Decision time → events stored (decide, the atomic append and its acknowledgement), per decision. */
  append: number;
  /** A step's work stored → its result decided: work published, pulled, run, result stored and delivered, per step. */
  stepRoundTrip: number;
  /** The handler itself (the worker's `durationMs`), per step: part of the round trip. */
  handler: number;
  /** Terminal event stored → read back by the client. */
  readBack: number;
  total: number;
}

export interface W3Load {
  /** Submits one run and resolves when it has ended (with its hops when asked). */
  runOne(withHops?: boolean): Promise<Hops | undefined>;
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
  const traced = new Map<string, { type: string; at: number; stored: number; durationMs?: number }[]>();
  const consumer = await jetstream(watcher).consumers.get(Streams.runs(t), { filter_subjects: [Subjects.allRuns(t)], deliver_policy: DeliverPolicy.New });
  const messages = await consumer.consume({ max_messages: 2000 });
  void (async () => {
    for await (const m of messages) {
      // The load client only needs each event's type: skip full schema validation.
      const ev = decode(m.data);
      const type = ev['type'];
      const runId = runIdOfSubject(m.subject) ?? '';
      const trace = traced.get(runId);
      if (trace) {
        const data = ev['data'] as { durationMs?: number } | undefined;
        trace.push({ type: String(type), at: Number(ev['at']), stored: m.info.timestampNanos / 1e6, ...(data?.durationMs !== undefined ? { durationMs: data.durationMs } : {}) });
      }
      if (type === 'run.completed' || type === 'run.failed' || type === 'run.cancelled') waiters.get(runIdOfSubject(m.subject) ?? '')?.();
    }
  })();
  const runOne = async (withHops = false): Promise<Hops | undefined> => {
    const id = newRunId();
    const done = new Promise<void>((r) => waiters.set(id, r));
    if (withHops) traced.set(id, []);
    const submitted = Date.now();
    await client.submit(t, 'bench.w3', { runId: id });
    await done;
    const seen = Date.now();
    waiters.delete(id);
    const trace = traced.get(id);
    traced.delete(id);
    return trace ? hopsOf(trace, submitted, seen) : undefined;
  };
  return {
    runOne,
    async run(n, inflight) {
      let next = 0;
      await Promise.all(
        Array.from({ length: inflight }, async () => {
          while (next < n) {
            next++;
            await runOne(false);
          }
        }),
      );
    },
    close: () => messages.close().then(() => undefined),
  };
}

function hopsOf(trace: readonly { type: string; at: number; stored: number; durationMs?: number }[], submitted: number, seen: number): Hops {
  const mean = (xs: number[]) => (xs.length ? xs.reduce((a, b) => a + b, 0) / xs.length : 0);
  // A decision's events share one `at` and one stored time: one sample per decision.
  const decisions = new Map<number, number>();
  for (const e of trace) decisions.set(e.at, e.stored);
  const scheduled = trace.filter((e) => e.type === 'step.scheduled');
  const completed = trace.filter((e) => e.type === 'step.completed');
  const started = trace.find((e) => e.type === 'run.started');
  const last = trace.at(-1);
  return {
    commandIn: started ? started.at - submitted : NaN,
    append: mean([...decisions].map(([at, stored]) => stored - at)),
    stepRoundTrip: mean(completed.map((c, i) => c.at - (scheduled[i]?.stored ?? c.at))),
    handler: mean(completed.map((c) => c.durationMs ?? 0)),
    readBack: last ? seen - last.stored : NaN,
    total: seen - submitted,
  };
}

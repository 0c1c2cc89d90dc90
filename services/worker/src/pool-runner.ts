/**
 * Pulls one tenant's pool (`cap.<t>.work.<pool>`) and runs each step inline (mode 0).
 *
 * Failure semantics: the work item is acknowledged only after the result is durably
 * published, so a worker crash leaves it unacknowledged. The next delivery of that item
 * (after the ack wait) is never run again: the receiving worker reports the attempt as
 * `worker_lost`, and the run retries it as a new attempt. A late result of the lost
 * attempt is then stale and rejected by the orchestrator. Long steps stay claimed by
 * heartbeats (`working()`) every third of the ack wait.
 */
import { setMaxListeners } from 'node:events';
import type { ConsumerMessages, JetStreamClient, JetStreamManager, JsMsg } from '@nats-io/jetstream';
import {
  CapstanError,
  CommandVerb,
  Consumers,
  DeadLetterSource,
  decode,
  encode,
  encodedSize,
  ErrorCode,
  LIMITS,
  Mode,
  MsgIds,
  parseStepCancel,
  Streams,
  Subjects,
  toErrorRecord,
  type CommandOf,
  type ErrorRecord,
  type JsonValue,
  type TenantId,
  type SignedWork,
  type WorkItem,
} from '@capstan/schemas';
import {
  addCollector,
  cancelInSandbox,
  checkWork,
  signedWork,
  coalescingPublisher,
  deadLetter,
  failSpan,
  inSpan,
  metrics,
  proofRecord,
  SpanKind,
  traceParentOf,
  type AuditSink,
  type Batching,
  type Logger,
  type NatsConnection,
  type Signer,
} from '@capstan/kit';
import type { Handlers } from './handlers.js';
import { runSandboxed } from './sandboxed.js';
import { bindExternalWrite } from './external-write.js';

export interface PoolRunnerOptions {
  readonly nc: NatsConnection;
  readonly js: JetStreamClient;
  readonly jsm: JetStreamManager;
  readonly tenant: TenantId;
  readonly pool: string;
  readonly handlers: Handlers;
  readonly workerId: string;
  readonly concurrency: number;
  readonly resultBatches: Batching;
  /** Report `started` only for steps still running after this long (0: always). */
  readonly startedAfterMs: number;
  /** Silence from the sandbox service after which a sandboxed attempt is reported lost. */
  readonly sandboxStallMs: number;
  /** Have leases issued for sandboxed steps' secrets (off: the sandbox reads a secrets file). */
  readonly leases: boolean;
  /** How long a mode-3b credential request waits for a person. */
  readonly approvalTtlMs: number;
  /** Where `ctx.externalWrite` records intents before it writes. */
  readonly audit: AuditSink;
  /** The tenant's account key: work items must be signed by its orchestrator user. */
  readonly account: string | undefined;
  /** Signs this worker's lease requests and mode-3b answers (the secrets-lease service and the orchestrator check who asks). */
  readonly signer: Signer | undefined;
  readonly log: Logger;
}

export interface PoolRunner {
  start(): Promise<void>;
  stop(): Promise<void>;
  readonly running: number;
}

/** How long a cancelled attempt is remembered, so its work item, if it comes later, is not run. */
const CANCELLED_TTL_MS = 10 * 60_000;

export function createPoolRunner(o: PoolRunnerOptions): PoolRunner {
  const { js, jsm, tenant: t, pool, handlers, workerId, log: baseLog } = o;
  const log = baseLog.child({ tenant: t, pool });
  const durable = Consumers.workPool(pool);
  let messages: ConsumerMessages | undefined;
  let cancelSub: ReturnType<NatsConnection['subscribe']> | undefined;
  /** Attempts running here, by `<runId>:<step>:<attempt>`: how to stop each. */
  const active = new Map<string, { readonly abort: AbortController; readonly item: WorkItem }>();
  /** Attempts their runs cancelled, with when to forget them. */
  const cancelled = new Map<string, number>();
  const attemptKey = (c: { runId: string; step: string; attempt: number }) => `${c.runId}:${c.step}:${c.attempt}`;

  /**
   * The run no longer wants an attempt: a mode-0 handler gets its abort signal at once; a
   * sandboxed one is killed by the sandbox service (asked here, within its 2 s); either way
   * the attempt is not reported, since its run would refuse the result as stale.
   */
  function cancel(raw: Uint8Array): void {
    let c;
    try {
      c = parseStepCancel(decode(raw));
    } catch {
      return;
    }
    const key = attemptKey(c);
    const now = Date.now();
    for (const [k, until] of cancelled) if (until < now) cancelled.delete(k);
    cancelled.set(key, now + CANCELLED_TTL_MS);
    const running = active.get(key);
    if (!running) return;
    log.info({ runId: c.runId, step: c.step, attempt: c.attempt }, 'attempt cancelled by its run');
    if (running.item.mode !== Mode.Inline) {
      cancelInSandbox(o.nc, t, c).catch((e: unknown) => log.warn({ err: e, runId: c.runId, step: c.step }, 'sandbox cancel not answered'));
    }
    running.abort.abort(new CapstanError(ErrorCode.Cancelled, `step ${c.step} attempt ${c.attempt} was cancelled: its run no longer needs it`, false));
  }
  let running = 0;
  const inflight = new Set<Promise<void>>();
  const stopping = new AbortController();
  // Every running step listens for the stop: as many listeners as the concurrency allows.
  setMaxListeners(0, stopping.signal);

  /** The pool consumer's ack wait, from the server (made at provisioning): heartbeats go every third of it. */
  let ackWaitMs = 30_000;

  // Results of steps finishing together go out together (pipelined, or one atomic batch).
  const publish = coalescingPublisher(o.nc, js, o.resultBatches);
  async function publishCommand<V extends 'started' | 'result'>(verb: V, body: CommandOf<V>, msgId: string): Promise<void> {
    const subject = Subjects.command(t, verb === 'started' ? CommandVerb.Started : CommandVerb.Result);
    const data = encode(body);
    // A start is signed: the run records this credential as the attempt's holder (whose
    // credential answers and leases are then believed), and takes no unsigned start.
    const headers = verb === 'started' && o.signer ? proofRecord(o.signer, subject, data) : undefined;
    await publish({ subject, data, msgId, ...(headers ? { headers } : {}) });
  }

  async function report(item: WorkItem, outcome: { result: JsonValue } | { error: ErrorRecord }, durationMs: number): Promise<void> {
    const base = { runId: item.runId, step: item.step, attempt: item.attempt, worker: workerId, durationMs };
    const body: CommandOf<'result'> = 'result' in outcome ? { ...base, outcome: 'completed', result: outcome.result } : { ...base, outcome: 'failed', error: outcome.error };
    await publishCommand('result', body, MsgIds.command(CommandVerb.Result, `${item.runId}:${item.step}:${item.attempt}`));
  }

  async function execute(item: WorkItem, work: SignedWork, abort: AbortController, announced: () => Promise<void>): Promise<{ result: JsonValue } | { error: ErrorRecord }> {
    if (item.mode !== Mode.Inline) {
      const until = AbortSignal.any([stopping.signal, abort.signal]);
      return runSandboxed(
        {
          nc: o.nc,
          js,
          jsm,
          tenant: t,
          workerId,
          stallMs: o.sandboxStallMs,
          leases: o.leases,
          approvalTtlMs: o.approvalTtlMs,
          stopping: until,
          signer: o.signer,
          account: o.account,
          announced,
          log,
        },
        item,
        work,
      );
    }
    const handler = handlers[item.handler];
    if (!handler) return { error: { code: ErrorCode.UnknownHandler, message: `no handler named ${JSON.stringify(item.handler)} on worker ${workerId}`, retryable: false } };
    const onStop = () => abort.abort(new Error('worker stopping'));
    stopping.signal.addEventListener('abort', onStop);
    let timer: NodeJS.Timeout | undefined;
    try {
      const timeout = new Promise<never>((_, reject) => {
        // A cancel ends the wait at once, whether or not the handler heeds its signal.
        abort.signal.addEventListener('abort', () => reject(abort.signal.reason as Error));
        timer = setTimeout(() => {
          const e = new CapstanError(ErrorCode.StepTimeout, `step ${item.step} attempt ${item.attempt} timed out after ${item.timeoutMs} ms`, true);
          abort.abort(e);
          reject(e);
        }, item.timeoutMs);
      });
      const stepLog = log.child({ runId: item.runId, step: item.step });
      const result = await Promise.race([
        Promise.resolve(
          handler({
            tenant: t,
            runId: item.runId,
            workflow: item.workflow,
            step: item.step,
            attempt: item.attempt,
            input: item.input,
            previous: item.previous,
            results: item.results ?? {},
            ...(item.omitted ? { omitted: item.omitted } : {}),
            ...(item.item !== undefined ? { item: item.item } : {}),
            ...(item.index !== undefined ? { index: item.index } : {}),
            ...(item.iteration !== undefined ? { iteration: item.iteration } : {}),
            signal: abort.signal,
            log: stepLog,
            externalWrite: bindExternalWrite(o.audit, workerId, { tenant: t, runId: item.runId, step: item.step, attempt: item.attempt, signal: abort.signal, log: stepLog }),
          }),
        ),
        timeout,
      ]);
      const value = result === undefined ? null : result;
      const size = encodedSize(value);
      if (size > LIMITS.resultBytes) {
        return {
          error: {
            code: ErrorCode.PayloadTooLarge,
            message: `step result is ${size} bytes; the limit is ${LIMITS.resultBytes} (results are metadata; put data in the tenant's storage)`,
            retryable: false,
          },
        };
      }
      return { result: value };
    } catch (e) {
      return { error: toErrorRecord(e) };
    } finally {
      clearTimeout(timer);
      stopping.signal.removeEventListener('abort', onStop);
    }
  }

  async function handle(msg: JsMsg): Promise<void> {
    let item: WorkItem;
    try {
      // Only what the run's orchestrator signed runs: anything else is dead-lettered unrun.
      item = checkWork(msg.headers, msg.subject, msg.data, o.account);
    } catch (e) {
      log.warn({ code: CapstanError.is(e) ? e.code : undefined, reason: CapstanError.is(e) ? e.message : undefined }, 'work item rejected and dead-lettered');
      metrics.deadLetters.inc({ tenant: t, source: DeadLetterSource.Work, code: CapstanError.is(e) ? e.code : ErrorCode.WorkRejected });
      await deadLetter(js, t, DeadLetterSource.Work, toErrorRecord(e, ErrorCode.WorkRejected), { subject: msg.subject, seq: msg.info.streamSequence, data: msg.data });
      msg.term();
      return;
    }
    const key = attemptKey(item);
    if (cancelled.has(key)) {
      // Its run cancelled this attempt before it got here: nothing to run, nothing to report.
      msg.ack();
      return;
    }
    // The item's age when taken: how long it waited for a worker (a worker may not read the
    // work stream itself, so this is what it can tell of the queue's age).
    if (msg.info.deliveryCount === 1) metrics.workQueueWait.observe({ tenant: t, pool }, Math.max(0, Date.now() - msg.info.timestampNanos / 1e6) / 1000);
    if (msg.info.deliveryCount > 1) {
      // Someone took this attempt and went silent. Never run it twice: report it lost.
      await report(item, { error: { code: ErrorCode.WorkerLost, message: `attempt ${item.attempt} was claimed by a worker that stopped responding`, retryable: true } }, 0);
      await msg.ackAck();
      return;
    }
    // A step that is still running after `startedAfterMs` is recorded as started, so the run
    // shows who runs it; a quicker one goes straight to its result (one command, not two).
    let started: Promise<void> | undefined;
    const announce = () => {
      started ??= publishCommand(
        'started',
        { runId: item.runId, step: item.step, attempt: item.attempt, worker: workerId },
        MsgIds.command(CommandVerb.Started, `${item.runId}:${item.step}:${item.attempt}`),
      );
      return started;
    };
    const startedTimer = o.startedAfterMs === 0 ? (void announce(), undefined) : setTimeout(() => void announce(), o.startedAfterMs);
    const heartbeat = setInterval(() => msg.working(), Math.max(250, Math.floor(ackWaitMs / 3)));
    const t0 = performance.now();
    const abort = new AbortController();
    active.set(key, { abort, item });
    const mode = String(item.mode);
    // The span of this hop, a child of the run's dispatch hop (the work item's traceparent).
    const attributes = {
      'capstan.tenant': t,
      'capstan.run_id': item.runId,
      'capstan.step': item.step,
      'capstan.attempt': item.attempt,
      'capstan.mode': item.mode,
      'capstan.pool': pool,
      'capstan.worker': workerId,
      'capstan.hop': 'worker',
    };
    try {
      await inSpan('worker', `worker ${item.step}#${item.attempt}`, { kind: SpanKind.CONSUMER, parent: traceParentOf(msg.headers), attributes }, async (span) => {
        // A mode-3b answer is taken only from the worker the run shows holding the attempt: it is announced first.
        const outcome = await execute(item, signedWork(msg.headers, msg.subject, msg.data), abort, announce);
        clearTimeout(startedTimer);
        const durationMs = Math.round(performance.now() - t0);
        const outcomeName = 'result' in outcome ? 'completed' : 'failed';
        if ('error' in outcome) failSpan(span, outcome.error);
        // `started` must be in the stream before the result, or it would arrive stale.
        await started;
        // A cancelled attempt is not reported: its run no longer wants it.
        if (abort.signal.aborted && cancelled.has(key)) return;
        await report(item, outcome, durationMs);
        metrics.steps.inc({ tenant: t, pool, mode, outcome: outcomeName });
        metrics.stepDuration.observe({ tenant: t, pool, mode, outcome: outcomeName }, durationMs / 1000);
      });
    } finally {
      active.delete(key);
      clearTimeout(startedTimer);
      clearInterval(heartbeat);
    }
    // Fire-and-forget: if this ack is lost, the redelivery is reported lost and rejected as stale.
    msg.ack();
  }

  /** Queue depth of this pool, refreshed before each metrics scrape (waiting and running items). */
  async function collect(): Promise<void> {
    const info = await jsm.consumers.info(Streams.work(t), durable);
    metrics.workQueueDepth.set({ tenant: t, pool }, info.num_pending + info.num_ack_pending);
  }
  let removeCollector: (() => void) | undefined;

  return {
    get running() {
      return running;
    },
    async start() {
      // The pool's consumer is made by the admin with the worker's credential (capstan creds
      // issue --role worker --pool …): a worker never creates consumers.
      cancelSub = o.nc.subscribe(Subjects.stepCancel(t), { callback: (err, m) => (err ? undefined : cancel(m.data)) });
      removeCollector = addCollector(collect);
      const consumer = await js.consumers.get(Streams.work(t), durable);
      ackWaitMs = Math.round(((await consumer.info(true)).config.ack_wait ?? 30_000_000_000) / 1_000_000);
      messages = await consumer.consume({ max_messages: o.concurrency });
      void (async () => {
        for await (const m of messages as ConsumerMessages) {
          // Bounded concurrency: wait for a free slot before taking the next item.
          while (running >= o.concurrency) await Promise.race(inflight);
          running++;
          const p = handle(m)
            .catch((e: unknown) => {
              // Result not published: leave the item unacknowledged; redelivery reports it lost.
              log.warn({ err: e }, 'step could not be reported; it will be redelivered');
            })
            .finally(() => {
              running--;
              inflight.delete(p);
            });
          inflight.add(p);
        }
      })().catch((e: unknown) => log.error({ err: e }, 'work consumer stopped'));
      log.info({ consumer: durable }, 'pulling work');
    },
    async stop() {
      cancelSub?.unsubscribe();
      removeCollector?.();
      await messages?.close();
      stopping.abort();
      await Promise.allSettled([...inflight]);
    },
  };
}

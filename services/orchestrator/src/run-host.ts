/**
 * The run host for one tenant: load → replay → decide → append → act.
 *
 * Commands are taken from the tenant's command stream in ticks. One tick decides every
 * command it holds (commands of one run in stream order), appends all resulting events as
 * one JetStream atomic batch (one fsync for many runs), then publishes the effects and
 * acknowledges the commands. Failure semantics:
 * - crash before the append: nothing was recorded; the commands are redelivered.
 * - crash after the append, before effects or acks: the commands are redelivered and
 *   found already decided (rejected as stale, or a duplicate submit); the effects are
 *   re-derived from the run's tail when the run is next loaded from its stream.
 * - another writer appended first: the optimistic lock refuses our batch for that run;
 *   we reload it from the stream and decide again. A run never forks.
 */
import type { ConsumerMessages, JetStreamClient, JetStreamManager, JsMsg } from '@nats-io/jetstream';
import { JetStreamApiCodes, JetStreamApiError } from '@nats-io/jetstream';
import type { NatsConnection } from '@nats-io/transport-node';
import { decide, foldRun, searchFieldsOf, startRun, type Decision, type Registry, type RunState } from '@capstan/actors';
import {
  CapstanError,
  Consumers,
  DeadLetterSource,
  decode,
  encode,
  encodedSize,
  ErrorCode,
  EVENT_ENVELOPE_VERSION,
  INPUT_EVENT_TYPES,
  isCommandVerb,
  parseCommand,
  RunNotFoundError,
  Streams,
  Subjects,
  toErrorRecord,
  type Command,
  type ErrorRecord,
  type RunEvent,
  type RunEventBody,
  type RunId,
  type TenantId,
} from '@capstan/schemas';
import { appendBatch, deadLetter, derivedRunId, failpoint, idempotencyHash, metrics, readRun, type Logger } from '@capstan/kit';
import { dispatchEffects, tailDecisions, type EffectSource } from './effects.js';
import { deadLetterWhenRejected, inputOf } from './commands.js';
import { createPolicyGate } from './policy-gate.js';
import { createRunObserver, startRecord } from './observe.js';
import type { RunCache } from './run-cache.js';

export interface TenantHostOptions {
  readonly nc: NatsConnection;
  readonly js: JetStreamClient;
  readonly jsm: JetStreamManager;
  readonly tenant: TenantId;
  readonly registry: Registry;
  readonly cache: RunCache;
  readonly log: Logger;
  readonly maxBatch: number;
  readonly maxTicks: number;
  /** The decision clock: the only place a run's time comes from. */
  readonly now: () => number;
  readonly policy: { readonly mode: 'on' | 'off'; readonly approvalTtlMs: number; readonly timeoutMs: number };
}

export interface TenantHostStats {
  commands: number;
  appendedEvents: number;
  conflicts: number;
  deadLetters: number;
  recoveredEffects: number;
  ticks: number;
}

export interface TenantHost {
  start(): Promise<void>;
  stop(): Promise<void>;
  readonly stats: Readonly<TenantHostStats>;
}

interface Pending {
  readonly msg: JsMsg;
  readonly cmd: Command;
  readonly runId: RunId;
}

interface Rejection {
  readonly msg: JsMsg;
  readonly error: ErrorRecord;
  readonly runId?: RunId;
  readonly deadLetter: boolean;
}

interface GroupResult {
  readonly runId: RunId;
  readonly pendings: readonly Pending[];
  readonly expected: number;
  readonly events: RunEvent[];
  readonly effects: EffectSource[];
  readonly recovered: EffectSource[];
  readonly rejections: Rejection[];
  readonly state: RunState | undefined;
}

/** Places a fault test can make the orchestrator die (`CAPSTAN_FAILPOINTS`, see kit's failpoint). */
export const Failpoints = {
  /** Decisions appended and acted on, commands not acknowledged yet: they will be redelivered. */
  BeforeAck: 'orchestrator.before_ack',
} as const;

const MAX_CONFLICT_RETRIES = 8;
/** Ticks whose effects are still being published before new ticks wait. */
const MAX_ACTING = 8;

export function createTenantHost(o: TenantHostOptions): TenantHost {
  const { nc, js, jsm, tenant: t, registry, cache, maxBatch } = o;
  const log = o.log.child({ tenant: t });
  const observer = createRunObserver({ tenant: t, jsm, log });
  const gate = createPolicyGate({ nc, js, tenant: t, ...o.policy, log, traceOf: (runId) => observer.traceOf(runId) });
  const stats: TenantHostStats = { commands: 0, appendedEvents: 0, conflicts: 0, deadLetters: 0, recoveredEffects: 0, ticks: 0 };
  /** Parsed commands waiting for a tick, in arrival order. */
  const queue: Pending[] = [];
  /** Runs whose commands are being decided and appended right now. */
  const deciding = new Set<RunId>();
  /** Acting on appended decisions (effects, dead letters, acks), in the background. */
  const acting = new Set<Promise<void>>();
  let activeTicks = 0;
  let messages: ConsumerMessages | undefined;
  let stopped = false;
  let idle: (() => void) | undefined;

  /** Parses an arriving command; poison is dead-lettered at once and never queued. */
  async function arrive(msg: JsMsg): Promise<void> {
    stats.commands++;
    metrics.commands.inc({ tenant: t });
    let cmd: Command;
    let runId: RunId;
    try {
      cmd = parseMessage(msg);
      runId = await runIdFor(msg, cmd);
    } catch (e) {
      await sendDeadLetter({ msg, error: toErrorRecord(e, ErrorCode.DecodeFailed), deadLetter: true });
      msg.ack();
      return;
    }
    queue.push({ msg, cmd, runId });
    pump();
  }

  /**
   * Starts ticks while there is work and room. Ticks run concurrently (each one atomic
   * batch in flight) over disjoint sets of runs, so a run's commands are still decided one
   * tick after another, in stream order.
   */
  function pump(): void {
    while (!stopped && activeTicks < o.maxTicks && acting.size < MAX_ACTING && queue.length > 0) {
      const batch: Pending[] = [];
      const taken = new Set<RunId>();
      for (let i = 0; i < queue.length && batch.length < maxBatch; ) {
        const p = queue[i] as Pending;
        if (deciding.has(p.runId) && !taken.has(p.runId)) {
          i++;
          continue;
        }
        taken.add(p.runId);
        deciding.add(p.runId);
        batch.push(p);
        queue.splice(i, 1);
      }
      if (batch.length === 0) return;
      activeTicks++;
      void runTick(batch, taken).finally(() => {
        activeTicks--;
        for (const r of taken) deciding.delete(r);
        if (activeTicks === 0 && queue.length === 0) idle?.();
        pump();
      });
    }
  }

  async function runTick(batch: Pending[], runs: Set<RunId>): Promise<void> {
    let act: () => Promise<void>;
    try {
      act = await tick(batch);
    } catch (e) {
      // Not a run's fault (NATS away, say): let the commands come back soon.
      log.warn({ err: e, commands: batch.length }, 'tick failed; commands will be redelivered');
      for (const r of runs) cache.delete(r);
      for (const p of batch) p.msg.nak(500);
      return;
    }
    // The runs are free for the next tick now; acting on this one goes on in the background.
    const p: Promise<void> = act()
      .catch((e: unknown) => {
        // Decisions are recorded but not acted on: leave the commands unacknowledged.
        // Their redelivery reloads the runs, which re-derives the effects of their tails.
        log.warn({ err: e, commands: batch.length }, 'acting on decisions failed; commands will be redelivered');
        for (const q of batch) q.msg.nak(500);
      })
      .finally(() => {
        acting.delete(p);
        pump();
      });
    acting.add(p);
  }

  /** Decides and appends one batch of commands; returns the acting that must follow. */
  async function tick(pendings: Pending[]): Promise<() => Promise<void>> {
    stats.ticks++;
    const byRun = new Map<RunId, Pending[]>();
    for (const p of pendings) {
      const list = byRun.get(p.runId);
      if (list) list.push(p);
      else byRun.set(p.runId, [p]);
    }
    // A redelivered command may be one whose decision was appended by a process that died
    // (or a tick that failed) before acting on it: reload that run so its tail is recovered.
    const t0 = performance.now();
    let groups = await Promise.all([...byRun].map(([runId, ps]) => decideGroup(runId, ps, ps.some((p) => p.msg.info.redelivered))));
    const t1 = performance.now();
    const done: GroupResult[] = [];
    for (let attempt = 0; groups.length > 0; attempt++) {
      const toAppend = groups.filter((g) => g.events.length > 0);
      const outcomes = await appendBatch(nc, t, toAppend.map((g) => ({ runId: g.runId, expectedLastSubjectSeq: g.expected, events: g.events })));
      const conflicted: GroupResult[] = [];
      toAppend.forEach((g, i) => {
        const out = outcomes[i];
        if (out?.ok) {
          stats.appendedEvents += g.events.length;
          if (g.state) cache.set(g.runId, { state: g.state, lastStreamSeq: out.lastStreamSeq });
          observer.recorded(g.runId, g.state, g.events, g.pendings.map((p) => p.msg));
          done.push(g);
        } else {
          stats.conflicts++;
          metrics.conflicts.inc({ tenant: t });
          cache.delete(g.runId);
          conflicted.push(g);
          log.debug({ runId: g.runId, reason: out?.reason }, 'append conflict; reloading run');
        }
      });
      done.push(...groups.filter((g) => g.events.length === 0));
      if (conflicted.length > 0 && attempt >= MAX_CONFLICT_RETRIES) {
        // Leave them unacknowledged: redelivery tries again later.
        log.warn({ runs: conflicted.map((g) => g.runId) }, 'runs still conflicting; commands left for redelivery');
        break;
      }
      groups = await Promise.all(conflicted.map((g) => decideGroup(g.runId, g.pendings, true)));
    }

    if (log.isLevelEnabled('debug')) {
      log.debug({ commands: pendings.length, runs: byRun.size, decideMs: +(t1 - t0).toFixed(2), appendMs: +(performance.now() - t1).toFixed(2), queued: queue.length }, 'tick');
    }
    const effects = done.flatMap((g) => [...g.recovered, ...g.effects]);
    stats.recoveredEffects += done.reduce((n, g) => n + g.recovered.reduce((k, r) => k + r.events.length, 0), 0);
    return async () => {
      try {
        await dispatchEffects(nc, js, t, effects, gate, observer);
      } catch (e) {
        // A later command for these runs must not trust the cache: reload recovers the tail.
        for (const g of done) cache.delete(g.runId);
        throw e;
      }
      const allRejected = done.flatMap((g) => g.rejections);
      await Promise.all(allRejected.filter((r) => r.deadLetter).map((r) => sendDeadLetter(r)));
      failpoint(Failpoints.BeforeAck);
      for (const g of done) for (const p of g.pendings) p.msg.ack();
    };
  }

  function parseMessage(msg: JsMsg): Command {
    const verb = msg.subject.slice(msg.subject.lastIndexOf('.') + 1);
    if (!isCommandVerb(verb)) throw new CapstanError(ErrorCode.SchemaViolation, `unknown command verb ${JSON.stringify(verb)}`);
    return parseCommand(verb, decode(msg.data), encodedSize);
  }

  /** Which run a command is for. A submit without a run id gets a deterministic one. */
  async function runIdFor(msg: JsMsg, cmd: Command): Promise<RunId> {
    if (cmd.verb !== 'submit') return cmd.body.runId;
    if (cmd.body.runId) return cmd.body.runId;
    const fresh = derivedRunId(t, msg.info.streamSequence, Math.floor(msg.info.timestampNanos / 1e6));
    if (!cmd.body.idempotencyKey) return fresh;
    return claimIdempotencyKey(cmd.body.idempotencyKey, fresh);
  }

  /** First claim of a key wins, forever: `cap.<t>.idem.<hash>` holds the run id it maps to. */
  async function claimIdempotencyKey(key: string, fresh: RunId): Promise<RunId> {
    const subject = Subjects.idempotency(t, idempotencyHash(t, key));
    for (let i = 0; i < 3; i++) {
      const existing = await jsm.direct.getMessage(Streams.runs(t), { last_by_subj: subject }).catch(() => null);
      if (existing) return (decode(existing.data) as { runId: RunId }).runId;
      try {
        await js.publish(subject, encode({ runId: fresh }), { expect: { lastSubjectSequence: 0 } });
        return fresh;
      } catch (e) {
        if (!(e instanceof JetStreamApiError && (e.code === JetStreamApiCodes.StreamWrongLastSequence || e.code === JetStreamApiCodes.StreamWrongLastSequenceUnknown))) throw e;
      }
    }
    throw new CapstanError(ErrorCode.ConcurrencyConflict, 'idempotency key claim did not settle', true);
  }

  async function load(
    runId: RunId,
    forceReload: boolean,
  ): Promise<{ cached?: { state: RunState; lastStreamSeq: number }; recovered: EffectSource[]; fromCache: boolean; events?: readonly RunEvent[] }> {
    if (!forceReload) {
      const hit = cache.get(runId);
      if (hit) return { cached: hit, recovered: [], fromCache: true };
    }
    const loaded = await readRun(jsm, t, runId);
    if (loaded.events.length === 0) return { recovered: [], fromCache: false };
    const { state } = foldRun(registry, loaded.events);
    const tail = tailDecisions(loaded.events, (e) => INPUT_EVENT_TYPES.has(e.type));
    return { cached: { state, lastStreamSeq: loaded.lastStreamSeq }, recovered: tail.length > 0 ? [{ runId, state, events: tail, recovered: true }] : [], fromCache: false, events: loaded.events };
  }

  /**
   * Decides a run's commands. A rejection is final only when decided on a state read from
   * the stream: a cached state may be behind another orchestrator's appends, and a valid
   * result judged stale against it would be lost. So a rejection on a cached state reloads
   * the run and decides again.
   */
  async function decideGroup(runId: RunId, pendings: readonly Pending[], forceReload: boolean): Promise<GroupResult> {
    const first = await decideGroupOnce(runId, pendings, forceReload);
    if (!first.fromCache || first.rejections.length === 0) return first;
    cache.delete(runId);
    return decideGroupOnce(runId, pendings, true);
  }

  async function decideGroupOnce(runId: RunId, pendings: readonly Pending[], forceReload: boolean): Promise<GroupResult & { fromCache: boolean }> {
    const result = { runId, pendings, expected: 0, events: [] as RunEvent[], effects: [] as EffectSource[], recovered: [] as EffectSource[], rejections: [] as Rejection[], state: undefined as RunState | undefined, fromCache: false };
    let loaded;
    try {
      loaded = await load(runId, forceReload);
    } catch (e) {
      // A run whose history does not replay (corrupt, or its workflow version is gone) is
      // not decided further; every command for it is dead-lettered with the reason.
      log.error({ err: e, runId }, 'run cannot be loaded');
      const error = toErrorRecord(e, ErrorCode.DeterminismViolation);
      return { ...result, rejections: pendings.map((p) => ({ msg: p.msg, error, runId, deadLetter: true })) };
    }
    let state = loaded.cached?.state;
    const out = { ...result, expected: loaded.cached?.lastStreamSeq ?? 0, recovered: loaded.recovered, state, fromCache: loaded.fromCache };
    for (const p of pendings) {
      const at = o.now();
      const causationId = `cmd:${p.msg.info.streamSequence}`;
      let decision: Decision;
      let input: RunEventBody;
      try {
        if (p.cmd.verb === 'submit') {
          if (state) {
            log.debug({ runId }, 'duplicate submit ignored');
            continue;
          }
          const wf = registry.latest(p.cmd.body.workflow);
          const runInput = p.cmd.body.input ?? {};
          const search = searchFieldsOf(wf, runInput);
          const started = {
            workflow: wf.id,
            version: wf.version,
            input: runInput,
            ...(p.cmd.body.idempotencyKey ? { idempotencyKey: p.cmd.body.idempotencyKey } : {}),
            ...(search ? { search } : {}),
            ...startRecord(p.msg, wf),
          };
          input = { type: 'run.started', data: started };
          decision = startRun(wf, started);
        } else {
          if (!state) throw new RunNotFoundError(t, runId);
          input = inputOf(p.cmd);
          decision = decide(state, input as Parameters<typeof decide>[1]);
        }
      } catch (e) {
        // A redelivered command whose decision a process recorded before dying is done: its
        // refusal now ("decided already", "not failed") would be a false dead letter, and the
        // sender has been answered by the recorded event.
        if (p.msg.info.redelivered && loaded.events?.some((ev) => ev.causationId === causationId && INPUT_EVENT_TYPES.has(ev.type))) {
          log.debug({ runId, verb: p.cmd.verb }, 'redelivered command was decided already');
          continue;
        }
        const error = toErrorRecord(e, ErrorCode.EventRejected);
        const quiet = error.code === ErrorCode.StaleAttempt || error.code === ErrorCode.EventRejected ? !deadLetterWhenRejected(p.cmd.verb) : false;
        if (!quiet) log.info({ runId, code: error.code, verb: p.cmd.verb }, `command rejected: ${error.message}`);
        out.rejections.push({ msg: p.msg, error: { ...error, message: `${error.message} (run ${runId})` }, runId, deadLetter: !quiet });
        continue;
      }
      let seq = state?.seq ?? 0;
      const envelope = (body: RunEventBody): RunEvent => ({ v: EVENT_ENVELOPE_VERSION, ...body, runId, seq: ++seq, at, causationId }) as RunEvent;
      const inputEvent = envelope(input);
      const decided = decision.decisions.map(envelope);
      out.events.push(inputEvent, ...decided);
      if (decided.length > 0) out.effects.push({ runId, state: decision.state, events: decided });
      state = decision.state;
    }
    return { ...out, state };
  }

  async function sendDeadLetter(r: Rejection): Promise<void> {
    stats.deadLetters++;
    metrics.deadLetters.inc({ tenant: t, source: DeadLetterSource.Command, code: r.error.code });
    try {
      await deadLetter(js, t, DeadLetterSource.Command, r.error, {
        subject: r.msg.subject,
        seq: r.msg.info.streamSequence,
        data: r.msg.data,
        ...(r.runId ? { runId: r.runId } : {}),
      });
    } catch (e) {
      log.warn({ err: e, code: r.error.code }, 'dead letter could not be published');
    }
  }

  return {
    stats,
    async start() {
      // Made by the admin at provisioning (capstan tenant add): a service never creates consumers.
      const consumer = await js.consumers.get(Streams.commands(t), Consumers.orchestrator);
      messages = await consumer.consume({ max_messages: maxBatch * 4 });
      void (async () => {
        for await (const m of messages as ConsumerMessages) void arrive(m);
      })().catch((e: unknown) => log.error({ err: e }, 'command consumer stopped'));
      log.info({ consumer: Consumers.orchestrator }, 'serving tenant');
    },
    async stop() {
      gate.stop();
      await messages?.close();
      if (activeTicks > 0) await new Promise<void>((r) => (idle = r));
      stopped = true;
      await Promise.allSettled([...acting]);
      // Unprocessed commands go back to the stream for another orchestrator.
      for (const p of queue.splice(0)) p.msg.nak();
    },
  };
}

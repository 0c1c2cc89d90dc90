/**
 * The run host for one tenant: load → replay → decide → append → act. This file schedules
 * the work; each job is its own file under host/: intake (parse, run ids, input schemas),
 * recover (load and re-derive lost effects), decide, append, and effects (acting).
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
 *
 * Runs are partitioned (host/partitions.ts): this instance decides only runs of partitions
 * it holds a lease on; a command for another partition is handed to its owner
 * (host/forward.ts). A refused append also makes the instance step down from the run's
 * partition until the lease table confirms it still owns it.
 */
import type { ConsumerMessages, JetStreamClient, JetStreamManager, JsMsg } from '@nats-io/jetstream';
import type { NatsConnection, Subscription } from '@nats-io/transport-node';
import type { Registry } from '@capstan/actors';
import { Consumers, DeadLetterSource, ErrorCode, Streams, toErrorRecord, type RunId, type TenantId } from '@capstan/schemas';
import { deadLetter, failpoint, metrics, type Batching, type Logger, type Signer } from '@capstan/kit';
import { dispatchEffects, tellParents } from './effects.js';
import { createPolicyGate } from './policy-gate.js';
import { createScheduler } from './scheduler.js';
import { createRunObserver } from './observe.js';
import type { RunCache } from './run-cache.js';
import { createIntake } from './host/intake.js';
import { createDecider } from './host/decide.js';
import { appendGroups, BEFORE_APPEND } from './host/append.js';
import type { CommandMsg, GroupResult, Pending, Rejection, TenantHostStats } from './host/types.js';
import { createPartitionTable, type PartitionTable } from './host/partitions.js';
import { forwardCommand, serveForwarded } from './host/forward.js';

export type { TenantHostStats };

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
  /** This instance's id among the tenant's orchestrators (a subject token). */
  readonly instance: string;
  readonly lease: { readonly ttlMs: number; readonly renewMs: number };
  /** How effects go out (see kit's Batching). */
  readonly effectBatches: Batching;
  /** The tenant account's public key: commands are believed only when signed by its users. */
  readonly account: string;
  /** The orchestrator's own user in the tenant: it signs each work item (workers and sandboxes run nothing else) and the policy answers it records. */
  readonly signer: Signer;
}

export interface TenantHost {
  start(): Promise<void>;
  stop(): Promise<void>;
  readonly stats: Readonly<TenantHostStats>;
}

/** Places a fault test can make the orchestrator die (`CAPSTAN_FAILPOINTS`, see kit's failpoint). */
export const Failpoints = {
  /** Decisions appended and acted on, commands not acknowledged yet: they will be redelivered. */
  BeforeAck: 'orchestrator.before_ack',
  /** Decisions made, not appended yet (use `stall`: a paused owner whose lease is taken meanwhile). */
  BeforeAppend: BEFORE_APPEND,
} as const;

/** Ticks whose effects are still being published before new ticks wait. */
const MAX_ACTING = 8;
/** A command whose partition has no live owner (or a refusing one) comes back after this long. */
const NO_OWNER_RETRY_MS = 100;
const FORWARD_TIMEOUT_MS = 1000;

export function createTenantHost(o: TenantHostOptions): TenantHost {
  const { nc, js, jsm, tenant: t, registry, cache, maxBatch } = o;
  const log = o.log.child({ tenant: t });
  const observer = createRunObserver({ tenant: t, jsm, log });
  const trust = { accounts: [o.account] };
  const gate = createPolicyGate({ nc, js, tenant: t, ...o.policy, log, signer: o.signer, trust, traceOf: (runId) => observer.traceOf(runId) });
  const intake = createIntake({ js, jsm, tenant: t, registry, trust });
  const decider = createDecider({ jsm, tenant: t, registry, cache, log, now: o.now, trust });
  const scheduler = createScheduler({ nc, js, jsm, tenant: t, registry, now: o.now, signer: o.signer, log });
  const stats: TenantHostStats = { commands: 0, appendedEvents: 0, conflicts: 0, deadLetters: 0, recoveredEffects: 0, ticks: 0, forwarded: 0, fenced: 0, partitions: 0 };
  let table: PartitionTable | undefined;
  let inbox: Subscription | undefined;
  const owns = (runId: RunId): boolean => table?.owns(table.partitionOf(runId)) ?? false;
  /** Parsed commands waiting for a tick, in arrival order. */
  const queue: Pending[] = [];
  /** Runs whose commands are being decided and appended, or whose decisions are being acted on. */
  const deciding = new Set<RunId>();
  /** Acting on appended decisions (effects, dead letters, acks), in the background. */
  const acting = new Set<Promise<void>>();
  let activeTicks = 0;
  let messages: ConsumerMessages | undefined;
  let stopped = false;
  let idle: (() => void) | undefined;

  /** Parses a command; poison is dead-lettered at once and never queued. Undefined when it was. */
  async function parse(msg: CommandMsg): Promise<Pending | undefined> {
    try {
      return { msg, ...(await intake.parse(msg)) };
    } catch (e) {
      await sendDeadLetter({ msg, error: toErrorRecord(e, ErrorCode.DecodeFailed), deadLetter: true });
      msg.ack();
      return undefined;
    }
  }

  /** A command from the consumer: decided here if its run's partition is ours, else handed to its owner. */
  async function arrive(msg: JsMsg): Promise<void> {
    stats.commands++;
    metrics.commands.inc({ tenant: t });
    // Schedule commands and wake-ups are about no run: the scheduler takes them.
    if (scheduler.handles(msg.subject.slice(msg.subject.lastIndexOf('.') + 1))) {
      scheduler.arrive(msg);
      return;
    }
    const p = await parse(msg);
    if (!p || !table) return;
    const partition = table.partitionOf(p.runId);
    if (table.owns(partition)) {
      queue.push(p);
      pump();
      return;
    }
    const owner = table.ownerOf(partition);
    if (owner === undefined || owner === o.instance || !(await forwardCommand(nc, t, owner, msg, FORWARD_TIMEOUT_MS))) {
      msg.nak(NO_OWNER_RETRY_MS);
      return;
    }
    stats.forwarded++;
  }

  /** A command handed over by the instance that pulled it: taken only while its partition is ours. */
  async function arriveForwarded(msg: CommandMsg): Promise<boolean> {
    const p = await parse(msg);
    if (!p) return true;
    if (!owns(p.runId)) return false;
    queue.push(p);
    pump();
    return true;
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
      for (let i = 0; i < queue.length && batch.length < maxBatch;) {
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
      for (const r of runs) deciding.delete(r);
      return;
    }
    // Acting on this tick goes on in the background; its runs are decided again only once
    // their effects are out. A crash then leaves unpublished only the decisions after a run's
    // last input, which is what recovery re-derives (a fan-out's items complete while earlier
    // items are being dispatched: deciding one of them first would strand those effects).
    const p: Promise<void> = act()
      .catch((e: unknown) => {
        // Decisions are recorded but not acted on: leave the commands unacknowledged.
        // Their redelivery reloads the runs, which re-derives the effects of their tails.
        log.warn({ err: e, commands: batch.length }, 'acting on decisions failed; commands will be redelivered');
        for (const q of batch) q.msg.nak(500);
      })
      .finally(() => {
        acting.delete(p);
        for (const r of runs) deciding.delete(r);
        pump();
      });
    acting.add(p);
  }

  /** Decides and appends one batch of commands; returns the acting that must follow. */
  async function tick(all: Pending[]): Promise<() => Promise<void>> {
    stats.ticks++;
    // Commands queued before their partition was given up go back for the new owner.
    const pendings = all.filter((p) => owns(p.runId));
    for (const p of all) if (!owns(p.runId)) p.msg.nak(NO_OWNER_RETRY_MS);
    const byRun = new Map<RunId, Pending[]>();
    for (const p of pendings) {
      const list = byRun.get(p.runId);
      if (list) list.push(p);
      else byRun.set(p.runId, [p]);
    }
    // A redelivered command may be one whose decision was appended by a process that died
    // (or a tick that failed) before acting on it: reload that run so its tail is recovered.
    const t0 = performance.now();
    const decided = await Promise.all(
      [...byRun].map(([runId, ps]) =>
        decider.decideGroup(
          runId,
          ps,
          ps.some((p) => p.msg.info.redelivered),
        ),
      ),
    );
    const t1 = performance.now();
    // Effects a crash may have lost are published before anything new is appended for their
    // runs: recovery re-derives only the decisions after a run's last input, so they must be
    // out before another input lands on top of them.
    const publishRecovered = async (groups: GroupResult[]): Promise<GroupResult[]> => {
      const recovered = groups.flatMap((g) => g.recovered);
      if (recovered.length === 0) return groups;
      await dispatchEffects(nc, js, t, recovered, o.signer, gate, observer, o.effectBatches);
      stats.recoveredEffects += recovered.reduce((k, r) => k + r.events.length, 0);
      return groups.map((g) => ({ ...g, recovered: [] }));
    };
    const refused = (runId: RunId) => {
      stats.fenced++;
      table?.fenced(table.partitionOf(runId));
    };
    const { done, fenced } = await appendGroups(
      { nc, tenant: t, cache, log, stats, observer, owns, refused },
      decided,
      (runId, ps) => decider.decideGroup(runId, ps, true),
      publishRecovered,
    );
    for (const g of fenced) for (const p of [...g.pendings, ...g.deferred]) p.msg.nak(NO_OWNER_RETRY_MS);

    if (log.isLevelEnabled('debug')) {
      log.debug({ commands: pendings.length, runs: byRun.size, decideMs: +(t1 - t0).toFixed(2), appendMs: +(performance.now() - t1).toFixed(2), queued: queue.length }, 'tick');
    }
    // Commands left for their runs' next tick go back to the front of the queue, in order;
    // their runs stay locked until this tick's effects are out.
    queue.unshift(...done.flatMap((g) => g.deferred));
    const effects = done.flatMap((g) => g.effects);
    return async () => {
      try {
        await dispatchEffects(nc, js, t, effects, o.signer, gate, observer, o.effectBatches);
      } catch (e) {
        // A later command for these runs must not trust the cache: reload recovers the tail.
        for (const g of done) cache.delete(g.runId);
        throw e;
      }
      const allRejected = done.flatMap((g) => g.rejections);
      await Promise.all(allRejected.filter((r) => r.deadLetter).map((r) => sendDeadLetter(r)));
      // A refused child's parent takes the refusal as its child's failure (before the ack: a crash re-decides it).
      await tellParents(
        nc,
        js,
        t,
        allRejected.flatMap((r) => (r.toParent ? [r.toParent] : [])),
        o.signer,
        o.effectBatches,
      );
      failpoint(Failpoints.BeforeAck);
      for (const g of done) for (const p of g.pendings) p.msg.ack();
    };
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
    get stats() {
      stats.partitions = table?.owned().length ?? 0;
      return stats;
    },
    async start() {
      table = await createPartitionTable({
        js,
        jsm,
        tenant: t,
        instance: o.instance,
        ...o.lease,
        log,
        onLost: (p) => cache.deleteWhere((runId) => table?.partitionOf(runId) === p),
      });
      inbox = serveForwarded(nc, t, o.instance, arriveForwarded, log);
      await table.start();
      // Made by the admin at provisioning (capstan tenant add): a service never creates consumers.
      const consumer = await js.consumers.get(Streams.commands(t), Consumers.orchestrator);
      messages = await consumer.consume({ max_messages: maxBatch * 4 });
      void (async () => {
        for await (const m of messages as ConsumerMessages) void arrive(m);
      })().catch((e: unknown) => log.error({ err: e }, 'command consumer stopped'));
      await scheduler.start();
      log.info({ consumer: Consumers.orchestrator, instance: o.instance, partitions: table.count, owned: table.owned() }, 'serving tenant');
    },
    async stop() {
      gate.stop();
      inbox?.unsubscribe();
      await messages?.close();
      await scheduler.stop();
      if (activeTicks > 0) await new Promise<void>((r) => (idle = r));
      stopped = true;
      await Promise.allSettled([...acting]);
      // Unprocessed commands go back to the stream for another orchestrator.
      for (const p of queue.splice(0)) p.msg.nak();
      // Leases given back: the others take the partitions at their next round, not after expiry.
      await table?.stop();
    },
  };
}

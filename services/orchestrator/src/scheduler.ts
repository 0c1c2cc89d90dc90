/**
 * Schedules, hosted by the orchestrator (it already owns the tenant's command consumer and
 * durable timers). Per tenant:
 *
 * - `cap.<t>.cmd.schedule` changes a schedule. The orchestrator is the single writer of
 *   `cap.<t>.schedules.<id>`: it judges the command, records the result with the subject's
 *   expected last sequence, then acts (arm the first wake-up, start a triggered run). A
 *   refusal is a dead letter naming the command's sequence, which the client reads back.
 * - Each schedule has at most one pending wake-up: a JetStream message schedule (`@at`) on
 *   `cap.<t>.timers.schedule.<id>` that publishes `cap.<t>.cmd.fire` at the slot's time.
 *   A new wake-up on that subject replaces the old, so the chain cannot fork. The server's
 *   clock fires it, and while no orchestrator runs the fire waits in the work queue.
 * - A fire decides the due slots (`planFiring`: catch-up, then overlap), submits their runs,
 *   records the new state on `cap.<t>.schedstate.<id>` with the expected last sequence, arms
 *   the next wake-up, and only then is acknowledged. A run's id is derived from schedule,
 *   generation and slot, so whatever is done twice (a redelivery after a crash, two
 *   orchestrators, a clock step) submits the same run, which starts once.
 * - On start, and every {@link RECONCILE_MS}, every active schedule's wake-up is armed again
 *   from its state (a chain broken by a lost message heals).
 */
import type { JetStreamClient, JetStreamManager, JsMsg } from '@nats-io/jetstream';
import { JetStreamApiError } from '@nats-io/jetstream';
import type { NatsConnection } from '@nats-io/transport-node';
import type { Registry } from '@capstan/actors';
import {
  CapstanError,
  CommandVerb,
  DeadLetterSource,
  decode,
  encode,
  encodedSize,
  ErrorCode,
  Headers,
  InvalidArgumentError,
  LIMITS,
  MsgIds,
  parseScheduleCommand,
  parseScheduleFire,
  PayloadTooLargeError,
  ScheduleStatus,
  Streams,
  Subjects,
  toErrorRecord,
  TriggerVerb,
  UnknownWorkflowError,
  type ScheduleCommand,
  type ScheduleFire,
  type ScheduleRecord,
  type ScheduleState,
  type RunId,
  type TenantId,
  JS_SEQUENCE_CONFLICT_CODES,
} from '@capstan/schemas';
import {
  checkScheduleSpec,
  deadLetter,
  isTerminalEvent,
  listScheduleRecords,
  planFiring,
  proofRecord,
  publishDurably,
  readSchedule,
  readScheduleState,
  scheduleRunId,
  slotsOf,
  triggerRunId,
  BUFFER_RECHECK_MS,
  type Logger,
  type OutMsg,
  type Signer,
} from '@capstan/kit';

/** How often schedules without a pending wake-up are looked for. */
export const RECONCILE_MS = 30_000;
/** A submitted run that has not started after this long (refused, say) no longer counts as running. */
const PENDING_SUBMIT_MS = 60_000;
const CAS_ATTEMPTS = 8;

export interface SchedulerStats {
  commands: number;
  fires: number;
  staleFires: number;
  started: number;
  skipped: number;
}

export interface Scheduler {
  /** Whether a command verb is the scheduler's (`schedule`, `fire`). */
  handles(verb: string): boolean;
  /** Handles one message and acknowledges it (or leaves it for redelivery). */
  arrive(msg: JsMsg): void;
  start(): Promise<void>;
  stop(): Promise<void>;
  readonly stats: Readonly<SchedulerStats>;
}

export interface SchedulerOptions {
  readonly nc: NatsConnection;
  readonly js: JetStreamClient;
  readonly jsm: JetStreamManager;
  readonly tenant: TenantId;
  readonly registry: Registry;
  readonly now: () => number;
  /** Signs the slots' submits as the orchestrator: a run names its requester (four eyes on its approvals). */
  readonly signer: Signer;
  readonly log: Logger;
}

const isCasConflict = (e: unknown) => e instanceof JetStreamApiError && JS_SEQUENCE_CONFLICT_CODES.has(e.code);

export function createScheduler(o: SchedulerOptions): Scheduler {
  const { nc, js, jsm, tenant: t, registry, now } = o;
  const log = o.log.child({ tenant: t, part: 'scheduler' });
  const stats: SchedulerStats = { commands: 0, fires: 0, staleFires: 0, started: 0, skipped: 0 };
  const inflight = new Set<Promise<void>>();
  /** One decision per schedule at a time in this process (others are fenced by the expected sequences). */
  const lanes = new Map<string, Promise<void>>();
  let reconciler: NodeJS.Timeout | undefined;
  let stopped = false;

  function inLane(id: string, f: () => Promise<void>): Promise<void> {
    const prev = lanes.get(id) ?? Promise.resolve();
    const p = prev.then(f, f);
    const tail = p.catch(() => undefined);
    lanes.set(id, tail);
    void tail.then(() => lanes.get(id) === tail && lanes.delete(id));
    return p;
  }

  // -------------------------------------------------------------------------------------
  // Wake-ups and runs.

  function wakeMsg(rec: ScheduleRecord, slot: number, wakeAt: number): OutMsg {
    const fire: ScheduleFire = { schedule: rec.schedule, generation: rec.generation, epoch: rec.epoch, slot, wake: wakeAt };
    return {
      subject: Subjects.scheduleWake(t, rec.schedule),
      data: encode(fire),
      headers: { [Headers.Schedule]: `@at ${new Date(wakeAt).toISOString()}`, [Headers.ScheduleTarget]: Subjects.triggerCommand(t, TriggerVerb.Fire) },
    };
  }

  async function arm(rec: ScheduleRecord, slot: number | undefined, wakeAt: number | undefined): Promise<void> {
    if (slot === undefined || wakeAt === undefined) return;
    await publishDurably(nc, js, [wakeMsg(rec, slot, wakeAt)]);
  }

  async function submit(rec: ScheduleRecord, runs: readonly RunId[]): Promise<void> {
    const body = (runId: RunId) => ({ workflow: rec.spec.workflow, runId, ...(rec.spec.input ? { input: rec.spec.input } : {}) });
    await publishDurably(
      nc,
      js,
      runs.map((runId) => {
        const subject = Subjects.command(t, CommandVerb.Submit);
        const data = encode(body(runId));
        return { subject, data, msgId: MsgIds.command(CommandVerb.Submit, runId), headers: proofRecord(o.signer, subject, data) };
      }),
    );
  }

  /** Whether the schedule's last run has not ended (a submit not started yet counts, for a while). */
  async function isActive(last: NonNullable<ScheduleState['last']>): Promise<boolean> {
    let m;
    try {
      m = await jsm.direct.getMessage(Streams.runs(t), { last_by_subj: Subjects.run(t, last.runId) });
    } catch {
      m = null;
    }
    if (!m) return now() - last.at < PENDING_SUBMIT_MS;
    try {
      return !isTerminalEvent(decode(m.data) as Parameters<typeof isTerminalEvent>[0]);
    } catch {
      return false;
    }
  }

  // -------------------------------------------------------------------------------------
  // Commands.

  /** What a command makes of the schedule's current record. @throws CapstanError (a refusal) */
  function decideCommand(cmd: ScheduleCommand, cur: ScheduleRecord | undefined, cmdSeq: number, at: number): ScheduleRecord {
    const change = { op: cmd.op, by: cmd.by, ...(cmd.reason !== undefined ? { reason: cmd.reason } : {}), cmdSeq };
    const live = cur && cur.status !== ScheduleStatus.Deleted ? cur : undefined;
    if (cmd.op === 'create') {
      if (live) throw new CapstanError(ErrorCode.ScheduleExists, `schedule ${cmd.schedule} exists (${live.status}); delete it first to make a new one under this id`);
      const spec = checkScheduleSpec(cmd.spec);
      if (!registry.has(spec.workflow)) throw new UnknownWorkflowError(spec.workflow);
      if (spec.input && encodedSize(spec.input) > LIMITS.inputBytes) throw new PayloadTooLargeError('schedule input', encodedSize(spec.input), LIMITS.inputBytes);
      if (slotsOf(spec, at).after(at) === undefined) throw new InvalidArgumentError(`schedule ${cmd.schedule} would never fire: its last slot is before now`);
      return { schedule: cmd.schedule, generation: cmdSeq, epoch: cmdSeq, status: ScheduleStatus.Active, spec, anchorMs: at, change };
    }
    if (!live) throw new CapstanError(ErrorCode.ScheduleNotFound, `tenant ${t} has no schedule ${cmd.schedule}`);
    switch (cmd.op) {
      case 'pause':
        return { ...live, status: ScheduleStatus.Paused, change };
      case 'resume':
        return live.status === ScheduleStatus.Paused ? { ...live, status: ScheduleStatus.Active, epoch: cmdSeq, change } : { ...live, change };
      case 'delete':
        return { ...live, status: ScheduleStatus.Deleted, change };
      case 'trigger':
        if (!registry.has(live.spec.workflow)) throw new UnknownWorkflowError(live.spec.workflow);
        return { ...live, change: { ...change, runId: triggerRunId(t, live.schedule, live.generation, cmdSeq, at) } };
    }
  }

  /** Acting on a recorded change; safe to repeat (a redelivered command does it again). */
  async function afterCommand(rec: ScheduleRecord, at: number): Promise<void> {
    const { op, cmdSeq } = rec.change;
    if ((op === 'create' || op === 'resume') && rec.status === ScheduleStatus.Active && rec.epoch === cmdSeq) {
      const first = slotsOf(rec.spec, rec.anchorMs).after(at);
      await arm(rec, first, first);
    } else if (op === 'trigger' && rec.change.runId) {
      await submit(rec, [rec.change.runId]);
      // The triggered run counts for the overlap policy like a slot's run.
      const st = await readScheduleState(jsm, t, rec.schedule).catch(() => undefined);
      if (st && st.record.generation === rec.generation && st.record.last?.runId !== rec.change.runId) {
        const next: ScheduleState = { ...st.record, last: { runId: rec.change.runId, slot: at, at }, started: st.record.started + 1 };
        await js.publish(Subjects.scheduleState(t, rec.schedule), encode(next), { expect: { lastSubjectSequence: st.seq } }).catch(() => undefined);
      }
    }
  }

  async function onCommand(msg: JsMsg): Promise<void> {
    stats.commands++;
    const cmdSeq = msg.info.streamSequence;
    const at = Math.floor(msg.info.timestampNanos / 1e6);
    let cmd: ScheduleCommand;
    try {
      cmd = parseScheduleCommand(decode(msg.data));
    } catch (e) {
      return refuse(msg, e);
    }
    await inLane(cmd.schedule, async () => {
      let recorded: ScheduleRecord | undefined;
      for (let i = 0; i < CAS_ATTEMPTS && !recorded; i++) {
        const cur = await readSchedule(jsm, t, cmd.schedule).catch((e: unknown) => {
          // A record that does not decode is replaced by a valid one (create), or is no schedule.
          if (CapstanError.is(e) && e.code === ErrorCode.SchemaViolation) return undefined;
          throw e;
        });
        if (cur && cur.record.change.cmdSeq === cmdSeq) {
          recorded = cur.record; // decided before a crash or a lost ack: act again
          break;
        }
        let rec: ScheduleRecord;
        try {
          rec = decideCommand(cmd, cur?.record, cmdSeq, at);
        } catch (e) {
          if (!CapstanError.is(e)) throw e;
          return refuse(msg, e);
        }
        try {
          await js.publish(Subjects.schedule(t, cmd.schedule), encode(rec), { expect: { lastSubjectSequence: cur?.seq ?? 0 } });
          recorded = rec;
          log.info({ schedule: cmd.schedule, op: cmd.op, by: cmd.by, status: rec.status }, 'schedule changed');
        } catch (e) {
          if (!isCasConflict(e)) throw e;
        }
      }
      if (!recorded) throw new CapstanError(ErrorCode.ConcurrencyConflict, `schedule ${cmd.schedule} kept changing under the command`, true);
      await afterCommand(recorded, at);
      msg.ack();
    });
  }

  async function refuse(msg: JsMsg, e: unknown): Promise<void> {
    const error = toErrorRecord(e, ErrorCode.SchemaViolation);
    log.info({ code: error.code, seq: msg.info.streamSequence }, `schedule command refused: ${error.message}`);
    await deadLetter(js, t, DeadLetterSource.Command, error, { subject: msg.subject, seq: msg.info.streamSequence, data: msg.data });
    msg.ack();
  }

  // -------------------------------------------------------------------------------------
  // Fires.

  async function onFire(msg: JsMsg): Promise<void> {
    stats.fires++;
    let fire: ScheduleFire;
    try {
      fire = parseScheduleFire(decode(msg.data));
    } catch (e) {
      return refuse(msg, e);
    }
    await inLane(fire.schedule, async () => {
      const cur = await readSchedule(jsm, t, fire.schedule).catch(() => undefined);
      const rec = cur?.record;
      if (!rec || rec.generation !== fire.generation || rec.epoch !== fire.epoch || rec.status !== ScheduleStatus.Active) {
        // Armed before a pause, a resume or a delete: nothing to do.
        stats.staleFires++;
        msg.ack();
        return;
      }
      for (let i = 0; i < CAS_ATTEMPTS; i++) {
        const stored = await readScheduleState(jsm, t, rec.schedule).catch(() => undefined);
        const own = stored && stored.record.generation === rec.generation && stored.record.epoch === rec.epoch ? stored.record : undefined;
        const decided = own && (own.next === undefined ? own.buffered === undefined : fire.slot < own.next);
        if (own && decided) {
          // Decided already (a redelivery, or a wake-up re-armed while this one was in flight):
          // make sure the chain goes on, nothing more.
          stats.staleFires++;
          await armFrom(rec, own);
          msg.ack();
          return;
        }
        const base: ScheduleState = own ?? { schedule: rec.schedule, generation: rec.generation, epoch: rec.epoch, next: fire.slot, started: 0, skipped: 0 };
        const at = now();
        const lastActive = base.last ? await isActive(base.last) : false;
        const plan = planFiring({ spec: rec.spec, anchorMs: rec.anchorMs, next: base.next, woken: fire.wake, now: at, lastActive, buffered: base.buffered });
        const runs = plan.start.map((slot) => ({ slot, runId: scheduleRunId(t, rec.schedule, rec.generation, slot) }));
        // Submit first: a crash after it decides the same slots again, naming the same runs.
        await submit(
          rec,
          runs.map((r) => r.runId),
        );
        const lastRun = runs.at(-1);
        const next: ScheduleState = {
          schedule: rec.schedule,
          generation: rec.generation,
          epoch: rec.epoch,
          ...(plan.next !== undefined ? { next: plan.next } : {}),
          ...(lastRun ? { last: { runId: lastRun.runId, slot: lastRun.slot, at } } : base.last ? { last: base.last } : {}),
          ...(plan.buffered !== undefined ? { buffered: plan.buffered } : {}),
          started: base.started + runs.length,
          skipped: base.skipped + plan.skipped.length,
        };
        try {
          await js.publish(Subjects.scheduleState(t, rec.schedule), encode(next), { expect: { lastSubjectSequence: stored?.seq ?? 0 } });
        } catch (e) {
          if (isCasConflict(e)) continue;
          throw e;
        }
        stats.started += runs.length;
        stats.skipped += plan.skipped.length;
        if (runs.length > 0 || plan.skipped.length > 0) {
          log.debug(
            { schedule: rec.schedule, started: runs.map((r) => new Date(r.slot).toISOString()), skipped: plan.skipped.length, buffered: plan.buffered, lateMs: at - fire.slot },
            'schedule fired',
          );
        }
        await arm(rec, next.next ?? next.buffered, plan.wakeAt);
        msg.ack();
        return;
      }
      throw new CapstanError(ErrorCode.ConcurrencyConflict, `schedule ${rec.schedule}'s state kept changing under a firing`, true);
    });
  }

  /** Arms the wake-up a recorded state asks for. */
  function armFrom(rec: ScheduleRecord, st: ScheduleState): Promise<void> {
    if (st.buffered !== undefined) return arm(rec, st.next ?? st.buffered, Math.min(st.next ?? Infinity, now() + BUFFER_RECHECK_MS));
    return arm(rec, st.next, st.next);
  }

  /**
   * Arms every active schedule's wake-up again from its recorded state. A wake-up replaces
   * the one pending on its subject, so this is safe when one exists, and heals a chain a lost
   * message broke. (The pending one is not looked at: reading the command stream's messages
   * is nobody's right but the admin's.)
   */
  async function reconcile(): Promise<void> {
    for (const { record: rec, at } of await listScheduleRecords(jsm, t)) {
      if (stopped || rec.status !== ScheduleStatus.Active) continue;
      await inLane(rec.schedule, async () => {
        const st = await readScheduleState(jsm, t, rec.schedule).catch(() => undefined);
        const own = st && st.record.generation === rec.generation && st.record.epoch === rec.epoch ? st.record : undefined;
        if (own) return armFrom(rec, own);
        // Never fired in this epoch: from the first slot after the change that started it.
        const first = slotsOf(rec.spec, rec.anchorMs).after(at);
        return arm(rec, first, first);
      });
    }
  }

  function track(p: Promise<void>, msg: JsMsg): void {
    const q = p.catch((e: unknown) => {
      // Not the command's fault (NATS away, say): it comes back.
      log.warn({ err: e, subject: msg.subject }, 'schedule message not handled; it will be redelivered');
      msg.nak(1000);
    });
    inflight.add(q);
    void q.finally(() => inflight.delete(q));
  }

  return {
    stats,
    handles: (verb) => verb === TriggerVerb.Schedule || verb === TriggerVerb.Fire,
    arrive(msg) {
      const verb = msg.subject.slice(msg.subject.lastIndexOf('.') + 1);
      track(verb === TriggerVerb.Fire ? onFire(msg) : onCommand(msg), msg);
    },
    async start() {
      const loop = () => {
        if (stopped) return;
        reconciler = setTimeout(
          () =>
            void reconcile()
              .catch((e: unknown) => log.warn({ err: e }, 'schedule reconciliation failed'))
              .finally(loop),
          RECONCILE_MS,
        );
        reconciler.unref();
      };
      await reconcile().catch((e: unknown) => log.warn({ err: e }, 'schedule reconciliation failed'));
      loop();
    },
    async stop() {
      stopped = true;
      clearTimeout(reconciler);
      await Promise.allSettled([...inflight]);
    },
  };
}

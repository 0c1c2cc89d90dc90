/**
 * Deciding a run's commands: each becomes an input event, decided by the run's machine;
 * the input and its decisions are wrapped in envelopes with consecutive sequences, one
 * decision time (`at`) and the command as their cause. Nothing here touches NATS but the
 * load of a run that is not cached.
 */
import type { JetStreamManager } from '@nats-io/jetstream';
import { CURRENT_ENGINE, decide, searchFieldsOf, startRun, type Decision, type Registry, type RunState } from '@capstan/actors';
import {
  CapstanError,
  ErrorCode,
  EVENT_ENVELOPE_VERSION,
  INPUT_EVENT_TYPES,
  RunNotFoundError,
  toErrorRecord,
  UnprovenError,
  type RunEvent,
  type RunEventBody,
  type RunId,
  type TenantId,
} from '@capstan/schemas';
import { readRun, type Logger, type Trust } from '@capstan/kit';
import { checkCredentialAnswer, checkCredentialHolder, checkDecider, checkStarter, deciderOf, type ProvenActor } from './authority.js';
import { deadLetterWhenRejected, inputOf } from '../commands.js';
import { startRecord } from '../observe.js';
import type { RunCache } from '../run-cache.js';
import type { EffectSource } from '../effects.js';
import { loadRun } from './recover.js';
import { notTheRunSubmitted, refusedChildOutcome } from './children.js';
import type { GroupResult, Pending, Rejection } from './types.js';

export interface Decider {
  /**
   * Decides a run's commands. A rejection is final only when decided on a state read from
   * the stream: a cached state may be behind another orchestrator's appends, and a valid
   * result judged stale against it would be lost. So a rejection on a cached state reloads
   * the run and decides again.
   */
  decideGroup(runId: RunId, pendings: readonly Pending[], forceReload: boolean): Promise<GroupResult>;
}

export function createDecider(o: {
  jsm: JetStreamManager;
  tenant: TenantId;
  registry: Registry;
  cache: RunCache;
  log: Logger;
  now: () => number;
  /** Whose signatures are believed (the tenant's account key): a forwarded policy answer is checked under it. */
  trust: Trust;
}): Decider {
  const { jsm, tenant: t, registry, cache, log } = o;

  async function decideOnce(runId: RunId, pendings: readonly Pending[], forceReload: boolean): Promise<GroupResult & { fromCache: boolean }> {
    const empty = {
      runId,
      pendings,
      deferred: [] as Pending[],
      expected: 0,
      events: [] as RunEvent[],
      effects: [] as EffectSource[],
      recovered: [] as EffectSource[],
      rejections: [] as Rejection[],
      state: undefined as RunState | undefined,
      fromCache: false,
    };
    let loaded;
    try {
      loaded = await loadRun(jsm, t, registry, cache, runId, forceReload);
    } catch (e) {
      // A run whose history does not replay (corrupt, or its workflow version is gone) is
      // not decided further; every command for it is dead-lettered with the reason.
      log.error({ err: e, runId }, 'run cannot be loaded');
      const error = toErrorRecord(e, ErrorCode.DeterminismViolation);
      return {
        ...empty,
        rejections: pendings.map((p) => {
          const toParent = refusedChildOutcome(p, error);
          return { msg: p.msg, error, runId, deadLetter: true, ...(toParent ? { toParent } : {}) };
        }),
      };
    }
    let state = loaded.cached?.state;
    const out = { ...empty, expected: loaded.cached?.lastStreamSeq ?? 0, recovered: loaded.recovered, state, fromCache: loaded.fromCache };
    const taken: Pending[] = [];
    // The run's history, read once when a decision must be judged against it (who may approve).
    let history = loaded.events;
    const historyNow = async (): Promise<readonly RunEvent[]> => [...(history ??= (await readRun(jsm, t, runId)).events), ...out.events];
    for (const [i, p] of pendings.entries()) {
      // One decision with effects per run per tick, and it comes last: should the process die
      // before acting, recovery re-derives exactly the decisions after the run's last input.
      // The run's other commands wait for its next tick (runs with one step at a time, as
      // every engine-1 run, rarely have a second command in a tick).
      if (out.effects.length > 0) {
        out.deferred.push(...pendings.slice(i));
        break;
      }
      taken.push(p);
      const at = o.now();
      const causationId = `cmd:${p.msg.info.streamSequence}`;
      let decision: Decision;
      let input: RunEventBody;
      try {
        if (p.cmd.verb === 'submit') {
          if (p.refused) throw new CapstanError(p.refused.code as ErrorCode, p.refused.message);
          if (state) {
            // A child's or a continuation's id is derived, so a client may have taken it first: never adopted.
            const foreign = notTheRunSubmitted(state, p.cmd.body);
            if (foreign !== undefined) throw new CapstanError(ErrorCode.RunAlreadyExists, foreign);
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
            // A child run knows its parent (which takes its outcome); a continuation, the run it continues.
            ...(p.cmd.body.parent ? { parent: p.cmd.body.parent } : {}),
            ...(p.cmd.body.continuedFrom ? { continuedFrom: p.cmd.body.continuedFrom } : {}),
            // New runs are decided by the current engine, for ever.
            engine: CURRENT_ENGINE,
            ...startRecord(p.msg, wf),
          };
          // A signed submit names its requester (for the four-eyes rule on approvals).
          const submitter = p.author ? deciderOf(p.author, { by: undefined }) : undefined;
          input = { type: 'run.started', data: { ...started, ...(submitter ? { submittedBy: submitter.by, submitter: submitter.signer } : {}) } };
          decision = startRun(wf, started, runId);
        } else {
          if (!state) throw new RunNotFoundError(t, runId);
          let decider: ProvenActor | undefined;
          if (p.author && (p.cmd.verb === 'approve' || p.cmd.verb === 'deny' || p.cmd.verb === 'retry' || p.cmd.verb === 'cancel')) {
            decider = deciderOf(p.author, p.cmd.body);
            if (p.cmd.verb !== 'cancel') checkDecider(p.cmd, decider, await historyNow());
          }
          // Intake took a credential answer only signed by a worker: here, only the one holding the attempt.
          if (p.cmd.verb === 'credential') {
            if (!p.author) throw new UnprovenError('cmd.credential carries no proven author');
            checkCredentialHolder(p.cmd, p.author, await historyNow());
            checkCredentialAnswer(t, p.cmd, p.author, await historyNow(), o.trust);
          }
          // A start only from a worker of the step's pool, recorded with its signer.
          if (p.cmd.verb === 'started') {
            if (!p.author) throw new UnprovenError('cmd.started carries no proven author');
            const signer = checkStarter(p.cmd, p.author, await historyNow());
            input = { type: 'step.started', data: { step: p.cmd.body.step, attempt: p.cmd.body.attempt, worker: p.cmd.body.worker, signer } };
          } else input = inputOf(p.cmd, decider);
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
        const toParent = refusedChildOutcome(p, error);
        out.rejections.push({ msg: p.msg, error: { ...error, message: `${error.message} (run ${runId})` }, runId, deadLetter: !quiet, ...(toParent ? { toParent } : {}) });
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
    return { ...out, pendings: taken, state };
  }

  return {
    async decideGroup(runId, pendings, forceReload) {
      const first = await decideOnce(runId, pendings, forceReload);
      if (!first.fromCache || first.rejections.length === 0) return first;
      cache.delete(runId);
      return decideOnce(runId, pendings, true);
    },
  };
}

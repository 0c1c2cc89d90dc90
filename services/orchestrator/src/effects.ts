/**
 * Effects: what a recorded decision asks the world to do. They are derived from decision
 * events alone (plus the run's context), published with deterministic message ids, and
 * safe to publish twice: JetStream's duplicate window drops the second copy. That is what
 * lets recovery re-derive the effects of a run's tail after a crash (the log is the outbox).
 */
import type { JetStreamClient } from '@nats-io/jetstream';
import type { NatsConnection } from '@nats-io/transport-node';
import { proofRecord, publishDurably, type Batching, type OutMsg, type Signer } from '@capstan/kit';
import { stepInputsOf, type RunState } from '@capstan/actors';
import type { PolicyGate } from './policy-gate.js';
import type { RunObserver } from './observe.js';
import {
  CommandVerb,
  ErrorCode,
  encode,
  encodedSize,
  Headers,
  MAX_ERROR_MESSAGE_CHARS,
  MsgIds,
  Subjects,
  type RunEvent,
  type StepCancel,
  type CommandOf,
  type RunId,
  type TenantId,
  type TimerCommand,
  type WorkItem,
} from '@capstan/schemas';

/** One decision's effects, with the run state they were decided in. */
export interface EffectSource {
  readonly runId: RunId;
  readonly state: RunState;
  readonly events: readonly RunEvent[];
  /** Re-derived from a loaded run's tail (they may have gone out before): no dispatch span. */
  readonly recovered?: boolean;
}

/**
 * The orchestrator's own commands (a child's submit and outcome, a child's cancel) are signed
 * like a person's: intake believes a cancel only from a proven author.
 */
function pushSigned(out: OutMsg[], subject: string, data: Uint8Array, msgId: string, signer?: Signer): void {
  out.push({ subject, data, msgId, ...(signer ? { headers: proofRecord(signer, subject, data) } : {}) });
}

/**
 * Publishes the effects of the given decisions, each stream's share as atomic batches (one
 * acknowledgement, and one fsync, for many runs). Timers go first and work second: once a
 * worker has seen a step, its timers are known to exist, so recovery only ever has to look
 * at a run's last decisions.
 */
export async function dispatchEffects(
  nc: NatsConnection,
  js: JetStreamClient,
  t: TenantId,
  sources: readonly EffectSource[],
  signer: Signer,
  gate?: PolicyGate,
  observer?: RunObserver,
  batching: Batching = 'pipelined',
): Promise<number> {
  const timers: OutMsg[] = [];
  const work: OutMsg[] = [];
  const cancels: StepCancel[] = [];
  const commands: OutMsg[] = [];
  const dispatched: { runId: RunId; event: RunEvent }[] = [];
  const command = <V extends 'submit' | 'cancel' | 'child'>(verb: V, body: CommandOf<V>, msgId: string) =>
    pushSigned(commands, Subjects.command(t, verb), encode(body), msgId, signer);
  for (const src of sources) {
    const continuedAs = src.events.find((e) => e.type === 'run.continued');
    for (const ev of src.events) {
      if (ev.type === 'child.started') {
        // The child's id is derived, and its submit carries it: a second submit is a duplicate.
        const d = ev.data;
        command(
          'submit',
          { workflow: d.workflow, input: d.input, runId: d.child as RunId, parent: { runId: src.runId, step: d.step, attempt: d.attempt } },
          MsgIds.startRun(d.child as RunId),
        );
      } else if (ev.type === 'run.continued') {
        // The continuation is the same workflow; a child's continuation reports to the same parent.
        const d = ev.data;
        // The chain reports under the id its parent started (the first run of the chain).
        const p = src.state.parent;
        const parent = p ? { parent: { runId: p.runId as RunId, step: p.step, attempt: p.attempt, child: (p.child ?? src.runId) as RunId } } : {};
        command('submit', { workflow: src.state.workflow.id, input: d.input, runId: d.next as RunId, continuedFrom: src.runId, ...parent }, MsgIds.startRun(d.next as RunId));
      } else if ((ev.type === 'run.completed' || ev.type === 'run.failed' || ev.type === 'run.cancelled') && src.state.parent && !continuedAs) {
        // A child run ended: its parent takes the outcome (a failure, or a cancel, fails the parent's step).
        const p = src.state.parent;
        const base = { runId: p.runId as RunId, step: p.step, attempt: p.attempt, child: (p.child ?? src.runId) as RunId };
        const body: CommandOf<'child'> =
          ev.type === 'run.completed'
            ? { ...base, outcome: 'completed', result: ev.data.output }
            : ev.type === 'run.failed'
              ? {
                  ...base,
                  outcome: 'failed',
                  error: { code: ErrorCode.ChildFailed, message: `${ev.data.error.code}: ${ev.data.error.message}`.slice(0, MAX_ERROR_MESSAGE_CHARS), retryable: true },
                }
              : {
                  ...base,
                  outcome: 'failed',
                  error: {
                    code: ErrorCode.ChildFailed,
                    message: `the child run was cancelled${ev.data.reason ? `: ${ev.data.reason}` : ''}`.slice(0, MAX_ERROR_MESSAGE_CHARS),
                    retryable: false,
                  },
                };
        command('child', body, MsgIds.childOutcome(src.runId, ev.seq));
      }
      if (ev.type === 'step.cancelled' && ev.data.child !== undefined) {
        // The parent ended first and the child's parent-close policy is `cancel`.
        command('cancel', { runId: ev.data.child as RunId, reason: `its parent run ${src.runId} ended` }, MsgIds.childCancel(ev.data.child as RunId));
      }
      if (ev.type === 'timer.scheduled') {
        const d = ev.data;
        const body: TimerCommand = { runId: src.runId, timerId: d.timerId, kind: d.kind, step: d.step, attempt: d.attempt };
        // A sleep until a time that has passed fires at once (the decision's own time).
        const fireAt = d.until !== undefined ? Math.max(d.until, ev.at) : ev.at + d.delayMs;
        timers.push({
          subject: Subjects.timer(t, src.runId, d.timerId),
          data: encode(body),
          msgId: MsgIds.timer(src.runId, d.timerId),
          headers: {
            [Headers.Schedule]: `@at ${new Date(fireAt).toISOString()}`,
            [Headers.ScheduleTarget]: Subjects.command(t, CommandVerb.Timer),
          },
        });
      } else if (ev.type === 'policy.requested') {
        gate?.ask(src.runId, ev.data.step, ev.data.attempt, ev.data.queries);
      } else if (ev.type === 'step.cancelled') {
        cancels.push({ runId: src.runId, step: ev.data.step, attempt: ev.data.attempt });
      } else if (ev.type === 'step.scheduled') {
        const d = ev.data;
        const { workflow } = src.state;
        const item: WorkItem = {
          runId: src.runId,
          workflow: workflow.id,
          version: workflow.version,
          step: d.step,
          attempt: d.attempt,
          handler: d.handler,
          mode: d.mode,
          timeoutMs: d.timeoutMs,
          ...stepInputsOf(src.state, d.step, encodedSize),
          ...(d.sandbox ? { sandbox: d.sandbox } : {}),
        };
        // The work item carries its dispatch hop's traceparent (derived, so a re-derived item carries the same).
        const trace = await observer?.workHeaders(src.runId, d.step, d.attempt);
        const subject = Subjects.work(t, d.pool);
        const data = encode(item);
        // Signed over subject and bytes: a worker and the sandbox run only what this wrote
        // from the record (Ed25519 is deterministic, so a re-derived item is signed the same).
        const headers = { ...trace, ...proofRecord(signer, subject, data) };
        work.push({ subject, data, msgId: MsgIds.work(src.runId, d.step, d.attempt), headers });
        if (!src.recovered) dispatched.push({ runId: src.runId, event: ev });
      }
    }
  }
  await publishDurably(nc, js, timers, { batching });
  await publishDurably(nc, js, work, { batching });
  await publishDurably(nc, js, commands, { batching });
  // Cancels go to every worker of the tenant, at most once (core NATS): the one running the
  // attempt aborts it. A lost cancel costs only time: the attempt's result is refused as stale.
  for (const c of cancels) nc.publish(Subjects.stepCancel(t), encode(c));
  observer?.dispatched(dispatched);
  return timers.length + work.length + cancels.length + commands.length;
}

/**
 * Tells parents that their children's submits were refused (see host/children.ts): the
 * child failed before it began. Once per child id, however often the refusal is decided.
 */
export async function tellParents(
  nc: NatsConnection,
  js: JetStreamClient,
  t: TenantId,
  outcomes: readonly CommandOf<'child'>[],
  signer: Signer,
  batching: Batching,
): Promise<void> {
  const out: OutMsg[] = [];
  for (const o of outcomes) pushSigned(out, Subjects.command(t, CommandVerb.Child), encode(o), MsgIds.childOutcome(o.child, 0), signer);
  await publishDurably(nc, js, out, { batching });
}

/** The decisions after a run's last input: the ones whose effects a crash may have lost. */
export function tailDecisions(events: readonly RunEvent[], isInput: (e: RunEvent) => boolean): RunEvent[] {
  let i = events.length;
  while (i > 0 && !isInput(events[i - 1] as RunEvent)) i--;
  return events.slice(i);
}

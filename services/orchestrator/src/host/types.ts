/** What the run host's parts pass between them. */
import type { DeliveryInfo, JsMsg } from '@nats-io/jetstream';
import type { RunState } from '@capstan/actors';
import type { Author } from '@capstan/kit';
import type { Command, CommandOf, ErrorRecord, RunEvent, RunId } from '@capstan/schemas';
import type { EffectSource } from '../effects.js';

/**
 * A command as the run host handles it: delivered here by the tenant's consumer, or handed
 * over by the instance that pulled it (see forward.ts); either way acknowledged on the
 * consumer's own acknowledgement subject.
 */
export type CommandMsg = Pick<JsMsg, 'subject' | 'data' | 'headers' | 'ack' | 'nak'> & {
  readonly info: Pick<DeliveryInfo, 'streamSequence' | 'timestampNanos' | 'redelivered' | 'deliveryCount'>;
};

/** A parsed command waiting for a tick. */
export interface Pending {
  readonly msg: CommandMsg;
  readonly cmd: Command;
  readonly runId: RunId;
  /** Who signed it, proven (see intake.ts); absent on an unsigned submit and the workers' verbs. */
  readonly author?: Author;
  /** A child run's submit its input schema refused at intake: decided as a refusal, which its parent hears of. */
  readonly refused?: ErrorRecord;
}

/** A command the run refused (or that could not be decided), to dead-letter or drop. */
export interface Rejection {
  readonly msg: CommandMsg;
  readonly error: ErrorRecord;
  readonly runId?: RunId;
  readonly deadLetter: boolean;
  /** A refused child submit: the outcome its parent takes, so its step ends rather than waits. */
  readonly toParent?: CommandOf<'child'>;
}

/** One run's share of a tick: the events to append and what to do once they are. */
export interface GroupResult {
  readonly runId: RunId;
  /** The commands decided (appended, found decided already, or refused): acknowledged after acting. */
  readonly pendings: readonly Pending[];
  /** The run's commands left for its next tick (see decide.ts). */
  readonly deferred: readonly Pending[];
  /** The run's last stream sequence as the decisions saw it. */
  readonly expected: number;
  readonly events: RunEvent[];
  readonly effects: EffectSource[];
  /** Effects of decisions appended earlier whose acting a crash may have lost. */
  readonly recovered: EffectSource[];
  readonly rejections: Rejection[];
  readonly state: RunState | undefined;
}

export interface TenantHostStats {
  commands: number;
  appendedEvents: number;
  conflicts: number;
  deadLetters: number;
  recoveredEffects: number;
  ticks: number;
  /** Commands handed to the instance owning their run's partition. */
  forwarded: number;
  /** Appends refused in a partition this instance held (it stepped down). */
  fenced: number;
  /** Partitions held now. */
  partitions: number;
}

/**
 * Intake: a command message becomes a parsed command for a known run id, or a refusal. Poison
 * (undecodable, schema-violating, oversized, unknown verb) and a submit whose input its
 * workflow's schema refuses never reach a run: they are dead-lettered at once.
 */
import type { JetStreamClient, JetStreamManager } from '@nats-io/jetstream';
import type { CommandMsg } from './types.js';
import { JetStreamApiCodes, JetStreamApiError } from '@nats-io/jetstream';
import { childRunIdOf, continuedRunIdOf, MARKED_IDS_SINCE_ENGINE, type Registry } from '@capstan/actors';
import {
  CapstanError,
  decode,
  encode,
  encodedSize,
  ErrorCode,
  Headers,
  isCommandVerb,
  isDerivedRunId,
  parseCommand,
  Role,
  RunIdReservedError,
  Streams,
  Subjects,
  toErrorRecord,
  UnprovenError,
  validateStandard,
  type Command,
  type CommandVerb,
  type ErrorRecord,
  type RunId,
  type TenantId,
} from '@capstan/schemas';
import { derivedRunId, idempotencyHash, verifyProof, type Author, type Trust } from '@capstan/kit';

export interface Intake {
  /**
   * @returns the command, its run, its proven author, and for the orchestrator's own submit
   *   of a child run whose input the child's schema refuses, that refusal (`refused`): its
   *   parent must hear of it (see decide.ts), so it is decided, not dropped here
   * @throws CapstanError for a command that must be dead-lettered (`unproven` among them)
   */
  parse(msg: CommandMsg): Promise<{ cmd: Command; runId: RunId; author?: Author; refused?: ErrorRecord }>;
}

/** Whether a command is the orchestrator's own submit of a child run (a continuation of one too), proven by its signature. */
export function isChildSubmit(cmd: Command, author: Author | undefined): cmd is Extract<Command, { verb: 'submit' }> {
  return cmd.verb === 'submit' && cmd.body.parent !== undefined && author?.role === Role.Orchestrator;
}

/**
 * Commands that must be signed, and who may sign them. A person's decision names its author
 * from the proof; the policy's answer is heard only from the orchestrator that asked, and a
 * mode-3b credential answer or a step's start only from a worker (the server already lets no one else publish
 * either: this is the second fence; which worker may is judged against the run, in
 * authority.ts). A submit may be signed (its requester is then recorded) and is checked when
 * it is.
 */
const SIGNED: Partial<Record<CommandVerb, ReadonlySet<string> | undefined>> = {
  approve: undefined,
  deny: undefined,
  retry: undefined,
  cancel: undefined,
  policy: new Set([Role.Orchestrator]),
  credential: new Set([Role.Worker]),
  started: new Set([Role.Worker]),
};

/** JetStream's answers to a claim made with expected sequence 0 when someone claimed first. */
const CLAIM_RACES: ReadonlySet<number> = new Set([JetStreamApiCodes.StreamWrongLastSequence, JetStreamApiCodes.StreamWrongLastSequenceUnknown]);

export function createIntake(o: { js: JetStreamClient; jsm: JetStreamManager; tenant: TenantId; registry: Registry; trust: Trust }): Intake {
  const { js, jsm, tenant: t, registry } = o;

  /** The command's proven author; undefined for an unsigned command that need not be signed. */
  function authorOf(msg: CommandMsg, verb: CommandVerb): Author | undefined {
    const must = Object.hasOwn(SIGNED, verb);
    if (!must && !msg.headers) return undefined;
    if (!must && verb !== 'submit') return undefined;
    if (verb === 'submit' && !msg.headers?.get(Headers.Signer)) return undefined;
    // Judged with the server's time of storing, so a redelivery hours later still verifies.
    const author = verifyProof(msg.headers, msg.subject, msg.data, { ...o.trust, nowS: Math.floor(msg.info.timestampNanos / 1e9) });
    const roles = SIGNED[verb];
    if (roles && !roles.has(author.role ?? '')) throw new UnprovenError(`${msg.subject}: signed by ${author.name} (${author.role ?? 'no role'}), which may not send cmd.${verb}`);
    return author;
  }

  function parseMessage(msg: CommandMsg): Command {
    const verb = msg.subject.slice(msg.subject.lastIndexOf('.') + 1);
    if (!isCommandVerb(verb)) throw new CapstanError(ErrorCode.SchemaViolation, `unknown command verb ${JSON.stringify(verb)}`);
    return parseCommand(verb, decode(msg.data), encodedSize);
  }

  /** Which run a command is for. A submit without a run id gets a deterministic one. */
  async function runIdFor(msg: CommandMsg, cmd: Command): Promise<RunId> {
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
        if (!(e instanceof JetStreamApiError && CLAIM_RACES.has(e.code))) throw e;
      }
    }
    throw new CapstanError(ErrorCode.ConcurrencyConflict, 'idempotency key claim did not settle', true);
  }

  /**
   * A submit that says it starts a child or a continuation must use the run id derived for it:
   * a run can only claim the parent it was derived from (a continuation of a child names the
   * id its parent started, from which its own id was derived, hop by hop, and is not checked).
   */
  function checkDerived(cmd: Command): void {
    if (cmd.verb !== 'submit') return;
    const b = cmd.body;
    // Engine 3 derives into the reserved space, engine 2 did not: the id says which derived it.
    const engine = b.runId !== undefined && isDerivedRunId(b.runId) ? MARKED_IDS_SINCE_ENGINE : 2;
    if (b.parent && b.parent.child === undefined && b.runId !== childRunIdOf(b.parent.runId, b.parent.step, b.parent.attempt, engine)) {
      throw new CapstanError(
        ErrorCode.SchemaViolation,
        `a child run's id must be the one derived from its parent ${b.parent.runId}, step ${b.parent.step}, attempt ${b.parent.attempt}`,
      );
    }
    if (b.continuedFrom && b.runId !== continuedRunIdOf(b.continuedFrom, engine)) {
      throw new CapstanError(ErrorCode.SchemaViolation, `a continued run's id must be the one derived from ${b.continuedFrom}`);
    }
  }

  /**
   * Only the orchestrator starts a child or a continuation: a client that could submit one
   * would choose what runs under a derived id and what its parent takes as the step's result.
   */
  function checkOwnSubmit(cmd: Command, author: Author | undefined): void {
    if (cmd.verb !== 'submit' || (cmd.body.parent === undefined && cmd.body.continuedFrom === undefined)) return;
    if (author?.role === Role.Orchestrator) return;
    const who = author ? `signed by ${author.name} (${author.role ?? 'no role'})` : 'unsigned';
    throw new UnprovenError(`a submit that starts a child or a continuation is the orchestrator's own; this one is ${who}`);
  }

  /**
   * Ids in the reserved space are the orchestrator's to submit under: a client that could take
   * one would take, before its parent starts it, the id a parent derives for its child or its
   * continuation, and fail the parent's step on every attempt (anyone can compute the ids).
   */
  function checkReserved(cmd: Command, author: Author | undefined): void {
    if (cmd.verb !== 'submit' || cmd.body.runId === undefined || !isDerivedRunId(cmd.body.runId)) return;
    if (author?.role === Role.Orchestrator) return;
    throw new RunIdReservedError(cmd.body.runId);
  }

  return {
    async parse(msg) {
      const cmd = parseMessage(msg);
      checkDerived(cmd);
      const author = authorOf(msg, cmd.verb);
      checkOwnSubmit(cmd, author);
      checkReserved(cmd, author);
      let refused: ErrorRecord | undefined;
      if (cmd.verb === 'submit' && registry.has(cmd.body.workflow)) {
        // The workflow's input schema (Standard Schema) judges the input before any run exists.
        const schema = registry.latest(cmd.body.workflow).input;
        try {
          if (schema) await validateStandard(schema, cmd.body.input ?? {}, `input of ${cmd.body.workflow}`);
        } catch (e) {
          if (!isChildSubmit(cmd, author)) throw e;
          refused = toErrorRecord(e, ErrorCode.SchemaViolation);
        }
      }
      return { cmd, runId: await runIdFor(msg, cmd), ...(author ? { author } : {}), ...(refused ? { refused } : {}) };
    },
  };
}

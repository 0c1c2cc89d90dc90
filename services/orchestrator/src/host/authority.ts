/**
 * Who may decide what about a run, judged from proofs rather than claims.
 *
 * A person's decision (approve, deny, retry, cancel) and the orchestrator's own policy answer
 * arrive on the command stream signed (kit's proof.ts): intake checks the proof against the
 * tenant's account key and keeps its author. Here the author is read:
 * - who decided is the signing credential's name, except for a signer that acts for people
 *   it signed in itself (the console, the platform admin): its user, as it states them, is
 *   recorded as `by`, and the credential beside it as `signer`. Either way the record names
 *   a key the tenant's account vouched for.
 * - an approval the policy asked for (`approval.requested`) is decided only by a member of
 *   the approver group it named (the JWT's `capstan-group:` tags, or the groups a console
 *   states for its user), and not by the run's requester unless the policy allowed that
 *   (`@self_approval("allowed")`). A run submitted unsigned names no requester: nobody can be
 *   shown to be someone else, so such an approval is refused unless the policy allows
 *   self-approval (services that submit, the scheduler and ingress, sign their submits).
 * - a mode-3b credential answer (`cmd.credential`) is taken only from the worker that holds
 *   the attempt: a worker credential whose pools include the step's, named by the attempt's
 *   `step.started` (the worker records it before it sends its first answer), for an attempt
 *   the run scheduled as a mode-3b step. Any other signer is refused with `step_not_held`.
 *   The decision in it is the policy's: the command carries the policy service's signed
 *   answer to this attempt's question (its request names the run, step, attempt and key, and
 *   asks as the signing worker), and what the worker states must be what the policy answered;
 *   anything else is `unproven`.
 * - a step's start (`cmd.started`) is taken only from a worker credential whose pools include
 *   the step's, for an attempt the run scheduled, naming itself: the signer is recorded on
 *   `step.started`, and that record is who holds the attempt for the checks above.
 * Pure: the run's events come in, an error or nothing goes out.
 */
import { checkSignedPolicyAnswer, credentialAbout, type Author, type Trust } from '@capstan/kit';
import {
  ApproverNotAllowedError,
  Mode,
  PolicyAction,
  Role,
  StepNotHeldError,
  UnprovenError,
  type Command,
  type RunEvent,
  type SignerRecord,
  type TenantId,
} from '@capstan/schemas';

/** Signers that act for people they signed in: their statement of who and which groups is heard. */
const VOUCHING_ROLES: ReadonlySet<string> = new Set([Role.Console, Role.Admin]);
/** Credentials that may decide about runs (the server lets no other role publish these verbs either). */
const DECIDING_ROLES: ReadonlySet<string> = new Set([Role.Operator, Role.Console, Role.Admin]);
/** Approvers a policy names when it names none (`@approval` without a group is refused by the compiler; old records). */
const ANY_OPERATOR = 'operators';

/** The person behind a proven command, as it is recorded. */
export interface ProvenActor {
  readonly by: string;
  readonly signer: SignerRecord;
  readonly groups: readonly string[];
}

export function deciderOf(author: Author, stated: { by?: string | undefined; groups?: readonly string[] | undefined }): ProvenActor {
  const vouches = author.role !== undefined && VOUCHING_ROLES.has(author.role);
  return {
    by: vouches && stated.by !== undefined ? stated.by : author.name,
    signer: { name: author.name, key: author.publicKey, ...(author.role ? { role: author.role } : {}) },
    groups: vouches ? (stated.groups ?? []) : author.groups,
  };
}

/** The same person: the same key, and (for a signer acting for several people) the same user. */
function samePerson(a: { by: string; key: string }, b: { by: string; key: string }): boolean {
  return a.key === b.key && a.by === b.by;
}

/**
 * Checks that `d` may take `cmd` on the run whose history is `events`.
 * @throws ApproverNotAllowedError when the role may not decide, the approver is outside the
 *   policy's group, or the run's requester approves their own run without the policy's leave
 */
export function checkDecider(cmd: Extract<Command, { verb: 'approve' | 'deny' | 'retry' }>, d: ProvenActor, events: readonly RunEvent[]): void {
  if (!DECIDING_ROLES.has(d.signer.role ?? '')) {
    throw new ApproverNotAllowedError(`${d.by} holds a ${d.signer.role ?? 'role-less'} credential: only operators decide about runs`);
  }
  if (cmd.verb === 'retry') return;
  const step = cmd.body.step;
  let requested: Extract<RunEvent, { type: 'approval.requested' }> | undefined;
  for (let i = events.length - 1; i >= 0 && !requested; i--) {
    const e = events[i] as RunEvent;
    if (e.type === 'approval.requested' && e.data.step === step) requested = e;
  }
  // A plain approval step (a signal) names no group: any operator decides it.
  if (!requested) return;
  const group = requested.data.approvers;
  if (group !== ANY_OPERATOR && !d.groups.includes(group)) {
    throw new ApproverNotAllowedError(`${d.by} is not in the approver group ${group} that the policy names for step ${step}`);
  }
  if (cmd.verb !== 'approve') return;
  const answer = events.find(
    (e): e is Extract<RunEvent, { type: 'policy.decided' | 'credential.decided' }> =>
      (e.type === 'policy.decided' || e.type === 'credential.decided') && e.data.step === step && e.data.attempt === requested.data.attempt && e.seq < requested.seq,
  );
  if (answer?.data.selfApproval === true) return;
  const started = events.find((e): e is Extract<RunEvent, { type: 'run.started' }> => e.type === 'run.started');
  const submitter = started?.data.submitter;
  if (!started || !submitter) {
    throw new ApproverNotAllowedError(
      `this run was submitted unsigned and names no requester, so no approver of step ${step} can be shown to be someone else (the policy does not allow self-approval): submit it signed`,
    );
  }
  if (samePerson({ by: started.data.submittedBy ?? submitter.name, key: submitter.key }, { by: d.by, key: d.signer.key })) {
    throw new ApproverNotAllowedError(`${d.by} submitted this run and may not approve it: the policy does not allow self-approval for step ${step}`);
  }
}

/**
 * Checks that the worker `author` holds the attempt a mode-3b credential answer is about.
 * @throws StepNotHeldError when the attempt is not a scheduled mode-3b step, the signer is
 *   not a worker of its pool, or the attempt's `step.started` names another worker (or none)
 */
export function checkCredentialHolder(cmd: Extract<Command, { verb: 'credential' }>, author: Author, events: readonly RunEvent[]): void {
  const { step, attempt } = cmd.body;
  const what = `step ${step} attempt ${attempt}`;
  if (author.role !== Role.Worker) throw new StepNotHeldError(`${author.name} (role ${author.role ?? 'none'}) is not a worker: it holds no ${what}`);
  let scheduled: Extract<RunEvent, { type: 'step.scheduled' }> | undefined;
  let started: Extract<RunEvent, { type: 'step.started' }> | undefined;
  for (const e of events) {
    if (e.type === 'step.scheduled' && e.data.step === step && e.data.attempt === attempt) scheduled = e;
    else if (e.type === 'step.started' && e.data.step === step && e.data.attempt === attempt) started ??= e;
  }
  if (!scheduled) throw new StepNotHeldError(`the run never scheduled ${what}`);
  if (scheduled.data.mode !== Mode.Agent || scheduled.data.sandbox?.jit !== true)
    throw new StepNotHeldError(`${what} is not a mode-3b step: it asks for no credential at run time`);
  if (!author.pools.includes(scheduled.data.pool)) throw new StepNotHeldError(`worker ${author.name} does not serve pool ${scheduled.data.pool} of ${what}`);
  if (!started) throw new StepNotHeldError(`no worker is recorded as running ${what}`);
  if (started.data.worker !== author.name) throw new StepNotHeldError(`${what} is run by worker ${started.data.worker}, not by ${author.name}`);
  // Recorded from a signed start: the same key, not only the same name.
  if (started.data.signer && started.data.signer.key !== author.publicKey) throw new StepNotHeldError(`${what} is run by another credential named ${author.name}`);
}

/**
 * Checks that the worker `author` may record itself as running the attempt `cmd` names.
 * @throws StepNotHeldError when the attempt was never scheduled, the signer is not a worker
 *   of its pool, or the command names another worker than its signer
 */
export function checkStarter(cmd: Extract<Command, { verb: 'started' }>, author: Author, events: readonly RunEvent[]): SignerRecord {
  const { step, attempt } = cmd.body;
  const what = `step ${step} attempt ${attempt}`;
  if (author.role !== Role.Worker) throw new StepNotHeldError(`${author.name} (role ${author.role ?? 'none'}) is not a worker: it runs no ${what}`);
  if (cmd.body.worker !== author.name) throw new StepNotHeldError(`cmd.started names worker ${cmd.body.worker} but is signed by ${author.name}`);
  const scheduled = events.find((e): e is Extract<RunEvent, { type: 'step.scheduled' }> => e.type === 'step.scheduled' && e.data.step === step && e.data.attempt === attempt);
  if (!scheduled) throw new StepNotHeldError(`the run never scheduled ${what}`);
  if (!author.pools.includes(scheduled.data.pool)) throw new StepNotHeldError(`worker ${author.name} does not serve pool ${scheduled.data.pool} of ${what}`);
  return { name: author.name, key: author.publicKey, ...(author.role ? { role: author.role } : {}) };
}

/**
 * Checks that a mode-3b credential answer is the policy service's: its forwarded signed
 * answer verifies under the tenant's account key, answers this attempt's question asked by
 * `author` for the run's workflow, and says what the command says.
 * @throws UnprovenError when there is no signed answer, it is not the policy's, it answers
 *   another question, or the command states another decision
 */
export function checkCredentialAnswer(t: TenantId, cmd: Extract<Command, { verb: 'credential' }>, author: Author, events: readonly RunEvent[], trust: Trust): void {
  const b = cmd.body;
  const what = `credential ${b.name} of step ${b.step} attempt ${b.attempt}`;
  if (!b.answer) throw new UnprovenError(`${what}: no answer signed by the policy service (a worker's word is no policy decision)`);
  const { request, decision } = checkSignedPolicyAnswer(t, b.answer, trust);
  const started = events.find((e): e is Extract<RunEvent, { type: 'run.started' }> => e.type === 'run.started');
  const queries = Array.isArray(request['queries']) ? (request['queries'] as unknown[]) : [];
  const q = (queries[0] ?? {}) as Record<string, unknown>;
  const asked =
    request['about'] === credentialAbout(cmd.body.runId, b.step, b.attempt, b.name) &&
    request['version'] === undefined &&
    queries.length === 1 &&
    q['action'] === PolicyAction.RequestCredential &&
    q['workflow'] === started?.data.workflow &&
    q['step'] === b.step &&
    q['secret'] === b.name &&
    q['worker'] === author.name;
  if (!asked) throw new UnprovenError(`${what}: the policy's signed answer is to another question`);
  const same =
    decision.decision === b.decision &&
    decision.version === b.version &&
    (decision.approvers ?? undefined) === (b.approvers ?? undefined) &&
    JSON.stringify(decision.policies.slice(0, 64)) === JSON.stringify(b.policies);
  if (!same) throw new UnprovenError(`${what}: the command says ${b.decision} (version ${b.version}), the policy answered ${decision.decision} (version ${decision.version})`);
}

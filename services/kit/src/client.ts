/**
 * A small TypeScript client for Capstan's intake and run streams: what the CLI and the
 * console use, and what an application embeds. Any NATS client can do the same by
 * following docs/intake.md.
 */
import { JetStreamApiCodes, JetStreamApiError, type JetStreamClient, type JetStreamManager, type PubAck, type StoredMsg } from '@nats-io/jetstream';
import { nuid } from '@nats-io/nuid';
import {
  actorSchema,
  CommandRejectedError,
  CommandVerb,
  ConcurrencyConflictError,
  DeadLetterSource,
  decode,
  encode,
  Headers,
  InvalidArgumentError,
  MsgIds,
  parseTenantId,
  parseRunId,
  parseToken,
  parseWorkerAdmission,
  PermissionDeniedError,
  reasonSchema,
  SchemaError,
  Streams,
  Subjects,
  UnavailableError,
  WorkerAdmissionState,
  type JsonValue,
  type RunEvent,
  type RunId,
  type TenantId,
  type WorkerAdmissionRecord,
  CapstanError,
  ErrorCode,
  isDerivedRunId,
  RunIdReservedError,
} from '@capstan/schemas';
import { headers as natsHeaders } from '@nats-io/transport-node';
import { decodeEvent, readRun } from './run-log.js';
import { newRunId } from './ids.js';
import { proofHeaders, type Signer } from './proof.js';
import { permissionError, type TenantConnection } from './nats.js';
import { activeTraceParent, inSpan, SpanKind, tracingOn, withTraceHeader } from './tracing.js';

export interface SubmitOptions {
  readonly input?: { [k: string]: JsonValue };
  readonly runId?: RunId;
  readonly idempotencyKey?: string;
  /**
   * A W3C `traceparent` the run continues (the caller's span becomes the run's parent);
   * default: the active span's, when this process traces. An invalid value is ignored.
   */
  readonly traceparent?: string;
}

const TERMINAL = new Set(['run.completed', 'run.failed', 'run.cancelled']);

/** Who decides, and why: recorded on the run and in the audit log. */
export interface DecisionOptions {
  /** The deciding person's user id (printable, at most 128 characters). */
  readonly by: string;
  /** At most 500 characters. */
  readonly reason?: string;
  /**
   * The deciding person's approver groups in the tenant, as a console states them for its
   * signed-in user. Heard only from a console or admin signer: a person's own credential
   * carries its groups (`capstan creds issue --group`).
   */
  readonly groups?: readonly string[];
  /**
   * How long to wait for an orchestrator to decide the command (default 15 s). When none
   * does in time the call rejects with `unavailable`; the command stays stored and is
   * decided when an orchestrator runs (its outcome is then on the run, or a dead letter).
   */
  readonly timeoutMs?: number;
}

/** Who changes a worker's admission, and why. */
export interface AdmissionOptions {
  readonly by: string;
  readonly reason?: string;
}

/** A worker's admission as recorded in the tenant's fleet stream. */
export interface WorkerAdmission {
  readonly worker: string;
  /** `approved` or `revoked`; a worker with no record is `pending`. */
  readonly state: Exclude<WorkerAdmissionState, 'pending'>;
  readonly by: string;
  readonly reason?: string;
  /** When the record was stored, by the NATS server's clock (epoch ms). */
  readonly at: number;
  /** Its fleet stream sequence. */
  readonly seq: number;
}

export interface CapstanClient {
  /** Publishes a submit and returns the run id once JetStream has stored the command. */
  submit(tenant: string, workflow: string, opts?: SubmitOptions): Promise<RunId>;
  /** `by`: the person a console or admin credential acts for (ignored from anyone else: the signer is who cancels). */
  cancel(tenant: string, runId: string, reason?: string, by?: string): Promise<void>;
  signal(tenant: string, runId: string, name: string, payload?: JsonValue): Promise<void>;
  /**
   * Approves `step` of a run waiting for approval (a signal step): the step completes with
   * the result `{ decision: 'approve', by, reason? }` and the run goes on. The command is
   * signed with this client's credential, and `by` on the record is that credential's name
   * (or `opts.by` when the credential is a console's or the admin's, acting for a person).
   * Publishes `cap.<t>.cmd.approve` and resolves with the recorded `approval.decided` event
   * once an orchestrator has decided it.
   * @throws CommandRejectedError with code `approval_not_waiting` when the step is not
   *   waiting for a decision (decided already, not reached, not an approval step),
   *   `approver_not_allowed` (not in the policy's approver group, or the run's own
   *   requester), `unproven` (no credential to sign with), or `run_not_found`; nothing is
   *   recorded then
   * @throws UnavailableError when no orchestrator decided within `timeoutMs`
   * @throws InvalidNameError | SchemaError for a malformed tenant, run id, step, `by` or `reason`
   * @example
   * await client.approve('acme', runId, 'review', { by: 'ann', reason: 'numbers checked' });
   */
  approve(tenant: string, runId: string, step: string, opts: DecisionOptions): Promise<RunEvent>;
  /**
   * Denies `step` of a run waiting for approval, as `by`: the run fails with the error code
   * `approval_denied` and a message naming who denied it and why. Same protocol and errors
   * as {@link approve}. A denied run can be retried, which asks for the approval again.
   */
  deny(tenant: string, runId: string, step: string, opts: DecisionOptions): Promise<RunEvent>;
  /**
   * Reopens a failed run (`cap.<t>.cmd.retry`): the step that failed is scheduled again
   * (attempt numbers go on, its retry policy starts afresh; a denied approval step waits for
   * a decision again); completed steps keep their results and never run again. Resolves
   * with the recorded `run.retried` event.
   * @throws CommandRejectedError with code `run_not_retryable` when the run has not failed
   *   (or its workflow is a hand-written machine), or `run_not_found`
   * @throws UnavailableError when no orchestrator decided within `timeoutMs`
   * @example
   * await client.retry('acme', runId, { by: 'ann', reason: 'upstream fixed' });
   */
  retry(tenant: string, runId: string, opts: DecisionOptions): Promise<RunEvent>;
  /**
   * Admits a worker (admin): from this record on it pulls work in this tenant. Works for a
   * worker not seen yet (pre-approval). Approving an approved worker records nothing and
   * returns the standing record.
   * @throws InvalidNameError when `workerId` is not a subject token (`^[a-z0-9][a-z0-9_-]{0,63}$`)
   * @throws UnavailableError when the tenant has no fleet stream (`capstan tenant add <t>`)
   */
  approveWorker(tenant: string, workerId: string, opts: AdmissionOptions): Promise<WorkerAdmission>;
  /**
   * Revokes a worker (admin): it stops taking work in this tenant within seconds; steps it
   * had in flight are stopped and reported failed (retryable), so their runs retry them on
   * other workers. Revoking a revoked worker records nothing.
   */
  revokeWorker(tenant: string, workerId: string, opts: AdmissionOptions): Promise<WorkerAdmission>;
  /** The worker's last admission record; undefined when it has none (it is `pending`). */
  workerAdmission(tenant: string, workerId: string): Promise<WorkerAdmission | undefined>;
  events(tenant: string, runId: string): Promise<RunEvent[]>;
  /**
   * Resolves with the run's terminal event, or rejects with UnavailableError after `timeoutMs`.
   * A terminal event followed by more (a failed run that was retried) is not the end: the
   * run's latest terminal event is.
   */
  waitForEnd(tenant: string, runId: string, timeoutMs?: number): Promise<RunEvent>;
}

/**
 * Where the client's tenants are: one tenant's connection (a credential for that tenant),
 * or anything that opens a connection per tenant (an admin tool, the console).
 */
export type ClientConnections = TenantConnection | { tenant(t: TenantId): Promise<TenantConnection> };

/** How long an operator action waits for its decision by default. */
const DECISION_TIMEOUT_MS = 15_000;

// Async for callers written against the earlier signature; nothing here waits.
// eslint-disable-next-line @typescript-eslint/require-await
export async function createClient(conns: ClientConnections): Promise<CapstanClient> {
  const at = async (tenant: string): Promise<TenantConnection & { t: TenantId }> => {
    const t = parseTenantId(tenant);
    if ('nc' in conns) {
      // Its account is its tenant: any other tenant's subjects do not exist for it.
      if (conns.tenant !== t) throw new PermissionDeniedError('act in tenant', `${t} (this client's credential is for tenant ${conns.tenant})`);
      return { ...conns, t };
    }
    return { ...(await conns.tenant(t)), t };
  };
  const publish = (js: JetStreamClient, subject: string, data: Uint8Array, opts?: Parameters<JetStreamClient['publish']>[2]) =>
    js.publish(subject, data, opts).catch((e: unknown) => {
      throw permissionError(e);
    });
  const decideStep = async (tenant: string, runId: string, step: string, verb: typeof CommandVerb.Approve | typeof CommandVerb.Deny, opts: DecisionOptions) => {
    const c = await at(tenant);
    const id = parseRunId(runId);
    const groups = opts.groups?.map((g) => parseToken('approver group', g));
    const body = { runId: id, step: parseToken('step', step), ...who(opts), ...(groups?.length ? { groups } : {}) };
    return sendAndAwait(c.js, c.jsm, c.t, id, verb, body, opts.timeoutMs ?? DECISION_TIMEOUT_MS, c.signer);
  };
  const admit = async (tenant: string, workerId: string, state: WorkerAdmission['state'], opts: AdmissionOptions) => {
    const c = await at(tenant);
    return writeAdmission(c.js, c.jsm, c.t, parseToken('worker id', workerId), state, opts);
  };
  return {
    async submit(tenant, workflow, opts = {}) {
      const { t, js, signer } = await at(tenant);
      const runId = opts.runId ?? newRunId();
      // The orchestrator would refuse it (dead letter); said here, before anything is sent.
      if (isDerivedRunId(runId)) throw new RunIdReservedError(runId);
      const body = {
        workflow,
        runId,
        ...(opts.input ? { input: opts.input } : {}),
        ...(opts.idempotencyKey ? { idempotencyKey: opts.idempotencyKey } : {}),
      };
      const send = async () => {
        // The run records the traceparent it was submitted with (see docs/observability.md).
        let headers = tracingOn() ? withTraceHeader() : opts.traceparent ? natsHeaders() : undefined;
        if (headers && opts.traceparent && !tracingOn()) headers.set(Headers.TraceParent, opts.traceparent);
        const subject = Subjects.command(t, CommandVerb.Submit);
        const data = encode(body);
        // A signed submit records its requester on the run: they may not approve it themselves.
        if (signer) headers = proofHeaders(signer, subject, data, headers ?? natsHeaders());
        await publish(js, subject, data, { msgID: MsgIds.command(CommandVerb.Submit, runId), ...(headers ? { headers } : {}) });
      };
      // With tracing on here, the submit is a span: of the caller's trace, or the first of a new one.
      await inSpan(
        'client',
        `submit ${workflow}`,
        {
          kind: SpanKind.PRODUCER,
          parent: opts.traceparent ?? (activeTraceParent() ? undefined : null),
          attributes: { 'capstan.tenant': t, 'capstan.workflow': workflow, 'capstan.run_id': runId },
        },
        send,
      );
      return runId;
    },
    async cancel(tenant, runId, reason, by) {
      const { t, js, signer } = await at(tenant);
      const id = parseRunId(runId);
      const subject = Subjects.command(t, CommandVerb.Cancel);
      const data = encode({ runId: id, ...(reason ? { reason } : {}), ...(by !== undefined ? { by: actorSchema.parse(by, 'by') } : {}) });
      // Signed: the orchestrator refuses a cancel nobody proves (see docs/tenancy.md).
      await publish(js, subject, data, signer ? { headers: proofHeaders(signer, subject, data) } : undefined);
    },
    async signal(tenant, runId, name, payload) {
      const { t, js } = await at(tenant);
      const id = parseRunId(runId);
      await publish(js, Subjects.command(t, CommandVerb.Signal), encode({ runId: id, name, ...(payload !== undefined ? { payload } : {}) }));
    },
    approve: (tenant, runId, step, opts) => decideStep(tenant, runId, step, CommandVerb.Approve, opts),
    deny: (tenant, runId, step, opts) => decideStep(tenant, runId, step, CommandVerb.Deny, opts),
    async retry(tenant, runId, opts) {
      const c = await at(tenant);
      const id = parseRunId(runId);
      const body = { runId: id, ...who(opts) };
      return sendAndAwait(c.js, c.jsm, c.t, id, CommandVerb.Retry, body, opts.timeoutMs ?? DECISION_TIMEOUT_MS, c.signer);
    },
    approveWorker: (tenant, workerId, opts) => admit(tenant, workerId, WorkerAdmissionState.Approved, opts),
    revokeWorker: (tenant, workerId, opts) => admit(tenant, workerId, WorkerAdmissionState.Revoked, opts),
    async workerAdmission(tenant, workerId) {
      const { t, jsm } = await at(tenant);
      return readAdmission(jsm, t, parseToken('worker id', workerId));
    },
    async events(tenant, runId) {
      const { t, jsm } = await at(tenant);
      return (await readRun(jsm, t, parseRunId(runId))).events;
    },
    async waitForEnd(tenant, runId, timeoutMs = 60_000) {
      const { t, nc, jsm } = await at(tenant);
      const id = parseRunId(runId);
      const subject = Subjects.run(t, id);
      // Told of each new event as it is stored; read back from the stream, which holds only
      // committed events. Subscribed before the first read, so nothing falls in between.
      let wake: (() => void) | undefined;
      const sub = nc.subscribe(subject, { callback: () => wake?.() });
      const deadline = Date.now() + timeoutMs;
      try {
        let from = 1;
        let last: RunEvent | undefined;
        for (;;) {
          for (
            let page = await readFrom(jsm, Streams.runs(t), subject, from);
            page.length > 0;
            page = page.length < READ_PAGE ? [] : await readFrom(jsm, Streams.runs(t), subject, from)
          ) {
            for (const m of page) {
              from = m.seq + 1;
              last = decodeEvent(m);
            }
          }
          // Only the run's last event so far ends the wait: a retry reopens a failed run.
          if (last && TERMINAL.has(last.type)) return last;
          const left = deadline - Date.now();
          if (left <= 0) break;
          await new Promise<void>((r) => {
            const timer = setTimeout(r, Math.min(left, 1000));
            wake = () => {
              clearTimeout(timer);
              r();
            };
          });
        }
      } finally {
        sub.unsubscribe();
      }
      throw new UnavailableError(`run ${id} did not finish within ${timeoutMs} ms`);
    },
  };
}

export function isTerminalEvent(ev: RunEvent): boolean {
  return TERMINAL.has(ev.type);
}

/** `by` and `reason` checked here, so a typo fails at once rather than as a dead letter. */
export function who(opts: { by: string; reason?: string | undefined }): { by: string; reason?: string } {
  const by = actorSchema.parse(opts.by, 'by');
  const reason = opts.reason === undefined || opts.reason === '' ? undefined : reasonSchema.parse(opts.reason, 'reason');
  return { by, ...(reason === undefined ? {} : { reason }) };
}

function checkTimeout(ms: number): number {
  if (!Number.isSafeInteger(ms) || ms < 1) throw new InvalidArgumentError(`timeoutMs must be a positive integer; got ${String(ms)}`);
  return ms;
}

/**
 * Sends a run command and waits for its outcome: the orchestrator either records an input
 * event caused by it (`causationId` = `cmd:<its stream sequence>`) or refuses it with a dead
 * letter naming that sequence (`Capstan-Source-Seq`). Both are durable, so reading them
 * after the publish cannot miss either; the dead letter's code and message become a
 * {@link CommandRejectedError}.
 */
async function sendAndAwait(
  js: JetStreamClient,
  jsm: JetStreamManager,
  t: TenantId,
  runId: RunId,
  verb: CommandVerb,
  body: object,
  timeoutMs: number,
  signer: Signer | undefined,
): Promise<RunEvent> {
  checkTimeout(timeoutMs);
  const subject = Subjects.command(t, verb);
  const dlq = Streams.deadLetters(t);
  // Dead letters that exist before the publish are not this command's.
  let dlqFrom =
    (
      await jsm.streams.info(dlq).catch((e: unknown) => {
        throw new UnavailableError(`tenant ${t} has no dead-letter stream (is it provisioned? capstan tenant add ${t})`, { cause: e });
      })
    ).state.last_seq + 1;
  const data = encode(body);
  // Decisions are signed: the orchestrator records who decided from this proof, never from the body.
  const headers = signer ? proofHeaders(signer, subject, data) : undefined;
  const ack: PubAck = await js.publish(subject, data, { msgID: MsgIds.command(verb, `${runId}:${nuid.next()}`), ...(headers ? { headers } : {}) }).catch((e: unknown) => {
    throw permissionError(e);
  });
  const causation = `cmd:${ack.seq}`;
  let runFrom = 1;
  const deadline = Date.now() + timeoutMs;
  for (let pause = 20; ; pause = Math.min(pause * 2, 250)) {
    for (const m of await readFrom(jsm, Streams.runs(t), Subjects.run(t, runId), runFrom)) {
      runFrom = m.seq + 1;
      const ev = decodeEvent(m);
      if (ev.causationId === causation) return ev;
    }
    for (const m of await readFrom(jsm, dlq, Subjects.deadLetter(t, DeadLetterSource.Command), dlqFrom)) {
      dlqFrom = m.seq + 1;
      if (m.header.get(Headers.SourceSeq) !== String(ack.seq) || m.header.get(Headers.SourceSubject) !== subject) continue;
      throw new CommandRejectedError(m.header.get(Headers.ErrorCode) || 'event_rejected', m.header.get(Headers.Error) || `${verb} refused`, verb, ack.seq, runId);
    }
    if (Date.now() >= deadline) {
      throw new UnavailableError(
        `no orchestrator decided the ${verb} command for run ${runId} (stream seq ${ack.seq}) within ${timeoutMs} ms; it stays queued and is decided when one runs`,
      );
    }
    await new Promise((r) => setTimeout(r, pause));
  }
}

const READ_PAGE = 1000;

/** Messages of `subject` in `stream` from sequence `from` on (at most {@link READ_PAGE} per call). */
export async function readFrom(jsm: JetStreamManager, stream: string, subject: string, from: number): Promise<StoredMsg[]> {
  const out: StoredMsg[] = [];
  try {
    for await (const m of await jsm.direct.getBatch(stream, { seq: from, next_by_subj: subject, batch: READ_PAGE })) out.push(m);
  } catch (e) {
    if (!isNothingThere(e)) throw e;
  }
  return out;
}

export function isNoResponders(e: unknown): boolean {
  const f = (e as { isNoResponders?: unknown } | null)?.isNoResponders;
  return typeof f === 'function' && (f as () => boolean).call(e) === true;
}

export function isNothingThere(e: unknown): boolean {
  if (e instanceof JetStreamApiError) return e.code === JetStreamApiCodes.NoMessageFound || e.status === 404;
  return (e as { code?: unknown }).code === 404 || (e instanceof Error && /no message found|not found/i.test(e.message));
}

/** The last admission record of a worker, validated; undefined when there is none. */
export async function readAdmission(jsm: JetStreamManager, t: TenantId, workerId: string): Promise<WorkerAdmission | undefined> {
  let m: StoredMsg | null;
  try {
    m = await jsm.direct.getMessage(Streams.fleet(t), { last_by_subj: Subjects.fleet(t, workerId) });
  } catch (e) {
    if (isNothingThere(e)) return undefined;
    // A direct get on a stream that does not exist finds no responder.
    if ((e instanceof JetStreamApiError && e.code === JetStreamApiCodes.StreamNotFound) || isNoResponders(e)) {
      throw new UnavailableError(`tenant ${t} has no fleet stream ${Streams.fleet(t)} (provision it again: capstan tenant add ${t})`, { cause: e });
    }
    throw e;
  }
  return m ? admissionOf(m, workerId) : undefined;
}

/** A stored admission record as the client returns it. @throws SchemaError when malformed */
export function admissionOf(m: Pick<StoredMsg, 'data' | 'seq' | 'time'>, workerId: string): WorkerAdmission {
  const r: WorkerAdmissionRecord = parseWorkerAdmission(decode(m.data));
  if (r.worker !== workerId) throw new SchemaError('worker admission', 'worker', `is ${r.worker}, but the record is stored for ${workerId}`);
  return { worker: r.worker, state: r.state, by: r.by, ...(r.reason === undefined ? {} : { reason: r.reason }), at: m.time.getTime(), seq: m.seq };
}

/**
 * Records `state` for a worker unless it is its state already. The write expects the
 * subject's last sequence it read, so two admins racing cannot interleave unseen: the loser
 * reads again and decides again.
 */
export async function writeAdmission(
  js: JetStreamClient,
  jsm: JetStreamManager,
  t: TenantId,
  workerId: string,
  state: WorkerAdmission['state'],
  opts: AdmissionOptions,
): Promise<WorkerAdmission> {
  const body: WorkerAdmissionRecord = { worker: workerId, state, ...who(opts) };
  parseWorkerAdmission(body);
  for (let i = 0; i < 5; i++) {
    const current = await readAdmission(jsm, t, workerId).catch((e: unknown) => {
      // A malformed last record is overwritten by a valid one.
      if (CapstanError.is(e, ErrorCode.SchemaViolation)) return { state: undefined, seq: -1 } as const;
      throw e;
    });
    if (current?.state === state) return current as WorkerAdmission;
    const seq = current?.seq ?? 0;
    try {
      const ack = await js.publish(Subjects.fleet(t, workerId), encode(body), seq >= 0 ? { expect: { lastSubjectSequence: seq } } : {});
      const stored = await jsm.direct.getMessage(Streams.fleet(t), { seq: ack.seq });
      return stored ? admissionOf(stored, workerId) : { ...body, at: Date.now(), seq: ack.seq };
    } catch (e) {
      // Someone else wrote in between: look again.
      if (e instanceof JetStreamApiError && e.code === JetStreamApiCodes.StreamWrongLastSequence) continue;
      throw permissionError(e);
    }
  }
  throw new ConcurrencyConflictError(`worker ${workerId}`, 0);
}

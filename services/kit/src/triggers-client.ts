/**
 * Schedules and webhook routes from a client's side: the CLI, the console and any
 * application use these. A schedule is changed by a command the orchestrator judges
 * (`cap.<t>.cmd.schedule`); the call waits for the record that answers it, or the dead
 * letter that refuses it, like approve and retry. A route is a record an admin writes
 * directly (`cap.<t>.routes.<id>`), with the subject's expected last sequence so racing
 * admins never overwrite each other unseen.
 */
import type { JetStreamClient, JetStreamManager, PubAck, StoredMsg } from '@nats-io/jetstream';
import { JetStreamApiError } from '@nats-io/jetstream';
import type { NatsConnection } from '@nats-io/transport-node';
import {
  CommandRejectedError,
  ConcurrencyConflictError,
  DeadLetterSource,
  decode,
  encode,
  Headers,
  parseScheduleCommand,
  parseScheduleRecord,
  parseScheduleState,
  parseToken,
  parseWebhookRoute,
  Streams,
  Subjects,
  TriggerVerb,
  UnavailableError,
  type JsonValue,
  type ScheduleCommand,
  type ScheduleRecord,
  type ScheduleState,
  type TenantId,
  type WebhookRoute,
  JsApiCode,
  CapstanError,
  ErrorCode,
} from '@capstan/schemas';
import { isNoResponders, isNothingThere, readFrom } from './client.js';

/** A stored record with where and when it was stored. */
export interface Stored<T> {
  readonly record: T;
  readonly seq: number;
  /** When the server stored it (epoch ms). */
  readonly at: number;
}

const COMMAND_TIMEOUT_MS = 15_000;

async function lastOn<T>(jsm: JetStreamManager, stream: string, subject: string, parse: (v: unknown) => T): Promise<Stored<T> | undefined> {
  let m: StoredMsg | null;
  try {
    m = await jsm.direct.getMessage(stream, { last_by_subj: subject });
  } catch (e) {
    if (isNothingThere(e)) return undefined;
    if ((e instanceof JetStreamApiError && e.code === JsApiCode.StreamNotFound) || isNoResponders(e))
      throw new UnavailableError(`stream ${stream} does not exist (provision the tenant again: capstan tenant add)`, { cause: e });
    throw e;
  }
  return m ? { record: parse(decode(m.data)), seq: m.seq, at: m.time.getTime() } : undefined;
}

/** Every subject's last record under a wildcard, undecodable ones left out. */
async function allLast<T>(jsm: JetStreamManager, stream: string, wildcard: string, parse: (v: unknown) => T): Promise<Stored<T>[]> {
  let subjects: string[];
  try {
    const info = await jsm.streams.info(stream, { subjects_filter: wildcard });
    subjects = Object.keys(info.state.subjects ?? {}).sort();
  } catch (e) {
    if (e instanceof JetStreamApiError && e.code === JsApiCode.StreamNotFound)
      throw new UnavailableError(`stream ${stream} does not exist (provision the tenant again: capstan tenant add)`, { cause: e });
    throw e;
  }
  const out: Stored<T>[] = [];
  for (const s of subjects) {
    try {
      const r = await lastOn(jsm, stream, s, parse);
      if (r) out.push(r);
    } catch {
      // A malformed record is the projector's dead letter to show; a list goes on.
    }
  }
  return out;
}

// ---------------------------------------------------------------------------------------
// Schedules.

export const readSchedule = (jsm: JetStreamManager, t: TenantId, id: string): Promise<Stored<ScheduleRecord> | undefined> =>
  lastOn(jsm, Streams.triggers(t), Subjects.schedule(t, id), parseScheduleRecord);
export const readScheduleState = (jsm: JetStreamManager, t: TenantId, id: string): Promise<Stored<ScheduleState> | undefined> =>
  lastOn(jsm, Streams.triggers(t), Subjects.scheduleState(t, id), parseScheduleState);
export const listScheduleRecords = (jsm: JetStreamManager, t: TenantId): Promise<Stored<ScheduleRecord>[]> =>
  allLast(jsm, Streams.triggers(t), Subjects.allSchedules(t), parseScheduleRecord);

/** A schedule with where its firing stands. */
export interface ScheduleView extends Stored<ScheduleRecord> {
  readonly state: ScheduleState | undefined;
}

/** Every schedule of the tenant (deleted ones too), from the streams. */
export async function listSchedules(jsm: JetStreamManager, t: TenantId): Promise<ScheduleView[]> {
  const records = await listScheduleRecords(jsm, t);
  return Promise.all(records.map(async (r) => ({ ...r, state: (await readScheduleState(jsm, t, r.record.schedule).catch(() => undefined))?.record })));
}

/**
 * Sends a schedule command and waits for the orchestrator's answer: the schedule's record
 * made by it (its `change.cmdSeq` is the command's stream sequence), or the dead letter
 * refusing it (`schedule_not_found`, `schedule_exists`, `unknown_workflow`,
 * `invalid_argument`, …) rebuilt as a CommandRejectedError.
 * @throws SchemaError before anything is sent, for a malformed command
 * @throws UnavailableError when no orchestrator answered within `timeoutMs`
 */
export async function sendScheduleCommand(
  js: JetStreamClient,
  jsm: JetStreamManager,
  t: TenantId,
  command: ScheduleCommand,
  timeoutMs = COMMAND_TIMEOUT_MS,
): Promise<Stored<ScheduleRecord>> {
  const cmd = parseScheduleCommand(command);
  const subject = Subjects.triggerCommand(t, TriggerVerb.Schedule);
  const dlq = Streams.deadLetters(t);
  let dlqFrom =
    (
      await jsm.streams.info(dlq).catch((e: unknown) => {
        throw new UnavailableError(`tenant ${t} has no dead-letter stream (is it provisioned? capstan tenant add ${t})`, { cause: e });
      })
    ).state.last_seq + 1;
  const recordSubject = Subjects.schedule(t, cmd.schedule);
  let recordFrom = ((await readSchedule(jsm, t, cmd.schedule).catch(() => undefined))?.seq ?? 0) + 1;
  const ack: PubAck = await js.publish(subject, encode(cmd));
  const deadline = Date.now() + timeoutMs;
  for (let pause = 20; ; pause = Math.min(pause * 2, 250)) {
    for (const m of await readFrom(jsm, Streams.triggers(t), recordSubject, recordFrom)) {
      recordFrom = m.seq + 1;
      try {
        const record = parseScheduleRecord(decode(m.data));
        if (record.change.cmdSeq === ack.seq) return { record, seq: m.seq, at: m.time.getTime() };
      } catch {
        // Not ours to judge here.
      }
    }
    for (const m of await readFrom(jsm, dlq, Subjects.deadLetter(t, DeadLetterSource.Command), dlqFrom)) {
      dlqFrom = m.seq + 1;
      if (m.header.get(Headers.SourceSeq) !== String(ack.seq) || m.header.get(Headers.SourceSubject) !== subject) continue;
      throw new CommandRejectedError(
        m.header.get(Headers.ErrorCode) || 'event_rejected',
        m.header.get(Headers.Error) || `schedule ${cmd.op} refused`,
        TriggerVerb.Schedule,
        ack.seq,
      );
    }
    if (Date.now() >= deadline) {
      throw new UnavailableError(
        `no orchestrator answered the schedule ${cmd.op} of ${cmd.schedule} (stream seq ${ack.seq}) within ${timeoutMs} ms; it stays queued and is decided when one runs`,
      );
    }
    await new Promise((r) => setTimeout(r, pause));
  }
}

// ---------------------------------------------------------------------------------------
// Webhook routes.

export const readRoute = (jsm: JetStreamManager, t: TenantId, id: string): Promise<Stored<WebhookRoute> | undefined> =>
  lastOn(jsm, Streams.triggers(t), Subjects.route(t, id), parseWebhookRoute);
export const listRoutes = (jsm: JetStreamManager, t: TenantId): Promise<Stored<WebhookRoute>[]> => allLast(jsm, Streams.triggers(t), Subjects.allRoutes(t), parseWebhookRoute);

/**
 * Writes a route's record (create, change, disable or delete: the record is the route). It
 * is validated first, and written expecting the subject's last sequence as read, so a
 * racing change is read again rather than overwritten.
 * @throws SchemaError for a malformed route
 */
export async function writeRoute(js: JetStreamClient, jsm: JetStreamManager, t: TenantId, route: WebhookRoute): Promise<Stored<WebhookRoute>> {
  const id = parseToken('route id', route.route);
  const body = parseWebhookRoute(route);
  for (let i = 0; i < 5; i++) {
    const current = await readRoute(jsm, t, id).catch((e: unknown) => {
      if (CapstanError.is(e, ErrorCode.Unavailable)) throw e;
      return { seq: -1 } as const;
    });
    // A malformed last record (seq -1 here) is overwritten by a valid one.
    const last = current === undefined ? 0 : current.seq;
    try {
      const ack = await js.publish(Subjects.route(t, id), encode(body), last >= 0 ? { expect: { lastSubjectSequence: last } } : {});
      return { record: body, seq: ack.seq, at: Date.now() };
    } catch (e) {
      if (e instanceof JetStreamApiError && e.code === JsApiCode.StreamWrongLastSequence) continue;
      throw e;
    }
  }
  throw new ConcurrencyConflictError(`route ${id}`, 0);
}

// ---------------------------------------------------------------------------------------
// The workflow catalog.

/** A registered workflow as the orchestrators describe it. */
export interface WorkflowInfo {
  readonly id: string;
  /** The latest version: what a new run gets. */
  readonly version: number;
  readonly versions: readonly number[];
  readonly steps: readonly string[];
  readonly searchKeys: readonly string[];
  /** A JSON Schema of the input, when the workflow declares one (forms are built from it). */
  readonly inputSchema?: { readonly [k: string]: JsonValue };
}

/**
 * The workflows an orchestrator serving the tenant has registered (one answers: they share
 * a queue group).
 * @throws UnavailableError when no orchestrator answers within `timeoutMs`
 */
export async function workflowCatalog(nc: NatsConnection, t: TenantId, timeoutMs = 3000): Promise<WorkflowInfo[]> {
  try {
    const m = await nc.request(Subjects.workflowCatalog(t), new Uint8Array(0), { timeout: timeoutMs });
    const body = decode(m.data) as { workflows?: unknown };
    if (!Array.isArray(body.workflows)) throw new UnavailableError('the orchestrator answered the workflow catalog with something else than a list');
    return body.workflows as WorkflowInfo[];
  } catch (e) {
    if (CapstanError.is(e, ErrorCode.Unavailable)) throw e;
    throw new UnavailableError(`no orchestrator serving tenant ${t} answered for its workflows within ${timeoutMs} ms`, { cause: e });
  }
}

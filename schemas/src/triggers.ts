/**
 * Runs started by something other than a submit: schedules (cron or interval, fired by the
 * orchestrator) and webhook routes (signed HTTP deliveries turned into submits by ingress).
 *
 * Schedules are changed by commands on `cap.<t>.cmd.schedule` (the orchestrator judges and
 * records them on `cap.<t>.schedules.<id>`, its single writer); each firing wakes the
 * orchestrator through a JetStream message schedule that publishes `cap.<t>.cmd.fire`.
 * Routes are records an admin writes on `cap.<t>.routes.<id>`; ingress follows them.
 * Shapes only here: cron and time-zone semantics are checked in kit (croner).
 */
import { SchemaError } from './errors.js';
import { actorSchema, reasonSchema } from './events.js';
import type { RunId } from './ids.js';
import { RUN_ID_PATTERN } from './ids.js';
import { TOKEN_PATTERN } from './names.js';
import { SECRET_NAME_PATTERN } from './secrets.js';
import type { Infer, Schema } from './validate.js';
import { arr, bool, int, isPlainObject, jsonObject, literal, obj, optional, str } from './validate.js';

/** Schedule and route ids are subject tokens: they name their record's subject. */
export const TRIGGER_ID_PATTERN = TOKEN_PATTERN;

/** What a firing does while the schedule's previous run has not ended. */
export const OverlapPolicy = { Skip: 'skip', BufferOne: 'buffer-one', AllowAll: 'allow-all' } as const;
export type OverlapPolicy = (typeof OverlapPolicy)[keyof typeof OverlapPolicy];

/** What happens to slots missed while nothing could fire them (no orchestrator, no server). */
export const CatchupPolicy = { Skip: 'skip', Last: 'last', All: 'all' } as const;
export type CatchupPolicy = (typeof CatchupPolicy)[keyof typeof CatchupPolicy];

export const ScheduleStatus = { Active: 'active', Paused: 'paused', Deleted: 'deleted' } as const;
export type ScheduleStatus = (typeof ScheduleStatus)[keyof typeof ScheduleStatus];

export const ScheduleOp = { Create: 'create', Pause: 'pause', Resume: 'resume', Trigger: 'trigger', Delete: 'delete' } as const;
export type ScheduleOp = (typeof ScheduleOp)[keyof typeof ScheduleOp];

export const SCHEDULE_LIMITS = {
  /** Shortest interval, and the finest a cron expression may fire (it may have a seconds field). */
  minEveryMs: 1000,
  maxEveryMs: 366 * 86_400_000,
  /** Longest catch-up window: how far back missed slots are still run under `catchup: all`. */
  maxCatchupWindowMs: 7 * 86_400_000,
  defaultCatchupWindowMs: 3_600_000,
} as const;

/** A schedule's or a route's id (exported as `triggerIdSchema`). */
export const triggerId = str({ min: 1, max: 64, pattern: TRIGGER_ID_PATTERN });
const isoTime = str({ min: 10, max: 40, pattern: /^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}(:\d{2}(\.\d{1,9})?)?(Z|[+-]\d{2}:\d{2})$/ });

/** A schedule spec's fields, for a form or request body that carries one beside other fields. */
export const scheduleSpecShape = {
  /** Cron expression (5 fields, or 6 with seconds first; `@hourly` … nicknames). */
  cron: optional(str({ min: 1, max: 128 })),
  /** Fixed interval in milliseconds, counted from `startAt` (or the creation). */
  everyMs: optional(int({ min: SCHEDULE_LIMITS.minEveryMs, max: SCHEDULE_LIMITS.maxEveryMs })),
  /** IANA time zone of the cron expression; default UTC. */
  timezone: optional(str({ min: 1, max: 64 })),
  startAt: optional(isoTime),
  endAt: optional(isoTime),
  workflow: str({ min: 1, max: 128 }),
  input: optional(jsonObject()),
  overlap: optional(literal(OverlapPolicy.Skip, OverlapPolicy.BufferOne, OverlapPolicy.AllowAll)),
  catchup: optional(literal(CatchupPolicy.Skip, CatchupPolicy.Last, CatchupPolicy.All)),
  catchupWindowMs: optional(int({ min: 0, max: SCHEDULE_LIMITS.maxCatchupWindowMs })),
};
const specSchema = obj('schedule spec', scheduleSpecShape);
export type ScheduleSpec = Infer<typeof specSchema>;

/** A spec's shape, and the rules between its fields that need no clock or cron parser. @throws SchemaError */
export function parseScheduleSpec(value: unknown, path = 'spec'): ScheduleSpec {
  const s = specSchema.parse(value, path);
  if ((s.cron === undefined) === (s.everyMs === undefined)) throw new SchemaError('schedule spec', path, 'needs exactly one of cron and everyMs');
  if (s.everyMs !== undefined && s.timezone !== undefined) throw new SchemaError('schedule spec', `${path}.timezone`, 'applies to cron schedules only');
  if (s.startAt !== undefined && s.endAt !== undefined && Date.parse(s.endAt) <= Date.parse(s.startAt)) {
    throw new SchemaError('schedule spec', `${path}.endAt`, 'must be after startAt');
  }
  for (const k of ['startAt', 'endAt'] as const) {
    if (s[k] !== undefined && Number.isNaN(Date.parse(s[k]))) throw new SchemaError('schedule spec', `${path}.${k}`, 'is not a valid time');
  }
  return s;
}

const who = { by: actorSchema, reason: optional(reasonSchema) };
const scheduleCommands = {
  create: obj('schedule create', { op: literal('create'), schedule: triggerId, spec: obj('spec', scheduleSpecShape), ...who }),
  pause: obj('schedule pause', { op: literal('pause'), schedule: triggerId, ...who }),
  resume: obj('schedule resume', { op: literal('resume'), schedule: triggerId, ...who }),
  trigger: obj('schedule trigger', { op: literal('trigger'), schedule: triggerId, ...who }),
  delete: obj('schedule delete', { op: literal('delete'), schedule: triggerId, ...who }),
} as const satisfies Record<ScheduleOp, Schema<unknown>>;

export type ScheduleCommand = { [K in ScheduleOp]: Infer<(typeof scheduleCommands)[K]> }[ScheduleOp];

/** A command on `cap.<t>.cmd.schedule`. @throws SchemaError */
export function parseScheduleCommand(value: unknown): ScheduleCommand {
  const op = isPlainObject(value) ? value['op'] : undefined;
  if (typeof op !== 'string' || !Object.hasOwn(scheduleCommands, op)) throw new SchemaError('schedule command', 'op', `must be one of ${Object.keys(scheduleCommands).join(', ')}`);
  const cmd = scheduleCommands[op as ScheduleOp].parse(value) as ScheduleCommand;
  if (cmd.op === 'create') parseScheduleSpec(cmd.spec);
  return cmd;
}

const runId = str({ pattern: RUN_ID_PATTERN }) as unknown as Schema<RunId>;

/**
 * A schedule as recorded on `cap.<t>.schedules.<id>` (the last record is the schedule; the
 * earlier ones are its history). `generation` tells a schedule from an older one of the same
 * id (deleted and made again); `epoch` changes whenever firing (re)starts, so a wake-up armed
 * before a pause or a resume is recognised as stale. Both are stream sequences of the
 * commands that set them. `change` is what made this record, for the audit log.
 */
const scheduleRecordSchema = obj('schedule record', {
  schedule: triggerId,
  generation: int({ min: 1 }),
  epoch: int({ min: 1 }),
  status: literal(ScheduleStatus.Active, ScheduleStatus.Paused, ScheduleStatus.Deleted),
  spec: obj('spec', scheduleSpecShape),
  /** Interval schedules count their slots from here (epoch ms). */
  anchorMs: int({ min: 0 }),
  change: obj('change', {
    op: literal('create', 'pause', 'resume', 'trigger', 'delete'),
    by: actorSchema,
    reason: optional(reasonSchema),
    /** The command's stream sequence: the client waits for the record carrying its own. */
    cmdSeq: int({ min: 1 }),
    /** The run a trigger started. */
    runId: optional(runId),
  }),
});
export type ScheduleRecord = Infer<typeof scheduleRecordSchema>;
export function parseScheduleRecord(value: unknown): ScheduleRecord {
  return scheduleRecordSchema.parse(value);
}

/**
 * The wake-up a schedule's message schedule publishes on `cap.<t>.cmd.fire`: for `slot`, at
 * `wake` (the slot's time, or sooner to look again at a buffered slot).
 */
const fireSchema = obj('schedule fire', { schedule: triggerId, generation: int({ min: 1 }), epoch: int({ min: 1 }), slot: int({ min: 0 }), wake: int({ min: 0 }) });
export type ScheduleFire = Infer<typeof fireSchema>;
export function parseScheduleFire(value: unknown): ScheduleFire {
  return fireSchema.parse(value);
}

/**
 * Where a schedule's firing stands, on `cap.<t>.schedstate.<id>` (written by the
 * orchestrator with the subject's expected last sequence: one decision per slot).
 */
const stateSchema = obj('schedule state', {
  schedule: triggerId,
  generation: int({ min: 1 }),
  epoch: int({ min: 1 }),
  /** The first slot not decided yet (epoch ms); absent once the schedule has no more slots. */
  next: optional(int({ min: 0 })),
  /** The run the schedule started last, its slot and when it was submitted. */
  last: optional(obj('last', { runId, slot: int({ min: 0 }), at: int({ min: 0 }) })),
  /** A slot held back by `buffer-one` until the last run ends. */
  buffered: optional(int({ min: 0 })),
  started: int({ min: 0 }),
  skipped: int({ min: 0 }),
});
export type ScheduleState = Infer<typeof stateSchema>;
export function parseScheduleState(value: unknown): ScheduleState {
  return stateSchema.parse(value);
}

// ---------------------------------------------------------------------------------------
// Webhook routes.

/** A JSON Pointer (RFC 6901) into a delivery's body: `""` is the whole body. */
export const JSON_POINTER_PATTERN = /^(\/([^~/]|~[01])*)*$/;

/**
 * A route: deliveries to `POST /hooks/<tenant>/<route>` signed with one of `secrets`
 * (secret names in the tenant's secrets store, several during a rotation) start `workflow`.
 * `fields` maps input keys to JSON Pointers into the body; without it the body (an object)
 * is the input. A route that is `disabled` refuses deliveries as unknown.
 */
const routeSchema = obj('webhook route', {
  route: triggerId,
  workflow: str({ min: 1, max: 128 }),
  secrets: arr(str({ min: 1, max: 128, pattern: SECRET_NAME_PATTERN }), { max: 4 }),
  fields: optional(obj('fields', {})),
  status: literal('enabled', 'disabled', 'deleted'),
  by: actorSchema,
  reason: optional(reasonSchema),
});
export type WebhookRoute = Omit<Infer<typeof routeSchema>, 'fields'> & { readonly fields?: Readonly<Record<string, string>> };

const FIELD_KEY = /^[A-Za-z0-9_][A-Za-z0-9_.-]{0,63}$/;

/** A route record. @throws SchemaError */
export function parseWebhookRoute(value: unknown): WebhookRoute {
  const fields = isPlainObject(value) ? value['fields'] : undefined;
  const r = routeSchema.parse(isPlainObject(value) ? { ...value, fields: fields === undefined ? undefined : {} } : value);
  if (r.secrets.length === 0 && r.status !== 'deleted') throw new SchemaError('webhook route', 'secrets', 'must name at least one signing secret');
  if (fields === undefined) return { ...r, fields: undefined } as WebhookRoute;
  if (!isPlainObject(fields)) throw new SchemaError('webhook route', 'fields', 'must be an object of input key → JSON Pointer');
  const entries = Object.entries(fields);
  if (entries.length === 0 || entries.length > 32) throw new SchemaError('webhook route', 'fields', 'must map 1 to 32 input keys');
  const out: Record<string, string> = {};
  for (const [k, p] of entries) {
    if (!FIELD_KEY.test(k)) throw new SchemaError('webhook route', `fields.${k.slice(0, 64)}`, `key must match ${FIELD_KEY.source}`);
    if (typeof p !== 'string' || p.length > 512 || !JSON_POINTER_PATTERN.test(p)) throw new SchemaError('webhook route', `fields.${k}`, 'must be a JSON Pointer such as /data/id');
    out[k] = p;
  }
  return { ...r, fields: out } as WebhookRoute;
}

/** What ingress keeps per accepted `webhook-id` (`cap.<t>.seen.<hash>`), for the replay window. */
const seenSchema = obj('webhook delivery', { route: triggerId, runId, bodySha256: str({ min: 64, max: 64, pattern: /^[0-9a-f]{64}$/ }) });
export type SeenDelivery = Infer<typeof seenSchema>;
export function parseSeenDelivery(value: unknown): SeenDelivery {
  return seenSchema.parse(value);
}

/**
 * Ingress asking the secrets-lease service whether a delivery is signed by one of the named
 * secrets (`cap.<t>.svc.secrets.verify`): the service computes the HMACs itself, so signing
 * secrets never leave it. The answer is `{ valid }` and, when valid, which name matched.
 */
const verifyShape = obj('verify request', {
  secrets: arr(str({ min: 1, max: 128, pattern: SECRET_NAME_PATTERN }), { max: 4 }),
  id: str({ min: 1, max: 256 }),
  timestamp: str({ min: 1, max: 20, pattern: /^\d+$/ }),
  signature: str({ min: 1, max: 4096 }),
});
export type VerifyRequest = Infer<typeof verifyShape> & { readonly body: Uint8Array };
/** Largest body a verify request carries (below NATS's 1 MiB payload, with room for the rest). */
export const MAX_VERIFY_BODY_BYTES = 960 * 1024;
export function parseVerifyRequest(value: unknown): VerifyRequest {
  const body = isPlainObject(value) ? value['body'] : undefined;
  if (!(body instanceof Uint8Array)) throw new SchemaError('verify request', 'body', 'must be bytes');
  if (body.length > MAX_VERIFY_BODY_BYTES) throw new SchemaError('verify request', 'body', `must be at most ${MAX_VERIFY_BODY_BYTES} bytes`);
  const { body: _b, ...rest } = value as Record<string, unknown>;
  const r = verifyShape.parse(rest);
  if (r.secrets.length === 0) throw new SchemaError('verify request', 'secrets', 'must name at least one secret');
  return { ...r, body };
}
const verifyReplySchema = obj('verify reply', { valid: bool(), secret: optional(str({ max: 128 })) });
export type VerifyReply = Infer<typeof verifyReplySchema>;
export const parseVerifyReply = (v: unknown): VerifyReply => verifyReplySchema.parse(v);

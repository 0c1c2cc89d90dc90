/**
 * Schedules as pure functions: which slots a spec has (croner for cron expressions and time
 * zones), which runs a firing starts under the overlap and catch-up policies, and the run
 * ids of those runs. The orchestrator decides with these; the console and the CLI list next
 * firings with them. No clock is read here: every time is an argument.
 */
import { createHash } from 'node:crypto';
import { Cron } from 'croner';
import { CatchupPolicy, InvalidArgumentError, makeRunId, OverlapPolicy, parseScheduleSpec, SCHEDULE_LIMITS, type RunId, type ScheduleSpec, type TenantId } from '@capstan/schemas';

/**
 * A slot was missed (downtime) when it is decided after the next slot's time has come too, or
 * more than this after its own time; missed slots go by the catch-up policy.
 */
export const MISSED_AFTER_MS = 15_000;
/** How often a schedule holding a buffered slot looks whether its last run has ended. */
export const BUFFER_RECHECK_MS = 2_000;
/** At most this many slots are decided in one firing; older ones count as missed beyond the window. */
export const MAX_DUE_SLOTS = 1_000;

/** The slot source of a spec: `after(t)` is the first slot strictly after `t` (epoch ms), or undefined. */
export interface Slots {
  after(t: number): number | undefined;
}

/**
 * A spec's slots: cron in its time zone, or every `everyMs` from `anchorMs`; none before
 * `startAt`, none after `endAt`.
 * @throws InvalidArgumentError for a cron expression or time zone croner refuses
 */
export function slotsOf(spec: ScheduleSpec, anchorMs: number): Slots {
  const start = spec.startAt === undefined ? undefined : Date.parse(spec.startAt);
  const end = spec.endAt === undefined ? Infinity : Date.parse(spec.endAt);
  const bounded = (next: (t: number) => number | undefined): Slots => ({
    after(t) {
      const from = start !== undefined && t < start ? start - 1 : t;
      const s = next(from);
      return s === undefined || s > end ? undefined : s;
    },
  });
  if (spec.everyMs !== undefined) {
    const every = spec.everyMs;
    const anchor = start ?? anchorMs;
    return bounded((t) => (t < anchor ? anchor : anchor + (Math.floor((t - anchor) / every) + 1) * every));
  }
  const cron = parseCron(spec.cron ?? '', spec.timezone);
  return bounded((t) => cron.nextRun(new Date(t))?.getTime());
}

function parseCron(expr: string, timezone: string | undefined): Cron {
  let cron: Cron;
  try {
    cron = new Cron(expr, { paused: true, ...(timezone ? { timezone } : { timezone: 'UTC' }), mode: '5-or-6-parts' });
    // A bad time zone only shows when a date is converted.
    cron.nextRun(new Date(0));
  } catch (e) {
    const why = (e as Error).message.split('. ')[0] ?? 'invalid';
    throw new InvalidArgumentError(`cron ${JSON.stringify(expr.slice(0, 128))}${timezone ? ` in ${timezone}` : ''}: ${why.replace(/^Cron\w*: /, '')}`);
  }
  return cron;
}

/**
 * Everything about a spec a schedule can be refused for: its shape, its cron expression and
 * time zone, and a cron that fires more often than once a second apart.
 * @throws SchemaError | InvalidArgumentError
 */
export function checkScheduleSpec(value: unknown): ScheduleSpec {
  const spec = parseScheduleSpec(value);
  if (spec.cron !== undefined) {
    const slots = slotsOf({ ...spec, startAt: undefined, endAt: undefined }, 0);
    const a = slots.after(Date.UTC(2030, 0, 1));
    const b = a === undefined ? undefined : slots.after(a);
    if (a !== undefined && b !== undefined && b - a < SCHEDULE_LIMITS.minEveryMs)
      throw new InvalidArgumentError(`cron ${JSON.stringify(spec.cron)} fires more often than once a second`);
  }
  return spec;
}

/** The next `n` slots strictly after `from` (for listings). */
export function nextSlots(spec: ScheduleSpec, anchorMs: number, from: number, n: number): number[] {
  const slots = slotsOf(spec, anchorMs);
  const out: number[] = [];
  for (let t: number | undefined = from; out.length < n;) {
    t = slots.after(t);
    if (t === undefined) break;
    out.push(t);
  }
  return out;
}

export interface FiringInput {
  readonly spec: ScheduleSpec;
  readonly anchorMs: number;
  /** The first slot not decided yet; undefined once the schedule has none (a buffered one may remain). */
  readonly next: number | undefined;
  /** When the server fired this wake-up: anything up to it is due, whatever our clock says. */
  readonly woken: number;
  readonly now: number;
  /** Whether the schedule's last run has not ended yet. */
  readonly lastActive: boolean;
  readonly buffered: number | undefined;
}

export interface FiringPlan {
  /** Slots to start now, in order (a buffered one first). */
  readonly start: readonly number[];
  /** Slots decided not to run (missed under the catch-up policy, or refused by the overlap policy). */
  readonly skipped: readonly number[];
  readonly buffered: number | undefined;
  /** The first slot not decided yet; undefined when the schedule has no more. */
  readonly next: number | undefined;
  /** When to wake next: the next slot, or sooner while a slot is buffered. */
  readonly wakeAt: number | undefined;
}

/**
 * What one firing decides. Due slots are those from `next` up to now (and the woken one);
 * a due slot whose successor is due too, or more than {@link MISSED_AFTER_MS} old, was
 * missed and goes by the catch-up policy (`skip`: none of them; `last`: the latest; `all`: those within the window). Then the
 * overlap policy, slot by slot in order, while a run of the schedule has not ended: `skip`
 * drops the slot, `buffer-one` keeps the first such slot until the run ends (more are
 * dropped), `allow-all` starts it anyway.
 */
export function planFiring(i: FiringInput): FiringPlan {
  const { spec, now } = i;
  const slots = slotsOf(spec, i.anchorMs);
  const until = Math.max(now, i.woken);
  const due: number[] = [];
  let next: number | undefined = i.next;
  while (next !== undefined && next <= until) {
    due.push(next);
    // Slots beyond the last MAX_DUE_SLOTS are older than any sane window: they pass unrun.
    if (due.length > MAX_DUE_SLOTS) due.shift();
    next = slots.after(next);
  }
  const policy = spec.catchup ?? CatchupPolicy.All;
  const window = spec.catchupWindowMs ?? SCHEDULE_LIMITS.defaultCatchupWindowMs;
  const isMissed = (s: number, i: number) => now - s > MISSED_AFTER_MS || (due[i + 1] ?? next ?? Infinity) <= now;
  const missed = due.filter(isMissed);
  const onTime = due.filter((s, i) => !isMissed(s, i));
  let caught: number[];
  if (policy === CatchupPolicy.Skip) caught = [];
  else if (policy === CatchupPolicy.Last) caught = missed.slice(-1);
  else caught = missed.filter((s) => now - s <= window);
  const skipped: number[] = missed.filter((s) => !caught.includes(s));
  const candidates = [...caught, ...onTime];

  const overlap = spec.overlap ?? OverlapPolicy.Skip;
  const start: number[] = [];
  let active = i.lastActive;
  let buffered = i.buffered;
  if (buffered !== undefined && !active) {
    start.push(buffered);
    buffered = undefined;
    active = true;
  }
  for (const s of candidates) {
    if (overlap === OverlapPolicy.AllowAll || !active) {
      start.push(s);
      active = true;
    } else if (overlap === OverlapPolicy.BufferOne && buffered === undefined) {
      buffered = s;
    } else {
      skipped.push(s);
    }
  }
  const wakeAt = buffered === undefined ? next : Math.min(next ?? Infinity, now + BUFFER_RECHECK_MS);
  return { start, skipped, buffered, next, wakeAt };
}

/**
 * The run a schedule starts for a slot: derived from tenant, schedule, generation and slot
 * (its time is the slot), so no restart, clock step or second orchestrator can start a slot
 * twice, and a schedule made again under the same id never meets the old one's runs.
 */
export function scheduleRunId(t: TenantId, schedule: string, generation: number, slotMs: number): RunId {
  return makeRunId(slotMs, createHash('sha256').update(`${t}\0schedule\0${schedule}\0${generation}\0${slotMs}`).digest());
}

/** The run a schedule's "trigger now" starts: derived from the trigger command's stream sequence. */
export function triggerRunId(t: TenantId, schedule: string, generation: number, cmdSeq: number, atMs: number): RunId {
  return makeRunId(atMs, createHash('sha256').update(`${t}\0trigger\0${schedule}\0${generation}\0${cmdSeq}`).digest());
}

/**
 * The run a webhook delivery starts: a function of tenant, route and `webhook-id` alone
 * (its time part is zero), so a sender's retry, re-signed later with a new timestamp, names
 * the same run however late it comes, long after the replay window.
 */
export function webhookRunId(t: TenantId, route: string, webhookId: string): RunId {
  return makeRunId(0, createHash('sha256').update(`${t}\0webhook\0${route}\0${webhookId}`).digest());
}

/** `1s`, `90s`, `5m`, `2h`, `1d` → milliseconds (for CLI flags and forms). @throws InvalidArgumentError */
export function parseEvery(raw: string): number {
  const m = /^(\d+)(ms|s|m|h|d)$/.exec(raw.trim());
  if (!m) throw new InvalidArgumentError(`${JSON.stringify(raw.slice(0, 32))} is not an interval: use a number and a unit, such as 30s, 5m, 2h, 1d`);
  const unit = { ms: 1, s: 1000, m: 60_000, h: 3_600_000, d: 86_400_000 }[m[2] as 'ms'];
  return Number(m[1]) * unit;
}

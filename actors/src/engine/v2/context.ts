/**
 * Engine 2's run context: the run's data (input, results) and its **step instances**. An
 * instance is one use of a step: a task (`fetch`), a fan-out item (`lines-3`), a loop
 * iteration's step (`think-2`), a wait or a sleep. Every instance, whatever made it, goes
 * through the same lifecycle (lifecycle.ts), so a fan-out item has exactly the retries,
 * timeouts, policy gate and approvals of a plain step. The machine's states (states.ts) are
 * the control flow: which instances to start, and where to go when they end.
 */
import type { DecisionEventBody, ErrorRecord, JsonValue } from '@capstan/schemas';
import type { RunData } from '../../workflow.js';

export type Phase =
  /** A sandboxed task waiting for the policy's answer. */
  | 'authorize'
  /** A task waiting for a person, as its policy asked. */
  | 'approve'
  | 'scheduled'
  | 'started'
  /** A failed attempt waiting for its retry timer. */
  | 'backoff'
  /** A wait for a signal. */
  | 'waiting'
  | 'sleeping'
  | 'done'
  | 'failed'
  | 'cancelled';

/** Phases in which an instance is still open (the run waits for it). */
export const OPEN: ReadonlySet<Phase> = new Set<Phase>(['authorize', 'approve', 'scheduled', 'started', 'backoff', 'waiting', 'sleeping']);
/** Phases in which a task has work in flight or about to be (status `running`). */
export const BUSY: ReadonlySet<Phase> = new Set<Phase>(['authorize', 'scheduled', 'started', 'backoff']);

export interface PendingApproval {
  readonly version: number;
  readonly policies: readonly string[];
  readonly approvers: string;
  readonly expiresInMs: number;
}

export interface Instance {
  readonly kind: 'task' | 'signal' | 'sleep' | 'child';
  /** The definition's step name (its handler, its policy questions, its result's alias). */
  readonly node: string;
  readonly attempt: number;
  /** Attempts used before the run was last retried: the retry policy counts from here. */
  readonly base: number;
  readonly phase: Phase;
  /** The current attempt was reported started (its timeout timer is armed). */
  readonly started?: boolean;
  /** Policy questions asked for the current attempt (names the reminder timers). */
  readonly asks?: number;
  readonly approval?: PendingApproval;
  /** Mode 3b: the current attempt's credential request waits for a person. */
  readonly cred?: boolean;
  /** Fan-out items: the element and its place (1-based). */
  readonly item?: JsonValue;
  readonly index?: number;
  /** Inside a loop: the innermost iteration. */
  readonly iteration?: number;
  /** A child step: the current attempt's child run, and what the run's ending does to it. */
  readonly child?: string;
  readonly close?: 'cancel' | 'abandon';
}

export interface FanOut {
  readonly items: readonly JsonValue[];
  /**
   * The items' instances and results, by place (item n at n-1). Kept here, in arrays, rather
   * than among the run's instances and results by name: a fan-out of thousands changes one
   * item per event, and copying an array is cheap where copying a large object is not.
   */
  readonly insts: readonly (Instance | undefined)[];
  readonly results: readonly (JsonValue | undefined)[];
  /** Results needed: all items, 1 (`first`) or n (`atLeast`). */
  readonly need: number;
  /** Item indexes (1-based) in the order their results came. */
  readonly order: readonly number[];
  readonly failed: number;
  /** Items started so far (1..next-1 have an instance). */
  readonly next: number;
}

export interface RunContext {
  readonly input: { readonly [k: string]: JsonValue };
  /** Results by instance name, and by step name for the latest instance of a step. */
  readonly results: Readonly<Record<string, JsonValue>>;
  /** The last result recorded (a step's `previous`). */
  readonly last: JsonValue;
  readonly inst: Readonly<Record<string, Instance>>;
  /** Signals received and not taken by a wait yet, oldest first. */
  readonly signals: readonly { readonly name: string; readonly payload: JsonValue }[];
  /** Loop iterations by loop instance name. */
  readonly iter: Readonly<Record<string, number>>;
  /** What a branch, a loop's check or a `when` decided, by instance name (`then`, `again`, `skip`, `error`…). */
  readonly flow: Readonly<Record<string, string>>;
  readonly fan: Readonly<Record<string, FanOut>>;
  readonly lastError: ErrorRecord | null;
  /** The instance whose failure failed the run: a retry starts it again. */
  readonly failedAt: string | null;
  readonly anyStarted: boolean;
  /** The run's own id (child and continued runs' ids derive from it); set when the run starts. */
  readonly runId?: string;
  /**
   * The engine deciding the run, set when the run starts, from engine 3 on (unset: engine 2,
   * whose context must stay as it was): how the ids of the runs it starts are derived.
   */
  readonly engine?: number;
  /** `patched(id)` markers evaluated so far: true, the new path. */
  readonly patches?: Readonly<Record<string, boolean>>;
}

export function initialContext(input: { readonly [k: string]: JsonValue }): RunContext {
  return { input, results: {}, last: null, inst: {}, signals: [], iter: {}, flow: {}, fan: {}, lastError: null, failedAt: null, anyStarted: false };
}

/** One pure step of the run: the context after it and the decisions it made, in order. */
export interface Step {
  readonly ctx: RunContext;
  readonly out: readonly DecisionEventBody[];
}

export const dataOf = (c: RunContext): RunData => ({ input: c.input, results: c.results });

/** The fan-out an instance name belongs to (`<fan>-<n>`), if any, and its item number. */
export function fanItem(c: RunContext, key: string): { fanKey: string; fan: FanOut; n: number } | undefined {
  const dash = key.lastIndexOf('-');
  if (dash <= 0) return undefined;
  const fan = c.fan[key.slice(0, dash)];
  const n = Number(key.slice(dash + 1));
  return fan && Number.isSafeInteger(n) && n >= 1 ? { fanKey: key.slice(0, dash), fan, n } : undefined;
}

export function getInst(c: RunContext, key: string): Instance | undefined {
  const f = fanItem(c, key);
  return f ? f.fan.insts[f.n - 1] : c.inst[key];
}

export function withInstance(c: RunContext, key: string, i: Instance): RunContext {
  const f = fanItem(c, key);
  if (!f) return { ...c, inst: { ...c.inst, [key]: i } };
  const insts = f.fan.insts.slice();
  insts[f.n - 1] = i;
  return { ...c, fan: { ...c.fan, [f.fanKey]: { ...f.fan, insts } } };
}

/** Every instance of the run: its steps', then each fan-out's items'. */
export function* allInstances(c: RunContext): Generator<[string, Instance]> {
  for (const [k, i] of Object.entries(c.inst)) yield [k, i];
  for (const [fanKey, fan] of Object.entries(c.fan)) {
    for (let n = 0; n < fan.insts.length; n++) {
      const i = fan.insts[n];
      if (i) yield [`${fanKey}-${n + 1}`, i];
    }
  }
}

/** A result by instance name: a fan-out item's is kept with its fan-out. */
export function resultOf(c: RunContext, key: string): JsonValue | undefined {
  const f = fanItem(c, key);
  return f ? f.fan.results[f.n - 1] : c.results[key];
}

/**
 * Where a step of the definition runs in this run: its name, plus the iteration of every
 * loop around it (`think-2`; `fetch-3-1` in two loops). Fan-out items add their index.
 */
export type KeyOf = (c: RunContext) => string;

export const failure = (code: string, message: string, retryable: boolean): ErrorRecord => ({ code, message: message.slice(0, 1000), retryable });

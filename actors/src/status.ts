import { RunStatus, TimerKind, type RunEvent } from '@capstan/schemas';

const FINAL: ReadonlySet<RunStatus> = new Set([RunStatus.Completed, RunStatus.Failed, RunStatus.Cancelled]);

/**
 * What a reader of events alone knows about a run's open steps: enough to name its status
 * the way the run's machine does (`runStatus`), with no workflow registry. Immutable.
 */
export interface RunProgress {
  readonly status: RunStatus;
  readonly engine: number;
  readonly anyStarted: boolean;
  /** Steps with an attempt in flight or about to be (policy check, scheduled, started, backoff), by name. */
  readonly busy: readonly string[];
  /** Steps waiting for a person or a signal: name → the signal (`''` for an approval). */
  readonly waits: Readonly<Record<string, string>>;
  readonly sleeps: readonly string[];
  /** Gated steps whose policy answer is still to come (their approval request is a wait, not work). */
  readonly asking: readonly string[];
}

export const NO_PROGRESS: RunProgress = Object.freeze({ status: RunStatus.Pending, engine: 1, anyStarted: false, busy: [], waits: {}, sleeps: [], asking: [] });

const add = (xs: readonly string[], x: string) => (xs.includes(x) ? xs : [...xs, x]);
const drop = (xs: readonly string[], x: string) => (xs.includes(x) ? xs.filter((y) => y !== x) : xs);
function unwait(w: Readonly<Record<string, string>>, step: string): Readonly<Record<string, string>> {
  if (!(step in w)) return w;
  const { [step]: _gone, ...rest } = w;
  return rest;
}

/**
 * The run's progress after one more event. The status rule, for every engine: a final
 * status stays (a retry reopens a failed run); `waiting` while a person or a signal is
 * awaited, or while the run only sleeps; else `running` once any step has started, `pending`
 * before. The projector folds runs with this, and `statusFromEvents` below.
 */
export function progressAfter(p: RunProgress, e: RunEvent): RunProgress {
  let { status, engine, anyStarted, busy, waits, sleeps, asking } = p;
  if (e.type === 'run.retried' && status === RunStatus.Failed) status = RunStatus.Running;
  else if (FINAL.has(status)) return p;
  const d = e.data as { step?: string; kind?: string };
  const step = d.step ?? '';
  switch (e.type) {
    case 'run.started':
      engine = e.data.engine ?? 1;
      break;
    case 'step.started':
      anyStarted = true;
      break;
    case 'step.completed':
    case 'step.failed':
      anyStarted = true;
      busy = drop(busy, step);
      break;
    case 'child.started':
      // A child run is work in flight, as a started task is.
      anyStarted = true;
      busy = add(busy, step);
      break;
    case 'child.completed':
    case 'child.failed':
      busy = drop(busy, step);
      break;
    case 'policy.requested':
      busy = add(busy, step);
      asking = add(asking, step);
      break;
    case 'policy.decided':
      asking = drop(asking, step);
      break;
    case 'step.scheduled':
      busy = add(busy, step);
      asking = drop(asking, step);
      break;
    case 'approval.requested':
      // A gated step's approval replaces its policy check; a running step's (mode 3b) does not stop it.
      if (asking.includes(step) || !busy.includes(step)) busy = drop(busy, step);
      asking = drop(asking, step);
      waits = { ...waits, [step]: '' };
      break;
    case 'step.waiting':
      waits = { ...waits, [step]: e.data.signal };
      break;
    case 'signal.consumed':
    case 'approval.decided':
      waits = unwait(waits, step);
      break;
    case 'run.signaled':
      // Engine 1 takes a signal in any wait for it; engine 2 says which wait took it (signal.consumed).
      if (engine === 1) for (const [s, name] of Object.entries(waits)) if (name === e.data.name) waits = unwait(waits, s);
      break;
    case 'timer.scheduled':
      if (d.kind === TimerKind.Sleep) sleeps = add(sleeps, step);
      else if (d.kind === TimerKind.Retry) busy = add(busy, step);
      break;
    case 'timer.fired':
      if (d.kind === TimerKind.Sleep) sleeps = drop(sleeps, step);
      else if (d.kind === TimerKind.Wait || d.kind === TimerKind.Approval) waits = unwait(waits, step);
      else if (d.kind === TimerKind.Timeout) busy = drop(busy, step);
      break;
    case 'step.cancelled':
      busy = drop(busy, step);
      sleeps = drop(sleeps, step);
      asking = drop(asking, step);
      waits = unwait(waits, step);
      break;
    case 'run.completed':
      status = RunStatus.Completed;
      break;
    case 'run.failed':
      status = RunStatus.Failed;
      break;
    case 'run.cancelled':
      status = RunStatus.Cancelled;
      break;
    default:
      break;
  }
  if (!FINAL.has(status)) {
    const waiting = Object.keys(waits).length > 0 || (sleeps.length > 0 && busy.length === 0);
    status = waiting ? RunStatus.Waiting : anyStarted ? RunStatus.Running : RunStatus.Pending;
  }
  return { status, engine, anyStarted, busy, waits, sleeps, asking };
}

/**
 * A run's status read straight off its events, without its machine: what a reader that
 * has no workflow registry (a CLI, a projection) needs. Agrees with `runStatus` of the
 * folded state for every compiled workflow.
 */
export function statusFromEvents(events: readonly RunEvent[]): RunStatus {
  return events.reduce(progressAfter, NO_PROGRESS).status;
}

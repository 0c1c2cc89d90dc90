import { RunStatus, type RunEvent } from '@capstan/schemas';

const FINAL: ReadonlySet<RunStatus> = new Set([RunStatus.Completed, RunStatus.Failed, RunStatus.Cancelled]);

/**
 * The status after one more event, given whether any step has started (or finished) before
 * it. A final status never changes, except that a retry reopens a failed run. Readers that fold runs incrementally (the projector) and
 * the whole-history reader below share this one rule.
 */
export function statusAfter(current: RunStatus, e: RunEvent, anyStarted: boolean): RunStatus {
  if (e.type === 'run.retried' && current === RunStatus.Failed) return RunStatus.Running;
  if (FINAL.has(current)) return current;
  switch (e.type) {
    case 'step.started':
    case 'step.completed':
    case 'step.failed':
      return RunStatus.Running;
    case 'step.waiting':
    case 'approval.requested':
      return RunStatus.Waiting;
    case 'step.scheduled':
    case 'policy.requested':
      return anyStarted ? RunStatus.Running : RunStatus.Pending;
    case 'approval.decided':
      // A decision ends a wait; what follows (a scheduled step, a failure) says the rest.
      return current === RunStatus.Waiting ? RunStatus.Running : current;
    case 'run.completed':
      return RunStatus.Completed;
    case 'run.failed':
      return RunStatus.Failed;
    case 'run.cancelled':
      return RunStatus.Cancelled;
    default:
      return current;
  }
}

/**
 * A run's status read straight off its events, without its machine: what a reader that
 * has no workflow registry (a CLI, a projection) needs. Agrees with `runStatus` of the
 * folded state for every compiled workflow.
 */
export function statusFromEvents(events: readonly RunEvent[]): RunStatus {
  let status: RunStatus = RunStatus.Pending;
  let anyStarted = false;
  for (const e of events) {
    status = statusAfter(status, e, anyStarted);
    if (e.type === 'step.started' || e.type === 'step.completed' || e.type === 'step.failed') anyStarted = true;
  }
  return status;
}

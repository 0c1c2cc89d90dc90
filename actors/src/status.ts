import type { RunEvent } from '@capstan/schemas';
import { RunStatus } from './run.js';

/**
 * A run's status read straight off its events, without its machine: what a reader that
 * has no workflow registry (a CLI, a projection) needs. Agrees with `runStatus` of the
 * folded state for every compiled workflow.
 */
export function statusFromEvents(events: readonly RunEvent[]): RunStatus {
  let status: RunStatus = RunStatus.Pending;
  let anyStarted = false;
  for (const e of events) {
    switch (e.type) {
      case 'step.started':
      case 'step.completed':
      case 'step.failed':
        anyStarted = true;
        status = RunStatus.Running;
        break;
      case 'step.waiting':
        status = RunStatus.Waiting;
        break;
      case 'step.scheduled':
        status = anyStarted ? RunStatus.Running : RunStatus.Pending;
        break;
      case 'run.completed':
        return RunStatus.Completed;
      case 'run.failed':
        return RunStatus.Failed;
      case 'run.cancelled':
        return RunStatus.Cancelled;
      default:
        break;
    }
  }
  return status;
}

/**
 * "Why is it waiting? Why did it fail?" in plain words, from what the projections know of a
 * run: its status, its step attempts, its approvals and the tail of its event index (and,
 * when given, the tenant's workers, to tell a busy fleet from a pool nobody serves).
 * Pure: the clock is a parameter.
 */
import type { Approval, Explanation, RunSummary, StepAttempt, TimelineEvent, WorkerInfo } from './api-types.js';

export interface ExplainInput {
  readonly run: RunSummary;
  readonly steps: readonly StepAttempt[];
  readonly approvals: readonly Approval[];
  readonly events: readonly TimelineEvent[];
  readonly workers?: readonly WorkerInfo[];
}

/** `ms` as a person would say it: `12 s`, `3 min`, `2 h`, `4 d`. */
export function sayDuration(ms: number): string {
  const s = Math.max(0, Math.round(ms / 1000));
  if (s < 60) return `${s} s`;
  const m = Math.round(s / 60);
  if (m < 60) return `${m} min`;
  const h = Math.round(m / 60);
  if (h < 48) return `${h} h`;
  return `${Math.round(h / 24)} d`;
}

const ago = (at: string, now: number) => `${sayDuration(now - Date.parse(at))} ago`;
const FAILED_OUTCOMES = new Set(['failed', 'timed_out']);

/** Error texts come from handlers: one line, and short enough for a sentence. */
function errorText(code: string | null, message: string | null): string {
  const m = (message ?? '').replace(/\s+/g, ' ').trim();
  const short = m.length > 200 ? `${m.slice(0, 199)}…` : m;
  if (code && short) return `${code}: ${short}`;
  return code ?? (short || 'no error recorded');
}

function latestAttempt(steps: readonly StepAttempt[], pred: (s: StepAttempt) => boolean = () => true): StepAttempt | undefined {
  let best: StepAttempt | undefined;
  for (const s of steps) {
    if (!pred(s)) continue;
    if (!best || Date.parse(s.scheduledAt) > Date.parse(best.scheduledAt) || (s.scheduledAt === best.scheduledAt && s.attempt > best.attempt)) best = s;
  }
  return best;
}

function failedSentence(s: StepAttempt): string {
  const what = s.outcome === 'timed_out' ? 'timed out' : 'failed';
  return `Step ${s.step} ${what} on attempt ${s.attempt}: ${errorText(s.errorCode ?? (s.outcome === 'timed_out' ? 'step_timeout' : null), s.errorMessage)}.`;
}

export function explainRun(input: ExplainInput, now: number): Explanation {
  const e = explainStatus(input, now);
  const { run } = input;
  // A run reopened after failing says so while it is live again: the failure is history.
  if (run.retries > 0 && run.retriedAt && (run.status === 'pending' || run.status === 'running' || run.status === 'waiting')) {
    return { ...e, text: `${e.text} Retried${run.retriedBy ? ` by ${run.retriedBy}` : ''} ${ago(run.retriedAt, now)}.` };
  }
  return e;
}

function explainStatus(input: ExplainInput, now: number): Explanation {
  const { run, steps, approvals } = input;
  switch (run.status) {
    case 'completed': {
      const took = run.endedAt ? ` in ${sayDuration(Date.parse(run.endedAt) - Date.parse(run.startedAt))}` : '';
      const n = new Set(steps.map((s) => s.step)).size;
      return { tone: 'done', text: `Completed${took}, ${n} step${n === 1 ? '' : 's'} over ${run.attempts} attempt${run.attempts === 1 ? '' : 's'}.` };
    }
    case 'cancelled': {
      const at = run.currentStep ? ` at step ${run.currentStep}` : '';
      return { tone: 'info', text: `Cancelled${at}${run.endedAt ? ` ${ago(run.endedAt, now)}` : ''}.`, ...(run.currentStep ? { step: run.currentStep } : {}) };
    }
    case 'failed':
      return explainFailed(input);
    case 'waiting': {
      const waiting = approvals.filter((a) => a.status === 'waiting').sort((a, b) => Date.parse(a.requestedAt) - Date.parse(b.requestedAt));
      const a = waiting[0];
      if (a) {
        const signal = a.signal === 'approve' ? '' : ` (signal ${a.signal})`;
        return { tone: 'waiting', step: a.step, text: `Waiting for approval of step ${a.step}${signal}, requested ${ago(a.requestedAt, now)}, by an operator.` };
      }
      return { tone: 'waiting', text: `Waiting for a signal${run.currentStep ? ` at step ${run.currentStep}` : ''}, since ${ago(run.updatedAt, now)}.` };
    }
    case 'pending':
    case 'running':
      return explainActive(input, now);
  }
  return { tone: 'info', text: `The run is ${String(run.status)}.` };
}

function explainFailed({ run, steps, approvals }: ExplainInput): Explanation {
  const denied = approvals.find((a) => a.status === 'denied');
  if (denied) {
    const by = denied.decidedBy ? ` by ${denied.decidedBy}` : '';
    return { tone: 'error', step: denied.step, text: `Step ${denied.step} was denied${by}${denied.reason ? `: ${errorText(null, denied.reason)}` : ''}.` };
  }
  const failed = latestAttempt(steps, (s) => FAILED_OUTCOMES.has(s.outcome));
  if (!failed) return { tone: 'error', text: `The run failed: ${errorText(run.errorCode, run.errorMessage)}.` };
  const sentences = [failedSentence(failed)];
  // The run's own error adds something when it is not just the step's error again
  // (retries_exhausted, a timeout decided by the orchestrator).
  if (run.errorCode && run.errorCode !== failed.errorCode) sentences.push(`The run failed with ${errorText(run.errorCode, run.errorMessage)}.`);
  return { tone: 'error', step: failed.step, text: sentences.join(' ') };
}

function explainActive({ run, steps, events, workers }: ExplainInput, now: number): Explanation {
  const current = latestAttempt(steps);
  if (!current) return { tone: 'progress', text: `Accepted ${ago(run.startedAt, now)}; the orchestrator has not scheduled a step yet.` };
  const { step, attempt } = current;
  if (current.outcome === 'running') {
    const since = current.startedAt ? ` for ${sayDuration(now - Date.parse(current.startedAt))}` : '';
    return { tone: 'progress', step, text: `Step ${step} is running on worker ${current.worker ?? 'unknown'} (attempt ${attempt})${since}.` };
  }
  if (current.outcome === 'scheduled') {
    const waited = sayDuration(now - Date.parse(current.scheduledAt));
    const text = `Step ${step} is pending: no worker in pool ${current.pool} has taken it for ${waited}.`;
    if (!workers) return { tone: 'waiting', step, text };
    const serving = workers.filter((w) => w.pools.includes(current.pool) && w.admission !== 'revoked' && w.admission !== 'pending');
    const live = serving.filter((w) => !w.stale);
    const why =
      serving.length === 0
        ? ` No worker serves pool ${current.pool}.`
        : live.length === 0
          ? ` The ${serving.length === 1 ? 'worker' : `${serving.length} workers`} serving it ${serving.length === 1 ? 'has' : 'have'} not sent a heartbeat for ${sayDuration(Math.min(...serving.map((w) => w.silentForMs)))}.`
          : live.every((w) => w.running > 0)
            ? ` All ${live.length} live worker${live.length === 1 ? ' is' : 's are'} busy.`
            : '';
    return { tone: 'waiting', step, text: text + why };
  }
  if (FAILED_OUTCOMES.has(current.outcome)) {
    // A failed attempt of a run still running is followed by a retry timer.
    const retry = events.at(-1)?.type === 'timer.scheduled';
    return { tone: 'waiting', step, text: `${failedSentence(current)} ${retry ? 'It will be retried after a backoff.' : 'The orchestrator decides what runs next.'}` };
  }
  return { tone: 'progress', step, text: `Step ${step} ${current.outcome} (attempt ${attempt}); the orchestrator decides what runs next.` };
}

/** Human-readable output. Machine-readable output is `--json` everywhere. */
import type { RunEvent } from '@capstan/schemas';
import type { TimelineEntry } from '@capstan/actors';

const tty = process.stdout.isTTY === true && !process.env['NO_COLOR'];
const paint = (code: number) => (s: string) => (tty ? `\u001b[${code}m${s}\u001b[0m` : s);
export const dim = paint(2);
export const bold = paint(1);
export const green = paint(32);
export const red = paint(31);
export const yellow = paint(33);
export const cyan = paint(36);

export function colorStatus(s: string): string {
  if (s === 'completed') return green(s);
  if (s === 'failed') return red(s);
  if (s === 'waiting' || s === 'cancelled' || s === 'pending') return yellow(s);
  return cyan(s);
}

export function time(ms: number): string {
  return new Date(ms).toISOString();
}

/** One line saying what an event means. */
export function describe(e: RunEvent): string {
  switch (e.type) {
    case 'run.started':
      return `started ${e.data.workflow}@${e.data.version}`;
    case 'step.scheduled':
      return `step ${e.data.step} attempt ${e.data.attempt} scheduled (mode ${e.data.mode}, pool ${e.data.pool}, timeout ${e.data.timeoutMs} ms)`;
    case 'step.started':
      return `step ${e.data.step} attempt ${e.data.attempt} started on ${e.data.worker}`;
    case 'step.completed':
      return `step ${e.data.step} attempt ${e.data.attempt} completed in ${e.data.durationMs} ms → ${JSON.stringify(e.data.result).slice(0, 80)}`;
    case 'step.failed':
      return `step ${e.data.step} attempt ${e.data.attempt} failed: ${e.data.error.code}: ${e.data.error.message}`;
    case 'step.waiting':
      return `step ${e.data.step} waits for signal "${e.data.signal}"`;
    case 'timer.scheduled':
      return e.data.until !== undefined
        ? `${e.data.kind} timer ${e.data.timerId} armed until ${time(e.data.until)}`
        : `${e.data.kind} timer ${e.data.timerId} armed for ${e.data.delayMs} ms`;
    case 'timer.fired':
      return `${e.data.kind} timer ${e.data.timerId} fired`;
    case 'run.signaled':
      return `signal "${e.data.name}" received`;
    case 'run.cancel-requested':
      return `cancel requested${e.data.reason ? `: ${e.data.reason}` : ''}`;
    case 'approval.decided':
      return `step ${e.data.step} ${e.data.decision === 'approve' ? 'approved' : 'denied'} by ${e.data.by}${e.data.reason ? `: ${e.data.reason}` : ''}`;
    case 'run.retried':
      return `run retried by ${e.data.by}${e.data.reason ? `: ${e.data.reason}` : ''}`;
    case 'policy.requested':
      return `step ${e.data.step} asks the policy (${e.data.queries.map((q) => [q['action'], q['mode'] ?? q['secret'] ?? q['host']].filter((x) => x !== undefined).join(' ')).join(', ')})`;
    case 'policy.decided':
      return `policy v${e.data.version} ${e.data.decision} for step ${e.data.step}${e.data.policies.length ? ` (${e.data.policies.join(', ')})` : ''}${e.data.approvers ? `, approvers: ${e.data.approvers}` : ''}`;
    case 'approval.requested':
      return `step ${e.data.step} waits for approval by ${e.data.approvers} (policy v${e.data.version}, expires in ${Math.round(e.data.expiresInMs / 60_000)} min)`;
    case 'credential.decided':
      return `step ${e.data.step} asked for credential ${e.data.name}: policy v${e.data.version} ${e.data.decision}${e.data.reason ? ` (“${e.data.reason}”)` : ''}`;
    case 'run.completed':
      return `run completed → ${JSON.stringify(e.data.output).slice(0, 80)}`;
    case 'run.failed':
      return `run failed: ${e.data.error.code}: ${e.data.error.message}`;
    case 'run.cancelled':
      return `run cancelled${e.data.reason ? `: ${e.data.reason}` : ''}`;
    case 'step.cancelled':
      return `step ${e.data.step} attempt ${e.data.attempt} cancelled${e.data.reason ? `: ${e.data.reason}` : ''}`;
    case 'step.skipped':
      return `step ${e.data.step} skipped (its condition did not hold)`;
    case 'signal.consumed':
      return `step ${e.data.step} took signal "${e.data.signal}"`;
    case 'branch.taken':
      return `branch ${e.data.step} took ${e.data.branch}`;
    case 'loop.iteration':
      return `loop ${e.data.step} iteration ${e.data.iteration}`;
    case 'fanout.started':
      return `fan-out ${e.data.step} over ${e.data.items} item(s), ${e.data.concurrency} at a time`;
    case 'child.started':
      return `step ${e.data.step} attempt ${e.data.attempt} started child run ${e.data.child} (${e.data.workflow}; parent close: ${e.data.parentClose})`;
    case 'child.completed':
      return `step ${e.data.step} attempt ${e.data.attempt}: child run ${e.data.child} completed → ${JSON.stringify(e.data.result).slice(0, 80)}`;
    case 'child.failed':
      return `step ${e.data.step} attempt ${e.data.attempt}: child run ${e.data.child} failed: ${e.data.error.code}: ${e.data.error.message}`;
    case 'patch.marked':
      return `patch ${e.data.patch} marked: the run takes its new path`;
    case 'run.continued':
      return `run continued as new in ${e.data.next}${e.data.reason === 'event-cap' ? ' (at its event cap)' : ''}`;
  }
}

export function timelineLine(e: TimelineEntry): string {
  const decided = e.decisions.length > 0 ? ` ⇒ ${e.decisions.join(', ')}` : '';
  return `${String(e.seq).padStart(4)}  ${time(e.at)}  ${e.input.padEnd(20)} → ${e.state.padEnd(12)} ${colorStatus(e.status)}${dim(decided)}`;
}

/** The escape sequences `paint` adds. */
const ANSI = /\u001b\[[0-9;]*m/g;

/** Width on screen: colour codes take none. */
export function visibleLength(s: string): number {
  return s.replace(ANSI, '').length;
}

/** Columns aligned on the visible text, so coloured cells line up with plain ones. */
export function table(header: readonly string[], rows: readonly (readonly string[])[]): string {
  const widths = header.map((h, i) => Math.max(visibleLength(h), ...rows.map((r) => visibleLength(r[i] ?? ''))));
  const line = (cells: readonly string[]) =>
    cells
      .map((c, i) => (i === cells.length - 1 ? c : c + ' '.repeat((widths[i] ?? 0) - visibleLength(c))))
      .join('  ')
      .trimEnd();
  return [bold(line(header)), ...rows.map(line)].join('\n');
}

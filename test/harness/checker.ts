/**
 * The standard checker for fault tests: reads every run back from its stream and counts
 * what was lost, what forked and what was recorded twice. Tests assert the counts are zero
 * and print them, so a pass can be audited.
 */
import { foldRun, statusFromEvents, type Registry } from '@capstan/actors';
import { readRun } from '@capstan/kit';
import type { JetStreamManager } from '@nats-io/jetstream';
import type { RunEvent, RunId, TenantId } from '@capstan/schemas';

export interface RunCheck {
  readonly runs: number;
  readonly completed: number;
  readonly notTerminal: number;
  /** Runs with a missing start, a gap or a repeated sequence number. */
  readonly brokenChains: number;
  /** Runs whose stream holds more than one event for a sequence number (a fork). */
  readonly forks: number;
  /** (run, step) pairs with more than one `step.completed`. */
  readonly resultsRecordedTwice: number;
  /** (run, step, attempt) with more than one `step.started`. */
  readonly startsRecordedTwice: number;
  /** Runs whose replay does not reproduce the record. */
  readonly replayMismatches: number;
  /** Events of another tenant or run found in a run's stream subject. */
  readonly foreignEvents: number;
  readonly totalEvents: number;
}

export async function checkRuns(jsm: JetStreamManager, t: TenantId, runIds: readonly RunId[], registry: Registry): Promise<RunCheck & { eventsByRun: Map<RunId, RunEvent[]> }> {
  let completed = 0;
  let notTerminal = 0;
  let brokenChains = 0;
  let forks = 0;
  let resultsTwice = 0;
  let startsTwice = 0;
  let replayMismatches = 0;
  let foreign = 0;
  let total = 0;
  const eventsByRun = new Map<RunId, RunEvent[]>();
  for (const runId of runIds) {
    const { events } = await readRun(jsm, t, runId);
    eventsByRun.set(runId, events);
    total += events.length;
    foreign += events.filter((e) => e.runId !== runId).length;
    const seqs = events.map((e) => e.seq);
    if (new Set(seqs).size !== seqs.length) forks++;
    if (events[0]?.type !== 'run.started' || seqs.some((s, i) => s !== i + 1)) brokenChains++;
    const completions = new Map<string, number>();
    const starts = new Map<string, number>();
    for (const e of events) {
      if (e.type === 'step.completed') completions.set(e.data.step, (completions.get(e.data.step) ?? 0) + 1);
      // A child's outcome counts as its step's result.
      if (e.type === 'child.completed') completions.set(`child:${e.data.step}`, (completions.get(`child:${e.data.step}`) ?? 0) + 1);
      if (e.type === 'step.started') starts.set(`${e.data.step}#${e.data.attempt}`, (starts.get(`${e.data.step}#${e.data.attempt}`) ?? 0) + 1);
    }
    resultsTwice += [...completions.values()].filter((n) => n > 1).length;
    startsTwice += [...starts.values()].filter((n) => n > 1).length;
    const status = statusFromEvents(events);
    if (status === 'completed') completed++;
    if (!['completed', 'failed', 'cancelled'].includes(status)) notTerminal++;
    try {
      const fold = foldRun(registry, events);
      if (fold.timeline.at(-1)?.status !== status) replayMismatches++;
    } catch {
      replayMismatches++;
    }
  }
  return {
    runs: runIds.length,
    completed,
    notTerminal,
    brokenChains,
    forks,
    resultsRecordedTwice: resultsTwice,
    startsRecordedTwice: startsTwice,
    replayMismatches,
    foreignEvents: foreign,
    totalEvents: total,
    eventsByRun,
  };
}

export function report(name: string, c: RunCheck): void {
  const { runs, completed, notTerminal, brokenChains, forks, resultsRecordedTwice, startsRecordedTwice, replayMismatches, foreignEvents, totalEvents } = c;
  process.stdout.write(
    `checker[${name}]: runs=${runs} completed=${completed} notTerminal=${notTerminal} events=${totalEvents} ` +
      `brokenChains=${brokenChains} forks=${forks} resultsTwice=${resultsRecordedTwice} startsTwice=${startsRecordedTwice} ` +
      `replayMismatches=${replayMismatches} foreign=${foreignEvents}\n`,
  );
}

/**
 * Replays every run of a tenant through its recorded workflow version; returns how many
 * runs were replayed and which did not reproduce their record.
 */
export async function replayAll(jsm: JetStreamManager, t: TenantId, registry: Registry): Promise<{ replayed: number; failures: string[] }> {
  const { Streams, Subjects } = await import('@capstan/schemas');
  const info = await jsm.streams.info(Streams.runs(t), { subjects_filter: Subjects.allRuns(t) });
  const failures: string[] = [];
  let replayed = 0;
  for (const subject of Object.keys(info.state.subjects ?? {})) {
    const runId = subject.split('.')[3] as RunId;
    const { events } = await readRun(jsm, t, runId);
    try {
      const fold = foldRun(registry, events);
      if (fold.timeline.at(-1)?.status !== statusFromEvents(events)) failures.push(`${runId}: status differs`);
    } catch (e) {
      failures.push(`${runId}: ${(e as Error).message}`);
    }
    replayed++;
  }
  return { replayed, failures };
}

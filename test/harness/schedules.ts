/**
 * Reading what schedules did, for tests and the benchmark: every run of a tenant, each with
 * its slot (the time part of a schedule's run id) and its first event.
 */
import type { JetStreamManager } from '@nats-io/jetstream';
import { readRun, scheduleRunId } from '@capstan/kit';
import { runIdOfSubject, runIdTime, Streams, Subjects, type RunEvent, type RunId, type TenantId } from '@capstan/schemas';

export interface ScheduledRun {
  readonly runId: RunId;
  readonly slot: number;
  readonly events: readonly RunEvent[];
  /** When the orchestrator recorded `run.started` (the decision clock). */
  readonly startedAt: number | undefined;
}

/** Every run in the tenant's run stream. */
export async function allRunIds(jsm: JetStreamManager, t: TenantId): Promise<RunId[]> {
  const info = await jsm.streams.info(Streams.runs(t), { subjects_filter: Subjects.allRuns(t) });
  return Object.keys(info.state.subjects ?? {})
    .map((s) => runIdOfSubject(s) as RunId)
    .sort();
}

/** The runs a schedule started: those whose id is the one its generation derives for their slot. */
export async function runsOfSchedule(jsm: JetStreamManager, t: TenantId, schedule: string, generation: number): Promise<ScheduledRun[]> {
  const out: ScheduledRun[] = [];
  for (const runId of await allRunIds(jsm, t)) {
    const slot = runIdTime(runId);
    if (scheduleRunId(t, schedule, generation, slot) !== runId) continue;
    const { events } = await readRun(jsm, t, runId);
    out.push({ runId, slot, events, startedAt: events.find((e) => e.type === 'run.started')?.at });
  }
  return out.sort((a, b) => a.slot - b.slot);
}

/** p50 and p99 of a list of numbers (nearest rank). */
export function percentiles(xs: readonly number[]): { p50: number; p99: number; max: number } {
  const s = [...xs].sort((a, b) => a - b);
  const at = (q: number) => s[Math.min(s.length - 1, Math.max(0, Math.ceil(q * s.length) - 1))] ?? NaN;
  return { p50: at(0.5), p99: at(0.99), max: s.at(-1) ?? NaN };
}

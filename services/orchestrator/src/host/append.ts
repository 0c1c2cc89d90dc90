/**
 * Appending a tick's decisions: every run's events in one JetStream atomic batch, each
 * run's group under its optimistic lock. A run another writer moved on is reloaded and
 * decided again (bounded), so a run never forks; one refused group never holds up the
 * others (the appender retries groups one by one).
 */
import type { NatsConnection } from '@nats-io/transport-node';
import type { RunId, TenantId } from '@capstan/schemas';
import { appendBatch, failpoint, metrics, type Logger } from '@capstan/kit';
import type { RunObserver } from '../observe.js';
import type { RunCache } from '../run-cache.js';
import type { GroupResult, Pending, TenantHostStats } from './types.js';

const MAX_CONFLICT_RETRIES = 8;

/** Decided, about to append: a process frozen here wakes up with decisions another owner may have overtaken. */
export const BEFORE_APPEND = 'orchestrator.before_append';

export interface Appended {
  readonly done: GroupResult[];
  /** Groups of runs in partitions this instance no longer owns: their commands go back for the owner. */
  readonly fenced: GroupResult[];
}

export async function appendGroups(
  o: {
    nc: NatsConnection;
    tenant: TenantId;
    cache: RunCache;
    log: Logger;
    stats: TenantHostStats;
    observer: RunObserver;
    /** Whether this instance may still decide the run (it owns its partition). */
    owns: (runId: RunId) => boolean;
    /** The run's append was refused: another owner may have moved it on. */
    refused: (runId: RunId) => void;
  },
  first: GroupResult[],
  redecide: (runId: RunId, pendings: readonly Pending[]) => Promise<GroupResult>,
  /** Runs before each append: publishes what recovery re-derived (see run-host.ts). */
  beforeAppend: (groups: GroupResult[]) => Promise<GroupResult[]>,
): Promise<Appended> {
  const done: GroupResult[] = [];
  const fenced: GroupResult[] = [];
  let groups = first;
  for (let attempt = 0; groups.length > 0; attempt++) {
    // The first fence: a partition given up since these were decided is not appended to.
    fenced.push(...groups.filter((g) => !o.owns(g.runId)));
    groups = groups.filter((g) => o.owns(g.runId));
    groups = await beforeAppend(groups);
    const toAppend = groups.filter((g) => g.events.length > 0);
    if (toAppend.length > 0) failpoint(BEFORE_APPEND);
    const outcomes = await appendBatch(
      o.nc,
      o.tenant,
      toAppend.map((g) => ({ runId: g.runId, expectedLastSubjectSeq: g.expected, events: g.events })),
    );
    const conflicted: GroupResult[] = [];
    toAppend.forEach((g, i) => {
      const out = outcomes[i];
      if (out?.ok) {
        o.stats.appendedEvents += g.events.length;
        if (g.state) o.cache.set(g.runId, { state: g.state, lastStreamSeq: out.lastStreamSeq });
        o.observer.recorded(
          g.runId,
          g.state,
          g.events,
          g.pendings.map((p) => p.msg),
        );
        done.push(g);
      } else {
        o.stats.conflicts++;
        metrics.conflicts.inc({ tenant: o.tenant });
        o.cache.delete(g.runId);
        o.refused(g.runId);
        conflicted.push(g);
        o.log.debug({ runId: g.runId, reason: out?.reason }, 'append conflict; reloading run');
      }
    });
    done.push(...groups.filter((g) => g.events.length === 0));
    if (conflicted.length > 0 && attempt >= MAX_CONFLICT_RETRIES) {
      // Leave them unacknowledged: redelivery tries again later.
      o.log.warn({ runs: conflicted.map((g) => g.runId) }, 'runs still conflicting; commands left for redelivery');
      break;
    }
    // The second fence: a refusal that cost us the partition leaves the run to its owner.
    fenced.push(...conflicted.filter((g) => !o.owns(g.runId)));
    groups = await Promise.all(conflicted.filter((g) => o.owns(g.runId)).map((g) => redecide(g.runId, [...g.pendings, ...g.deferred])));
  }
  return { done, fenced };
}

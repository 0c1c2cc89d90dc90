/**
 * Loading a run: from the cache, or from its stream, folded through the engine and workflow
 * version it recorded (which also checks its history). A run loaded from its stream hands
 * back the effects of its last decisions: a process may have died between appending them and
 * acting on them, and the log is the outbox.
 */
import type { JetStreamManager } from '@nats-io/jetstream';
import { foldRun, type Registry, type RunState } from '@capstan/actors';
import { INPUT_EVENT_TYPES, type RunEvent, type RunId, type TenantId } from '@capstan/schemas';
import { readRun } from '@capstan/kit';
import { tailDecisions, type EffectSource } from '../effects.js';
import type { RunCache } from '../run-cache.js';

export interface LoadedRun {
  readonly cached?: { readonly state: RunState; readonly lastStreamSeq: number };
  readonly recovered: EffectSource[];
  readonly fromCache: boolean;
  /** The run's events, when it was read from its stream. */
  readonly events?: readonly RunEvent[];
}

export async function loadRun(jsm: JetStreamManager, t: TenantId, registry: Registry, cache: RunCache, runId: RunId, forceReload: boolean): Promise<LoadedRun> {
  if (!forceReload) {
    const hit = cache.get(runId);
    if (hit) return { cached: hit, recovered: [], fromCache: true };
  }
  const loaded = await readRun(jsm, t, runId);
  if (loaded.events.length === 0) return { recovered: [], fromCache: false };
  const { state } = foldRun(registry, loaded.events);
  const tail = tailDecisions(loaded.events, (e) => INPUT_EVENT_TYPES.has(e.type));
  return { cached: { state, lastStreamSeq: loaded.lastStreamSeq }, recovered: tail.length > 0 ? [{ runId, state, events: tail }] : [], fromCache: false, events: loaded.events };
}

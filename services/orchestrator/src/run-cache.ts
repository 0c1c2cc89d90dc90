import type { RunState } from '@capstan/actors';
import type { RunId } from '@capstan/schemas';

/** A decided run: its machine state and the stream sequence that state was read at. */
export interface CachedRun {
  readonly state: RunState;
  readonly lastStreamSeq: number;
}

/**
 * An LRU of decided runs. Only a cache: a miss (or a stale entry, caught by the append's
 * optimistic lock) costs one reload and replay from the stream, never a wrong decision.
 */
export class RunCache {
  readonly #map = new Map<RunId, CachedRun>();
  constructor(readonly max: number) {}

  get(id: RunId): CachedRun | undefined {
    const v = this.#map.get(id);
    if (v) {
      this.#map.delete(id);
      this.#map.set(id, v);
    }
    return v;
  }

  set(id: RunId, v: CachedRun): void {
    if (this.max === 0) return;
    this.#map.delete(id);
    this.#map.set(id, v);
    if (this.#map.size > this.max) this.#map.delete(this.#map.keys().next().value as RunId);
  }

  delete(id: RunId): void {
    this.#map.delete(id);
  }

  /** Drops every run `pred` picks (the runs of a partition this instance gave up). */
  deleteWhere(pred: (id: RunId) => boolean): void {
    for (const id of [...this.#map.keys()]) if (pred(id)) this.#map.delete(id);
  }

  get size(): number {
    return this.#map.size;
  }
}

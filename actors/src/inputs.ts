/**
 * What a scheduled step is handed (its work item's data), read from the run's state by the
 * run core rather than by the host: the host never looks inside a machine's context.
 */
import type { JsonValue } from '@capstan/schemas';
import { LIMITS } from '@capstan/schemas';
import type { RunState } from './engine/state.js';
import { getInst, type RunContext as RunContextV2 } from './engine/v2/context.js';

export interface StepInputs {
  readonly input: { [k: string]: JsonValue };
  /** The last result recorded before the step (engine 1's chaining). */
  readonly previous?: JsonValue;
  /** Engine 2: every earlier result by name; `omitted` names what did not fit. */
  readonly results?: { [k: string]: JsonValue };
  readonly omitted?: string[];
  readonly item?: JsonValue;
  readonly index?: number;
  readonly iteration?: number;
}

/**
 * The data a step instance runs with. `sizeOf` measures an encoded value: results are handed
 * over newest first until {@link LIMITS.resultsInWorkBytes}, and the rest are named in `omitted`.
 */
export function stepInputsOf(state: RunState, step: string, sizeOf: (v: JsonValue) => number): StepInputs {
  const c = state.snapshot.context as {
    input?: { [k: string]: JsonValue };
    last?: JsonValue;
    results?: Record<string, JsonValue>;
    inst?: Record<string, { item?: JsonValue; index?: number; iteration?: number }>;
  };
  const input = c.input ?? {};
  const previous = c.last !== undefined && c.last !== null ? { previous: c.last } : {};
  if (state.engine === 1 || !c.inst) return { input, ...previous };
  // Engine 2's context (checked above: it has instances).
  const i = getInst(state.snapshot.context as RunContextV2, step);
  const results: { [k: string]: JsonValue } = {};
  const omitted: string[] = [];
  let budget = LIMITS.resultsInWorkBytes;
  for (const [name, value] of Object.entries(c.results ?? {}).reverse()) {
    const size = sizeOf(value) + name.length;
    if (size <= budget) {
      results[name] = value;
      budget -= size;
    } else omitted.push(name);
  }
  return {
    input,
    ...previous,
    results,
    ...(omitted.length > 0 ? { omitted } : {}),
    ...(i?.item !== undefined ? { item: i.item } : {}),
    ...(i?.index !== undefined ? { index: i.index } : {}),
    ...(i?.iteration !== undefined ? { iteration: i.iteration } : {}),
  };
}

/**
 * A workflow version's fingerprint: SHA-256 over a canonical form of its definition. The
 * orchestrator records it on `run.started`; an export carries it; an offline replay compares
 * it with the definition it has, so "this version was edited after the run" is said plainly
 * beside the divergence it causes.
 *
 * A workflow defined by steps is fingerprinted by its normalised step tree (what the compiler
 * turns into the machine; conditions and item functions by their source), so a rebuild of the same definition keeps its fingerprint. A
 * hand-written machine is fingerprinted by its config, functions included by their source.
 */
import { createHash } from 'node:crypto';

/** The parts of a `WorkflowDefinition` (`@capstan/actors`) a fingerprint covers. */
export interface FingerprintSource {
  readonly id: string;
  readonly version: number;
  readonly searchKeys: readonly string[];
  readonly steps?: readonly unknown[];
  /** The step tree (engine 2): branches, fan-outs, loops and their functions. */
  readonly nodes?: readonly unknown[];
  readonly machine: { readonly config: unknown; readonly implementations?: unknown };
}

/** JSON with sorted keys, functions as their source, cycles cut. */
function canonical(v: unknown, seen = new Set<unknown>()): string {
  if (typeof v === 'function') return JSON.stringify(`fn:${v.toString()}`);
  if (v === undefined) return 'null';
  if (v === null || typeof v !== 'object') return JSON.stringify(v) ?? 'null';
  if (seen.has(v)) return '"[cycle]"';
  seen.add(v);
  try {
    if (Array.isArray(v)) return `[${v.map((x) => canonical(x, seen)).join(',')}]`;
    const keys = Object.keys(v).sort();
    return `{${keys.map((k) => `${JSON.stringify(k)}:${canonical((v as Record<string, unknown>)[k], seen)}`).join(',')}}`;
  } finally {
    seen.delete(v);
  }
}

const cache = new WeakMap<object, string>();

/** 64 hex characters; the same definition always gives the same fingerprint. */
export function workflowFingerprint(def: FingerprintSource): string {
  const hit = cache.get(def);
  if (hit) return hit;
  // The tree when there is one: a plain sequence's `steps` would miss a branch's condition.
  const body = def.nodes
    ? { kind: 'nodes', id: def.id, version: def.version, searchKeys: def.searchKeys, nodes: def.nodes }
    : def.steps
      ? { kind: 'steps', id: def.id, version: def.version, searchKeys: def.searchKeys, steps: def.steps }
      : { kind: 'machine', id: def.id, version: def.version, searchKeys: def.searchKeys, config: def.machine.config, implementations: def.machine.implementations ?? null };
  const fp = createHash('sha256')
    .update(`capstan/workflow/v1\n${canonical(body)}`)
    .digest('hex');
  cache.set(def, fp);
  return fp;
}

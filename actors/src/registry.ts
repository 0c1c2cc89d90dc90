/**
 * The workflow version registry. Every version ever deployed stays registered, because a
 * run replays through the exact version that recorded it; new runs get the latest.
 */
import { InvalidWorkflowError, UnknownWorkflowError } from '@capstan/schemas';
import type { WorkflowDefinition } from './workflow.js';

export interface Registry {
  /** @throws UnknownWorkflowError */
  get(id: string, version: number): WorkflowDefinition;
  /** @throws UnknownWorkflowError */
  latest(id: string): WorkflowDefinition;
  has(id: string): boolean;
  list(): readonly WorkflowDefinition[];
}

/** @throws InvalidWorkflowError when two definitions claim the same id and version */
export function createRegistry(definitions: Iterable<WorkflowDefinition>): Registry {
  const byId = new Map<string, Map<number, WorkflowDefinition>>();
  for (const def of definitions) {
    const versions = byId.get(def.id) ?? new Map<number, WorkflowDefinition>();
    if (versions.has(def.version)) throw new InvalidWorkflowError(def.id, `version ${def.version} is defined twice`);
    versions.set(def.version, def);
    byId.set(def.id, versions);
  }
  return {
    get(id, version) {
      const def = byId.get(id)?.get(version);
      if (!def) throw byId.has(id) ? new UnknownWorkflowError(id, version) : new UnknownWorkflowError(id);
      return def;
    },
    latest(id) {
      const versions = byId.get(id);
      if (!versions) throw new UnknownWorkflowError(id);
      return versions.get(Math.max(...versions.keys())) as WorkflowDefinition;
    },
    has: (id) => byId.has(id),
    list: () => [...byId.values()].flatMap((v) => [...v.values()]),
  };
}

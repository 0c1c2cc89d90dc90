/** What a sandboxed step declares (kept apart from `sandbox.ts` so events can import it). */
import type { RunId } from './ids.js';
import type { Infer } from './validate.js';
import { arr, bool, obj, optional, str } from './validate.js';

/** Environment variable names a step may receive (secrets by name, plain env). */
export const ENV_NAME_PATTERN = /^[A-Z_][A-Z0-9_]{0,63}$/;
/** `host:port` an egress grant allows; hosts are names or IPv4 literals. */
export const EGRESS_PATTERN = /^[a-z0-9]([a-z0-9.-]{0,251}[a-z0-9])?:[0-9]{1,5}$/;

const envName = str({ min: 1, max: 64, pattern: ENV_NAME_PATTERN });

/**
 * The sandbox part of a step. `command` runs in `/workspace` (which holds `input.json`: the
 * run's input and the previous step's result); mode 3 names an `agent` adapter instead and
 * gives it a `task`. `secrets` are key names a lease injects (modes 2 and 3); `egress` lists
 * the only `host:port`s the step may reach (modes 2 and 3; mode 1 has no network at all).
 */
export const sandboxSpecSchema = obj('sandbox spec', {
  command: optional(arr(str({ min: 1, max: 8192 }), { max: 64 })),
  agent: optional(str({ min: 1, max: 64, pattern: /^[a-z0-9][a-z0-9-]{0,63}$/ })),
  task: optional(str({ min: 1, max: 16_384 })),
  image: optional(str({ min: 1, max: 256 })),
  env: optional(arr(obj('env var', { name: envName, value: str({ max: 4096 }) }), { max: 64 })),
  secrets: optional(arr(envName, { max: 32 })),
  egress: optional(arr(str({ min: 3, max: 262, pattern: EGRESS_PATTERN }), { max: 16 })),
  /** Mode 3b: tools may ask for credentials at run time; the tenant's policy decides each. */
  jit: optional(bool()),
});
export type SandboxSpec = Infer<typeof sandboxSpecSchema>;

/**
 * The deterministic container name of one attempt: a retried create or claim for the same
 * attempt collides on it instead of starting a second container. Step names are tokens
 * (`[a-z0-9_-]`), valid in container names as they are.
 */
export function sandboxName(runId: RunId | string, step: string, attempt: number): string {
  return `cap-${runId}-${step}-${attempt}`;
}

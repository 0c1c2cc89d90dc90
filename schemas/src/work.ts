/** Work items: what the control plane hands the data plane on `cap.<t>.work.<pool>`. */
import type { RunId } from './ids.js';
import { RUN_ID_PATTERN } from './ids.js';
import { Mode } from './events.js';
import { sandboxSpecSchema } from './sandbox-spec.js';
import type { Infer, Schema } from './validate.js';
import { arr, int, json, jsonObject, literal, obj, optional, str } from './validate.js';

const workItemSchema = obj('work item', {
  runId: str({ pattern: RUN_ID_PATTERN }) as unknown as Schema<RunId>,
  workflow: str({ min: 1, max: 128 }),
  version: int({ min: 1 }),
  step: str({ min: 1, max: 64 }),
  attempt: int({ min: 1 }),
  handler: str({ min: 1, max: 128 }),
  mode: literal(Mode.Inline, Mode.Sandboxed, Mode.SandboxedWithLease, Mode.Agent),
  timeoutMs: int({ min: 1 }),
  input: jsonObject(),
  /** Result of the step before this one, if any: steps chain through small metadata. */
  previous: optional(json()),
  /** Modes 1–3: what runs in the sandbox (see `SandboxSpec`). */
  sandbox: optional(sandboxSpecSchema),
  /** Engine 2: every earlier step's result by name (the latest, for a step that ran more than once). */
  results: optional(jsonObject()),
  /** Names of earlier results left out of `results` because they would not fit. */
  omitted: optional(arr(str({ min: 1, max: 64 }), { max: 10_000 })),
  /** A fan-out item: the list element this step runs for, and its place (1-based). */
  item: optional(json()),
  index: optional(int({ min: 1 })),
  /** Inside a bounded loop: the iteration (1-based). */
  iteration: optional(int({ min: 1 })),
});

export type WorkItem = Infer<typeof workItemSchema>;

/** @throws SchemaError */
export function parseWorkItem(value: unknown): WorkItem {
  return workItemSchema.parse(value);
}

const heartbeatSchema = obj('worker heartbeat', {
  worker: str({ min: 1, max: 128 }),
  pools: arr(str({ min: 1, max: 64 }), { max: 64 }),
  handlers: arr(str({ min: 1, max: 128 }), { max: 10_000 }),
  running: int({ min: 0 }),
  at: int({ min: 0 }),
});

/** What a worker announces every few seconds on `cap.<t>.svc.workers.heartbeat` (core NATS). */
export type WorkerHeartbeat = Infer<typeof heartbeatSchema>;

/** @throws SchemaError */
export function parseWorkerHeartbeat(value: unknown): WorkerHeartbeat {
  return heartbeatSchema.parse(value);
}

const stepCancelSchema = obj('step cancel', {
  runId: str({ pattern: RUN_ID_PATTERN }) as unknown as Schema<RunId>,
  step: str({ min: 1, max: 64 }),
  attempt: int({ min: 1 }),
});

/** A step attempt to stop: what the orchestrator tells workers and a worker tells the sandbox service. */
export type StepCancel = Infer<typeof stepCancelSchema>;

/** @throws SchemaError */
export function parseStepCancel(value: unknown): StepCancel {
  return stepCancelSchema.parse(value);
}

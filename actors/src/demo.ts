/** The demo workflows that `capstan dev` runs. Their handlers live in the worker. */
import { defineWorkflow } from './workflow.js';

/** Three mode-0 steps in sequence. */
export const demoPipeline = defineWorkflow({
  id: 'demo.pipeline',
  version: 1,
  searchKeys: ['customer'],
  steps: [
    { name: 'extract', timeoutMs: 30_000 },
    { name: 'transform', timeoutMs: 30_000 },
    { name: 'load', timeoutMs: 30_000 },
  ],
});

/** A step that fails twice and then succeeds, retried with backoff through durable timers. */
export const demoFlaky = defineWorkflow({
  id: 'demo.flaky',
  version: 1,
  steps: [
    { name: 'prepare', timeoutMs: 30_000 },
    { name: 'call', timeoutMs: 30_000, retry: { maxAttempts: 5, initialIntervalMs: 200, backoffCoefficient: 2, maxIntervalMs: 2000 } },
  ],
});

/** Waits for an `approve` signal between two steps. */
export const demoSignal = defineWorkflow({
  id: 'demo.signal',
  version: 1,
  steps: [{ name: 'draft' }, { name: 'review', signal: 'approve' }, { name: 'publish' }],
});

export const demoWorkflows = [demoPipeline, demoFlaky, demoSignal] as const;

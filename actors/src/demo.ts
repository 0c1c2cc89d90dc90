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

// The "untrusted" script of demo.sandboxed: it reads its input and writes a report artifact.
const UNTRUSTED_SCRIPT = `
const fs = require('node:fs');
const { input, previous } = JSON.parse(fs.readFileSync('input.json', 'utf8'));
const words = String(input.text ?? 'durable runs need sandboxes').split(/\\s+/);
fs.writeFileSync('out/report.json', JSON.stringify({ words: words.length, longest: words.sort((a, b) => b.length - a.length)[0], previous }));
console.log('counted', words.length, 'words');
`;

/**
 * One step per isolation level: mode 0 in the worker, mode 1 an untrusted script with no
 * network and no credentials, mode 2 a step that receives `DEMO_TOKEN` from a lease (it
 * writes only a digest of it).
 */
export const demoSandboxed = defineWorkflow({
  id: 'demo.sandboxed',
  version: 1,
  steps: [
    { name: 'prepare', timeoutMs: 30_000 },
    { name: 'analyse', mode: 1, timeoutMs: 60_000, sandbox: { command: ['node', '-e', UNTRUSTED_SCRIPT] } },
    {
      name: 'publish',
      mode: 2,
      timeoutMs: 60_000,
      sandbox: {
        command: ['sh', '-c', 'printf %s "$DEMO_TOKEN" | sha256sum | cut -c1-12 > out/token-digest.txt && echo published with a token of ${#DEMO_TOKEN} characters'],
        secrets: ['DEMO_TOKEN'],
      },
    },
  ],
});

/**
 * The dev policy wants a person before this run's second step may lease `DEMO_TOKEN`: the
 * run waits in `waiting` until someone approves (`capstan approve`), then continues.
 */
export const demoApproval = defineWorkflow({
  id: 'demo.approval',
  version: 1,
  steps: [
    { name: 'draft', timeoutMs: 30_000 },
    {
      name: 'deliver',
      mode: 2,
      timeoutMs: 60_000,
      sandbox: { command: ['sh', '-c', 'printf %s "$DEMO_TOKEN" | sha256sum | cut -c1-12 > out/delivered.txt && echo delivered'], secrets: ['DEMO_TOKEN'] },
    },
  ],
});

/**
 * Mode 3b: the step starts with no credential and asks for `DEMO_API_KEY` while it runs
 * (through the sandbox's credential channel); the dev policy allows it at once, and the
 * request, the decision and the lease are all on the run's record.
 */
export const demoJit = defineWorkflow({
  id: 'demo.jit',
  version: 1,
  steps: [
    {
      name: 'call-api',
      mode: 3,
      timeoutMs: 60_000,
      sandbox: {
        jit: true,
        command: [
          'sh',
          '-c',
          'KEY=$(node /opt/capstan/runner/credential.js DEMO_API_KEY "call the demo API") && printf %s "$KEY" | sha256sum | cut -c1-12 > out/api-key-digest.txt && echo got a credential of ${#KEY} characters',
        ],
      },
    },
  ],
});

/**
 * An agent-style run: triage an inbox, page someone if it is urgent (a branch), research each
 * item in parallel (a fan-out, two at a time), let the sources settle (a durable sleep),
 * draft until the critique is happy (a bounded loop), wait a little for a person's feedback
 * (a wait with a timeout that goes on without it), then summarise everything by name.
 */
export const demoAgent = defineWorkflow({
  id: 'demo.agent',
  version: 1,
  steps: [
    { name: 'triage', timeoutMs: 30_000 },
    { name: 'route', if: ({ results }) => (results['triage'] as { urgent?: boolean } | undefined)?.urgent === true, then: [{ name: 'page' }], else: [{ name: 'queue' }] },
    { name: 'research', forEach: ({ results }) => (results['triage'] as { items?: string[] } | undefined)?.items ?? [], concurrency: 2, run: { timeoutMs: 30_000 } },
    { name: 'settle', sleep: { ms: 500 } },
    {
      name: 'write',
      loop: [{ name: 'draft' }, { name: 'critique' }],
      until: ({ results }) => (results['critique'] as { ok?: boolean } | undefined)?.ok === true,
      maxIterations: 3,
    },
    { name: 'feedback', signal: 'feedback', timeoutMs: 1500, onTimeout: 'continue' },
    { name: 'summarise', timeoutMs: 30_000 },
  ],
});

/** A child workflow of the agent: it writes the brief for the research it is given. */
export const demoBrief = defineWorkflow({ id: 'demo.brief', version: 1, steps: [{ name: 'compose', timeoutMs: 30_000 }] });

/**
 * The agent, version 2: as version 1, and once the draft is done it hands the research to a
 * child workflow (`demo.brief`) that writes the brief; the summary carries the child's result.
 * Version 1 stays: its runs replay through it.
 */
export const demoAgentV2 = defineWorkflow({
  id: 'demo.agent',
  version: 2,
  steps: [
    { name: 'triage', timeoutMs: 30_000 },
    { name: 'route', if: ({ results }) => (results['triage'] as { urgent?: boolean } | undefined)?.urgent === true, then: [{ name: 'page' }], else: [{ name: 'queue' }] },
    { name: 'research', forEach: ({ results }) => (results['triage'] as { items?: string[] } | undefined)?.items ?? [], concurrency: 2, run: { timeoutMs: 30_000 } },
    { name: 'settle', sleep: { ms: 500 } },
    {
      name: 'write',
      loop: [{ name: 'draft' }, { name: 'critique' }],
      until: ({ results }) => (results['critique'] as { ok?: boolean } | undefined)?.ok === true,
      maxIterations: 3,
    },
    { name: 'brief', child: 'demo.brief', input: ({ results }) => ({ research: results['research'] ?? [] }) },
    { name: 'feedback', signal: 'feedback', timeoutMs: 1500, onTimeout: 'continue' },
    { name: 'summarise', timeoutMs: 30_000 },
  ],
});

export const demoWorkflows = [demoPipeline, demoFlaky, demoSignal, demoSandboxed, demoApproval, demoJit, demoAgent, demoBrief, demoAgentV2] as const;

/**
 * @capstan/actors — workflows as pure XState v5 machines.
 *
 * Deterministic by construction: this package imports only `xstate` and
 * `@capstan/schemas`, and never reads a clock or a random source (enforced by lint).
 * The orchestrator feeds it recorded facts and records what it decides.
 */
export { defineWorkflow, searchFieldsOf, backoffDelay, timerId, isPolicyGated, policyQueriesOf, DEFAULT_RETRY, DEFAULT_TIMEOUT_MS, DEFAULT_POOL, DEFAULT_APPROVAL_TTL_MS, POLICY_REASK_MS } from './workflow.js';
export type {
  WorkflowSpec,
  WorkflowDefinition,
  StepDefinition,
  TaskStep,
  SignalStep,
  NormalisedStep,
  RetryPolicy,
  RunContext,
} from './workflow.js';
export { createRegistry } from './registry.js';
export type { Registry } from './registry.js';
export { startRun, decide, foldRun, diffDecisions, runStatus, isTerminal, stateName } from './run.js';
export { RunStatus } from '@capstan/schemas';
export type { RunState, Decision, Fold, TimelineEntry } from './run.js';
export { demoPipeline, demoFlaky, demoSignal, demoSandboxed, demoApproval, demoJit, demoWorkflows } from './demo.js';
export { statusFromEvents, statusAfter } from './status.js';

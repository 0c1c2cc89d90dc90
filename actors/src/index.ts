/**
 * @capstan/actors — workflows as pure XState v5 machines.
 *
 * Deterministic by construction: this package imports only `xstate` and
 * `@capstan/schemas`, and never reads a clock or a random source (enforced by lint).
 * The orchestrator feeds it recorded facts and records what it decides.
 */
export { defineWorkflow, inputsRefusedByNewVersion, searchFieldsOf, CURRENT_ENGINE, DEFAULT_RETRY, DEFAULT_TIMEOUT_MS, DEFAULT_POOL, MAX_FANOUT_ITEMS } from './workflow.js';
export type {
  WorkflowSpec,
  WorkflowDefinition,
  StepDefinition,
  TaskStep,
  SignalStep,
  SleepStep,
  ParallelStep,
  FanOutStep,
  BranchStep,
  LoopStep,
  ChildStep,
  ContinueStep,
  PatchStep,
  RunData,
  NormalisedStep,
  NNode,
  RetryPolicy,
} from './workflow.js';
export { backoffDelay, timerId, isPolicyGated, policyQueriesOf, DEFAULT_APPROVAL_TTL_MS, POLICY_REASK_MS } from './engine/v1/compile.js';
export type { RunContext } from './engine/v1/compile.js';
export { machineHelpers } from './engine/v2/helpers.js';
export { childRunIdOf, continuedRunIdOf, MARKED_IDS_SINCE_ENGINE } from './engine/v2/ids.js';
export type { MachineHelpers } from './engine/v2/helpers.js';
export { bindHandlers, requiredHandlers } from './handlers.js';
export type { TaskNames } from './handlers.js';
export { createRegistry } from './registry.js';
export type { Registry } from './registry.js';
export { startRun, decide, foldRun, diffDecisions, runStatus, isTerminal, stateName, engineOf } from './run.js';
export { stepInputsOf } from './inputs.js';
export type { StepInputs } from './inputs.js';
export { RunStatus } from '@capstan/schemas';
export type { RunState, Decision, Fold, TimelineEntry } from './run.js';
export { demoPipeline, demoFlaky, demoSignal, demoSandboxed, demoApproval, demoJit, demoAgent, demoAgentV2, demoBrief, demoWorkflows } from './demo.js';
export { statusFromEvents, progressAfter, NO_PROGRESS } from './status.js';
export type { RunProgress } from './status.js';
export { datasyncPipeline, builtinWorkflows } from './builtin.js';

/**
 * @capstan/orchestrator — hosts run actors for the control plane. It records and
 * dispatches; it never executes a step and never sees a secret value.
 */
export { loadConfig } from './config.js';
export type { Config } from './config.js';
export { createOrchestrator } from './app.js';
export type { OrchestratorApp } from './app.js';
export type { TenantHostStats } from './run-host.js';
export { Failpoints } from './run-host.js';
export { loadWorkflows } from './workflows.js';
export { catalogOf, inputSchemaOf } from './catalog.js';
export { createScheduler, RECONCILE_MS } from './scheduler.js';
export { checkCredentialHolder, checkDecider, deciderOf } from './host/authority.js';
export type { ProvenActor } from './host/authority.js';
export type { Scheduler, SchedulerStats } from './scheduler.js';

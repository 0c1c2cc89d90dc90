/**
 * @capstan/worker — the data plane's step runner: pulls work by capability label (pool),
 * runs mode-0 handlers inline, keeps long steps claimed, reports results as commands.
 */
export { loadConfig } from './config.js';
export type { Config } from './config.js';
export { createWorker } from './app.js';
export type { WorkerApp } from './app.js';
export { demoHandlers, loadHandlers, StepError } from './handlers.js';
export type { StepHandler, StepContext, Handlers } from './handlers.js';
export { externalWriteKey, bindExternalWrite, auditNotConfigured, EXTERNAL_WRITE_INTENT } from './external-write.js';
export type { ExternalWrite, ExternalWriteScope } from './external-write.js';
export { datasyncHandlers } from './datasync.js';
export type { DatasyncHandlerOptions } from './datasync.js';

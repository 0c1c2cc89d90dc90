/**
 * Workflows every Capstan installation knows, whatever workflows module it is given: their
 * handlers are built into the worker. Versions are immutable like any workflow's; a change
 * of behaviour is a new version next to the old one.
 */
import { PIPELINE_STEPS, PIPELINE_WORKFLOW, pipelineHandler } from '@capstan/schemas';
import { defineWorkflow, type WorkflowDefinition } from './workflow.js';

/**
 * A data-sync pipeline run: Retrieve → Refresh → Build model → Resolve associations → Load,
 * over the identifiers in its input (`{ connection, model, destination }`), nothing else.
 * Each step runs in the tenant's data plane and returns metadata only. Steps are long (a
 * table of millions of rows) and retried with backoff: a retried step finds its own work
 * already done, or does it (the Load writes nothing twice).
 */
export const datasyncPipeline = defineWorkflow({
  id: PIPELINE_WORKFLOW,
  version: 1,
  searchKeys: ['connection', 'model', 'destination'],
  steps: PIPELINE_STEPS.map((name) => ({
    name,
    handler: pipelineHandler(name),
    timeoutMs: 60 * 60_000,
    retry: { maxAttempts: 5, initialIntervalMs: 2000, backoffCoefficient: 2, maxIntervalMs: 60_000 },
  })),
});

export const builtinWorkflows: readonly WorkflowDefinition[] = [datasyncPipeline];

import { pathToFileURL } from 'node:url';
import { resolve } from 'node:path';
import { builtinWorkflows, createRegistry, demoWorkflows, type Registry, type WorkflowDefinition } from '@capstan/actors';
import { ConfigError, InvalidWorkflowError } from '@capstan/schemas';

/** Why an orchestrator without `CAPSTAN_WORKFLOWS` does not start. */
export const WORKFLOWS_REQUIRED = 'CAPSTAN_WORKFLOWS is required: the path of the module that exports your workflows (only `capstan dev` runs the demo workflows without it)';

/**
 * Loads the workflow registry from a module that exports `workflows` (an array of
 * definitions, every version still in use). The built-in workflows (`datasync.pipeline`) are
 * always there. An empty path is a start-up error, so a production orchestrator never runs
 * the demo workflows by omission; only `capstan dev` (and tests) ask for them (`demo`).
 * @throws ConfigError when the path is empty and `demo` is not set
 */
export async function loadWorkflows(modulePath: string, opts: { readonly demo?: boolean } = {}): Promise<Registry> {
  if (!modulePath) {
    if (opts.demo) return createRegistry([...builtinWorkflows, ...demoWorkflows]);
    throw new ConfigError([WORKFLOWS_REQUIRED]);
  }
  let mod: { workflows?: unknown; default?: unknown };
  try {
    mod = (await import(pathToFileURL(resolve(modulePath)).href)) as typeof mod;
  } catch (e) {
    throw new InvalidWorkflowError(modulePath, `cannot load the workflows module: ${(e as Error).message.split('\n')[0] ?? ''}`);
  }
  const list = mod.workflows ?? mod.default;
  if (!Array.isArray(list)) throw new InvalidWorkflowError(modulePath, 'module must export `workflows`: an array of defineWorkflow() results');
  // A module may list the built-ins too (to replay their runs in its own tests): once is enough.
  return createRegistry([...builtinWorkflows, ...(list as WorkflowDefinition[]).filter((d) => !builtinWorkflows.includes(d))]);
}

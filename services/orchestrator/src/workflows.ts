import { pathToFileURL } from 'node:url';
import { resolve } from 'node:path';
import { builtinWorkflows, createRegistry, demoWorkflows, type Registry, type WorkflowDefinition } from '@capstan/actors';
import { InvalidWorkflowError } from '@capstan/schemas';

/**
 * Loads the workflow registry from a module that exports `workflows` (an array of
 * definitions, every version still in use). An empty path gives the demo workflows. The
 * built-in workflows (`datasync.pipeline`) are always there.
 */
export async function loadWorkflows(modulePath: string): Promise<Registry> {
  if (!modulePath) return createRegistry([...builtinWorkflows, ...demoWorkflows]);
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

import { describe, expect, it } from 'vitest';
import { loadWorkflows } from '@capstan/orchestrator';
import { loadHandlers } from '@capstan/worker';

describe('modules', () => {
  it('modules - a workflows module that cannot be loaded is a typed error naming it', async () => {
    await expect(loadWorkflows('/nonexistent/workflows.js')).rejects.toMatchObject({
      code: 'invalid_workflow',
      message: expect.stringContaining('cannot load the workflows module') as unknown,
    });
  });

  it('modules - a handlers module that cannot be loaded is a typed error naming it', async () => {
    await expect(loadHandlers('/nonexistent/handlers.js')).rejects.toMatchObject({
      code: 'unknown_handler',
      message: expect.stringContaining('cannot load the handlers module /nonexistent/handlers.js') as unknown,
    });
  });

  it('modules - no module means the built-in and demo workflows and handlers', async () => {
    expect((await loadWorkflows('')).list().map((w) => w.id)).toEqual(['datasync.pipeline', 'demo.pipeline', 'demo.flaky', 'demo.signal', 'demo.sandboxed', 'demo.approval', 'demo.jit', 'demo.agent', 'demo.agent', 'demo.brief']);
    expect(Object.keys(await loadHandlers(''))).toContain('demo.flaky.call');
  });
});

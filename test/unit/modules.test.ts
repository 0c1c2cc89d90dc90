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

  it('modules - outside capstan dev, no module is a typed start-up error, never the demo', async () => {
    await expect(loadWorkflows('')).rejects.toMatchObject({ code: 'invalid_config', message: expect.stringContaining('CAPSTAN_WORKFLOWS is required') as unknown });
    await expect(loadHandlers('')).rejects.toMatchObject({ code: 'invalid_config', message: expect.stringContaining('CAPSTAN_HANDLERS is required') as unknown });
  });

  it('modules - capstan dev asks for the built-in and demo workflows and handlers', async () => {
    expect((await loadWorkflows('', { demo: true })).list().map((w) => w.id)).toEqual([
      'datasync.pipeline',
      'demo.pipeline',
      'demo.flaky',
      'demo.signal',
      'demo.sandboxed',
      'demo.approval',
      'demo.jit',
      'demo.agent',
      'demo.agent',
      'demo.brief',
    ]);
    expect(Object.keys(await loadHandlers('', { demo: true }))).toContain('demo.flaky.call');
  });
});

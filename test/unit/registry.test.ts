import { describe, expect, it } from 'vitest';
import { createRegistry, defineWorkflow, demoWorkflows } from '@capstan/actors';
import { ErrorCode, InvalidWorkflowError, UnknownWorkflowError } from '@capstan/schemas';

const v1 = defineWorkflow({ id: 'billing.invoice', version: 1, steps: [{ name: 'fetch' }] });
const v2 = defineWorkflow({ id: 'billing.invoice', version: 2, steps: [{ name: 'fetch' }, { name: 'render' }] });
const v10 = defineWorkflow({ id: 'billing.invoice', version: 10, steps: [{ name: 'fetch' }] });
const other = defineWorkflow({ id: 'other', version: 1, steps: [{ name: 'x' }] });

function unknown(fn: () => unknown): UnknownWorkflowError {
  try {
    fn();
  } catch (e) {
    expect(e).toBeInstanceOf(UnknownWorkflowError);
    expect((e as UnknownWorkflowError).code).toBe(ErrorCode.UnknownWorkflow);
    return e as UnknownWorkflowError;
  }
  throw new Error('expected UnknownWorkflowError');
}

describe('registry - versions', () => {
  it('registry - get returns the exact version; latest the highest number, not the last registered', () => {
    const reg = createRegistry([v10, v1, other, v2]);
    expect(reg.get('billing.invoice', 1)).toBe(v1);
    expect(reg.get('billing.invoice', 2)).toBe(v2);
    expect(reg.get('billing.invoice', 10)).toBe(v10);
    expect(reg.latest('billing.invoice')).toBe(v10);
    expect(reg.latest('other')).toBe(other);
    expect(reg.has('billing.invoice')).toBe(true);
    expect(reg.has('nope')).toBe(false);
    expect(reg.list()).toHaveLength(4);
    expect(new Set(reg.list())).toEqual(new Set([v1, v2, v10, other]));
  });

  it('registry - an unknown version of a known workflow names the version', () => {
    const reg = createRegistry([v1, v2]);
    const e = unknown(() => reg.get('billing.invoice', 3));
    expect(e.workflow).toBe('billing.invoice');
    expect(e.version).toBe(3);
    expect(e.message).toContain('version 3');
  });

  it('registry - an unknown workflow is unknown for get and latest', () => {
    const reg = createRegistry([v1]);
    expect(unknown(() => reg.get('nope', 1)).version).toBeUndefined();
    expect(unknown(() => reg.latest('nope')).workflow).toBe('nope');
    // names of Object.prototype are not workflows
    unknown(() => reg.latest('constructor'));
    unknown(() => reg.get('__proto__', 1));
    expect(reg.has('toString')).toBe(false);
  });

  it('registry - a version defined twice is rejected', () => {
    const again = defineWorkflow({ id: 'billing.invoice', version: 1, steps: [{ name: 'other' }] });
    let caught: unknown;
    try {
      createRegistry([v1, v2, again]);
    } catch (e) {
      caught = e;
    }
    expect(caught).toBeInstanceOf(InvalidWorkflowError);
    expect((caught as InvalidWorkflowError).code).toBe(ErrorCode.InvalidWorkflow);
    expect((caught as InvalidWorkflowError).workflow).toBe('billing.invoice');
    // the same definition twice is still twice
    expect(() => createRegistry([v1, v1])).toThrow(InvalidWorkflowError);
  });

  it('registry - an empty registry knows nothing; the demo registry knows the demos', () => {
    const empty = createRegistry([]);
    expect(empty.list()).toEqual([]);
    unknown(() => empty.latest('demo.pipeline'));
    const demos = createRegistry(demoWorkflows);
    for (const wf of demoWorkflows) expect(demos.get(wf.id, wf.version)).toBe(wf);
    expect(demos.latest('demo.agent').version).toBe(2);
  });
});

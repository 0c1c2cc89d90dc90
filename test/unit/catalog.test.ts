/**
 * The workflow catalog the console's Run now is built from: versions, steps, and the input's
 * JSON Schema when a definition carries one (a plain object, or a Standard Schema that can
 * describe itself), nothing when it does not or cannot.
 */
import { describe, expect, it } from 'vitest';
import { createRegistry, defineWorkflow } from '@capstan/actors';
import { catalogOf, inputSchemaOf } from '@capstan/orchestrator';

const steps = [{ name: 'a' }, { name: 'b' }];
const v1 = defineWorkflow({ id: 'shop.order', version: 1, steps });
const v2 = defineWorkflow({ id: 'shop.order', version: 2, steps, searchKeys: ['customer'] });
const schema = { type: 'object', properties: { customer: { type: 'string' } }, required: ['customer'] };

describe('workflow catalog', () => {
  it('lists each workflow once, its latest version first-class, every version kept', () => {
    const c = catalogOf(createRegistry([v1, v2, defineWorkflow({ id: 'a.first', version: 3, steps })]));
    expect(c).toEqual([
      { id: 'a.first', version: 3, versions: [3], steps: ['a', 'b'], searchKeys: [] },
      { id: 'shop.order', version: 2, versions: [1, 2], steps: ['a', 'b'], searchKeys: ['customer'] },
    ]);
  });

  it('finds an input JSON Schema in a plain inputSchema or a self-describing Standard Schema', () => {
    expect(inputSchemaOf({ ...v1, inputSchema: schema } as unknown as typeof v1)).toEqual(schema);
    const standard = {
      '~standard': { version: 1, vendor: 'x', validate: () => ({ value: {} }), jsonSchema: { input: ({ target }: { target: string }) => ({ ...schema, $schema: target }) } },
    };
    expect(inputSchemaOf({ ...v1, input: standard } as unknown as typeof v1)).toEqual({ ...schema, $schema: 'draft-2020-12' });
    const throwing = {
      '~standard': {
        jsonSchema: {
          input: () => {
            throw new Error('cannot');
          },
        },
      },
    };
    expect(inputSchemaOf({ ...v1, input: throwing } as unknown as typeof v1)).toBeUndefined();
    expect(inputSchemaOf({ ...v1, input: { '~standard': { version: 1 } } } as unknown as typeof v1)).toBeUndefined();
    expect(inputSchemaOf(v1)).toBeUndefined();
  });
});

/**
 * Handlers bound to a workflow's steps by name, checked by the type checker: the handler map
 * must have exactly one function per mode-0 task (and fan-out) of the definition, so a
 * misspelled or missing handler is a compile error, not a run-time `unknown_handler`. A
 * step's result schema, if it has one, is checked on every result the handler returns.
 *
 * @example
 * export const etl = defineWorkflow({ id: 'etl', version: 1, steps: [{ name: 'extract' }, { name: 'load' }] });
 * export const handlers = bindHandlers(etl, {
 *   extract: async (ctx: StepContext) => ({ rows: 42 }),
 *   load: async (ctx: StepContext) => ({ loaded: ctx.results?.['extract'] }),
 * });
 */
import { SchemaError, validateStandard, CapstanError, ErrorCode } from '@capstan/schemas';
import type { WorkflowDefinition } from './workflow.js';

/** The names of a step list's tasks that run in the worker under their default handler name. */
type NamesOf<N> = N extends { readonly name: infer K extends string }
  ? N extends { readonly parallel: infer B extends readonly (readonly unknown[])[] }
    ? NamesOf<B[number][number]>
    : N extends { readonly then: infer T extends readonly unknown[] }
      ? NamesOf<T[number]> | (N extends { readonly else: infer E extends readonly unknown[] } ? NamesOf<E[number]> : never)
      : N extends { readonly loop: infer L extends readonly unknown[] }
        ? NamesOf<L[number]>
        : N extends { readonly signal: string } | { readonly sleep: unknown }
          ? never
          : N extends { readonly mode: 1 | 2 | 3 } | { readonly run: { readonly mode: 1 | 2 | 3 } }
            ? never
            : N extends { readonly handler: string } | { readonly run: { readonly handler: string } }
              ? never
              : K
  : never;

/** The task names a definition's handlers are bound to. */
export type TaskNames<D> = D extends { readonly spec?: infer S } ? (S extends { readonly steps: readonly (infer N)[] } ? NamesOf<N> : never) : never;

/**
 * The handler map of a workflow, keyed by the handler names its steps schedule
 * (`<workflowId>.<step>`), each checking its result against the step's result schema.
 */
export function bindHandlers<D extends WorkflowDefinition, H extends (ctx: never) => unknown>(def: D, handlers: { readonly [K in TaskNames<D>]: H }): Record<string, H> {
  const out: Record<string, H> = {};
  for (const [name, h] of Object.entries(handlers) as [string, H][]) {
    const schema = def.resultSchemas.get(name);
    out[`${def.id}.${name}`] = schema
      ? (((ctx: never) =>
          Promise.resolve(h(ctx)).then(async (result) => {
            try {
              return await validateStandard(schema, result, `result of ${def.id}.${name}`);
            } catch (e) {
              // A result its own schema refuses is the handler's bug: retrying will not fix it.
              throw CapstanError.is(e, ErrorCode.SchemaViolation) ? e : new SchemaError(`result of ${def.id}.${name}`, '', String(e));
            }
          })) as unknown as H)
      : h;
  }
  return out;
}

/**
 * Handler names a worker must have for these workflows: every mode-0 task's (and fan-out's).
 * A worker checks them at start-up, so a missing handler stops it there rather than failing runs.
 */
export function requiredHandlers(defs: Iterable<WorkflowDefinition>): string[] {
  return [...new Set([...defs].flatMap((d) => d.handlers))];
}

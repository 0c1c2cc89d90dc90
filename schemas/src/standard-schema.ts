/**
 * Standard Schema (https://standardschema.dev), the interface zod, valibot, ArkType and
 * others implement: workflow inputs and step results may carry one. The interface is copied
 * here, as its authors intend, rather than taken as a dependency.
 */
import { SchemaError } from './errors.js';

export interface StandardSchemaV1<Input = unknown, Output = Input> {
  readonly '~standard': StandardSchemaV1.Props<Input, Output>;
}

// The spec's own shape: a namespace of types beside the interface.
// eslint-disable-next-line @typescript-eslint/no-namespace
export declare namespace StandardSchemaV1 {
  export interface Props<Input = unknown, Output = Input> {
    readonly version: 1;
    readonly vendor: string;
    readonly validate: (value: unknown) => Result<Output> | Promise<Result<Output>>;
    readonly types?: Types<Input, Output> | undefined;
  }
  export type Result<Output> = SuccessResult<Output> | FailureResult;
  export interface SuccessResult<Output> {
    readonly value: Output;
    readonly issues?: undefined;
  }
  export interface FailureResult {
    readonly issues: ReadonlyArray<Issue>;
  }
  export interface Issue {
    readonly message: string;
    readonly path?: ReadonlyArray<PropertyKey | PathSegment> | undefined;
  }
  export interface PathSegment {
    readonly key: PropertyKey;
  }
  export interface Types<Input = unknown, Output = Input> {
    readonly input: Input;
    readonly output: Output;
  }
  export type InferInput<Schema extends StandardSchemaV1> = NonNullable<Schema['~standard']['types']>['input'];
  export type InferOutput<Schema extends StandardSchemaV1> = NonNullable<Schema['~standard']['types']>['output'];
}

export function isStandardSchema(v: unknown): v is StandardSchemaV1 {
  if ((typeof v !== 'object' && typeof v !== 'function') || v === null) return false;
  const props = (v as { '~standard'?: { version?: unknown; validate?: unknown } })['~standard'];
  return typeof props === 'object' && props !== null && props.version === 1 && typeof props.validate === 'function';
}

/** `a.b[2].c` for an issue's path; `(root)` for none. */
export function issuePath(issue: StandardSchemaV1.Issue): string {
  let out = '';
  for (const seg of issue.path ?? []) {
    const key = typeof seg === 'object' ? seg.key : seg;
    out += typeof key === 'number' ? `[${key}]` : `${out ? '.' : ''}${String(key)}`;
  }
  return out || '(root)';
}

/**
 * Validates a value against a Standard Schema; the issues become one {@link SchemaError}
 * (`schema_violation`) naming each field and what is wrong with it.
 */
export async function validateStandard<S extends StandardSchemaV1>(schema: S, value: unknown, what: string): Promise<StandardSchemaV1.InferOutput<S>> {
  const result = await schema['~standard'].validate(value);
  if (result.issues) {
    const problems = result.issues.slice(0, 8).map((i) => `${issuePath(i)}: ${i.message}`);
    const first = result.issues[0];
    throw new SchemaError(what, first ? issuePath(first) : '', problems.join('; ').slice(0, 900));
  }
  return result.value as StandardSchemaV1.InferOutput<S>;
}

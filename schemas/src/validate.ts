/**
 * A small runtime schema kit. Every message that crosses a boundary is parsed with one of
 * these before anything trusts it. Failures throw {@link SchemaError} naming the path.
 */
import { SchemaError } from './errors.js';

export interface Schema<T> {
  readonly name: string;
  /** @throws SchemaError */
  parse(value: unknown, path?: string): T;
}

export type Infer<S> = S extends Schema<infer T> ? T : never;

function fail(name: string, path: string, problem: string): never {
  throw new SchemaError(name, path, problem);
}

export function str(opts: { min?: number; max?: number; pattern?: RegExp } = {}): Schema<string> {
  const { min = 0, max = 4096, pattern } = opts;
  return {
    name: 'string',
    parse(v, path = '') {
      if (typeof v !== 'string') fail('string', path, `must be a string, got ${typeOf(v)}`);
      if (v.length < min) fail('string', path, `must have at least ${min} characters`);
      if (v.length > max) fail('string', path, `must have at most ${max} characters`);
      if (pattern && !pattern.test(v)) fail('string', path, `must match ${pattern.source}`);
      return v;
    },
  };
}

export function int(opts: { min?: number; max?: number } = {}): Schema<number> {
  const { min = Number.MIN_SAFE_INTEGER, max = Number.MAX_SAFE_INTEGER } = opts;
  return {
    name: 'integer',
    parse(v, path = '') {
      if (typeof v !== 'number' || !Number.isSafeInteger(v)) fail('integer', path, `must be an integer, got ${typeOf(v)}`);
      if (v < min || v > max) fail('integer', path, `must be between ${min} and ${max}`);
      return v;
    },
  };
}

export function num(opts: { min?: number; max?: number } = {}): Schema<number> {
  const { min = -Infinity, max = Infinity } = opts;
  return {
    name: 'number',
    parse(v, path = '') {
      if (typeof v !== 'number' || !Number.isFinite(v)) fail('number', path, `must be a finite number, got ${typeOf(v)}`);
      if (v < min || v > max) fail('number', path, `must be between ${min} and ${max}`);
      return v;
    },
  };
}

export function bool(): Schema<boolean> {
  return {
    name: 'boolean',
    parse(v, path = '') {
      if (typeof v !== 'boolean') fail('boolean', path, `must be a boolean, got ${typeOf(v)}`);
      return v;
    },
  };
}

export function literal<const L extends readonly (string | number)[]>(...values: L): Schema<L[number]> {
  return {
    name: values.join('|'),
    parse(v, path = '') {
      if (!values.includes(v as L[number])) fail('enum', path, `must be one of ${values.map((x) => JSON.stringify(x)).join(', ')}`);
      return v as L[number];
    },
  };
}

export function optional<T>(s: Schema<T>): Schema<T | undefined> & { readonly optional: true } {
  return {
    name: `${s.name}?`,
    optional: true,
    parse(v, path = '') {
      return v === undefined || v === null ? undefined : s.parse(v, path);
    },
  };
}

export function arr<T>(s: Schema<T>, opts: { max?: number } = {}): Schema<T[]> {
  const { max = 1000 } = opts;
  return {
    name: `${s.name}[]`,
    parse(v, path = '') {
      if (!Array.isArray(v)) fail('array', path, `must be an array, got ${typeOf(v)}`);
      if (v.length > max) fail('array', path, `must have at most ${max} items`);
      return v.map((x, i) => s.parse(x, `${path}[${i}]`));
    },
  };
}

type Shape = Record<string, Schema<unknown>>;
type OptionalKeys<S extends Shape> = { [K in keyof S]: S[K] extends { optional: true } ? K : never }[keyof S];
type RequiredKeys<S extends Shape> = Exclude<keyof S, OptionalKeys<S>>;
export type ObjOf<S extends Shape> = { [K in RequiredKeys<S>]: Infer<S[K]> } & { [K in OptionalKeys<S>]?: Infer<S[K]> };

/** A closed object: unknown keys are rejected, so typos and smuggled fields surface at once. */
export function obj<S extends Shape>(name: string, shape: S): Schema<ObjOf<S>> {
  const keys = Object.keys(shape);
  return {
    name,
    parse(v, path = '') {
      if (!isPlainObject(v)) fail(name, path, `must be an object, got ${typeOf(v)}`);
      for (const k of Object.keys(v)) {
        // Own keys only: `in` would let `constructor`, `toString`, `__proto__`… through.
        if (!Object.hasOwn(shape, k)) fail(name, join(path, k), 'is not a known field');
      }
      const out: Record<string, unknown> = {};
      for (const k of keys) {
        const parsed = (shape[k] as Schema<unknown>).parse(v[k], join(path, k));
        if (parsed !== undefined) out[k] = parsed;
      }
      return out as ObjOf<S>;
    },
  };
}

/** Any JSON-shaped data (objects, arrays, strings, finite numbers, booleans, null), depth-capped. */
export type JsonValue = string | number | boolean | null | JsonValue[] | { [k: string]: JsonValue };

export function json(opts: { maxDepth?: number } = {}): Schema<JsonValue> {
  const { maxDepth = 32 } = opts;
  const walk = (v: unknown, path: string, depth: number): JsonValue => {
    if (depth > maxDepth) fail('json', path, `is nested deeper than ${maxDepth}`);
    if (v === null || typeof v === 'string' || typeof v === 'boolean') return v;
    if (typeof v === 'number') {
      if (!Number.isFinite(v)) fail('json', path, 'must be a finite number');
      return v;
    }
    if (Array.isArray(v)) return v.map((x, i) => walk(x, `${path}[${i}]`, depth + 1));
    if (isPlainObject(v)) {
      const out: Record<string, JsonValue> = {};
      for (const [k, x] of Object.entries(v)) {
        if (k === '__proto__' || k === 'constructor' || k === 'prototype') fail('json', join(path, k), 'is a forbidden key');
        out[k] = walk(x, join(path, k), depth + 1);
      }
      return out;
    }
    return fail('json', path, `is not JSON data (${typeOf(v)})`);
  };
  return { name: 'json', parse: (v, path = '') => walk(v, path, 0) };
}

/** A JSON object (not an array or scalar) */
export function jsonObject(opts: { maxDepth?: number } = {}): Schema<{ [k: string]: JsonValue }> {
  const inner = json(opts);
  return {
    name: 'object',
    parse(v, path = '') {
      if (!isPlainObject(v)) fail('object', path, `must be an object, got ${typeOf(v)}`);
      return inner.parse(v, path) as { [k: string]: JsonValue };
    },
  };
}

/** A union told apart by its `type` field. */
export function tagged<M extends Record<string, Schema<unknown>>>(name: string, members: M): Schema<{ [K in keyof M]: Infer<M[K]> }[keyof M]> {
  return {
    name,
    parse(v, path = '') {
      if (!isPlainObject(v)) fail(name, path, `must be an object, got ${typeOf(v)}`);
      const t = v['type'];
      if (typeof t !== 'string' || !Object.hasOwn(members, t)) {
        fail(name, join(path, 'type'), `must be one of ${Object.keys(members).join(', ')}`);
      }
      return (members[t] as Schema<unknown>).parse(v, path) as { [K in keyof M]: Infer<M[K]> }[keyof M];
    },
  };
}

export function isPlainObject(v: unknown): v is Record<string, unknown> {
  if (typeof v !== 'object' || v === null || Array.isArray(v)) return false;
  const proto = Object.getPrototypeOf(v) as unknown;
  return proto === Object.prototype || proto === null;
}

function typeOf(v: unknown): string {
  if (v === null) return 'null';
  if (Array.isArray(v)) return 'array';
  if (v instanceof Uint8Array) return 'bytes';
  return typeof v;
}

function join(path: string, key: string): string {
  return path ? `${path}.${key}` : key;
}

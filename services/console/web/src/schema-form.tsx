/**
 * An input form built from a workflow's JSON Schema when it describes a flat object (string,
 * number, integer, boolean and enum properties); otherwise, or on request, a JSON editor.
 * The form and the editor edit one value, so switching keeps what was typed.
 */
import { useId, useMemo } from 'react';
import type { JsonValue } from '../../src/api-types.js';

type JsonObject = { [k: string]: JsonValue };
type Prop = {
  readonly name: string;
  readonly type: 'string' | 'number' | 'integer' | 'boolean';
  readonly enum?: readonly (string | number)[];
  readonly required: boolean;
  readonly description?: string;
  readonly default?: JsonValue;
};

/** The properties a form can show, or null when the schema needs the JSON editor. */
export function formFields(schema: { readonly [k: string]: JsonValue } | undefined): Prop[] | null {
  if (!schema || schema['type'] !== 'object') return null;
  const props = schema['properties'];
  if (typeof props !== 'object' || props === null || Array.isArray(props)) return null;
  const required = Array.isArray(schema['required']) ? (schema['required'] as JsonValue[]).filter((x): x is string => typeof x === 'string') : [];
  const out: Prop[] = [];
  for (const [name, raw] of Object.entries(props)) {
    if (typeof raw !== 'object' || raw === null || Array.isArray(raw)) return null;
    const type = raw['type'];
    const en = Array.isArray(raw['enum']) ? (raw['enum'] as JsonValue[]).filter((x): x is string | number => typeof x === 'string' || typeof x === 'number') : undefined;
    if (type !== 'string' && type !== 'number' && type !== 'integer' && type !== 'boolean') return null;
    out.push({
      name,
      type,
      required: required.includes(name),
      ...(en && en.length > 0 ? { enum: en } : {}),
      ...(typeof raw['description'] === 'string' ? { description: raw['description'] } : {}),
      ...(raw['default'] !== undefined ? { default: raw['default'] } : {}),
    });
  }
  return out;
}

/** What is missing or malformed in a value for these fields (field → words). */
export function formProblems(fields: readonly Prop[], value: JsonObject): Record<string, string> {
  const out: Record<string, string> = {};
  for (const f of fields) {
    const v = value[f.name];
    if (v === undefined || v === '') {
      if (f.required) out[f.name] = 'required';
    } else if (f.type === 'integer' && !Number.isInteger(v)) out[f.name] = 'must be a whole number';
    else if (f.type === 'number' && typeof v !== 'number') out[f.name] = 'must be a number';
  }
  return out;
}

export function SchemaForm({
  fields,
  value,
  onChange,
  problems,
}: {
  fields: readonly Prop[];
  value: JsonObject;
  onChange: (v: JsonObject) => void;
  problems: Record<string, string>;
}) {
  const base = useId();
  const set = (name: string, v: JsonValue | undefined) => {
    const next = { ...value };
    if (v === undefined) delete next[name];
    else next[name] = v;
    onChange(next);
  };
  return (
    <div className="form-grid" data-testid="input-form">
      {fields.map((f) => {
        const id = `${base}-${f.name}`;
        const v = value[f.name];
        return (
          <div className="field" key={f.name}>
            {f.type === 'boolean' ? (
              <label className="check" htmlFor={id}>
                <input id={id} type="checkbox" checked={v === true} onChange={(e) => set(f.name, e.target.checked)} data-testid={`input-${f.name}`} />
                {f.name}
              </label>
            ) : (
              <>
                <label htmlFor={id}>
                  {f.name}
                  {f.required ? <span aria-hidden="true"> *</span> : null}
                </label>
                {f.enum ? (
                  <select
                    id={id}
                    value={v === undefined ? '' : String(v)}
                    onChange={(e) => set(f.name, e.target.value === '' ? undefined : (f.enum?.find((x) => String(x) === e.target.value) ?? e.target.value))}
                    data-testid={`input-${f.name}`}
                  >
                    <option value="">—</option>
                    {f.enum.map((x) => (
                      <option key={String(x)} value={String(x)}>
                        {String(x)}
                      </option>
                    ))}
                  </select>
                ) : (
                  <input
                    id={id}
                    type={f.type === 'string' ? 'text' : 'number'}
                    step={f.type === 'integer' ? 1 : 'any'}
                    value={v === undefined || v === null ? '' : String(v)}
                    required={f.required}
                    aria-invalid={problems[f.name] ? true : undefined}
                    onChange={(e) => set(f.name, e.target.value === '' ? undefined : f.type === 'string' ? e.target.value : Number(e.target.value))}
                    data-testid={`input-${f.name}`}
                  />
                )}
              </>
            )}
            {f.description ? <span className="hint">{f.description}</span> : null}
            {problems[f.name] ? <span className="field-error">{problems[f.name]}</span> : null}
          </div>
        );
      })}
    </div>
  );
}

/** A JSON object editor: the text, and whether it parses to an object. */
export function useJsonText(text: string): { value: JsonObject | null; error: string | null } {
  return useMemo(() => {
    if (text.trim() === '') return { value: {}, error: null };
    try {
      const v = JSON.parse(text) as JsonValue;
      if (typeof v !== 'object' || v === null || Array.isArray(v)) return { value: null, error: 'The input must be a JSON object: { … }' };
      return { value: v, error: null };
    } catch (e) {
      return { value: null, error: `Not JSON yet: ${(e as Error).message}` };
    }
  }, [text]);
}

/** Starting values of a form: the schema's defaults. */
export function defaultsOf(fields: readonly Prop[]): JsonObject {
  const out: JsonObject = {};
  for (const f of fields) if (f.default !== undefined) out[f.name] = f.default;
  return out;
}

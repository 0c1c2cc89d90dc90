/**
 * A pipeline's plan: the model's entities and associations resolved into the tables the
 * five steps read and write. Pure and deterministic: every step of a run derives the same
 * plan from the same specs, so steps hand each other nothing but identifiers.
 *
 * Tables live in the data plane's database, schema `capstan_datasync`:
 * - per pipeline and entity, `p<pipeline>_<entity>`: the key and row fingerprint of every
 *   record last loaded (what Refresh compares with, what Resolve finds targets in);
 * - per run and entity, staging: `r<run>_<entity>_raw` (retrieved rows, source columns),
 *   `_chg` (rows new or changed since the last load), `_mdl` (the model's records), `_res`
 *   (records with their associations resolved; `_mdl` itself for an entity without any).
 */
import type { AssociationSpec, EntitySpec, ModelSpec, RunId, TenantId } from '@capstan/schemas';
import { q, qt, short, STATE_SCHEMA } from './sql.js';

export interface FieldPlan {
  readonly name: string;
  readonly column: string;
  readonly type?: string;
}

export interface AssociationPlan {
  readonly name: string;
  readonly to: string;
  /** Fields of this entity holding the target's key. */
  readonly fields: readonly string[];
  /** The columns written for it: the association's name, or `<name>_<key field>` for a wider key. */
  readonly columns: readonly string[];
}

export interface EntityPlan {
  readonly name: string;
  readonly sourceTable: string;
  readonly fields: readonly FieldPlan[];
  readonly key: readonly string[];
  /** Source columns retrieved: every field's column, and the cursor column. */
  readonly columns: readonly string[];
  readonly cursor?: string;
  readonly associations: readonly AssociationPlan[];
  readonly state: string;
  readonly raw: string;
  readonly chg: string;
  readonly mdl: string;
  readonly res: string;
}

export interface Plan {
  readonly pipeline: string;
  readonly entities: readonly EntityPlan[];
  readonly byName: ReadonlyMap<string, EntityPlan>;
}

export function pipelineId(t: TenantId, ids: { connection: string; model: string; destination: string }): string {
  return short(t, ids.connection, ids.model, ids.destination);
}

const inState = (name: string) => `${q(STATE_SCHEMA)}.${q(name)}`;

export function buildPlan(t: TenantId, runId: RunId, pipeline: string, model: ModelSpec): Plan {
  const run = short(t, runId);
  const entities = model.entities.map((e) => entityPlan(e, pipeline, run, model.associations ?? [], model.entities));
  return { pipeline, entities, byName: new Map(entities.map((e) => [e.name, e])) };
}

function entityPlan(e: EntitySpec, pipeline: string, run: string, associations: readonly AssociationSpec[], all: readonly EntitySpec[]): EntityPlan {
  const h = short(e.name).slice(0, 8);
  const columns = [...new Set([...e.fields.map((f) => f.column), ...(e.cursor ? [e.cursor] : [])])];
  const assocs = associations
    .filter((a) => a.from === e.name)
    .map((a) => {
      const target = all.find((x) => x.name === a.to);
      const key = target?.key ?? [];
      return { name: a.name, to: a.to, fields: a.fields, columns: key.length === 1 ? [a.name] : key.map((k) => `${a.name}_${k}`) };
    });
  const mdl = inState(`r${run}_${h}_mdl`);
  return {
    name: e.name,
    sourceTable: qt(e.source.schema, e.source.table),
    fields: e.fields.map((f) => ({ name: f.name, column: f.column, ...(f.type ? { type: f.type } : {}) })),
    key: e.key,
    columns,
    ...(e.cursor ? { cursor: e.cursor } : {}),
    associations: assocs,
    state: inState(`p${pipeline}_${h}`),
    raw: inState(`r${run}_${h}_raw`),
    chg: inState(`r${run}_${h}_chg`),
    mdl,
    res: assocs.length > 0 ? inState(`r${run}_${h}_res`) : mdl,
  };
}

/** The run's staging tables, to drop once its load is committed. */
export function stagingTables(p: Plan): string[] {
  return p.entities.flatMap((e) => [e.raw, e.chg, e.mdl, ...(e.res !== e.mdl ? [e.res] : [])]);
}

/** A field's value from a source row alias `r`: the column, cast when the model says so. */
export function fieldExpr(f: FieldPlan, alias = 'r'): string {
  return f.type ? `(${alias}.${q(f.column)})::${f.type}` : `${alias}.${q(f.column)}`;
}

/** The columns a record has once resolved: fields, association columns. */
export function outputColumns(e: EntityPlan): string[] {
  return [...e.fields.map((f) => f.name), ...e.associations.flatMap((a) => a.columns)];
}

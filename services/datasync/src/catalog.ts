/**
 * The tenant's catalog: connections, models and destinations.
 *
 * Two homes, on purpose. The **spec** (hosts, users, tables, folders, secret names) is the
 * data plane's and stays in its database (`datasync_specs`). The **record** (identifiers,
 * kind, type, status, a digest of the spec and a few safe facts) goes to the control plane
 * on the tenant's catalog stream (`cap.<t>.catalog.<kind>.<id>`), where the projector folds
 * it into `datasync_entities` and the audit log.
 *
 * A change is one transaction in the data plane around one publish: the spec row is locked
 * and written, the record is published with the subject's expected last sequence, then the
 * transaction commits. A publish that fails rolls the spec back (nothing changed anywhere);
 * a racing change of the same entity waits on the row lock, then reads the stream again.
 * The one window left, a commit that fails after its record was stored, leaves the stream a
 * version ahead of the spec; the next change of the entity starts from the stream's version,
 * and runs read the spec, which is whole either way.
 */
import { JetStreamApiError, type JetStreamClient, type JetStreamManager } from '@nats-io/jetstream';
import type pg from 'pg';
import {
  CatalogKind,
  ConcurrencyConflictError,
  DatasyncNotFoundError,
  decode,
  encode,
  EntityStatus,
  InvalidArgumentError,
  MsgIds,
  parseCatalogRecord,
  parseEntitySpec,
  PostgresAuth,
  Streams,
  Subjects,
  TlsMode,
  type CatalogRecord,
  type DatasyncPutRequest,
  type EntitySpecOf,
  type EntitySummary,
  type ModelSpec,
  type TenantId,
  JsApiCode,
} from '@capstan/schemas';
import { sha256 } from './sql.js';

export interface Catalog {
  put(t: TenantId, req: DatasyncPutRequest): Promise<CatalogRecord>;
  remove(t: TenantId, kind: CatalogKind, id: string, by: string): Promise<CatalogRecord>;
  get(t: TenantId, kind: CatalogKind, id: string): Promise<CatalogRecord>;
  list(t: TenantId, o: { kind?: CatalogKind; includeDeleted?: boolean }): Promise<CatalogRecord[]>;
  /** The live spec of an entity, for a run or a preview. @throws DatasyncNotFoundError */
  spec<K extends CatalogKind>(t: TenantId, kind: K, id: string): Promise<{ spec: EntitySpecOf<K>; version: number; fingerprint: string }>;
}

interface SpecRow {
  kind: CatalogKind;
  id: string;
  name: string;
  version: number;
  spec: unknown;
  fingerprint: string;
  updated_by: string;
  updated_at: Date;
  deleted_at: Date | null;
}

/** JSON with sorted keys: the same spec always has the same digest. */
export function canonicalJson(v: unknown): string {
  if (Array.isArray(v)) return `[${v.map(canonicalJson).join(',')}]`;
  if (v !== null && typeof v === 'object') {
    const o = v as Record<string, unknown>;
    return `{${Object.keys(o)
      .filter((k) => o[k] !== undefined)
      .sort()
      .map((k) => `${JSON.stringify(k)}:${canonicalJson(o[k])}`)
      .join(',')}}`;
  }
  return JSON.stringify(v);
}

/** What the control plane may know of a spec. */
export function summaryOf(kind: CatalogKind, spec: unknown): EntitySummary {
  if (kind === CatalogKind.Connection) {
    const c = spec as EntitySpecOf<'connection'>;
    // The secret key names (names only): what the lease service may lease for this connection.
    return { type: c.type, auth: c.auth.type, tls: c.tls.mode, keys: connectionKeys(c) };
  }
  if (kind === CatalogKind.Model) {
    const m = spec as ModelSpec;
    return { entities: m.entities.map((e) => e.name), associations: m.associations?.length ?? 0 };
  }
  const d = spec as EntitySpecOf<'destination'>;
  return d.type === 'postgres' ? { type: 'postgres', connection: d.connection } : { type: 'files', format: d.format };
}

/** The secret key names a connection's auth leases at use (none for a server that trusts the address). */
export function connectionKeys(c: EntitySpecOf<'connection'>): string[] {
  if (c.auth.type === PostgresAuth.Keypair) return [c.auth.privateKeyKey];
  return c.auth.passwordKey ? [c.auth.passwordKey] : [];
}

/**
 * What the schemas cannot say about a model: names unique, keys and associations pointing at
 * fields and entities that exist, association widths matching the target's key.
 * @throws InvalidArgumentError naming every problem
 */
export function checkModel(m: ModelSpec): void {
  const problems: string[] = [];
  const entities = new Map(m.entities.map((e) => [e.name, e]));
  if (m.entities.length === 0) problems.push('a model needs at least one entity');
  if (entities.size !== m.entities.length) problems.push('entity names must be unique');
  for (const e of m.entities) {
    const fields = new Set(e.fields.map((f) => f.name));
    if (fields.size !== e.fields.length) problems.push(`entity ${e.name}: field names must be unique`);
    if (e.fields.length === 0) problems.push(`entity ${e.name}: needs at least one field`);
    if (e.key.length === 0) problems.push(`entity ${e.name}: needs a key (one or more of its fields)`);
    for (const k of e.key) if (!fields.has(k)) problems.push(`entity ${e.name}: key field ${k} is not one of its fields`);
    for (const reserved of e.fields.filter((f) => f.name.startsWith('_capstan')))
      problems.push(`entity ${e.name}: field ${reserved.name}: names starting with _capstan are Capstan's`);
  }
  const assocNames = new Set<string>();
  for (const a of m.associations ?? []) {
    const from = entities.get(a.from);
    const to = entities.get(a.to);
    if (!from) problems.push(`association ${a.name}: no entity ${a.from}`);
    if (!to) problems.push(`association ${a.name}: no entity ${a.to}`);
    if (assocNames.has(`${a.from}.${a.name}`)) problems.push(`association ${a.name}: defined twice on ${a.from}`);
    assocNames.add(`${a.from}.${a.name}`);
    if (from) {
      const fields = new Set(from.fields.map((f) => f.name));
      for (const f of a.fields) if (!fields.has(f)) problems.push(`association ${a.name}: ${a.from} has no field ${f}`);
      if (fields.has(a.name)) problems.push(`association ${a.name}: ${a.from} already has a field by that name`);
    }
    if (to && a.fields.length !== to.key.length) problems.push(`association ${a.name}: ${a.fields.length} field(s), but ${a.to}'s key has ${to.key.length}`);
  }
  if (problems.length > 0) throw new InvalidArgumentError(`invalid model:\n  - ${problems.join('\n  - ')}`);
}

/** A tenant's JetStream handles (the service's connection to that tenant's account). */
export type TenantStreams = (t: TenantId) => { readonly js: JetStreamClient; readonly jsm: JetStreamManager };

export function createCatalog(o: { pool: pg.Pool; streams: TenantStreams }): Catalog {
  const { pool, streams } = o;

  async function lastRecord(t: TenantId, kind: CatalogKind, id: string): Promise<{ record?: CatalogRecord; seq: number }> {
    try {
      const m = await streams(t).jsm.direct.getMessage(Streams.catalog(t), { last_by_subj: Subjects.catalog(t, kind, id) });
      if (!m) return { seq: 0 };
      try {
        return { record: parseCatalogRecord(decode(m.data)), seq: m.seq };
      } catch {
        // A record that does not parse is superseded by the next valid one.
        return { seq: m.seq };
      }
    } catch (e) {
      if ((e instanceof JetStreamApiError && (e.code === JsApiCode.NoMessageFound || e.status === 404)) || /no message found/i.test((e as Error).message)) return { seq: 0 };
      throw e;
    }
  }

  function recordOf(t: TenantId, row: SpecRow): CatalogRecord {
    return {
      kind: row.kind,
      id: row.id,
      version: row.version,
      name: row.name,
      status: row.deleted_at ? EntityStatus.Deleted : EntityStatus.Active,
      fingerprint: row.fingerprint,
      summary: summaryOf(row.kind, row.spec),
      by: row.updated_by,
      at: (row.deleted_at ?? row.updated_at).toISOString(),
    };
  }

  /** Locks the entity's row, lets `change` write it, publishes the record, commits. */
  async function change(
    t: TenantId,
    kind: CatalogKind,
    id: string,
    write: (c: pg.PoolClient, current: SpecRow | undefined, version: number, recorded: CatalogRecord | undefined) => Promise<SpecRow | undefined>,
  ): Promise<CatalogRecord> {
    const c = await pool.connect();
    try {
      await c.query('begin');
      // A row to lock even for the first version: concurrent creators queue here.
      await c.query(`select pg_advisory_xact_lock(hashtextextended($1, 0))`, [`capstan.datasync.catalog:${t}:${kind}:${id}`]);
      const cur = (await c.query<SpecRow>('select * from datasync_specs where tenant = $1 and kind = $2 and id = $3 for update', [t, kind, id])).rows[0];
      const last = await lastRecord(t, kind, id);
      const version = Math.max(cur?.version ?? 0, last.record?.version ?? 0) + 1;
      const row = await write(c, cur, version, last.record);
      if (!row) {
        await c.query('rollback');
        if (!cur) throw new DatasyncNotFoundError(kind, id);
        return recordOf(t, cur);
      }
      const record = recordOf(t, row);
      parseCatalogRecord(record);
      try {
        await streams(t).js.publish(Subjects.catalog(t, kind, id), encode(record), { msgID: MsgIds.catalogRecord(kind, id, version), expect: { lastSubjectSequence: last.seq } });
      } catch (e) {
        if (e instanceof JetStreamApiError && e.code === JsApiCode.StreamWrongLastSequence) throw new ConcurrencyConflictError(`${kind} ${id}`, last.seq, { cause: e });
        throw e;
      }
      await c.query('commit');
      return record;
    } catch (e) {
      await c.query('rollback').catch(() => undefined);
      throw e;
    } finally {
      c.release();
    }
  }

  const upsert = `insert into datasync_specs (tenant, kind, id, name, version, spec, fingerprint, updated_by, updated_at, deleted_at)
                  values ($1, $2, $3, $4, $5, $6, $7, $8, now(), null)
                  on conflict (tenant, kind, id) do update set name = excluded.name, version = excluded.version, spec = excluded.spec,
                    fingerprint = excluded.fingerprint, updated_by = excluded.updated_by, updated_at = now(), deleted_at = null
                  returning *`;

  return {
    async put(t, req) {
      const spec = parseEntitySpec(req.kind, req.spec);
      if (req.kind === CatalogKind.Model) checkModel(spec as ModelSpec);
      if (req.kind === CatalogKind.Connection) {
        const c = spec as EntitySpecOf<'connection'>;
        if (c.auth.type === PostgresAuth.Keypair && c.tls.mode === TlsMode.Disable)
          throw new InvalidArgumentError('a keypair (client certificate) connection needs TLS: tls.mode require or verify-full');
      }
      if (req.kind === CatalogKind.Destination) {
        const d = spec as EntitySpecOf<'destination'>;
        if (d.type === 'postgres') await this.spec(t, CatalogKind.Connection, d.connection);
      }
      const fingerprint = sha256(canonicalJson(spec));
      return change(t, req.kind, req.id, async (c, cur, version, recorded) => {
        const name = req.name ?? cur?.name ?? req.id;
        // The same spec and name again changes nothing and records nothing, unless the record
        // lacks a fact it carries now (a connection recorded before its key names were).
        const sameRecord = recorded !== undefined && canonicalJson(recorded.summary) === canonicalJson(summaryOf(req.kind, spec));
        if (cur && !cur.deleted_at && cur.fingerprint === fingerprint && cur.name === name && sameRecord) return undefined;
        return (await c.query<SpecRow>(upsert, [t, req.kind, req.id, name, version, JSON.stringify(spec), fingerprint, req.by])).rows[0];
      });
    },

    remove(t, kind, id, by) {
      return change(t, kind, id, async (c, cur, version) => {
        if (!cur) throw new DatasyncNotFoundError(kind, id);
        if (cur.deleted_at) return undefined;
        return (
          await c.query<SpecRow>('update datasync_specs set version = $4, deleted_at = now(), updated_by = $5 where tenant = $1 and kind = $2 and id = $3 returning *', [
            t,
            kind,
            id,
            version,
            by,
          ])
        ).rows[0];
      });
    },

    async get(t, kind, id) {
      const row = (await pool.query<SpecRow>('select * from datasync_specs where tenant = $1 and kind = $2 and id = $3', [t, kind, id])).rows[0];
      if (!row) throw new DatasyncNotFoundError(kind, id);
      return recordOf(t, row);
    },

    async list(t, opts) {
      const rows = (
        await pool.query<SpecRow>(`select * from datasync_specs where tenant = $1 and ($2::text is null or kind = $2) and ($3 or deleted_at is null) order by kind, id`, [
          t,
          opts.kind ?? null,
          opts.includeDeleted === true,
        ])
      ).rows;
      return rows.map((r) => recordOf(t, r));
    },

    async spec(t, kind, id) {
      const row = (await pool.query<SpecRow>('select * from datasync_specs where tenant = $1 and kind = $2 and id = $3 and deleted_at is null', [t, kind, id])).rows[0];
      if (!row) throw new DatasyncNotFoundError(kind, id);
      // Stored by this service after the same check: parsed again all the same, so a row
      // changed behind its back cannot reach a statement unchecked.
      return { spec: parseEntitySpec(kind, row.spec), version: row.version, fingerprint: row.fingerprint };
    },
  };
}

/**
 * Destinations: where Load writes a run's records, batch by batch, so that a retried Load
 * writes nothing twice.
 *
 * - **Postgres** (a schema of a connection's database): one table per entity keyed by the
 *   model's key. Each batch is one transaction: COPY into a temporary table, upsert by key
 *   (a row whose fingerprint did not change is not rewritten), and a row in the schema's
 *   load ledger `_capstan_loads (run_id, entity, batch)`. A retried Load skips the batches
 *   its ledger holds; a batch cut off by a crash rolled back whole.
 * - **Files** (a folder below the service's files root, per tenant): one part file per
 *   batch, `<entity>/<runId>-<batch>.jsonl|parquet`, written to a temporary name, synced,
 *   then renamed: a part either exists whole or not at all, and a retried Load skips the
 *   parts that exist. `_runs/<runId>.json`, written last the same way, says the run is
 *   complete. The folder is a change log: a reader folds the complete runs' parts in run
 *   order (run ids sort by time), the last record of a key winning; a run marked `full`
 *   replaces everything before it.
 */
import { createWriteStream, existsSync, mkdirSync, openSync, closeSync, fsyncSync, renameSync, rmSync, writeFileSync, readdirSync } from 'node:fs';
import { once } from 'node:events';
import { join, resolve, sep } from 'node:path';
import { pipeline as streamPipeline } from 'node:stream/promises';
import { randomBytes } from 'node:crypto';
import type pg from 'pg';
import copyStreams from 'pg-copy-streams';
import { fileWriter, ParquetWriter, type ColumnSource } from 'hyparquet-writer';
import { CapstanError, ErrorCode, type TenantId } from '@capstan/schemas';
import { failpoint } from '@capstan/kit';
import { q } from './sql.js';
import { statementError } from './connect.js';
import type { EntityPlan } from './plan.js';

/** One column of a resolved record, with its Postgres type (from the staging table). */
export interface Column {
  readonly name: string;
  readonly type: string;
}

export interface EntityOut {
  readonly plan: EntityPlan;
  readonly columns: readonly Column[];
  readonly key: readonly string[];
}

/** Reads one batch of an entity's records from staging. */
export interface BatchSource {
  /** `COPY … TO STDOUT` of the batch's columns (and `_fp`), for a Postgres destination. */
  copyOut(e: EntityOut, lo: number, hi: number): Promise<NodeJS.ReadableStream & { end?: unknown }>;
  /** The batch's rows, a chunk at a time: `json` (one JSON text per row) or `text` (values as text). */
  rows(e: EntityOut, lo: number, hi: number, mode: 'json' | 'text', each: (chunk: unknown[][]) => Promise<void>): Promise<void>;
  /** Releases what `copyOut` held. */
  release(): Promise<void>;
}

export interface DestinationWriter {
  prepare(entities: readonly EntityOut[]): Promise<void>;
  /** Batches of this run already written (`entity` → batch numbers). */
  written(): Promise<Map<string, Set<number>>>;
  write(e: EntityOut, batch: number, lo: number, hi: number, src: BatchSource): Promise<{ bytes: number }>;
  /** After every batch: marks the run complete where the destination keeps such a mark. */
  finish(summary: { entities: Record<string, { batches: number; rows: number }>; full: boolean }): Promise<string>;
  close(): Promise<void>;
}

// ---------------------------------------------------------------------------------------
// Postgres.

export function postgresDestination(client: pg.Client, schema: string, runId: string): DestinationWriter {
  const ledger = `${q(schema)}."_capstan_loads"`;
  const table = (e: EntityOut) => `${q(schema)}.${q(e.plan.name)}`;
  const temp = (e: EntityOut) => q(`capstan_load_${e.plan.state.slice(-9, -1)}`);
  const run = async <T>(what: string, f: () => Promise<T>): Promise<T> => {
    try {
      return await f();
    } catch (e) {
      throw statementError(e, what);
    }
  };
  return {
    prepare: (entities) =>
      run('preparing the destination schema', async () => {
        await client.query(`create schema if not exists ${q(schema)}`);
        await client.query(
          `create table if not exists ${ledger} (run_id text not null, entity text not null, batch integer not null, rows integer not null, loaded_at timestamptz not null default now(), primary key (run_id, entity, batch))`,
        );
        for (const e of entities) {
          const cols = e.columns.map((c) => `${q(c.name)} ${c.type}`).join(', ');
          await client.query(
            `create table if not exists ${table(e)} (${cols}, "_capstan_fp" text not null, "_capstan_run" text not null, primary key (${e.key.map(q).join(', ')}))`,
          );
          // A model that gained fields: the table gains columns (never loses any).
          for (const c of e.columns) await client.query(`alter table ${table(e)} add column if not exists ${q(c.name)} ${c.type}`);
        }
      }),
    written: () =>
      run('reading the load ledger', async () => {
        const res = await client.query<{ entity: string; batch: number }>(`select entity, batch from ${ledger} where run_id = $1`, [runId]);
        const out = new Map<string, Set<number>>();
        for (const r of res.rows) {
          const s = out.get(r.entity) ?? new Set<number>();
          s.add(Number(r.batch));
          out.set(r.entity, s);
        }
        return out;
      }),
    write: (e, batch, lo, hi, src) =>
      run(`loading ${e.plan.name} batch ${batch}`, async () => {
        const cols = e.columns.map((c) => q(c.name));
        const set = [...cols.map((c) => `${c} = excluded.${c}`), `"_capstan_fp" = excluded."_capstan_fp"`, `"_capstan_run" = excluded."_capstan_run"`].join(', ');
        await client.query('begin');
        try {
          // Columns only (no constraints): the run and the checks are the upsert's business.
          await client.query(`create temp table if not exists ${temp(e)} on commit delete rows as select ${cols.join(', ')}, "_capstan_fp" from ${table(e)} with no data`);
          const into = client.query(copyStreams.from(`copy ${temp(e)} (${cols.join(', ')}, "_capstan_fp") from stdin`));
          let bytes = 0;
          const out = await src.copyOut(e, lo, hi);
          out.on('data', (d: Buffer) => (bytes += d.length));
          try {
            await streamPipeline(out, into);
          } finally {
            await src.release();
          }
          failpoint('datasync.load.mid_batch');
          await client.query(
            `insert into ${table(e)} (${cols.join(', ')}, "_capstan_fp", "_capstan_run")
             select ${cols.join(', ')}, "_capstan_fp", $1 from ${temp(e)}
             on conflict (${e.key.map(q).join(', ')}) do update set ${set}
             where ${table(e)}."_capstan_fp" is distinct from excluded."_capstan_fp"`,
            [runId],
          );
          await client.query(`insert into ${ledger} (run_id, entity, batch, rows) values ($1, $2, $3, $4)`, [runId, e.plan.name, batch, hi - lo + 1]);
          await client.query('commit');
          return { bytes };
        } catch (err) {
          await client.query('rollback').catch(() => undefined);
          throw err;
        }
      }),
    finish: () => Promise.resolve(`ds:pg/${runId.toLowerCase()}`),
    close: () => client.end().catch(() => undefined),
  };
}

// ---------------------------------------------------------------------------------------
// Files.

/** The tenant's folder for a destination, inside the files root whatever the spec says. */
export function destinationFolder(root: string, t: TenantId, path: string): string {
  const base = resolve(root, t);
  const dir = resolve(base, path);
  if (!dir.startsWith(base + sep)) throw new CapstanError(ErrorCode.InvalidArgument, `destination folder ${JSON.stringify(path)} is outside the tenant's files root`);
  return dir;
}

/** Writes `write(tmpPath)` then renames it into place, synced: the file exists whole or not at all. */
async function atomicFile(path: string, write: (tmp: string) => Promise<number>): Promise<number> {
  const tmp = `${path}.tmp-${randomBytes(6).toString('hex')}`;
  try {
    const bytes = await write(tmp);
    const fd = openSync(tmp, 'r');
    try {
      fsyncSync(fd);
    } finally {
      closeSync(fd);
    }
    renameSync(tmp, path);
    return bytes;
  } catch (e) {
    rmSync(tmp, { force: true });
    throw e;
  }
}

function syncDir(dir: string): void {
  const fd = openSync(dir, 'r');
  try {
    fsyncSync(fd);
  } finally {
    closeSync(fd);
  }
}

type ParquetKind = 'BOOLEAN' | 'INT32' | 'INT64' | 'DOUBLE' | 'STRING';

/** A Postgres type as a Parquet column; anything without a better match is text. */
export function parquetType(pgType: string): ParquetKind {
  if (pgType === 'boolean') return 'BOOLEAN';
  if (pgType === 'smallint' || pgType === 'integer') return 'INT32';
  if (pgType === 'bigint') return 'INT64';
  if (pgType === 'real' || pgType === 'double precision') return 'DOUBLE';
  return 'STRING';
}

function parquetValue(kind: ParquetKind, v: unknown): unknown {
  if (v === null || v === undefined) return null;
  const s = String(v);
  switch (kind) {
    case 'BOOLEAN':
      return s === 't' || s === 'true';
    case 'INT32':
    case 'DOUBLE':
      return Number(s);
    case 'INT64':
      return BigInt(s);
    default:
      return s;
  }
}

export function filesDestination(dir: string, format: 'jsonl' | 'parquet', runId: string): DestinationWriter {
  const ext = format === 'jsonl' ? 'jsonl' : 'parquet';
  const part = (entity: string, batch: number) => join(dir, entity, `${runId}-${String(batch).padStart(6, '0')}.${ext}`);
  return {
    prepare(entities) {
      for (const e of entities) mkdirSync(join(dir, e.plan.name), { recursive: true });
      mkdirSync(join(dir, '_runs'), { recursive: true });
      // Parts a crashed attempt left half-written are never renamed into place: clear them.
      for (const e of entities)
        for (const f of readdirSync(join(dir, e.plan.name))) if (f.startsWith(runId) && f.includes('.tmp-')) rmSync(join(dir, e.plan.name, f), { force: true });
      return Promise.resolve();
    },
    written() {
      const out = new Map<string, Set<number>>();
      for (const name of existsSync(dir) ? readdirSync(dir) : []) {
        if (name === '_runs') continue;
        const s = new Set<number>();
        for (const f of existsSync(join(dir, name)) ? readdirSync(join(dir, name)) : []) {
          const m = new RegExp(`^${runId}-(\\d{6})\\.${ext}$`).exec(f);
          if (m) s.add(Number(m[1]));
        }
        out.set(name, s);
      }
      return Promise.resolve(out);
    },
    async write(e, batch, lo, hi, src) {
      const path = part(e.plan.name, batch);
      const bytes = await atomicFile(path, (tmp) => (format === 'jsonl' ? writeJsonl(tmp, e, lo, hi, src) : writeParquet(tmp, e, lo, hi, src)));
      syncDir(join(dir, e.plan.name));
      return { bytes };
    },
    async finish(summary) {
      const manifest = join(dir, '_runs', `${runId}.json`);
      await atomicFile(manifest, (tmp) => {
        const text = `${JSON.stringify({ runId, format, full: summary.full, entities: summary.entities })}\n`;
        writeFileSync(tmp, text);
        return Promise.resolve(Buffer.byteLength(text));
      });
      syncDir(join(dir, '_runs'));
      return `ds:files/${runId.toLowerCase()}`;
    },
    close: () => Promise.resolve(),
  };
}

async function writeJsonl(tmp: string, e: EntityOut, lo: number, hi: number, src: BatchSource): Promise<number> {
  const out = createWriteStream(tmp);
  let bytes = 0;
  try {
    await src.rows(e, lo, hi, 'json', async (chunk) => {
      const text = chunk.map((r) => `${String(r[0])}\n`).join('');
      bytes += Buffer.byteLength(text);
      if (!out.write(text)) await once(out, 'drain');
      failpoint('datasync.load.mid_part');
    });
  } finally {
    out.end();
    await once(out, 'close');
  }
  return bytes;
}

async function writeParquet(tmp: string, e: EntityOut, lo: number, hi: number, src: BatchSource): Promise<number> {
  const kinds = e.columns.map((c) => parquetType(c.type));
  const writer = fileWriter(tmp);
  const pq = new ParquetWriter({
    writer,
    schema: [
      { name: 'root', num_children: e.columns.length },
      ...e.columns.map((c, i) => {
        const k = kinds[i] as ParquetKind;
        const base = { name: c.name, repetition_type: 'OPTIONAL' as const };
        if (k === 'STRING') return { ...base, type: 'BYTE_ARRAY' as const, converted_type: 'UTF8' as const };
        return { ...base, type: k };
      }),
    ],
  });
  await src.rows(e, lo, hi, 'text', async (chunk) => {
    const columnData: ColumnSource[] = e.columns.map((c, i) => ({ name: c.name, data: chunk.map((r) => parquetValue(kinds[i] as ParquetKind, r[i])) as never }));
    await pq.write({ columnData, rowGroupSize: Math.max(1, chunk.length) });
    failpoint('datasync.load.mid_part');
  });
  // The file writer flushes synchronously; finish() writes the footer.
  void pq.finish();
  return writer.offset;
}

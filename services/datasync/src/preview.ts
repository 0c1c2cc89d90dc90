/**
 * The bounded preview: the one path that returns rows to the control plane.
 *
 * Three fences, in order:
 * 1. **The real parser** (libpg_query, PostgreSQL's own grammar, as WebAssembly): exactly one
 *    statement, a SELECT (a WITH is a SELECT with CTEs), no data-modifying CTE, no
 *    `SELECT … INTO`, no row locks, and no call of a function with side effects
 *    (sequences, settings, advisory locks, notifications, large objects, server files,
 *    remote connections, functions that run SQL text). Refused queries never reach the
 *    source.
 * 2. **The source itself**: a `READ ONLY` transaction with a statement timeout, a lock
 *    timeout and an idle timeout, rolled back at the end, on a connection used once.
 *    Whatever the parser let through cannot write, and cannot run long.
 * 3. **The result**: read through a cursor, at most 100 rows fetched (`FETCH 101` tells
 *    there were more), at most 64 columns, each cell cut to 200 characters and stripped of
 *    control and bidirectional-override characters.
 */
import type pg from 'pg';
import * as pgQuery from 'libpg-query';
import { PREVIEW_LIMITS, QueryRefusedError, type PreviewReply } from '@capstan/schemas';
import { statementError } from './connect.js';

let loaded: Promise<void> | undefined;
/** The parser's WebAssembly module, loaded once. */
export function loadParser(): Promise<void> {
  loaded ??= pgQuery.loadModule();
  return loaded;
}

/**
 * Functions a preview may not call, by name in any schema. Read-only transactions already
 * stop writes to tables; these act elsewhere (the session, sequences, locks, the server's
 * files, other servers) or run SQL text the parser never saw.
 */
const FORBIDDEN_FUNCTIONS = new Set([
  'nextval',
  'setval',
  'set_config',
  'pg_sleep_for',
  'pg_sleep_until',
  'pg_advisory_lock',
  'pg_advisory_lock_shared',
  'pg_advisory_xact_lock',
  'pg_advisory_xact_lock_shared',
  'pg_try_advisory_lock',
  'pg_try_advisory_lock_shared',
  'pg_try_advisory_xact_lock',
  'pg_try_advisory_xact_lock_shared',
  'pg_advisory_unlock',
  'pg_advisory_unlock_shared',
  'pg_advisory_unlock_all',
  'pg_notify',
  'pg_cancel_backend',
  'pg_terminate_backend',
  'pg_reload_conf',
  'pg_rotate_logfile',
  'pg_switch_wal',
  'pg_create_restore_point',
  'pg_promote',
  'pg_logical_emit_message',
  'txid_current',
  'pg_current_xact_id',
  'pg_read_file',
  'pg_read_binary_file',
  'pg_ls_dir',
  'pg_stat_file',
  'pg_file_write',
  'lo_import',
  'lo_export',
  'lo_create',
  'lo_creat',
  'lo_unlink',
  'lo_put',
  'lo_from_bytea',
  'lo_open',
  'lowrite',
  'lo_truncate',
  'query_to_xml',
  'query_to_xml_and_xmlschema',
  'query_to_xmlschema',
  'cursor_to_xml',
  'cursor_to_xmlschema',
  'pg_create_physical_replication_slot',
  'pg_create_logical_replication_slot',
  'pg_drop_replication_slot',
  'pg_replication_origin_create',
  'pg_replication_origin_drop',
  'pg_replication_origin_advance',
  'pg_import_system_collations',
  'pg_stat_reset',
  'pg_stat_reset_shared',
  'pg_stat_reset_single_table_counters',
]);
/** Families refused by prefix: every dblink_* and lo_* function. */
const FORBIDDEN_PREFIXES = ['dblink', 'lo_', 'pg_advisory', 'pg_try_advisory'];

/** Statement kinds a WITH may hold that write. */
const MODIFYING = new Set(['InsertStmt', 'UpdateStmt', 'DeleteStmt', 'MergeStmt']);

/**
 * Checks a preview query with PostgreSQL's parser. Returns its fingerprint (for the audit
 * log: the query's shape, not its text).
 * @throws QueryRefusedError saying why
 */
export async function checkPreviewQuery(sql: string): Promise<{ fingerprint: string; statement: string }> {
  await loadParser();
  let tree: { stmts?: { stmt?: Record<string, unknown>; stmt_location?: number; stmt_len?: number }[] };
  try {
    tree = pgQuery.parseSync(sql) as typeof tree;
  } catch (e) {
    throw new QueryRefusedError(`not valid SQL: ${(e as Error).message.slice(0, 200)}`);
  }
  const stmts = tree.stmts ?? [];
  if (stmts.length !== 1) throw new QueryRefusedError(`one statement only (found ${stmts.length})`);
  const stmt = stmts[0]?.stmt ?? {};
  const kind = Object.keys(stmt)[0] ?? 'nothing';
  if (kind !== 'SelectStmt') throw new QueryRefusedError(`only SELECT or WITH … SELECT may be previewed (found ${statementName(kind)})`);
  walk(stmt, '');
  // The statement as the parser delimited it (no trailing semicolon), for the cursor.
  const from = stmts[0]?.stmt_location ?? 0;
  const len = stmts[0]?.stmt_len ?? 0;
  // Offsets are the parser's: bytes of UTF-8.
  const bytes = Buffer.from(sql, 'utf8');
  const statement = (len > 0 ? bytes.subarray(from, from + len) : bytes.subarray(from)).toString('utf8');
  return { fingerprint: pgQuery.fingerprintSync(sql), statement };
}

function statementName(kind: string): string {
  return kind
    .replace(/Stmt$/, '')
    .replace(/([a-z])([A-Z])/g, '$1 $2')
    .toUpperCase();
}

/** Every node of the tree, depth first: refuses what may not be in a preview anywhere in it. */
function walk(node: unknown, parent: string): void {
  if (Array.isArray(node)) {
    for (const n of node) walk(n, parent);
    return;
  }
  if (node === null || typeof node !== 'object') return;
  for (const [key, value] of Object.entries(node as Record<string, unknown>)) {
    if (MODIFYING.has(key)) throw new QueryRefusedError(`a data-modifying ${statementName(key)} inside the query (in ${parent === 'ctequery' ? 'a WITH' : 'a subquery'})`);
    if (key.endsWith('Stmt') && key !== 'SelectStmt') throw new QueryRefusedError(`a ${statementName(key)} statement inside the query`);
    if (key === 'intoClause' && value) throw new QueryRefusedError('SELECT … INTO creates a table');
    if (key === 'lockingClause' && Array.isArray(value) && value.length > 0) throw new QueryRefusedError('FOR UPDATE/SHARE takes row locks');
    if (key === 'FuncCall') checkFunction(value);
    walk(value, key);
  }
}

function checkFunction(call: unknown): void {
  const parts = ((call as { funcname?: { String?: { sval?: string } }[] }).funcname ?? []).map((p) => p.String?.sval ?? '');
  const name = (parts.at(-1) ?? '').toLowerCase();
  if (FORBIDDEN_FUNCTIONS.has(name) || FORBIDDEN_PREFIXES.some((p) => name.startsWith(p))) {
    throw new QueryRefusedError(`function ${parts.join('.')} has side effects outside the query (or runs SQL text)`);
  }
}

/** Control characters (C0, C1, DEL) and bidirectional overrides become U+FFFD; tabs and newlines a space. */
const UNSAFE = /[\u0000-\u0008\u000b\u000c\u000e-\u001f\u007f-\u009f\u202a-\u202e\u2066-\u2069\u200e\u200f\u061c]/g;

export function sanitizeCell(v: string, max: number = PREVIEW_LIMITS.cellChars): { text: string; cut: boolean } {
  // Cut first (by code points, never inside a surrogate pair), then clean.
  const points = Array.from(v.length > max * 2 + 8 ? v.slice(0, max * 2 + 8) : v);
  const cut = points.length > max;
  const kept = (cut ? points.slice(0, max).join('') : points.join('')).replace(/[\t\n\r]/g, ' ').replace(UNSAFE, '\uFFFD');
  return { text: cut ? `${kept}…` : kept, cut };
}

/**
 * Runs a checked query in a read-only transaction on `client` (used once) and returns the
 * bounded table.
 */
export async function runPreview(client: pg.Client, statement: string, fingerprint: string, timeoutMs: number): Promise<PreviewReply> {
  const t0 = performance.now();
  try {
    await client.query('begin transaction isolation level repeatable read read only');
    await client.query(
      `set local statement_timeout = ${Math.floor(timeoutMs)}; set local lock_timeout = ${Math.min(Math.floor(timeoutMs), 2000)}; set local idle_in_transaction_session_timeout = ${Math.floor(timeoutMs) + 5000}`,
    );
    // The cursor bounds what the server produces: FETCH asks for one row past the limit to
    // say whether there were more, and no more is ever materialized here.
    // A named (prepared) statement: the server itself refuses more than one command in it.
    await client.query({ name: 'capstan-preview', text: `declare capstan_preview no scroll cursor for ${statement}` });
    const res = await client.query({ text: `fetch ${PREVIEW_LIMITS.rows + 1} from capstan_preview`, rowMode: 'array' });
    const fields = res.fields;
    const ncols = Math.min(fields.length, PREVIEW_LIMITS.columns);
    let cellsTruncated = 0;
    const cell = (v: unknown): string | null => {
      if (v === null || v === undefined) return null;
      const s = sanitizeCell(String(v));
      if (s.cut) cellsTruncated++;
      return s.text;
    };
    const types = await typeNames(
      client,
      fields.slice(0, ncols).map((f) => f.dataTypeID),
    );
    const columns = fields.slice(0, ncols).map((f) => ({ name: sanitizeCell(f.name).text, type: types.get(f.dataTypeID) ?? String(f.dataTypeID) }));
    const rows = (res.rows as unknown[][]).slice(0, PREVIEW_LIMITS.rows).map((r) => r.slice(0, ncols).map(cell));
    return {
      columns,
      rows,
      truncated: res.rows.length > PREVIEW_LIMITS.rows || fields.length > ncols,
      cellsTruncated,
      durationMs: Math.round(performance.now() - t0),
      fingerprint,
    };
  } catch (e) {
    throw statementError(e, 'preview query');
  } finally {
    await client.query('rollback').catch(() => undefined);
  }
}

async function typeNames(client: pg.Client, oids: readonly number[]): Promise<Map<number, string>> {
  if (oids.length === 0) return new Map();
  const res = await client.query<{ oid: string; name: string }>('select oid::text, format_type(oid, null) as name from pg_type where oid = any($1::oid[])', [oids]);
  return new Map(res.rows.map((r) => [Number(r.oid), r.name]));
}

/**
 * Data sync, pure parts: step results are metadata or nothing (a result carrying a row does
 * not parse), the preview's parser fence (PostgreSQL's own grammar), cell sanitizing,
 * model checks, what the control plane may learn of a spec, the service's config, the
 * catalog's subjects, and the pipeline's plan.
 */
import { describe, expect, it } from 'vitest';
import { buildPlan, canonicalJson, checkModel, checkPreviewQuery, copyValue, loadConfig, parquetType, portableType, sanitizeCell, summaryOf } from '@capstan/datasync';
import { catalogStreamConfig, fleetStreamConfig, policyStreamConfig, streamConfigs } from '@capstan/kit';
import { datasyncHandlers } from '@capstan/worker';
import {
  CapstanError,
  ConfigError,
  ErrorCode,
  makeRunId,
  parseCatalogRecord,
  parseEntitySpec,
  parseStepResult,
  PREVIEW_LIMITS,
  Subjects,
  type ModelSpec,
  type QueryRefusedError,
  type TenantId,
} from '@capstan/schemas';

const RESULT = {
  step: 'load',
  rows: 1_255_000,
  bytes: 98_765_432,
  durationMs: 13_045,
  entities: [{ name: 'item', rows: 1_000_000, bytes: 80_000_000, batches: 100, skipped: 3 }],
  full: true,
  ref: 'ds:pg/01m8xmjz2ynfm9rzme3vr7kds1',
};

describe('datasync - step results are metadata only', () => {
  it('a step result with counts, digests and references parses', () => {
    expect(parseStepResult(RESULT)).toEqual(RESULT);
    expect(parseStepResult({ ...RESULT, step: 'retrieve', schemaFingerprint: 'a'.repeat(64) }).schemaFingerprint).toBe('a'.repeat(64));
  });

  it('a result that carries a row, a value or free text fails to parse', () => {
    const smuggled: unknown[] = [
      { ...RESULT, row: { id: 1, name: 'alice' } },
      { ...RESULT, sample: ['alice@example.test'] },
      { ...RESULT, entities: [{ name: 'item', rows: 1, first: { id: 1 } }] },
      { ...RESULT, entities: [{ name: 'alice@example.test', rows: 1 }] },
      { ...RESULT, entities: [{ name: 'has spaces and data', rows: 1 }] },
      { ...RESULT, ref: 'ds:alice@example.test' },
      { ...RESULT, ref: 's3://bucket/key' },
      { ...RESULT, schemaFingerprint: 'not a digest' },
      { ...RESULT, rows: '1000' },
      { ...RESULT, rows: -1 },
      { ...RESULT, entities: Array.from({ length: 65 }, (_, i) => ({ name: `e${i}`, rows: 1 })) },
    ];
    let through = 0;
    for (const r of smuggled) {
      try {
        parseStepResult(r);
        through++;
      } catch (e) {
        expect(CapstanError.is(e) && e.code).toBe(ErrorCode.SchemaViolation);
      }
    }
    process.stdout.write(`step results smuggling data: ${smuggled.length} tried, ${through} parsed\n`);
    expect(through).toBe(0);
  });

  it('the worker refuses a pipeline input that is more than three identifiers, before asking anyone', async () => {
    const handlers = datasyncHandlers({ nc: () => undefined, stallMs: 1000 });
    const ctx = (input: Record<string, unknown>) => ({
      tenant: 'acme' as TenantId,
      runId: makeRunId(0, new Uint8Array(10)),
      workflow: 'datasync.pipeline',
      step: 'retrieve',
      attempt: 1,
      input,
      previous: undefined,
      signal: new AbortController().signal,
      log: undefined as never,
      externalWrite: undefined as never,
    });
    const handler = handlers['datasync.pipeline.retrieve'];
    expect(handler).toBeDefined();
    for (const input of [
      { connection: 'shop', model: 'm', destination: 'd', dsn: 'postgres://u:p@h/db' },
      { connection: 'shop', model: 'm' },
      { connection: 'has space', model: 'm', destination: 'd' },
    ]) {
      let code: string | undefined;
      let retryable: boolean | undefined;
      try {
        await handler?.(ctx(input) as never);
      } catch (e) {
        code = CapstanError.is(e) ? e.code : 'other';
        retryable = CapstanError.is(e) ? e.retryable : undefined;
      }
      expect({ code, retryable }).toEqual({ code: ErrorCode.SchemaViolation, retryable: false });
    }
  });
});

describe('datasync - the preview parser fence', () => {
  const refused = async (q: string) => {
    try {
      await checkPreviewQuery(q);
      return false;
    } catch (e) {
      expect(CapstanError.is(e) && e.code).toBe(ErrorCode.QueryRefused);
      return (e as QueryRefusedError).message;
    }
  };

  it('refuses every statement but one read-only SELECT/WITH', async () => {
    const queries = [
      'SELECT 1; DROP TABLE t',
      'select 1; select 2',
      'WITH d AS (DELETE FROM t RETURNING *) SELECT * FROM d',
      'WITH RECURSIVE r AS (SELECT 1), w AS (INSERT INTO t VALUES (1) RETURNING 1) SELECT * FROM r',
      'with m as (merge into t using s on t.id = s.id when matched then delete returning *) select 1',
      'COPY t TO STDOUT',
      'CALL p()',
      "SELECT nextval('s')",
      "select PG_CATALOG.NEXTVAL('s')",
      "SELECT set_config('a', 'b', false)",
      "select dblink('', 'drop table t')",
      "select * from dblink_exec('', 'x')",
      "select query_to_xml('delete from t', true, true, '')",
      'select pg_advisory_xact_lock(1)',
      "select lo_import('/etc/passwd')",
      'select * from t for share',
      'select * into new_t from t',
      'explain select 1',
      'insert into t values (1)',
      'update t set a = 1',
      'delete from t',
      'truncate t',
      'vacuum t',
      'listen x',
      'notify x',
      'lock table t',
      'prepare p as select 1',
      'execute p',
      'set role postgres',
      'reset all',
      'begin',
      'do $$ begin end $$',
      'create table x (a int)',
      'alter system set fsync = off',
      "select 1 from (select nextval('s')) x",
      "select (select set_config('a', 'b', true))",
      '',
      'select from where',
    ];
    let through = 0;
    for (const q of queries) if ((await refused(q)) === false) through++;
    process.stdout.write(`preview parser fence: ${queries.length} refused-by-design queries, ${through} accepted\n`);
    expect(through).toBe(0);
  });

  it('accepts reads, and hands on the statement the parser delimited', async () => {
    for (const q of [
      'select 1',
      'SELECT * FROM t WHERE a > 1 ORDER BY a LIMIT 10',
      'with x as (select 1 as a) select a from x',
      'select a, count(*) over () from t group by a',
      'select 1 union all select 2',
      "select now(), 'it''s; not two statements' as s",
      'select * from generate_series(1, 10)',
      'select pg_sleep(1)',
      'values (1), (2)',
    ]) {
      const r = await checkPreviewQuery(q);
      expect(r.statement).toBe(q);
      expect(r.fingerprint).toMatch(/^[0-9a-f]+$/);
    }
    expect((await checkPreviewQuery('  select 1 ;  ')).statement.trim()).toBe('select 1');
    expect((await checkPreviewQuery("select 'é中😀' as x;")).statement).toBe("select 'é中😀' as x");
    expect(await refused('select 1; select 2')).toContain('one statement only (found 2)');
    expect(await refused('delete from t')).toContain('found DELETE');
    expect(await refused('WITH d AS (DELETE FROM t RETURNING *) SELECT * FROM d')).toContain('data-modifying DELETE');
  });
});

describe('datasync - cells', () => {
  it('cuts at the limit by code points and cleans control and bidi characters', () => {
    expect(sanitizeCell('plain')).toEqual({ text: 'plain', cut: false });
    expect(sanitizeCell('a\tb\nc\r')).toEqual({ text: 'a b c ', cut: false });
    expect(sanitizeCell('bell\u0007 rtl\u202e x\u0000')).toEqual({ text: 'bell\uFFFD rtl\uFFFD x\uFFFD', cut: false });
    const long = sanitizeCell('😀'.repeat(500));
    expect(long.cut).toBe(true);
    expect(Array.from(long.text)).toHaveLength(PREVIEW_LIMITS.cellChars + 1);
    expect(long.text.endsWith('…')).toBe(true);
    expect(long.text.includes('\uFFFD')).toBe(false);
  });

  it('COPY text, Postgres and Parquet types', () => {
    expect(copyValue(null)).toBe('\\N');
    expect(copyValue('a\tb\nc\\d\r')).toBe('a\\tb\\nc\\\\d\\r');
    expect(portableType('numeric(10,2)')).toBe('numeric(10,2)');
    expect(portableType('timestamp with time zone')).toBe('timestamp with time zone');
    expect(portableType('mood')).toBe('text');
    expect(portableType('"weird""type"')).toBe('text');
    expect([parquetType('integer'), parquetType('bigint'), parquetType('boolean'), parquetType('double precision'), parquetType('numeric(10,2)')]).toEqual([
      'INT32',
      'INT64',
      'BOOLEAN',
      'DOUBLE',
      'STRING',
    ]);
  });
});

const MODEL: ModelSpec = {
  entities: [
    { name: 'customer', source: { table: 'customers' }, key: ['id'], fields: [{ name: 'id', column: 'id' }] },
    {
      name: 'item',
      source: { table: 'items' },
      key: ['order_id', 'line'],
      cursor: 'updated_at',
      fields: [
        { name: 'order_id', column: 'order_id' },
        { name: 'line', column: 'line' },
        { name: 'customer_id', column: 'customer_id' },
      ],
    },
  ],
  associations: [{ name: 'buyer', from: 'item', to: 'customer', fields: ['customer_id'] }],
};

describe('datasync - specs', () => {
  it('a model that names fields, entities or keys that do not exist is refused with every problem', () => {
    expect(() => checkModel(MODEL)).not.toThrow();
    let message = '';
    try {
      checkModel({
        entities: [
          {
            name: 'a',
            source: { table: 't' },
            key: ['nope'],
            fields: [
              { name: 'x', column: 'x' },
              { name: 'x', column: 'y' },
            ],
          },
        ],
        associations: [{ name: 'r', from: 'a', to: 'ghost', fields: ['missing'] }],
      });
    } catch (e) {
      message = (e as Error).message;
    }
    for (const p of ['field names must be unique', 'key field nope is not one of its fields', 'no entity ghost', 'a has no field missing']) expect(message).toContain(p);
  });

  it('specs are closed: a password in a spec is not a field', () => {
    const conn = {
      type: 'postgres',
      host: 'db',
      port: 5432,
      database: 'shop',
      tls: { mode: 'require' },
      auth: { type: 'username_password', username: 'reader', passwordKey: 'SHOP_PW' },
    };
    expect(parseEntitySpec('connection', conn).auth.type).toBe('username_password');
    expect(() => parseEntitySpec('connection', { ...conn, auth: { ...conn.auth, password: 'hunter2' } })).toThrow(/not a known field/);
    expect(() => parseEntitySpec('connection', { ...conn, dsn: 'postgres://u:p@db/shop' })).toThrow(/not a known field/);
    expect(() => parseEntitySpec('destination', { type: 'files', path: '../../etc', format: 'jsonl' })).toThrow();
    expect(() => parseEntitySpec('destination', { type: 'files', path: '/abs', format: 'jsonl' })).toThrow();
    expect(() => parseEntitySpec('model', { entities: [{ name: 'x; drop', source: { table: 't' }, key: ['id'], fields: [] }] })).toThrow();
  });

  it('the control plane learns a type, an auth kind, a TLS mode, counts and names; never a host, user, table or path', () => {
    const conn = parseEntitySpec('connection', {
      type: 'postgres',
      host: 'secret-host.internal',
      port: 5432,
      database: 'secretdb',
      tls: { mode: 'verify-full' },
      auth: { type: 'username_password', username: 'secretuser', passwordKey: 'SHOP_PW' },
    });
    const dest = parseEntitySpec('destination', { type: 'files', path: 'secret/folder', format: 'parquet' });
    const summaries = JSON.stringify([summaryOf('connection', conn), summaryOf('model', MODEL), summaryOf('destination', dest)]);
    for (const s of ['secret-host', 'secretdb', 'secretuser', 'secret/folder', 'customers', 'items']) expect(summaries).not.toContain(s);
    // The secret's name (never its value): what warrants the datasync service's lease.
    expect(summaryOf('connection', conn)).toEqual({ type: 'postgres', auth: 'username_password', tls: 'verify-full', keys: ['SHOP_PW'] });
    const record = {
      kind: 'connection',
      id: 'shop',
      version: 1,
      name: 'Shop',
      status: 'active',
      fingerprint: 'f'.repeat(64),
      summary: summaryOf('connection', conn),
      by: 'alice',
      at: new Date(0).toISOString(),
    };
    expect(parseCatalogRecord(record)).toEqual(record);
    expect(() => parseCatalogRecord({ ...record, summary: { ...record.summary, host: 'x' } })).toThrow(/not a known field/);
  });

  it('canonical JSON: the same spec always has the same digest input', () => {
    expect(canonicalJson({ b: 1, a: [{ d: 2, c: undefined }] })).toBe('{"a":[{"d":2}],"b":1}');
  });

  it('the plan names staging and state tables inside the state schema, short and stable', () => {
    const runId = makeRunId(1_700_000_000_000, new Uint8Array(10));
    const p = buildPlan('acme' as TenantId, runId, 'abcdef012345', MODEL);
    const item = p.byName.get('item');
    expect(item?.columns).toEqual(['order_id', 'line', 'customer_id', 'updated_at']);
    expect(item?.associations).toEqual([{ name: 'buyer', to: 'customer', fields: ['customer_id'], columns: ['buyer'] }]);
    for (const e of p.entities) for (const table of [e.state, e.raw, e.chg, e.mdl, e.res]) expect(table).toMatch(/^"capstan_datasync"\."[a-z0-9_]{1,63}"$/);
    expect(buildPlan('acme' as TenantId, runId, 'abcdef012345', MODEL)).toEqual(p);
    expect(p.byName.get('customer')?.res).toBe(p.byName.get('customer')?.mdl);
  });
});

describe('datasync - config and names', () => {
  it('lists every problem and never echoes a database password', () => {
    let problems: readonly string[] = [];
    try {
      loadConfig({ DATABASE_URL: 'mysql://u:hunter2@db/x', DATASYNC_FILES_ROOT: 'relative', DATASYNC_FETCH_ROWS: '0' });
    } catch (e) {
      expect(e).toBeInstanceOf(ConfigError);
      problems = (e as ConfigError).problems;
    }
    expect(problems.length).toBe(5);
    expect(problems.join('\n')).not.toContain('hunter2');
    const ok = loadConfig({ NATS_URL: 'nats://127.0.0.1:4222', NATS_CREDS: '/x/datasync.creds', DATABASE_URL: 'postgres://capstan@127.0.0.1/capstan' });
    expect({ fetchRows: ok.fetchRows, batchRows: ok.batchRows, concurrency: ok.concurrency, claimTtlMs: ok.claimTtlMs }).toEqual({
      fetchRows: 10_000,
      batchRows: 10_000,
      concurrency: 4,
      claimTtlMs: 3_600_000,
    });
  });

  it("catalog subjects are captured by the catalog stream alone, and by no other tenant's", () => {
    const match = (filter: string, subject: string) => {
      const f = filter.split('.');
      const s = subject.split('.');
      for (let i = 0; i < f.length; i++) {
        if (f[i] === '>') return s.length > i;
        if (f[i] !== '*' && f[i] !== s[i]) return false;
      }
      return f.length === s.length;
    };
    const t = 'acme' as TenantId;
    const other = 'acme-2' as TenantId;
    for (const subject of [Subjects.catalog(t, 'connection', 'shop'), Subjects.catalog(t, 'model', 'm-1'), Subjects.catalog(t, 'destination', 'lake_2')]) {
      const capturing = [...streamConfigs(t), fleetStreamConfig(t), policyStreamConfig(t), catalogStreamConfig(t), ...streamConfigs(other), catalogStreamConfig(other)].filter(
        (c) => (c.subjects ?? []).some((f) => match(f, subject)),
      );
      expect(capturing.map((c) => c.name)).toEqual([catalogStreamConfig(t).name]);
    }
    expect(() => Subjects.catalog(t, 'connection', 'a.b')).toThrow();
    expect(Subjects.datasync(t, 'preview')).toBe('cap.acme.svc.datasync.preview');
  });
});

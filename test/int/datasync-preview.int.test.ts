/**
 * The bounded preview, against a real source through the datasync service: every query
 * that could write, lock, wait or reach outside is refused before it reaches the source (or,
 * past the parser, by the source's read-only transaction and statement timeout), and what
 * comes back is at most 100 rows and 64 columns of cut, cleaned cells. Each attack is
 * played and its outcome counted; the counts are printed and what got through must be zero.
 */
import { afterAll, beforeAll, describe, expect, inject, it } from 'vitest';
import { sql } from 'drizzle-orm';
import { previewQuery, queryRows, type Signer } from '@capstan/kit';
import { CapstanError, ErrorCode, PREVIEW_LIMITS, type TenantId } from '@capstan/schemas';
import { runCli, type Harness } from '../harness/fixtures.js';
import { datasyncFixture, defineCatalog, type DatasyncFixture, type Source, type Stack } from '../harness/datasync.js';

describe('the bounded preview', () => {
  let f: DatasyncFixture;
  let h: Harness;
  let t: TenantId;
  let src: Source;
  let stack: Stack;

  beforeAll(async () => {
    f = await datasyncFixture(inject('natsUrl'), 'dsp', { items: 1000 });
    ({ h, t, src, stack } = f);
    // A wide table: 80 columns, 500 rows, long cells, control and bidi characters.
    const cols = Array.from({ length: 80 }, (_, i) => `c${i} text`).join(', ');
    await src.query(`create table wide (id int primary key, ${cols})`);
    const vals = Array.from({ length: 80 }, (_, i) => (i === 0 ? `repeat('x', 1000)` : i === 1 ? `E'bell\\u0007 rtl\\u202e evil'` : `'v' || g || '-${i}'`)).join(', ');
    await src.query(`insert into wide select g, ${vals} from generate_series(1, 500) g`);
    await src.query(`create sequence s; create table t (id int); insert into t values (1), (2)`);
    await src.query(`create function evil() returns int language sql as 'insert into t values (99) returning 1'`);
    await src.query(`create procedure p() language sql as 'insert into t values (98)'`);
    await defineCatalog(await h.nc(t), t, src, { password: 'unused-by-trust-auth', destinations: {}, signer: (await h.tenant(t)).signer });
  }, 120_000);

  afterAll(async () => {
    await f?.close();
  }, 60_000);

  const preview = async (q: string, timeoutMs?: number) =>
    previewQuery(await h.nc(t), t, { connection: 'shop', sql: q, by: 'alice', ...(timeoutMs ? { timeoutMs } : {}) }, { signer: (await h.tenant(t)).signer as Signer });
  async function codeOf(q: string, timeoutMs?: number): Promise<string> {
    try {
      await preview(q, timeoutMs);
      return 'answered';
    } catch (e) {
      return CapstanError.is(e) ? e.code : 'other';
    }
  }

  it('refuses every query that could write, lock, wait or reach outside; the source is unchanged', async () => {
    const before = await src.query<{ n: string; s: string }>(`select (select count(*) from t) as n, (select last_value from s)::text as s`);
    const attacks: [string, string][] = [
      ['SELECT 1; DROP TABLE t', ErrorCode.QueryRefused],
      ['WITH d AS (DELETE FROM t RETURNING *) SELECT * FROM d', ErrorCode.QueryRefused],
      ['with i as (insert into t values (5) returning *) select * from i', ErrorCode.QueryRefused],
      ['with u as (update t set id = 0 returning *) select 1', ErrorCode.QueryRefused],
      ['COPY t TO STDOUT', ErrorCode.QueryRefused],
      ["COPY (select 1) TO '/tmp/capstan-preview-copy'", ErrorCode.QueryRefused],
      ['CALL p()', ErrorCode.QueryRefused],
      ["SELECT nextval('s')", ErrorCode.QueryRefused],
      ["select pg_catalog.nextval('s'::regclass)", ErrorCode.QueryRefused],
      ["select setval('s', 100)", ErrorCode.QueryRefused],
      ["SELECT set_config('statement_timeout', '0', false)", ErrorCode.QueryRefused],
      ["select * from t where id = (select set_config('a.b', 'c', false))::int", ErrorCode.QueryRefused],
      ["SELECT dblink('host=127.0.0.1 dbname=postgres', 'drop table t')", ErrorCode.QueryRefused],
      ["select dblink_exec('host=127.0.0.1', 'delete from t')", ErrorCode.QueryRefused],
      ["select query_to_xml('delete from t returning 1', true, true, '')", ErrorCode.QueryRefused],
      ['select pg_advisory_lock(1)', ErrorCode.QueryRefused],
      ["select lo_import('/etc/passwd')", ErrorCode.QueryRefused],
      ["select pg_read_file('/etc/passwd')", ErrorCode.QueryRefused],
      ["select pg_notify('x', 'y')", ErrorCode.QueryRefused],
      ['select pg_terminate_backend(1)', ErrorCode.QueryRefused],
      ['select * from t for update', ErrorCode.QueryRefused],
      ['select * into t2 from t', ErrorCode.QueryRefused],
      ['explain analyze delete from t', ErrorCode.QueryRefused],
      ['delete from t', ErrorCode.QueryRefused],
      ['drop table t', ErrorCode.QueryRefused],
      ['begin; delete from t; commit', ErrorCode.QueryRefused],
      ['do $$ begin delete from t; end $$', ErrorCode.QueryRefused],
      ['set statement_timeout = 0', ErrorCode.QueryRefused],
      ['select from where', ErrorCode.QueryRefused],
      ['', ErrorCode.SchemaViolation],
      // Past the parser (a function of the tenant's that writes): the read-only transaction refuses it.
      ['select evil()', ErrorCode.SourceFailed],
      ['SELECT pg_sleep(60)', ErrorCode.QueryTimeout],
    ];
    const outcomes: Record<string, number> = {};
    let through = 0;
    const t0 = performance.now();
    for (const [q, want] of attacks) {
      const code = await codeOf(q, q.includes('pg_sleep') ? 1000 : undefined);
      outcomes[code] = (outcomes[code] ?? 0) + 1;
      if (code !== want) {
        through++;
        process.stdout.write(`  unexpected: ${JSON.stringify(q)} → ${code} (wanted ${want})\n`);
      }
    }
    const after = await src.query<{ n: string; s: string }>(`select (select count(*) from t) as n, (select last_value from s)::text as s`);
    const tables = await src.query<{ n: string }>(`select count(*) as n from pg_tables where tablename in ('t', 't2')`);
    process.stdout.write(
      `preview attacks: ${attacks.length} played in ${Math.round(performance.now() - t0)} ms, outcomes ${JSON.stringify(outcomes)}, not refused as expected: ${through}\n`,
    );
    expect(through).toBe(0);
    expect(after).toEqual(before);
    expect(tables[0]?.n).toBe('1');
  }, 120_000);

  it('pg_sleep past its timeout is cancelled by the source within the timeout', async () => {
    const t0 = performance.now();
    expect(await codeOf('SELECT pg_sleep(60)', 500)).toBe(ErrorCode.QueryTimeout);
    expect(performance.now() - t0).toBeLessThan(5000);
  });

  it('a wide table comes back as at most 100 rows and 64 columns of cut, cleaned cells', async () => {
    const r = await preview('select * from wide order by id');
    expect(r.rows.length).toBe(PREVIEW_LIMITS.rows);
    expect(r.columns.length).toBe(PREVIEW_LIMITS.columns);
    expect(r.truncated).toBe(true);
    expect(r.cellsTruncated).toBe(PREVIEW_LIMITS.rows);
    const longest = Math.max(...r.rows.flat().map((c) => (c === null ? 0 : Array.from(c).length)));
    expect(longest).toBe(PREVIEW_LIMITS.cellChars + 1);
    const bell = r.rows[0]?.[2];
    expect(bell).toBe('bell\uFFFD rtl\uFFFD evil');
    expect(r.columns[0]).toEqual({ name: 'id', type: 'integer' });
    expect(r.fingerprint).toMatch(/^[0-9a-f]+$/);
    // A WITH that only reads is a SELECT.
    const w = await preview('with o as (select id, status from orders where id <= 3) select * from o order by id');
    expect(w.rows).toEqual([
      ['1', 'paid'],
      ['2', 'shipped'],
      ['3', 'new'],
    ]);
    expect(w.truncated).toBe(false);
  });

  it('each preview is audited with its fingerprint and outcome, never its text or rows', async () => {
    const rows = await queryRows<{ actor: string; detail: Record<string, unknown> }>(
      stack.db,
      sql`select actor, detail from audit_log where tenant = ${t} and kind = 'datasync.preview'`,
    );
    expect(rows.length).toBeGreaterThan(30);
    expect(rows.every((r) => r.actor === 'alice' && r.detail['connection'] === 'shop')).toBe(true);
    const text = JSON.stringify(rows);
    expect(text.includes('DROP TABLE')).toBe(false);
    expect(text.includes('v1-3')).toBe(false);
    expect(rows.some((r) => r.detail['code'] === ErrorCode.QueryRefused)).toBe(true);
  });

  it('the CLI shows the preview table, and refuses with the code', async () => {
    const env = { NATS_URL: inject('natsUrl') };
    const ok = await runCli(['datasync', 'preview', '--tenant', t, '--connection', 'shop', '--sql', 'select id, status from orders order by id limit 2'], env);
    expect(ok.code).toBe(0);
    expect(ok.out).toContain('status');
    expect(ok.out).toContain('shipped');
    const refused = await runCli(['datasync', 'preview', '--tenant', t, '--connection', 'shop', '--sql', 'SELECT 1; DROP TABLE t'], env);
    expect(refused.code).toBe(1);
    expect(refused.err).toContain('query_refused');
  });
});

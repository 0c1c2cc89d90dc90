/**
 * Data-sync pipelines end to end, on real parts: a generated source database (four tables
 * with foreign keys, `DATASYNC_TEST_ITEMS` rows in the largest, 1,000,000 by default), the
 * datasync service with credentials leased from the secrets-lease service, the built-in
 * `datasync.pipeline` workflow run by an orchestrator and a worker, the projector.
 *
 * - a full run into a Postgres schema and one into JSONL files: each destination equals
 *   the model computed from the source by SQL (no row missing, none extra);
 * - a second run after 1 % of the items (and some orders and customers) changed moves only
 *   the changed rows, and the destinations still equal the model;
 * - canaries: the password, the source database's name and a source row's values appear
 *   in no event, command, work item, catalog record, projection or log line.
 */
import { randomBytes } from 'node:crypto';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, inject, it } from 'vitest';
import { sql } from 'drizzle-orm';
import type { Subscription } from '@nats-io/transport-node';
import { queryRows } from '@capstan/kit';
import { parseStepResult, PIPELINE_WORKFLOW, Streams, type DatasyncStepResult, type RunEvent, type TenantId } from '@capstan/schemas';
import { eventsOf, type Harness } from '../harness/fixtures.js';
import { datasyncFixture, defineCatalog, filesDifferences, postgresDifferences, type DatasyncFixture, type Source, type Stack } from '../harness/datasync.js';

const ITEMS = Number(process.env['DATASYNC_TEST_ITEMS'] ?? 1_000_000);
const RUN_TIMEOUT_MS = 8 * 60_000;

describe(`data-sync pipelines over a ${ITEMS.toLocaleString('en')}-row table`, () => {
  let f: DatasyncFixture;
  let h: Harness;
  let t: TenantId;
  let src: Source;
  let stack: Stack;
  let filesRoot: string;
  let tap: Subscription | undefined;
  const wire: { subject: string; data: Buffer }[] = [];
  const password = `CANARY-PW-${randomBytes(8).toString('hex')}`;
  const canaryRow = `CANARY-ROW-${randomBytes(8).toString('hex')}`;

  beforeAll(async () => {
    f = await datasyncFixture(inject('natsUrl'), 'ds', {
      items: ITEMS,
      canaryRow,
      // Everything on the wire of the tenant, from the start.
      beforeStack: async (hh, tt) => {
        tap = (await hh.nc(tt)).subscribe(`cap.${tt}.>`, { callback: (_e, m) => void wire.push({ subject: m.subject, data: Buffer.from(m.data) }) });
      },
    });
    ({ h, t, src, stack, filesRoot } = f);
    await defineCatalog(await h.nc(t), t, src, {
      signer: (await h.tenant(t)).signer,
      password,
      destinations: { warehouse: { type: 'postgres', connection: 'shop', schema: 'warehouse' }, lake: { type: 'files', path: 'lake/shop', format: 'jsonl', batchRows: 50_000 } },
    });
  }, 300_000);

  afterAll(async () => {
    tap?.unsubscribe();
    await f?.close();
  }, 120_000);

  async function runPipeline(destination: string): Promise<{ events: RunEvent[]; results: Record<string, DatasyncStepResult>; ms: number }> {
    const t0 = performance.now();
    const runId = await h.client.submit(t, PIPELINE_WORKFLOW, { input: { connection: 'shop', model: 'shop-model', destination } });
    const end = await h.client.waitForEnd(t, runId, RUN_TIMEOUT_MS);
    const ms = Math.round(performance.now() - t0);
    const events = await eventsOf(h, t, runId);
    if (end.type !== 'run.completed') throw new Error(`run ${runId} ended ${end.type}: ${JSON.stringify(end.data)}`);
    const results: Record<string, DatasyncStepResult> = {};
    for (const e of events) if (e.type === 'step.completed') results[(e.data as { step: string }).step] = parseStepResult((e.data as { result: unknown }).result);
    process.stdout.write(
      `${destination}: run ${runId} in ${ms} ms; ${Object.entries(results)
        .map(([s, r]) => `${s} ${r.rows} rows ${r.durationMs} ms`)
        .join(', ')}\n`,
    );
    return { events, results, ms };
  }

  const expectedCounts = async () =>
    Object.fromEntries(
      await Promise.all(
        ['customers', 'products', 'orders', 'order_items'].map(async (tb) => [tb, Number((await src.query<{ n: string }>(`select count(*) as n from ${tb}`))[0]?.n)] as const),
      ),
    );

  it(
    'a full run into a Postgres schema: the destination equals the model of the source',
    async () => {
      const { results } = await runPipeline('warehouse');
      const counts = await expectedCounts();
      const total = counts['customers']! + counts['products']! + counts['orders']! + counts['order_items']!;
      expect(results['retrieve']?.rows).toBe(total);
      expect(results['retrieve']?.full).toBe(true);
      expect(results['retrieve']?.schemaFingerprint).toMatch(/^[0-9a-f]{64}$/);
      expect(results['load']?.rows).toBe(total);
      expect(results['resolve']?.entities.find((e) => e.name === 'item')?.dangling).toBe(0);
      expect(results['resolve']?.entities.find((e) => e.name === 'item')?.resolved).toBe(2 * counts['order_items']!);
      const diff = await postgresDifferences(src, 'warehouse');
      process.stdout.write(`warehouse vs model: ${JSON.stringify(diff)}\n`);
      for (const d of Object.values(diff)) expect({ missing: d.missing, extra: d.extra }).toEqual({ missing: 0, extra: 0 });
      expect(diff['item']?.rows).toBe(counts['order_items']);
    },
    RUN_TIMEOUT_MS,
  );

  it(
    'a full run into JSONL files: the folded files equal the model of the source',
    async () => {
      const { results } = await runPipeline('lake');
      expect(results['load']?.entities.find((e) => e.name === 'item')?.batches).toBe(Math.ceil(src.items / 50_000));
      const diff = await filesDifferences(src, join(filesRoot, t, 'lake/shop'));
      process.stdout.write(`lake vs model: ${JSON.stringify(diff)}\n`);
      for (const d of Object.values(diff.entities)) expect({ missing: d.missing, extra: d.extra }).toEqual({ missing: 0, extra: 0 });
      expect(diff.duplicatesInRun).toBe(0);
      expect(diff.tempFiles).toBe(0);
    },
    RUN_TIMEOUT_MS,
  );

  it(
    'a second run after 1 % of the rows changed moves only the changes',
    async () => {
      const items = Number((await src.query<{ n: string }>('select count(*) as n from order_items'))[0]?.n);
      // 1 % of the items change; 10 orders change status; 5 new customers; one customer is
      // touched without any change (its cursor moves, its values do not: Refresh drops it).
      await src.query(`update order_items set qty = qty + 1, updated_at = now() where (order_id * 5 + line) % 100 = 0`);
      await src.query(`update orders set status = 'cancelled', updated_at = now() where id <= 10`);
      const maxCustomer = Number((await src.query<{ n: string }>('select max(id) as n from customers'))[0]?.n);
      await src.query(`insert into customers select g, 'new customer ' || g, null, 'nl', now() from generate_series($1::bigint + 1, $1::bigint + 5) g`, [maxCustomer]);
      await src.query(`update customers set updated_at = now() where id = 2`);
      const changedItems = Number((await src.query<{ n: string }>('select count(*) as n from order_items where (order_id * 5 + line) % 100 = 0'))[0]?.n);
      expect(changedItems).toBe(items / 100);
      const moved = changedItems + 10 + 5;
      for (const destination of ['warehouse', 'lake']) {
        const { results, ms } = await runPipeline(destination);
        process.stdout.write(`incremental run into ${destination} after ${changedItems} item changes: ${ms} ms\n`);
        expect(results['retrieve']?.full).toBe(false);
        // Retrieved past the cursors: the changed rows and the touched customer.
        expect(results['retrieve']?.rows).toBe(moved + 1);
        expect(results['refresh']?.rows).toBe(moved);
        expect(results['refresh']?.entities.find((e) => e.name === 'customer')?.unchanged).toBe(1);
        expect(results['load']?.rows).toBe(moved);
      }
      const diff = await postgresDifferences(src, 'warehouse');
      for (const d of Object.values(diff)) expect({ missing: d.missing, extra: d.extra }).toEqual({ missing: 0, extra: 0 });
      const files = await filesDifferences(src, join(filesRoot, t, 'lake/shop'));
      expect(files.runs).toBe(2);
      for (const d of Object.values(files.entities)) expect({ missing: d.missing, extra: d.extra }).toEqual({ missing: 0, extra: 0 });
    },
    2 * RUN_TIMEOUT_MS,
  );

  it('no password, DSN part or source row in any event, command, work item, catalog record, projection or log', async () => {
    const email = (await src.query<{ email: string }>('select email from customers where id = 1'))[0]?.email as string;
    const canaries = [password, canaryRow, src.database, email, 'tab\there'];
    // Requests to the data plane carry specs (the put) and the preview's answer carries rows:
    // neither is control-plane state. Everything else on the tenant's subjects is searched.
    const searched = wire.filter((m) => !/\.svc\.(datasync|secrets)\./.test(m.subject) && !m.subject.startsWith('_INBOX'));
    const stored: Buffer[] = [];
    for (const stream of [Streams.runs(t), Streams.catalog(t), Streams.deadLetters(t)]) {
      const info = await (await h.jsm(t)).streams.info(stream);
      for (let seq = info.state.first_seq; seq <= info.state.last_seq && info.state.messages > 0; seq++) {
        const m = await (await h.jsm(t)).streams.getMessage(stream, { seq }).catch(() => null);
        if (m) stored.push(Buffer.from(m.data));
      }
    }
    // Every projection table (the control plane's), as text.
    const tables = (
      await queryRows<{ t: string }>(
        stack.db,
        sql`select tablename as t from pg_tables where schemaname = 'public' and tablename not in ('datasync_specs', 'secrets', 'secret_data_keys', 'leases', 'lease_revocations', 'datasync_run_steps', 'datasync_pipelines')`,
      )
    ).map((r) => r.t);
    let projection = '';
    for (const table of tables) projection += JSON.stringify(await queryRows(stack.db, sql.raw(`select * from "${table}"`)));
    const logs = stack.logs.join('');
    const found: Record<string, number> = { wire: 0, streams: 0, projections: 0, logs: 0 };
    for (const c of canaries) {
      const forms = [c, Buffer.from(c).toString('base64'), Buffer.from(c).toString('hex')];
      for (const f of forms) {
        found['wire']! += searched.filter((m) => m.data.includes(f)).length;
        found['streams']! += stored.filter((d) => d.includes(f)).length;
        if (projection.includes(f)) found['projections']!++;
        if (logs.includes(f)) found['logs']!++;
      }
    }
    process.stdout.write(
      `canaries (${canaries.length}, 3 forms each) found: ${JSON.stringify(found)} in ${searched.length} messages on the wire, ${stored.length} stored, ${tables.length} tables, ${logs.length} bytes of logs\n`,
    );
    expect(searched.length).toBeGreaterThan(50);
    expect(logs.length).toBeGreaterThan(1000);
    expect(found).toEqual({ wire: 0, streams: 0, projections: 0, logs: 0 });
    // The catalog reached the control plane as records, with their audit rows.
    const entities = await queryRows<{ kind: string; id: string }>(stack.db, sql`select kind, id from datasync_entities where tenant = ${t} order by kind, id`);
    expect(entities.map((e) => `${e.kind}:${e.id}`)).toEqual(['connection:shop', 'destination:lake', 'destination:warehouse', 'model:shop-model']);
    const audit = await queryRows<{ kind: string }>(stack.db, sql`select kind from audit_log where tenant = ${t} and run_id like 'catalog:%' order by kind`);
    expect(audit.map((a) => a.kind)).toEqual(['datasync.connection.created', 'datasync.destination.created', 'datasync.destination.created', 'datasync.model.created']);
  }, 120_000);
});

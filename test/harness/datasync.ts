/**
 * Data-sync fixtures: a generated source (customers, products, orders, order items with
 * foreign keys; `items` rows in the largest table), the model over it, the same model
 * computed by SQL straight from the source (what a destination must equal), and a whole
 * stack in this process (orchestrator, worker, projector, secrets-lease, datasync) whose
 * logs are kept, for canary searches.
 */
import { createHash, randomBytes } from 'node:crypto';
import { existsSync, mkdtempSync, readdirSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Writable } from 'node:stream';
import pg from 'pg';
import { createRegistry } from '@capstan/actors';
import { createLogger, openDatabase, putEntity, putSecret, type Database, type Logger, type NatsConnection, type Signer } from '@capstan/kit';
import { CatalogKind, Role, type ModelSpec, type RunId, type ServiceRole, type TenantId } from '@capstan/schemas';
import { scratchDatabase } from './postgres.js';
import { connect, issueCreds, provision, serviceEnv, TEST_DEFAULTS, type Harness } from './fixtures.js';

export interface Source {
  readonly url: string;
  readonly database: string;
  readonly items: number;
  query<T extends pg.QueryResultRow = Record<string, unknown>>(text: string, values?: unknown[]): Promise<T[]>;
  drop(): Promise<void>;
}

/** A text that COPY, JSON and Parquet must all carry through unchanged. */
export const AWKWARD = 'tab\there, newline\nthere, back\\slash, quote " and \u00e9\u4e2d\u{1f600}';

/**
 * A scratch database with four tables: customers (items/20), products (items/200), orders
 * (items/5, → customers), order_items (items, → orders and products, key (order_id, line)).
 * `canaryRow` is the name of one customer: it must reach the destination and nothing else.
 */
export async function createSource(prefix: string, items: number, canaryRow: string): Promise<Source> {
  const scratch = await scratchDatabase(prefix);
  // Times as the datasync service writes them (UTC), so the model's JSON text is the files'.
  const pool = new pg.Pool({ connectionString: scratch.url, max: 4, options: '-c TimeZone=UTC' });
  // Dropping the database ends its sessions: an idle one's end is not a failure.
  pool.on('error', () => undefined);
  const customers = Math.max(2, Math.floor(items / 20));
  const products = Math.max(2, Math.floor(items / 200));
  const orders = Math.max(1, Math.floor(items / 5));
  await pool.query(`
    create table customers (id bigint primary key, name text not null, email text, country text, updated_at timestamptz not null);
    create table products (id integer primary key, name text not null, price numeric(10,2), updated_at timestamptz not null);
    create table orders (id bigint primary key, customer_id bigint not null references customers(id), status text not null, placed_at timestamptz not null, updated_at timestamptz not null);
    create table order_items (order_id bigint not null references orders(id), line integer not null, product_id integer not null references products(id),
                              qty integer not null, note text, updated_at timestamptz not null, primary key (order_id, line));
    insert into customers select g, 'customer ' || g, 'c' || g || '@example.test', (array['fr','de','us','jp'])[1 + g % 4], timestamptz '2024-01-01' + g * interval '1 ms' from generate_series(1, ${customers}) g;
    insert into products select g, 'product ' || g, (g % 1000) / 7.0, timestamptz '2024-01-01' + g * interval '1 ms' from generate_series(1, ${products}) g;
    insert into orders select g, 1 + g % ${customers}, (array['new','paid','shipped'])[1 + g % 3], timestamptz '2024-02-01' + g * interval '1 s', timestamptz '2024-01-01' + g * interval '1 ms' from generate_series(1, ${orders}) g;
    insert into order_items select o, l, 1 + (o * 7 + l) % ${products}, 1 + (o + l) % 5, case when (o + l) % 10 = 0 then null when (o + l) % 10 = 1 then $awk$${AWKWARD}$awk$ else 'note ' || o || '/' || l end,
                                   timestamptz '2024-01-01' + (o * 5 + l) * interval '1 ms'
      from generate_series(1, ${orders}) o, generate_series(1, 5) l;
    update customers set name = $canary$${canaryRow}$canary$ where id = 1;
    analyze;
  `);
  return {
    url: scratch.url,
    database: new URL(scratch.url).pathname.slice(1),
    items: orders * 5,
    query: async (text, values) => (await pool.query(text, values)).rows,
    async drop() {
      await pool.end();
      await scratch.drop();
    },
  };
}

/** The model the tests sync: four entities, one composite key, three associations, one cast. */
export const MODEL: ModelSpec = {
  entities: [
    {
      name: 'customer',
      source: { table: 'customers' },
      key: ['id'],
      cursor: 'updated_at',
      fields: [
        { name: 'id', column: 'id' },
        { name: 'name', column: 'name' },
        { name: 'email', column: 'email' },
        { name: 'country', column: 'country' },
      ],
    },
    {
      name: 'product',
      source: { schema: 'public', table: 'products' },
      key: ['id'],
      cursor: 'updated_at',
      fields: [
        { name: 'id', column: 'id' },
        { name: 'title', column: 'name' },
        { name: 'price', column: 'price' },
      ],
    },
    {
      name: 'order',
      source: { table: 'orders' },
      key: ['id'],
      cursor: 'updated_at',
      fields: [
        { name: 'id', column: 'id' },
        { name: 'customer_id', column: 'customer_id' },
        { name: 'status', column: 'status' },
        { name: 'placed_at', column: 'placed_at' },
      ],
    },
    {
      name: 'item',
      source: { table: 'order_items' },
      key: ['order_id', 'line'],
      cursor: 'updated_at',
      fields: [
        { name: 'order_id', column: 'order_id' },
        { name: 'line', column: 'line' },
        { name: 'product_id', column: 'product_id' },
        { name: 'qty', column: 'qty', type: 'bigint' },
        { name: 'note', column: 'note' },
      ],
    },
  ],
  associations: [
    { name: 'customer', from: 'order', to: 'customer', fields: ['customer_id'] },
    { name: 'parent_order', from: 'item', to: 'order', fields: ['order_id'] },
    { name: 'product', from: 'item', to: 'product', fields: ['product_id'] },
  ],
};

/** The model computed from the source by SQL: per entity, its columns in the destination's order, and its key. */
export const EXPECTED: Record<string, { sql: string; key: string[] }> = {
  customer: { sql: 'select id, name, email, country from customers', key: ['id'] },
  product: { sql: 'select id, name as title, price from products', key: ['id'] },
  order: {
    sql: 'select o.id, o.customer_id, o.status, o.placed_at, case when exists (select 1 from customers c where c.id = o.customer_id) then o.customer_id end as customer from orders o',
    key: ['id'],
  },
  item: {
    sql: `select i.order_id, i.line, i.product_id, i.qty::bigint as qty, i.note,
                 case when exists (select 1 from orders o where o.id = i.order_id) then i.order_id end as parent_order,
                 case when exists (select 1 from products p where p.id = i.product_id) then i.product_id end as product
            from order_items i`,
    key: ['order_id', 'line'],
  },
};

/**
 * A multiset digest of texts: their count and the sum of the first 60 bits of each one's md5
 * (order-free, one scan), in SQL over `select <text> from …`.
 */
const digestSql = (texts: string) => `select count(*)::text as n, coalesce(sum(('x' || substr(md5(t), 1, 15))::bit(60)::bigint::numeric), 0)::text as s from (${texts}) q(t)`;

/** The same digest of one text, in JavaScript. */
const digestOf = (text: string) => BigInt(`0x${createHash('md5').update(text).digest('hex').slice(0, 15)}`);

/** `exact`: counted by EXCEPT ALL after the digests differed. */
type Difference = { missing: number; extra: number; rows: number; exact?: true };

/**
 * Rows in one and not the other, both ways, for a destination schema in the source's own
 * database. Compared by digests first (one scan each side); only a mismatch pays for the
 * exact count (EXCEPT ALL).
 */
export async function postgresDifferences(src: Source, schema: string): Promise<Record<string, Difference>> {
  const out: Record<string, Difference> = {};
  for (const [entity, e] of Object.entries(EXPECTED)) {
    const cols = (
      await src.query<{ c: string }>(
        `select string_agg(quote_ident(column_name), ', ' order by ordinal_position) as c from information_schema.columns where table_schema = $1 and table_name = $2 and column_name not like '\\_capstan%'`,
        [schema, entity],
      )
    )[0]?.c;
    const dest = `select row(x.*)::text from (select ${cols} from "${schema}"."${entity}") x`;
    const expected = `select row(x.*)::text from (${e.sql}) x`;
    const [a] = await src.query<{ n: string; s: string }>(digestSql(expected));
    const [b] = await src.query<{ n: string; s: string }>(digestSql(dest));
    if (a?.n === b?.n && a?.s === b?.s) {
      out[entity] = { missing: 0, extra: 0, rows: Number(b?.n) };
      continue;
    }
    const [r] = await src.query<{ missing: string; extra: string }>(
      `select (select count(*) from ((${expected}) except all (${dest})) m) as missing, (select count(*) from ((${dest}) except all (${expected})) x) as extra`,
    );
    out[entity] = { missing: Number(r?.missing), extra: Number(r?.extra), rows: Number(b?.n), exact: true };
  }
  return out;
}

/**
 * A JSONL destination folded as a reader would (complete runs in order, last record of a key
 * wins, a full run replaces what came before) and compared with the model: each line is
 * Postgres's `row_to_json` of a record, so the model's own `row_to_json` lines must have the
 * same digest. Also counts keys written twice within one run (a retried load's duplicates)
 * and leftover temporary files. A mismatch is counted exactly in Postgres.
 */
export async function filesDifferences(src: Source, dir: string): Promise<{ entities: Record<string, Difference>; duplicatesInRun: number; tempFiles: number; runs: number }> {
  const runs = readdirSync(join(dir, '_runs'))
    .filter((f) => f.endsWith('.json'))
    .sort();
  const manifests = runs.map((f) => JSON.parse(readFileSync(join(dir, '_runs', f), 'utf8')) as { runId: string; full: boolean });
  const fromRun = manifests.reduce((at, m, i) => (m.full ? i : at), 0);
  const live = manifests.slice(fromRun).map((m) => m.runId);
  const entities: Record<string, Difference> = {};
  let duplicatesInRun = 0;
  let tempFiles = 0;
  for (const [entity, e] of Object.entries(EXPECTED)) {
    const files = existsSync(join(dir, entity)) ? readdirSync(join(dir, entity)).sort() : [];
    tempFiles += files.filter((f) => f.includes('.tmp-')).length;
    const folded = new Map<string, { digest: bigint; line: string }>();
    for (const runId of live) {
      const seen = new Set<string>();
      for (const f of files.filter((x) => x.startsWith(`${runId}-`) && x.endsWith('.jsonl'))) {
        for (const line of readFileSync(join(dir, entity, f), 'utf8').split('\n')) {
          if (!line) continue;
          const doc = JSON.parse(line) as Record<string, unknown>;
          const key = e.key.map((k) => String(doc[k])).join('/');
          if (seen.has(key)) duplicatesInRun++;
          seen.add(key);
          folded.set(key, { digest: digestOf(line), line });
        }
      }
    }
    let sum = 0n;
    for (const v of folded.values()) sum += v.digest;
    const [want] = await src.query<{ n: string; s: string }>(digestSql(`select row_to_json(x)::text from (${e.sql}) x`));
    if (want?.n === String(folded.size) && want.s === sum.toString()) {
      entities[entity] = { missing: 0, extra: 0, rows: folded.size };
      continue;
    }
    const client = new pg.Client({ connectionString: src.url });
    await client.connect();
    try {
      await client.query('create temp table lines (doc jsonb)');
      const docs = [...folded.values()].map((v) => v.line);
      for (let j = 0; j < docs.length; j += 5000) await client.query('insert into lines select d::jsonb from unnest($1::text[]) d', [docs.slice(j, j + 5000)]);
      const expected = `select to_jsonb(x) as doc from (${e.sql}) x`;
      const [r] = (
        await client.query<{ missing: string; extra: string }>(
          `select (select count(*) from ((${expected}) except all (select doc from lines)) m) as missing, (select count(*) from ((select doc from lines) except all (${expected})) x) as extra`,
        )
      ).rows;
      entities[entity] = { missing: Number(r?.missing), extra: Number(r?.extra), rows: folded.size, exact: true };
    } finally {
      await client.end();
    }
  }
  return { entities, duplicatesInRun, tempFiles, runs: live.length };
}

/** Everything a logger writes, kept. */
export function capturingLogger(name: string, sink: string[]): Logger {
  const out = new Writable({
    write(chunk: Buffer, _enc, cb) {
      sink.push(chunk.toString());
      cb();
    },
  });
  return createLogger(name, 'trace', out);
}

export interface Stack {
  readonly db: Database;
  readonly logs: string[];
  stop(): Promise<void>;
}

/**
 * Orchestrator, worker, projector, secrets-lease and (unless `datasync: false`) datasync in
 * this process, for one tenant, all logging at trace level into `logs`.
 */
export async function startStack(
  natsUrl: string,
  t: TenantId,
  databaseUrl: string,
  filesRoot: string,
  opts: { datasync?: boolean; env?: Record<string, string> } = {},
): Promise<Stack> {
  const { createOrchestrator, loadConfig: orchConfig } = await import('@capstan/orchestrator');
  const { createWorker, loadConfig: workerConfig } = await import('@capstan/worker');
  const { createProjector, loadConfig: projectorConfig } = await import('@capstan/projector');
  const { createSecretsLease, loadConfig: secretsConfig } = await import('@capstan/secrets-lease');
  const { createDatasync, loadConfig: datasyncConfig } = await import('@capstan/datasync');
  const { workflows, handlers } = await import('../fixtures/workflows.js');
  const logs: string[] = [];
  const env = { NATS_URL: natsUrl, CAPSTAN_TENANTS: t, DATABASE_URL: databaseUrl, ...TEST_DEFAULTS, ...opts.env };
  // Each service with its own credential, as in production.
  const as = async (role: ServiceRole, extra: Record<string, string> = {}) => ({ ...(await serviceEnv(natsUrl, role)), ...env, ...extra });
  const secrets = await createSecretsLease(
    secretsConfig(await as(Role.SecretsLease, { SECRETS_MASTER_KEY: randomBytes(32).toString('base64') })),
    capturingLogger('secrets-lease', logs),
  );
  await secrets.start();
  const projector = await createProjector(projectorConfig(await as(Role.Projector)), capturingLogger('projector', logs));
  await projector.start();
  const datasync =
    opts.datasync === false ? undefined : await createDatasync(datasyncConfig(await as(Role.Datasync, { DATASYNC_FILES_ROOT: filesRoot })), capturingLogger('datasync', logs));
  await datasync?.start();
  const orch = await createOrchestrator(orchConfig(await as(Role.Orchestrator)), capturingLogger('orchestrator', logs), { registry: createRegistry(workflows) });
  await orch.start();
  const workerId = `worker-${t}`;
  const workerCreds = await issueCreds(natsUrl, t, Role.Worker, workerId, { pools: ['default'] });
  const worker = await createWorker(workerConfig({ ...env, NATS_CREDS: workerCreds, WORKER_ID: workerId }), capturingLogger('worker', logs), { handlers });
  await worker.start();
  const db = await openDatabase({ url: databaseUrl, poolSize: 2 });
  return {
    db,
    logs,
    async stop() {
      await worker.stop();
      await orch.stop();
      await datasync?.stop();
      await projector.stop();
      await secrets.stop();
      await db.close();
    },
  };
}

export interface Ids {
  readonly connection: string;
  readonly model: string;
  readonly destination: string;
}

/**
 * A password secret (`passwordSecret`, value `password`), the source connection, the model,
 * and the destinations asked for, through the datasync service as the CLI would (`signer`:
 * who administers the secret).
 */
export async function defineCatalog(
  nc: NatsConnection,
  t: TenantId,
  src: Source,
  o: { password: string; user?: string; destinations: Record<string, unknown>; signer: Signer | undefined },
): Promise<void> {
  await putSecret(nc, t, 'SHOP_PG_PASSWORD', o.password, { by: 'test', signer: o.signer });
  const u = new URL(src.url);
  await putEntity(nc, t, {
    kind: CatalogKind.Connection,
    id: 'shop',
    name: 'Shop database',
    spec: {
      type: 'postgres',
      host: u.hostname,
      port: Number(u.port || 5432),
      database: src.database,
      tls: { mode: 'disable' },
      auth: { type: 'username_password', username: o.user ?? 'postgres', passwordKey: 'SHOP_PG_PASSWORD' },
    },
    by: 'test',
  });
  await putEntity(nc, t, { kind: CatalogKind.Model, id: 'shop-model', spec: MODEL, by: 'test' });
  for (const [id, spec] of Object.entries(o.destinations)) await putEntity(nc, t, { kind: CatalogKind.Destination, id, spec, by: 'test' });
}

export type { RunId };

/** A tenant with a generated source, a data-plane database, a files root and a stack; `close` removes them all. */
export interface DatasyncFixture {
  readonly h: Harness;
  readonly t: TenantId;
  readonly src: Source;
  readonly stateUrl: string;
  readonly filesRoot: string;
  readonly stack: Stack;
  close(): Promise<void>;
}

export async function datasyncFixture(
  natsUrl: string,
  prefix: string,
  o: { items: number; canaryRow?: string; datasync?: boolean; env?: Record<string, string>; beforeStack?: (h: Harness, t: TenantId) => Promise<void> },
): Promise<DatasyncFixture> {
  const h = await connect(natsUrl);
  const t = await provision(h, prefix);
  await o.beforeStack?.(h, t);
  const t0 = performance.now();
  const [state, src] = await Promise.all([scratchDatabase(`${prefix}state`), createSource(`${prefix}src`, o.items, o.canaryRow ?? `row-${randomBytes(4).toString('hex')}`)]);
  process.stdout.write(`source generated: ${src.items} items in ${Math.round(performance.now() - t0)} ms\n`);
  const filesRoot = mkdtempSync(join(tmpdir(), `capstan-${prefix}-`));
  const stack = await startStack(natsUrl, t, state.url, filesRoot, { ...(o.datasync === false ? { datasync: false } : {}), ...(o.env ? { env: o.env } : {}) });
  return {
    h,
    t,
    src,
    stateUrl: state.url,
    filesRoot,
    stack,
    async close() {
      await stack.stop();
      await h.close();
      await src.drop();
      await state.drop();
      rmSync(filesRoot, { recursive: true, force: true });
    },
  };
}

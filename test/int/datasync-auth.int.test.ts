/**
 * Connectors and their auth strategies against a Postgres that checks them: a private
 * cluster with TLS on, password (SCRAM) and client-certificate (`cert`) authentication, and
 * plain connections refused. Certificates are made here with openssl (a CA, the server's
 * for 127.0.0.1, a client's for the `shop_cert` role).
 *
 * - username_password, password leased, TLS verify-full with the CA: a pipeline into
 *   Parquet files, read back with hyparquet, equals the source;
 * - keypair: the client certificate's private key leased, the role is the certificate's;
 * - a wrong password, a wrong server name, TLS off: refused (`source_failed`), and the
 *   password appears in no answer.
 */
import { execFileSync } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { mkdtempSync, readdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, inject, it } from 'vitest';
import pg from 'pg';
import { asyncBufferFromFile, parquetReadObjects } from 'hyparquet';
import { previewQuery, putEntity, putSecret, rotateSecret, type Signer } from '@capstan/kit';
import { CapstanError, CatalogKind, ErrorCode, PIPELINE_WORKFLOW, type TenantId } from '@capstan/schemas';
import { connect, provision, type Harness } from '../harness/fixtures.js';
import { scratchDatabase, startPostgres, type PrivatePostgres } from '../harness/postgres.js';
import { MODEL, startStack, type Stack } from '../harness/datasync.js';

function makeCertificates(dir: string): { ca: string; serverCert: string; serverKey: string; clientCert: string; clientKey: string } {
  const ssl = (...args: string[]) => execFileSync('openssl', args, { cwd: dir, stdio: 'ignore' });
  ssl('req', '-x509', '-newkey', 'rsa:2048', '-nodes', '-days', '2', '-subj', '/CN=capstan test CA', '-keyout', 'ca.key', '-out', 'ca.crt');
  writeFileSync(join(dir, 'server.ext'), 'subjectAltName=IP:127.0.0.1,DNS:localhost\n');
  ssl('req', '-newkey', 'rsa:2048', '-nodes', '-subj', '/CN=127.0.0.1', '-keyout', 'server.key', '-out', 'server.csr');
  ssl('x509', '-req', '-in', 'server.csr', '-CA', 'ca.crt', '-CAkey', 'ca.key', '-CAcreateserial', '-days', '2', '-extfile', 'server.ext', '-out', 'server.crt');
  ssl('req', '-newkey', 'rsa:2048', '-nodes', '-subj', '/CN=shop_cert', '-keyout', 'client.key', '-out', 'client.csr');
  ssl('x509', '-req', '-in', 'client.csr', '-CA', 'ca.crt', '-CAkey', 'ca.key', '-CAcreateserial', '-days', '2', '-out', 'client.crt');
  const read = (f: string) => readFileSync(join(dir, f), 'utf8');
  return { ca: read('ca.crt'), serverCert: read('server.crt'), serverKey: read('server.key'), clientCert: read('client.crt'), clientKey: read('client.key') };
}

describe('data-sync connectors: passwords, client certificates, TLS', () => {
  let h: Harness;
  let t: TenantId;
  let state: Awaited<ReturnType<typeof scratchDatabase>>;
  let server: PrivatePostgres;
  let stack: Stack;
  let filesRoot: string;
  let certs: ReturnType<typeof makeCertificates>;
  const password = `pw-${randomBytes(12).toString('hex')}`;
  const tls = (mode: string, extra: Record<string, string> = {}) => ({ mode, ...(mode === 'verify-full' ? { ca: certs.ca } : {}), ...extra });

  beforeAll(async () => {
    const dir = mkdtempSync(join(tmpdir(), 'capstan-certs-'));
    certs = makeCertificates(dir);
    rmSync(dir, { recursive: true, force: true });
    server = await startPostgres({
      files: { 'server.crt': certs.serverCert, 'server.key': certs.serverKey, 'root.crt': certs.ca },
      settings: { ssl: 'on', ssl_cert_file: 'server.crt', ssl_key_file: 'server.key', ssl_ca_file: 'root.crt', password_encryption: 'scram-sha-256' },
      hba: [
        'local all all trust',
        'host all postgres 127.0.0.1/32 trust',
        'hostssl all shop_pw 127.0.0.1/32 scram-sha-256',
        'hostssl all shop_cert 127.0.0.1/32 cert',
        'host all all 127.0.0.1/32 reject',
        '',
      ].join('\n'),
    });
    const admin = new pg.Client({ connectionString: server.url });
    await admin.connect();
    await admin.query(`create database shop`);
    await admin.end();
    const shop = new pg.Client({ connectionString: server.url.replace(/\/postgres$/, '/shop') });
    await shop.connect();
    await shop.query(`
      create role shop_pw login password '${password}';
      create role shop_cert login;
      create table customers (id bigint primary key, name text not null, email text, country text, updated_at timestamptz not null);
      create table products (id integer primary key, name text not null, price numeric(10,2), updated_at timestamptz not null);
      create table orders (id bigint primary key, customer_id bigint not null references customers(id), status text not null, placed_at timestamptz not null, updated_at timestamptz not null);
      create table order_items (order_id bigint not null references orders(id), line integer not null, product_id integer not null references products(id), qty integer not null, note text, updated_at timestamptz not null, primary key (order_id, line));
      insert into customers select g, 'customer ' || g, null, 'fr', now() from generate_series(1, 50) g;
      insert into products select g, 'product ' || g, g / 3.0, now() from generate_series(1, 10) g;
      insert into orders select g, 1 + g % 50, 'paid', now(), now() from generate_series(1, 200) g;
      insert into order_items select o, l, 1 + (o + l) % 10, l, case when l = 2 then null else 'n' || o end, now() from generate_series(1, 200) o, generate_series(1, 5) l;
      grant select on all tables in schema public to shop_pw, shop_cert;
    `);
    await shop.end();
    h = await connect(inject('natsUrl'));
    t = await provision(h, 'dsa');
    state = await scratchDatabase('dsastate');
    filesRoot = mkdtempSync(join(tmpdir(), 'capstan-dsa-'));
    stack = await startStack(inject('natsUrl'), t, state.url, filesRoot);
    await putSecret(await h.nc(t), t, 'SHOP_PW', password, { by: 'test', signer: (await h.tenant(t)).signer });
    await putSecret(await h.nc(t), t, 'SHOP_CLIENT_KEY', certs.clientKey, { by: 'test', signer: (await h.tenant(t)).signer });
    const base = { type: 'postgres', host: '127.0.0.1', port: server.port, database: 'shop' };
    const put = async (id: string, spec: object) => putEntity(await h.nc(t), t, { kind: CatalogKind.Connection, id, spec, by: 'test' });
    await put('shop-pw', { ...base, tls: tls('verify-full'), auth: { type: 'username_password', username: 'shop_pw', passwordKey: 'SHOP_PW' } });
    await put('shop-cert', { ...base, tls: tls('verify-full'), auth: { type: 'keypair', username: 'shop_cert', certificate: certs.clientCert, privateKeyKey: 'SHOP_CLIENT_KEY' } });
    await put('wrong-name', {
      ...base,
      tls: tls('verify-full', { serverName: 'db.example.test' }),
      auth: { type: 'username_password', username: 'shop_pw', passwordKey: 'SHOP_PW' },
    });
    await put('plain', { ...base, tls: { mode: 'disable' }, auth: { type: 'username_password', username: 'shop_pw', passwordKey: 'SHOP_PW' } });
    await putEntity(await h.nc(t), t, { kind: CatalogKind.Model, id: 'shop-model', spec: MODEL, by: 'test' });
    await putEntity(await h.nc(t), t, { kind: CatalogKind.Destination, id: 'parquet', spec: { type: 'files', path: 'pq', format: 'parquet', batchRows: 300 }, by: 'test' });
  }, 180_000);

  afterAll(async () => {
    await stack?.stop();
    await h?.close();
    await state?.drop();
    await server?.destroy();
    if (filesRoot) rmSync(filesRoot, { recursive: true, force: true });
  }, 60_000);

  const whoami = async (connection: string) =>
    previewQuery(
      await h.nc(t),
      t,
      { connection, sql: 'select current_user, ssl from pg_stat_ssl where pid = pg_backend_pid()', by: 'test' },
      { signer: (await h.tenant(t)).signer as Signer },
    );
  async function refusal(connection: string): Promise<{ code: string; message: string }> {
    try {
      await whoami(connection);
      return { code: 'answered', message: '' };
    } catch (e) {
      return { code: CapstanError.is(e) ? e.code : 'other', message: (e as Error).message };
    }
  }

  it('username_password over verify-full TLS: the leased password opens the connection', async () => {
    expect((await whoami('shop-pw')).rows).toEqual([['shop_pw', 't']]);
  });

  it('keypair: the leased private key and the certificate authenticate as the certificate’s role', async () => {
    expect((await whoami('shop-cert')).rows).toEqual([['shop_cert', 't']]);
  });

  it('a wrong server name, TLS off, and a wrong password are refused, and no answer holds the password', async () => {
    const outcomes = [await refusal('wrong-name'), await refusal('plain')];
    await rotateSecret(await h.nc(t), t, 'SHOP_PW', 'not-the-password', { by: 'test', signer: (await h.tenant(t)).signer });
    outcomes.push(await refusal('shop-pw'));
    await rotateSecret(await h.nc(t), t, 'SHOP_PW', password, { by: 'test', signer: (await h.tenant(t)).signer });
    process.stdout.write(`refused connections: ${JSON.stringify(outcomes.map((o) => o.code))}\n`);
    expect(outcomes.map((o) => o.code)).toEqual([ErrorCode.SourceFailed, ErrorCode.SourceFailed, ErrorCode.SourceFailed]);
    expect(outcomes.some((o) => o.message.includes(password) || o.message.includes('not-the-password'))).toBe(false);
  });

  it('a pipeline over TLS into Parquet files: read back, the files equal the source', async () => {
    const runId = await h.client.submit(t, PIPELINE_WORKFLOW, { input: { connection: 'shop-pw', model: 'shop-model', destination: 'parquet' } });
    const end = await h.client.waitForEnd(t, runId, 120_000);
    expect(end.type).toBe('run.completed');
    const dir = join(filesRoot, t, 'pq', 'item');
    const parts = readdirSync(dir)
      .filter((f) => f.endsWith('.parquet'))
      .sort();
    expect(parts.length).toBe(Math.ceil(1000 / 300));
    const rows: Record<string, unknown>[] = [];
    for (const f of parts) rows.push(...((await parquetReadObjects({ file: await asyncBufferFromFile(join(dir, f)) })) as Record<string, unknown>[]));
    expect(rows.length).toBe(1000);
    const first = rows.find((r) => r['order_id'] === 1n && r['line'] === 2);
    // bigint → INT64, integer → INT32, text → UTF8 strings, null stays null; the association resolved.
    expect(first).toEqual({ order_id: 1n, line: 2, product_id: 4, qty: 2n, note: null, parent_order: 1n, product: 4 });
    const keys = new Set(rows.map((r) => `${String(r['order_id'])}/${String(r['line'])}`));
    expect(keys.size).toBe(1000);
    const products = (await parquetReadObjects({
      file: await asyncBufferFromFile(join(filesRoot, t, 'pq', 'product', readdirSync(join(filesRoot, t, 'pq', 'product'))[0] as string)),
    })) as Record<string, unknown>[];
    expect(products.find((p) => p['id'] === 3)).toEqual({ id: 3, title: 'product 3', price: '1.00' });
  }, 180_000);
});

/**
 * Where secrets live. `SecretStore` is the seam for other backends; the built-in one keeps
 * them in Postgres (`secrets`, `secret_data_keys`), encrypted with the tenant's data key
 * (see `envelope.ts`).
 *
 * Every change is audited in the same transaction as the change itself (a store that cannot
 * must write the audit row first): if the audit row cannot be written, nothing changes.
 * Nothing here ever logs, returns in an error, or writes in clear a secret value.
 */
import { sql } from 'drizzle-orm';
import type { Database, ProjectionDb } from '@capstan/kit';
import { connectorSchema, InvalidArgumentError, Lifecycle, SecretNotFoundError, SecretsUnavailableError, type Connector, type SecretInfo, type TenantId } from '@capstan/schemas';
import { audit, lockRunAudit, rows, SecretsAudit, secretAuditRun, textArray, type Executor } from './db.js';
import { decryptValue, encryptValue, valueAad, type Keyring } from './envelope.js';

/** A secret as the store describes it: never its value. */
export interface SecretMeta {
  readonly name: string;
  readonly version: number;
  readonly lifecycle: Lifecycle;
  readonly connector: Connector | undefined;
  readonly refreshWindowMs: number | undefined;
  readonly expiresAt: Date | undefined;
  readonly refreshedAt: Date | undefined;
  readonly createdAt: Date;
  readonly rotatedAt: Date | undefined;
  readonly deletedAt: Date | undefined;
  /** By the database's clock: a refreshable secret inside its refresh window, or of unknown expiry. */
  readonly refreshDue: boolean;
  /** By the database's clock: past its known expiry. */
  readonly expired: boolean;
}

export interface PutOptions {
  readonly by: string;
  readonly lifecycle: Lifecycle;
  readonly connector?: Connector;
  readonly refreshWindowMs?: number;
  readonly expiresAt?: Date;
}

export interface RotateOptions {
  readonly by: string;
  /** Absolute expiry of the new value. */
  readonly expiresAt?: Date;
  /** Expiry relative to the database's clock now (a token endpoint's `expires_in`). */
  readonly expiresInMs?: number;
  /** A refresh: recorded as such, and stamps `refreshed_at`. */
  readonly refreshed?: boolean;
  /** Only if the secret is still at this version (a racing refresh already replaced it otherwise). */
  readonly expectVersion?: number;
}

export interface SecretStore {
  readonly kind: string;
  /** Creates the secret, or replaces its value (a new version). */
  put(t: TenantId, name: string, value: Uint8Array, o: PutOptions): Promise<SecretMeta>;
  /**
   * Replaces a live secret's value (a new version). Resolves `undefined` when `expectVersion`
   * no longer holds. @throws SecretNotFoundError
   */
  rotate(t: TenantId, name: string, value: Uint8Array, o: RotateOptions): Promise<SecretMeta | undefined>;
  /** Erases the value; the name stays listed as deleted. @throws SecretNotFoundError */
  delete(t: TenantId, name: string, by: string): Promise<SecretMeta>;
  list(t: TenantId, includeDeleted: boolean): Promise<SecretMeta[]>;
  /** Live secrets among `names`, by name (missing ones are absent). */
  describe(t: TenantId, names: readonly string[]): Promise<Map<string, SecretMeta>>;
  /**
   * Values of exactly `names`. `within`: the lease ledger's open transaction, for a store in
   * the same database (other stores ignore it).
   * @throws SecretNotFoundError naming every missing one
   */
  read(t: TenantId, names: readonly string[], within?: Executor): Promise<Record<string, string>>;
}

/** What `list`/`put`/… answer on the wire. */
export function secretInfo(m: SecretMeta): SecretInfo {
  return {
    name: m.name,
    version: m.version,
    lifecycle: m.lifecycle,
    ...(m.connector ? { connector: m.connector.name, auth: m.connector.auth.type } : {}),
    createdAt: m.createdAt.toISOString(),
    ...(m.rotatedAt ? { rotatedAt: m.rotatedAt.toISOString() } : {}),
    ...(m.deletedAt ? { deletedAt: m.deletedAt.toISOString() } : {}),
    ...(m.expiresAt ? { expiresAt: m.expiresAt.toISOString() } : {}),
    ...(m.refreshedAt ? { refreshedAt: m.refreshedAt.toISOString() } : {}),
  };
}

interface MetaRow {
  name: string;
  version: number;
  lifecycle: string;
  connector: unknown;
  refresh_window_ms: number | null;
  expires_at: Date | string | null;
  refreshed_at: Date | string | null;
  created_at: Date | string;
  rotated_at: Date | string | null;
  deleted_at: Date | string | null;
  refresh_due: boolean | null;
  expired: boolean | null;
}

const date = (v: Date | string | null): Date | undefined => (v === null ? undefined : v instanceof Date ? v : new Date(v));

function metaOf(r: MetaRow): SecretMeta {
  let connector: Connector | undefined;
  try {
    connector = r.connector === null || r.connector === undefined ? undefined : connectorSchema.parse(typeof r.connector === 'string' ? JSON.parse(r.connector) : r.connector);
  } catch {
    connector = undefined;
  }
  return {
    name: r.name,
    version: Number(r.version),
    lifecycle: (Object.values(Lifecycle) as string[]).includes(r.lifecycle) ? (r.lifecycle as Lifecycle) : Lifecycle.Static,
    connector,
    refreshWindowMs: r.refresh_window_ms === null ? undefined : Number(r.refresh_window_ms),
    expiresAt: date(r.expires_at),
    refreshedAt: date(r.refreshed_at),
    createdAt: date(r.created_at) ?? new Date(0),
    rotatedAt: date(r.rotated_at),
    deletedAt: date(r.deleted_at),
    refreshDue: r.refresh_due === true,
    expired: r.expired === true,
  };
}

const utf8 = new TextDecoder('utf-8', { fatal: true });

/**
 * A value must be a string a process environment can hold: valid UTF-8, no NUL.
 * @throws InvalidArgumentError (naming the secret, never showing the value)
 */
export function checkValue(name: string, value: Uint8Array, maxBytes: number): string {
  if (value.length > maxBytes) throw new InvalidArgumentError(`the value of ${name} is ${value.length} bytes; the limit is ${maxBytes}`);
  let s: string;
  try {
    s = utf8.decode(value);
  } catch {
    throw new InvalidArgumentError(`the value of ${name} is not valid UTF-8`);
  }
  if (s.includes('\0')) throw new InvalidArgumentError(`the value of ${name} contains a NUL character (it is injected as an environment variable)`);
  return s;
}

/**
 * The built-in store: Postgres (or PGlite), envelope-encrypted with `keyring`.
 * `refreshWindowMs` is the window of a refreshable secret that names none.
 */
export function postgresSecretStore(d: Database, keyring: Keyring, opts: { refreshWindowMs: number }): SecretStore {
  const db = d.db;
  /** Unwrapped data keys by `tenant/version`: unwrapping is per process, not per request. */
  const dataKeys = new Map<string, Buffer>();

  const metaColumns = (window: number) => sql`name, version, lifecycle, connector, refresh_window_ms, expires_at, refreshed_at, created_at, rotated_at, deleted_at,
    (lifecycle = ${Lifecycle.Refreshable} and (expires_at is null or expires_at - coalesce(refresh_window_ms, ${window}) * interval '1 millisecond' <= clock_timestamp())) as refresh_due,
    (expires_at is not null and expires_at <= clock_timestamp()) as expired`;

  async function dataKey(tx: ProjectionDb, t: TenantId, version?: number): Promise<{ version: number; key: Buffer }> {
    const cached = version === undefined ? undefined : dataKeys.get(`${t}/${version}`);
    if (cached && version !== undefined) return { version, key: cached };
    let found = await rows<{ version: number; wrapped: Uint8Array; master_key_id: string }>(
      tx,
      version === undefined
        ? sql`select version, wrapped, master_key_id from secret_data_keys where tenant = ${t} order by version desc limit 1`
        : sql`select version, wrapped, master_key_id from secret_data_keys where tenant = ${t} and version = ${version}`,
    );
    if (found.length === 0 && version === undefined) {
      // The tenant's first secret: its data key. A racing instance may make one too; the
      // primary key keeps the first, and both read that one back.
      const fresh = keyring.newDataKey(t, 1);
      await tx.execute(
        sql`insert into secret_data_keys (tenant, version, wrapped, master_key_id) values (${t}, 1, ${fresh.wrapped}, ${keyring.masterKeyId}) on conflict do nothing`,
      );
      fresh.key.fill(0);
      found = await rows(tx, sql`select version, wrapped, master_key_id from secret_data_keys where tenant = ${t} order by version desc limit 1`);
    }
    const row = found[0];
    if (!row) throw new SecretsUnavailableError(`tenant ${t} has no data key version ${version ?? '(any)'}: the secrets store is damaged`);
    const v = Number(row.version);
    const hit = dataKeys.get(`${t}/${v}`);
    if (hit) return { version: v, key: hit };
    if (row.master_key_id !== keyring.masterKeyId) {
      throw new SecretsUnavailableError(
        `tenant ${t}'s data key was wrapped by master key ${row.master_key_id}; this service holds ${keyring.masterKeyId}: check SECRETS_MASTER_KEY`,
      );
    }
    let key: Buffer;
    try {
      key = keyring.unwrap(t, v, row.wrapped);
    } catch {
      throw new SecretsUnavailableError(`tenant ${t}'s data key version ${v} does not unwrap with master key ${keyring.masterKeyId}: the row is damaged`);
    }
    dataKeys.set(`${t}/${v}`, key);
    return { version: v, key };
  }

  /**
   * One writer per secret at a time, so versions and their ciphertexts stay in step: the
   * audit lock of the secret's own rows serves as the secret's lock.
   */
  const lockSecret = (tx: ProjectionDb, t: TenantId, name: string) => lockRunAudit(tx, t, secretAuditRun(name));

  async function current(tx: ProjectionDb, t: TenantId, name: string): Promise<MetaRow | undefined> {
    return (await rows<MetaRow>(tx, sql`select ${metaColumns(opts.refreshWindowMs)} from secrets where tenant = ${t} and name = ${name}`))[0];
  }

  async function write(tx: ProjectionDb, t: TenantId, name: string, version: number, value: Uint8Array): Promise<{ keyVersion: number; nonce: Buffer; ciphertext: Buffer }> {
    const dk = await dataKey(tx, t);
    const { nonce, ciphertext } = encryptValue(dk.key, value, valueAad(t, name, version, dk.version));
    return { keyVersion: dk.version, nonce, ciphertext };
  }

  return {
    kind: d.kind,

    put(t, name, value, o) {
      return db.transaction(async (tx) => {
        await lockSecret(tx, t, name);
        const prev = await current(tx, t, name);
        const version = prev ? Number(prev.version) + 1 : 1;
        const revived = prev?.deleted_at !== null && prev?.deleted_at !== undefined;
        const { keyVersion, nonce, ciphertext } = await write(tx, t, name, version, value);
        const connector = o.connector ? JSON.stringify(o.connector) : null;
        const [row] = await rows<MetaRow>(
          tx,
          sql`insert into secrets (tenant, name, version, key_version, nonce, ciphertext, lifecycle, connector, refresh_window_ms, expires_at, refreshed_at, created_at, rotated_at, deleted_at, updated_by)
              values (${t}, ${name}, ${version}, ${keyVersion}, ${nonce}, ${ciphertext}, ${o.lifecycle}, ${connector}::jsonb, ${o.refreshWindowMs ?? null}, ${o.expiresAt ?? null}, null, clock_timestamp(), null, null, ${o.by})
              on conflict (tenant, name) do update set
                version = excluded.version, key_version = excluded.key_version, nonce = excluded.nonce, ciphertext = excluded.ciphertext,
                lifecycle = excluded.lifecycle, connector = excluded.connector, refresh_window_ms = excluded.refresh_window_ms,
                expires_at = excluded.expires_at, refreshed_at = null, deleted_at = null, updated_by = excluded.updated_by,
                created_at = case when ${revived} then excluded.created_at else secrets.created_at end,
                rotated_at = case when ${revived} then null else clock_timestamp() end
              returning ${metaColumns(opts.refreshWindowMs)}`,
        );
        await audit(tx, t, secretAuditRun(name), SecretsAudit.SecretPut, o.by, { name, version, lifecycle: o.lifecycle, connector: o.connector?.name ?? null });
        return metaOf(row as MetaRow);
      });
    },

    rotate(t, name, value, o) {
      return db.transaction(async (tx) => {
        await lockSecret(tx, t, name);
        const prev = await current(tx, t, name);
        if (!prev || prev.deleted_at !== null) throw new SecretNotFoundError(t, [name]);
        if (o.expectVersion !== undefined && Number(prev.version) !== o.expectVersion) return undefined;
        const version = Number(prev.version) + 1;
        const { keyVersion, nonce, ciphertext } = await write(tx, t, name, version, value);
        const expires = o.expiresInMs !== undefined ? sql`clock_timestamp() + ${o.expiresInMs} * interval '1 millisecond'` : sql`${o.expiresAt ?? null}::timestamptz`;
        const [row] = await rows<MetaRow>(
          tx,
          sql`update secrets set version = ${version}, key_version = ${keyVersion}, nonce = ${nonce}, ciphertext = ${ciphertext},
                expires_at = ${expires}, rotated_at = clock_timestamp(), updated_by = ${o.by},
                refreshed_at = ${o.refreshed ? sql`clock_timestamp()` : sql`refreshed_at`}
              where tenant = ${t} and name = ${name}
              returning ${metaColumns(opts.refreshWindowMs)}`,
        );
        await audit(tx, t, secretAuditRun(name), o.refreshed ? SecretsAudit.SecretRefreshed : SecretsAudit.SecretRotated, o.by, { name, version });
        return metaOf(row as MetaRow);
      });
    },

    delete(t, name, by) {
      return db.transaction(async (tx) => {
        await lockSecret(tx, t, name);
        const [row] = await rows<MetaRow>(
          tx,
          sql`update secrets set nonce = null, ciphertext = null, deleted_at = clock_timestamp(), updated_by = ${by}
              where tenant = ${t} and name = ${name} and deleted_at is null
              returning ${metaColumns(opts.refreshWindowMs)}`,
        );
        if (!row) throw new SecretNotFoundError(t, [name]);
        await audit(tx, t, secretAuditRun(name), SecretsAudit.SecretDeleted, by, { name, version: Number(row.version) });
        return metaOf(row);
      });
    },

    async list(t, includeDeleted) {
      const found = await rows<MetaRow>(
        db,
        sql`select ${metaColumns(opts.refreshWindowMs)} from secrets where tenant = ${t} ${includeDeleted ? sql`` : sql`and deleted_at is null`} order by name`,
      );
      return found.map(metaOf);
    },

    async describe(t, names) {
      if (names.length === 0) return new Map();
      const found = await rows<MetaRow>(
        db,
        sql`select ${metaColumns(opts.refreshWindowMs)} from secrets where tenant = ${t} and name = any(${textArray(names)}) and deleted_at is null`,
      );
      return new Map(found.map((r) => [r.name, metaOf(r)]));
    },

    async read(t, names, within) {
      const x = (within ?? db) as ProjectionDb;
      const found = await rows<{ name: string; version: number; key_version: number; nonce: Uint8Array | null; ciphertext: Uint8Array | null }>(
        x,
        sql`select name, version, key_version, nonce, ciphertext from secrets where tenant = ${t} and name = any(${textArray(names)}) and deleted_at is null and ciphertext is not null`,
      );
      const missing = names.filter((n) => !found.some((r) => r.name === n));
      if (missing.length > 0) throw new SecretNotFoundError(t, missing);
      const out: Record<string, string> = {};
      for (const r of found) {
        const { key } = await dataKey(x, t, Number(r.key_version));
        let plain: Buffer;
        try {
          plain = decryptValue(key, r.nonce as Uint8Array, r.ciphertext as Uint8Array, valueAad(t, r.name, Number(r.version), Number(r.key_version)));
        } catch {
          throw new SecretsUnavailableError(`secret ${r.name} of tenant ${t} (version ${r.version}) does not decrypt: the row is damaged or was moved`);
        }
        out[r.name] = plain.toString('utf8');
        plain.fill(0);
      }
      return out;
    },
  };
}

/**
 * The operator's key store: the NATS operator, the system and platform accounts, one
 * account per tenant, the platform services' identities, and a record of every credential
 * issued. Whoever holds this directory is the platform admin; services never read it (they
 * get one `.creds` file each). `capstan dev` keeps one under `.capstan/dev/auth`; production
 * keeps it on the admin's machine (`CAPSTAN_AUTH_DIR`).
 *
 * Layout (directories 0700, files 0600):
 *   operator.seed  operator.jwt
 *   accounts/<name>.seed  accounts/<name>.json    (SYS, CAPSTAN, and each tenant)
 *   system.creds                                   (a system-account user: pushes account JWTs)
 *   services/<role>.creds                          (a platform service's identity)
 *   users/<tenant>/<name>.json                     (issued credentials: public key, role, scope)
 *   creds/<tenant>/<name>.creds                    (where `creds issue` writes by default)
 *
 * JWTs are signed here and nowhere else: account JWTs by the operator, users by their
 * account. Revoking a user is a new account JWT listing its key, pushed to the servers.
 */
import { chmodSync, existsSync, mkdirSync, readFileSync, readdirSync, renameSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { createAccount, createOperator, createUser, encodeAccount, encodeOperator, encodeUser, fmtCreds, fromSeed, parseCreds, type KeyPair, type User } from '@nats-io/jwt';
import {
  CapstanError,
  CredentialsError,
  DEFAULT_TENANT_PLACEMENT,
  DEFAULT_TENANT_QUOTA,
  ErrorCode,
  inboxPrefixFor,
  isTenantId,
  parseToken,
  permissionsFor,
  Platform,
  platformPermissions,
  Role,
  SERVICE_ROLES,
  tenantQuotaSchema,
  type RolePermissions,
  type RoleScope,
  type ServiceRole,
  type TenantId,
  type TenantPlacement,
  type TenantQuota,
  type TenantRole,
} from '@capstan/schemas';

export class AuthStoreError extends CapstanError {
  constructor(
    readonly dir: string,
    problem: string,
  ) {
    super(ErrorCode.AuthStoreMissing, `auth store ${dir}: ${problem}`);
  }
}

/** A credential issued to a person or a tenant deployment, as the store remembers it (no secret). */
export interface IssuedUser {
  readonly tenant: TenantId;
  readonly name: string;
  readonly role: TenantRole | typeof Role.Leaf;
  readonly publicKey: string;
  readonly pools?: readonly string[];
  /** Approver groups (`capstan-group:<g>` tags): whose approvals a policy's `@approval("g")` accepts. */
  readonly groups?: readonly string[];
  readonly issuedAt: number;
  /** Set while revoked: the account JWT lists the key, the server refuses it. */
  readonly revokedAt?: number;
}

interface AccountFile {
  readonly name: string;
  readonly quota: TenantQuota;
  /** user public key → revoked at (unix seconds): JWTs issued at or before are refused. */
  readonly revocations: Record<string, number>;
  readonly createdAt: number;
  /** Replicas and server tags of the tenant's streams; absent for the single-server default. */
  readonly placement?: TenantPlacement;
}

/** What a tenant account's JWT grants: its quota as nats-server limits. */
function accountLimits(q: TenantQuota) {
  return {
    subs: -1,
    data: -1,
    payload: -1,
    imports: -1,
    exports: -1,
    wildcards: true,
    leaf: -1,
    conn: q.maxConnections,
    disk_storage: q.maxStorageBytes,
    // Small in-memory buckets only; the run pipeline is on file storage. A reservation, like
    // the storage quota: kept small so many tenants fit one server.
    mem_storage: 16 * 1024 * 1024,
    streams: q.maxStreams,
    consumer: q.maxConsumers,
    max_ack_pending: -1,
    mem_max_stream_bytes: -1,
    disk_max_stream_bytes: -1,
    max_bytes_required: false,
  };
}

/** Users with no permission list get nothing (a JWT without one would get the whole account). */
const DENY_ALL = { pub: { deny: ['>'] }, sub: { deny: ['>'] } };

const PLATFORM_QUOTA: TenantQuota = { maxStorageBytes: 256 * 1024 * 1024, maxStreams: 4, maxConsumers: 64, maxConnections: 10_000 };

function userClaims(p: RolePermissions, tags: string[]): Partial<User> {
  return {
    pub: { allow: [...p.pub], deny: [] },
    sub: { allow: [...p.sub], deny: [] },
    ...(p.resp ? { resp: { max: p.resp.max, ttl: p.resp.ttlMs < 0 ? -1 : p.resp.ttlMs * 1_000_000 } } : {}),
    tags,
  };
}

const ADMIN_TTL_S = 3600;

export interface AuthStore {
  readonly dir: string;
  readonly operatorPublicKey: string;
  readonly systemAccount: string;
  readonly platformAccount: string;
  /** The lines of a nats-server configuration that run it in operator mode with this store. */
  serverConfig(resolverDir: string): string;
  /** Creds of the system-account user that pushes account JWTs. */
  systemCreds(): Uint8Array;
  /** Path of a platform service's creds file (its identity everywhere). */
  serviceCredsPath(role: ServiceRole): string;
  servicePublicKey(role: ServiceRole): string;
  /** Short-lived creds of the platform admin in a tenant's account, or the platform's own. */
  adminCreds(account: TenantId | 'platform'): Promise<Uint8Array>;
  tenants(): TenantId[];
  hasTenant(t: TenantId): boolean;
  quota(t: TenantId): TenantQuota;
  /** Where the tenant's streams live (replicas, server tags), as recorded with it. */
  placement(t: TenantId): TenantPlacement;
  /** Creates the tenant's account keys (once) and sets its quota (and placement); `created` when new. */
  ensureTenantAccount(t: TenantId, quota?: Partial<TenantQuota>, placement?: TenantPlacement): { publicKey: string; created: boolean };
  tenantAccountKey(t: TenantId): string;
  /** The tenant account's JWT as it stands (quota, revocations), signed by the operator. */
  accountJwt(t: TenantId): Promise<string>;
  platformAccountJwt(): string;
  systemAccountJwt(): string;
  /** The JWT a platform service connects to a tenant's account with. */
  serviceUserJwt(t: TenantId, role: ServiceRole): Promise<string>;
  /**
   * A short-lived credential of `role` in a tenant, recorded nowhere: what the admin's own
   * tools act with (the CLI with the key store), with exactly that role's permissions.
   */
  mintUser(t: TenantId, role: Role, name: string, scope?: RoleScope, ttlS?: number): Promise<Uint8Array>;
  /** Issues a person's or deployment's credential; replaces an earlier one of the same name. */
  issueUser(
    t: TenantId,
    role: TenantRole | typeof Role.Leaf,
    name: string,
    scope?: RoleScope,
    opts?: { expiresInS?: number; groups?: readonly string[] },
  ): Promise<{ creds: Uint8Array; user: IssuedUser }>;
  users(t: TenantId): IssuedUser[];
  user(t: TenantId, name: string): IssuedUser | undefined;
  /** Marks a user revoked in its account (push the account JWT to take effect). */
  revokeUser(t: TenantId, name: string): IssuedUser;
  /** Lifts a revocation (a worker approved again); push the account JWT to take effect. */
  restoreUser(t: TenantId, name: string): IssuedUser;
  /** Where issued creds are written unless told otherwise. */
  defaultCredsPath(t: TenantId, name: string): string;
}

function writeSecret(path: string, data: string | Uint8Array): void {
  // Write then rename: a reader never sees half a key.
  const tmp = `${path}.tmp-${process.pid}`;
  writeFileSync(tmp, data, { mode: 0o600 });
  chmodSync(tmp, 0o600);
  renameSync(tmp, path);
}

function dirOf(path: string): void {
  mkdirSync(path, { recursive: true, mode: 0o700 });
  chmodSync(path, 0o700);
}

/**
 * Opens the store at `dir`; with `create`, makes what is missing (operator, system and
 * platform accounts, service identities). Safe to call from several processes: keys are
 * made once and never replaced.
 * @throws AuthStoreError when the store is missing or incomplete and `create` is off
 */
export async function openAuthStore(dir: string, opts: { create?: boolean } = {}): Promise<AuthStore> {
  const at = (...p: string[]) => join(dir, ...p);
  if (!existsSync(at('operator.seed'))) {
    if (!opts.create) throw new AuthStoreError(dir, 'no operator key (create one with `capstan auth init`, or run `capstan dev`)');
    dirOf(dir);
    const op = createOperator();
    writeSecret(at('operator.seed'), op.getSeed());
  }
  for (const sub of ['accounts', 'services', 'users', 'creds']) dirOf(at(sub));
  const operator = fromSeed(readFileSync(at('operator.seed')));

  /** A key from its seed file; made when missing if `create` (the store's own keys) or `always` (a new tenant's). */
  const seedOf = (path: string, make: () => KeyPair, always = false): KeyPair => {
    if (!existsSync(path)) {
      if (!opts.create && !always) throw new AuthStoreError(dir, `missing ${path}`);
      writeSecret(path, make().getSeed());
    }
    return fromSeed(readFileSync(path));
  };
  const accountKey = (name: string) => seedOf(at('accounts', `${name}.seed`), createAccount);
  const sys = accountKey(Platform.systemAccountName);
  const platform = accountKey(Platform.accountName);

  // The operator JWT names the system account; the server reads it from this file.
  if (!existsSync(at('operator.jwt'))) writeSecret(at('operator.jwt'), await encodeOperator('capstan', operator, { system_account: sys.getPublicKey() }));
  const sysJwt = await encodeAccount(
    Platform.systemAccountName,
    sys,
    { limits: { ...accountLimits(PLATFORM_QUOTA), disk_storage: 0, mem_storage: 0, streams: 0, consumer: 0 } },
    { signer: operator },
  );
  const platformJwt = await encodeAccount(Platform.accountName, platform, { limits: accountLimits(PLATFORM_QUOTA), default_permissions: DENY_ALL }, { signer: operator });

  if (!existsSync(at('system.creds'))) {
    const u = createUser();
    writeSecret(at('system.creds'), fmtCreds(await encodeUser('capstan-system', u, sys), u));
  }
  for (const role of SERVICE_ROLES) {
    const path = at('services', `${role}.creds`);
    if (existsSync(path)) continue;
    if (!opts.create) throw new AuthStoreError(dir, `missing ${path}`);
    const u = createUser();
    const jwt = await encodeUser(role, u, platform, userClaims(platformPermissions(inboxPrefixFor(u.getPublicKey())), [`capstan-role:${role}`]));
    writeSecret(path, fmtCreds(jwt, u));
  }
  const serviceKeys = new Map<ServiceRole, KeyPair>();
  for (const role of SERVICE_ROLES) {
    const { key } = await parseCreds(readFileSync(at('services', `${role}.creds`)));
    serviceKeys.set(role, fromSeed(new TextEncoder().encode(key)));
  }

  const accountFile = (t: TenantId): AccountFile => {
    const path = at('accounts', `${t}.json`);
    if (!existsSync(path)) throw new CapstanError(ErrorCode.UnknownTenant, `tenant ${t} has no account (capstan tenant add ${t})`);
    return JSON.parse(readFileSync(path, 'utf8')) as AccountFile;
  };
  const saveAccount = (t: TenantId, f: AccountFile) => writeSecret(at('accounts', `${t}.json`), JSON.stringify(f, null, 2));
  const tenantKey = (t: TenantId) => {
    accountFile(t);
    return fromSeed(readFileSync(at('accounts', `${t}.seed`)));
  };
  const userPath = (t: TenantId, name: string) => at('users', t, `${parseToken('credential name', name)}.json`);
  const readUser = (t: TenantId, name: string): IssuedUser | undefined => {
    const p = userPath(t, name);
    return existsSync(p) ? (JSON.parse(readFileSync(p, 'utf8')) as IssuedUser) : undefined;
  };
  const mustUser = (t: TenantId, name: string): IssuedUser => {
    const u = readUser(t, name);
    if (!u) throw new CredentialsError(`${t}/${name}`, 'no credential of that name was issued in this tenant');
    return u;
  };

  return {
    dir,
    operatorPublicKey: operator.getPublicKey(),
    systemAccount: sys.getPublicKey(),
    platformAccount: platform.getPublicKey(),
    serverConfig(resolverDir) {
      return [
        `operator: "${at('operator.jwt')}"`,
        `system_account: ${sys.getPublicKey()}`,
        // The full resolver keeps pushed account JWTs on disk, so a restart keeps every tenant.
        // A short lookup timeout: an account no server knows is refused at once, not after a wait.
        `resolver { type: full, dir: "${resolverDir}", allow_delete: false, interval: "2m", timeout: "1s" }`,
        `resolver_preload { ${sys.getPublicKey()}: ${sysJwt}, ${platform.getPublicKey()}: ${platformJwt} }`,
      ].join('\n');
    },
    systemCreds: () => readFileSync(at('system.creds')),
    serviceCredsPath: (role) => at('services', `${role}.creds`),
    servicePublicKey: (role) => (serviceKeys.get(role) as KeyPair).getPublicKey(),
    async adminCreds(account) {
      const issuer = account === 'platform' ? platform : tenantKey(account);
      const u = createUser();
      const exp = Math.floor(Date.now() / 1000) + ADMIN_TTL_S;
      const jwt = await encodeUser('capstan-admin', u, issuer, { pub: { allow: ['>'], deny: [] }, sub: { allow: ['>'], deny: [] }, tags: [`capstan-role:${Role.Admin}`] }, { exp });
      return fmtCreds(jwt, u);
    },
    tenants() {
      return readdirSync(at('accounts'))
        .filter((f) => f.endsWith('.json'))
        .map((f) => f.slice(0, -'.json'.length))
        .filter(isTenantId)
        .sort();
    },
    hasTenant: (t) => existsSync(at('accounts', `${t}.json`)),
    quota: (t) => accountFile(t).quota,
    placement: (t) => accountFile(t).placement ?? DEFAULT_TENANT_PLACEMENT,
    ensureTenantAccount(t, quota = {}, placement) {
      const path = at('accounts', `${t}.json`);
      const created = !existsSync(path);
      const key = seedOf(at('accounts', `${t}.seed`), createAccount, true);
      const before = created ? undefined : accountFile(t);
      const merged = tenantQuotaSchema.parse({ ...DEFAULT_TENANT_QUOTA, ...before?.quota, ...quota }, 'quota');
      const place = placement ?? before?.placement;
      saveAccount(t, {
        name: t,
        quota: merged,
        revocations: before?.revocations ?? {},
        createdAt: before?.createdAt ?? Date.now(),
        ...(place && (place.replicas > 1 || place.tags.length > 0) ? { placement: place } : {}),
      });
      dirOf(at('users', t));
      dirOf(at('creds', t));
      return { publicKey: key.getPublicKey(), created };
    },
    tenantAccountKey: (t) => tenantKey(t).getPublicKey(),
    async accountJwt(t) {
      const f = accountFile(t);
      return encodeAccount(t, tenantKey(t), { limits: accountLimits(f.quota), revocations: f.revocations, default_permissions: DENY_ALL }, { signer: operator });
    },
    platformAccountJwt: () => platformJwt,
    systemAccountJwt: () => sysJwt,
    async serviceUserJwt(t, role) {
      const u = serviceKeys.get(role) as KeyPair;
      return encodeUser(`${role}@${t}`, u, tenantKey(t), userClaims(permissionsFor(role, t, inboxPrefixFor(u.getPublicKey())), [`capstan-tenant:${t}`, `capstan-role:${role}`]));
    },
    async mintUser(t, role, name, scope = {}, ttlS = ADMIN_TTL_S) {
      const u = createUser();
      const exp = Math.floor(Date.now() / 1000) + ttlS;
      const claims =
        role === Role.Admin
          ? { pub: { allow: ['>'], deny: [] }, sub: { allow: ['>'], deny: [] }, tags: [`capstan-tenant:${t}`, `capstan-role:${role}`] }
          : userClaims(permissionsFor(role, t, inboxPrefixFor(u.getPublicKey()), scope), [`capstan-tenant:${t}`, `capstan-role:${role}`]);
      return fmtCreds(await encodeUser(parseToken('credential name', name), u, tenantKey(t), claims, { exp }), u);
    },
    async issueUser(t, role, name, scope = {}, o = {}) {
      const issuer = tenantKey(t);
      const n = parseToken('credential name', name);
      const u = createUser();
      const pools = role === Role.Worker || role === Role.Leaf ? (scope.pools ?? []) : [];
      const perms = permissionsFor(
        role,
        t,
        inboxPrefixFor(u.getPublicKey()),
        role === Role.Worker ? { pools, workerId: scope.workerId ?? n } : role === Role.Leaf ? { pools, localUsers: scope.localUsers ?? [] } : {},
      );
      const groups = [...new Set((o.groups ?? []).map((g) => parseToken('approver group', g)))];
      const tags = [`capstan-tenant:${t}`, `capstan-role:${role}`, ...pools.map((p) => `capstan-pool:${p}`), ...groups.map((g) => `capstan-group:${g}`)];
      const jwt = await encodeUser(n, u, issuer, userClaims(perms, tags), o.expiresInS ? { exp: Math.floor(Date.now() / 1000) + o.expiresInS } : {});
      const previous = readUser(t, n);
      if (previous) {
        // The new credential replaces the old one: the old key is revoked for good.
        const f = accountFile(t);
        saveAccount(t, { ...f, revocations: { ...f.revocations, [previous.publicKey]: Math.floor(Date.now() / 1000) } });
      }
      const user: IssuedUser = {
        tenant: t,
        name: n,
        role,
        publicKey: u.getPublicKey(),
        ...(pools.length ? { pools } : {}),
        ...(groups.length ? { groups } : {}),
        issuedAt: Date.now(),
      };
      writeSecret(userPath(t, n), JSON.stringify(user, null, 2));
      return { creds: fmtCreds(jwt, u), user };
    },
    users(t) {
      const d = at('users', t);
      if (!existsSync(d)) return [];
      return readdirSync(d)
        .filter((f) => f.endsWith('.json'))
        .map((f) => JSON.parse(readFileSync(join(d, f), 'utf8')) as IssuedUser)
        .sort((a, b) => a.name.localeCompare(b.name));
    },
    user: readUser,
    revokeUser(t, name) {
      const u = mustUser(t, name);
      const f = accountFile(t);
      // One second ahead: a JWT issued within this second is refused too.
      const at_ = Math.floor(Date.now() / 1000) + 1;
      saveAccount(t, { ...f, revocations: { ...f.revocations, [u.publicKey]: at_ } });
      const revoked: IssuedUser = { ...u, revokedAt: at_ * 1000 };
      writeSecret(userPath(t, name), JSON.stringify(revoked, null, 2));
      return revoked;
    },
    restoreUser(t, name) {
      const u = mustUser(t, name);
      const f = accountFile(t);
      const { [u.publicKey]: _gone, ...rest } = f.revocations;
      saveAccount(t, { ...f, revocations: rest });
      const { revokedAt: _was, ...restored } = u;
      writeSecret(userPath(t, name), JSON.stringify(restored, null, 2));
      return restored;
    },
    defaultCredsPath: (t, name) => at('creds', t, `${parseToken('credential name', name)}.creds`),
  };
}

/**
 * The platform admin's commands, acting with the operator's key store (`--auth-dir`,
 * `CAPSTAN_AUTH_DIR`, or the dev stack's):
 *
 *   capstan auth init                                 make a key store (operator, system and platform accounts, service identities)
 *   capstan auth serve                                enforce fleet decisions on worker credentials (a revoked worker is cut off at the server)
 *   capstan tenant add <t> [quota flags] [--pool p]… [--replicas 1|3|5] [--placement tag,…]
 *                                                     add a tenant (its account, quota, streams and their placement, consumers, registry record); idempotent
 *   capstan tenant quota <t> [quota flags]            change a tenant's quota (in force at once)
 *   capstan tenant list [--json]
 *   capstan creds issue --tenant t --role client|worker|operator --name n [--pool p]… [--group g]… [--out f] [--expires 30d]
 *   capstan creds revoke|restore --tenant t --name n  cut a credential off at the server (within a second), or lift that
 *   capstan creds list --tenant t [--json]
 *   capstan leaf config --tenant t --platform url… --user creds|key… [--pool p]…   a tenant's leaf credential and server configuration
 */
import { mkdirSync, writeFileSync, chmodSync } from 'node:fs';
import { dirname, join } from 'node:path';
import {
  ensurePlatform,
  issueCredential,
  readCredentials,
  openAuthStore,
  provisionTenant,
  restoreCredential,
  revokeCredential,
  setTenantQuota,
  type IssuedUser,
} from '@capstan/kit';
import {
  InvalidArgumentError,
  isTenantRole,
  parseTenantId,
  parseTenantPlacement,
  Platform,
  PlacementError,
  TENANT_ROLES,
  type TenantPlacement,
  type TenantQuota,
} from '@capstan/schemas';
import { intFlag, parse, stringFlag, stringsFlag, tenantFlag } from './args.js';
import { authDir, print, withAdmin } from './context.js';
import { dim, green, red, table } from './format.js';
import { startFleetAuthority } from './fleet-authority.js';
import { issueLeaf } from './leaf.js';

const QUOTA_FLAGS = {
  'max-storage': { type: 'string' },
  'max-streams': { type: 'string' },
  'max-consumers': { type: 'string' },
  'max-connections': { type: 'string' },
} as const;

const UNITS: Record<string, number> = {
  b: 1,
  k: 1024,
  kb: 1024,
  kib: 1024,
  m: 1024 ** 2,
  mb: 1024 ** 2,
  mib: 1024 ** 2,
  g: 1024 ** 3,
  gb: 1024 ** 3,
  gib: 1024 ** 3,
  t: 1024 ** 4,
  tb: 1024 ** 4,
  tib: 1024 ** 4,
};

/** `512MiB`, `4GB`, `1073741824`: bytes. */
export function bytesFlag(name: string, raw: string): number {
  const m = /^(\d+(?:\.\d+)?)\s*([a-z]*)$/i.exec(raw.trim());
  const unit = UNITS[(m?.[2] ?? '').toLowerCase() || 'b'];
  if (!m || unit === undefined) throw new InvalidArgumentError(`--${name} must be a size such as 512MiB or 4GiB; got ${JSON.stringify(raw.slice(0, 40))}`);
  return Math.floor(Number(m[1]) * unit);
}

function quotaFlags(values: Record<string, unknown>): Partial<TenantQuota> {
  const storage = stringFlag(values, 'max-storage');
  return {
    ...(storage !== undefined ? { maxStorageBytes: bytesFlag('max-storage', storage) } : {}),
    ...(values['max-streams'] !== undefined ? { maxStreams: intFlag('max-streams', values['max-streams'], 0, 1) } : {}),
    ...(values['max-consumers'] !== undefined ? { maxConsumers: intFlag('max-consumers', values['max-consumers'], 0, 1) } : {}),
    ...(values['max-connections'] !== undefined ? { maxConnections: intFlag('max-connections', values['max-connections'], 0, 1) } : {}),
  };
}

/** `--replicas 3 --placement az:1,az:2`: the tenant's placement, or undefined (keep the recorded one). */
export function placementFlags(values: Record<string, unknown>): TenantPlacement | undefined {
  const r = values['replicas'];
  const p = values['placement'];
  if (r === undefined && p === undefined) return undefined;
  const replicas = r === undefined ? 1 : Number(r);
  if (r !== undefined && !/^\d+$/.test(String(r))) throw new PlacementError(`--replicas must be 1, 3 or 5; got ${JSON.stringify(String(r).slice(0, 20))}`);
  const tags =
    typeof p === 'string'
      ? p
          .split(',')
          .map((x) => x.trim())
          .filter(Boolean)
      : [];
  return parseTenantPlacement({ replicas, tags });
}

const placementLine = (p: TenantPlacement) => `${p.replicas} replica${p.replicas === 1 ? '' : 's'}${p.tags.length ? `, servers tagged ${p.tags.join(', ')}` : ''}`;

const gib = (n: number) => `${(n / 1024 ** 3).toFixed(n % 1024 ** 3 === 0 ? 0 : 2)} GiB`;
const quotaLine = (q: TenantQuota) => `storage ${gib(q.maxStorageBytes)}, ${q.maxStreams} streams, ${q.maxConsumers} consumers, ${q.maxConnections} connections`;

export async function authCmd(argv: string[]): Promise<number> {
  const [verb, ...rest] = argv;
  if (verb === 'init') {
    const { values } = parse(rest, { 'auth-dir': { type: 'string' }, json: { type: 'boolean' } }, []);
    const dir = authDir(values, process.env);
    if (!dir) throw new InvalidArgumentError('capstan auth init needs --auth-dir <dir> (or CAPSTAN_AUTH_DIR)');
    const store = await openAuthStore(dir, { create: true });
    print(values['json'] === true, { dir, operator: store.operatorPublicKey, systemAccount: store.systemAccount, platformAccount: store.platformAccount }, () =>
      [
        `key store ready in ${dir}`,
        `  operator          ${store.operatorPublicKey}`,
        `  system account    ${store.systemAccount}`,
        `  platform account  ${store.platformAccount}`,
        dim('  nats-server: operator mode from this store (see docs/tenancy.md); the services take services/<role>.creds'),
      ].join('\n'),
    );
    return 0;
  }
  if (verb === 'serve') {
    const { values } = parse(rest, { nats: { type: 'string' } }, []);
    return withAdmin(values, async (a) => {
      await ensurePlatform(a);
      const authority = await startFleetAuthority({ ...a, log: a.log ?? (await import('@capstan/kit')).createLogger('auth', 'info') });
      process.stdout.write('enforcing fleet decisions on worker credentials (Ctrl-C to stop)\n');
      await new Promise<void>((resolve) => {
        process.once('SIGINT', resolve);
        process.once('SIGTERM', resolve);
      });
      await authority.stop();
      return 0;
    });
  }
  throw new InvalidArgumentError('usage: capstan auth init | capstan auth serve');
}

export async function tenantCmd(argv: string[]): Promise<number> {
  const [verb, ...rest] = argv;
  if (verb === 'add') {
    const { values, args } = parse(
      rest,
      {
        nats: { type: 'string' },
        json: { type: 'boolean' },
        pool: { type: 'string', multiple: true },
        replicas: { type: 'string' },
        placement: { type: 'string' },
        ...QUOTA_FLAGS,
      },
      ['tenant'],
    );
    const t = parseTenantId(args[0]);
    const quota = quotaFlags(values);
    const pools = stringsFlag(values, 'pool');
    const placement = placementFlags(values);
    return withAdmin(values, async (a) => {
      const r = await provisionTenant(a, t, { quota, ...(pools.length ? { pools } : {}), ...(placement ? { placement } : {}) });
      const placedAs = a.store.placement(t);
      print(values['json'] === true, { tenant: t, account: r.account, quota: r.quota, placement: placedAs, created: r.created }, () =>
        [
          `tenant ${t} ${r.created ? 'added' : 'up to date'}`,
          `  account    ${r.account}`,
          `  quota      ${quotaLine(r.quota)}`,
          `  placement  ${placementLine(placedAs)}`,
          dim(`  credentials: capstan creds issue --tenant ${t} --role client|worker|operator --name <n>`),
        ].join('\n'),
      );
      return 0;
    });
  }
  if (verb === 'quota') {
    const { values, args } = parse(rest, { nats: { type: 'string' }, json: { type: 'boolean' }, ...QUOTA_FLAGS }, ['tenant']);
    const t = parseTenantId(args[0]);
    const quota = quotaFlags(values);
    return withAdmin(values, async (a) => {
      const q = Object.keys(quota).length ? await setTenantQuota(a, t, quota) : a.store.quota(t);
      print(values['json'] === true, { tenant: t, quota: q }, () => `tenant ${t}: ${quotaLine(q)}`);
      return 0;
    });
  }
  if (verb === 'list') {
    const { values } = parse(rest, { nats: { type: 'string' }, json: { type: 'boolean' } }, []);
    return withAdmin(values, (a) => {
      const tenants = a.store.tenants().map((t) => ({ tenant: t, account: a.store.tenantAccountKey(t), quota: a.store.quota(t) }));
      print(values['json'] === true, tenants, () =>
        tenants.length
          ? table(
              ['TENANT', 'ACCOUNT', 'QUOTA'],
              tenants.map((x) => [x.tenant, x.account, quotaLine(x.quota)]),
            )
          : 'no tenants',
      );
      return Promise.resolve(0);
    });
  }
  throw new InvalidArgumentError(
    'usage: capstan tenant add <t> [--max-storage 4GiB] [--max-streams N] [--max-consumers N] [--max-connections N] [--pool p]… [--replicas 1|3|5] [--placement tag,…] | capstan tenant quota <t> [flags] | capstan tenant list',
  );
}

const DURATION = /^(\d+)([smhd])$/;
function expiresFlag(raw: string | undefined): number | undefined {
  if (raw === undefined) return undefined;
  const m = DURATION.exec(raw);
  if (!m) throw new InvalidArgumentError(`--expires must be a duration such as 12h or 30d; got ${JSON.stringify(raw.slice(0, 40))}`);
  return Number(m[1]) * { s: 1, m: 60, h: 3600, d: 86_400 }[m[2] as 's' | 'm' | 'h' | 'd'];
}

const userRow = (u: IssuedUser) => [
  u.name,
  u.role,
  (u.pools ?? []).join(',') || '-',
  new Date(u.issuedAt).toISOString(),
  u.revokedAt ? red(`revoked ${new Date(u.revokedAt).toISOString()}`) : green('active'),
];

export async function credsCmd(argv: string[]): Promise<number> {
  const [verb, ...rest] = argv;
  if (verb === 'issue') {
    const { values } = parse(
      rest,
      {
        nats: { type: 'string' },
        tenant: { type: 'string' },
        role: { type: 'string' },
        name: { type: 'string' },
        pool: { type: 'string', multiple: true },
        group: { type: 'string', multiple: true },
        out: { type: 'string' },
        expires: { type: 'string' },
        json: { type: 'boolean' },
      },
      [],
    );
    const t = tenantFlag(values);
    const role = stringFlag(values, 'role');
    if (!role || !isTenantRole(role)) throw new InvalidArgumentError(`--role must be one of ${TENANT_ROLES.join(', ')}`);
    const name = stringFlag(values, 'name');
    if (!name) throw new InvalidArgumentError('--name <n> is required: it names the credential (and a worker: its admission subject)');
    const pools = stringsFlag(values, 'pool');
    if (pools.length > 0 && role !== 'worker') throw new InvalidArgumentError('--pool is for worker credentials');
    // Approver groups: a policy's @approval("g") accepts the decisions of members of g only.
    const groups = stringsFlag(values, 'group');
    if (groups.length > 0 && role !== 'operator') throw new InvalidArgumentError('--group is for operator credentials: only operators decide approvals');
    const expiresInS = expiresFlag(stringFlag(values, 'expires'));
    return withAdmin(values, async (a) => {
      const { creds, user } = await issueCredential(a, t, role, name, {
        ...(pools.length ? { pools } : {}),
        ...(groups.length ? { groups } : {}),
        ...(expiresInS ? { expiresInS } : {}),
      });
      const out = stringFlag(values, 'out') ?? a.store.defaultCredsPath(t, name);
      mkdirSync(dirname(out), { recursive: true, mode: 0o700 });
      writeFileSync(out, creds, { mode: 0o600 });
      chmodSync(out, 0o600);
      print(values['json'] === true, { ...user, path: out }, () =>
        [`${role} credential ${name} for tenant ${t} written to ${out} (owner-only)`, dim(`  use it: NATS_CREDS=${out}, or capstan … --creds ${out}`)].join('\n'),
      );
      return 0;
    });
  }
  if (verb === 'revoke' || verb === 'restore') {
    const { values } = parse(rest, { nats: { type: 'string' }, tenant: { type: 'string' }, name: { type: 'string' }, json: { type: 'boolean' } }, []);
    const t = tenantFlag(values);
    const name = stringFlag(values, 'name');
    if (!name) throw new InvalidArgumentError('--name <n> is required');
    return withAdmin(values, async (a) => {
      const u = verb === 'revoke' ? await revokeCredential(a, t, name) : await restoreCredential(a, t, name);
      print(values['json'] === true, u, () =>
        verb === 'revoke' ? `credential ${name} of ${t} revoked: the server has closed its connections and refuses it` : `credential ${name} of ${t} restored`,
      );
      return 0;
    });
  }
  if (verb === 'list') {
    const { values } = parse(rest, { nats: { type: 'string' }, tenant: { type: 'string' }, json: { type: 'boolean' } }, []);
    const t = tenantFlag(values);
    return withAdmin(values, (a) => {
      const users = a.store.users(t);
      print(values['json'] === true, users, () => (users.length ? table(['NAME', 'ROLE', 'POOLS', 'ISSUED', 'STATE'], users.map(userRow)) : `no credentials issued in ${t}`));
      return Promise.resolve(0);
    });
  }
  throw new InvalidArgumentError(
    'usage: capstan creds issue --tenant t --role client|worker|operator --name n [--pool p]… [--group g]… [--out f] [--expires 30d] | capstan creds revoke|restore --tenant t --name n | capstan creds list --tenant t',
  );
}

/** A local user named by its public key, or by a `.creds` file (whose public key is read; the seed is not kept). */
async function localUserKey(raw: string): Promise<string> {
  if (/^U[A-Z2-7]{55}$/.test(raw)) return raw;
  return (await readCredentials(raw)).publicKey;
}

/**
 * `capstan leaf config`: a tenant's leaf credential and its nats-server configuration, for
 * running the data plane in the tenant's network (docs/cluster.md).
 */
export async function leafCmd(argv: string[]): Promise<number> {
  const [verb, ...rest] = argv;
  if (verb !== 'config')
    throw new InvalidArgumentError(
      'usage: capstan leaf config --tenant <t> --platform <nats-leaf://host:7422>… --user <worker .creds | public key>… [--pool p]… [--name leaf] [--listen 127.0.0.1:4222] [--out <dir>]',
    );
  const { values } = parse(
    rest,
    {
      nats: { type: 'string' },
      tenant: { type: 'string' },
      platform: { type: 'string', multiple: true },
      user: { type: 'string', multiple: true },
      pool: { type: 'string', multiple: true },
      name: { type: 'string' },
      listen: { type: 'string' },
      out: { type: 'string' },
      json: { type: 'boolean' },
    },
    [],
  );
  const t = tenantFlag(values);
  const platformLeafUrls = stringsFlag(values, 'platform');
  if (platformLeafUrls.length === 0) throw new InvalidArgumentError("--platform <url> is required: the platform's leaf port (nats-leaf://host:7422, or tls://host:7422)");
  const users = stringsFlag(values, 'user');
  if (users.length === 0) throw new InvalidArgumentError('--user is required: the worker credentials (or public keys) that will connect to the leaf server');
  const localUsers = await Promise.all(users.map(localUserKey));
  const pools = stringsFlag(values, 'pool');
  const name = stringFlag(values, 'name') ?? 'leaf';
  const listen = stringFlag(values, 'listen');
  return withAdmin(values, async (a) => {
    const out = stringFlag(values, 'out') ?? join(dirname(a.store.defaultCredsPath(t, name)), `leaf-${name}`);
    mkdirSync(out, { recursive: true, mode: 0o700 });
    const issued = await issueLeaf(a, t, { name, pools, localUsers, platformLeafUrls, credsPath: join(out, 'leaf.creds'), ...(listen ? { listen } : {}) });
    writeFileSync(join(out, 'leaf.creds'), issued.creds, { mode: 0o600 });
    chmodSync(join(out, 'leaf.creds'), 0o600);
    writeFileSync(join(out, 'leaf.conf'), issued.config);
    print(values['json'] === true, { ...issued.user, dir: out }, () =>
      [
        `leaf credential ${name} for tenant ${t}: ${join(out, 'leaf.conf')} and ${join(out, 'leaf.creds')} (owner-only)`,
        dim(
          `  on the tenant's machine: nats-server -c leaf.conf (fix the creds path if moved); workers: NATS_URL=nats://${listen ?? '127.0.0.1:4222'} NATS_JS_DOMAIN=${Platform.jsDomain}`,
        ),
      ].join('\n'),
    );
    return 0;
  });
}

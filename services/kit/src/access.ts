/**
 * How a process reaches tenants.
 *
 * Each tenant is its own NATS account. A platform service (orchestrator, policy, …) holds
 * one credential, a user in the platform account; from the tenant registry
 * (`capstan.tenants.<t>`, written by the admin) it learns every tenant and the user JWT it
 * has in that tenant's account, issued for its own key. It then opens one connection per
 * tenant, signing with the same seed. So a service needs no file per tenant, a tenant added
 * later is served without a restart, and a leaked service seed is still confined by the
 * permissions of its role (see `permissionsFor`).
 *
 * A tenant's own deployment (a worker) or a person (the CLI with `--creds`) holds a user in
 * one tenant's account and connects to that tenant only.
 */
import { jetstreamManager, JetStreamApiCodes, JetStreamApiError, type JetStreamManager, type StoredMsg } from '@nats-io/jetstream';
import { CapstanError, CredentialsError, decode, ErrorCode, parseTenantRecord, Platform, type ServiceRole, type TenantId, type TenantRecord } from '@capstan/schemas';
import { signerOf } from './proof.js';
import { connectNats, jwtIssuer, jwtSubject, readCredentials, tenantConnection, type CredentialsInfo, type NatsConnection, type NatsTls, type TenantConnection } from './nats.js';
import type { Logger } from './log.js';

/** Reads one tenant's registry record; undefined when it has none. */
export async function readTenantRecord(jsm: JetStreamManager, t: TenantId): Promise<TenantRecord | undefined> {
  let m: StoredMsg | null;
  try {
    m = await jsm.direct.getMessage(Platform.tenantsStream, { last_by_subj: Platform.tenantRecord(t) });
  } catch (e) {
    if (isNotFound(e)) return undefined;
    throw e;
  }
  return m ? parseTenantRecord(decode(m.data)) : undefined;
}

/** Every tenant in the registry (the subjects it holds a record on). */
export async function listRegisteredTenants(jsm: JetStreamManager): Promise<TenantId[]> {
  const info = await jsm.streams.info(Platform.tenantsStream, { subjects_filter: Platform.allTenantRecords });
  const prefix = Platform.allTenantRecords.slice(0, -1);
  return Object.keys(info.state.subjects ?? {})
    .map((s) => s.slice(prefix.length) as TenantId)
    .sort();
}

function isNotFound(e: unknown): boolean {
  if (e instanceof JetStreamApiError) return e.code === JetStreamApiCodes.NoMessageFound || e.status === 404;
  return e instanceof Error && /no message found|not found/i.test(e.message);
}

export interface TenantFollower {
  /** Tenants handed to `onTenant` so far. */
  readonly tenants: ReadonlySet<TenantId>;
  stop(): void;
}

/** Where a process's tenants come from, and its connections to them. */
export interface TenantAccess {
  /** The role this access acts as (a service role, or the role in a tenant credential). */
  readonly role: string;
  /** The tenants this access can reach now (the registry, or its credentials' tenants). */
  list(): Promise<TenantId[]>;
  /** A connection to `t`'s account (opened once, then shared). @throws when `t` is not reachable */
  tenant(t: TenantId): Promise<TenantConnection>;
  /**
   * Calls `onTenant` once for every tenant the process should serve: the configured list,
   * or every registered tenant when `wanted` is `all`, including tenants registered later
   * (looked for every `everyMs`). Resolves after the first round.
   */
  follow(wanted: readonly TenantId[] | 'all', everyMs: number, onTenant: (tc: TenantConnection) => Promise<void>, log: Logger): Promise<TenantFollower>;
  /** Drains every connection. */
  close(): Promise<void>;
}

export interface AccessOptions {
  readonly servers: string;
  /** Names the connections (`<name>@<tenant>` per tenant). */
  readonly name: string;
  readonly log: Logger;
  readonly tls?: NatsTls;
  /** The platform's JetStream domain, when the streams are reached through a leaf node. */
  readonly jsDomain?: string;
}

/**
 * A platform service's access: its platform-account credential (`NATS_CREDS`), the
 * registry, and a connection per tenant as `role`.
 * @throws CredentialsError when the file is not a platform service credential
 */
export async function connectAsService(role: ServiceRole, credsPath: string, o: AccessOptions): Promise<TenantAccess> {
  const creds = await readCredentials(credsPath);
  if (creds.tenant)
    throw new CredentialsError(
      credsPath,
      `is a credential of tenant ${creds.tenant} (role ${creds.role ?? '?'}); a platform service needs its own (services/<role>.creds in the auth store)`,
    );
  if (creds.role !== role) throw new CredentialsError(credsPath, `is the ${creds.role ?? 'unknown'} service's credential, not the ${role} service's`);
  const platform = await connectNats(o.servers, o.name, o.log, { credentials: creds, ...(o.tls ? { tls: o.tls } : {}) });
  const registry = await jetstreamManager(platform, { checkAPI: false });
  const opened = new Map<TenantId, Promise<TenantConnection>>();
  const open = async (t: TenantId): Promise<TenantConnection> => {
    const record = await readTenantRecord(registry, t);
    if (!record) throw new CapstanError(ErrorCode.UnknownTenant, `tenant ${t} is not in the registry (capstan tenant add ${t})`);
    const jwt = record.services[role];
    if (!jwt) throw new CredentialsError(credsPath, `the registry has no ${role} user for tenant ${t} (capstan tenant add ${t} issues one)`);
    if (jwtSubject(jwt) !== creds.publicKey) {
      throw new CredentialsError(credsPath, `the registry's ${role} user for tenant ${t} was issued for another key (re-run capstan tenant add ${t} with this auth store)`);
    }
    const nc = await connectNats(o.servers, `${o.name}@${t}`, o.log.child({ tenant: t }), { credentials: { jwt, seed: creds.seed }, ...(o.tls ? { tls: o.tls } : {}) });
    // Its signatures are checked against the tenant's account key (its JWT's issuer).
    return tenantConnection(t, nc, { account: record.account, signer: signerOf(jwt, creds.seed), record: () => readTenantRecord(registry, t) });
  };
  return makeAccess(role, opened, open, () => listRegisteredTenants(registry), [platform]);
}

/**
 * A tenant credential's access (a worker, a person): connections to the tenants its
 * credentials name, one file each.
 */
export async function connectAsTenantUser(
  credsPaths: readonly string[],
  o: AccessOptions,
): Promise<TenantAccess & { readonly credentials: ReadonlyMap<TenantId, CredentialsInfo> }> {
  const byTenant = new Map<TenantId, CredentialsInfo>();
  let role: string | undefined;
  for (const path of credsPaths) {
    const c = await readCredentials(path);
    if (!c.tenant) throw new CredentialsError(path, 'names no tenant (a platform service credential?); issue one with capstan creds issue --tenant <t>');
    if (byTenant.has(c.tenant)) throw new CredentialsError(path, `is a second credential for tenant ${c.tenant}`);
    if (role !== undefined && c.role !== role) throw new CredentialsError(path, `is a ${c.role ?? '?'} credential; the others are ${role}`);
    role = c.role;
    byTenant.set(c.tenant, c);
  }
  const opened = new Map<TenantId, Promise<TenantConnection>>();
  const open = async (t: TenantId): Promise<TenantConnection> => {
    const c = byTenant.get(t);
    if (!c) throw new CapstanError(ErrorCode.UnknownTenant, `no credential for tenant ${t} was given`);
    const nc = await connectNats(o.servers, `${o.name}@${t}`, o.log.child({ tenant: t }), { credentials: c, ...(o.tls ? { tls: o.tls } : {}) });
    // A tenant credential was issued by the tenant's account: that issuer is whom it trusts.
    return tenantConnection(t, nc, { account: jwtIssuer(c.jwt), signer: signerOf(c.jwt, c.seed), ...(o.jsDomain ? { jsDomain: o.jsDomain } : {}) });
  };
  const access = makeAccess(role ?? 'unknown', opened, open, () => Promise.resolve([...byTenant.keys()].sort()), []);
  return Object.assign(access, { credentials: byTenant as ReadonlyMap<TenantId, CredentialsInfo> });
}

function makeAccess(
  role: string,
  opened: Map<TenantId, Promise<TenantConnection>>,
  open: (t: TenantId) => Promise<TenantConnection>,
  list: () => Promise<TenantId[]>,
  extra: NatsConnection[],
): TenantAccess {
  const tenant = (t: TenantId) => {
    let p = opened.get(t);
    if (!p) {
      p = open(t);
      opened.set(t, p);
      // A failed open is tried again next time, not remembered.
      p.catch(() => opened.delete(t));
    }
    return p;
  };
  return {
    role,
    tenant,
    list,
    async follow(wanted, everyMs, onTenant, log) {
      const served = new Set<TenantId>();
      const missing = new Set<TenantId>();
      let timer: NodeJS.Timeout | undefined;
      let stopped = false;
      const round = async () => {
        const registered = await list();
        for (const t of wanted === 'all' ? registered : wanted) {
          if (served.has(t) || stopped) continue;
          if (!registered.includes(t)) {
            if (!missing.has(t)) log.warn({ tenant: t }, 'configured tenant is not provisioned yet');
            missing.add(t);
            continue;
          }
          let tc: TenantConnection;
          try {
            tc = await tenant(t);
          } catch (e) {
            // Looked at again next round (its record may be refreshed, the server may be back).
            log.warn({ tenant: t, err: e }, 'cannot connect to the tenant; trying again');
            continue;
          }
          served.add(t);
          await onTenant(tc);
        }
      };
      const loop = () => {
        if (stopped) return;
        timer = setTimeout(() => {
          round()
            .catch((e: unknown) => log.warn({ err: e }, 'tenant discovery failed'))
            .finally(loop);
        }, everyMs);
        timer.unref();
      };
      await round();
      loop();
      return {
        tenants: served,
        stop() {
          stopped = true;
          clearTimeout(timer);
        },
      };
    },
    async close() {
      const conns = await Promise.allSettled([...opened.values()]);
      opened.clear();
      await Promise.allSettled([...conns.flatMap((c) => (c.status === 'fulfilled' ? [c.value.nc.drain()] : [])), ...extra.map((nc) => nc.drain())]);
    },
  };
}

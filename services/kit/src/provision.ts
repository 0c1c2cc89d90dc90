/**
 * The platform admin's operations on a running server: push account JWTs, provision a
 * tenant (account, quota, streams, consumers, registry record), issue and revoke
 * credentials. Each acts with the key store (`AuthStore`); nothing here runs in a service.
 */
import { JetStreamApiCodes, JetStreamApiError, type JetStreamManager, type StreamConfig } from '@nats-io/jetstream';
import {
  CapstanError,
  encode,
  ErrorCode,
  DEFAULT_TENANT_PLACEMENT,
  PlacementError,
  parseToken,
  Platform,
  Role,
  SERVICE_ROLES,
  Streams,
  UnavailableError,
  type RoleScope,
  type ServiceRole,
  type TenantId,
  type TenantPlacement,
  type TenantQuota,
  type TenantRecord,
  type TenantRole,
} from '@capstan/schemas';
import type { AuthStore, IssuedUser } from './auth-store.js';
import { connectNats, parseCredentials, tenantConnection, type NatsTls, type TenantConnection } from './nats.js';
import { createLogger, type Logger } from './log.js';
import { ensureConsumers, ensureTenant, poolConsumerConfig, DEFAULT_CONSUMER_SETTINGS, DEFAULT_TENANT_LIMITS, type ConsumerSettings, type TenantLimits } from './tenant.js';

export interface AdminTarget {
  /** The servers (comma-separated URLs). */
  readonly servers: string;
  readonly store: AuthStore;
  readonly tls?: NatsTls;
  readonly log?: Logger;
}

const quiet = createLogger('admin', 'silent');

/** Pushes an account JWT to the servers (through the system account). */
export async function pushAccountJwt(a: AdminTarget, jwt: string): Promise<void> {
  const creds = await parseCredentials(a.store.systemCreds(), 'system.creds');
  const nc = await connectNats(a.servers, 'capstan-admin-push', a.log ?? quiet, { credentials: creds, reconnect: false, ...(a.tls ? { tls: a.tls } : {}) });
  try {
    const reply = await nc.request(Platform.claimsUpdate, new TextEncoder().encode(jwt), { timeout: 5000 });
    const body = JSON.parse(reply.string()) as { data?: { code?: number; message?: string }; error?: { code?: number; description?: string } };
    const code = body.data?.code ?? body.error?.code;
    if (code !== 200) throw new UnavailableError(`the server refused the account update: ${body.error?.description ?? body.data?.message ?? reply.string().slice(0, 200)}`);
  } finally {
    await nc.close();
  }
}

/** Pushes every tenant account the store knows (a server that was away learns them again). */
export async function pushAccounts(a: AdminTarget): Promise<void> {
  for (const t of a.store.tenants()) await pushAccountJwt(a, await a.store.accountJwt(t));
}

/** Runs `fn` with a short-lived admin connection to a tenant's account (or the platform's). */
export async function asAdmin<T>(a: AdminTarget, account: TenantId | 'platform', fn: (tc: TenantConnection) => Promise<T>): Promise<T> {
  const creds = await parseCredentials(await a.store.adminCreds(account), 'admin');
  const nc = await connectNats(a.servers, `capstan-admin@${account}`, a.log ?? quiet, { credentials: creds, reconnect: false, ...(a.tls ? { tls: a.tls } : {}) });
  try {
    return await fn(await tenantConnection(account as TenantId, nc));
  } finally {
    await nc.close();
  }
}

/**
 * Waits until JetStream answers in an account just pushed: the server enables it there
 * asynchronously, and API calls in between find no responder.
 */
async function jetStreamReady(jsm: JetStreamManager, account: string): Promise<void> {
  const deadline = Date.now() + 10_000;
  for (let pause = 10; ; pause = Math.min(pause * 2, 200)) {
    try {
      await jsm.getAccountInfo();
      return;
    } catch (e) {
      if (Date.now() > deadline) throw new UnavailableError(`JetStream did not answer in account ${account} within 10 s of its update`, { cause: e });
      await new Promise((r) => setTimeout(r, pause));
    }
  }
}

/** The JetStream servers behind a target, as they describe themselves. */
export interface ClusterShape {
  /** Servers with JetStream on, by name, with their tags. */
  readonly servers: readonly { readonly name: string; readonly tags: readonly string[] }[];
  /** The JetStream cluster's size (1 for a single server). */
  readonly size: number;
}

/**
 * Asks every server (through the system account) for its JetStream state: how many servers
 * the streams can be spread over, and which tags each carries.
 */
export async function clusterShape(a: AdminTarget): Promise<ClusterShape> {
  const creds = await parseCredentials(a.store.systemCreds(), 'system.creds');
  const nc = await connectNats(a.servers, 'capstan-admin-shape', a.log ?? quiet, { credentials: creds, reconnect: false, ...(a.tls ? { tls: a.tls } : {}) });
  try {
    const servers = new Map<string, string[]>();
    let size = 1;
    // Every server answers once; the replies stop coming when all have.
    for await (const m of await nc.requestMany(Platform.serverPingJsz, new Uint8Array(), { strategy: 'stall', stall: 300, maxWait: 3000 })) {
      const body = JSON.parse(m.string()) as {
        server?: { name?: string; tags?: string[] };
        data?: { config?: unknown; disabled?: boolean; meta_cluster?: { cluster_size?: number } };
      };
      const name = body.server?.name;
      if (!name || body.data?.disabled === true) continue;
      servers.set(
        name,
        (body.server?.tags ?? []).map((t) => t.toLowerCase()),
      );
      size = Math.max(size, body.data?.meta_cluster?.cluster_size ?? 1);
    }
    return { servers: [...servers].map(([name, tags]) => ({ name, tags })), size: Math.max(size, servers.size) };
  } finally {
    await nc.close();
  }
}

/**
 * Checks that the servers can hold a placement: enough servers in the cluster, and enough
 * of them carrying every tag.
 * @throws PlacementError naming what is missing
 */
export function checkPlacement(p: TenantPlacement, shape: ClusterShape): void {
  if (p.replicas > shape.size) {
    throw new PlacementError(`${p.replicas} replicas need a JetStream cluster of at least ${p.replicas} servers; this one has ${shape.size}`);
  }
  if (p.tags.length === 0) return;
  const fit = shape.servers.filter((s) => p.tags.every((t) => s.tags.includes(t)));
  if (fit.length < p.replicas) {
    throw new PlacementError(
      `${p.replicas} replica(s) tagged ${p.tags.join(', ')} need as many servers carrying every tag; ${fit.length} do (${shape.servers.map((s) => `${s.name}: ${s.tags.join(',') || 'no tags'}`).join('; ')})`,
    );
  }
}

function registryStreamConfig(replicas = 1): Partial<StreamConfig> & { name: string } {
  return {
    name: Platform.tenantsStream,
    num_replicas: replicas,
    subjects: [Platform.allTenantRecords],
    storage: 'file' as StreamConfig['storage'],
    retention: 'limits' as StreamConfig['retention'],
    max_msgs_per_subject: 16,
    max_msg_size: 64 * 1024,
    allow_direct: true,
    // A tenant's record can be replaced, never deleted away.
    deny_delete: true,
    deny_purge: true,
  };
}

/**
 * Makes the platform ready on a server: the platform and system accounts are preloaded by
 * the server's configuration; this creates the registry and pushes every tenant account the
 * store knows (a server started on a fresh store learns them again). Idempotent.
 */
export async function ensurePlatform(a: AdminTarget, o: { replicas?: number } = {}): Promise<void> {
  await asAdmin(a, 'platform', async ({ jsm }) => {
    await jetStreamReady(jsm, Platform.accountName);
    try {
      const info = await jsm.streams.info(Platform.tenantsStream);
      // In a cluster the registry is replicated like the tenants' streams: every service reads it.
      if (o.replicas !== undefined && info.config.num_replicas !== o.replicas) await jsm.streams.update(Platform.tenantsStream, registryStreamConfig(o.replicas));
    } catch (e) {
      if (!(e instanceof JetStreamApiError && e.code === JetStreamApiCodes.StreamNotFound)) throw e;
      await jsm.streams.add(registryStreamConfig(o.replicas));
    }
  });
  await pushAccounts(a);
}

export interface ProvisionOptions {
  readonly quota?: Partial<TenantQuota>;
  readonly limits?: TenantLimits;
  /** Worker pools whose consumers exist from the start (more come with worker credentials). */
  readonly pools?: readonly string[];
  readonly consumers?: Partial<ConsumerSettings>;
  /** Partitions the tenant's runs are hashed to (orchestrator ownership); recorded once. */
  readonly partitions?: number;
  /**
   * Replicas and server tags of every stream made for the tenant; remembered with the tenant
   * (a later run without it keeps the recorded one). Checked against the servers first.
   */
  readonly placement?: TenantPlacement;
}

/**
 * Adds a tenant, or brings it up to date: its account (keys made once, quota applied), its
 * streams and consumers, and its registry record with a user for every platform service.
 * Idempotent; re-running it after an upgrade refreshes the services' permissions.
 */
export async function provisionTenant(a: AdminTarget, t: TenantId, o: ProvisionOptions = {}): Promise<TenantRecord & { created: boolean }> {
  const placement = o.placement ?? (a.store.hasTenant(t) ? a.store.placement(t) : DEFAULT_TENANT_PLACEMENT);
  // Refused before anything is made: a tenant is never left half placed.
  if (placement.replicas > 1 || placement.tags.length > 0) checkPlacement(placement, await clusterShape(a));
  const { publicKey, created } = a.store.ensureTenantAccount(t, o.quota, placement);
  await pushAccountJwt(a, await a.store.accountJwt(t));
  // Dead letters may take an eighth of the tenant's storage at most (a stream's max bytes is
  // reserved from the account's quota).
  const quota = a.store.quota(t);
  const limits = o.limits ?? { ...DEFAULT_TENANT_LIMITS, deadLetterBytes: Math.min(DEFAULT_TENANT_LIMITS.deadLetterBytes, Math.floor(quota.maxStorageBytes / 8)) };
  await asAdmin(a, t, async ({ jsm }) => {
    await jetStreamReady(jsm, t);
    await ensureTenant(jsm, t, {
      limits,
      pools: o.pools ?? ['default'],
      consumers: { ...DEFAULT_CONSUMER_SETTINGS, ...o.consumers },
      placement,
      ...(o.partitions ? { partitions: o.partitions } : {}),
    });
  });
  const services: Partial<Record<ServiceRole, string>> = {};
  for (const role of SERVICE_ROLES) services[role] = await a.store.serviceUserJwt(t, role);
  const record: TenantRecord = {
    v: 1,
    tenant: t,
    account: publicKey,
    quota: a.store.quota(t),
    services,
    ...(placement.replicas > 1 || placement.tags.length ? { placement } : {}),
    updatedAt: Date.now(),
  };
  await asAdmin(a, 'platform', async ({ js }) => {
    await js.publish(Platform.tenantRecord(t), encode(record));
  });
  return { ...record, created };
}

/** Changes a tenant's quota: a new account JWT, in force at once on every connection. */
export async function setTenantQuota(a: AdminTarget, t: TenantId, quota: Partial<TenantQuota>): Promise<TenantQuota> {
  if (!a.store.hasTenant(t)) throw new CapstanError(ErrorCode.UnknownTenant, `tenant ${t} has no account (capstan tenant add ${t})`);
  a.store.ensureTenantAccount(t, quota);
  await pushAccountJwt(a, await a.store.accountJwt(t));
  const q = a.store.quota(t);
  // The registry shows the quota in force.
  const services: Partial<Record<ServiceRole, string>> = {};
  for (const role of SERVICE_ROLES) services[role] = await a.store.serviceUserJwt(t, role);
  await asAdmin(a, 'platform', async ({ js }) => {
    const placement = a.store.placement(t);
    await js.publish(
      Platform.tenantRecord(t),
      encode({
        v: 1,
        tenant: t,
        account: a.store.tenantAccountKey(t),
        quota: q,
        services,
        ...(placement.replicas > 1 || placement.tags.length ? { placement } : {}),
        updatedAt: Date.now(),
      } satisfies TenantRecord),
    );
  });
  return q;
}

export interface IssueOptions {
  readonly pools?: readonly string[];
  readonly expiresInS?: number;
  readonly consumers?: Partial<ConsumerSettings>;
  /** A leaf credential's local users (public keys) whose replies cross it. */
  readonly localUsers?: readonly string[];
  /** Approver groups the credential is a member of (`capstan-group:<g>` tags in its JWT). */
  readonly groups?: readonly string[];
}

/**
 * Issues a tenant credential (`capstan creds issue`). A worker's pools get their consumers
 * here, since a worker may not create one.
 */
export async function issueCredential(
  a: AdminTarget,
  t: TenantId,
  role: TenantRole | typeof Role.Leaf,
  name: string,
  o: IssueOptions = {},
): Promise<{ creds: Uint8Array; user: IssuedUser }> {
  if (!a.store.hasTenant(t)) throw new CapstanError(ErrorCode.UnknownTenant, `tenant ${t} has no account (capstan tenant add ${t})`);
  const pools = (o.pools ?? []).map((p) => parseToken('pool', p));
  if (role === Role.Worker || role === Role.Leaf) {
    if (pools.length === 0) pools.push('default');
    // A pool's consumer is made with its first worker; settings change only when asked for.
    await asAdmin(a, t, ({ jsm }) =>
      ensureConsumers(
        jsm,
        pools.map((p) => ({ stream: Streams.work(t), config: poolConsumerConfig(t, p, { ...DEFAULT_CONSUMER_SETTINGS, ...o.consumers }) })),
        { update: o.consumers !== undefined },
      ),
    );
  }
  const scope: RoleScope = role === Role.Worker ? { pools, workerId: name } : role === Role.Leaf ? { pools, localUsers: o.localUsers ?? [] } : {};
  const issued = await a.store.issueUser(t, role, name, scope, { ...(o.expiresInS ? { expiresInS: o.expiresInS } : {}), ...(o.groups?.length ? { groups: o.groups } : {}) });
  // A replaced credential's old key is revoked in the account: push it.
  await pushAccountJwt(a, await a.store.accountJwt(t));
  return issued;
}

/** Revokes a credential: its connections are closed by the server and it cannot reconnect. */
export async function revokeCredential(a: AdminTarget, t: TenantId, name: string): Promise<IssuedUser> {
  const u = a.store.revokeUser(t, name);
  await pushAccountJwt(a, await a.store.accountJwt(t));
  return u;
}

/** Lifts a revocation (a worker approved again). */
export async function restoreCredential(a: AdminTarget, t: TenantId, name: string): Promise<IssuedUser> {
  const u = a.store.restoreUser(t, name);
  await pushAccountJwt(a, await a.store.accountJwt(t));
  return u;
}

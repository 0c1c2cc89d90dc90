/**
 * Tenancy records: a tenant's quotas (its NATS account's limits) and its entry in the
 * platform's tenant registry. Pure schemas; the keys and JWTs are made in `@capstan/kit`.
 */
import { arr, int, obj, optional, str, type Infer } from './validate.js';
import { TENANT_ID_PATTERN } from './ids.js';
import { PlacementError } from './errors.js';
import { SERVICE_ROLES, type ServiceRole } from './permissions.js';

const GIB = 1024 * 1024 * 1024;

/**
 * A tenant's quotas, enforced by nats-server as its account's limits: when one is reached
 * the tenant's own publishes (or connections, streams, consumers) are refused; no other
 * tenant notices. On a single server the storage quota is a reservation: the quotas of all
 * tenants together must fit the server's JetStream store (`max_file_store`), or a new
 * tenant's JetStream is not enabled.
 */
export interface TenantQuota {
  /** JetStream file storage of all its streams together. */
  readonly maxStorageBytes: number;
  readonly maxStreams: number;
  readonly maxConsumers: number;
  /** Client connections at once (services, workers, people). */
  readonly maxConnections: number;
}

export const DEFAULT_TENANT_QUOTA: TenantQuota = Object.freeze({
  maxStorageBytes: GIB,
  maxStreams: 16,
  maxConsumers: 64,
  maxConnections: 256,
});

export const tenantQuotaSchema = obj('tenant quota', {
  maxStorageBytes: int({ min: 1024 * 1024, max: Number.MAX_SAFE_INTEGER }),
  maxStreams: int({ min: 6, max: 100_000 }),
  maxConsumers: int({ min: 4, max: 1_000_000 }),
  maxConnections: int({ min: 1, max: 1_000_000 }),
});

/** Replica counts a tenant's streams may have: an odd count, so a majority always decides. */
export const REPLICA_COUNTS = [1, 3, 5] as const;

/**
 * Where a tenant's streams live in a JetStream cluster: how many servers hold each stream
 * (acknowledged only once a majority stored it) and the server tags each of those servers
 * must carry (`server_tags` in its configuration, such as `az:eu-1` or `tenant-tier:gold`).
 * Every stream the platform makes for the tenant takes it, and its consumers inherit it.
 */
export interface TenantPlacement {
  readonly replicas: (typeof REPLICA_COUNTS)[number];
  readonly tags: readonly string[];
}

export const DEFAULT_TENANT_PLACEMENT: TenantPlacement = Object.freeze({ replicas: 1, tags: Object.freeze([]) as readonly string[] });

/** A server tag: what nats-server accepts in `server_tags`, lower-cased as the server stores it. */
const PLACEMENT_TAG = /^[a-z0-9][a-z0-9_.:-]{0,63}$/;

/**
 * Checks a placement on its own (the servers' size and tags are checked when it is applied).
 * @throws PlacementError naming what is wrong
 */
export function parseTenantPlacement(input: { replicas?: unknown; tags?: unknown }): TenantPlacement {
  const replicas = input.replicas ?? 1;
  if (typeof replicas !== 'number' || !(REPLICA_COUNTS as readonly number[]).includes(replicas)) {
    throw new PlacementError(`replicas must be one of ${REPLICA_COUNTS.join(', ')} (a majority must be able to decide); got ${JSON.stringify(replicas)}`);
  }
  const tags = input.tags ?? [];
  if (!Array.isArray(tags) || tags.length > 8) throw new PlacementError('placement tags are a list of at most 8 server tags');
  const out: string[] = [];
  for (const tag of tags) {
    if (typeof tag !== 'string' || !PLACEMENT_TAG.test(tag.toLowerCase())) {
      throw new PlacementError(`placement tag ${JSON.stringify(String(tag).slice(0, 70))} is not a server tag (letters, digits, '_', '.', ':', '-'; at most 64)`);
    }
    if (!out.includes(tag.toLowerCase())) out.push(tag.toLowerCase());
  }
  return { replicas: replicas as TenantPlacement['replicas'], tags: out };
}

const PUBLIC_ACCOUNT_KEY = /^A[A-Z2-7]{55}$/;
const JWT = /^[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+$/;

/**
 * A tenant's entry in the registry (`capstan.tenants.<t>` in the platform account): its
 * account, its quota, and for each platform service the user JWT that service connects to
 * the tenant's account with. A JWT is no secret (connecting also needs the service's own
 * seed, which never leaves it).
 */
export interface TenantRecord {
  readonly v: 1;
  readonly tenant: string;
  /** The tenant account's public key. */
  readonly account: string;
  readonly quota: TenantQuota;
  readonly services: Readonly<Partial<Record<ServiceRole, string>>>;
  /** Replicas and server tags of its streams, when not the single-server default. */
  readonly placement?: TenantPlacement;
  /** When the record was written (epoch ms, the admin's clock; informational). */
  readonly updatedAt: number;
}

const serviceUsers = obj(
  'service users',
  Object.fromEntries(SERVICE_ROLES.map((r) => [r, optional(str({ max: 16_384, pattern: JWT }))])) as Record<ServiceRole, ReturnType<typeof optional<string>>>,
);

const recordShape = obj('tenant record', {
  v: int({ min: 1, max: 1 }),
  tenant: str({ pattern: TENANT_ID_PATTERN }),
  account: str({ pattern: PUBLIC_ACCOUNT_KEY }),
  quota: tenantQuotaSchema,
  services: serviceUsers,
  placement: optional(obj('placement', { replicas: int({ min: 1, max: 5 }), tags: arr(str({ max: 64 }), { max: 8 }) })),
  updatedAt: int({ min: 0 }),
});

/** @throws SchemaError */
export function parseTenantRecord(value: unknown): TenantRecord {
  const r = recordShape.parse(value);
  return {
    v: 1,
    tenant: r.tenant,
    account: r.account,
    quota: r.quota,
    services: r.services as Partial<Record<ServiceRole, string>>,
    ...(r.placement ? { placement: parseTenantPlacement(r.placement) } : {}),
    updatedAt: r.updatedAt,
  };
}

export type TenantQuotaInput = Infer<typeof tenantQuotaSchema>;

/**
 * Tenancy records: a tenant's quotas (its NATS account's limits) and its entry in the
 * platform's tenant registry. Pure schemas; the keys and JWTs are made in `@capstan/kit`.
 */
import { int, obj, optional, str, type Infer } from './validate.js';
import { TENANT_ID_PATTERN } from './ids.js';
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
  updatedAt: int({ min: 0 }),
});

/** @throws SchemaError */
export function parseTenantRecord(value: unknown): TenantRecord {
  const r = recordShape.parse(value);
  return { v: 1, tenant: r.tenant, account: r.account, quota: r.quota, services: r.services as Partial<Record<ServiceRole, string>>, updatedAt: r.updatedAt };
}

export type TenantQuotaInput = Infer<typeof tenantQuotaSchema>;

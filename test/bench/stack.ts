/**
 * A private nats-server for a benchmark, run as production runs it: operator mode, an
 * account per tenant, every service and client with its own credential (so the figures
 * include what authentication costs). The key store lives in a temporary directory.
 */
import { mkdtempSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import {
  connectNats,
  createLogger,
  issueCredential,
  openAuthStore,
  parseCredentials,
  provisionTenant,
  startNatsServer,
  signerOf,
  tenantConnection,
  type AdminTarget,
  type AuthStore,
  type NatsServer,
  type NatsServerOptions,
  type ProvisionOptions,
  type TenantConnection,
} from '@capstan/kit';
import { Role, type ServiceRole, type TenantId } from '@capstan/schemas';

export interface BenchNats {
  readonly server: NatsServer;
  readonly url: string;
  readonly store: AuthStore;
  readonly admin: AdminTarget;
  /** Adds a tenant (account, streams, consumers, registry record). */
  provision(t: TenantId, o?: ProvisionOptions): Promise<void>;
  /** A connection to `t`'s account as `role` (the admin holds the account whole). */
  connect(t: TenantId, role: Role): Promise<TenantConnection>;
  /** `NATS_URL` and `NATS_CREDS` for a platform service. */
  env(role: ServiceRole): Record<string, string>;
  /** A worker credential's file (its pools get their consumers). */
  workerCreds(t: TenantId, name: string, pools?: readonly string[]): Promise<string>;
  stop(): Promise<void>;
}

const quiet = createLogger('bench', 'silent');

export async function startBenchNats(o: Omit<NatsServerOptions, 'auth'> = {}): Promise<BenchNats> {
  const dir = mkdtempSync(join(tmpdir(), 'capstan-bench-auth-'));
  const store = await openAuthStore(join(dir, 'auth'), { create: true });
  // Services spawned through the test harness find their credentials here.
  process.env['CAPSTAN_AUTH_DIR'] = store.dir;
  const server = await startNatsServer({ ...o, auth: store });
  const admin: AdminTarget = { servers: server.url, store, log: quiet };
  const open: TenantConnection[] = [];
  return {
    server,
    url: server.url,
    store,
    admin,
    async provision(t, p = {}) {
      await provisionTenant(admin, t, p);
    },
    async connect(t, role) {
      const creds = role === Role.Admin ? await store.adminCreds(t) : await store.mintUser(t, role, `bench-${role}`);
      const credentials = await parseCredentials(creds, role);
      const tc = await tenantConnection(t, await connectNats(server.url, `bench-${role}`, quiet, { credentials }), { signer: signerOf(credentials.jwt, credentials.seed) });
      open.push(tc);
      return tc;
    },
    env: (role) => ({ NATS_URL: server.url, NATS_CREDS: store.serviceCredsPath(role) }),
    async workerCreds(t, name, pools = ['default']) {
      const { creds } = await issueCredential(admin, t, Role.Worker, name, { pools });
      const path = join(dir, `${t}-${name}.creds`);
      writeFileSync(path, creds, { mode: 0o600 });
      return path;
    },
    async stop() {
      await Promise.allSettled(open.map((tc) => tc.nc.close()));
      await server.stop();
    },
  };
}

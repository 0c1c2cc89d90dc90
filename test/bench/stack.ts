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
import { PROJECT_ROOT } from '@capstan/kit';
import { spawnService, type ServiceProcess } from '../harness/fixtures.js';
import { createW3Load, type W3Load } from './w3-load.js';

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

export interface W3Services {
  /** The orchestrator's and the worker's processes, in that order. */
  readonly procs: readonly ServiceProcess[];
  readonly load: W3Load;
  /** Closes the load and stops both processes. */
  stop(): Promise<void>;
}

/**
 * The W3 stack most benchmarks measure: tenant `t` provisioned, one orchestrator and one
 * worker (256 at a time) as processes with the test fixtures' workflows, and the W3 load
 * client. `env` goes to both processes (tracing, profiling); `workerEnv` to the worker only.
 */
export async function startW3Services(bench: BenchNats, t: TenantId, env: Record<string, string> = {}, workerEnv: Record<string, string> = {}): Promise<W3Services> {
  const fixtures = join(PROJECT_ROOT, 'test', 'dist', 'fixtures', 'workflows.js');
  await bench.provision(t);
  const svcEnv = { NATS_URL: bench.url, CAPSTAN_TENANTS: t, CAPSTAN_WORKFLOWS: fixtures, CAPSTAN_HANDLERS: fixtures, LOG_LEVEL: 'warn', ...env };
  const procs = [
    spawnService('orchestrator', svcEnv),
    spawnService('worker', { ...svcEnv, ...workerEnv, NATS_CREDS: await bench.workerCreds(t, 'bench-worker'), WORKER_CONCURRENCY: '256' }),
  ];
  const load = await createW3Load(await bench.connect(t, Role.Client), (await bench.connect(t, Role.Admin)).nc, t);
  // The services' consumers are up before the first submit.
  await new Promise((r) => setTimeout(r, 1000));
  return {
    procs,
    load,
    async stop() {
      await load.close();
      await Promise.all(procs.map((p) => p.kill('SIGTERM')));
    },
  };
}

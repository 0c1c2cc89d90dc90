/**
 * Fixtures for integration tests: an admin's connections, a fresh tenant (its own NATS
 * account), credentials per role, in-process services and service processes (for kill
 * tests).
 *
 * The test nats-server runs in operator mode like every Capstan server (global-setup.ts):
 * each tenant is an account, every service connects with its own credential, and the
 * harness acts as the platform admin with the run's key store (`CAPSTAN_AUTH_DIR`, set for
 * every test worker by setup.ts, so CLI processes the tests start act as admin too).
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { mkdtempSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import type { JetStreamClient, JetStreamManager } from '@nats-io/jetstream';
import {
  connectAsService,
  connectNats,
  createClient,
  createLogger,
  issueCredential,
  openAuthStore,
  parseCredentials,
  PROJECT_ROOT,
  provisionTenant,
  readRun,
  signerOf,
  tenantConnection,
  type AdminTarget,
  type AuthStore,
  type CapstanClient,
  type ConsumerSettings,
  type NatsConnection,
  type ProvisionOptions,
  type TenantAccess,
  type TenantConnection,
} from '@capstan/kit';
import { CapstanError, parseTenantId, Role, type RoleScope, type RunEvent, type RunId, type ServiceRole, type TenantId, type TenantRole } from '@capstan/schemas';
import type { Registry } from '@capstan/actors';

export const silent = createLogger('test', 'silent');

/** The key store of this test run (made by global-setup.ts, exported by setup.ts). */
export function testAuthDir(): string {
  const dir = process.env['CAPSTAN_AUTH_DIR'];
  if (!dir) throw new Error('CAPSTAN_AUTH_DIR is not set: the test harness (setup.ts) sets it from global-setup.ts');
  return dir;
}

let stores: Promise<AuthStore> | undefined;
export function testAuthStore(): Promise<AuthStore> {
  stores ??= openAuthStore(testAuthDir());
  return stores;
}

/** The admin target for `url` with this run's key store. */
export async function adminOf(url: string): Promise<AdminTarget & { log: typeof silent }> {
  return { servers: url, store: await testAuthStore(), log: silent };
}

/** A platform service's access to its tenants (its own credential), for in-process use in tests. */
export async function accessAs(url: string, role: ServiceRole): Promise<TenantAccess> {
  return connectAsService(role, (await testAuthStore()).serviceCredsPath(role), { servers: url, name: `test-${role}`, log: silent });
}

/** A connection to tenant `t`'s account as `role` (a short-lived credential with exactly that role's permissions). */
export async function connectAs(url: string, t: TenantId, role: Role, name = `test-${role}`, scope: RoleScope = {}): Promise<NatsConnection> {
  const creds = await (await testAuthStore()).mintUser(t, role, name, scope);
  return connectNats(url, name, silent, { credentials: await parseCredentials(creds, name) });
}

/** The environment a platform service runs with in tests: the server and its own credential. */
export async function serviceEnv(url: string, role: ServiceRole, extra: Record<string, string> = {}): Promise<Record<string, string>> {
  return { NATS_URL: url, NATS_CREDS: (await testAuthStore()).serviceCredsPath(role), ...extra };
}

const credsDir = mkdtempSync(join(tmpdir(), 'capstan-test-creds-'));

/**
 * Issues a tenant credential (as `capstan creds issue` does) and writes it to a private file;
 * resolves with its path. A worker's pools get their consumers (`opts.consumers` sets them).
 */
export async function issueCreds(
  url: string,
  t: TenantId,
  role: TenantRole,
  name: string,
  opts: { pools?: readonly string[]; consumers?: Partial<ConsumerSettings> } = {},
): Promise<string> {
  const { creds } = await issueCredential(await adminOf(url), t, role, name, {
    ...(opts.pools ? { pools: opts.pools } : {}),
    ...(opts.consumers ? { consumers: opts.consumers } : {}),
  });
  const path = join(credsDir, `${t}-${name}.creds`);
  writeFileSync(path, creds, { mode: 0o600 });
  return path;
}

/** What services under test run with unless a test says otherwise. */
export const TEST_DEFAULTS = { WORKER_ADMISSION: 'auto', ORCH_POLICY: 'off', WORKER_LEASES: 'off' } as const;

export function randomTenant(prefix = 't'): TenantId {
  return parseTenantId(`${prefix}-${randomBytes(4).toString('hex')}`);
}

/**
 * The platform admin's view of the test server: a connection per tenant account (opened as
 * asked, `>` within that account), and a client over all of them.
 */
export interface Harness {
  readonly url: string;
  readonly client: CapstanClient;
  readonly tenant: (t: TenantId) => Promise<TenantConnection>;
  /** Tenants connected to so far. */
  readonly list: () => Promise<TenantId[]>;
  readonly nc: (t: TenantId) => Promise<NatsConnection>;
  readonly js: (t: TenantId) => Promise<JetStreamClient>;
  readonly jsm: (t: TenantId) => Promise<JetStreamManager>;
  close(): Promise<void>;
}

export async function connect(url: string): Promise<Harness> {
  const store = await testAuthStore();
  const open = new Map<TenantId, Promise<TenantConnection>>();
  const tenant = (t: TenantId) => {
    let p = open.get(t);
    if (!p) {
      p = (async () => {
        const credentials = await parseCredentials(await store.adminCreds(t), 'admin');
        const nc = await connectNats(url, `capstan-test@${t}`, silent, { credentials });
        // The admin signs its commands like anyone (it acts for the people tests name in `by`).
        return tenantConnection(t, nc, { signer: signerOf(credentials.jwt, credentials.seed), account: store.tenantAccountKey(t) });
      })();
      open.set(t, p);
    }
    return p;
  };
  const client = await createClient({ tenant });
  return {
    url,
    client,
    tenant,
    list: () => Promise.resolve([...open.keys()]),
    nc: async (t) => (await tenant(t)).nc,
    js: async (t) => (await tenant(t)).js,
    jsm: async (t) => (await tenant(t)).jsm,
    async close() {
      const all = await Promise.allSettled([...open.values()]);
      await Promise.allSettled(all.flatMap((c) => (c.status === 'fulfilled' ? [c.value.nc.close()] : [])));
    },
  };
}

/**
 * Storage each test tenant reserves on the test server unless a test asks for more: quotas
 * are reservations on a single server, and a run makes a few hundred tenants.
 */
export const TEST_TENANT_STORAGE = 64 * 1024 * 1024;

/** A fresh tenant: its account, quota, streams, consumers and registry record (`capstan tenant add`). */
export async function provision(h: Harness, prefix?: string, opts: ProvisionOptions = {}): Promise<TenantId> {
  const t = randomTenant(prefix);
  await provisionTenant(await adminOf(h.url), t, { ...opts, quota: { maxStorageBytes: TEST_TENANT_STORAGE, ...opts.quota } });
  return t;
}

export async function eventsOf(h: Harness, t: TenantId, runId: RunId): Promise<RunEvent[]> {
  return (await readRun(await h.jsm(t), t, runId)).events;
}

/** Polls until `check` returns a value other than undefined, or fails after `timeoutMs`. */
export async function eventually<T>(what: string, check: () => Promise<T | undefined>, timeoutMs = 30_000, everyMs = 100): Promise<T> {
  const deadline = Date.now() + timeoutMs;
  let last: unknown;
  for (;;) {
    try {
      const v = await check();
      if (v !== undefined) return v;
    } catch (e) {
      last = e;
    }
    if (Date.now() > deadline) throw new Error(`timed out after ${timeoutMs} ms waiting for ${what}${last ? `: ${String(last)}` : ''}`);
    await new Promise((r) => setTimeout(r, everyMs));
  }
}

export type ServiceName = 'orchestrator' | 'worker' | 'projector' | 'sandbox' | 'policy' | 'secrets-lease' | 'datasync';

/** A service running as its own process (`node services/<name>/dist/main.js`). */
export interface ServiceProcess {
  readonly name: ServiceName;
  readonly pid: number;
  readonly output: () => string;
  kill(signal?: NodeJS.Signals): Promise<void>;
  /** SIGSTOP / SIGCONT, to make a worker silent without killing it. */
  pause(): void;
  resume(): void;
  readonly exited: Promise<number | null>;
}

/**
 * A service as its own process. A platform service gets its own credential unless `env`
 * names one (`NATS_CREDS`); a worker needs one issued for it (see {@link issueCreds}).
 */
export function spawnService(name: ServiceName, env: Record<string, string>): ServiceProcess {
  // CAPSTAN_NODE_ARGS passes flags such as --cpu-prof to the service's node (benchmarks).
  const nodeArgs = (env['CAPSTAN_NODE_ARGS'] ?? '').split(' ').filter(Boolean);
  const creds = env['NATS_CREDS'] ?? (name === 'worker' ? undefined : join(testAuthDir(), 'services', `${name}.creds`));
  if (!creds) throw new Error('a worker process needs NATS_CREDS: issue one with issueCreds(url, t, Role.Worker, name)');
  const child: ChildProcess = spawn(process.execPath, [...nodeArgs, join(PROJECT_ROOT, 'services', name, 'dist', 'main.js')], {
    // Workers admit themselves unless a test asks otherwise (WORKER_ADMISSION=required);
    // policy checks and leases are off unless a test turns them on (ORCH_POLICY, WORKER_LEASES).
    env: { ...process.env, LOG_LEVEL: 'warn', ...TEST_DEFAULTS, ...env, NATS_CREDS: creds },
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  let out = '';
  child.stdout?.on('data', (d: Buffer) => (out = (out + d.toString()).slice(-2_000_000)));
  child.stderr?.on('data', (d: Buffer) => (out = (out + d.toString()).slice(-200_000)));
  const exited = new Promise<number | null>((resolve) => child.once('exit', (code) => resolve(code)));
  return {
    name,
    pid: child.pid ?? -1,
    output: () => out,
    exited,
    async kill(signal = 'SIGKILL') {
      if (child.exitCode === null && child.signalCode === null) child.kill(signal);
      await exited;
    },
    pause: () => child.kill('SIGSTOP'),
    resume: () => child.kill('SIGCONT'),
  };
}

/** The service processes a test file spawns, so each test's are killed after it (`afterEach(killAll)`). */
export interface ProcessTracker {
  readonly procs: ServiceProcess[];
  readonly spawn: (name: ServiceName, env: Record<string, string>) => ServiceProcess;
  readonly killAll: (signal?: NodeJS.Signals) => Promise<void>;
}

export function processTracker(): ProcessTracker {
  const procs: ServiceProcess[] = [];
  return {
    procs,
    spawn: (name, env) => {
      const p = spawnService(name, env);
      procs.push(p);
      return p;
    },
    killAll: async (signal) => {
      await Promise.all(procs.splice(0).map((p) => p.kill(signal)));
    },
  };
}

/** Follows every run of a tenant through one ordered consumer and records how each ended. */
export interface RunWatch {
  readonly ended: ReadonlyMap<string, string>;
  /** Resolves when all the given runs have ended; rejects after `timeoutMs`. */
  waitAll(runIds: readonly string[], timeoutMs: number): Promise<void>;
  close(): Promise<void>;
}

export async function watchRuns(h: Harness, t: TenantId): Promise<RunWatch> {
  const { DeliverPolicy } = await import('@nats-io/jetstream');
  const { Streams, Subjects, runIdOfSubject } = await import('@capstan/schemas');
  const { decodeEvent, isTerminalEvent } = await import('@capstan/kit');
  const ended = new Map<string, string>();
  // The admin may make consumers (an ordered one here); services may not.
  const consumer = await (await h.js(t)).consumers.get(Streams.runs(t), { filter_subjects: [Subjects.allRuns(t)], deliver_policy: DeliverPolicy.All });
  const messages = await consumer.consume();
  void (async () => {
    for await (const m of messages) {
      const e = decodeEvent(m);
      if (isTerminalEvent(e)) ended.set(runIdOfSubject(m.subject) ?? '', e.type);
    }
  })();
  return {
    ended,
    async waitAll(runIds, timeoutMs) {
      const deadline = Date.now() + timeoutMs;
      while (runIds.some((r) => !ended.has(r))) {
        if (Date.now() > deadline) throw new Error(`${runIds.filter((r) => !ended.has(r)).length} of ${runIds.length} runs did not end within ${timeoutMs} ms`);
        await new Promise((r) => setTimeout(r, 50));
      }
    },
    close: () => messages.close().then(() => undefined),
  };
}

/** An orchestrator and a worker in this process, serving the given tenants. */
export interface InProcessServices {
  stop(): Promise<void>;
}

export async function startServices(
  url: string,
  tenants: readonly TenantId[],
  opts: { env?: Record<string, string>; workerId?: string; pools?: readonly string[]; registry?: Registry } = {},
): Promise<InProcessServices> {
  const { createRegistry } = await import('@capstan/actors');
  const { createOrchestrator, loadConfig: orchConfig } = await import('@capstan/orchestrator');
  const { createWorker, loadConfig: workerConfig } = await import('@capstan/worker');
  const { workflows, handlers } = await import('../fixtures/workflows.js');
  const env = { NATS_URL: url, CAPSTAN_TENANTS: tenants.join(','), ...TEST_DEFAULTS, ...opts.env };
  const orch = await createOrchestrator(orchConfig({ ...(await serviceEnv(url, Role.Orchestrator)), ...env }), silent, { registry: opts.registry ?? createRegistry(workflows) });
  const workerId = opts.workerId ?? `worker-${tenants[0] ?? ''}`;
  const creds = await Promise.all(tenants.map((t) => issueCreds(url, t, Role.Worker, workerId, { pools: opts.pools ?? ['default'] })));
  const worker = await createWorker(workerConfig({ ...env, NATS_CREDS: creds.join(',') }), silent, { handlers });
  await orch.start();
  await worker.start();
  return {
    async stop() {
      await worker.stop();
      await orch.stop();
    },
  };
}

/** A fresh tenant with in-process services; `close` first checks every run it made replays. */
export interface ServedTenant {
  readonly h: Harness;
  readonly t: TenantId;
  /** Stops everything; throws if any run of the tenant does not replay to its record. */
  close(): Promise<void>;
}

export async function serveTenant(url: string, prefix: string): Promise<ServedTenant> {
  const { createRegistry } = await import('@capstan/actors');
  const { workflows } = await import('../fixtures/workflows.js');
  const { replayAll } = await import('./checker.js');
  const h = await connect(url);
  const t = await provision(h, prefix);
  const services = await startServices(url, [t]);
  return {
    h,
    t,
    async close() {
      try {
        const { replayed, failures } = await replayAll(await h.jsm(t), t, createRegistry(workflows));
        process.stdout.write(`replayed ${replayed} runs of ${t}\n`);
        if (failures.length > 0 || replayed === 0) throw new Error(`replay of ${t}: ${replayed} runs, failures: ${failures.join('; ')}`);
      } finally {
        await services.stop();
        await h.close();
      }
    },
  };
}

/** The `capstan` command run as a user runs it: a process, with its exit code and output. */
export function runCli(args: readonly string[], env: Record<string, string> = {}): Promise<{ code: number | null; out: string; err: string }> {
  return new Promise((resolve) => {
    // The CLI acts as the admin with this run's key store (CAPSTAN_AUTH_DIR) unless `env`
    // gives it a credential of its own (NATS_CREDS or --creds).
    const child = spawn(process.execPath, [join(PROJECT_ROOT, 'services', 'cli', 'dist', 'main.js'), ...args], {
      env: { ...process.env, NO_COLOR: '1', ...env },
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    let out = '';
    let err = '';
    child.stdout?.on('data', (d: Buffer) => (out += d.toString()));
    child.stderr?.on('data', (d: Buffer) => (err += d.toString()));
    child.once('exit', (code) => resolve({ code, out, err }));
  });
}

/** What an attempt came to, for counting attacks: `ok`, the typed refusal's code, or the untyped error itself. */
export async function codeOf(p: Promise<unknown>): Promise<string> {
  try {
    await p;
    return 'ok';
  } catch (e) {
    return CapstanError.is(e) ? e.code : String(e);
  }
}

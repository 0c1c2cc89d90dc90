/**
 * Fixtures for integration tests: a connection, a fresh tenant, in-process services and
 * service processes (for kill tests), all cleaned up by `using`/`dispose`.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { join } from 'node:path';
import { jetstreamManager, type JetStreamManager } from '@nats-io/jetstream';
import {
  connectNats,
  createClient,
  createLogger,
  ensureTenant,
  PROJECT_ROOT,
  readRun,
  type CapstanClient,
  type NatsConnection,
} from '@capstan/kit';
import { parseTenantId, type RunEvent, type RunId, type TenantId } from '@capstan/schemas';

export const silent = createLogger('test', 'silent');

/** What services under test run with unless a test says otherwise. */
export const TEST_DEFAULTS = { WORKER_ADMISSION: 'auto', ORCH_POLICY: 'off', WORKER_LEASES: 'off' } as const;

export function randomTenant(prefix = 't'): TenantId {
  return parseTenantId(`${prefix}-${randomBytes(4).toString('hex')}`);
}

export interface Harness {
  readonly nc: NatsConnection;
  readonly jsm: JetStreamManager;
  readonly client: CapstanClient;
  close(): Promise<void>;
}

export async function connect(url: string): Promise<Harness> {
  const nc = await connectNats(url, 'capstan-test', silent);
  const jsm = await jetstreamManager(nc);
  const client = await createClient(nc);
  return { nc, jsm, client, close: () => nc.close() };
}

export async function provision(h: Harness, prefix?: string): Promise<TenantId> {
  const t = randomTenant(prefix);
  await ensureTenant(h.jsm, t);
  return t;
}

export async function eventsOf(h: Harness, t: TenantId, runId: RunId): Promise<RunEvent[]> {
  return (await readRun(h.jsm, t, runId)).events;
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

export type ServiceName = 'orchestrator' | 'worker' | 'projector' | 'sandbox';

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

export function spawnService(name: ServiceName, env: Record<string, string>): ServiceProcess {
  // CAPSTAN_NODE_ARGS passes flags such as --cpu-prof to the service's node (benchmarks).
  const nodeArgs = (env['CAPSTAN_NODE_ARGS'] ?? '').split(' ').filter(Boolean);
  const child: ChildProcess = spawn(process.execPath, [...nodeArgs, join(PROJECT_ROOT, 'services', name, 'dist', 'main.js')], {
    // Workers admit themselves unless a test asks otherwise (WORKER_ADMISSION=required);
    // policy checks and leases are off unless a test turns them on (ORCH_POLICY, WORKER_LEASES).
    env: { ...process.env, LOG_LEVEL: 'warn', ...TEST_DEFAULTS, ...env },
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
  const consumer = await h.client.js.consumers.get(Streams.runs(t), { filter_subjects: [Subjects.allRuns(t)], deliver_policy: DeliverPolicy.All });
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

export async function startServices(url: string, tenants: readonly TenantId[], opts: { env?: Record<string, string>; workerId?: string } = {}): Promise<InProcessServices> {
  const { createRegistry } = await import('@capstan/actors');
  const { createOrchestrator, loadConfig: orchConfig } = await import('@capstan/orchestrator');
  const { createWorker, loadConfig: workerConfig } = await import('@capstan/worker');
  const { workflows, handlers } = await import('../fixtures/workflows.js');
  const env = { NATS_URL: url, CAPSTAN_TENANTS: tenants.join(','), ...TEST_DEFAULTS, ...opts.env };
  const orch = await createOrchestrator(orchConfig(env), silent, { registry: createRegistry(workflows) });
  const worker = await createWorker(workerConfig({ ...env, WORKER_ID: opts.workerId ?? `worker-${tenants[0] ?? ''}` }), silent, { handlers });
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
        const { replayed, failures } = await replayAll(h.jsm, t, createRegistry(workflows));
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

/**
 * Starts a private nats-server (>= 2.12, JetStream on) on free loopback ports with its own
 * store directory. Used by `capstan dev`, the test harness and the benchmarks; the system's
 * nats-server (if any) is never used or touched.
 */
import { spawn, execFileSync, type ChildProcess } from 'node:child_process';
import { existsSync, mkdirSync, mkdtempSync, readFileSync, writeFileSync, rmSync, statfsSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { connect as netConnect, createServer } from 'node:net';
import { CapstanError, ErrorCode, Platform } from '@capstan/schemas';
import type { AuthStore } from './auth-store.js';
import { ensurePlatform, pushAccounts } from './provision.js';

export const MIN_NATS_SERVER = [2, 12, 0] as const;

export class NatsServerMissingError extends CapstanError {
  constructor(detail: string) {
    super(ErrorCode.NatsServerMissing, `nats-server >= ${MIN_NATS_SERVER.join('.')} not found (${detail}); run \`node infra/nats/install.mjs\` or set CAPSTAN_NATS_SERVER`);
  }
}

/**
 * The repository checkout this package sits in (this file is services/kit/{src,dist}/nats-server.*).
 * Only for what is about the checkout itself: the nats-server `infra/nats/install.mjs` puts in
 * its `.capstan/bin`, and the tests', benchmarks' and `capstan dev`'s tooling. Services never
 * resolve their own files or state through it: a package's assets are found relative to the
 * package (`import.meta.url`), and state lives where its config says.
 */
export const PROJECT_ROOT = resolve(dirname(fileURLToPath(import.meta.url)), '../../..');

function versionOf(bin: string): number[] | undefined {
  try {
    const out = execFileSync(bin, ['--version'], { encoding: 'utf8', stdio: ['ignore', 'pipe', 'ignore'] });
    const m = /v?(\d+)\.(\d+)\.(\d+)/.exec(out);
    return m ? m.slice(1, 4).map(Number) : undefined;
  } catch {
    return undefined;
  }
}

function atLeast(v: readonly number[], min: readonly number[]): boolean {
  for (let i = 0; i < min.length; i++) if (v[i] !== min[i]) return (v[i] ?? 0) > (min[i] ?? 0);
  return true;
}

/**
 * Finds a nats-server binary: `CAPSTAN_NATS_SERVER`, then the project's `.capstan/bin`,
 * then `PATH` (only if new enough; the Debian stable one is not).
 * @throws NatsServerMissingError
 */
export function findNatsServer(env: Readonly<Record<string, string | undefined>> = process.env): string {
  const candidates = [env['CAPSTAN_NATS_SERVER'], join(PROJECT_ROOT, '.capstan', 'bin', 'nats-server'), 'nats-server'];
  const seen: string[] = [];
  for (const c of candidates) {
    if (!c) continue;
    const v = versionOf(c);
    if (v && atLeast(v, MIN_NATS_SERVER)) return c;
    seen.push(`${c}: ${v ? v.join('.') : 'absent'}`);
  }
  throw new NatsServerMissingError(seen.join('; '));
}

export interface NatsServerOptions {
  /** Store directory; a fresh temporary one when omitted. */
  readonly storeDir?: string;
  /** Client port; a free one (`-1`) when omitted. */
  readonly port?: number;
  /** `always`: fsync before every ack (equal durability with Postgres-backed engines). */
  readonly sync?: 'default' | 'always';
  readonly binary?: string;
  /**
   * JetStream file storage for the whole server (bytes). Tenants' storage quotas are
   * reservations against it. Default: 80 % of the free space where the store lives, at most
   * 64 GiB: a store that hits ENOSPC hangs JetStream, so it stays below the disk.
   */
  readonly maxFileStore?: number;
  /** Where the server's log goes; a file next to the store by default. */
  readonly logFile?: string;
  /**
   * The operator's key store: the server runs in operator mode (accounts per tenant, no
   * anonymous connections) and, once up, has the platform registry and every account the
   * store knows. Required: Capstan never runs an open server.
   */
  readonly auth: AuthStore;
  /** The server's name (`server_name`): required in a cluster, where peers know each other by it. */
  readonly serverName?: string;
  /** Tags placement can ask for (`server_tags`), such as `az:1`. */
  readonly tags?: readonly string[];
  /** Membership of a JetStream cluster: its name, this node's route port, and every node's route port. */
  readonly cluster?: { readonly name: string; readonly port: number; readonly routes: readonly number[] };
  /** A port where tenants' leaf nodes connect in (outbound from their side); none when omitted. */
  readonly leafPort?: number;
  /**
   * Make the platform ready once the server is up (registry, tenant accounts; default on).
   * Off for cluster nodes, which need a quorum first: the cluster launcher does it once.
   */
  readonly ensurePlatform?: boolean;
  /** A loopback port serving Go's pprof (`prof_port`), for profiling the server under a benchmark; none when omitted. */
  readonly profPort?: number;
}

export interface NatsServer {
  readonly url: string;
  readonly port: number;
  readonly storeDir: string;
  readonly pid: number;
  readonly logFile: string;
  /** The `server_name`, as JetStream reports stream leaders. */
  readonly name: string;
  /** The port leaf nodes connect to, when it listens for them. */
  readonly leafPort?: number;
  /** Graceful stop (SIGTERM, then SIGKILL after 5 s). */
  stop(): Promise<void>;
  /** SIGKILL, for fault tests. */
  kill(): Promise<void>;
  /** Starts again on the same port and store (after stop or kill). */
  restart(): Promise<void>;
}

/** A free loopback TCP port (closed again: the server takes it a moment later). */
export function freePort(): Promise<number> {
  return new Promise((resolvePort, reject) => {
    const probe = createServer();
    probe.once('error', reject);
    probe.listen(0, '127.0.0.1', () => {
      const addr = probe.address();
      probe.close(() => (typeof addr === 'object' && addr ? resolvePort(addr.port) : reject(new Error('no free port'))));
    });
  });
}

export async function startNatsServer(opts: NatsServerOptions): Promise<NatsServer> {
  const binary = opts.binary ?? findNatsServer();
  const base = opts.storeDir ?? mkdtempSync(join(tmpdir(), 'capstan-nats-'));
  mkdirSync(base, { recursive: true });
  const portsDir = join(base, 'ports');
  mkdirSync(portsDir, { recursive: true });
  const logFile = opts.logFile ?? join(base, 'nats-server.log');
  let port = opts.port ?? -1;
  let child: ChildProcess | undefined;
  const maxFileStore = opts.maxFileStore ?? defaultMaxFileStore(base);

  const name = opts.serverName ?? '';
  let launches = 0;
  const writeConf = () => {
    const c = opts.cluster;
    const conf = [
      name ? `server_name: "${name}"` : '',
      `listen: "127.0.0.1:${port}"`,
      `ports_file_dir: "${portsDir}"`,
      `max_payload: 1MB`,
      opts.tags?.length ? `server_tags: [${opts.tags.map((t) => JSON.stringify(t)).join(', ')}]` : '',
      // Routes to every node (its own is ignored); nodes on other machines list their addresses.
      c ? `cluster {\n  name: "${c.name}"\n  listen: "127.0.0.1:${c.port}"\n  routes: [${c.routes.map((r) => `"nats-route://127.0.0.1:${r}"`).join(', ')}]\n}` : '',
      // Tenants' leaf nodes dial in here with a tenant credential; the account it names is the one bridged.
      opts.profPort ? `prof_port: ${opts.profPort}` : '',
      opts.leafPort ? `leafnodes {\n  listen: "127.0.0.1:${opts.leafPort}"\n}` : '',
      `jetstream {`,
      `  store_dir: "${join(base, 'js')}"`,
      // Below the disk's free space: a store that hits ENOSPC hangs JetStream.
      `  max_file_store: ${maxFileStore}`,
      opts.sync === 'always' ? `  sync_interval: always` : '',
      // Tenants' leaf nodes reach the streams through the domain's API only (docs/cluster.md).
      opts.leafPort ? `  domain: ${Platform.jsDomain}` : '',
      `}`,
      opts.auth.serverConfig(join(base, 'jwt')),
    ].join('\n');
    const file = join(base, 'nats-server.conf');
    writeFileSync(file, conf);
    return file;
  };

  const launch = async () => {
    const conf = writeConf();
    rmSync(portsDir, { recursive: true, force: true });
    mkdirSync(portsDir, { recursive: true });
    mkdirSync(join(base, 'jwt'), { recursive: true });
    child = spawn(binary, ['-c', conf, '-l', logFile], { stdio: 'ignore' });
    const proc = child;
    const exited = new Promise<never>((_, reject) => proc.once('exit', (code) => reject(new Error(`nats-server exited with ${code}; see ${logFile}`))));
    const pidFile = join(portsDir, `nats-server_${proc.pid}.ports`);
    const deadline = Date.now() + 10_000;
    while (Date.now() < deadline) {
      if (existsSync(pidFile)) {
        const ports = JSON.parse(readFileSync(pidFile, 'utf8')) as { nats: string[] };
        const u = new URL((ports.nats[0] ?? '').replace('nats://', 'http://'));
        port = Number(u.port);
        await Promise.race([waitForTcp(port), exited]);
        const target = { servers: `nats://127.0.0.1:${port}`, store: opts.auth };
        if (opts.ensurePlatform !== false) await ensurePlatform(target);
        // A cluster node back from a crash (or an empty store) hears of every account again:
        // pushes reach all nodes through the system account, and need no JetStream quorum.
        else if (opts.cluster && launches > 0) await pushAccounts(target);
        launches++;
        return;
      }
      await Promise.race([new Promise((r) => setTimeout(r, 25)), exited]);
    }
    proc.kill('SIGKILL');
    throw new Error(`nats-server did not report its ports within 10 s; see ${logFile}`);
  };

  const waitExit = (signal: NodeJS.Signals) =>
    new Promise<void>((resolveExit) => {
      const c = child;
      if (!c || c.exitCode !== null || c.signalCode !== null) return resolveExit();
      const t = setTimeout(() => c.kill('SIGKILL'), 5000);
      c.once('exit', () => {
        clearTimeout(t);
        resolveExit();
      });
      c.kill(signal);
    });

  await launch();
  return {
    get url() {
      return `nats://127.0.0.1:${port}`;
    },
    get port() {
      return port;
    },
    storeDir: base,
    get pid() {
      return child?.pid ?? -1;
    },
    logFile,
    name,
    ...(opts.leafPort ? { leafPort: opts.leafPort } : {}),
    stop: () => waitExit('SIGTERM'),
    kill: () => waitExit('SIGKILL'),
    restart: async () => {
      await waitExit('SIGTERM');
      await launch();
    },
  };
}

export interface NatsClusterOptions extends Omit<NatsServerOptions, 'port' | 'serverName' | 'cluster' | 'tags' | 'leafPort' | 'ensurePlatform' | 'logFile'> {
  /** Nodes (default 3); each its own process, client and route port, and store under `storeDir`. */
  readonly nodes?: number;
  /** Tags per node (default `node:<i>` and `az:<i>`), for placement. */
  readonly tags?: (i: number) => readonly string[];
  /** The cluster's name (default `capstan`). */
  readonly name?: string;
  /** Open a leaf-node port on every node (tenants' own servers dial in). */
  readonly leafNodes?: boolean;
}

export interface NatsCluster {
  /** Every node's client URL, comma-separated: what services are given as NATS_URL. */
  readonly urls: string;
  readonly nodes: readonly NatsServer[];
  node(name: string): NatsServer;
  /** Where leaf nodes may dial in (every node's leaf URL), when open. */
  readonly leafUrls: readonly string[];
  stop(): Promise<void>;
}

/**
 * A JetStream cluster on loopback: `nodes` nats-servers routed to each other, each with its
 * own name, store and tags, all in operator mode with the same key store (each node's full
 * resolver keeps the account JWTs; a push reaches every node through the system account, and
 * a node that was away is brought up to date by its peers and by `ensurePlatform`). The
 * platform registry is replicated on up to three nodes.
 */
export async function startNatsCluster(opts: NatsClusterOptions): Promise<NatsCluster> {
  const n = opts.nodes ?? 3;
  const base = opts.storeDir ?? mkdtempSync(join(tmpdir(), 'capstan-nats-cluster-'));
  const routePorts: number[] = [];
  const clientPorts: number[] = [];
  const leafPorts: number[] = [];
  for (let i = 0; i < n; i++) {
    routePorts.push(await freePort());
    clientPorts.push(await freePort());
    if (opts.leafNodes) leafPorts.push(await freePort());
  }
  const name = opts.name ?? 'capstan';
  // All at once: a node waits for its peers before JetStream elects a leader.
  const nodes = await Promise.all(
    Array.from({ length: n }, (_, i) =>
      startNatsServer({
        ...opts,
        storeDir: join(base, `n${i + 1}`),
        port: clientPorts[i] as number,
        serverName: `n${i + 1}`,
        tags: opts.tags ? opts.tags(i + 1) : [`node:${i + 1}`, `az:${i + 1}`],
        cluster: { name, port: routePorts[i] as number, routes: routePorts },
        ...(opts.leafNodes ? { leafPort: leafPorts[i] as number } : {}),
        ensurePlatform: false,
      }),
    ),
  );
  const urls = nodes.map((x) => x.url).join(',');
  try {
    await ensurePlatform({ servers: urls, store: opts.auth }, { replicas: Math.min(3, n) });
  } catch (e) {
    await Promise.all(nodes.map((x) => x.kill()));
    throw e;
  }
  return {
    urls,
    nodes,
    node(nodeName) {
      const found = nodes.find((x) => x.name === nodeName);
      if (!found) throw new Error(`no node ${nodeName} in the cluster (${nodes.map((x) => x.name).join(', ')})`);
      return found;
    },
    leafUrls: leafPorts.map((p) => `nats-leaf://127.0.0.1:${p}`),
    stop: async () => {
      await Promise.all(nodes.map((x) => x.stop()));
    },
  };
}

const GIB = 1024 * 1024 * 1024;

function defaultMaxFileStore(dir: string): number {
  try {
    const fs = statfsSync(dir);
    return Math.max(GIB, Math.min(64 * GIB, Math.floor(Number(fs.bavail) * Number(fs.bsize) * 0.8)));
  } catch {
    return 8 * GIB;
  }
}

async function waitForTcp(port: number): Promise<void> {
  const deadline = Date.now() + 10_000;
  while (Date.now() < deadline) {
    const ok = await new Promise<boolean>((res) => {
      const s = netConnect(port, '127.0.0.1');
      s.once('connect', () => {
        s.destroy();
        res(true);
      });
      s.once('error', () => res(false));
    });
    if (ok) return;
    await new Promise((r) => setTimeout(r, 25));
  }
  throw new Error(`nats-server not accepting connections on ${port}`);
}

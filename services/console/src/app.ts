/**
 * The console's composition root: a Fastify server with sign-in, the tenant-scoped JSON
 * API over the projections, live updates, actions as NATS commands, and the web UI.
 */
import { randomBytes } from 'node:crypto';
import { readFileSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import type { AddressInfo } from 'node:net';
import Fastify, { LogController, type FastifyBaseLogger, type FastifyInstance } from 'fastify';
import fastifyCookie from '@fastify/cookie';
import { hostAllowed, syncGuard, type Database, type Logger, type StreamSide, type TenantAccess } from '@capstan/kit';
import { ConfigError, InvalidArgumentError, UnavailableError } from '@capstan/schemas';
import { registerAuth } from './auth.js';
import { createCommands, type Commands } from './commands.js';
import { apiPaths } from './api-types.js';
import type { Config } from './config.js';
import { forbidden, pattern, sendError, sessionOf, toHttpError } from './http.js';
import { createLiveHub, registerRunStream } from './live.js';
import { registerAuditRoutes } from './routes-audit.js';
import { registerFleetRoutes } from './routes-fleet.js';
import { registerPolicyRoutes } from './routes-policy.js';
import { registerDatasyncRoutes } from './routes-datasync.js';
import { registerRunRoutes } from './routes-runs.js';
import { registerTriggerRoutes } from './routes-triggers.js';
import { tenantOf, type RouteDeps } from './routes.js';
import { createLinkTokens, createSessions } from './session.js';
import type { ApiToken } from './tokens.js';
import { parseUsers, type ConsoleUser } from './users.js';
import { isApiPath, registerWeb } from './web.js';

export interface ConsoleOptions {
  readonly db: Database;
  /**
   * Its connections to the tenants (the console's own credential): for actions and projection
   * lag; without it the console is read-only (actions answer 503).
   */
  readonly access?: Pick<TenantAccess, 'tenant' | 'list'>;
  readonly config: Config;
  readonly log: Logger;
  /** The users; default: read from `config.usersFile`. */
  readonly users?: readonly ConsoleUser[];
  /** How often live updates poll the projections (default 1000 ms). */
  readonly pollMs?: number;
}

export interface Console {
  /** `http://host:port`, once started. */
  readonly url: string;
  start(): Promise<void>;
  /** Ends live streams and stops serving; the database and NATS connection stay the caller's. */
  stop(): Promise<void>;
  /** A one-time sign-in link for a user (`<url>/signin?token=…`), valid for `config.linkTtlMs`. */
  signInLink(userId: string): string;
  /** Tenants whose live updates are being polled now (someone is listening). */
  liveTenants(): string[];
}

const BODY_LIMIT = 256 * 1024;

/** The dev stack's only user: an admin over the given tenants, who signs in by link (and whose `tokens` the CLI reads with). */
export function localAdmin(tenants: readonly string[], tokens: readonly ApiToken[] = []): ConsoleUser {
  return { userId: 'admin', orgId: 'local', role: 'admin', tenants: [...tenants], ...(tokens.length > 0 ? { tokens } : {}) };
}

export function defaultWebDir(): string {
  return fileURLToPath(new URL('./web', import.meta.url));
}

export function createConsole(o: ConsoleOptions): Console {
  const { config, db, log } = o;
  const secret = config.secret ?? (config.dev ? randomBytes(32) : undefined);
  if (!secret) throw new ConfigError(['CONSOLE_SECRET is required outside dev mode']);
  const userList = o.users ?? loadUsersFile(config);
  const users = new Map(userList.map((u) => [u.userId, u]));
  const sessions = createSessions(secret, config.sessionTtlMs);
  const links = createLinkTokens(config.linkTtlMs);
  const hub = createLiveHub(db, log, o.pollMs);

  let commands: Commands | undefined;
  let app: FastifyInstance | undefined;
  let streams: { closeAll(): void } | undefined;
  let url = '';

  const deps: RouteDeps = {
    db,
    tenantOf,
    commands: () => {
      if (!commands) throw new UnavailableError('actions are unavailable: the console is not connected to NATS');
      return commands;
    },
    access: () => o.access,
  };

  async function build(): Promise<FastifyInstance> {
    const f: FastifyInstance = Fastify({
      loggerInstance: log as FastifyBaseLogger,
      // Fastify's request log would print URLs, and a sign-in link's URL holds its token.
      logController: new LogController({ disableRequestLogging: true }),
      bodyLimit: BODY_LIMIT,
      routerOptions: { maxParamLength: 256 },
      forceCloseConnections: true,
      trustProxy: false,
    });
    await f.register(fastifyCookie);
    f.setErrorHandler((err, req, reply) => {
      const h = toHttpError(err);
      if (h.status >= 500) log[h.status === 503 || h.status === 501 ? 'warn' : 'error']({ err, method: req.method, path: req.url.split('?', 1)[0] }, 'console request failed');
      return sendError(reply, h);
    });
    f.addHook('onResponse', async (req, reply) => {
      const path = req.url.split('?', 1)[0] as string;
      if (isApiPath(path)) log.debug({ method: req.method, path, status: reply.statusCode, ms: Math.round(reply.elapsedTime) }, 'console request');
    });

    // DNS rebinding: a page on a name the attacker owns, pointed at this console's address,
    // sends that name as its Host. Only IP literals, localhost and the public URL's name are
    // answered, before sign-in or any route runs.
    const hosts = allowedHosts(config);
    f.addHook('onRequest', (req, _reply, done) => {
      done(hostAllowed(req.headers.host, hosts) ? undefined : forbidden(`this console is not reached at ${JSON.stringify((req.headers.host ?? '').slice(0, 64))}`));
    });

    f.get('/healthz', async () => {
      await db.db.query.checkpoints.findFirst({ columns: { tenant: true } });
      return { ok: true };
    });
    registerAuth(f, { users: () => users, sessions, links, sessionTtlMs: config.sessionTtlMs, ...(config.publicUrl ? { publicUrl: config.publicUrl } : {}) });
    refuseOutOfSync(f, db, o.access);
    registerRunRoutes(f, deps);
    registerFleetRoutes(f, deps);
    registerAuditRoutes(f, deps);
    registerPolicyRoutes(f, deps);
    registerTriggerRoutes(f, deps);
    registerDatasyncRoutes(f, deps);
    streams = registerRunStream(f, hub, tenantOf);
    await registerWeb(f, config.webDir ?? defaultWebDir());
    return f;
  }

  return {
    get url() {
      return url;
    },
    async start() {
      if (o.access) commands = await createCommands(o.access);
      const f = await build();
      await f.listen({ host: config.host, port: config.port });
      app = f;
      const addr = f.server.address() as AddressInfo;
      url = `http://${addr.family === 'IPv6' ? `[${addr.address}]` : addr.address}:${addr.port}`;
      log.info({ url, users: users.size, readOnly: !commands }, 'console listening');
    },
    async stop() {
      streams?.closeAll();
      hub.stop();
      const f = app;
      app = undefined;
      await f?.close();
    },
    signInLink(userId) {
      if (!users.has(userId)) throw new InvalidArgumentError(`no console user ${JSON.stringify(userId.slice(0, 128))}`);
      const base = config.publicUrl ?? url;
      if (!base) throw new UnavailableError('the console is not started: it has no URL to link to yet');
      return `${base}/signin?token=${links.issue(userId, Date.now())}`;
    },
    liveTenants: () => hub.polling(),
  };
}

/** The host names (besides IP literals and localhost) the console answers at. */
function allowedHosts(config: Config): ReadonlySet<string> {
  const names = new Set<string>();
  if (config.publicUrl) names.add(new URL(config.publicUrl).hostname.replace(/^\[|\]$/g, '').toLowerCase());
  if (config.host) names.add(config.host.toLowerCase());
  return names;
}

function loadUsersFile(config: Config): ConsoleUser[] {
  if (!config.usersFile) throw new ConfigError(['CONSOLE_USERS is required: the path of the users file']);
  let text: string;
  try {
    text = readFileSync(config.usersFile, 'utf8');
  } catch (e) {
    throw new ConfigError([`CONSOLE_USERS: cannot read ${config.usersFile}: ${(e as NodeJS.ErrnoException).code ?? 'error'}`]);
  }
  return parseUsers(text, `CONSOLE_USERS (${config.usersFile})`);
}

/**
 * Pages over a tenant whose projections follow another run stream (see projection-sync.ts in
 * kit) would be empty or stale; they are refused (503 `projection_out_of_sync`) rather than
 * served. The tenant's system route stays open: it is where the console learns why, and
 * shows it as a banner.
 */
function refuseOutOfSync(f: FastifyInstance, db: Database, access: StreamSide | undefined): void {
  const inSync = syncGuard(db.db, access);
  const system = pattern(apiPaths.system(':tenant'));
  const tenantRoutes = system.slice(0, -'system'.length);
  f.addHook('preHandler', async (req) => {
    const route = req.routeOptions.url ?? '';
    if (req.method !== 'GET' || !route.startsWith(tenantRoutes) || route === system) return;
    // Membership first, as every tenant route: a tenant outside the session tells nothing.
    await inSync(tenantOf(sessionOf(req), (req.params as { tenant: string }).tenant));
  });
}

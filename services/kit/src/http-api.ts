/**
 * The query API: read-only HTTP over the projections, on node:http.
 *
 *   GET /healthz                                   the database answers
 *   GET /v1/tenants/:tenant/runs                   ?status &workflow &since &until &where=k=v (repeatable) &limit &cursor
 *   GET /v1/tenants/:tenant/runs/:runId            the run, its steps, event index and approvals
 *   GET /v1/tenants/:tenant/audit                  ?run &since &kind &actor &limit &cursor
 *   GET /v1/tenants/:tenant/approvals              ?status &limit
 *   GET /v1/tenants/:tenant/workers
 *   GET /v1/system                                 the NATS server and projection lag per tenant
 *   GET /metrics                                   Prometheus text format
 *
 * A tenant whose projections do not follow its run stream (see projection-sync.ts) is
 * refused on every tenant route with 503 `projection_out_of_sync`, and shows as such in
 * /v1/system and /metrics: never as empty pages with a lag of 0.
 *
 * There is no authentication yet: the server binds 127.0.0.1 unless told otherwise, and the
 * console, when it exists, fronts it and adds sign-in. Every tenant route is scoped by the
 * tenant in its path and nothing else. Errors are `{ "error": { "code", "message" } }`;
 * a failure the caller cannot fix is logged here and answered with a bare 500, so SQL,
 * driver messages and stack traces never leave the process.
 */
import { createServer, type IncomingMessage, type Server, type ServerResponse } from 'node:http';
import type { AddressInfo } from 'node:net';
import { sql } from 'drizzle-orm';
import { CapstanError, ErrorCode, InvalidArgumentError, parseRunId, parseTenantId, type TenantId } from '@capstan/schemas';
import type { Database } from './db.js';
import type { Logger } from './log.js';
import type { TenantAccess } from './access.js';
import { getRun, listApprovals, listAudit, listRuns, listWorkers, parseLimit, parseStatus, parseTime, parseWhere, projectionLag, type ProjectionLag } from './queries.js';
import { outOfSyncError, readFollowed, syncGuard } from './projection-sync.js';
import { hostAllowed, httpStatusOf } from './http-status.js';

export interface QueryServerOptions {
  readonly db: Database;
  /** Enables stream positions (projection lag) and the NATS server in /v1/system and /metrics. */
  readonly access?: Pick<TenantAccess, 'tenant' | 'list'>;
  /** The tenants /v1/system and /metrics report on; default: every registered tenant (needs `access`). */
  readonly tenants?: () => readonly TenantId[] | Promise<readonly TenantId[]>;
  readonly log: Logger;
  /** Default 127.0.0.1: the API has no authentication of its own. */
  readonly host?: string;
  /** 0 picks a free port (see `url` after `start`). */
  readonly port: number;
}

export interface QueryServer {
  /** `http://host:port`, once started. */
  readonly url: string;
  start(): Promise<void>;
  stop(): Promise<void>;
}

/** Codes of the API itself, next to the CapstanError codes it passes on. */
export const HttpErrorCode = { NotFound: 'not_found', MethodNotAllowed: 'method_not_allowed', MisdirectedHost: 'misdirected_host', Internal: 'internal' } as const;

class HttpError extends Error {
  constructor(
    readonly status: number,
    readonly code: string,
    message: string,
  ) {
    super(message);
  }
}

type Params = Map<string, string[]>;

interface Reply {
  readonly status?: number;
  readonly body: unknown;
  /** Sent as is with this content type; otherwise `body` is JSON. */
  readonly text?: string;
}

const JSON_TYPE = 'application/json; charset=utf-8';
const PROMETHEUS_TYPE = 'text/plain; version=0.0.4; charset=utf-8';

export function createQueryServer(o: QueryServerOptions): QueryServer {
  const host = o.host ?? '127.0.0.1';
  let server: Server | undefined;
  let url = '';

  const tenantsToReport = async (): Promise<readonly TenantId[]> => {
    if (o.tenants) return o.tenants();
    return o.access ? o.access.list() : [];
  };

  const lagOf = async (tenants: readonly TenantId[]): Promise<ProjectionLag[]> => {
    if (o.access) return projectionLag(o.db, o.access, tenants);
    // Without NATS the checkpoints (and a projector's out-of-sync mark) are still worth
    // showing; the stream side is unknown.
    const followed = await readFollowed(o.db.db, tenants);
    return tenants.map((t) => {
      const f = followed.get(t);
      const lag: ProjectionLag = { tenant: t, stream: '', streamLastSeq: null, checkpoint: f?.checkpoint ?? 0, lag: null };
      return f?.outOfSync ? { ...lag, error: { code: ErrorCode.ProjectionOutOfSync, message: outOfSyncError(t, f.outOfSync).message } } : lag;
    });
  };
  // Rows of a tenant whose projections follow another stream are never served (see projection-sync.ts).
  const inSync = syncGuard(o.db.db, o.access);

  async function route(method: string, path: string[], p: Params): Promise<Reply> {
    if (method !== 'GET') throw new HttpError(405, HttpErrorCode.MethodNotAllowed, `${method} is not allowed: this API is read-only (GET)`);
    const [a, b, c, d, e, f, ...rest] = path;
    if (a === 'healthz' && b === undefined) {
      allow(p, []);
      await o.db.db.execute(sql`select 1`);
      return { body: { ok: true } };
    }
    if (a === 'metrics' && b === undefined) {
      allow(p, []);
      return { body: null, text: metrics(await lagOf(await tenantsToReport())) };
    }
    if (a === 'v1' && b === 'system' && c === undefined) {
      allow(p, []);
      const tenants = await tenantsToReport();
      return { body: { nats: await natsInfo(tenants), projection: await lagOf(tenants) } };
    }
    if (a === 'v1' && b === 'tenants' && c !== undefined && d !== undefined && rest.length === 0) {
      const t = parseTenantId(c);
      await inSync(t);
      if (d === 'runs' && e === undefined) {
        allow(p, ['status', 'workflow', 'since', 'until', 'where', 'limit', 'cursor'], ['where']);
        const status = one(p, 'status');
        const workflow = one(p, 'workflow');
        const since = one(p, 'since');
        const until = one(p, 'until');
        const cursor = one(p, 'cursor');
        const now = Date.now();
        return {
          body: await listRuns(o.db, t, {
            ...(status !== undefined ? { status: parseStatus(status) } : {}),
            ...(workflow !== undefined ? { workflow } : {}),
            ...(since !== undefined ? { since: parseTime('since', since, now) } : {}),
            ...(until !== undefined ? { until: parseTime('until', until, now) } : {}),
            ...(p.has('where') ? { where: parseWhere(p.get('where') ?? []) } : {}),
            limit: parseLimit(one(p, 'limit')),
            ...(cursor !== undefined ? { cursor } : {}),
          }),
        };
      }
      if (d === 'runs' && e !== undefined && f === undefined) {
        allow(p, []);
        return { body: await getRun(o.db, t, parseRunId(e)) };
      }
      if (d === 'audit' && e === undefined) {
        allow(p, ['run', 'since', 'kind', 'actor', 'limit', 'cursor']);
        const run = one(p, 'run');
        const since = one(p, 'since');
        const kind = one(p, 'kind');
        const actor = one(p, 'actor');
        const cursor = one(p, 'cursor');
        return {
          body: await listAudit(o.db, t, {
            ...(run !== undefined ? { runId: parseRunId(run) } : {}),
            ...(since !== undefined ? { since: parseTime('since', since) } : {}),
            ...(kind !== undefined ? { kind } : {}),
            ...(actor !== undefined ? { actor } : {}),
            limit: parseLimit(one(p, 'limit')),
            ...(cursor !== undefined ? { cursor } : {}),
          }),
        };
      }
      if (d === 'approvals' && e === undefined) {
        allow(p, ['status', 'limit']);
        const status = one(p, 'status');
        return { body: { approvals: await listApprovals(o.db, t, { ...(status !== undefined ? { status } : {}), limit: parseLimit(one(p, 'limit')) }) } };
      }
      if (d === 'workers' && e === undefined) {
        allow(p, []);
        return { body: { workers: await listWorkers(o.db, t) } };
      }
    }
    throw new HttpError(404, HttpErrorCode.NotFound, `no such endpoint: /${path.join('/')}`);
  }

  /** The server, and JetStream usage summed over the reported tenants' accounts. */
  async function natsInfo(tenants: readonly TenantId[]): Promise<unknown> {
    if (!o.access) return null;
    const access = o.access;
    const conns = await Promise.all(tenants.map((t) => access.tenant(t).catch(() => undefined)));
    const live = conns.filter((c) => c !== undefined);
    const info = live[0]?.nc.info;
    const accounts = await Promise.all(live.map((c) => c.jsm.getAccountInfo().catch(() => undefined)));
    const sum = (f: (a: NonNullable<(typeof accounts)[number]>) => number) => accounts.reduce((n, a) => n + (a ? f(a) : 0), 0);
    return {
      ...(info ? { server: { name: info.server_name, id: info.server_id, version: info.version, jetstream: info.jetstream === true } } : {}),
      jetstream: { streams: sum((a) => a.streams), consumers: sum((a) => a.consumers), storageBytes: sum((a) => a.storage), memoryBytes: sum((a) => a.memory) },
    };
  }

  async function handle(req: IncomingMessage, res: ServerResponse): Promise<void> {
    const started = performance.now();
    // A GET carries no body; whatever a client sends anyway is drained, never read.
    req.resume();
    let status = 200;
    let payload: string;
    let type = JSON_TYPE;
    const method = req.method ?? 'GET';
    let pathname = '?';
    try {
      // Split by hand rather than through `new URL`, which would resolve `..` and `%2E%2E`
      // segments: the path is taken literally, so such a segment is refused, never followed.
      const raw = req.url ?? '/';
      const q = raw.indexOf('?');
      pathname = q >= 0 ? raw.slice(0, q) : raw;
      if (!pathname.startsWith('/')) throw new HttpError(404, HttpErrorCode.NotFound, 'no such endpoint');
      if (!hostAllowed(req.headers.host))
        throw new HttpError(
          403,
          HttpErrorCode.MisdirectedHost,
          `this API answers only at an IP address or localhost, not at ${JSON.stringify((req.headers.host ?? '').slice(0, 64))}`,
        );
      const reply = await route(method, splitPath(pathname), collect(new URLSearchParams(q >= 0 ? raw.slice(q + 1) : '')));
      status = reply.status ?? 200;
      if (reply.text !== undefined) {
        payload = reply.text;
        type = PROMETHEUS_TYPE;
      } else {
        payload = JSON.stringify(reply.body);
      }
    } catch (e) {
      const err = toHttpError(e);
      if (err.status >= 500) o.log[err.status === 503 ? 'warn' : 'error']({ err: e, method, path: pathname }, 'query API request failed');
      status = err.status;
      payload = JSON.stringify({ error: { code: err.code, message: err.message } });
    }
    res.writeHead(status, {
      'content-type': type,
      'content-length': Buffer.byteLength(payload),
      'cache-control': 'no-store',
      'x-content-type-options': 'nosniff',
      ...(status === 405 ? { allow: 'GET' } : {}),
    });
    res.end(payload);
    o.log.debug({ method, path: pathname, status, ms: Math.round(performance.now() - started) }, 'query API request');
  }

  return {
    get url() {
      return url;
    },
    async start() {
      const s = createServer((req, res) => {
        handle(req, res).catch((err: unknown) => {
          // handle() answers every error itself; this is a failure writing the answer.
          o.log.error({ err }, 'query API could not answer');
          res.destroy();
        });
      });
      await new Promise<void>((resolve, reject) => {
        s.once('error', reject);
        s.listen(o.port, host, () => {
          s.off('error', reject);
          resolve();
        });
      });
      server = s;
      const addr = s.address() as AddressInfo;
      url = `http://${addr.family === 'IPv6' ? `[${addr.address}]` : addr.address}:${addr.port}`;
      o.log.info({ url }, 'query API listening');
    },
    async stop() {
      const s = server;
      server = undefined;
      if (!s) return;
      const closed = new Promise<void>((resolve) => s.close(() => resolve()));
      // Idle keep-alive connections would otherwise hold close() open.
      s.closeAllConnections();
      await closed;
    },
  };
}

function splitPath(pathname: string): string[] {
  try {
    return pathname
      .split('/')
      .slice(1)
      .map((s) => decodeURIComponent(s));
  } catch {
    throw new InvalidArgumentError('the path is not valid percent-encoding');
  }
}

function collect(sp: URLSearchParams): Params {
  const p: Params = new Map();
  for (const [k, v] of sp) p.set(k, [...(p.get(k) ?? []), v]);
  return p;
}

/** Refuses parameters the endpoint does not take, and repeats of those taken once. */
function allow(p: Params, names: readonly string[], repeatable: readonly string[] = []): void {
  for (const [k, vs] of p) {
    if (!names.includes(k)) {
      const shown = JSON.stringify(k.slice(0, 64));
      throw new InvalidArgumentError(names.length ? `unknown parameter ${shown}; this endpoint takes ${names.join(', ')}` : `unknown parameter ${shown}; this endpoint takes none`);
    }
    if (vs.length > 1 && !repeatable.includes(k)) throw new InvalidArgumentError(`parameter ${k} is given ${vs.length} times; give it once`);
  }
}

function one(p: Params, name: string): string | undefined {
  return p.get(name)?.[0];
}

function toHttpError(e: unknown): HttpError {
  if (e instanceof HttpError) return e;
  if (CapstanError.is(e)) {
    // The status table is the console's too (http-status.ts); messages are our own, never a driver's text.
    const status = httpStatusOf(e.code);
    if (status !== undefined) return new HttpError(status, e.code, e.message);
  }
  return new HttpError(500, HttpErrorCode.Internal, 'internal error; see the server log');
}

// ---------------------------------------------------------------------------------------
// Prometheus text exposition format (version 0.0.4).

function label(v: string): string {
  return v.replace(/\\/g, '\\\\').replace(/"/g, '\\"').replace(/\n/g, '\\n');
}

function gauge(name: string, help: string, samples: readonly (readonly [TenantId, number])[]): string[] {
  return [`# HELP ${name} ${help}`, `# TYPE ${name} gauge`, ...samples.map(([t, v]) => `${name}{tenant="${label(t)}"} ${v}`)];
}

function metrics(lag: readonly ProjectionLag[]): string {
  const known = (f: (l: ProjectionLag) => number | null) => lag.flatMap((l) => (f(l) === null ? [] : [[l.tenant, f(l) as number] as const]));
  return [
    ...gauge(
      'capstan_projection_lag_events',
      'Run-stream events not yet applied to the projections.',
      known((l) => l.lag),
    ),
    ...gauge(
      'capstan_projection_checkpoint',
      'Last run-stream sequence applied to the projections.',
      known((l) => l.checkpoint),
    ),
    ...gauge(
      'capstan_run_stream_last_seq',
      'Last sequence of the tenant run stream.',
      known((l) => l.streamLastSeq),
    ),
    ...gauge(
      'capstan_projection_out_of_sync',
      '1 when the projections do not follow the tenant run stream (projection_out_of_sync: reads refused, no lag), else 0.',
      lag.map((l) => [l.tenant, l.error?.code === ErrorCode.ProjectionOutOfSync ? 1 : 0] as const),
    ),
    '',
  ].join('\n');
}

/**
 * Composition root of ingress: an HTTP endpoint per tenant and route,
 * `POST /hooks/<tenant>/<route>`, that turns a verified Standard Webhooks delivery into a
 * submit (`cap.<t>.cmd.submit`). In order, each refusal writing nothing:
 *
 * 1. route: the tenant must be served and the route enabled, else 404 `route_not_found`;
 * 2. size: a body over the cap is 413 `payload_too_large`, refused before it is hashed;
 * 3. headers and timestamp: 401 `webhook_signature_invalid` without `webhook-id`,
 *    `webhook-timestamp` and `webhook-signature`; 401 `webhook_timestamp_invalid` when the
 *    timestamp is further than the tolerance from now, either way;
 * 4. signature: the secrets-lease service checks it against the route's secrets (ingress
 *    never holds one), 401 `webhook_signature_invalid` when none matches;
 * 5. rate: 429 `rate_limited` with `Retry-After` over the tenant's rate;
 * 6. body: 400 `decode_failed` when not JSON, 400 `schema_violation` when a selected field
 *    is missing;
 * 7. replay: the `webhook-id` is claimed in `cap.<t>.seen.<hash>` (write-once per subject,
 *    kept 15 min). Seen before with the same body: 200 with the same run id (the sender's
 *    retry; its submit is published again, which JetStream and the run id make a no-op);
 *    with another body: 409 `webhook_id_conflict`.
 *
 * Then the submit, whose run id is derived from tenant, route and `webhook-id`: 202 with it.
 * Errors are `{ "error": { "code", "message" } }`. No body, signature or secret is logged.
 */
import { createHash } from 'node:crypto';
import { createServer, type IncomingMessage, type Server, type ServerResponse } from 'node:http';
import type { AddressInfo } from 'node:net';
import { JetStreamApiError } from '@nats-io/jetstream';
import {
  CapstanError,
  CommandVerb,
  decode,
  encode,
  encodedSize,
  ErrorCode,
  isTenantId,
  LIMITS,
  MsgIds,
  parseSeenDelivery,
  parseWebhookRoute,
  Role,
  SchemaError,
  Streams,
  Subjects,
  TRIGGER_ID_PATTERN,
  type JsonValue,
  type RunId,
  type TenantId,
  type WebhookRoute,
  JS_SEQUENCE_CONFLICT_CODES,
} from '@capstan/schemas';
import {
  httpStatusOf,
  proofHeaders,
  serviceAccess,
  tailStream,
  verifyWebhook,
  webhookRunId,
  type Logger,
  type StreamTail,
  type TenantAccess,
  type TenantConnection,
  type TenantFollower,
} from '@capstan/kit';
import type { Config } from './config.js';
import { createRateLimiter, selectInput } from './deliveries.js';

export interface IngressStats {
  accepted: number;
  duplicates: number;
  refused: Record<string, number>;
}

export interface Ingress {
  /** `http://host:port`, once started. */
  readonly url: string;
  start(): Promise<void>;
  stop(): Promise<void>;
  stats(): Readonly<IngressStats>;
  /** Routes known per tenant (for tests and status). */
  routes(t: TenantId): readonly WebhookRoute[];
}

class Refusal extends Error {
  constructor(
    readonly status: number,
    readonly code: string,
    message: string,
    readonly retryAfterS?: number,
  ) {
    super(message);
  }
}

const HOOK_PATH = /^\/hooks\/([^/]+)\/([^/]+)$/;
const WEBHOOK_ID = /^[\x21-\x7e]{1,256}$/;

export function createIngress(config: Config, log: Logger): Promise<Ingress> {
  let access: TenantAccess | undefined;
  /** The connection to each served tenant's account. */
  const conns = new Map<TenantId, TenantConnection>();
  let follower: TenantFollower | undefined;
  let server: Server | undefined;
  let url = '';
  const routes = new Map<TenantId, Map<string, WebhookRoute>>();
  const watchers: StreamTail[] = [];
  const limiter = createRateLimiter(config.ratePerSecond, config.burst);
  const stats: IngressStats = { accepted: 0, duplicates: 0, refused: {} };

  /**
   * Follows a tenant's route records (direct gets woken by a subscription: creating a
   * consumer is the admin's right only); the last record per route is the route.
   */
  function watchRoutes(tc: TenantConnection): Promise<void> {
    const t = tc.tenant;
    conns.set(t, tc);
    const table = new Map<string, WebhookRoute>();
    routes.set(t, table);
    watchers.push(
      tailStream({
        nc: tc.nc,
        jsm: tc.jsm,
        stream: Streams.triggers(t),
        subject: Subjects.allRoutes(t),
        from: () => 0,
        what: 'a webhook route',
        log,
        apply: (m) => {
          const id = m.subject.slice(m.subject.lastIndexOf('.') + 1);
          try {
            const r = parseWebhookRoute(decode(m.data));
            if (r.route !== id) throw new SchemaError('webhook route', 'route', `is ${r.route}, stored under ${id}`);
            if (r.status === 'enabled') table.set(id, r);
            else table.delete(id);
          } catch (e) {
            // A route that does not decode serves nothing (the projector records why).
            table.delete(id);
            log.warn({ tenant: t, route: id, err: (e as Error).message }, 'webhook route record is invalid; the route is off');
          }
        },
      }),
    );
    return Promise.resolve();
  }

  /** A refusal, answered with the status kit's one table gives its code (`http-status.ts`). */
  function refuse(code: string, message: string, retryAfterS?: number): never {
    throw new Refusal(httpStatusOf(code) ?? 500, code, message, retryAfterS);
  }

  function header(req: IncomingMessage, name: string): string | undefined {
    const v = req.headers[name];
    return Array.isArray(v) ? undefined : v;
  }

  /** The body, or a 413 as soon as it passes the cap (the rest is not read). */
  function readBody(req: IncomingMessage): Promise<Buffer> {
    const declared = Number(req.headers['content-length'] ?? NaN);
    if (declared > config.maxBodyBytes) refuse(ErrorCode.PayloadTooLarge, `the body is ${declared} bytes; this endpoint takes at most ${config.maxBodyBytes}`);
    return new Promise((resolve, reject) => {
      const chunks: Buffer[] = [];
      let size = 0;
      req.on('data', (c: Buffer) => {
        size += c.length;
        if (size > config.maxBodyBytes) {
          req.removeAllListeners('data');
          req.pause();
          reject(new Refusal(413, ErrorCode.PayloadTooLarge, `the body is larger than ${config.maxBodyBytes} bytes`));
          return;
        }
        chunks.push(c);
      });
      req.on('end', () => resolve(Buffer.concat(chunks, size)));
      req.on('error', reject);
    });
  }

  async function deliver(t: TenantId, route: WebhookRoute, req: IncomingMessage): Promise<{ status: number; body: object }> {
    const tc = conns.get(t) as TenantConnection;
    const body = await readBody(req);
    const id = header(req, 'webhook-id');
    const timestamp = header(req, 'webhook-timestamp');
    const signature = header(req, 'webhook-signature');
    if (!id || !timestamp || !signature) refuse(ErrorCode.WebhookSignatureInvalid, 'a delivery needs the webhook-id, webhook-timestamp and webhook-signature headers (once each)');
    if (!WEBHOOK_ID.test(id)) refuse(ErrorCode.WebhookSignatureInvalid, 'webhook-id must be 1 to 256 printable ASCII characters');
    if (!/^\d{1,15}$/.test(timestamp)) refuse(ErrorCode.WebhookTimestampInvalid, 'webhook-timestamp must be whole seconds since the epoch');
    const skew = Date.now() / 1000 - Number(timestamp);
    if (Math.abs(skew) > config.toleranceSeconds) {
      refuse(
        ErrorCode.WebhookTimestampInvalid,
        `webhook-timestamp is ${Math.round(Math.abs(skew))} s ${skew > 0 ? 'old' : 'in the future'}; at most ${config.toleranceSeconds} s either way is accepted`,
      );
    }
    let verdict;
    try {
      verdict = await verifyWebhook(tc.nc, t, { secrets: [...route.secrets], id, timestamp, signature, body }, { timeoutMs: config.verifyTimeoutMs });
    } catch (e) {
      const code = CapstanError.is(e) ? e.code : 'error';
      log.warn({ tenant: t, route: route.route, secrets: route.secrets, code }, 'a delivery could not be verified');
      refuse(ErrorCode.Unavailable, 'the delivery cannot be verified right now; retry later', 5);
    }
    if (!verdict.valid) refuse(ErrorCode.WebhookSignatureInvalid, "no signature matches the route's signing secrets");
    const slot = limiter.take(t, Date.now());
    if (!slot.ok)
      refuse(ErrorCode.RateLimited, `tenant ${t} takes at most ${config.ratePerSecond} deliveries a second; retry later`, Math.max(1, Math.ceil(slot.retryAfterMs / 1000)));
    let parsed: JsonValue;
    try {
      parsed = JSON.parse(body.toString('utf8')) as JsonValue;
    } catch {
      refuse(ErrorCode.DecodeFailed, 'the body is not JSON');
    }
    let input;
    try {
      input = selectInput(parsed, route.fields);
    } catch (e) {
      refuse(ErrorCode.SchemaViolation, (e as Error).message);
    }
    const size = encodedSize(input);
    if (size > LIMITS.inputBytes) refuse(ErrorCode.PayloadTooLarge, `the run's input would be ${size} bytes; the limit is ${LIMITS.inputBytes}`);

    const runId = webhookRunId(t, route.route, id);
    const bodySha256 = createHash('sha256').update(body).digest('hex');
    const claim = Subjects.seenDelivery(t, createHash('sha256').update(`${t}\0${route.route}\0${id}`).digest('hex').slice(0, 40));
    let duplicate = false;
    try {
      await tc.js.publish(claim, encode({ route: route.route, runId, bodySha256 }), { expect: { lastSubjectSequence: 0 } });
    } catch (e) {
      if (!(e instanceof JetStreamApiError && JS_SEQUENCE_CONFLICT_CODES.has(e.code))) throw e;
      const seen = await tc.jsm.direct.getMessage(Streams.seen(t), { last_by_subj: claim });
      const prior = seen ? parseSeenDelivery(decode(seen.data)) : undefined;
      if (prior && prior.bodySha256 !== bodySha256) refuse(ErrorCode.WebhookIdConflict, `webhook-id ${id} was delivered before with another body; a delivery id may not be reused`);
      duplicate = true;
    }
    // A duplicate publishes again too: if the first delivery claimed the id and then failed
    // to submit, this repairs it; otherwise JetStream drops the copy and the run id would.
    await submit(tc, route, runId, input);
    if (duplicate) {
      stats.duplicates++;
      log.debug({ tenant: t, route: route.route, webhookId: id, runId }, 'duplicate delivery: no new run');
      return { status: 200, body: { runId, duplicate: true } };
    }
    stats.accepted++;
    log.debug({ tenant: t, route: route.route, webhookId: id, runId }, 'delivery accepted');
    return { status: 202, body: { runId } };
  }

  async function submit(tc: TenantConnection, route: WebhookRoute, runId: RunId, input: { [k: string]: JsonValue }): Promise<void> {
    const subject = Subjects.command(tc.tenant, CommandVerb.Submit);
    const data = encode({ workflow: route.workflow, runId, input });
    // Signed as ingress: the run names its requester, so four eyes hold on its approvals.
    await tc.js.publish(subject, data, { msgID: MsgIds.command(CommandVerb.Submit, runId), ...(tc.signer ? { headers: proofHeaders(tc.signer, subject, data) } : {}) });
  }

  function send(res: ServerResponse, status: number, body: object, retryAfterS?: number): void {
    const text = JSON.stringify(body);
    res.writeHead(status, {
      'content-type': 'application/json',
      'content-length': Buffer.byteLength(text),
      'cache-control': 'no-store',
      ...(retryAfterS !== undefined ? { 'retry-after': String(retryAfterS) } : {}),
    });
    res.end(text);
  }

  async function handle(req: IncomingMessage, res: ServerResponse): Promise<void> {
    const path = (req.url ?? '').split('?', 1)[0] ?? '';
    if (path === '/healthz' && req.method === 'GET') return send(res, 200, { ok: true, tenants: routes.size });
    const m = HOOK_PATH.exec(path);
    let t: TenantId | undefined;
    let routeId = '';
    try {
      if (!m) refuse(ErrorCode.RouteNotFound, 'webhooks are delivered to POST /hooks/<tenant>/<route>');
      const [tenant, route] = [decodeURIComponent(m[1] ?? ''), decodeURIComponent(m[2] ?? '')];
      routeId = route.slice(0, 64);
      if (req.method !== 'POST') {
        res.setHeader('allow', 'POST');
        // The method is HTTP's own business (405 with `Allow`), not an error code's status.
        throw new Refusal(405, ErrorCode.InvalidArgument, 'deliveries are POSTed');
      }
      const r = isTenantId(tenant) && TRIGGER_ID_PATTERN.test(route) ? routes.get(tenant)?.get(route) : undefined;
      // One answer for an unknown tenant and an unknown route: nothing is told about either.
      if (!r) refuse(ErrorCode.RouteNotFound, `no webhook route ${JSON.stringify(routeId)} here`);
      t = tenant as TenantId;
      const out = await deliver(t, r, req);
      send(res, out.status, out.body);
    } catch (e) {
      if (e instanceof Refusal) {
        stats.refused[e.code] = (stats.refused[e.code] ?? 0) + 1;
        log.info({ tenant: t, route: routeId, status: e.status, code: e.code }, 'delivery refused');
        if (e.status === 413) res.setHeader('connection', 'close');
        return send(res, e.status, { error: { code: e.code, message: e.message } }, e.retryAfterS);
      }
      log.warn({ err: e, tenant: t, route: routeId }, 'delivery failed');
      send(res, 503, { error: { code: ErrorCode.Unavailable, message: 'the delivery could not be stored; retry later' } }, 5);
    }
  }

  return Promise.resolve({
    get url() {
      return url;
    },
    stats: () => stats,
    routes: (t) => [...(routes.get(t)?.values() ?? [])],
    async start() {
      access = await serviceAccess(Role.Ingress, config, config.name, log);
      follower = await access.follow(config.tenants, config.discoveryMs, watchRoutes, log);
      const s = createServer((req, res) => void handle(req, res));
      s.requestTimeout = 30_000;
      s.headersTimeout = 10_000;
      await new Promise<void>((resolve, reject) => {
        s.once('error', reject);
        s.listen(config.port, config.host, () => resolve());
      });
      server = s;
      const addr = s.address() as AddressInfo;
      url = `http://${addr.family === 'IPv6' ? `[${addr.address}]` : addr.address}:${addr.port}`;
      log.info({ url, tenants: config.tenants, maxBodyBytes: config.maxBodyBytes, toleranceSeconds: config.toleranceSeconds }, 'ingress listening');
    },
    async stop() {
      follower?.stop();
      await new Promise<void>((resolve) => {
        if (!server) return resolve();
        server.close(() => resolve());
        server.closeAllConnections();
      });
      await Promise.allSettled(watchers.map((w) => w.stop()));
      await access?.close();
    },
  });
}

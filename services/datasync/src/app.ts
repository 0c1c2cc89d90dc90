/**
 * Composition root of the datasync service: the data plane's connector runtime. Answers
 * `cap.<t>.svc.datasync.<verb>` for the tenants it serves (queue group `datasync`):
 *
 * - `put`, `delete`, `get`, `list`: the catalog (specs kept here, records to the control
 *   plane's catalog stream);
 * - `step`: one pipeline step for the worker's built-in pipeline handlers; replies on the
 *   request's inbox: `accepted`, a `beat` every second with the step's progress, one `done`
 *   with the step's metadata or its typed error;
 * - `cancel`: stops a running step (its attempt timed out, or its worker stopped);
 * - `preview`: the bounded preview query.
 *
 * Requests carry identifiers; the service resolves them to specs and leased credentials
 * itself. Refusals are empty replies with `Capstan-Error-Code` / `Capstan-Error` headers.
 * Nothing it logs, replies or stores holds a DSN, a credential or a source row, except the
 * preview's bounded table, which goes to its asker only.
 */
import { randomBytes } from 'node:crypto';
import pg from 'pg';
import { drizzle } from 'drizzle-orm/node-postgres';
import type { Msg, Subscription } from '@nats-io/transport-node';
import {
  CapstanError,
  CatalogKind,
  DatasyncVerb,
  db as schema,
  decode,
  encode,
  ErrorCode,
  Headers,
  InvalidArgumentError,
  makeRunId,
  parseDatasyncCancelRequest,
  parseDatasyncDeleteRequest,
  parseDatasyncGetRequest,
  parseDatasyncListRequest,
  parseDatasyncPutRequest,
  parseDatasyncStepRequest,
  parsePreviewRequest,
  parseStepResult,
  PREVIEW_LIMITS,
  Role,
  Subjects,
  toErrorRecord,
  type DatasyncProgress,
  type DatasyncStepReply,
  type DatasyncStepRequest,
  type TenantId,
  AuditKind,
} from '@capstan/schemas';
import {
  appendAuditRow,
  createAuditSink,
  serviceAccess,
  wireError,
  type TenantAccess,
  type TenantConnection,
  type TenantFollower,
  dbErrorMessage,
  migrate,
  previewRunId,
  refuseRequest,
  type Database,
  type Logger,
  type ProjectionDb,
} from '@capstan/kit';
import type { Config } from './config.js';
import { createCatalog, type Catalog } from './catalog.js';
import { openPostgres } from './connect.js';
import { createPipelineRunner, type PipelineRunner } from './pipeline.js';
import { checkPreviewQuery, loadParser, runPreview } from './preview.js';
import { STATE_SCHEMA } from './sql.js';

export interface DatasyncService {
  start(): Promise<void>;
  stop(): Promise<void>;
  stats(): Readonly<DatasyncStats>;
}

export interface DatasyncStats {
  steps: number;
  stepsFailed: number;
  previews: number;
  refused: number;
}

const QUEUE = 'datasync';
const VERBS = Object.values(DatasyncVerb);
const BEAT_MS = 1000;
const BACKOFF_MIN_MS = 250;
const BACKOFF_MAX_MS = 5000;

export function createDatasync(config: Config, log: Logger): Promise<DatasyncService> {
  // UTC and ISO dates in every session: the text forms written to destinations do not depend on the server's defaults.
  const pool = new pg.Pool({
    connectionString: config.databaseUrl,
    max: config.poolSize,
    connectionTimeoutMillis: 5000,
    options: '-c TimeZone=UTC -c DateStyle=ISO,YMD -c extra_float_digits=3',
  });
  pool.on('error', (err) => log.warn({ err: err.message }, 'data plane database connection lost (idle)'));
  const database: Database = { db: drizzle(pool, { schema }) as unknown as ProjectionDb, kind: 'pg', where: 'datasync', close: () => pool.end() };
  const stats: DatasyncStats = { steps: 0, stepsFailed: 0, previews: 0, refused: 0 };
  const subs: Subscription[] = [];
  const inflight = new Set<Promise<unknown>>();
  /** Running steps by `<run>:<step>:<attempt>`, so `cancel` can stop them. */
  const running = new Map<string, AbortController>();
  let active = 0;
  const waiting: (() => void)[] = [];
  let access: TenantAccess | undefined;
  let follower: TenantFollower | undefined;
  /** The service's connection to each tenant's account it serves. */
  const conns = new Map<TenantId, TenantConnection>();
  const connOf = (t: TenantId): TenantConnection => {
    const tc = conns.get(t);
    if (!tc) throw new CapstanError(ErrorCode.DatasyncUnavailable, `the datasync service does not serve tenant ${t} (yet)`, true);
    return tc;
  };
  let catalog: Catalog | undefined;
  let runner: PipelineRunner | undefined;
  let stopping = false;
  let sweeper: NodeJS.Timeout | undefined;

  const stepKey = (r: { runId: string; step: string; attempt: number }) => `${r.runId}:${r.step}:${r.attempt}`;

  async function slot(): Promise<() => void> {
    while (active >= config.concurrency) await new Promise<void>((r) => waiting.push(r));
    active++;
    return () => {
      active--;
      waiting.shift()?.();
    };
  }

  const handlers: Record<Exclude<DatasyncVerb, 'step' | 'cancel'>, (t: TenantId, body: unknown, msg: Msg) => Promise<object>> = {
    async [DatasyncVerb.Put](t, body) {
      const req = parseDatasyncPutRequest(body);
      const record = await (catalog as Catalog).put(t, req);
      log.info({ tenant: t, kind: record.kind, id: record.id, version: record.version, by: req.by }, 'catalog entity stored');
      return { record };
    },
    async [DatasyncVerb.Delete](t, body) {
      const req = parseDatasyncDeleteRequest(body);
      const record = await (catalog as Catalog).remove(t, req.kind, req.id, req.by);
      log.info({ tenant: t, kind: record.kind, id: record.id, version: record.version, by: req.by }, 'catalog entity deleted');
      return { record };
    },
    async [DatasyncVerb.Get](t, body) {
      const req = parseDatasyncGetRequest(body);
      return { record: await (catalog as Catalog).get(t, req.kind, req.id) };
    },
    async [DatasyncVerb.List](t, body) {
      const req = parseDatasyncListRequest(body);
      return { records: await (catalog as Catalog).list(t, { ...(req.kind ? { kind: req.kind } : {}), ...(req.includeDeleted ? { includeDeleted: true } : {}) }) };
    },
    async [DatasyncVerb.Preview](t, body, msg) {
      const req = parsePreviewRequest(body);
      let fingerprint = '';
      let outcome: { rows?: number; truncated?: boolean; code?: string } = {};
      // The asker's signed request goes with the lease request: it is the lease's warrant
      // (checked by the lease service, not here: this service's word is not what counts).
      const signer = msg.headers?.get(Headers.Signer) ?? '';
      const signature = msg.headers?.get(Headers.Signature) ?? '';
      const warrant = signer && signature && req.at !== undefined ? { request: msg.data, signer, signature } : undefined;
      // A preview is leased and audited under its own id, as a run of one step would be;
      // a signed one under the id its signature names, so a replay of it names the same.
      const previewId = warrant && req.at !== undefined ? previewRunId(req.at, signature) : makeRunId(Date.now(), randomBytes(10));
      try {
        const checked = await checkPreviewQuery(req.sql);
        fingerprint = checked.fingerprint;
        const { spec } = await (catalog as Catalog).spec(t, CatalogKind.Connection, req.connection);
        const client = await openPostgres(spec, {
          nc: connOf(t).nc,
          signer: connOf(t).signer,
          tenant: t,
          scope: { runId: previewId, step: 'preview', attempt: 1 },
          connectTimeoutMs: config.connectTimeoutMs,
          application: 'capstan-preview',
          ...(warrant ? { preview: warrant } : {}),
        });
        try {
          const reply = await runPreview(client, checked.statement, fingerprint, req.timeoutMs ?? PREVIEW_LIMITS.defaultTimeoutMs);
          outcome = { rows: reply.rows.length, truncated: reply.truncated };
          stats.previews++;
          return reply;
        } finally {
          await client.end().catch(() => undefined);
        }
      } catch (e) {
        outcome = { code: CapstanError.is(e) ? e.code : ErrorCode.SourceFailed };
        throw e;
      } finally {
        // Who looked at which connection, and the query's shape (its fingerprint), never its text or rows.
        await appendAuditRow(database.db, {
          tenant: t,
          runId: previewId,
          kind: AuditKind.DatasyncPreview,
          actor: req.by,
          detail: { connection: req.connection, fingerprint, ...outcome },
        }).catch((e: unknown) => log.warn({ tenant: t, reason: dbErrorMessage(e).split('\n')[0] }, 'preview audit row not written'));
      }
    },
  };

  function refuse(msg: Msg, e: unknown, verb: string, t: string): void {
    const { code, message, typed } = wireError(e, ErrorCode.DatasyncUnavailable, `the datasync service could not complete ${verb}`);
    if (typed) {
      stats.refused++;
      log.debug({ tenant: t, verb, code }, 'datasync request refused');
    } else {
      log.warn({ tenant: t, verb, reason: message }, 'datasync request failed');
    }
    refuseRequest(msg, code, message);
  }

  /** One pipeline step: accepted, beats with progress, done. */
  async function step(msg: Msg, t: TenantId, req: DatasyncStepRequest): Promise<void> {
    const send = (r: DatasyncStepReply) => msg.respond(encode(r));
    const key = stepKey(req);
    const abort = new AbortController();
    running.set(key, abort);
    const timer = setTimeout(() => abort.abort(), req.timeoutMs);
    let progress: DatasyncProgress = { phase: 'waiting', rows: 0, bytes: 0 };
    send({ type: 'accepted' });
    const beat = setInterval(() => send({ type: 'beat', progress }), BEAT_MS);
    const release = await slot();
    const log1 = log.child({ tenant: t, runId: req.runId, step: req.step, attempt: req.attempt });
    try {
      stats.steps++;
      const result = parseStepResult(await (runner as PipelineRunner).run({ tenant: t, req, signal: abort.signal, progress: (p) => (progress = p) }));
      log1.info({ rows: result.rows, bytes: result.bytes, durationMs: result.durationMs }, 'pipeline step done');
      send({ type: 'done', result });
    } catch (e) {
      stats.stepsFailed++;
      const error = CapstanError.is(e)
        ? e.toRecord()
        : { code: ErrorCode.DatasyncUnavailable, message: `step ${req.step} failed: ${dbErrorMessage(e).split('\n')[0]?.slice(0, 300) ?? ''}`, retryable: true };
      log1.warn({ code: error.code, reason: error.message }, 'pipeline step failed');
      send({ type: 'done', error: { ...error, message: error.message.slice(0, 2000) } });
    } finally {
      clearInterval(beat);
      clearTimeout(timer);
      release();
      running.delete(key);
    }
  }

  async function serve(t: TenantId, msg: Msg): Promise<void> {
    // The subscription is the tenant's (`cap.<t>.svc.datasync.<verb>`): its last token is the verb.
    const verb = msg.subject.slice(msg.subject.lastIndexOf('.') + 1);
    try {
      if (verb === DatasyncVerb.Cancel) {
        const req = parseDatasyncCancelRequest(decode(msg.data));
        running.get(stepKey(req))?.abort();
        return;
      }
      if (!msg.reply) return;
      if (verb === DatasyncVerb.Step) {
        let req: DatasyncStepRequest;
        try {
          req = parseDatasyncStepRequest(decode(msg.data));
        } catch (e) {
          msg.respond(encode({ type: 'done', error: toErrorRecord(e, ErrorCode.SchemaViolation) } satisfies DatasyncStepReply));
          return;
        }
        await step(msg, t, req);
        return;
      }
      const handler = (VERBS as string[]).includes(verb) ? handlers[verb as keyof typeof handlers] : undefined;
      if (!handler) throw new InvalidArgumentError(`unknown datasync verb ${JSON.stringify(verb.slice(0, 32))}`);
      msg.respond(encode(await handler(t, decode(msg.data), msg)));
    } catch (e) {
      if (msg.reply) refuse(msg, e, verb, t);
    }
  }

  async function migrateWhenReachable(): Promise<void> {
    for (let backoff = BACKOFF_MIN_MS; ; backoff = Math.min(backoff * 2, BACKOFF_MAX_MS)) {
      try {
        await migrate(database);
        await pool.query(`create schema if not exists ${STATE_SCHEMA}`);
        return;
      } catch (e) {
        if (stopping) throw e;
        log.warn({ reason: dbErrorMessage(e).split('\n')[0], retryInMs: backoff }, 'schema migration failed; retrying');
        await new Promise((r) => setTimeout(r, backoff));
      }
    }
  }

  return Promise.resolve({
    stats: () => stats,
    async start() {
      await migrateWhenReachable();
      await loadParser();
      catalog = createCatalog({ pool, streams: connOf });
      runner = createPipelineRunner({ pool, catalog, tenant: connOf, audit: createAuditSink(database), config, log });
      access = await serviceAccess(Role.Datasync, config, config.name, log);
      follower = await access.follow(
        config.tenants,
        config.discoveryMs,
        async (tc) => {
          conns.set(tc.tenant, tc);
          for (const verb of VERBS) {
            subs.push(
              tc.nc.subscribe(Subjects.datasync(tc.tenant, verb), {
                // A cancel must reach the instance running the step: every instance hears it.
                ...(verb === DatasyncVerb.Cancel ? {} : { queue: QUEUE }),
                callback: (err, msg) => {
                  if (err) return;
                  const p = serve(tc.tenant, msg);
                  inflight.add(p);
                  void p.finally(() => inflight.delete(p));
                },
              }),
            );
          }
          await tc.nc.flush();
        },
        log,
      );
      // Staging of runs that ended without loading, once they are old enough.
      const sweep = () =>
        void (runner as PipelineRunner).sweep(config.sweepAfterMs).catch((e: unknown) => log.warn({ reason: dbErrorMessage(e).split('\n')[0] }, 'staging sweep failed'));
      sweeper = setInterval(sweep, Math.min(config.sweepAfterMs, 3_600_000));
      sweeper.unref();
      sweep();
      log.info({ tenants: config.tenants, filesRoot: config.filesRoot }, 'datasync service started');
    },
    async stop() {
      stopping = true;
      if (sweeper) clearInterval(sweeper);
      for (const s of subs) s.unsubscribe();
      for (const a of running.values()) a.abort();
      follower?.stop();
      await Promise.allSettled([...inflight]);
      await access?.close();
      await pool.end();
    },
  });
}

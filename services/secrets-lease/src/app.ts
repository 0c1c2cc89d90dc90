/**
 * Composition root of the secrets-lease service: answers `cap.<t>.svc.secrets.<verb>` for
 * every tenant (queue group `secrets-lease`, so instances share the load), and watches each
 * tenant's run stream to revoke the leases of runs that end.
 *
 * Replies are MessagePack bodies; a refusal is an empty body with the `Capstan-Error-Code`
 * and `Capstan-Error` headers. No reply, header or log line holds a secret value: values
 * only ever leave sealed to a sandbox's key (`redeem`).
 */
import type { Msg, Subscription } from '@nats-io/transport-node';
import {
  CapstanError,
  decode,
  encode,
  ErrorCode,
  LeaseDeniedError,
  InvalidArgumentError,
  leaseAad,
  Lifecycle,
  MAX_SECRET_BYTES,
  parseClaimRequest,
  parseDeleteRequest,
  parseKeyRequest,
  parseLeaseRequest,
  parseListRequest,
  parsePutRequest,
  parseRedeemRequest,
  parseRevokeRequest,
  parseRotateRequest,
  parseVerifyRequest,
  putAad,
  Role,
  REFRESHABLE_AUTH,
  SecretNotFoundError,
  SecretsUnavailableError,
  SecretsVerb,
  Subjects,
  UnprovenError,
  type ClaimReply,
  type LeaseGrant,
  type PutRequest,
  type SealedBox,
  type TenantId,
} from '@capstan/schemas';
import {
  dbErrorMessage,
  inSpan,
  metrics,
  SpanKind,
  traceParentOf,
  migrate,
  openDatabase,
  parseRecipientKey,
  refuseRequest,
  answerRequest,
  wireError,
  seal,
  serviceAccess,
  type Database,
  type Logger,
  type TenantAccess,
  type TenantConnection,
  type TenantFollower,
  verifyProof,
  jwtSubject,
  type Author,
} from '@capstan/kit';
import { checkDatasyncWarrant, checkWarrant } from './warrant.js';
import { refreshers as builtinRefreshers, type Refreshers } from './credentials.js';
import { verifyDelivery, webhookKey } from './webhook-signature.js';
import type { Config } from './config.js';
import { createKeyring, type Keyring } from './envelope.js';
import { audit, lockRunAudit, SecretsAudit, secretAuditRun } from './db.js';
import { createLeaseLedger, type LeaseLedger } from './leases.js';
import { createSecretRefresher } from './refresh.js';
import { watchRunEnds, type RunEndWatch } from './run-ends.js';
import { checkValue, postgresSecretStore, secretInfo, type SecretStore } from './store.js';

export interface SecretsLeaseOptions {
  /** An open database (the dev stack's embedded one); otherwise `DATABASE_URL` is opened. */
  readonly database?: Database;
  /** Another secrets backend; the built-in Postgres store by default. */
  readonly store?: SecretStore;
  /** Credential refreshers by auth strategy; the built-in ones (credentials.ts) by default. */
  readonly refreshers?: Refreshers;
}

export interface SecretsLeaseStats {
  issued: number;
  redeemed: number;
  denied: number;
  revoked: number;
  errors: number;
}

export interface SecretsLeaseService {
  start(): Promise<void>;
  stop(): Promise<void>;
  readonly ledger: LeaseLedger;
  readonly store: SecretStore;
  stats(): Readonly<SecretsLeaseStats>;
  /** Tenants whose run streams are watched for ended runs. */
  watched(): readonly TenantId[];
}

const QUEUE = 'secrets-lease';
/** Credentials that administer a tenant's secrets (the server lets no other role publish those verbs either). */
const ADMINISTERING: ReadonlySet<string> = new Set([Role.Operator, Role.Console, Role.Admin]);
/** Signers that act for people they signed in: their statement of who acted is heard. */
const VOUCHING: ReadonlySet<string> = new Set([Role.Console, Role.Admin]);
const VERBS = Object.values(SecretsVerb);
const BACKOFF_MIN_MS = 250;
const BACKOFF_MAX_MS = 5000;
/**
 * Webhook signing keys stay decoded in this process this long: ingress asks for every
 * delivery, and a rotation or deletion of the secret takes effect within it.
 */
const SIGNING_KEY_TTL_MS = 10_000;
const DENIALS: ReadonlySet<string> = new Set([
  ErrorCode.LeaseNotFound,
  ErrorCode.LeaseExpired,
  ErrorCode.LeaseUsed,
  ErrorCode.LeaseRevoked,
  ErrorCode.LeaseScopeMismatch,
  ErrorCode.LeaseNotWarranted,
  ErrorCode.LeaseWrongRedeemer,
  ErrorCode.LeaseAlreadyIssued,
  ErrorCode.Unproven,
  ErrorCode.SecretNotFound,
]);

export async function createSecretsLease(config: Config, log: Logger, opts: SecretsLeaseOptions = {}): Promise<SecretsLeaseService> {
  const ownDatabase = !opts.database;
  const database = opts.database ?? (await openDatabase({ url: config.databaseUrl, log, poolSize: config.poolSize }));
  const keyring: Keyring = createKeyring(config.masterKey);
  const store = opts.store ?? postgresSecretStore(database, keyring, { refreshWindowMs: config.refreshWindowMs });
  const ledger = createLeaseLedger(database);
  const refresher = createSecretRefresher(store, opts.refreshers ?? builtinRefreshers, log, MAX_SECRET_BYTES, {
    allow: config.refreshAllow,
    audit: (t, name, by, detail) =>
      database.db.transaction(async (tx) => {
        await lockRunAudit(tx, t, secretAuditRun(name));
        await audit(tx, t, secretAuditRun(name), SecretsAudit.SecretRefreshFailed, by, detail);
      }),
  });
  const stats: SecretsLeaseStats = { issued: 0, redeemed: 0, denied: 0, revoked: 0, errors: 0 };
  let access: TenantAccess | undefined;
  let follower: TenantFollower | undefined;
  let stopping = false;
  const subs: Subscription[] = [];
  const watches = new Map<TenantId, RunEndWatch>();
  const inflight = new Set<Promise<void>>();

  /** Decoded signing keys by tenant/name; a load in flight is shared by every request that needs it. */
  const signingKeys = new Map<string, { key: Promise<Buffer>; until: number }>();

  /** The HMAC keys of the named webhook signing secrets (cached briefly, never leaving the process). */
  function keysOf(t: TenantId, names: readonly string[]): Promise<{ name: string; key: Buffer }[]> {
    const now = Date.now();
    return Promise.all(
      names.map(async (name) => {
        const id = `${t}/${name}`;
        let hit = signingKeys.get(id);
        if (!hit || hit.until <= now) {
          const key = store.read(t, [name]).then((values) => webhookKey(name, values[name] ?? ''));
          hit = { key, until: now + SIGNING_KEY_TTL_MS };
          signingKeys.set(id, hit);
          // A failed load (no such secret, the store away) is not remembered.
          key.catch(() => signingKeys.get(id) === hit && signingKeys.delete(id));
        }
        return { name, key: await hit.key };
      }),
    );
  }

  /** Opens a value the CLI sealed to this tenant's key for this name. */
  function openValue(t: TenantId, name: string, sealed: SealedBox): Uint8Array {
    return keyring.putRecipient(t).open(sealed, putAad(t, name));
  }

  function expiry(raw: string | undefined): Date | undefined {
    if (raw === undefined) return undefined;
    const d = new Date(raw);
    if (Number.isNaN(d.getTime())) throw new InvalidArgumentError('expiresAt must be an ISO 8601 time');
    return d;
  }

  /** Lifecycle, connector and window must fit together; checked before anything is stored. */
  function checkCredential(req: PutRequest): void {
    const lifecycle = req.lifecycle ?? Lifecycle.Static;
    if (lifecycle === Lifecycle.Refreshable) {
      if (!req.connector || !REFRESHABLE_AUTH.has(req.connector.auth.type)) {
        throw new InvalidArgumentError(`secret ${req.name}: a refreshable credential needs a connector whose auth is ${[...REFRESHABLE_AUTH].join(' or ')}`);
      }
    } else if (req.refreshWindowMs !== undefined) {
      throw new InvalidArgumentError(`secret ${req.name}: refreshWindowMs applies only to a refreshable credential`);
    }
  }

  /** The tenants served, with their account key, run stream and registry record. */
  const conns = new Map<TenantId, TenantConnection>();

  /** Who signed a request (its credential, issued by the tenant's account). @throws UnprovenError */
  function callerOf(t: TenantId, msg: Msg): Author {
    return verifyProof(msg.headers, msg.subject, msg.data, { accounts: conns.get(t)?.account ? [conns.get(t)?.account as string] : [] });
  }

  /**
   * Who administers the tenant's secrets in this request: an operator's own name, or the user
   * the console or the admin states it acts for; never the word of an unsigned request.
   * @throws UnprovenError when the request is unsigned or its signer may not administer secrets
   */
  function administrator(t: TenantId, msg: Msg, stated: string | undefined): string {
    const author = callerOf(t, msg);
    const role = author.role ?? '';
    if (!ADMINISTERING.has(role)) throw new UnprovenError(`${msg.subject}: signed by ${author.name} (${role || 'no role'}), which does not administer secrets`);
    return VOUCHING.has(role) && stated !== undefined ? stated : author.name;
  }

  /**
   * Whom a lease is bound to: for a worker's step, the tenant's sandbox service as the
   * registry names it now; a service that leases for its own use (datasync) redeems itself.
   */
  async function redeemerFor(t: TenantId, caller: Author): Promise<string> {
    if (caller.role !== Role.Worker) return caller.publicKey;
    const record = await conns.get(t)?.record?.();
    const jwt = record?.services[Role.Sandbox];
    if (!jwt) throw new LeaseDeniedError(ErrorCode.LeaseNotWarranted, '', `tenant ${t} has no sandbox service in the registry to redeem a lease`);
    return jwtSubject(jwt);
  }

  type Handler = (t: TenantId, body: unknown, msg: Msg) => Promise<object>;
  const handlers: Record<SecretsVerb, Handler> = {
    async [SecretsVerb.Lease](t, body, msg) {
      const req = parseLeaseRequest(body);
      const scope = { runId: req.runId, step: req.step, attempt: req.attempt };
      // The caller proven, then the run's record: a lease is issued only for what it warrants.
      const caller = callerOf(t, msg);
      let once = caller.role === Role.Worker;
      if (caller.role === Role.Worker || caller.role === Role.Datasync) {
        const tc = conns.get(t);
        if (!tc) throw new SecretsUnavailableError(`tenant ${t} is not served here`);
        try {
          if (caller.role === Role.Worker) await checkWarrant(tc.jsm, t, { ...scope, keys: req.keys }, caller);
          else once = (await checkDatasyncWarrant({ jsm: tc.jsm, account: tc.account }, t, req, caller)).once;
        } catch (e) {
          await ledger.deny(t, req.runId, '', CapstanError.is(e) ? e.code : ErrorCode.LeaseNotWarranted, {
            keys: [...req.keys],
            step: req.step,
            attempt: req.attempt,
            caller: caller.name,
          });
          throw e;
        }
      } else {
        await ledger.deny(t, req.runId, '', ErrorCode.LeaseNotWarranted, { keys: [...req.keys], step: req.step, attempt: req.attempt, caller: caller.name });
        throw new LeaseDeniedError(ErrorCode.LeaseNotWarranted, '', `lease refused: ${caller.name} (role ${caller.role ?? 'none'}) may not ask for leases`);
      }
      const redeemer = await redeemerFor(t, caller);
      const metas = await store.describe(t, req.keys);
      const missing = req.keys.filter((k) => !metas.has(k));
      if (missing.length > 0) {
        await ledger.deny(t, req.runId, '', ErrorCode.SecretNotFound, { keys: missing, step: req.step, attempt: req.attempt });
        throw new SecretNotFoundError(t, missing);
      }
      const unserved = [...metas.values()].filter((m) => m.lifecycle === Lifecycle.Exchangeable || m.lifecycle === Lifecycle.Ambient);
      if (unserved.length > 0) {
        await ledger.deny(t, req.runId, '', ErrorCode.InvalidArgument, { keys: unserved.map((m) => m.name), step: req.step, attempt: req.attempt });
        throw new InvalidArgumentError(`${unserved.map((m) => `${m.name} (${m.lifecycle})`).join(', ')}: exchangeable and ambient credentials are not leased by this service yet`);
      }
      await refresher.refreshDue(t, metas.values());
      const ttlMs = Math.min(req.ttlMs ?? config.defaultTtlMs, config.maxTtlMs);
      // A worker's attempt (and a signed preview) gets each key once: a second ask (a replay,
      // a second worker of the pool) gets nothing.
      const lease = await ledger.issue(t, scope, req.keys, ttlMs, config.claimWindowMs, redeemer, once);
      stats.issued++;
      metrics.leases.inc({ tenant: t, event: 'issued' });
      log.debug({ tenant: t, runId: req.runId, step: req.step, attempt: req.attempt, leaseId: lease.leaseId, keys: req.keys }, 'lease issued');
      const grant: LeaseGrant = { leaseId: lease.leaseId, keys: [...lease.keys], expiresAt: lease.expiresAt.toISOString() };
      return grant;
    },

    async [SecretsVerb.Redeem](t, body, msg) {
      const req = parseRedeemRequest(body);
      const by = callerOf(t, msg).publicKey;
      // Checked before the lease is claimed: a key no box can be sealed to must not burn it.
      parseRecipientKey(req.recipientKey);
      const scope = { runId: req.runId, step: req.step, attempt: req.attempt };
      const { keys, values } = await ledger.redeem(t, req.leaseId, scope, by, (names, within) => store.read(t, names, within));
      const plain = encode(values);
      try {
        const sealed = seal(req.recipientKey, plain, leaseAad(t, { ...scope, leaseId: req.leaseId }));
        stats.redeemed++;
        metrics.leases.inc({ tenant: t, event: 'redeemed' });
        log.debug({ tenant: t, runId: req.runId, step: req.step, attempt: req.attempt, leaseId: req.leaseId, keys }, 'lease redeemed');
        return { sealed };
      } finally {
        plain.fill(0);
      }
    },

    async [SecretsVerb.Claim](t, body, msg) {
      const req = parseClaimRequest(body);
      const expiresAt = await ledger.claim(t, req.leaseId, { runId: req.runId, step: req.step, attempt: req.attempt }, req.sandbox, callerOf(t, msg).publicKey);
      log.debug({ tenant: t, runId: req.runId, step: req.step, attempt: req.attempt, leaseId: req.leaseId, sandbox: req.sandbox }, 'lease claimed');
      return { expiresAt: expiresAt.toISOString() } satisfies ClaimReply;
    },

    async [SecretsVerb.Revoke](t, body, msg) {
      const req = parseRevokeRequest(body);
      const by = administrator(t, msg, req.by);
      const revoked = await ledger.revoke(t, req.runId, { kind: 'requested', by, ...(req.reason ? { reason: req.reason } : {}) });
      stats.revoked += revoked;
      if (revoked > 0) metrics.leases.inc({ tenant: t, event: 'revoked' }, revoked);
      log.info({ tenant: t, runId: req.runId, leases: revoked, by }, 'run revoked');
      return { revoked };
    },

    [SecretsVerb.Key](t, body) {
      parseKeyRequest(body);
      return Promise.resolve({ publicKey: keyring.putRecipient(t).publicKey });
    },

    async [SecretsVerb.Put](t, body, msg) {
      const req = parsePutRequest(body);
      const by = administrator(t, msg, req.by);
      checkCredential(req);
      const raw = openValue(t, req.name, req.sealed);
      try {
        checkValue(req.name, raw, MAX_SECRET_BYTES);
        const expiresAt = expiry(req.expiresAt);
        const meta = await store.put(t, req.name, raw, {
          by,
          lifecycle: req.lifecycle ?? Lifecycle.Static,
          ...(req.connector ? { connector: req.connector } : {}),
          ...(req.refreshWindowMs !== undefined ? { refreshWindowMs: req.refreshWindowMs } : {}),
          ...(expiresAt ? { expiresAt } : {}),
        });
        log.info({ tenant: t, secret: req.name, version: meta.version, lifecycle: meta.lifecycle, by }, 'secret stored');
        return { secret: secretInfo(meta), by };
      } finally {
        raw.fill(0);
      }
    },

    async [SecretsVerb.Rotate](t, body, msg) {
      const req = parseRotateRequest(body);
      const by = administrator(t, msg, req.by);
      if (req.sealed) {
        const raw = openValue(t, req.name, req.sealed);
        try {
          checkValue(req.name, raw, MAX_SECRET_BYTES);
          const expiresAt = expiry(req.expiresAt);
          const meta = await store.rotate(t, req.name, raw, { by, ...(expiresAt ? { expiresAt } : {}) });
          if (!meta) throw new SecretsUnavailableError(`secret ${req.name} changed while it was rotated; try again`);
          log.info({ tenant: t, secret: req.name, version: meta.version, by }, 'secret rotated');
          return { secret: secretInfo(meta), by };
        } finally {
          raw.fill(0);
        }
      }
      const meta = (await store.describe(t, [req.name])).get(req.name);
      if (!meta) throw new SecretNotFoundError(t, [req.name]);
      if (meta.lifecycle !== Lifecycle.Refreshable)
        throw new InvalidArgumentError(`secret ${req.name} is ${meta.lifecycle}: rotating it needs a new value (only a refreshable secret refreshes itself)`);
      return { secret: secretInfo(await refresher.refreshNow(t, meta, by)), by };
    },

    async [SecretsVerb.Delete](t, body, msg) {
      const req = parseDeleteRequest(body);
      const by = administrator(t, msg, req.by);
      const meta = await store.delete(t, req.name, by);
      log.info({ tenant: t, secret: req.name, version: meta.version, by }, 'secret deleted');
      return { secret: secretInfo(meta), by };
    },

    async [SecretsVerb.Verify](t, body) {
      const req = parseVerifyRequest(body);
      const keys = await keysOf(t, req.secrets);
      // One name at a time, so the answer can say which secret matched (for rotations).
      for (const { name, key } of keys) {
        if (verifyDelivery([key], { id: req.id, timestamp: req.timestamp, body: req.body, signature: req.signature })) return { valid: true, secret: name };
      }
      return { valid: false };
    },

    async [SecretsVerb.List](t, body, msg) {
      const req = parseListRequest(body);
      administrator(t, msg, undefined);
      return { secrets: (await store.list(t, req.includeDeleted === true)).map(secretInfo) };
    },
  };

  function reply(t: TenantId, msg: Msg, verb: string, body: object): void {
    // The sealing key is signed as this service: a CLI seals to no key anyone else handed it.
    answerRequest(msg, body, verb === SecretsVerb.Key ? conns.get(t)?.signer : undefined);
  }

  function refuse(msg: Msg, e: unknown, verb: string, t: string): void {
    // The database's own message says why (connection refused, …); it never holds a value:
    // values never reach the database in clear.
    const { code, message, typed } = wireError(e, ErrorCode.SecretsUnavailable, `the lease service could not complete ${verb}`);
    if (typed) {
      if (DENIALS.has(code)) {
        stats.denied++;
        metrics.leases.inc({ tenant: t, event: 'denied' });
      }
      log.debug({ tenant: t, verb, code }, 'secrets request refused');
    } else {
      stats.errors++;
      log.warn({ tenant: t, verb, reason: message }, 'secrets request failed');
    }
    refuseRequest(msg, code, message);
  }

  async function serve(t: TenantId, msg: Msg): Promise<void> {
    if (!msg.reply) return;
    // The subscription is the tenant's (`cap.<t>.svc.secrets.*`): its last token is the verb.
    const verb = msg.subject.slice(msg.subject.lastIndexOf('.') + 1);
    const token = t;
    try {
      const handler = (VERBS as string[]).includes(verb) ? handlers[verb as SecretsVerb] : undefined;
      if (!handler) throw new InvalidArgumentError(`unknown secrets verb ${JSON.stringify(verb.slice(0, 32))}`);
      // Issue and redeem asked within a run's trace are hops of it: the lease hop.
      const parent = traceParentOf(msg.headers);
      const body = parent
        ? await inSpan('secrets-lease', `secrets.${verb}`, { kind: SpanKind.SERVER, parent, attributes: { 'capstan.tenant': t, 'capstan.hop': 'lease' } }, () =>
            handler(t, decode(msg.data), msg),
          )
        : await handler(t, decode(msg.data), msg);
      reply(t, msg, verb, body);
    } catch (e) {
      refuse(msg, e, verb, token);
    }
  }

  /** Another service (the projector, `capstan migrate`) may be migrating too: retry until one of us has. */
  async function migrateWhenReachable(): Promise<void> {
    for (let backoff = BACKOFF_MIN_MS; ; backoff = Math.min(backoff * 2, BACKOFF_MAX_MS)) {
      try {
        await migrate(database);
        return;
      } catch (e) {
        if (stopping) throw e;
        log.warn({ database: database.where, reason: dbErrorMessage(e).split('\n')[0], retryInMs: backoff }, 'schema migration failed; retrying');
        await new Promise((r) => setTimeout(r, backoff));
      }
    }
  }

  return {
    ledger,
    store,
    stats: () => stats,
    watched: () => [...watches.keys()],
    async start() {
      await migrateWhenReachable();
      access = await serviceAccess(Role.SecretsLease, config, config.name, log);
      follower = await access.follow(
        config.tenants,
        config.discoveryMs,
        async (tc) => {
          conns.set(tc.tenant, tc);
          subs.push(
            tc.nc.subscribe(Subjects.svcVerbs(tc.tenant, 'secrets'), {
              queue: QUEUE,
              callback: (err, msg) => {
                if (err) return;
                const p = serve(tc.tenant, msg);
                inflight.add(p);
                void p.finally(() => inflight.delete(p));
              },
            }),
          );
          await tc.nc.flush();
          watches.set(tc.tenant, watchRunEnds(tc.js, tc.jsm, tc.tenant, ledger, log));
        },
        log,
      );
      log.info({ tenants: config.tenants, store: store.kind, masterKey: keyring.masterKeyId }, 'secrets-lease service started');
    },
    async stop() {
      stopping = true;
      follower?.stop();
      for (const s of subs) s.unsubscribe();
      await Promise.allSettled([...inflight]);
      await Promise.allSettled([...watches.values()].map((w) => w.stop()));
      await access?.close();
      if (ownDatabase) await database.close();
    },
  };
}

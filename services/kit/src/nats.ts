/**
 * NATS connections: credentials, TLS, and settings that survive server restarts (see the
 * reliability notes). Nothing connects anonymously: every connection presents a user JWT and
 * signs the server's nonce with its seed.
 */
import { readFileSync } from 'node:fs';
import { connect, jwtAuthenticator, PermissionViolationError, type NatsConnection } from '@nats-io/transport-node';
import { jetstream, jetstreamManager, JetStreamApiError, type JetStreamClient, type JetStreamManager } from '@nats-io/jetstream';
import { decode as decodeJwt, parseCreds } from '@nats-io/jwt';
import { CapstanError, CredentialsError, ErrorCode, inboxPrefixFor, isTenantId, PermissionDeniedError, type TenantId, type TenantRecord } from '@capstan/schemas';
import type { Logger } from './log.js';
import type { Signer } from './proof.js';

export type { NatsConnection };

/** A user's JWT and the seed that proves it. The seed is a secret: never logged. */
export interface NatsCredentials {
  readonly jwt: string;
  readonly seed: Uint8Array;
}

/** What a credential says about itself (from its JWT's tags). */
export interface CredentialsInfo extends NatsCredentials {
  readonly publicKey: string;
  readonly name: string;
  readonly tenant?: TenantId;
  readonly role?: string;
  readonly pools: readonly string[];
  /** Expiry (epoch s), when the JWT has one. */
  readonly expires?: number;
}

/** TLS to the server: a CA to verify it, and a client certificate when it asks for one. */
export interface NatsTls {
  readonly caFile?: string;
  readonly certFile?: string;
  readonly keyFile?: string;
}

function tagValue(tags: readonly string[] | undefined, key: string): string[] {
  return (tags ?? []).filter((t) => t.startsWith(`${key}:`)).map((t) => t.slice(key.length + 1));
}

/**
 * Parses a `.creds` file's content (a user JWT and its seed).
 * @throws CredentialsError naming `where`, never the content
 */
export async function parseCredentials(data: Uint8Array, where: string): Promise<CredentialsInfo> {
  let parsed: Awaited<ReturnType<typeof parseCreds>>;
  try {
    parsed = await parseCreds(data);
  } catch (e) {
    throw new CredentialsError(where, 'is not a NATS credentials file (a user JWT and a seed)', { cause: e });
  }
  const claims = parsed.uc;
  const tags = claims.nats?.tags;
  const tenant = tagValue(tags, 'capstan-tenant')[0];
  return {
    jwt: parsed.jwt,
    seed: new TextEncoder().encode(parsed.key),
    publicKey: claims.sub,
    name: claims.name,
    ...(tenant && isTenantId(tenant) ? { tenant } : {}),
    ...(tagValue(tags, 'capstan-role')[0] ? { role: tagValue(tags, 'capstan-role')[0] } : {}),
    pools: tagValue(tags, 'capstan-pool'),
    ...(claims.exp ? { expires: claims.exp } : {}),
  };
}

/** @throws CredentialsError when the file is missing, unreadable or malformed */
export async function readCredentials(path: string): Promise<CredentialsInfo> {
  let data: Uint8Array;
  try {
    data = readFileSync(path);
  } catch (e) {
    throw new CredentialsError(path, `cannot be read (${(e as NodeJS.ErrnoException).code ?? 'error'})`, { cause: e });
  }
  return parseCredentials(data, path);
}

/** The public key a JWT was issued for. */
export function jwtSubject(jwt: string): string {
  return decodeJwt(jwt).sub;
}

/** A user JWT's name (a credential's name: `alice`, `worker-7`). */
export function jwtName(jwt: string): string {
  return decodeJwt(jwt).name;
}

export interface ConnectOptions {
  readonly credentials: NatsCredentials;
  readonly tls?: NatsTls;
  /** The client's own reconnect loop (default on): off for one-shot commands that should fail fast. */
  readonly reconnect?: boolean;
}

export async function connectNats(servers: string, name: string, log: Logger, o: ConnectOptions): Promise<NatsConnection> {
  const tls =
    o.tls && (o.tls.caFile || o.tls.certFile)
      ? {
          ...(o.tls.caFile ? { ca: readFileSync(o.tls.caFile, 'utf8') } : {}),
          ...(o.tls.certFile ? { cert: readFileSync(o.tls.certFile, 'utf8') } : {}),
          ...(o.tls.keyFile ? { key: readFileSync(o.tls.keyFile, 'utf8') } : {}),
        }
      : undefined;
  const nc = await connect({
    servers: servers.split(','),
    name,
    authenticator: jwtAuthenticator(o.credentials.jwt, o.credentials.seed),
    // Replies come to the user's own inbox, which only it may subscribe to.
    inboxPrefix: inboxPrefixFor(jwtSubject(o.credentials.jwt)),
    ...(tls ? { tls } : {}),
    // The client's defaults give up after ~20 s of outage; a service must outlive a restart.
    maxReconnectAttempts: o.reconnect === false ? 0 : -1,
    // A revoked credential keeps being refused; once it is restored (a worker approved again)
    // the next attempt gets in, and the process carries on without a restart.
    ignoreAuthErrorAbort: o.reconnect !== false,
    reconnectTimeWait: 250,
    reconnectJitter: 250,
    pingInterval: 10_000,
    maxPingOut: 3,
    timeout: 5000,
    // The client otherwise builds two Error objects (for stack traces) on every request,
    // which was a tenth of the orchestrator's CPU under load.
    noAsyncTraces: true,
  });
  void (async () => {
    for await (const s of nc.status()) {
      if (s.type === 'disconnect' || s.type === 'reconnect') {
        log.warn({ nats: s.type, server: 'server' in s ? s.server : undefined }, `nats ${s.type}`);
      } else if (s.type === 'error') {
        // A refused publish or subscription is the server's permission check doing its job:
        // say which subject, once per occurrence, without the payload.
        const e = s.error;
        if (e instanceof PermissionViolationError) log.warn({ nats: 'permission', operation: e.operation, subject: e.subject }, 'nats refused an operation for this credential');
        else log.warn({ nats: s.type, err: e }, 'nats error');
      }
    }
  })();
  return nc;
}

/** A connection to one tenant's account, with its JetStream handles. */
export interface TenantConnection {
  readonly tenant: TenantId;
  readonly nc: NatsConnection;
  readonly js: JetStreamClient;
  readonly jsm: JetStreamManager;
  /**
   * The tenant account's public key: the issuer whose users' signatures are believed in this
   * tenant (the registry's record, or the issuer of a tenant credential's own JWT).
   */
  readonly account?: string;
  /** Signs as this connection's user (its JWT in the tenant's account and its seed). */
  readonly signer?: Signer;
  /** A platform service's fresh read of the tenant's registry record (who its services are). */
  readonly record?: () => Promise<TenantRecord | undefined>;
}

export interface TenantIdentity {
  readonly account?: string;
  readonly signer?: Signer;
  readonly record?: () => Promise<TenantRecord | undefined>;
}

export async function tenantConnection(tenant: TenantId, nc: NatsConnection, o: TenantIdentity & { jsDomain?: string } = {}): Promise<TenantConnection> {
  const { jsDomain, ...identity } = o;
  // checkAPI off: the account info call is not needed to use the API (and costs a round trip).
  // A domain: the streams are reached through a leaf node, as `$JS.<domain>.API.…`.
  const domain = jsDomain ? { domain: jsDomain } : {};
  return { tenant, nc, js: jetstream(nc, domain), jsm: await jetstreamManager(nc, { checkAPI: false, ...domain }), ...identity };
}

/** A user JWT's `<key>:<value>` tag values (`capstan-pool` → the pools it serves); [] for no JWT. */
export function jwtTagValues(jwt: string, key: string): string[] {
  if (!jwt) return [];
  const tags = decodeJwt<{ tags?: string[] }>(jwt).nats?.tags ?? [];
  return tags.filter((x) => x.startsWith(`${key}:`)).map((x) => x.slice(key.length + 1));
}

/** The account that issued a user JWT (for a tenant user: the tenant's account key). */
export function jwtIssuer(jwt: string): string {
  return decodeJwt(jwt).iss;
}

/** The server's permission violation behind an error (requests wrap it as their cause), if any. */
export function permissionViolation(e: unknown): PermissionViolationError | undefined {
  for (let c: unknown = e, depth = 0; c instanceof Error && depth < 5; c = c.cause, depth++) {
    if (c instanceof PermissionViolationError) return c;
  }
  return undefined;
}

/**
 * The server's refusals as Capstan's typed errors: a permission violation becomes
 * `permission_denied` naming the subject, a JetStream quota refusal `quota_exceeded`;
 * anything else is returned unchanged.
 */
export function permissionError(e: unknown): unknown {
  const v = permissionViolation(e);
  if (v) return new PermissionDeniedError(v.operation, v.subject, { cause: e });
  if (e instanceof JetStreamApiError && /resource limits exceeded|insufficient (storage )?resources|maximum (bytes|messages|consumers|streams)/i.test(e.message)) {
    return new CapstanError(ErrorCode.QuotaExceeded, `the tenant's quota is reached: ${e.message} (capstan tenant quota <t> raises it)`, false, { cause: e });
  }
  return e;
}

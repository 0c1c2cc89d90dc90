/**
 * Credential refreshers: turn a connector's auth strategy into a fresh short-lived
 * credential. This service calls them (refresh.ts) before it issues a lease for a
 * `refreshable` secret that is inside its refresh window; they live here because nothing
 * else holds a connector's secrets.
 *
 * A refresher holds no secret itself: the ones its strategy needs (a client secret, a
 * refresh token) are other secrets of the tenant, read through `ctx.read` by name (the
 * caller lets it read only secrets bound to the same connector). Errors name the endpoint
 * and the OAuth error code, never a token or a response body.
 *
 * No deputy: a token endpoint is where a tenant's secrets are sent, and a tenant names it.
 * So it must be `https`, and every address its host resolves to must be one a tenant may
 * reach (kit's addresses.ts: no loopback, private, link-local, reserved or this host's own
 * address) unless the admin allow-list names it; an allow-listed address may also be plain
 * `http` (an issuer on the admin's own network). The request goes to the address that was
 * checked, never to the name again, and redirects are not followed. A refused endpoint is
 * `endpoint_refused`, and nothing was sent.
 */
import { request as httpRequest, type IncomingMessage, type RequestOptions } from 'node:http';
import { request as httpsRequest } from 'node:https';
import type { LookupFunction } from 'node:net';
import { AuthKind, CapstanError, ErrorCode, MAX_SECRET_BYTES, type Connector, type TenantId } from '@capstan/schemas';
import { refusalOf, resolveChecked, type AddressRules } from '@capstan/kit';

export interface RefreshContext {
  readonly tenant: TenantId;
  /** The secret being refreshed. */
  readonly name: string;
  readonly connector: Connector;
  /** Another secret of the same tenant, by name (a client secret, a refresh token). */
  read(name: string): Promise<string>;
  readonly signal?: AbortSignal;
  /** Which token endpoints may be called (default: public addresses over https only). */
  readonly endpoints?: AddressRules;
}

export interface Refreshed {
  readonly value: string;
  /** How long the new value lives, when the issuer said (`expires_in`). */
  readonly expiresInMs?: number;
  /** Other secrets the refresh replaced, by name (a rotated refresh token). */
  readonly updates?: Readonly<Record<string, string>>;
}

export type Refresher = (ctx: RefreshContext) => Promise<Refreshed>;

/** Refreshers by auth strategy; a strategy without one cannot back a `refreshable` secret. */
export type Refreshers = Readonly<Partial<Record<AuthKind, Refresher>>>;

/** A refresh that did not produce a credential. Retryable: the issuer may be briefly away. */
export class CredentialRefreshError extends CapstanError {
  constructor(
    readonly secret: string,
    readonly connector: string,
    why: string,
    options?: ErrorOptions,
  ) {
    super(ErrorCode.CredentialRefreshFailed, `refreshing ${secret} through connector ${connector} failed: ${why}`, true, options);
  }
}

/** A token endpoint a refresher will not call: nothing was sent to it. Not retryable (the connector must change). */
export class EndpointRefusedError extends CapstanError {
  constructor(
    readonly secret: string,
    readonly connector: string,
    why: string,
  ) {
    super(ErrorCode.EndpointRefused, `refreshing ${secret} through connector ${connector}: ${why}; nothing was sent`, false);
  }
}

const TOKEN_TIMEOUT_MS = 10_000;
const MAX_TOKEN_RESPONSE_BYTES = 256 * 1024;
const OAUTH_ERROR = /^[a-z0-9_.-]{1,64}$/i;

/** `origin + path` of a URL: what an error may show of an endpoint (never its query). */
function endpoint(url: string): string {
  try {
    const u = new URL(url);
    return `${u.origin}${u.pathname}`;
  } catch {
    return '(invalid URL)';
  }
}

/**
 * One OAuth 2.0 token request (RFC 6749 §4.4 / §6) with client credentials in the body.
 * Returns the access token, its lifetime and, if the server rotated it, the new refresh token.
 */
/**
 * Where a token endpoint may be reached: its URL and the one checked address to connect to.
 * @throws EndpointRefusedError
 */
export async function checkTokenEndpoint(ctx: Pick<RefreshContext, 'name' | 'connector' | 'endpoints'>, tokenUrl: string): Promise<{ url: URL; address: string; family: 4 | 6 }> {
  const refuse = (why: string) => new EndpointRefusedError(ctx.name, ctx.connector.name, why);
  let url: URL;
  try {
    url = new URL(tokenUrl);
  } catch {
    throw refuse('the token endpoint is not a URL');
  }
  if (url.protocol !== 'https:' && url.protocol !== 'http:') throw refuse(`token endpoint ${endpoint(tokenUrl)} is not https`);
  if (url.username || url.password) throw refuse(`token endpoint ${endpoint(tokenUrl)} carries credentials in its URL`);
  const rules = ctx.endpoints ?? { allow: [], dns: [] };
  const host = url.hostname.replace(/^\[|\]$/g, '');
  const { address, family } = await resolveChecked(host, rules, (m) => refuse(`token endpoint ${m}`));
  // Plain http only to an address the admin named: it is the admin's own network.
  if (url.protocol === 'http:' && (rules.allow.length === 0 || refusalOf(address, [], new Set()) === undefined)) {
    throw refuse(`token endpoint ${endpoint(tokenUrl)} is not https`);
  }
  return { url, address, family };
}

/** POSTs `body` to the checked address (the URL's name kept for TLS and Host), no redirects. */
function post(target: { url: URL; address: string; family: 4 | 6 }, body: string, signal: AbortSignal): Promise<{ status: number; text: string }> {
  const { url, address, family } = target;
  // Every lookup answers the checked address: the name is never resolved again.
  const lookup = ((_host: string, opts: { all?: boolean }, cb: (...a: unknown[]) => void) =>
    opts?.all ? cb(null, [{ address, family }]) : cb(null, address, family)) as unknown as LookupFunction;
  const options: RequestOptions = {
    method: 'POST',
    hostname: url.hostname.replace(/^\[|\]$/g, ''),
    port: url.port || (url.protocol === 'https:' ? 443 : 80),
    path: `${url.pathname}${url.search}`,
    headers: { 'content-type': 'application/x-www-form-urlencoded', accept: 'application/json', 'content-length': Buffer.byteLength(body) },
    lookup,
    signal,
  };
  return new Promise((resolve, reject) => {
    const req = (url.protocol === 'https:' ? httpsRequest : httpRequest)(options, (res: IncomingMessage) => {
      const chunks: Buffer[] = [];
      let size = 0;
      res.on('data', (c: Buffer) => {
        size += c.length;
        if (size > MAX_TOKEN_RESPONSE_BYTES) res.destroy(new Error('response too large'));
        else chunks.push(c);
      });
      res.on('end', () => resolve({ status: res.statusCode ?? 0, text: Buffer.concat(chunks).toString('utf8') }));
      res.on('error', reject);
    });
    req.on('error', reject);
    req.end(body);
  });
}

async function tokenRequest(ctx: RefreshContext, tokenUrl: string, form: Record<string, string>): Promise<{ accessToken: string; expiresInMs?: number; refreshToken?: string }> {
  const where = endpoint(tokenUrl);
  const target = await checkTokenEndpoint(ctx, tokenUrl);
  const signal = ctx.signal ? AbortSignal.any([ctx.signal, AbortSignal.timeout(TOKEN_TIMEOUT_MS)]) : AbortSignal.timeout(TOKEN_TIMEOUT_MS);
  let res: { status: number; text: string };
  try {
    res = await post(target, new URLSearchParams(form).toString(), signal);
  } catch (e) {
    throw new CredentialRefreshError(ctx.name, ctx.connector.name, `token endpoint ${where} unreachable (${(e as Error).name})`);
  }
  let body: unknown;
  try {
    body = JSON.parse(res.text);
  } catch {
    body = undefined;
  }
  const doc = typeof body === 'object' && body !== null ? (body as Record<string, unknown>) : {};
  if (res.status < 200 || res.status >= 300) {
    const code = typeof doc['error'] === 'string' && OAUTH_ERROR.test(doc['error']) ? ` (${doc['error']})` : '';
    throw new CredentialRefreshError(ctx.name, ctx.connector.name, `token endpoint ${where} answered ${res.status}${code}`);
  }
  const token = doc['access_token'];
  if (typeof token !== 'string' || token.length === 0 || Buffer.byteLength(token) > MAX_SECRET_BYTES) {
    throw new CredentialRefreshError(ctx.name, ctx.connector.name, `token endpoint ${where} answered without a usable access_token`);
  }
  const expiresIn = doc['expires_in'];
  const seconds = typeof expiresIn === 'number' ? expiresIn : typeof expiresIn === 'string' ? Number(expiresIn) : NaN;
  const refresh = doc['refresh_token'];
  return {
    accessToken: token,
    ...(Number.isFinite(seconds) && seconds > 0 ? { expiresInMs: Math.round(seconds * 1000) } : {}),
    ...(typeof refresh === 'string' && refresh.length > 0 && Buffer.byteLength(refresh) <= MAX_SECRET_BYTES ? { refreshToken: refresh } : {}),
  };
}

const clientCredentials: Refresher = async (ctx) => {
  const a = ctx.connector.auth;
  if (a.type !== AuthKind.OAuth2ClientCredentials) throw new CredentialRefreshError(ctx.name, ctx.connector.name, `auth ${a.type} is not oauth2_client_credentials`);
  const form: Record<string, string> = { grant_type: 'client_credentials', client_id: a.clientId, client_secret: await ctx.read(a.clientSecretKey) };
  if (a.scopes?.length) form['scope'] = a.scopes.join(' ');
  if (a.audience) form['audience'] = a.audience;
  const r = await tokenRequest(ctx, a.tokenUrl, form);
  return { value: r.accessToken, ...(r.expiresInMs !== undefined ? { expiresInMs: r.expiresInMs } : {}) };
};

const authCodeRefresh: Refresher = async (ctx) => {
  const a = ctx.connector.auth;
  if (a.type !== AuthKind.OAuth2AuthCode) throw new CredentialRefreshError(ctx.name, ctx.connector.name, `auth ${a.type} is not oauth2_auth_code`);
  const form: Record<string, string> = { grant_type: 'refresh_token', refresh_token: await ctx.read(a.refreshTokenKey), client_id: a.clientId };
  if (a.clientSecretKey) form['client_secret'] = await ctx.read(a.clientSecretKey);
  if (a.scopes?.length) form['scope'] = a.scopes.join(' ');
  const r = await tokenRequest(ctx, a.tokenUrl, form);
  return {
    value: r.accessToken,
    ...(r.expiresInMs !== undefined ? { expiresInMs: r.expiresInMs } : {}),
    // A server that rotates refresh tokens invalidates the old one: keep the new one.
    ...(r.refreshToken !== undefined ? { updates: { [a.refreshTokenKey]: r.refreshToken } } : {}),
  };
};

/** The built-in refreshers: OAuth 2.0 client credentials, and the refresh-token grant of the authorization-code flow. */
export const refreshers: Refreshers = Object.freeze({
  [AuthKind.OAuth2ClientCredentials]: clientCredentials,
  [AuthKind.OAuth2AuthCode]: authCodeRefresh,
});

/**
 * Credential refreshers: shared data-plane code that turns a connector's auth strategy into
 * a fresh short-lived credential. The secrets-lease service calls them before it issues a
 * lease for a `refreshable` secret that is inside its refresh window; anything else in the
 * data plane that holds a connector can call them the same way.
 *
 * A refresher holds no secret itself: the ones its strategy needs (a client secret, a
 * refresh token) are other secrets of the tenant, read through `ctx.read` by name. Errors
 * name the endpoint and the OAuth error code, never a token or a response body.
 */
import { AuthKind, CapstanError, ErrorCode, MAX_SECRET_BYTES, type Connector, type TenantId } from '@capstan/schemas';

export interface RefreshContext {
  readonly tenant: TenantId;
  /** The secret being refreshed. */
  readonly name: string;
  readonly connector: Connector;
  /** Another secret of the same tenant, by name (a client secret, a refresh token). */
  read(name: string): Promise<string>;
  readonly signal?: AbortSignal;
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

const TOKEN_TIMEOUT_MS = 10_000;
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
async function tokenRequest(ctx: RefreshContext, tokenUrl: string, form: Record<string, string>): Promise<{ accessToken: string; expiresInMs?: number; refreshToken?: string }> {
  const where = endpoint(tokenUrl);
  const signal = ctx.signal ? AbortSignal.any([ctx.signal, AbortSignal.timeout(TOKEN_TIMEOUT_MS)]) : AbortSignal.timeout(TOKEN_TIMEOUT_MS);
  let res: Response;
  try {
    res = await fetch(tokenUrl, {
      method: 'POST',
      headers: { 'content-type': 'application/x-www-form-urlencoded', accept: 'application/json' },
      body: new URLSearchParams(form).toString(),
      signal,
      redirect: 'error',
    });
  } catch (e) {
    throw new CredentialRefreshError(ctx.name, ctx.connector.name, `token endpoint ${where} unreachable (${(e as Error).name})`);
  }
  let body: unknown;
  try {
    body = await res.json();
  } catch {
    body = undefined;
  }
  const doc = typeof body === 'object' && body !== null ? (body as Record<string, unknown>) : {};
  if (!res.ok) {
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

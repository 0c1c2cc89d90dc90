/**
 * HTTP for Capstan's APIs, decided once: the status each typed error code is answered with,
 * and which `Host` headers a server answers at all.
 */
import { isIP } from 'node:net';
import { ErrorCode } from '@capstan/schemas';

/**
 * Codes of the HTTP APIs themselves, next to the platform's (`ErrorCode`) that they pass on:
 * who the caller is, what they may do, what the server has. The console's contract
 * (`ApiErrorCode` in its api-types.ts, which the browser compiles and so imports nothing)
 * repeats them; a unit test holds the two together.
 */
export const HttpErrorCode = {
  /** No session and no bearer token. */
  Unauthenticated: 'unauthenticated',
  /** A password or sign-in link that is wrong, unknown or used. */
  BadCredentials: 'bad_credentials',
  /** A bearer token that is malformed or matches no user's token. */
  BadToken: 'bad_token',
  /** A bearer token past its `expiresAt`. */
  TokenExpired: 'token_expired',
  Forbidden: 'forbidden',
  CsrfFailed: 'csrf_failed',
  /** A call that is not a read, made with a bearer token: tokens only read. */
  TokenReadOnly: 'token_read_only',
  NotFound: 'not_found',
  Conflict: 'conflict',
  TooManyAttempts: 'too_many_attempts',
  NotImplemented: 'not_implemented',
  Internal: 'internal',
} as const;

/** Every code a caller can act on, by the status that says so. */
const STATUS_OF: ReadonlyMap<string, number> = new Map([
  ...[HttpErrorCode.Unauthenticated, HttpErrorCode.BadCredentials, HttpErrorCode.BadToken, HttpErrorCode.TokenExpired].map((c) => [c, 401] as const),
  ...[HttpErrorCode.Forbidden, HttpErrorCode.CsrfFailed, HttpErrorCode.TokenReadOnly].map((c) => [c, 403] as const),
  [HttpErrorCode.NotFound, 404],
  [HttpErrorCode.Conflict, 409],
  [HttpErrorCode.TooManyAttempts, 429],
  [HttpErrorCode.Internal, 500],
  [HttpErrorCode.NotImplemented, 501],
  ...[
    ErrorCode.InvalidArgument,
    ErrorCode.InvalidTenantId,
    ErrorCode.InvalidRunId,
    ErrorCode.RunIdReserved,
    ErrorCode.InvalidName,
    ErrorCode.SchemaViolation,
    ErrorCode.DecodeFailed,
    ErrorCode.QueryRefused,
  ].map((c) => [c, 400] as const),
  [ErrorCode.PayloadTooLarge, 413],
  // Webhook deliveries (ingress): a signature or timestamp that proves nothing, a delivery id
  // reused with another body, a tenant over its delivery rate.
  ...[ErrorCode.WebhookSignatureInvalid, ErrorCode.WebhookTimestampInvalid].map((c) => [c, 401] as const),
  [ErrorCode.WebhookIdConflict, 409],
  [ErrorCode.RateLimited, 429],
  ...[ErrorCode.RunNotFound, ErrorCode.UnknownTenant, ErrorCode.UnknownWorkflow].map((c) => [c, 404] as const),
  ...[ErrorCode.Unavailable, ErrorCode.ProjectionOutOfSync, ErrorCode.DatasyncUnavailable, ErrorCode.SourceUnavailable].map((c) => [c, 503] as const),
]);

/**
 * The status an error code is answered with; `undefined` for platform codes that are not the
 * caller's to act on (answered as a bare 500, `internal`, by the server). Every `*_not_found`
 * is a 404.
 */
export function httpStatusOf(code: string): number | undefined {
  return STATUS_OF.get(code) ?? (code.endsWith('_not_found') ? 404 : undefined);
}

/**
 * Whether a request's `Host` header names this server. DNS rebinding points a name the
 * attacker owns at a loopback or private address, so the browser's requests carry that
 * name as their Host: only IP literals, `localhost` and the names a server was told it is
 * reached by (`allowed`, host names without port, lower case) are answered.
 */
export function hostAllowed(host: string | undefined, allowed: ReadonlySet<string> = new Set()): boolean {
  if (!host) return false;
  const name = hostnameOf(host);
  if (name === undefined) return false;
  return name === 'localhost' || isIP(name) !== 0 || allowed.has(name);
}

/** The host name of a `Host` header (`[::1]:80` → `::1`), lower case; undefined when malformed. */
function hostnameOf(host: string): string | undefined {
  const h = host.trim().toLowerCase();
  if (h.startsWith('[')) {
    const end = h.indexOf(']');
    return end > 1 ? h.slice(1, end) : undefined;
  }
  const colon = h.indexOf(':');
  const name = colon >= 0 ? h.slice(0, colon) : h;
  return /^[a-z0-9.-]{1,253}$/.test(name) ? name : undefined;
}

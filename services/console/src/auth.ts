/**
 * Sign-in, sign-out, the session guard, API tokens and CSRF checks.
 *
 * Every `/api` route needs a valid session except sign-in itself. Every call that is not a
 * GET (or HEAD) must come from the console's own origin (`Origin`) and, once signed in,
 * carry the session's CSRF token in `x-csrf-token`: a page elsewhere can make a browser
 * send the cookie, but can neither set that header nor read the token.
 *
 * A program sends `Authorization: Bearer <token>` instead (tokens.ts): a request with that
 * header is judged by it alone, never by a cookie, and the token is never read from a
 * cookie. It gets what the token's user would get in a session (tenants, roles) for reads
 * only: every other method is refused (403 `token_read_only`), which is also why it needs
 * no CSRF token (a browser never adds the header to a request another site makes).
 */
import type { FastifyInstance, FastifyReply, FastifyRequest } from 'fastify';
import { obj, str } from '@capstan/schemas';
import { ApiErrorCode, CSRF_HEADER, apiPaths, type SessionInfo } from './api-types.js';
import { indexTokens, type TokenIndex, type TokenVerdict } from './tokens.js';
import { bodyOf, forbidden, HttpError, queryOf, sessionOf, unauthenticated } from './http.js';
import { SESSION_COOKIE, sameToken, type LinkTokens, type Session, type Sessions } from './session.js';
import { verifyPassword, type ConsoleUser } from './users.js';

export interface AuthDeps {
  readonly users: () => ReadonlyMap<string, ConsoleUser>;
  readonly sessions: Sessions;
  readonly links: LinkTokens;
  readonly sessionTtlMs: number;
  /** The origin browsers use, when configured; otherwise the request's Host decides. */
  readonly publicUrl?: string;
}

const UNGUARDED: ReadonlySet<string> = new Set([apiPaths.signIn, apiPaths.linkSignIn]);
const SAFE_METHODS = new Set(['GET', 'HEAD']);
const COOKIE_PATH = '/api';

const signInBody = obj('sign-in', { userId: str({ min: 1, max: 128 }), password: str({ min: 1, max: 1024 }) });
const linkBody = obj('sign-in link', { token: str({ min: 1, max: 256 }) });
const emptyBody = obj('request body', {});

/** Password guesses: this many failures for one user id within the window lock it for the rest of it. */
const MAX_FAILURES = 10;
const FAILURE_WINDOW_MS = 15 * 60_000;

function isLoopback(hostname: string): boolean {
  const h = hostname.replace(/^\[|\]$/g, '');
  return h === 'localhost' || h === '::1' || /^127\.\d{1,3}\.\d{1,3}\.\d{1,3}$/.test(h);
}

export function registerAuth(app: FastifyInstance, d: AuthDeps): void {
  const failures = new Map<string, { count: number; since: number }>();
  // Rebuilt only when the users are: they are read once at start.
  let indexed: { users: ReadonlyMap<string, ConsoleUser>; index: TokenIndex } | undefined;
  const tokens = (): TokenIndex => {
    const users = d.users();
    if (indexed?.users !== users) indexed = { users, index: indexTokens(users.values()) };
    return indexed.index;
  };

  /** The request's API token as a per-request session, or why it is refused. */
  const tokenSession = (req: FastifyRequest, header: string): Session => {
    const m = /^Bearer (\S+)$/i.exec(header.trim());
    const v: TokenVerdict = m ? tokens().check(m[1] as string, Date.now()) : { ok: false, why: 'malformed' };
    if (!v.ok) {
      // Who and which token, when known; the presented value never.
      req.log.warn({ why: v.why, userId: v.user?.userId, tokenName: v.token?.name, path: req.url.split('?', 1)[0] }, 'API token refused');
      if (v.why === 'expired') throw new HttpError(ApiErrorCode.TokenExpired, `API token ${v.token?.name ?? ''} has expired; ask for a new one`);
      throw new HttpError(ApiErrorCode.BadToken, m ? 'unknown API token' : 'the Authorization header must be "Bearer <token>"');
    }
    const u = v.user;
    return {
      sid: `token:${u.userId}/${v.token.name}`,
      orgId: u.orgId,
      userId: u.userId,
      role: u.role,
      tenants: u.tenants,
      ...(u.access ? { access: u.access } : {}),
      exp: v.token.expiresAt,
      csrf: '',
      token: v.token.name,
    };
  };

  app.decorateRequest('consoleSession', null);

  const sameOrigin = (req: FastifyRequest): boolean => {
    const origin = req.headers.origin;
    if (typeof origin !== 'string') return false;
    if (d.publicUrl) return origin === d.publicUrl;
    const host = req.headers.host;
    return typeof host === 'string' && (origin === `http://${host}` || origin === `https://${host}`);
  };

  /** The session a request's cookie holds, when valid and still matching the user's record. */
  const sessionFrom = (req: FastifyRequest): Session | undefined => {
    const s = d.sessions.open(req.cookies[SESSION_COOKIE], Date.now());
    if (!s) return undefined;
    const u = d.users().get(s.userId);
    // A user removed, moved to another organisation, given another role or other tenants
    // signs in again: a session never outlives the record it was made from.
    if (!u || u.orgId !== s.orgId || u.role !== s.role || u.tenants.length !== s.tenants.length || u.tenants.some((t, i) => t !== s.tenants[i])) return undefined;
    if (JSON.stringify(u.access ?? {}) !== JSON.stringify(s.access ?? {})) return undefined;
    return s;
  };

  /** The session of an `/api` request (null where none is needed), or why it is refused. */
  const guard = (req: FastifyRequest): Session | null => {
    const path = req.url.split('?', 1)[0] as string;
    if (path !== '/api' && !path.startsWith('/api/')) return null;
    const mutating = !SAFE_METHODS.has(req.method);
    const authorization = req.headers.authorization;
    if (authorization !== undefined) {
      const s = tokenSession(req, authorization);
      if (mutating) throw new HttpError(ApiErrorCode.TokenReadOnly, `API tokens only read: ${req.method} needs a signed-in session`);
      return s;
    }
    if (mutating && !sameOrigin(req)) throw forbidden('cross-origin request refused: the Origin header must be this console');
    if (UNGUARDED.has(path)) return null;
    const s = sessionFrom(req);
    if (!s) throw unauthenticated(req.cookies[SESSION_COOKIE] ? 'the session has expired or is no longer valid; sign in again' : 'sign in first');
    if (mutating && !sameToken(headerOf(req, CSRF_HEADER), s.csrf)) throw new HttpError(ApiErrorCode.CsrfFailed, `missing or wrong ${CSRF_HEADER} header`);
    return s;
  };

  app.addHook('onRequest', (req, _reply, done) => {
    try {
      req.consoleSession = guard(req);
      done();
    } catch (e) {
      done(e as Error);
    }
  });

  const startSession = (req: FastifyRequest, reply: FastifyReply, u: ConsoleUser): SessionInfo => {
    const s = d.sessions.create({ orgId: u.orgId, userId: u.userId, role: u.role, tenants: u.tenants, ...(u.access ? { access: u.access } : {}) }, Date.now());
    reply.setCookie(SESSION_COOKIE, d.sessions.seal(s), {
      path: COOKIE_PATH,
      httpOnly: true,
      sameSite: 'strict',
      secure: d.publicUrl ? d.publicUrl.startsWith('https:') : !isLoopback(req.hostname),
      maxAge: Math.floor(d.sessionTtlMs / 1000),
    });
    req.log.info({ userId: u.userId, orgId: u.orgId, role: u.role }, 'signed in');
    return info(s);
  };

  app.post(apiPaths.signIn, async (req, reply) => {
    queryOf(req, []);
    const { userId, password } = signInBody.parse(bodyOf(req));
    const now = Date.now();
    const f = failures.get(userId);
    if (f && now - f.since < FAILURE_WINDOW_MS && f.count >= MAX_FAILURES) {
      throw new HttpError(ApiErrorCode.TooManyAttempts, `too many failed sign-ins for this user; try again in ${Math.ceil((f.since + FAILURE_WINDOW_MS - now) / 60_000)} min`);
    }
    const u = d.users().get(userId);
    // Checked even for an unknown user, against a stand-in hash: same time either way.
    const ok = await verifyPassword(password, u?.passwordHash);
    if (!ok || !u) {
      const cur = f && now - f.since < FAILURE_WINDOW_MS ? f : { count: 0, since: now };
      failures.set(userId, { count: cur.count + 1, since: cur.since });
      if (failures.size > 10_000) failures.delete(failures.keys().next().value as string);
      throw new HttpError(ApiErrorCode.BadCredentials, 'unknown user or wrong password');
    }
    failures.delete(userId);
    return startSession(req, reply, u);
  });

  app.post(apiPaths.linkSignIn, async (req, reply) => {
    queryOf(req, []);
    const { token } = linkBody.parse(bodyOf(req));
    const userId = d.links.redeem(token, Date.now());
    const u = userId === undefined ? undefined : d.users().get(userId);
    if (!u) throw new HttpError(ApiErrorCode.BadCredentials, 'this sign-in link is unknown, used or expired; ask for a new one');
    return startSession(req, reply, u);
  });

  app.post(apiPaths.signOut, async (req, reply) => {
    queryOf(req, []);
    emptyBody.parse(bodyOf(req));
    d.sessions.revoke(sessionOf(req));
    reply.clearCookie(SESSION_COOKIE, { path: COOKIE_PATH });
    return reply.code(204).send();
  });

  app.get(apiPaths.session, (req, reply) => {
    queryOf(req, []);
    return reply.send(info(sessionOf(req)));
  });
}

function info(s: Session): SessionInfo {
  return {
    userId: s.userId,
    orgId: s.orgId,
    role: s.role,
    tenants: s.tenants,
    csrfToken: s.csrf,
    expiresAt: new Date(s.exp).toISOString(),
    ...(s.token !== undefined ? { token: s.token } : {}),
  };
}

function headerOf(req: FastifyRequest, name: string): string | undefined {
  const v = req.headers[name];
  return typeof v === 'string' ? v : undefined;
}

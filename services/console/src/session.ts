/**
 * Sessions and one-time sign-in links.
 *
 * A session is a cookie the server signs and nobody else can forge: `v1.<payload>.<mac>`,
 * the payload base64url JSON `{ sid, orgId, userId, role, tenants, exp, csrf }`, the mac
 * HMAC-SHA256 over it with the console secret. Nothing is stored server-side except the ids
 * of sessions signed out before they expired (kept until they would have expired).
 *
 * Sign-in links carry a random token whose SHA-256 is kept in memory with its user and
 * expiry; redeeming it removes it, so a link works once.
 */
import { createHash, createHmac, randomBytes, timingSafeEqual } from 'node:crypto';
import { ROLES, type Role } from './api-types.js';
import type { TenantAccessGrant } from './users.js';

export interface Session {
  /** Random id: what sign-out revokes. */
  readonly sid: string;
  readonly orgId: string;
  readonly userId: string;
  readonly role: Role;
  readonly tenants: readonly string[];
  /** Per-tenant role and approver groups, as the user's record had them at sign-in. */
  readonly access?: Readonly<Record<string, TenantAccessGrant>>;
  /** Expiry, epoch milliseconds. */
  readonly exp: number;
  /** The anti-CSRF token mutating calls must echo in `x-csrf-token` (empty for a token: it never mutates). */
  readonly csrf: string;
  /**
   * Set when the request came with an API token rather than a cookie: the token's name. Such
   * a "session" is made per request from the user's record and never sealed into a cookie.
   */
  readonly token?: string;
}

export const SESSION_COOKIE = 'capstan_session';
const VERSION = 'v1';
const MAC_CONTEXT = 'capstan-console-session';
const TOKEN = /^[A-Za-z0-9_-]{20,200}$/;
const MAX_COOKIE = 3800;

export interface Sessions {
  /** A new session for the user, expiring `ttlMs` from `now`. */
  create(user: Omit<Session, 'sid' | 'exp' | 'csrf'>, now: number): Session;
  seal(s: Session): string;
  /** The session in a cookie value, or undefined when it is forged, malformed, expired or revoked. */
  open(cookie: string | undefined, now: number): Session | undefined;
  revoke(s: Session): void;
}

export function createSessions(secret: Buffer, ttlMs: number): Sessions {
  const revoked = new Map<string, number>();
  const mac = (payload: string) => createHmac('sha256', secret).update(`${MAC_CONTEXT}.${VERSION}.${payload}`).digest();

  const prune = (now: number) => {
    for (const [sid, exp] of revoked) if (exp <= now) revoked.delete(sid);
  };

  return {
    create(user, now) {
      return { ...user, tenants: [...user.tenants], sid: randomToken(16), exp: now + ttlMs, csrf: randomToken(24) };
    },
    seal(s) {
      const payload = Buffer.from(JSON.stringify(s), 'utf8').toString('base64url');
      return `${VERSION}.${payload}.${mac(payload).toString('base64url')}`;
    },
    open(cookie, now) {
      if (!cookie || cookie.length > MAX_COOKIE) return undefined;
      const [v, payload, sig, ...rest] = cookie.split('.');
      if (v !== VERSION || !payload || !sig || rest.length > 0) return undefined;
      const given = Buffer.from(sig, 'base64url');
      const want = mac(payload);
      if (given.length !== want.length || !timingSafeEqual(given, want)) return undefined;
      const s = parseSession(Buffer.from(payload, 'base64url').toString('utf8'));
      if (!s || s.exp <= now || revoked.has(s.sid)) return undefined;
      return s;
    },
    revoke(s) {
      prune(Date.now());
      revoked.set(s.sid, s.exp);
    },
  };
}

/** The signed payload, checked field by field: a valid mac only says the server wrote it. */
function parseSession(json: string): Session | undefined {
  let o: unknown;
  try {
    o = JSON.parse(json);
  } catch {
    return undefined;
  }
  if (typeof o !== 'object' || o === null) return undefined;
  const s = o as Record<string, unknown>;
  const str = (k: string) => (typeof s[k] === 'string' && (s[k] as string).length > 0 ? (s[k] as string) : undefined);
  const [sid, orgId, userId, csrf] = [str('sid'), str('orgId'), str('userId'), str('csrf')];
  const role = (ROLES as readonly unknown[]).includes(s['role']) ? (s['role'] as Role) : undefined;
  const tenants = Array.isArray(s['tenants']) && s['tenants'].every((t) => typeof t === 'string') ? (s['tenants'] as string[]) : undefined;
  const exp = typeof s['exp'] === 'number' && Number.isSafeInteger(s['exp']) ? s['exp'] : undefined;
  if (!sid || !orgId || !userId || !csrf || !role || !tenants || exp === undefined) return undefined;
  // The payload is authenticated (the mac): its access map is what this console wrote.
  const access = typeof s['access'] === 'object' && s['access'] !== null && !Array.isArray(s['access']) ? (s['access'] as Record<string, TenantAccessGrant>) : undefined;
  return { sid, orgId, userId, role, tenants, ...(access ? { access } : {}), exp, csrf };
}

/** Whether `given` equals `want`, in time that does not depend on where they differ. */
export function sameToken(given: string | undefined, want: string): boolean {
  if (given === undefined) return false;
  const a = createHash('sha256').update(given).digest();
  const b = createHash('sha256').update(want).digest();
  return timingSafeEqual(a, b) && given.length === want.length;
}

export function randomToken(bytes = 32): string {
  return randomBytes(bytes).toString('base64url');
}

// ---------------------------------------------------------------------------------------
// One-time sign-in links.

export interface LinkTokens {
  /** A new token for `userId`, valid once, until `now + ttlMs`. */
  issue(userId: string, now: number): string;
  /** The user the token was issued for, consuming it; undefined when unknown, used or expired. */
  redeem(token: string, now: number): string | undefined;
}

const MAX_PENDING_LINKS = 1000;

export function createLinkTokens(ttlMs: number): LinkTokens {
  // Keyed by the token's hash: a heap dump shows no token that still works.
  const pending = new Map<string, { userId: string; exp: number }>();
  const key = (token: string) => createHash('sha256').update(token).digest('base64url');
  return {
    issue(userId, now) {
      for (const [k, v] of pending) if (v.exp <= now) pending.delete(k);
      // Oldest first out: links are for people, a thousand unredeemed ones is a leak.
      while (pending.size >= MAX_PENDING_LINKS) pending.delete(pending.keys().next().value as string);
      const token = randomToken(32);
      pending.set(key(token), { userId, exp: now + ttlMs });
      return token;
    },
    redeem(token, now) {
      if (!TOKEN.test(token)) return undefined;
      const k = key(token);
      const entry = pending.get(k);
      if (!entry) return undefined;
      pending.delete(k);
      return entry.exp > now ? entry.userId : undefined;
    },
  };
}

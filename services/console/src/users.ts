/**
 * Console users: who may sign in, in which organisation, with which role, over which
 * tenants. They come from a JSON file (CONSOLE_USERS), an array of
 *
 *   { "userId": "alice", "orgId": "acme", "role": "operator", "tenants": ["acme-prod"],
 *     "passwordHash": "scrypt$16384$8$1$<salt base64>$<key base64>" }
 *
 * `passwordHash` is optional: a user without one signs in only by one-time link.
 *
 * `role` applies in every tenant listed, unless `access` says otherwise for a tenant: its role
 * there (someone may approve in staging and only watch production) and its approver groups,
 * which the console states when it signs that user's approvals (see docs/console.md):
 *
 *   "access": { "acme-prod": { "role": "viewer" }, "acme-dev": { "role": "operator", "groups": ["finance"] } }
 * Make a hash with `capstan-console hash-password` (reads the password from stdin).
 *
 * `tokens` are the user's API tokens (see tokens.ts): programs read with them what the user
 * may read, and nothing more.
 *
 *   "tokens": [{ "name": "ci", "sha256": "<64 hex>", "expiresAt": "2027-01-01T00:00:00Z" }]
 */
import { randomBytes, scrypt as scryptCb, timingSafeEqual, type ScryptOptions } from 'node:crypto';
import { ConfigError, isTenantId } from '@capstan/schemas';
import { ROLES, type Role } from './api-types.js';
import { TOKEN_HASH_PATTERN, type ApiToken } from './tokens.js';

/** A user's standing in one tenant: its role there (default the user's `role`), its approver groups. */
export interface TenantAccessGrant {
  readonly role?: Role;
  readonly groups?: readonly string[];
}

export interface ConsoleUser {
  readonly userId: string;
  readonly orgId: string;
  readonly role: Role;
  readonly tenants: readonly string[];
  /** Per tenant (each one of `tenants`): another role, approver groups. */
  readonly access?: Readonly<Record<string, TenantAccessGrant>>;
  readonly passwordHash?: string;
  /** API tokens, by hash (never the token). */
  readonly tokens?: readonly ApiToken[];
}

/** The user's role in tenant `t`. */
export function roleIn(u: { readonly role: Role; readonly access?: Readonly<Record<string, TenantAccessGrant>> }, t: string): Role {
  return (Object.hasOwn(u.access ?? {}, t) ? u.access?.[t]?.role : undefined) ?? u.role;
}

/** The user's approver groups in tenant `t`. */
export function groupsIn(u: { readonly access?: Readonly<Record<string, TenantAccessGrant>> }, t: string): readonly string[] {
  return (Object.hasOwn(u.access ?? {}, t) ? u.access?.[t]?.groups : undefined) ?? [];
}

const GROUP = /^[a-z0-9][a-z0-9_-]{0,63}$/;

function parseAccess(v: unknown, at: string, tenants: readonly string[] | undefined, problems: string[]): Record<string, TenantAccessGrant> | undefined {
  if (v === undefined) return undefined;
  if (typeof v !== 'object' || v === null || Array.isArray(v)) {
    problems.push(`${at}.access must be an object of tenant → { role?, groups? }`);
    return undefined;
  }
  const out: Record<string, TenantAccessGrant> = {};
  for (const [t, g] of Object.entries(v as Record<string, unknown>)) {
    const where = `${at}.access[${JSON.stringify(t.slice(0, 64))}]`;
    if (tenants && !tenants.includes(t)) problems.push(`${where} names a tenant not in tenants`);
    if (typeof g !== 'object' || g === null || Array.isArray(g)) {
      problems.push(`${where} must be an object { role?, groups? }`);
      continue;
    }
    const o = g as Record<string, unknown>;
    for (const k of Object.keys(o)) if (k !== 'role' && k !== 'groups') problems.push(`${where} has an unknown field ${JSON.stringify(k.slice(0, 32))}`);
    const role = o['role'] === undefined ? undefined : (ROLES as readonly unknown[]).includes(o['role']) ? (o['role'] as Role) : null;
    if (role === null) problems.push(`${where}.role must be one of ${ROLES.join(', ')}`);
    const groups = o['groups'];
    const okGroups = groups === undefined || (Array.isArray(groups) && groups.length <= 32 && groups.every((x) => typeof x === 'string' && GROUP.test(x)));
    if (!okGroups) problems.push(`${where}.groups must be at most 32 group names (lowercase letters, digits, _ -)`);
    out[t] = Object.freeze({ ...(role ? { role } : {}), ...(okGroups && Array.isArray(groups) ? { groups: Object.freeze([...new Set(groups as string[])]) } : {}) });
  }
  return Object.freeze(out);
}

const TOKEN_NAME = /^[a-z0-9][a-z0-9._-]{0,63}$/;
const MAX_TOKENS = 32;

/** A user's `tokens`; `seen` holds the hashes of every user so far (a hash names one user's token). */
function parseTokens(v: unknown, at: string, seen: Set<string>, problems: string[]): ApiToken[] | undefined {
  if (v === undefined) return undefined;
  if (!Array.isArray(v) || v.length > MAX_TOKENS) {
    problems.push(`${at}.tokens must be an array of at most ${MAX_TOKENS} { name, sha256, expiresAt }`);
    return undefined;
  }
  const out: ApiToken[] = [];
  const names = new Set<string>();
  v.forEach((t: unknown, i) => {
    const where = `${at}.tokens[${i}]`;
    if (typeof t !== 'object' || t === null || Array.isArray(t)) {
      problems.push(`${where} must be an object { name, sha256, expiresAt }`);
      return;
    }
    const o = t as Record<string, unknown>;
    for (const k of Object.keys(o)) if (!['name', 'sha256', 'expiresAt'].includes(k)) problems.push(`${where} has an unknown field ${JSON.stringify(k.slice(0, 32))}`);
    const name = typeof o['name'] === 'string' && TOKEN_NAME.test(o['name']) ? o['name'] : undefined;
    if (!name) problems.push(`${where}.name must be 1 to 64 lowercase letters, digits or . _ -`);
    else if (names.has(name)) problems.push(`${where}.name ${JSON.stringify(name)} appears more than once for this user`);
    else names.add(name);
    // Only the shape is reported: the hash stands for a secret.
    const sha256 = typeof o['sha256'] === 'string' && TOKEN_HASH_PATTERN.test(o['sha256']) ? o['sha256'] : undefined;
    if (!sha256) problems.push(`${where}.sha256 must be the token's SHA-256 in lowercase hex (capstan-console new-token prints it)`);
    else if (seen.has(sha256)) problems.push(`${where}.sha256 is the hash of a token listed before: a token belongs to one user, once`);
    else seen.add(sha256);
    const raw = o['expiresAt'];
    const expiresAt = typeof raw === 'string' && /^\d{4}-\d{2}-\d{2}T[\d:.]+(?:Z|[+-]\d{2}:\d{2})$/.test(raw) ? Date.parse(raw) : NaN;
    if (!Number.isFinite(expiresAt)) problems.push(`${where}.expiresAt must be an ISO 8601 time with a zone (every token expires)`);
    if (name && sha256 && Number.isFinite(expiresAt)) out.push(Object.freeze({ name, sha256, expiresAt }));
  });
  return out;
}

const ID = /^[A-Za-z0-9][A-Za-z0-9._@-]{0,127}$/;
const MAX_USERS = 10_000;

/** Parses and checks a users file's text; lists every problem at once. @throws ConfigError */
export function parseUsers(text: string, where = 'CONSOLE_USERS'): ConsoleUser[] {
  let raw: unknown;
  try {
    raw = JSON.parse(text);
  } catch {
    throw new ConfigError([`${where} is not valid JSON`]);
  }
  if (!Array.isArray(raw)) throw new ConfigError([`${where} must hold a JSON array of users`]);
  if (raw.length > MAX_USERS) throw new ConfigError([`${where} holds ${raw.length} users; at most ${MAX_USERS}`]);
  const problems: string[] = [];
  const seen = new Set<string>();
  const tokenHashes = new Set<string>();
  const users: ConsoleUser[] = [];
  raw.forEach((u: unknown, i) => {
    const at = `${where}[${i}]`;
    if (typeof u !== 'object' || u === null || Array.isArray(u)) {
      problems.push(`${at} must be an object`);
      return;
    }
    const o = u as Record<string, unknown>;
    const known = ['userId', 'orgId', 'role', 'tenants', 'access', 'passwordHash', 'tokens'];
    for (const k of Object.keys(o)) if (!known.includes(k)) problems.push(`${at} has an unknown field ${JSON.stringify(k.slice(0, 32))}`);
    const userId = typeof o['userId'] === 'string' && ID.test(o['userId']) ? o['userId'] : undefined;
    if (!userId) problems.push(`${at}.userId must be 1 to 128 letters, digits or . _ @ -`);
    else if (seen.has(userId)) problems.push(`${at}.userId ${JSON.stringify(userId)} appears more than once`);
    else seen.add(userId);
    const orgId = typeof o['orgId'] === 'string' && ID.test(o['orgId']) ? o['orgId'] : undefined;
    if (!orgId) problems.push(`${at}.orgId must be 1 to 128 letters, digits or . _ @ -`);
    const role = (ROLES as readonly unknown[]).includes(o['role']) ? (o['role'] as Role) : undefined;
    if (!role) problems.push(`${at}.role must be one of ${ROLES.join(', ')}`);
    const tenants = Array.isArray(o['tenants']) && o['tenants'].length > 0 && o['tenants'].every(isTenantId) ? (o['tenants'] as string[]) : undefined;
    if (!tenants) problems.push(`${at}.tenants must be a non-empty array of tenant ids`);
    const hash = o['passwordHash'];
    // Only the shape is reported: the hash is secret material.
    if (hash !== undefined && (typeof hash !== 'string' || !parseHash(hash))) problems.push(`${at}.passwordHash is not a scrypt hash made by hash-password`);
    const access = parseAccess(o['access'], at, tenants, problems);
    const tokens = parseTokens(o['tokens'], at, tokenHashes, problems);
    if (userId && orgId && role && tenants) {
      users.push(
        Object.freeze({
          userId,
          orgId,
          role,
          tenants: Object.freeze([...new Set(tenants)]),
          ...(access ? { access } : {}),
          ...(typeof hash === 'string' ? { passwordHash: hash } : {}),
          ...(tokens && tokens.length > 0 ? { tokens: Object.freeze(tokens) } : {}),
        }),
      );
    }
  });
  if (problems.length > 0) throw new ConfigError(problems);
  return users;
}

// ---------------------------------------------------------------------------------------
// Passwords: scrypt (RFC 7914) with a random salt, compared in constant time.

interface ScryptParams {
  readonly N: number;
  readonly r: number;
  readonly p: number;
  readonly salt: Buffer;
  readonly key: Buffer;
}

const HASH = /^scrypt\$(\d{1,7})\$(\d{1,2})\$(\d{1,2})\$([A-Za-z0-9+/]{16,88}={0,2})\$([A-Za-z0-9+/]{43,88}={0,2})$/;
const DEFAULT = { N: 16_384, r: 8, p: 1 } as const;
const KEY_BYTES = 32;

function parseHash(s: string): ScryptParams | undefined {
  const m = HASH.exec(s);
  if (!m) return undefined;
  const [N, r, p] = [Number(m[1]), Number(m[2]), Number(m[3])];
  // A power of two, and not so large that checking one password stalls the server.
  if (N < 1024 || N > 1_048_576 || (N & (N - 1)) !== 0 || r < 1 || p < 1) return undefined;
  return { N, r, p, salt: Buffer.from(m[4] as string, 'base64'), key: Buffer.from(m[5] as string, 'base64') };
}

function scrypt(password: string, salt: Buffer, keylen: number, o: { readonly N: number; readonly r: number; readonly p: number }): Promise<Buffer> {
  // scrypt needs 128 * N * r bytes; Node's default ceiling (32 MiB) would refuse larger N.
  const options: ScryptOptions = { N: o.N, r: o.r, p: o.p, maxmem: 256 * o.N * o.r + 1024 * 1024 };
  return new Promise((resolve, reject) => {
    scryptCb(password.normalize('NFC'), salt, keylen, options, (err, key) => (err ? reject(err) : resolve(key)));
  });
}

/** A new `scrypt$N$r$p$salt$key` hash of `password`. */
export async function hashPassword(password: string): Promise<string> {
  const salt = randomBytes(16);
  const key = await scrypt(password, salt, KEY_BYTES, DEFAULT);
  return `scrypt$${DEFAULT.N}$${DEFAULT.r}$${DEFAULT.p}$${salt.toString('base64')}$${key.toString('base64')}`;
}

// Checked against when the user is unknown or has no password, so a wrong user id costs
// what a wrong password costs and timing does not tell which user ids exist.
const DUMMY: ScryptParams = { ...DEFAULT, salt: Buffer.alloc(16, 7), key: Buffer.alloc(KEY_BYTES, 7) };

/** Whether `password` matches `hash`; an absent or malformed hash never matches, in the same time. */
export async function verifyPassword(password: string, hash: string | undefined): Promise<boolean> {
  const parsed = hash ? parseHash(hash) : undefined;
  const h = parsed ?? DUMMY;
  const key = await scrypt(password, h.salt, h.key.length, { N: h.N, r: h.r, p: h.p });
  return timingSafeEqual(key, h.key) && parsed !== undefined;
}

/**
 * API tokens: how programs (the `capstan` CLI, scripts) read through the console.
 *
 * A token is `cst_` and 43 base64url characters (32 random bytes): the prefix lets secret
 * scanners find one pasted where it should not be. The users file keeps only its SHA-256
 * (hex), beside its name and expiry, as it keeps only password hashes:
 *
 *   "tokens": [{ "name": "ci", "sha256": "<64 hex>", "expiresAt": "2027-01-01T00:00:00Z" }]
 *
 * A plain hash rather than scrypt: the token is 256 random bits, so there is nothing to
 * guess that a slow hash would protect, and a hash lets a request find its token in one
 * lookup. The lookup is keyed by the hash of what was presented, so its timing tells nothing
 * about any stored token. `capstan-console new-token` makes one.
 */
import { createHash, randomBytes } from 'node:crypto';
import type { ConsoleUser } from './users.js';

/** An API token as the users file holds it: never the token itself. */
export interface ApiToken {
  /** Unique per user; what logs and `SessionInfo.token` name it by. */
  readonly name: string;
  /** Hex SHA-256 of the token. */
  readonly sha256: string;
  /** Epoch milliseconds; every token expires. */
  readonly expiresAt: number;
}

const PREFIX = 'cst_';
export const API_TOKEN_PATTERN = /^cst_[A-Za-z0-9_-]{43}$/;
export const TOKEN_HASH_PATTERN = /^[0-9a-f]{64}$/;

export function tokenHash(token: string): string {
  return createHash('sha256').update(token, 'utf8').digest('hex');
}

/** A new token and the hash the users file keeps. */
export function newApiToken(): { token: string; sha256: string } {
  const token = `${PREFIX}${randomBytes(32).toString('base64url')}`;
  return { token, sha256: tokenHash(token) };
}

export type TokenVerdict =
  | { readonly ok: true; readonly user: ConsoleUser; readonly token: ApiToken }
  | { readonly ok: false; readonly why: 'malformed' | 'unknown' | 'expired'; readonly user?: ConsoleUser; readonly token?: ApiToken };

export interface TokenIndex {
  /** Whose token `presented` is, if it is one, and whether it is still good at `now`. */
  check(presented: string, now: number): TokenVerdict;
}

/** Every user's tokens by hash. parseUsers refuses a hash held twice, so each names one user. */
export function indexTokens(users: Iterable<ConsoleUser>): TokenIndex {
  const byHash = new Map<string, { user: ConsoleUser; token: ApiToken }>();
  for (const user of users) for (const token of user.tokens ?? []) byHash.set(token.sha256, { user, token });
  return {
    check(presented, now) {
      if (!API_TOKEN_PATTERN.test(presented)) return { ok: false, why: 'malformed' };
      const hit = byHash.get(tokenHash(presented));
      if (!hit) return { ok: false, why: 'unknown' };
      if (hit.token.expiresAt <= now) return { ok: false, why: 'expired', ...hit };
      return { ok: true, ...hit };
    },
  };
}

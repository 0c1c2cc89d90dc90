/**
 * The console's pure pieces: its config, the users file, password hashes, signed sessions,
 * one-time sign-in links, CSV fields.
 */
import { describe, expect, it } from 'vitest';
import {
  API_TOKEN_PATTERN,
  createLinkTokens,
  createSessions,
  csvField,
  hashPassword,
  indexTokens,
  loadConfig,
  newApiToken,
  parseUsers,
  roleAllows,
  tokenHash,
  verifyPassword,
  type Session,
} from '@capstan/console';
import { CapstanError, ErrorCode } from '@capstan/schemas';

const SECRET = 'x'.repeat(40);
const BASE_ENV = {
  CONSOLE_SECRET: SECRET,
  CONSOLE_USERS: '/etc/capstan/users.json',
  DATABASE_URL: 'postgres://capstan@127.0.0.1:5432/capstan',
  NATS_URL: 'nats://127.0.0.1:4222',
  NATS_CREDS: 'svc.creds',
};

function problemsOf(f: () => unknown): string[] {
  try {
    f();
  } catch (e) {
    if (CapstanError.is(e) && e.code === ErrorCode.InvalidConfig) return [...(e as unknown as { problems: string[] }).problems];
    throw e;
  }
  return [];
}

describe('console config', () => {
  it('console config - defaults: loopback, port 4335, 12 h sessions, 15 min links', () => {
    const c = loadConfig(BASE_ENV);
    expect(c).toMatchObject({ host: '127.0.0.1', port: 4335, sessionTtlMs: 12 * 3_600_000, linkTtlMs: 15 * 60_000, dev: false, usersFile: '/etc/capstan/users.json' });
    expect(c.secret?.toString()).toBe(SECRET);
    expect(Object.isFrozen(c)).toBe(true);
  });

  it('console config - every problem at once, and the secret never in a message', () => {
    const problems = problemsOf(() =>
      loadConfig({
        CONSOLE_SECRET: 'short-secret-value',
        CONSOLE_PORT: '70000',
        CONSOLE_PUBLIC_URL: 'ftp://x/y',
        DATABASE_URL: 'mysql://u:hunter2@h/db',
        CONSOLE_SESSION_HOURS: '0',
      }),
    );
    expect(problems).toHaveLength(8);
    expect(problems.join('\n')).toMatch(/NATS_CREDS is required/);
    expect(problems.join('\n')).toMatch(/CONSOLE_SECRET must be at least 32 bytes; it has 18/);
    expect(problems.join('\n')).toMatch(/CONSOLE_USERS is required/);
    expect(problems.join('\n')).toMatch(/CONSOLE_PORT must be an integer/);
    expect(problems.join('\n')).toMatch(/CONSOLE_PUBLIC_URL must be an http\(s\) origin/);
    expect(problems.join('\n')).toMatch(/DATABASE_URL is not a postgres/);
    expect(problems.join('\n')).toMatch(/NATS_URL is required/);
    expect(problems.join('\n')).toMatch(/CONSOLE_SESSION_HOURS/);
    expect(problems.join('\n')).not.toContain('short-secret-value');
    expect(problems.join('\n')).not.toContain('hunter2');
  });

  it('console config - the secret and users file are required outside dev mode only', () => {
    expect(problemsOf(() => loadConfig({ DATABASE_URL: BASE_ENV.DATABASE_URL, NATS_URL: BASE_ENV.NATS_URL, NATS_CREDS: 'console.creds' }))).toEqual([
      expect.stringMatching(/^CONSOLE_SECRET is required/),
      expect.stringMatching(/^CONSOLE_USERS is required/),
    ]);
    const dev = loadConfig({}, { dev: true });
    expect(dev.dev).toBe(true);
    expect(dev.secret).toBeUndefined();
    expect(dev.databaseUrl).toBeUndefined();
  });

  it('console config - a public URL is kept as its origin', () => {
    expect(loadConfig({ ...BASE_ENV, CONSOLE_PUBLIC_URL: 'https://console.example.com/' }).publicUrl).toBe('https://console.example.com');
  });
});

describe('console users', () => {
  const ok = { userId: 'alice', orgId: 'acme', role: 'operator', tenants: ['acme-prod'] };

  it('console users - a valid file parses; duplicates removed from tenants', () => {
    expect(parseUsers(JSON.stringify([{ ...ok, tenants: ['acme-prod', 'acme-prod', 'acme-dev'] }]))).toEqual([{ ...ok, tenants: ['acme-prod', 'acme-dev'] }]);
  });

  it('console users - every problem of every user at once', () => {
    const problems = problemsOf(() =>
      parseUsers(
        JSON.stringify([{ ...ok, role: 'root' }, { ...ok, tenants: ['Not A Tenant'] }, { ...ok, userId: '' }, { ...ok, extra: 1 }, { ...ok, passwordHash: 'md5$abc' }, 'nope']),
      ),
    );
    expect(problems).toEqual([
      'CONSOLE_USERS[0].role must be one of viewer, operator, admin',
      'CONSOLE_USERS[1].userId "alice" appears more than once',
      'CONSOLE_USERS[1].tenants must be a non-empty array of tenant ids',
      'CONSOLE_USERS[2].userId must be 1 to 128 letters, digits or . _ @ -',
      'CONSOLE_USERS[3] has an unknown field "extra"',
      'CONSOLE_USERS[3].userId "alice" appears more than once',
      'CONSOLE_USERS[4].userId "alice" appears more than once',
      'CONSOLE_USERS[4].passwordHash is not a scrypt hash made by hash-password',
      'CONSOLE_USERS[5] must be an object',
    ]);
    expect(problemsOf(() => parseUsers('{'))).toEqual(['CONSOLE_USERS is not valid JSON']);
    expect(problemsOf(() => parseUsers('{}'))).toEqual(['CONSOLE_USERS must hold a JSON array of users']);
  });

  it('console users - scrypt hashes: the right password matches, a wrong one, a missing or malformed hash do not', async () => {
    const hash = await hashPassword('correct horse battery staple');
    expect(hash).toMatch(/^scrypt\$16384\$8\$1\$[A-Za-z0-9+/=]+\$[A-Za-z0-9+/=]+$/);
    expect(await hashPassword('correct horse battery staple')).not.toBe(hash);
    expect(await verifyPassword('correct horse battery staple', hash)).toBe(true);
    expect(await verifyPassword('correct horse battery stapler', hash)).toBe(false);
    expect(await verifyPassword('anything', undefined)).toBe(false);
    expect(await verifyPassword('anything', 'scrypt$3$8$1$AAAAAAAAAAAAAAAAAAAAAA==$AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=')).toBe(false);
    expect(parseUsers(JSON.stringify([{ ...ok, passwordHash: hash }]))[0]?.passwordHash).toBe(hash);
  });

  it('console users - roles: viewer reads, operator acts on runs, admin also on workers', () => {
    expect(roleAllows('viewer', 'cancel')).toBe(false);
    expect(roleAllows('operator', 'cancel')).toBe(true);
    expect(roleAllows('operator', 'approve')).toBe(true);
    expect(roleAllows('operator', 'revokeWorker')).toBe(false);
    expect(roleAllows('admin', 'revokeWorker')).toBe(true);
    expect(roleAllows('admin', 'retry')).toBe(true);
  });
});

describe('console api tokens', () => {
  const ok = { userId: 'alice', orgId: 'acme', role: 'viewer', tenants: ['acme-prod'] };
  const later = '2030-01-01T00:00:00Z';

  it('console tokens - a token is cst_ and 256 random bits; the file keeps its SHA-256 only', () => {
    const a = newApiToken();
    const b = newApiToken();
    expect(a.token).toMatch(API_TOKEN_PATTERN);
    expect(a.token).not.toBe(b.token);
    expect(a.sha256).toBe(tokenHash(a.token));
    expect(a.sha256).toMatch(/^[0-9a-f]{64}$/);
    const [u] = parseUsers(JSON.stringify([{ ...ok, tokens: [{ name: 'ci', sha256: a.sha256, expiresAt: later }] }]));
    expect(u?.tokens).toEqual([{ name: 'ci', sha256: a.sha256, expiresAt: Date.parse(later) }]);
    expect(JSON.stringify(u)).not.toContain(a.token);
  });

  it('console tokens - every problem at once: names, hashes (one user, once), expiry always, no unknown fields; never a hash echoed', () => {
    const h1 = newApiToken().sha256;
    const h2 = newApiToken().sha256;
    const problems = problemsOf(() =>
      parseUsers(
        JSON.stringify([
          {
            ...ok,
            tokens: [
              { name: 'ci', sha256: h1, expiresAt: later },
              { name: 'ci', sha256: h2, expiresAt: later },
            ],
          },
          { ...ok, userId: 'bob', tokens: [{ name: 'Bad Name', sha256: h1, expiresAt: later }] },
          {
            ...ok,
            userId: 'carol',
            tokens: [
              { name: 'x', sha256: 'ABC', expiresAt: 'tomorrow' },
              { name: 'y', sha256: newApiToken().sha256 },
              { name: 'z', sha256: newApiToken().sha256, expiresAt: later, scope: 'all' },
            ],
          },
          { ...ok, userId: 'dave', tokens: 'cst_x' },
        ]),
      ),
    );
    expect(problems).toEqual([
      'CONSOLE_USERS[0].tokens[1].name "ci" appears more than once for this user',
      'CONSOLE_USERS[1].tokens[0].name must be 1 to 64 lowercase letters, digits or . _ -',
      'CONSOLE_USERS[1].tokens[0].sha256 is the hash of a token listed before: a token belongs to one user, once',
      "CONSOLE_USERS[2].tokens[0].sha256 must be the token's SHA-256 in lowercase hex (capstan-console new-token prints it)",
      'CONSOLE_USERS[2].tokens[0].expiresAt must be an ISO 8601 time with a zone (every token expires)',
      'CONSOLE_USERS[2].tokens[1].expiresAt must be an ISO 8601 time with a zone (every token expires)',
      'CONSOLE_USERS[2].tokens[2] has an unknown field "scope"',
      'CONSOLE_USERS[3].tokens must be an array of at most 32 { name, sha256, expiresAt }',
    ]);
    expect(problems.join('\n')).not.toContain(h1);
  });

  it('console tokens - a presented token finds its user until it expires; anything else is malformed or unknown', () => {
    const now = Date.parse('2029-06-01T00:00:00Z');
    const live = newApiToken();
    const old = newApiToken();
    const [alice, bob] = parseUsers(
      JSON.stringify([
        { ...ok, tokens: [{ name: 'ci', sha256: live.sha256, expiresAt: later }] },
        { ...ok, userId: 'bob', tokens: [{ name: 'old', sha256: old.sha256, expiresAt: '2029-05-31T23:59:59Z' }] },
      ]),
    );
    const index = indexTokens([alice, bob].filter((u) => u !== undefined));
    expect(index.check(live.token, now)).toMatchObject({ ok: true, user: { userId: 'alice' }, token: { name: 'ci' } });
    expect(index.check(live.token, Date.parse(later))).toMatchObject({ ok: false, why: 'expired', user: { userId: 'alice' } });
    expect(index.check(old.token, now)).toMatchObject({ ok: false, why: 'expired', user: { userId: 'bob' } });
    expect(index.check(newApiToken().token, now)).toEqual({ ok: false, why: 'unknown' });
    // The hash itself is not a token: knowing the file does not let anyone in.
    for (const t of ['', 'cst_', live.sha256, `cst_${live.sha256}`, `${live.token} `, live.token.slice(4)]) expect(index.check(t, now), t).toEqual({ ok: false, why: 'malformed' });
  });
});

describe('console sessions', () => {
  const user = { orgId: 'acme', userId: 'alice', role: 'operator' as const, tenants: ['acme-prod'] };
  const now = Date.parse('2026-03-01T12:00:00Z');

  it('console sessions - a sealed session opens to itself until it expires', () => {
    const sessions = createSessions(Buffer.from(SECRET), 60_000);
    const s = sessions.create(user, now);
    expect(s).toMatchObject({ ...user, exp: now + 60_000 });
    expect(s.csrf.length).toBeGreaterThanOrEqual(32);
    const cookie = sessions.seal(s);
    expect(sessions.open(cookie, now + 59_999)).toEqual(s);
    expect(sessions.open(cookie, now + 60_000)).toBeUndefined();
  });

  it('console sessions - forged, altered, re-signed with another key, or malformed cookies do not open', () => {
    const sessions = createSessions(Buffer.from(SECRET), 60_000);
    const cookie = sessions.seal(sessions.create(user, now));
    const [v, payload, mac] = cookie.split('.') as [string, string, string];
    const admin: Session = { ...(JSON.parse(Buffer.from(payload, 'base64url').toString()) as Session), role: 'admin', tenants: ['acme-prod', 'other'] };
    const forged = `${v}.${Buffer.from(JSON.stringify(admin)).toString('base64url')}.${mac}`;
    expect(sessions.open(forged, now)).toBeUndefined();
    const other = createSessions(Buffer.from('y'.repeat(40)), 60_000);
    expect(sessions.open(other.seal(admin), now)).toBeUndefined();
    for (const bad of [undefined, '', 'v1', 'v1..', `v2.${payload}.${mac}`, `${cookie}.x`, `${v}.${payload}.${mac.slice(1)}`, 'x'.repeat(5000)]) {
      expect(sessions.open(bad, now)).toBeUndefined();
    }
  });

  it('console sessions - a revoked session no longer opens; another of the same user still does', () => {
    const sessions = createSessions(Buffer.from(SECRET), 60_000);
    const a = sessions.create(user, Date.now());
    const b = sessions.create(user, Date.now());
    sessions.revoke(a);
    expect(sessions.open(sessions.seal(a), Date.now())).toBeUndefined();
    expect(sessions.open(sessions.seal(b), Date.now())).toEqual(b);
  });

  it('console sessions - a sign-in link works once, for its user, until it expires', () => {
    const links = createLinkTokens(60_000);
    const t = links.issue('alice', now);
    expect(t).toMatch(/^[A-Za-z0-9_-]{43}$/);
    expect(links.redeem(t, now + 1000)).toBe('alice');
    expect(links.redeem(t, now + 1000)).toBeUndefined();
    const late = links.issue('bob', now);
    expect(links.redeem(late, now + 60_000)).toBeUndefined();
    expect(links.redeem('not a token!', now)).toBeUndefined();
    expect(links.redeem('A'.repeat(43), now)).toBeUndefined();
  });
});

describe('console csv', () => {
  it('console csv - RFC 4180 quoting, and text a spreadsheet would run as a formula is defused', () => {
    expect(csvField('plain')).toBe('plain');
    expect(csvField(42)).toBe('42');
    expect(csvField(null)).toBe('');
    expect(csvField('a,b')).toBe('"a,b"');
    expect(csvField('say "hi"')).toBe('"say ""hi"""');
    expect(csvField('two\nlines')).toBe('"two\nlines"');
    expect(csvField('=HYPERLINK("http://evil")')).toBe(`"'=HYPERLINK(""http://evil"")"`);
    expect(csvField('+1')).toBe("'+1");
    expect(csvField('@sum')).toBe("'@sum");
    expect(csvField('-2')).toBe("'-2");
  });
});

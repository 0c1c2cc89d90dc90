import { ConfigError } from '@capstan/schemas';
import { envInt, envLogLevel, envNatsAuth, envNatsUrl, envString, type Env, type NatsAuthConfig } from '@capstan/kit';
import type { LevelWithSilent } from 'pino';

/** HMAC-SHA256 wants a key at least as long as its output. */
export const MIN_SECRET_BYTES = 32;
export const DEFAULT_CONSOLE_PORT = 4335;

export interface Config {
  readonly host: string;
  /** 0 picks a free port. */
  readonly port: number;
  /**
   * The key that signs sessions. Absent only in dev mode, where a random one is made per
   * process (every session then ends with the process).
   */
  readonly secret?: Buffer;
  /** The users file (JSON, see `parseUsers`); absent only in dev mode. */
  readonly usersFile?: string;
  /**
   * The origin browsers reach the console at, when it is not `http://host:port` (behind a
   * proxy that terminates TLS, say): CSRF checks compare `Origin` with it, and sign-in links
   * start with it.
   */
  readonly publicUrl?: string;
  readonly sessionTtlMs: number;
  readonly linkTtlMs: number;
  /** The built web UI; default `services/console/dist/web`. */
  readonly webDir?: string;
  readonly databaseUrl?: string;
  readonly natsUrl: string;
  /** `NATS_CREDS` (the console service's credential) and TLS; unused in dev, which hands the console its connections. */
  readonly nats: NatsAuthConfig;
  readonly logLevel: LevelWithSilent;
  /** `capstan dev`: a random secret, an in-memory local admin, no users file. */
  readonly dev: boolean;
}

export interface LoadOptions {
  readonly dev?: boolean;
}

/**
 * Reads `CONSOLE_*`, `DATABASE_URL`, `NATS_URL` and `LOG_LEVEL`. Pure; lists every problem at
 * once, and never echoes a secret. @throws ConfigError
 */
export function loadConfig(env: Env, o: LoadOptions = {}): Config {
  const problems: string[] = [];
  const dev = o.dev === true;
  const host = envString(env, 'CONSOLE_HOST', '127.0.0.1');
  const port = envInt(env, 'CONSOLE_PORT', DEFAULT_CONSOLE_PORT, problems, 0, 65535);
  const secret = secretOf(env, dev, problems);
  const usersFile = env['CONSOLE_USERS'] || undefined;
  if (!usersFile && !dev) problems.push('CONSOLE_USERS is required: the path of the users file (JSON; see docs/console.md)');
  const publicUrl = publicUrlOf(env, problems);
  const sessionHours = envInt(env, 'CONSOLE_SESSION_HOURS', 12, problems, 1, 24 * 30);
  const linkMinutes = envInt(env, 'CONSOLE_LINK_MINUTES', 15, problems, 1, 24 * 60);
  const databaseUrl = databaseUrlOf(env, dev, problems);
  const natsUrl = dev && !env['NATS_URL'] ? '' : envNatsUrl(env, problems);
  const nats: NatsAuthConfig = dev ? { credsPaths: [] } : envNatsAuth(env, problems);
  const logLevel = envLogLevel(env, problems);
  if (problems.length > 0) throw new ConfigError(problems);
  return Object.freeze({
    host,
    port,
    ...(secret ? { secret } : {}),
    ...(usersFile ? { usersFile } : {}),
    ...(publicUrl ? { publicUrl } : {}),
    sessionTtlMs: sessionHours * 3_600_000,
    linkTtlMs: linkMinutes * 60_000,
    ...(env['CONSOLE_WEB_DIR'] ? { webDir: env['CONSOLE_WEB_DIR'] } : {}),
    ...(databaseUrl ? { databaseUrl } : {}),
    natsUrl,
    nats,
    logLevel,
    dev,
  });
}

function secretOf(env: Env, dev: boolean, problems: string[]): Buffer | undefined {
  const raw = env['CONSOLE_SECRET'];
  if (!raw) {
    if (!dev) problems.push(`CONSOLE_SECRET is required: the session signing key, at least ${MIN_SECRET_BYTES} bytes (for example: openssl rand -hex 32)`);
    return undefined;
  }
  const key = Buffer.from(raw, 'utf8');
  // The length is safe to say; the value never is.
  if (key.length < MIN_SECRET_BYTES) problems.push(`CONSOLE_SECRET must be at least ${MIN_SECRET_BYTES} bytes; it has ${key.length}`);
  return key;
}

function publicUrlOf(env: Env, problems: string[]): string | undefined {
  const raw = env['CONSOLE_PUBLIC_URL'];
  if (!raw) return undefined;
  try {
    const u = new URL(raw);
    if ((u.protocol !== 'http:' && u.protocol !== 'https:') || u.pathname !== '/' || u.search || u.hash || u.username) throw new Error('not an origin');
    return u.origin;
  } catch {
    problems.push(`CONSOLE_PUBLIC_URL must be an http(s) origin such as https://console.example.com (got ${JSON.stringify(raw.slice(0, 64))})`);
    return undefined;
  }
}

function databaseUrlOf(env: Env, dev: boolean, problems: string[]): string | undefined {
  const raw = env['DATABASE_URL'];
  if (!raw) {
    if (!dev) problems.push('DATABASE_URL is required: the projections database (postgres://user@host:5432/db)');
    return undefined;
  }
  const u = URL.canParse(raw) ? new URL(raw) : undefined;
  // The URL may hold a password: the problem is described, the value never shown.
  if (!u || !['postgres:', 'postgresql:'].includes(u.protocol) || !u.hostname) problems.push('DATABASE_URL is not a postgres:// URL with a host');
  return raw;
}

/**
 * Helpers for pure `loadConfig(env)` functions: each reads one key, records a problem
 * instead of throwing, so a config error lists every problem at once.
 */
import { LOG_LEVELS } from './log.js';
import type { LevelWithSilent } from 'pino';
import { parseTenantId, isTenantId, type TenantId } from '@capstan/schemas';

export type Env = Readonly<Record<string, string | undefined>>;

export function envString(env: Env, key: string, fallback: string): string {
  const v = env[key];
  return v === undefined || v === '' ? fallback : v;
}

export function envInt(env: Env, key: string, fallback: number, problems: string[], min = 0, max = Number.MAX_SAFE_INTEGER): number {
  const raw = env[key];
  if (raw === undefined || raw === '') return fallback;
  const n = Number(raw);
  if (!Number.isSafeInteger(n) || n < min || n > max) {
    problems.push(`${key} must be an integer between ${min} and ${max} (got ${JSON.stringify(raw)})`);
    return fallback;
  }
  return n;
}

/**
 * A Postgres URL (`postgres://` or `postgresql://` with a host), or '' when unset. A bad one
 * is a problem that never echoes the value: it may hold a password.
 */
export function envPostgresUrl(env: Env, key: string, problems: string[]): string {
  const raw = envString(env, key, '');
  if (!raw) return '';
  try {
    const u = new URL(raw);
    if ((u.protocol === 'postgres:' || u.protocol === 'postgresql:') && u.hostname !== '') return raw;
  } catch {
    // reported below
  }
  problems.push(`${key} must be a postgres:// or postgresql:// URL with a host`);
  return '';
}

export function envBool(env: Env, key: string, fallback: boolean, problems: string[]): boolean {
  const raw = env[key];
  if (raw === undefined || raw === '') return fallback;
  if (['1', 'true', 'yes', 'on'].includes(raw.toLowerCase())) return true;
  if (['0', 'false', 'no', 'off'].includes(raw.toLowerCase())) return false;
  problems.push(`${key} must be true or false (got ${JSON.stringify(raw)})`);
  return fallback;
}

export function envLogLevel(env: Env, problems: string[]): LevelWithSilent {
  const raw = envString(env, 'LOG_LEVEL', 'info');
  if ((LOG_LEVELS as readonly string[]).includes(raw)) return raw as LevelWithSilent;
  problems.push(`LOG_LEVEL must be one of ${LOG_LEVELS.join(', ')} (got ${JSON.stringify(raw)})`);
  return 'info';
}

export function envNatsUrl(env: Env, problems: string[]): string {
  const raw = env['NATS_URL'];
  if (!raw) {
    problems.push('NATS_URL is required (for example nats://127.0.0.1:4333)');
    return '';
  }
  for (const part of raw.split(',')) {
    try {
      const u = new URL(part.includes('://') ? part : `nats://${part}`);
      if (!u.hostname || !u.port) throw new Error('no host or port');
    } catch {
      problems.push(`NATS_URL has an invalid server address ${JSON.stringify(part)}`);
    }
  }
  return raw;
}

/** `CAPSTAN_TENANTS=a,b`: serve only these; unset or `*` means every provisioned tenant. */
export function envTenants(env: Env, problems: string[]): readonly TenantId[] | 'all' {
  const raw = env['CAPSTAN_TENANTS'];
  if (!raw || raw.trim() === '*') return 'all';
  const out: TenantId[] = [];
  for (const t of raw
    .split(',')
    .map((s) => s.trim())
    .filter(Boolean)) {
    if (isTenantId(t)) out.push(parseTenantId(t));
    else problems.push(`CAPSTAN_TENANTS has an invalid tenant id ${JSON.stringify(t)}`);
  }
  return out;
}

/** How a process authenticates to NATS: its credentials file(s) and TLS settings. */
export interface NatsAuthConfig {
  /** `NATS_CREDS`: the `.creds` files (one; a worker may name one per tenant, comma-separated). */
  readonly credsPaths: readonly string[];
  readonly tls?: { readonly caFile?: string; readonly certFile?: string; readonly keyFile?: string };
  /** `NATS_JS_DOMAIN`: the platform's JetStream domain, for a process behind a tenant's leaf node. */
  readonly jsDomain?: string;
}

/**
 * `NATS_CREDS` (required: nothing connects anonymously) and the TLS keys `NATS_TLS_CA`,
 * `NATS_TLS_CERT`, `NATS_TLS_KEY` (a client certificate needs both of the last two). Paths
 * only: a file's content is read at connect time and never echoed.
 */
export function envNatsAuth(env: Env, problems: string[], o: { many?: boolean } = {}): NatsAuthConfig {
  const raw = env['NATS_CREDS'] ?? '';
  const credsPaths = raw
    .split(',')
    .map((s) => s.trim())
    .filter(Boolean);
  if (credsPaths.length === 0) {
    problems.push("NATS_CREDS is required: the path of this process's .creds file (capstan creds issue, or services/<role>.creds in the auth store)");
  } else if (credsPaths.length > 1 && !o.many) {
    problems.push('NATS_CREDS names one credentials file here');
  }
  const ca = envString(env, 'NATS_TLS_CA', '');
  const cert = envString(env, 'NATS_TLS_CERT', '');
  const key = envString(env, 'NATS_TLS_KEY', '');
  if ((cert === '') !== (key === '')) problems.push('NATS_TLS_CERT and NATS_TLS_KEY go together (a client certificate and its key)');
  const tls = ca || cert ? { ...(ca ? { caFile: ca } : {}), ...(cert ? { certFile: cert, keyFile: key } : {}) } : undefined;
  const jsDomain = envString(env, 'NATS_JS_DOMAIN', '');
  if (jsDomain && !/^[A-Za-z0-9_-]{1,64}$/.test(jsDomain))
    problems.push(`NATS_JS_DOMAIN must be a JetStream domain name (letters, digits, '_', '-'); got ${JSON.stringify(jsDomain.slice(0, 70))}`);
  return { credsPaths, ...(tls ? { tls } : {}), ...(jsDomain ? { jsDomain } : {}) };
}

/**
 * `DATABASE_URL` (or `key`): a `postgres://` or `postgresql://` URL with a host. Required;
 * `purpose` says what the database holds, in the problem. The URL may hold a password: a
 * problem never echoes it.
 */
export function envDatabaseUrl(env: Env, problems: string[], purpose = '', key = 'DATABASE_URL'): string {
  // The required form of envPostgresUrl: same URL check, plus a message saying what it is for.
  if (!env[key]) {
    problems.push(`${key} is required${purpose ? `: ${purpose}` : ''} (for example postgres://capstan@127.0.0.1:5432/capstan)`);
    return '';
  }
  return envPostgresUrl(env, key, problems);
}

import { existsSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { connectNats, createLogger, PROJECT_ROOT, type NatsConnection } from '@capstan/kit';
import { InvalidArgumentError, UnavailableError } from '@capstan/schemas';

/** Where `capstan dev` leaves its state, including the URL of the server it started. */
export const DEV_DIR = join(PROJECT_ROOT, '.capstan', 'dev');
export const DEV_URL_FILE = join(DEV_DIR, 'nats.url');
/** The query API a running `capstan dev` serves (the read commands go through it). */
export const DEV_API_URL_FILE = join(DEV_DIR, 'api.url');

/** `--nats`, else `NATS_URL`, else the server a running `capstan dev` started. */
export function natsUrl(flag: unknown, env: NodeJS.ProcessEnv): string {
  if (typeof flag === 'string' && flag) return flag;
  if (env['NATS_URL']) return env['NATS_URL'];
  if (existsSync(DEV_URL_FILE)) return readFileSync(DEV_URL_FILE, 'utf8').trim();
  throw new InvalidArgumentError('no NATS server: pass --nats <url>, set NATS_URL, or start `capstan dev` first');
}

/**
 * `--api`, else `CAPSTAN_API_URL`, else the query API a running `capstan dev` serves. The
 * read commands never open the database themselves: the dev stack's embedded database
 * belongs to the one process that opened it.
 */
export function apiUrl(flag: unknown, env: NodeJS.ProcessEnv, file: string = DEV_API_URL_FILE): string {
  let raw: string;
  let from: string;
  if (typeof flag === 'string' && flag) [raw, from] = [flag, '--api'];
  else if (env['CAPSTAN_API_URL']) [raw, from] = [env['CAPSTAN_API_URL'], 'CAPSTAN_API_URL'];
  else if (existsSync(file)) [raw, from] = [readFileSync(file, 'utf8').trim(), file];
  else throw new InvalidArgumentError('no query API: pass --api <url>, set CAPSTAN_API_URL, or start `capstan dev` first');
  let u: URL;
  try {
    u = new URL(raw);
  } catch {
    throw new InvalidArgumentError(`${from} is not a URL: ${JSON.stringify(raw.slice(0, 200))}`);
  }
  if (u.protocol !== 'http:' && u.protocol !== 'https:') throw new InvalidArgumentError(`${from} must be an http:// or https:// URL; got ${JSON.stringify(raw.slice(0, 200))}`);
  return raw.replace(/\/+$/, '');
}

export async function connectCli(flag: unknown): Promise<NatsConnection> {
  const url = natsUrl(flag, process.env);
  const log = createLogger('cli', 'error', process.stderr);
  try {
    return await connectNats(url, 'capstan-cli', log);
  } catch (e) {
    throw new UnavailableError(`cannot reach NATS at ${url}: ${(e as Error).message}`);
  }
}

/** Runs `fn` with a connection to NATS, closed afterwards whatever happens. */
export async function withNats<T>(flag: unknown, fn: (nc: NatsConnection) => Promise<T>): Promise<T> {
  const nc = await connectCli(flag);
  try {
    return await fn(nc);
  } finally {
    await nc.close();
  }
}

/** `--json` prints the value; otherwise the human rendering. */
export function print(json: boolean, value: unknown, human: () => string): void {
  process.stdout.write(json ? `${JSON.stringify(value, null, 2)}\n` : `${human()}\n`);
}

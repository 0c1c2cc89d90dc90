import { existsSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { connectNats, createLogger, PROJECT_ROOT, type NatsConnection } from '@capstan/kit';
import { InvalidArgumentError, UnavailableError } from '@capstan/schemas';

/** Where `capstan dev` leaves its state, including the URL of the server it started. */
export const DEV_DIR = join(PROJECT_ROOT, '.capstan', 'dev');
export const DEV_URL_FILE = join(DEV_DIR, 'nats.url');

/** `--nats`, else `NATS_URL`, else the server a running `capstan dev` started. */
export function natsUrl(flag: unknown, env: NodeJS.ProcessEnv): string {
  if (typeof flag === 'string' && flag) return flag;
  if (env['NATS_URL']) return env['NATS_URL'];
  if (existsSync(DEV_URL_FILE)) return readFileSync(DEV_URL_FILE, 'utf8').trim();
  throw new InvalidArgumentError('no NATS server: pass --nats <url>, set NATS_URL, or start `capstan dev` first');
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

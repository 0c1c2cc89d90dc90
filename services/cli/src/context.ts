import { existsSync, readFileSync } from 'node:fs';
import { join, resolve } from 'node:path';
import {
  connectNats,
  createLogger,
  openAuthStore,
  parseCredentials,
  PROJECT_ROOT,
  readCredentials,
  signerOf,
  tenantConnection,
  jwtIssuer,
  type AdminTarget,
  type AuthStore,
  type CredentialsInfo,
  type TenantConnection,
} from '@capstan/kit';
import { CapstanError, CredentialsError, ErrorCode, InvalidArgumentError, TOKEN_PATTERN, UnavailableError, type Role, type TenantId } from '@capstan/schemas';

/**
 * Where `capstan dev` leaves its state, including the URL of the server it started:
 * `.capstan/dev`, or `CAPSTAN_DEV_DIR` (a second dev stack beside the first, a test's own).
 */
export const DEV_DIR = resolve(process.env['CAPSTAN_DEV_DIR'] || join(PROJECT_ROOT, '.capstan', 'dev'));
export const DEV_URL_FILE = join(DEV_DIR, 'nats.url');
/** The console a running `capstan dev` serves: its URL (first line), then a one-time sign-in link (owner-only). */
export const DEV_CONSOLE_URL_FILE = join(DEV_DIR, 'console.url');
/** The API token of the dev console's user (owner-only): the read commands use it with that console only. */
export const DEV_TOKEN_FILE = join(DEV_DIR, 'console.token');
/** The dev stack's key store: operator, accounts, service identities, issued credentials. */
export const DEV_AUTH_DIR = join(DEV_DIR, 'auth');

/** `--nats`, else `NATS_URL`, else the server a running `capstan dev` started. */
export function natsUrl(flag: unknown, env: NodeJS.ProcessEnv): string {
  if (typeof flag === 'string' && flag) return flag;
  if (env['NATS_URL']) return env['NATS_URL'];
  if (existsSync(DEV_URL_FILE)) return readFileSync(DEV_URL_FILE, 'utf8').trim();
  throw new InvalidArgumentError('no NATS server: pass --nats <url>, set NATS_URL, or start `capstan dev` first');
}

/** The console API the read commands ask, and the API token they ask with. */
export interface ReadApi {
  /** `http(s)://host:port`, no trailing slash. */
  readonly url: string;
  readonly token: string;
}

/** Where a running `capstan dev` leaves its console's URL and token (tests point these elsewhere). */
export interface DevReadFiles {
  readonly url: string;
  readonly token: string;
}

const firstLine = (file: string) => (readFileSync(file, 'utf8').split('\n', 1)[0] as string).trim();

/**
 * The console's URL: `--api`, else `CAPSTAN_API_URL`, else the console a running `capstan dev`
 * serves. Its token: `--token`, else `CAPSTAN_TOKEN`, else the file `CAPSTAN_TOKEN_FILE`
 * names, else, for the dev console only, the token `capstan dev` wrote: a token is never
 * sent to a console it was not made for. The read commands never open the database
 * themselves, and read only what the token's user may read.
 */
export function readApi(values: Record<string, unknown>, env: NodeJS.ProcessEnv, dev: DevReadFiles = { url: DEV_CONSOLE_URL_FILE, token: DEV_TOKEN_FILE }): ReadApi {
  const devUrl = existsSync(dev.url) ? firstLine(dev.url).replace(/\/+$/, '') : undefined;
  let raw: string;
  let from: string;
  const flag = values['api'];
  if (typeof flag === 'string' && flag) [raw, from] = [flag, '--api'];
  else if (env['CAPSTAN_API_URL']) [raw, from] = [env['CAPSTAN_API_URL'], 'CAPSTAN_API_URL'];
  else if (devUrl) [raw, from] = [devUrl, dev.url];
  else throw new InvalidArgumentError('no console to read from: pass --api <url>, set CAPSTAN_API_URL, or start `capstan dev` first');
  let u: URL;
  try {
    u = new URL(raw);
  } catch {
    throw new InvalidArgumentError(`${from} is not a URL: ${JSON.stringify(raw.slice(0, 200))}`);
  }
  if (u.protocol !== 'http:' && u.protocol !== 'https:') throw new InvalidArgumentError(`${from} must be an http:// or https:// URL; got ${JSON.stringify(raw.slice(0, 200))}`);
  const url = raw.replace(/\/+$/, '');
  return { url, token: tokenFor(values, env, url === devUrl ? dev.token : undefined) };
}

function tokenFor(values: Record<string, unknown>, env: NodeJS.ProcessEnv, devTokenFile: string | undefined): string {
  const flag = values['token'];
  let token: string | undefined;
  let from = '';
  if (typeof flag === 'string' && flag) [token, from] = [flag, '--token'];
  else if (env['CAPSTAN_TOKEN']) [token, from] = [env['CAPSTAN_TOKEN'], 'CAPSTAN_TOKEN'];
  else {
    const file = env['CAPSTAN_TOKEN_FILE'] || (devTokenFile && existsSync(devTokenFile) ? devTokenFile : undefined);
    if (!file) {
      throw new InvalidArgumentError(
        'no API token: pass --token <token>, or set CAPSTAN_TOKEN or CAPSTAN_TOKEN_FILE (a console admin makes one with capstan-console new-token; `capstan dev` writes its own)',
      );
    }
    try {
      [token, from] = [firstLine(file), file];
    } catch (e) {
      throw new InvalidArgumentError(`cannot read the API token file ${file}: ${(e as NodeJS.ErrnoException).code ?? 'error'}`);
    }
  }
  // Said without the value: it is a secret.
  if (!/^[\x21-\x7e]{1,512}$/.test(token)) throw new InvalidArgumentError(`${from} does not hold an API token (printable, no spaces)`);
  return token;
}

/**
 * The key store the CLI acts with as the platform admin: `--auth-dir`, else
 * `CAPSTAN_AUTH_DIR`, else the dev stack's (when `capstan dev` made one); undefined when none.
 */
export function authDir(values: Record<string, unknown>, env: NodeJS.ProcessEnv): string | undefined {
  const flag = values['auth-dir'];
  if (typeof flag === 'string' && flag) return flag;
  if (env['CAPSTAN_AUTH_DIR']) return env['CAPSTAN_AUTH_DIR'];
  return existsSync(join(DEV_AUTH_DIR, 'operator.seed')) ? DEV_AUTH_DIR : undefined;
}

/** `--creds`, else `NATS_CREDS`: the user's own credential file, if given. */
function credsPath(values: Record<string, unknown>, env: NodeJS.ProcessEnv): string | undefined {
  const flag = values['creds'];
  if (typeof flag === 'string' && flag) return flag;
  return env['NATS_CREDS'] || undefined;
}

const quiet = () => createLogger('cli', 'error', process.stderr);

/**
 * The credential a command acts with in tenant `t`: the user's own (`--creds`, `NATS_CREDS`),
 * which must be for that tenant; else, with a key store, a short-lived credential of exactly
 * the role the command needs (so the CLI never holds more than the command uses).
 * @throws CredentialsError | InvalidArgumentError when there is none, or it is for another tenant
 */
async function credentialFor(values: Record<string, unknown>, t: TenantId, role: Role, person?: string): Promise<CredentialsInfo> {
  const path = credsPath(values, process.env);
  if (path) {
    const c = await readCredentials(path);
    if (c.tenant !== t) throw new CredentialsError(path, `is for ${c.tenant ? `tenant ${c.tenant}` : 'the platform, not a tenant'}; this command acts in tenant ${t}`);
    return c;
  }
  const dir = authDir(values, process.env);
  if (!dir) {
    throw new InvalidArgumentError(
      'no credentials: pass --creds <file> (or set NATS_CREDS; capstan creds issue makes one), or --auth-dir / CAPSTAN_AUTH_DIR for the key store, or start `capstan dev` first',
    );
  }
  const store = await openAuthStore(dir);
  if (!store.hasTenant(t)) throw new CapstanError(ErrorCode.UnknownTenant, `tenant ${t} has no account in ${dir} (capstan tenant add ${t})`);
  // The key store's holder may mint any user: a person's action is signed by a short-lived
  // credential in their name, so the run records them (a name that is no token stays cli-<role>).
  const name = person !== undefined && TOKEN_PATTERN.test(person) ? person : `cli-${role}`;
  return parseCredentials(await store.mintUser(t, role, name), `${dir} (${role})`);
}

/** Connects once (a command fails fast rather than waiting for a server), errors said plainly. */
async function connectCli(url: string, credentials: CredentialsInfo) {
  // TLS as for every service: NATS_TLS_CA, and a client certificate NATS_TLS_CERT + NATS_TLS_KEY.
  const env = process.env;
  const tls =
    env['NATS_TLS_CA'] || env['NATS_TLS_CERT']
      ? { ...(env['NATS_TLS_CA'] ? { caFile: env['NATS_TLS_CA'] } : {}), ...(env['NATS_TLS_CERT'] ? { certFile: env['NATS_TLS_CERT'], keyFile: env['NATS_TLS_KEY'] ?? '' } : {}) }
      : undefined;
  try {
    return await connectNats(url, 'capstan-cli', quiet(), { credentials, reconnect: false, ...(tls ? { tls } : {}) });
  } catch (e) {
    if (CapstanError.is(e)) throw e;
    const why = (e as Error).message;
    if (/authorization|authentication|revoked|expired/i.test(why)) {
      throw new CredentialsError(credentials.name, `the server refused it (${why}): revoked, expired, or not issued by this server's operator`, { cause: e });
    }
    throw new UnavailableError(`cannot reach NATS at ${url}: ${why}`, { cause: e });
  }
}

/**
 * Runs `fn` with a connection to tenant `t`'s account as `role` (see {@link credentialFor}),
 * closed afterwards whatever happens.
 */
export async function withTenant<T>(values: Record<string, unknown>, t: TenantId, role: Role, fn: (tc: TenantConnection) => Promise<T>, person?: string): Promise<T> {
  const url = natsUrl(values['nats'], process.env);
  const credentials = await credentialFor(values, t, role, person);
  const nc = await connectCli(url, credentials);
  try {
    // The tenant's account issued this credential: whom its services' signatures are checked against.
    return await fn(await tenantConnection(t, nc, { account: jwtIssuer(credentials.jwt), signer: signerOf(credentials.jwt, credentials.seed) }));
  } finally {
    await nc.close();
  }
}

/**
 * Runs `fn` as the platform admin, with the key store (`--auth-dir`, `CAPSTAN_AUTH_DIR`, or
 * the dev stack's) and the server.
 * @throws InvalidArgumentError when there is no key store
 */
export async function withAdmin<T>(values: Record<string, unknown>, fn: (a: AdminTarget & { store: AuthStore }) => Promise<T>): Promise<T> {
  const dir = authDir(values, process.env);
  if (!dir)
    throw new InvalidArgumentError("this command needs the operator's key store: pass --auth-dir <dir> or set CAPSTAN_AUTH_DIR (capstan dev keeps one in .capstan/dev/auth)");
  const store = await openAuthStore(dir);
  const servers = natsUrl(values['nats'], process.env);
  return fn({ servers, store, log: quiet() });
}

/** `--json` prints the value; otherwise the human rendering. */
export function print(json: boolean, value: unknown, human: () => string): void {
  process.stdout.write(json ? `${JSON.stringify(value, null, 2)}\n` : `${human()}\n`);
}

/**
 * Runs `fn` over several tenants as `role`: with the user's own credential, its one tenant;
 * with a key store, every tenant it holds (or `only`). Connections are opened as asked and
 * closed afterwards.
 */
export async function withTenants<T>(
  values: Record<string, unknown>,
  role: Role,
  only: TenantId | undefined,
  fn: (o: { readonly tenants: readonly TenantId[]; readonly tenant: (t: TenantId) => Promise<TenantConnection> }) => Promise<T>,
): Promise<T> {
  const url = natsUrl(values['nats'], process.env);
  let tenants: TenantId[];
  const path = credsPath(values, process.env);
  if (path) {
    const c = await readCredentials(path);
    if (!c.tenant) throw new CredentialsError(path, 'names no tenant');
    if (only && only !== c.tenant) throw new CredentialsError(path, `is for tenant ${c.tenant}; --tenant asks for ${only}`);
    tenants = [c.tenant];
  } else {
    const dir = authDir(values, process.env);
    if (!dir) throw new InvalidArgumentError('no credentials: pass --creds <file> (or set NATS_CREDS), or --auth-dir / CAPSTAN_AUTH_DIR for the key store');
    const all = (await openAuthStore(dir)).tenants();
    if (only && !all.includes(only)) throw new CapstanError(ErrorCode.UnknownTenant, `tenant ${only} is not provisioned`);
    tenants = only ? [only] : all;
  }
  const open = new Map<TenantId, TenantConnection>();
  try {
    return await fn({
      tenants,
      async tenant(t) {
        let tc = open.get(t);
        if (!tc) {
          const credentials = await credentialFor(values, t, role);
          tc = await tenantConnection(t, await connectCli(url, credentials), { signer: signerOf(credentials.jwt, credentials.seed) });
          open.set(t, tc);
        }
        return tc;
      },
    });
  } finally {
    await Promise.allSettled([...open.values()].map((tc) => tc.nc.close()));
  }
}

/**
 * `capstan secrets put|list|rotate|delete`: a tenant's secrets, through the secrets-lease
 * service over NATS.
 *
 * A value is never taken on the command line (it would sit in shell history and in `ps`):
 * it comes from `--value-file`, `--from-env VAR` or stdin, one trailing newline removed, and
 * is sealed to the service's key before it leaves this process. Nothing prints a value:
 * `list` shows names, versions, lifecycles and dates.
 */
import { readFileSync } from 'node:fs';
import { deleteSecret, jwtName, listSecrets, putSecret, rotateSecret, type ChangedSecret, type Signer } from '@capstan/kit';
import {
  connectorSchema,
  InvalidArgumentError,
  LIFECYCLES,
  type SchemaError,
  SECRET_NAME_PATTERN,
  type Connector,
  type Lifecycle,
  type SecretInfo,
  type TenantId,
  Role,
  CapstanError,
  ErrorCode,
} from '@capstan/schemas';
import { intFlag, parse, stringFlag, tenantFlag } from './args.js';
import { print, withTenant } from './context.js';
import { dim, green, red, table, yellow } from './format.js';
import { actorFlag } from './operate.js';

const USAGE = `usage:
  capstan secrets put <NAME> --tenant <t> (--value-file <f> | --from-env <VAR> | < stdin)
                      [--lifecycle static|refreshable|exchangeable|ambient] [--connector <json>]
                      [--refresh-window <s>] [--expires-at <iso>] [--as <user>] [--json]
  capstan secrets list --tenant <t> [--all] [--json]
  capstan secrets rotate <NAME> --tenant <t> (--value-file <f> | --from-env <VAR> | < stdin | --refresh)
                      [--expires-at <iso>] [--as <user>] [--json]
  capstan secrets delete <NAME> --tenant <t> [--as <user>] [--json]`;

const common = { nats: { type: 'string' }, tenant: { type: 'string' }, as: { type: 'string' }, json: { type: 'boolean' }, timeout: { type: 'string' } } as const;
const valueFlags = { 'value-file': { type: 'string' }, 'from-env': { type: 'string' }, 'expires-at': { type: 'string' } } as const;

function nameArg(raw: string | undefined): string {
  if (!raw || !SECRET_NAME_PATTERN.test(raw))
    throw new InvalidArgumentError(`${JSON.stringify((raw ?? '').slice(0, 64))} is not a secret name (${SECRET_NAME_PATTERN.source}: it becomes an environment variable)`);
  return raw;
}

/** Refuses a value given on the command line before anything else looks at the arguments. */
function refuseInlineValue(argv: readonly string[]): void {
  if (argv.some((a) => a === '--value' || a.startsWith('--value='))) {
    throw new InvalidArgumentError('a secret value is never taken on the command line (shell history, ps): use --value-file <f>, --from-env <VAR> or stdin');
  }
}

async function readStdin(): Promise<string> {
  const chunks: Buffer[] = [];
  for await (const c of process.stdin) chunks.push(c as Buffer);
  return Buffer.concat(chunks).toString('utf8');
}

/** One trailing newline (what `echo` and editors add) is not part of the value. */
const chomp = (s: string) => s.replace(/\r?\n$/, '');

/** The value from exactly one source; undefined when none was given and stdin is a terminal. */
async function valueOf(values: Record<string, unknown>, env: NodeJS.ProcessEnv): Promise<string | undefined> {
  const file = stringFlag(values, 'value-file');
  const fromEnv = stringFlag(values, 'from-env');
  if (file !== undefined && fromEnv !== undefined) throw new InvalidArgumentError('give the value one way: --value-file or --from-env, not both');
  if (file !== undefined) {
    try {
      return chomp(readFileSync(file, 'utf8'));
    } catch (e) {
      throw new InvalidArgumentError(`cannot read --value-file ${JSON.stringify(file)}: ${(e as NodeJS.ErrnoException).code ?? 'unreadable'}`);
    }
  }
  if (fromEnv !== undefined) {
    const v = env[fromEnv];
    if (v === undefined) throw new InvalidArgumentError(`--from-env ${JSON.stringify(fromEnv.slice(0, 64))}: no such environment variable is set`);
    return v;
  }
  if (process.stdin.isTTY) return undefined;
  const v = chomp(await readStdin());
  // Nothing piped in (stdin closed or /dev/null) is a forgotten value, not an empty secret.
  if (v === '') throw new InvalidArgumentError('the value on stdin is empty: give it with --value-file <f>, --from-env <VAR>, or on stdin');
  return v;
}

function expiresFlag(values: Record<string, unknown>): Date | undefined {
  const raw = stringFlag(values, 'expires-at');
  if (raw === undefined) return undefined;
  const d = new Date(raw);
  if (Number.isNaN(d.getTime())) throw new InvalidArgumentError(`--expires-at ${JSON.stringify(raw.slice(0, 64))} is not an ISO 8601 time`);
  return d;
}

function connectorFlag(values: Record<string, unknown>): Connector | undefined {
  const raw = stringFlag(values, 'connector');
  if (raw === undefined) return undefined;
  let doc: unknown;
  try {
    doc = JSON.parse(raw);
  } catch (e) {
    throw new InvalidArgumentError(`--connector is not valid JSON: ${(e as Error).message}`);
  }
  try {
    return connectorSchema.parse(doc, 'connector');
  } catch (e) {
    throw new InvalidArgumentError(`--connector: ${CapstanError.is(e, ErrorCode.SchemaViolation) ? `${(e as SchemaError).path} ${(e as SchemaError).problem}` : String(e)}`);
  }
}

function lifecycleFlag(values: Record<string, unknown>): Lifecycle | undefined {
  const raw = stringFlag(values, 'lifecycle');
  if (raw === undefined) return undefined;
  if (!(LIFECYCLES as readonly string[]).includes(raw)) throw new InvalidArgumentError(`--lifecycle must be one of ${LIFECYCLES.join(', ')}`);
  return raw as Lifecycle;
}

const orDash = (v: string | undefined) => v ?? '-';

function describeSecret(s: SecretInfo): string {
  const parts = [`${s.name} v${s.version}`, s.lifecycle];
  if (s.connector) parts.push(`connector ${s.connector} (${s.auth ?? '?'})`);
  if (s.expiresAt) parts.push(`expires ${s.expiresAt}`);
  return parts.join(', ');
}

/**
 * Who the service recorded as making the change: its reply says (the credential's name, or
 * for the console or admin the user it names); from a service that does not, the signer's name.
 */
function recordedAs(s: ChangedSecret, signer: Signer | undefined): string {
  return s.by ?? (signer ? jwtName(signer.jwt) : 'an unsigned request');
}

async function putCmd(argv: string[], env: NodeJS.ProcessEnv): Promise<number> {
  const { values, args } = parse(argv, { ...common, ...valueFlags, lifecycle: { type: 'string' }, connector: { type: 'string' }, 'refresh-window': { type: 'string' } }, ['name']);
  const t: TenantId = tenantFlag(values);
  const name = nameArg(args[0]);
  const by = actorFlag(values, env);
  const lifecycle = lifecycleFlag(values);
  const connector = connectorFlag(values);
  const expiresAt = expiresFlag(values);
  const windowS = values['refresh-window'] === undefined ? undefined : intFlag('refresh-window', values['refresh-window'], 0, 0);
  const timeoutMs = intFlag('timeout', values['timeout'], 10, 1) * 1000;
  const value = await valueOf(values, env);
  if (value === undefined) throw new InvalidArgumentError('no value: give it with --value-file <f>, --from-env <VAR>, or on stdin');
  return withTenant(values, t, Role.Operator, async ({ nc, account, signer }) => {
    const s = await putSecret(nc, t, name, value, {
      by,
      ...(signer ? { signer } : {}),
      timeoutMs,
      ...(account ? { account } : {}),
      ...(lifecycle ? { lifecycle } : {}),
      ...(connector ? { connector } : {}),
      ...(windowS !== undefined ? { refreshWindowMs: windowS * 1000 } : {}),
      ...(expiresAt ? { expiresAt } : {}),
    });
    print(values['json'] === true, s, () => `${green('stored')} ${describeSecret(s)} in ${t} as ${recordedAs(s, signer)}`);
    return 0;
  });
}

async function rotateCmd(argv: string[], env: NodeJS.ProcessEnv): Promise<number> {
  const { values, args } = parse(argv, { ...common, ...valueFlags, refresh: { type: 'boolean' } }, ['name']);
  const t: TenantId = tenantFlag(values);
  const name = nameArg(args[0]);
  const by = actorFlag(values, env);
  const expiresAt = expiresFlag(values);
  const timeoutMs = intFlag('timeout', values['timeout'], 30, 1) * 1000;
  const refresh = values['refresh'] === true;
  if (refresh && (values['value-file'] !== undefined || values['from-env'] !== undefined))
    throw new InvalidArgumentError('--refresh takes no value: the connector fetches a new one');
  const value = refresh ? undefined : await valueOf(values, env);
  if (!refresh && value === undefined)
    throw new InvalidArgumentError('no value: give it with --value-file <f>, --from-env <VAR>, or on stdin (or --refresh for a refreshable secret)');
  return withTenant(values, t, Role.Operator, async ({ nc, account, signer }) => {
    const s = await rotateSecret(nc, t, name, value, { by, timeoutMs, ...(signer ? { signer } : {}), ...(account ? { account } : {}), ...(expiresAt ? { expiresAt } : {}) });
    print(values['json'] === true, s, () => `${green(refresh ? 'refreshed' : 'rotated')} ${describeSecret(s)} in ${t} as ${recordedAs(s, signer)}`);
    return 0;
  });
}

async function deleteCmd(argv: string[], env: NodeJS.ProcessEnv): Promise<number> {
  const { values, args } = parse(argv, common, ['name']);
  const t: TenantId = tenantFlag(values);
  const name = nameArg(args[0]);
  const by = actorFlag(values, env);
  return withTenant(values, t, Role.Operator, async ({ nc, signer }) => {
    const s = await deleteSecret(nc, t, name, { by, ...(signer ? { signer } : {}) });
    print(values['json'] === true, s, () => `${red('deleted')} ${s.name} v${s.version} in ${t} as ${recordedAs(s, signer)}: its value is erased`);
    return 0;
  });
}

async function listCmd(argv: string[]): Promise<number> {
  const { values } = parse(argv, { nats: { type: 'string' }, tenant: { type: 'string' }, json: { type: 'boolean' }, all: { type: 'boolean' } }, []);
  const t: TenantId = tenantFlag(values);
  const includeDeleted = values['all'] === true;
  return withTenant(values, t, Role.Operator, async ({ nc, signer }) => {
    const secrets = await listSecrets(nc, t, { includeDeleted, ...(signer ? { signer } : {}) });
    print(values['json'] === true, { secrets }, () => {
      if (secrets.length === 0) return `no secrets in ${t}`;
      const rows = secrets.map((s) => [
        s.deletedAt ? dim(s.name) : s.name,
        String(s.version),
        s.lifecycle === 'static' ? s.lifecycle : yellow(s.lifecycle),
        s.connector ? `${s.connector} (${s.auth ?? '?'})` : '-',
        s.createdAt,
        orDash(s.rotatedAt),
        orDash(s.expiresAt),
        s.deletedAt ? red(`deleted ${s.deletedAt}`) : '',
      ]);
      return table(['NAME', 'VERSION', 'LIFECYCLE', 'CONNECTOR', 'CREATED', 'ROTATED', 'EXPIRES', ''], rows);
    });
    return 0;
  });
}

/** `capstan secrets put|list|rotate|delete …` */
export async function secretsCmd(argv: string[], env: NodeJS.ProcessEnv = process.env): Promise<number> {
  refuseInlineValue(argv);
  const [verb, ...rest] = argv;
  switch (verb) {
    case 'put':
      return putCmd(rest, env);
    case 'rotate':
      return rotateCmd(rest, env);
    case 'delete':
      return deleteCmd(rest, env);
    case 'list':
      return listCmd(rest);
    default:
      throw new InvalidArgumentError(`capstan secrets: ${verb ? `unknown verb ${JSON.stringify(verb.slice(0, 32))}` : 'missing verb'}\n${USAGE}`);
  }
}

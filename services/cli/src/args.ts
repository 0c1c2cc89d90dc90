/** Flag parsing: strict, so a mistyped flag is an error with a clear message, not ignored. */
import { parseArgs, type ParseArgsConfig } from 'node:util';
import { InvalidArgumentError, isTenantId, isRunId, TENANT_ID_PATTERN, type JsonValue, type RunId, type TenantId } from '@capstan/schemas';

export type Options = NonNullable<ParseArgsConfig['options']>;

/**
 * How a command reaches NATS, accepted by every command that does: the server, and the
 * credential (a user's own `.creds` file, or the operator's key store to act as admin).
 */
const CONNECTION: Options = { nats: { type: 'string' }, creds: { type: 'string' }, 'auth-dir': { type: 'string' } };

/**
 * `--help` (or `-h`) on any command: the command's own flags and arguments, taken from the
 * very table it parses with, so what it prints cannot drift from what it accepts. Thrown by
 * `parse` before anything is checked or done; `main` prints it.
 */
export class HelpRequested extends Error {
  constructor(
    /** The arguments `parse` was given: what follows the command's name (and subcommand). */
    readonly argv: readonly string[],
    readonly options: Options,
    readonly positionals: readonly string[],
  ) {
    super('help requested');
    this.name = 'HelpRequested';
  }

  /** `capstan <words> <positionals>`, then a line per flag. */
  render(words: readonly string[]): string {
    const flags = Object.entries(this.options).map(([name, o]) => {
      const value = o.type === 'string' ? ' <value>' : '';
      const notes = [o.multiple ? 'repeatable' : '', o.default !== undefined ? `default ${String(o.default)}` : ''].filter(Boolean);
      return `  --${name}${value}${notes.length ? `  (${notes.join(', ')})` : ''}`;
    });
    return [`usage: capstan ${[...words, ...this.positionals.map((p) => `<${p}>`)].join(' ')}${flags.length ? ' [flags]' : ''}`, ...flags, '  --help'].join('\n') + '\n';
  }
}

export function parse(argv: string[], options: Options, positionals: string[]): { values: Record<string, string | boolean | undefined>; args: string[] } {
  const accepted = 'nats' in options ? { ...CONNECTION, ...options } : options;
  if (argv.includes('--help') || argv.includes('-h')) throw new HelpRequested(argv, accepted, positionals);
  let parsed;
  try {
    parsed = parseArgs({ args: argv, options: accepted, allowPositionals: true, strict: true });
  } catch (e) {
    throw new InvalidArgumentError((e as Error).message.replace(/^TypeError \[[A-Z_]+\]: /, ''));
  }
  if (parsed.positionals.length < positionals.length) {
    throw new InvalidArgumentError(
      `missing ${positionals
        .slice(parsed.positionals.length)
        .map((p) => `<${p}>`)
        .join(' ')}`,
    );
  }
  if (parsed.positionals.length > positionals.length) {
    throw new InvalidArgumentError(`unexpected argument ${JSON.stringify(parsed.positionals[positionals.length])}`);
  }
  return { values: parsed.values as Record<string, string | boolean | undefined>, args: parsed.positionals };
}

export function tenantFlag(values: Record<string, unknown>): TenantId {
  const t = values['tenant'];
  if (typeof t !== 'string') throw new InvalidArgumentError('--tenant <id> is required');
  if (!isTenantId(t)) throw new InvalidArgumentError(`--tenant ${JSON.stringify(t)} is not a valid tenant id (${TENANT_ID_PATTERN.source})`);
  return t;
}

export function runIdArg(value: string | undefined): RunId {
  if (!value || !isRunId(value)) throw new InvalidArgumentError(`${JSON.stringify(value ?? '')} is not a run id (a 26-character ULID)`);
  return value;
}

export function jsonFlag(name: string, raw: unknown): JsonValue | undefined {
  if (raw === undefined) return undefined;
  try {
    return JSON.parse(String(raw)) as JsonValue;
  } catch (e) {
    throw new InvalidArgumentError(`--${name} is not valid JSON: ${(e as Error).message}`);
  }
}

export function intFlag(name: string, raw: unknown, fallback: number, min = 0): number {
  if (raw === undefined) return fallback;
  const n = Number(raw);
  if (!Number.isSafeInteger(n) || n < min) throw new InvalidArgumentError(`--${name} must be an integer >= ${min}`);
  return n;
}

/** A string flag's value, or undefined when absent. */
export function stringFlag(values: Record<string, unknown>, name: string): string | undefined {
  const v = values[name];
  if (v === undefined) return undefined;
  if (typeof v !== 'string') throw new InvalidArgumentError(`--${name} takes a value`);
  return v;
}

/** A repeatable string flag (`{ type: 'string', multiple: true }`): every value given, in order. */
export function stringsFlag(values: Record<string, unknown>, name: string): string[] {
  const v = values[name];
  if (v === undefined) return [];
  const all = Array.isArray(v) ? (v as unknown[]) : [v];
  if (!all.every((x): x is string => typeof x === 'string')) throw new InvalidArgumentError(`--${name} takes a value`);
  return all;
}

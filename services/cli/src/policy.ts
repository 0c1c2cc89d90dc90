/**
 * `capstan policy set|get|history|test`: a tenant's Cedar policy, through the policy service
 * (`cap.<t>.svc.policy.*`). `set` stores a new version only once Cedar has validated the
 * text against Capstan's schema; otherwise it prints Cedar's diagnostics, located in the
 * file, and exits 1 with nothing stored.
 */
import { readFileSync } from 'node:fs';
import { getPolicy, policyHistory, setPolicy, testPolicy } from '@capstan/kit';
import {
  CapstanError,
  ErrorCode,
  formatDiagnostic,
  InvalidArgumentError,
  isPlainObject,
  MAX_REASON_CHARS,
  type PolicyInvalidError,
  type PolicyDecision,
  type PolicyDiagnostic,
  type TenantId,
  Role,
} from '@capstan/schemas';
import { intFlag, parse, stringFlag, tenantFlag } from './args.js';
import { print, withTenant } from './context.js';
import { dim, green, red, table, yellow } from './format.js';
import { actorFlag } from './operate.js';

const USAGE = `usage:
  capstan policy set --tenant <t> --file <p.cedar> [--as <user>] [--reason <text>] [--json]
  capstan policy get --tenant <t> [--version N] [--json]
  capstan policy history --tenant <t> [--limit N] [--json]
  capstan policy test --tenant <t> (--file <queries.json> | --action <a> --workflow <w> --step <s>
                      [--mode N] [--secret K] [--host h:p] [--target x] [--worker w])
                      [--policy <p.cedar> | --version N] [--json]`;

/** `capstan policy <verb> …` */
export async function policyCmd(argv: string[], env: NodeJS.ProcessEnv = process.env): Promise<number> {
  const [verb, ...rest] = argv;
  switch (verb) {
    case 'set':
      return setCmd(rest, env);
    case 'get':
      return getCmd(rest);
    case 'history':
      return historyCmd(rest);
    case 'test':
      return testCmd(rest);
    default:
      throw new InvalidArgumentError(`${verb === undefined ? 'missing policy command' : `unknown policy command ${JSON.stringify(verb.slice(0, 40))}`}\n${USAGE}`);
  }
}

function readText(path: string, what: string): string {
  try {
    return readFileSync(path, 'utf8');
  } catch (e) {
    throw new InvalidArgumentError(`cannot read ${what} ${JSON.stringify(path)}: ${(e as NodeJS.ErrnoException).code ?? (e as Error).message}`);
  }
}

function printDiagnostics(diagnostics: readonly PolicyDiagnostic[], file: string): void {
  for (const d of diagnostics) process.stderr.write(`${d.severity === 'error' ? red(formatDiagnostic(d, file)) : yellow(formatDiagnostic(d, file))}\n`);
}

/** Runs `fn`; a policy Cedar refused is printed as its diagnostics (exit 1), located in `file`. */
async function orDiagnostics(file: string, json: boolean, fn: () => Promise<number>): Promise<number> {
  try {
    return await fn();
  } catch (e) {
    if (!CapstanError.is(e, ErrorCode.PolicyInvalid)) throw e;
    const { diagnostics } = e as PolicyInvalidError;
    if (json) print(true, { error: { code: e.code, diagnostics } }, () => '');
    else {
      process.stderr.write(`capstan: ${e.code}: ${file} is not a valid policy; nothing was stored\n`);
      printDiagnostics(diagnostics, file);
    }
    return 1;
  }
}

const notFoundIs3 = async (fn: () => Promise<number>): Promise<number> => {
  try {
    return await fn();
  } catch (e) {
    if (CapstanError.is(e) && e.code === ErrorCode.PolicyVersionNotFound) {
      process.stderr.write(`capstan: ${e.code}: ${e.message}\n`);
      return 3;
    }
    throw e;
  }
};

async function setCmd(argv: string[], env: NodeJS.ProcessEnv): Promise<number> {
  const { values } = parse(
    argv,
    { nats: { type: 'string' }, tenant: { type: 'string' }, file: { type: 'string' }, as: { type: 'string' }, reason: { type: 'string' }, json: { type: 'boolean' } },
    [],
  );
  const t = tenantFlag(values);
  const file = stringFlag(values, 'file');
  if (!file) throw new InvalidArgumentError('--file <p.cedar> is required: the policy text to set');
  const by = actorFlag(values, env);
  const reason = stringFlag(values, 'reason');
  if (reason !== undefined && (reason.length === 0 || reason.length > MAX_REASON_CHARS)) throw new InvalidArgumentError(`--reason must have 1 to ${MAX_REASON_CHARS} characters`);
  const text = readText(file, 'policy file');
  const json = values['json'] === true;
  return withTenant(values, t, Role.Operator, ({ nc }) =>
    orDiagnostics(file, json, async () => {
      const r = await setPolicy(nc, t, { text, by, ...(reason !== undefined ? { reason } : {}) });
      print(json, r, () => {
        for (const w of r.warnings) process.stderr.write(`${yellow(formatDiagnostic(w, file))}\n`);
        return r.unchanged
          ? `${dim('unchanged:')} version ${r.version} of ${t} is this text already; nothing recorded`
          : `${green('stored')} policy version ${r.version} of ${t} as ${by} ${dim(`(sha256 ${r.sha256.slice(0, 12)})`)}: in force now`;
      });
      return 0;
    }),
  );
}

async function getCmd(argv: string[]): Promise<number> {
  const { values } = parse(argv, { nats: { type: 'string' }, tenant: { type: 'string' }, version: { type: 'string' }, json: { type: 'boolean' } }, []);
  const t = tenantFlag(values);
  const version = values['version'] === undefined ? undefined : intFlag('version', values['version'], 0, 0);
  return withTenant(values, t, Role.Operator, ({ nc }) =>
    notFoundIs3(async () => {
      const r = await getPolicy(nc, t, version);
      if (values['json'] === true) {
        print(true, r, () => '');
        return 0;
      }
      if (r.version === 0) {
        process.stderr.write(`${t} has no policy: every request is denied (version 0)\n`);
        return 0;
      }
      if (!r.record) {
        process.stderr.write(`${red(`version ${r.version} of ${t} is not a valid policy record`)}: decisions under it deny\n`);
        return 1;
      }
      const rec = r.record;
      process.stderr.write(dim(`# ${t} policy version ${rec.version}, set by ${rec.by} at ${rec.at}${rec.reason ? `: ${rec.reason}` : ''} (sha256 ${rec.sha256.slice(0, 12)})\n`));
      process.stdout.write(rec.text.endsWith('\n') ? rec.text : `${rec.text}\n`);
      return 0;
    }),
  );
}

async function historyCmd(argv: string[]): Promise<number> {
  const { values } = parse(argv, { nats: { type: 'string' }, tenant: { type: 'string' }, limit: { type: 'string' }, json: { type: 'boolean' } }, []);
  const t = tenantFlag(values);
  const limit = values['limit'] === undefined ? undefined : intFlag('limit', values['limit'], 1000, 1);
  if (limit !== undefined && limit > 1000) throw new InvalidArgumentError('--limit must be at most 1000');
  return withTenant(values, t, Role.Operator, async ({ nc }) => {
    const r = await policyHistory(nc, t, limit);
    print(values['json'] === true, r, () => {
      if (r.versions.length === 0) return `${t} has no policy versions: every request is denied (version 0)`;
      const rows = r.versions.map((v) => [
        v.version === r.latest ? green(`${v.version} *`) : String(v.version),
        v.valid ? v.by : red('(invalid record)'),
        v.at,
        v.sha256.slice(0, 12),
        String(v.bytes),
        v.reason ? dim(v.reason) : '',
      ]);
      return `${table(['VERSION', 'BY', 'AT', 'SHA256', 'BYTES', 'REASON'], rows)}\n${dim('* in force')}`;
    });
    return 0;
  });
}

const QUERY_FLAGS = ['action', 'workflow', 'step', 'mode', 'secret', 'host', 'target', 'worker'] as const;

/** Queries from `--file` (an array, or `{ queries: [...] }`) or from the flags of one query. */
function queriesFrom(values: Record<string, unknown>): Record<string, unknown>[] {
  const file = stringFlag(values, 'file');
  const flagged = QUERY_FLAGS.filter((f) => values[f] !== undefined);
  if (file !== undefined) {
    if (flagged.length > 0) throw new InvalidArgumentError(`give queries with --file or with flags, not both (--${flagged[0]})`);
    let parsed: unknown;
    try {
      parsed = JSON.parse(readText(file, 'queries file')) as unknown;
    } catch (e) {
      if (CapstanError.is(e, ErrorCode.InvalidArgument)) throw e;
      throw new InvalidArgumentError(`${file} is not valid JSON: ${(e as Error).message}`);
    }
    const list = isPlainObject(parsed) ? parsed['queries'] : parsed;
    if (!Array.isArray(list) || list.length === 0 || !list.every(isPlainObject)) {
      throw new InvalidArgumentError(`${file} must hold a non-empty array of queries (or { "queries": [...] }), each an object`);
    }
    return list;
  }
  if (values['action'] === undefined) throw new InvalidArgumentError(`give --file <queries.json>, or one query with --action, --workflow, --step …\n${USAGE}`);
  const q: Record<string, unknown> = {};
  for (const f of flagged) q[f] = f === 'mode' ? intFlag('mode', values[f], 0, 0) : stringFlag(values, f);
  return [q];
}

function describeQuery(q: Record<string, unknown>): string {
  const what = q['mode'] ?? q['secret'] ?? q['host'] ?? q['target'] ?? '';
  const who = `${String(q['workflow'] ?? '?')}/${String(q['step'] ?? '?')}`;
  const label = q['action'] === 'run-step' ? `mode ${String(what)}` : String(what);
  return `${String(q['action'] ?? '?')} ${label} by ${who}${q['worker'] ? ` (worker ${String(q['worker'])})` : ''}`;
}

function verdict(d: PolicyDecision): string {
  const word = d.decision === 'allow' ? green(d.decision) : d.decision === 'deny' ? red(d.decision) : yellow(d.decision);
  const why = d.policies.length > 0 ? dim(` [${d.policies.join(', ')}]`) : d.decision === 'deny' ? dim(' [no policy permits it]') : '';
  return `${word}${d.approvers ? ` (approvers: ${d.approvers})` : ''}${why}`;
}

async function testCmd(argv: string[]): Promise<number> {
  const flags = Object.fromEntries(QUERY_FLAGS.map((f) => [f, { type: 'string' as const }]));
  const { values } = parse(
    argv,
    {
      nats: { type: 'string' },
      tenant: { type: 'string' },
      file: { type: 'string' },
      policy: { type: 'string' },
      version: { type: 'string' },
      json: { type: 'boolean' },
      ...flags,
    },
    [],
  );
  const t: TenantId = tenantFlag(values);
  const queries = queriesFrom(values);
  const policyFile = stringFlag(values, 'policy');
  if (policyFile !== undefined && values['version'] !== undefined) throw new InvalidArgumentError('--policy and --version exclude each other');
  const text = policyFile === undefined ? undefined : readText(policyFile, 'policy file');
  const version = values['version'] === undefined ? undefined : intFlag('version', values['version'], 0, 0);
  const json = values['json'] === true;
  return withTenant(values, t, Role.Operator, ({ nc }) =>
    orDiagnostics(policyFile ?? '', json, () =>
      notFoundIs3(async () => {
        const r = await testPolicy(nc, t, { queries, ...(text !== undefined ? { text } : {}), ...(version !== undefined ? { version } : {}) });
        print(json, r, () => {
          const under = r.candidate
            ? `the candidate policy in ${policyFile ?? '?'} (not stored)`
            : r.version === 0
              ? 'no policy (version 0): default deny'
              : `policy version ${r.version}`;
          const lines = [dim(`${t}, under ${under}:`)];
          r.decisions.forEach((d, i) => {
            lines.push(`  ${describeQuery(queries[i] ?? {})}: ${verdict(d)}`);
            for (const e of d.errors ?? []) lines.push(`    ${dim(e)}`);
          });
          if (r.decisions.length > 1) lines.push(`  ${dim('all together:')} ${verdict(r.combined)}`);
          return lines.join('\n');
        });
        return 0;
      }),
    ),
  );
}

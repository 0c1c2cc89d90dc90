/**
 * `capstan datasync …`: a tenant's data-sync catalog (connections, models, destinations),
 * pipeline runs and the bounded preview, through the datasync service (specs stay in the
 * data plane) and the run stream.
 *
 * A spec names secrets, never holds one: a connection's password or private key is a
 * secret of the tenant (`capstan secrets put`), named in the spec by `passwordKey` or
 * `privateKeyKey`.
 */
import { readFileSync } from 'node:fs';
import { createClient, deleteEntity, listEntities, previewQuery, putEntity } from '@capstan/kit';
import {
  CATALOG_KINDS,
  InvalidArgumentError,
  Role,
  parsePipelineInput,
  parseStepResult,
  PIPELINE_WORKFLOW,
  type CatalogKind,
  type CatalogRecord,
  type TenantId,
} from '@capstan/schemas';
import { intFlag, parse, stringFlag, tenantFlag } from './args.js';
import { print, withTenant } from './context.js';
import { dim, green, red, table } from './format.js';
import { actorFlag } from './operate.js';

const USAGE = `usage:
  capstan datasync put connection|model|destination <id> --tenant <t> (--file <spec.json> | --spec <json>)
                  [--name <text>] [--as <user>] [--json]
  capstan datasync delete connection|model|destination <id> --tenant <t> [--as <user>] [--json]
  capstan datasync list [connection|model|destination] --tenant <t> [--all] [--json]
  capstan datasync run --tenant <t> --connection <id> --model <id> --destination <id> [--wait] [--timeout <s>] [--json]
  capstan datasync preview --tenant <t> --connection <id> (--sql <query> | --sql-file <f>) [--timeout-ms N] [--json]`;

const common = { nats: { type: 'string' }, tenant: { type: 'string' }, as: { type: 'string' }, json: { type: 'boolean' } } as const;

function kindArg(raw: string | undefined): CatalogKind {
  if (!raw || !(CATALOG_KINDS as readonly string[]).includes(raw))
    throw new InvalidArgumentError(`${JSON.stringify((raw ?? '').slice(0, 32))} is not one of ${CATALOG_KINDS.join(', ')}\n${USAGE}`);
  return raw as CatalogKind;
}

function specOf(values: Record<string, unknown>): unknown {
  const file = stringFlag(values, 'file');
  const inline = stringFlag(values, 'spec');
  if ((file === undefined) === (inline === undefined)) throw new InvalidArgumentError('give the spec one way: --file <spec.json> or --spec <json>');
  let text: string;
  try {
    text = file !== undefined ? readFileSync(file, 'utf8') : (inline as string);
  } catch (e) {
    throw new InvalidArgumentError(`cannot read --file ${JSON.stringify(file)}: ${(e as NodeJS.ErrnoException).code ?? 'unreadable'}`);
  }
  try {
    return JSON.parse(text) as unknown;
  } catch (e) {
    throw new InvalidArgumentError(`the spec is not JSON: ${(e as Error).message}`);
  }
}

function describeRecord(r: CatalogRecord): string {
  const s = r.summary;
  const facts = [
    s.type,
    s.auth,
    s.tls ? `tls ${s.tls}` : undefined,
    s.format,
    s.connection ? `on ${s.connection}` : undefined,
    s.entities ? `${s.entities.length} entities` : undefined,
    s.associations !== undefined ? `${s.associations} associations` : undefined,
  ];
  return facts.filter(Boolean).join(', ');
}

async function putCmd(argv: string[], env: NodeJS.ProcessEnv): Promise<number> {
  const { values, args } = parse(argv, { ...common, file: { type: 'string' }, spec: { type: 'string' }, name: { type: 'string' } }, ['kind', 'id']);
  const t: TenantId = tenantFlag(values);
  const kind = kindArg(args[0]);
  const by = actorFlag(values, env);
  const spec = specOf(values);
  const name = stringFlag(values, 'name');
  return withTenant(values, t, Role.Operator, async ({ nc }) => {
    const r = await putEntity(nc, t, { kind, id: args[1] as string, spec, by, ...(name !== undefined ? { name } : {}) });
    print(values['json'] === true, r, () => `${green('stored')} ${r.kind} ${r.id} v${r.version} (${describeRecord(r)}) in ${t} as ${by}`);
    return 0;
  });
}

async function deleteCmd(argv: string[], env: NodeJS.ProcessEnv): Promise<number> {
  const { values, args } = parse(argv, common, ['kind', 'id']);
  const t: TenantId = tenantFlag(values);
  const kind = kindArg(args[0]);
  const by = actorFlag(values, env);
  return withTenant(values, t, Role.Operator, async ({ nc }) => {
    const r = await deleteEntity(nc, t, kind, args[1] as string, by);
    print(values['json'] === true, r, () => `${red('deleted')} ${r.kind} ${r.id} (v${r.version}) in ${t} as ${by}`);
    return 0;
  });
}

async function listCmd(argv: string[]): Promise<number> {
  const kindGiven = argv[0] !== undefined && !argv[0].startsWith('--');
  const { values } = parse(kindGiven ? argv.slice(1) : argv, { nats: { type: 'string' }, tenant: { type: 'string' }, json: { type: 'boolean' }, all: { type: 'boolean' } }, []);
  const t: TenantId = tenantFlag(values);
  const kind = kindGiven ? kindArg(argv[0]) : undefined;
  return withTenant(values, t, Role.Operator, async ({ nc }) => {
    const records = await listEntities(nc, t, { ...(kind ? { kind } : {}), includeDeleted: values['all'] === true });
    print(values['json'] === true, { records }, () => {
      if (records.length === 0) return `no ${kind ?? 'connections, models or destinations'} in ${t}`;
      const rows = records.map((r) => [
        r.kind,
        r.status === 'deleted' ? dim(r.id) : r.id,
        r.name,
        `v${r.version}`,
        describeRecord(r),
        r.by,
        r.at,
        r.status === 'deleted' ? red('deleted') : '',
      ]);
      return table(['KIND', 'ID', 'NAME', 'VERSION', 'WHAT', 'BY', 'CHANGED', ''], rows);
    });
    return 0;
  });
}

/** Starts a pipeline run: a plain submit of `datasync.pipeline` with identifiers only. */
async function runCmd(argv: string[]): Promise<number> {
  const { values } = parse(
    argv,
    { ...common, connection: { type: 'string' }, model: { type: 'string' }, destination: { type: 'string' }, wait: { type: 'boolean' }, timeout: { type: 'string' } },
    [],
  );
  const t: TenantId = tenantFlag(values);
  let input;
  try {
    input = parsePipelineInput({ connection: values['connection'], model: values['model'], destination: values['destination'] });
  } catch (e) {
    throw new InvalidArgumentError(`--connection, --model and --destination take entity ids: ${(e as Error).message}`);
  }
  const timeoutS = intFlag('timeout', values['timeout'], 3600, 1);
  return withTenant(values, t, Role.Client, async (tc) => {
    const client = await createClient(tc);
    const runId = await client.submit(t, PIPELINE_WORKFLOW, { input });
    if (values['wait'] !== true) {
      print(
        values['json'] === true,
        { runId },
        () => `${green('started')} pipeline run ${runId} (${input.connection} → ${input.model} → ${input.destination}); follow it with: capstan run ${runId} --tenant ${t}`,
      );
      return 0;
    }
    const end = await client.waitForEnd(t, runId, timeoutS * 1000);
    const events = await client.events(t, runId);
    const steps = events.filter((e) => e.type === 'step.completed').map((e) => parseStepResult((e.data as { result: unknown }).result));
    print(values['json'] === true, { runId, end: end.type, steps }, () =>
      [
        `pipeline run ${runId}: ${end.type === 'run.completed' ? green('completed') : red(end.type)}`,
        table(
          ['STEP', 'ROWS', 'BYTES', 'MS', 'DETAIL'],
          steps.map((s) => [s.step, String(s.rows), String(s.bytes), String(s.durationMs), s.entities.map((e) => `${e.name} ${e.rows}`).join(', ')]),
        ),
        ...(end.type === 'run.completed' ? [] : [red(JSON.stringify((end.data as { error?: unknown }).error ?? end.data))]),
      ].join('\n'),
    );
    return end.type === 'run.completed' ? 0 : 1;
  });
}

async function previewCmd(argv: string[], env: NodeJS.ProcessEnv): Promise<number> {
  const { values } = parse(argv, { ...common, connection: { type: 'string' }, sql: { type: 'string' }, 'sql-file': { type: 'string' }, 'timeout-ms': { type: 'string' } }, []);
  const t: TenantId = tenantFlag(values);
  const by = actorFlag(values, env);
  const connection = stringFlag(values, 'connection');
  if (!connection) throw new InvalidArgumentError('--connection <id> is required');
  const inline = stringFlag(values, 'sql');
  const file = stringFlag(values, 'sql-file');
  if ((inline === undefined) === (file === undefined)) throw new InvalidArgumentError('give the query one way: --sql <query> or --sql-file <f>');
  const query = inline ?? readFileSync(file as string, 'utf8');
  const timeoutMs = values['timeout-ms'] === undefined ? undefined : intFlag('timeout-ms', values['timeout-ms'], 5000, 100);
  return withTenant(values, t, Role.Operator, async ({ nc, signer }) => {
    // Signed: the request is what warrants the lease of the connection's credentials.
    const r = await previewQuery(nc, t, { connection, sql: query, by, ...(timeoutMs !== undefined ? { timeoutMs } : {}) }, signer ? { signer } : {});
    print(values['json'] === true, r, () =>
      [
        table(
          r.columns.map((c) => c.name),
          r.rows.map((row) => row.map((c) => (c === null ? dim('null') : c))),
        ),
        dim(`${r.rows.length} row(s)${r.truncated ? ' (more not shown)' : ''}, ${r.cellsTruncated} cell(s) cut, ${r.durationMs} ms`),
      ].join('\n'),
    );
    return 0;
  });
}

/** `capstan datasync put|delete|list|run|preview …` */
export async function datasyncCmd(argv: string[], env: NodeJS.ProcessEnv = process.env): Promise<number> {
  const [verb, ...rest] = argv;
  switch (verb) {
    case 'put':
      return putCmd(rest, env);
    case 'delete':
      return deleteCmd(rest, env);
    case 'list':
      return listCmd(rest);
    case 'run':
      return runCmd(rest);
    case 'preview':
      return previewCmd(rest, env);
    default:
      throw new InvalidArgumentError(`capstan datasync: ${verb ? `unknown verb ${JSON.stringify(verb.slice(0, 32))}` : 'missing verb'}\n${USAGE}`);
  }
}

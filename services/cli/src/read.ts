/**
 * Read commands: runs, run, audit, status --system. They ask the console's API over HTTP
 * with an API token (see `readApi`), never NATS or the database, so they see what the
 * projections hold and only what the token's user may see.
 */
import { parseSince, parseStatus, parseWhere } from '@capstan/kit';
import { CapstanError, CHILD_HANDLER, ErrorCode, UnavailableError } from '@capstan/schemas';
import type { apiPaths, AuditPageResponse, PlatformSystemResponse, RunDetailResponse, RunsPageResponse } from '@capstan/console';
import { intFlag, parse, runIdArg, stringFlag, stringsFlag, tenantFlag } from './args.js';
import { print, readApi, type ReadApi } from './context.js';
import { bold, colorStatus, dim, green, red, table, yellow } from './format.js';

const REQUEST_TIMEOUT_MS = 15_000;
const KNOWN_CODES: readonly string[] = Object.values(ErrorCode);

/**
 * GET the path `path` picks from the console's contract, with the token. The platform's error
 * codes come back as CapstanErrors with the same code; the console refusing the token (401)
 * or the tenant or role (403) as `credentials_invalid` / `permission_denied`, with the
 * console's own code in the message. The contract is loaded here, when a command reads:
 * `@capstan/console` brings in its server, which no other command needs.
 */
export async function apiGet<T>(api: ReadApi, path: (paths: typeof apiPaths) => string, query: readonly (readonly [string, string])[] = []): Promise<T> {
  const u = new URL(api.url + path((await import('@capstan/console')).apiPaths));
  for (const [k, v] of query) u.searchParams.append(k, v);
  let res: Response;
  try {
    res = await fetch(u, { signal: AbortSignal.timeout(REQUEST_TIMEOUT_MS), headers: { accept: 'application/json', authorization: `Bearer ${api.token}` } });
  } catch (e) {
    const cause = (e as { cause?: { code?: string; message?: string } }).cause;
    throw new UnavailableError(`cannot reach the console at ${api.url}: ${cause?.code ?? cause?.message ?? (e as Error).message}`);
  }
  const text = await res.text();
  let body: unknown;
  try {
    body = JSON.parse(text);
  } catch {
    throw new UnavailableError(`the console at ${api.url} answered ${res.status} with something other than JSON`);
  }
  if (!res.ok) {
    const err = (body as { error?: { code?: unknown; message?: unknown } } | null)?.error;
    const code = typeof err?.code === 'string' ? err.code : '';
    const message = typeof err?.message === 'string' ? err.message : `HTTP ${res.status}`;
    if (res.status === 401) throw new CapstanError(ErrorCode.CredentialsInvalid, `the console at ${api.url} refused the API token (${code}): ${message}`);
    if (res.status === 403) throw new CapstanError(ErrorCode.PermissionDenied, `the console at ${api.url} refused (${code}): ${message}`);
    if (KNOWN_CODES.includes(code)) throw new CapstanError(code as ErrorCode, message);
    throw new UnavailableError(`the console at ${api.url} answered ${res.status}: ${message}`);
  }
  return body as T;
}

/** The flags every read command takes: where the console is, the token, and the output. */
export const readFlags = { api: { type: 'string' }, token: { type: 'string' }, json: { type: 'boolean' } } as const;
const readCommon = { ...readFlags, tenant: { type: 'string' } } as const;

const orDash = (v: string | number | null | undefined) => (v === null || v === undefined || v === '' ? '-' : String(v));
const short = (v: unknown, n = 60) => {
  const s = JSON.stringify(v) ?? '';
  return s.length > n ? `${s.slice(0, n - 1)}…` : s;
};

/** `capstan runs --tenant t [--status s] [--workflow w] [--since 1h] [--until …] [--where k=v …] [--limit N] [--cursor c] [--json]` */
export async function runsCmd(argv: string[], env: NodeJS.ProcessEnv = process.env): Promise<number> {
  const { values } = parse(
    argv,
    {
      ...readCommon,
      status: { type: 'string' },
      workflow: { type: 'string' },
      since: { type: 'string' },
      until: { type: 'string' },
      where: { type: 'string', multiple: true },
      limit: { type: 'string' },
      cursor: { type: 'string' },
    },
    [],
  );
  const t = tenantFlag(values);
  const query: [string, string][] = [];
  // Checked here for an early, local error; sent as typed, so `--since 1h` is an hour back
  // by the server's clock, the clock the rows were stamped with.
  const status = stringFlag(values, 'status');
  if (status !== undefined) query.push(['status', parseStatus(status)]);
  const workflow = stringFlag(values, 'workflow');
  if (workflow !== undefined) query.push(['workflow', workflow]);
  for (const name of ['since', 'until'] as const) {
    const v = stringFlag(values, name);
    if (v === undefined) continue;
    parseSince(v);
    query.push([name, v]);
  }
  const where = stringsFlag(values, 'where');
  parseWhere(where);
  for (const w of where) query.push(['where', w]);
  if (values['limit'] !== undefined) query.push(['limit', String(intFlag('limit', values['limit'], 50, 1))]);
  const cursor = stringFlag(values, 'cursor');
  if (cursor !== undefined) query.push(['cursor', cursor]);

  const page = await apiGet<RunsPageResponse>(readApi(values, env), (p) => p.runs(t), query);
  print(values['json'] === true, page, () => {
    if (page.runs.length === 0) return 'no runs';
    const rows = page.runs.map((r) => [
      r.runId,
      `${r.workflow}@${r.version}`,
      colorStatus(r.status),
      r.startedAt,
      orDash(r.endedAt),
      orDash(r.currentStep),
      String(r.attempts),
      r.errorCode ? red(r.errorCode) : '',
    ]);
    const lines = [table(['RUN', 'WORKFLOW', 'STATUS', 'STARTED', 'ENDED', 'STEP', 'ATTEMPTS', 'ERROR'], rows)];
    if (page.nextCursor) lines.push(dim(`more: --cursor ${page.nextCursor}`));
    return lines.join('\n');
  });
  return 0;
}

/** `capstan run <runId> --tenant t [--json]`: the run, its steps as a table, its timeline. */
export async function runCmd(argv: string[], env: NodeJS.ProcessEnv = process.env): Promise<number> {
  const { values, args } = parse(argv, readCommon, ['runId']);
  const t = tenantFlag(values);
  const runId = runIdArg(args[0]);
  const d = await apiGet<RunDetailResponse>(readApi(values, env), (p) => p.run(t, runId));
  print(values['json'] === true, d, () => humanRun(d));
  return 0;
}

function humanRun(d: RunDetailResponse): string {
  const r = d.run;
  const lines = [
    `${bold(r.runId)}  ${r.workflow}@${r.version}  ${colorStatus(r.status)}`,
    `  tenant    ${r.tenant}`,
    `  started   ${r.startedAt}${r.endedAt ? `   ended ${r.endedAt}` : `   updated ${r.updatedAt}`}`,
  ];
  if (r.currentStep) lines.push(`  step      ${r.currentStep}`);
  lines.push(`  attempts  ${r.attempts}`);
  if (d.search.length > 0) lines.push(`  search    ${d.search.map((s) => `${s.key}=${s.value}`).join(', ')}`);
  if (r.errorCode) lines.push(`  error     ${red(`${r.errorCode}: ${r.errorMessage ?? ''}`)}`);
  if (r.retries > 0) lines.push(`  retried   ${r.retries} time(s), last by ${orDash(r.retriedBy)} at ${orDash(r.retriedAt)}`);
  // Lineage, both ways: who started the run, which run it continues, which run continues it.
  if (d.parent) lines.push(`  parent    ${d.parent.runId}${d.parent.step ? dim(`  step ${d.parent.step}`) : ''}`);
  if (d.continuedFrom) lines.push(`  continues ${d.continuedFrom}`);
  if (d.continuedAs) lines.push(`  continued as ${d.continuedAs}`);

  lines.push('', bold('steps'));
  if (d.steps.length === 0) lines.push(dim('  none yet'));
  else {
    const rows = d.steps.map((s) => [
      s.step,
      String(s.attempt),
      colorStatus(s.outcome),
      s.pool,
      orDash(s.worker),
      s.scheduledAt,
      s.durationMs === null ? '-' : `${s.durationMs} ms`,
      s.errorCode ? red(`${s.errorCode}: ${s.errorMessage ?? ''}`) : '',
    ]);
    lines.push(indent(table(['STEP', 'ATTEMPT', 'OUTCOME', 'POOL', 'WORKER', 'SCHEDULED', 'DURATION', 'ERROR'], rows)));
  }

  // Child steps: their rows name the child's workflow (`child:<id>`) and, as their worker, the child run.
  const children = d.steps.filter((s) => s.handler.startsWith(CHILD_HANDLER));
  if (children.length > 0) {
    lines.push('', bold('children'));
    const rows = children.map((s) => [s.step, String(s.attempt), s.handler.slice(CHILD_HANDLER.length), orDash(s.worker), colorStatus(s.outcome)]);
    lines.push(indent(table(['STEP', 'ATTEMPT', 'WORKFLOW', 'CHILD RUN', 'OUTCOME'], rows)));
    lines.push(dim(`  see one: capstan run <child run> --tenant ${r.tenant}`));
  }

  if (d.approvals.length > 0) {
    lines.push('', bold('approvals'));
    const rows = d.approvals.map((a) => [a.step, a.signal, colorStatus(a.status), a.requestedAt, orDash(a.decidedAt), orDash(a.decidedBy), a.reason ? dim(a.reason) : '']);
    lines.push(indent(table(['STEP', 'SIGNAL', 'STATUS', 'REQUESTED', 'DECIDED', 'BY', 'REASON'], rows)));
  }

  lines.push('', bold('timeline'));
  if (d.events.length === 0) lines.push(dim('  no events projected yet'));
  for (const e of d.events) lines.push(`  ${String(e.seq).padStart(4)}  ${e.at}  ${e.type.padEnd(20)} ${dim(`stream seq ${e.streamSeq}`)}`);
  return lines.join('\n');
}

/** `capstan audit --tenant t [--run id] [--since 1h] [--limit N] [--cursor c] [--json]` */
export async function auditCmd(argv: string[], env: NodeJS.ProcessEnv = process.env): Promise<number> {
  const { values } = parse(argv, { ...readCommon, run: { type: 'string' }, since: { type: 'string' }, limit: { type: 'string' }, cursor: { type: 'string' } }, []);
  const t = tenantFlag(values);
  const query: [string, string][] = [];
  const run = stringFlag(values, 'run');
  if (run !== undefined) query.push(['run', runIdArg(run)]);
  const since = stringFlag(values, 'since');
  if (since !== undefined) {
    parseSince(since);
    query.push(['since', since]);
  }
  if (values['limit'] !== undefined) query.push(['limit', String(intFlag('limit', values['limit'], 50, 1))]);
  const cursor = stringFlag(values, 'cursor');
  if (cursor !== undefined) query.push(['cursor', cursor]);

  const page = await apiGet<AuditPageResponse>(readApi(values, env), (p) => p.audit(t), query);
  print(values['json'] === true, page, () => {
    if (page.entries.length === 0) return 'no audit entries';
    // Rows about the fleet (worker admission) belong to no run.
    const rows = page.entries.map((a) => [String(a.id), a.at, orDash(a.runId), String(a.seq), a.kind, orDash(a.actor), dim(short(a.detail))]);
    const lines = [table(['ID', 'AT', 'RUN', 'SEQ', 'KIND', 'ACTOR', 'DETAIL'], rows)];
    if (page.nextCursor) lines.push(dim(`more: --cursor ${page.nextCursor}`));
    return lines.join('\n');
  });
  return 0;
}

/**
 * `capstan status --system [--json]`: the NATS server and the projection lag of each tenant
 * the token's user has. Exit 1 when a tenant's projections do not follow its run stream
 * (`projection_out_of_sync`).
 */
export async function systemStatusCmd(argv: string[], env: NodeJS.ProcessEnv = process.env): Promise<number> {
  const { values } = parse(argv, { ...readFlags, system: { type: 'boolean' } }, []);
  const sys = await apiGet<PlatformSystemResponse>(readApi(values, env), (p) => p.platformSystem);
  print(values['json'] === true, sys, () => humanSystem(sys));
  return sys.projection.some((p) => p.error?.code === ErrorCode.ProjectionOutOfSync) ? 1 : 0;
}

function humanSystem(s: PlatformSystemResponse): string {
  const lines: string[] = [];
  const srv = s.nats?.server;
  const js = s.nats?.jetstream;
  if (!s.nats) lines.push(`NATS        ${yellow('unknown: the console is not connected to NATS')}`);
  else {
    lines.push(`NATS        ${srv ? `nats-server ${srv.version} (${srv.name})` : 'connected'}`);
    if (js) lines.push(`JetStream   ${js.streams} streams, ${js.consumers} consumers, ${mib(js.storageBytes)} on disk, ${mib(js.memoryBytes)} in memory`);
  }
  lines.push('', bold('projection'));
  if (s.projection.length === 0) {
    lines.push(dim('  no tenants'));
    return lines.join('\n');
  }
  const outOfSync = s.projection.filter((p) => p.error?.code === ErrorCode.ProjectionOutOfSync);
  const rows = s.projection.map((p) => [
    p.tenant,
    orDash(p.streamLastSeq),
    String(p.checkpoint),
    p.lag !== null ? (p.lag === 0 ? green('0') : yellow(String(p.lag))) : red(p.error?.code === ErrorCode.ProjectionOutOfSync ? p.error.code : (p.error?.message ?? 'unknown')),
  ]);
  lines.push(indent(table(['TENANT', 'STREAM SEQ', 'CHECKPOINT', 'LAG'], rows)));
  for (const p of outOfSync) lines.push('', red(`${p.tenant}: ${p.error?.code}: ${p.error?.message}`));
  return lines.join('\n');
}

function mib(bytes: number): string {
  return `${(bytes / (1024 * 1024)).toFixed(1)} MiB`;
}

function indent(s: string): string {
  return s
    .split('\n')
    .map((l) => `  ${l}`)
    .join('\n');
}

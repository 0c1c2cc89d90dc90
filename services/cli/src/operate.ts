/**
 * Operator commands: approvals (list, approve, deny), retry of a failed run, and worker
 * admission (list, approve, revoke). Lists read the projections through the console's API,
 * like `capstan runs`; actions publish the same NATS commands the console does, through the kit
 * client, and wait for the orchestrator's answer, so a refused action exits non-zero with
 * its error code (`approval_not_waiting`, `run_not_retryable`, …).
 */
import { userInfo } from 'node:os';
import { createClient, restoreCredential, revokeCredential, type WorkerAdmission } from '@capstan/kit';
import type { ApprovalsResponse, WorkersResponse } from '@capstan/console';
import { actorSchema, InvalidArgumentError, Role, type SchemaError, WORKER_ID_PATTERN, type RunEvent, type TenantId, CapstanError, ErrorCode } from '@capstan/schemas';
import { intFlag, parse, runIdArg, stringFlag, tenantFlag } from './args.js';
import { authDir, print, readApi, withAdmin, withTenant } from './context.js';
import { colorStatus, dim, green, red, table, yellow } from './format.js';
import { apiGet, readFlags } from './read.js';

const orDash = (v: string | number | null | undefined) => (v === null || v === undefined || v === '' ? '-' : String(v));

/**
 * `--as`, else `$CAPSTAN_USER`, else the login name: who the action is recorded as. Checked
 * here (printable, at most 128 characters) so a bad value is a usage error, not a dead letter.
 */
export function actorFlag(values: Record<string, unknown>, env: NodeJS.ProcessEnv): string {
  let raw = stringFlag(values, 'as') ?? env['CAPSTAN_USER'];
  if (raw === undefined || (raw === '' && values['as'] === undefined)) {
    try {
      raw = userInfo().username;
    } catch {
      raw = '';
    }
  }
  if (!raw) throw new InvalidArgumentError('--as <user> is required (or set CAPSTAN_USER): the action is recorded with its author');
  try {
    return actorSchema.parse(raw, 'as');
  } catch (e) {
    throw new InvalidArgumentError(`--as ${JSON.stringify(raw.slice(0, 64))}: ${CapstanError.is(e, ErrorCode.SchemaViolation) ? (e as SchemaError).problem : String(e)}`);
  }
}

function reasonFlag(values: Record<string, unknown>): string | undefined {
  const r = stringFlag(values, 'reason');
  if (r !== undefined && r.length > 500) throw new InvalidArgumentError('--reason must have at most 500 characters');
  return r === '' ? undefined : r;
}

const actionFlags = {
  nats: { type: 'string' },
  tenant: { type: 'string' },
  as: { type: 'string' },
  reason: { type: 'string' },
  timeout: { type: 'string' },
  json: { type: 'boolean' },
} as const;

// ---------------------------------------------------------------------------------------
// Approvals.

const APPROVAL_STATUSES = ['waiting', 'approved', 'denied', 'expired', 'all'] as const;

/** `capstan approvals --tenant t [--status waiting|approved|denied|all] [--limit N] [--json]` */
export async function approvalsCmd(argv: string[], env: NodeJS.ProcessEnv = process.env): Promise<number> {
  const { values } = parse(argv, { ...readFlags, tenant: { type: 'string' }, status: { type: 'string' }, limit: { type: 'string' } }, []);
  const t = tenantFlag(values);
  const status = stringFlag(values, 'status') ?? 'waiting';
  if (!(APPROVAL_STATUSES as readonly string[]).includes(status))
    throw new InvalidArgumentError(`--status must be one of ${APPROVAL_STATUSES.join(', ')}; got ${JSON.stringify(status.slice(0, 40))}`);
  const query: [string, string][] = status === 'all' ? [] : [['status', status]];
  if (values['limit'] !== undefined) query.push(['limit', String(intFlag('limit', values['limit'], 50, 1))]);
  const res = await apiGet<ApprovalsResponse>(readApi(values, env), (p) => p.approvals(t), query);
  print(values['json'] === true, res, () => {
    if (res.approvals.length === 0) return status === 'waiting' ? 'no approvals waiting' : 'no approvals';
    const rows = res.approvals.map((a) => [
      a.runId,
      a.step,
      a.signal,
      colorStatus(a.status),
      a.requestedAt,
      orDash(a.decidedBy),
      orDash(a.decidedAt),
      a.reason ? dim(a.reason) : '',
    ]);
    const lines = [table(['RUN', 'STEP', 'SIGNAL', 'STATUS', 'REQUESTED', 'DECIDED BY', 'DECIDED', 'REASON'], rows)];
    if (status === 'waiting') lines.push(dim(`decide with: capstan approve|deny <run> <step> --tenant ${t} --as <you> [--reason …]`));
    return lines.join('\n');
  });
  return 0;
}

async function decideCmd(argv: string[], verb: 'approve' | 'deny', env: NodeJS.ProcessEnv): Promise<number> {
  const { values, args } = parse(argv, actionFlags, ['runId', 'step']);
  const t = tenantFlag(values);
  const runId = runIdArg(args[0]);
  const step = args[1] as string;
  const by = actorFlag(values, env);
  const reason = reasonFlag(values);
  const timeoutMs = intFlag('timeout', values['timeout'], 15, 1) * 1000;
  return withTenant(
    values,
    t,
    Role.Operator,
    async (conn) => {
      const client = await createClient(conn);
      const opts = { by, ...(reason !== undefined ? { reason } : {}), timeoutMs };
      const ev = verb === 'approve' ? await client.approve(t, runId, step, opts) : await client.deny(t, runId, step, opts);
      // Who the run recorded: the signing credential's name (with --creds, that of the credential, not --as).
      const as = recordedBy(ev, by);
      print(values['json'] === true, ev, () =>
        verb === 'approve' ? `${green('approved')} step ${step} of ${runId} as ${as}` : `${red('denied')} step ${step} of ${runId} as ${as}: the run fails (approval_denied)`,
      );
      return 0;
    },
    by,
  );
}

function recordedBy(ev: RunEvent, fallback: string): string {
  const by = (ev.data as { by?: unknown }).by;
  return typeof by === 'string' ? by : fallback;
}

/** `capstan approve <runId> <step> --tenant t [--as user] [--reason text] [--timeout s] [--json]` */
export function approveCmd(argv: string[], env: NodeJS.ProcessEnv = process.env): Promise<number> {
  return decideCmd(argv, 'approve', env);
}

/** `capstan deny <runId> <step> --tenant t [--as user] [--reason text] [--timeout s] [--json]` */
export function denyCmd(argv: string[], env: NodeJS.ProcessEnv = process.env): Promise<number> {
  return decideCmd(argv, 'deny', env);
}

// ---------------------------------------------------------------------------------------
// Retry.

/** `capstan retry <runId> --tenant t [--as user] [--reason text] [--timeout s] [--json]` */
export async function retryCmd(argv: string[], env: NodeJS.ProcessEnv = process.env): Promise<number> {
  const { values, args } = parse(argv, actionFlags, ['runId']);
  const t = tenantFlag(values);
  const runId = runIdArg(args[0]);
  const by = actorFlag(values, env);
  const reason = reasonFlag(values);
  const timeoutMs = intFlag('timeout', values['timeout'], 15, 1) * 1000;
  return withTenant(
    values,
    t,
    Role.Operator,
    async (conn) => {
      const ev: RunEvent = await (await createClient(conn)).retry(t, runId, { by, ...(reason !== undefined ? { reason } : {}), timeoutMs });
      print(values['json'] === true, ev, () => `${green('retried')} ${runId} as ${recordedBy(ev, by)}: the failed step runs again (event ${ev.seq})`);
      return 0;
    },
    by,
  );
}

// ---------------------------------------------------------------------------------------
// Workers.

function colorAdmission(s: string): string {
  if (s === 'approved') return green(s);
  if (s === 'revoked') return red(s);
  return yellow(s);
}

/**
 * `capstan workers --tenant t [--json]`: the fleet with admission state;
 * `capstan workers approve|revoke <workerId> --tenant t [--as user] [--reason text] [--json]`.
 */
export async function workersCmd(argv: string[], env: NodeJS.ProcessEnv = process.env): Promise<number> {
  const [verb, ...rest] = argv;
  if (verb === 'approve' || verb === 'revoke') return admitCmd(rest, verb, env);
  const { values } = parse(argv, { ...readFlags, tenant: { type: 'string' } }, []);
  const t = tenantFlag(values);
  const res = await apiGet<WorkersResponse>(readApi(values, env), (p) => p.workers(t));
  print(values['json'] === true, res, () => {
    if (res.workers.length === 0) return 'no workers have announced themselves';
    const rows = res.workers.map((w) => [
      w.workerId,
      colorAdmission(w.admission),
      orDash(w.admissionBy),
      orDash(w.admissionAt),
      w.pools.join(','),
      String(w.running),
      w.lastSeenAt,
    ]);
    const lines = [table(['WORKER', 'ADMISSION', 'BY', 'CHANGED', 'POOLS', 'RUNNING', 'LAST SEEN'], rows)];
    if (res.workers.some((w) => w.admission === 'pending')) lines.push(dim(`admit with: capstan workers approve <worker> --tenant ${t}`));
    return lines.join('\n');
  });
  return 0;
}

async function admitCmd(argv: string[], verb: 'approve' | 'revoke', env: NodeJS.ProcessEnv): Promise<number> {
  const { values, args } = parse(argv, { nats: { type: 'string' }, tenant: { type: 'string' }, as: { type: 'string' }, reason: { type: 'string' }, json: { type: 'boolean' } }, [
    'workerId',
  ]);
  const t: TenantId = tenantFlag(values);
  const workerId = args[0] as string;
  if (!WORKER_ID_PATTERN.test(workerId)) throw new InvalidArgumentError(`${JSON.stringify(workerId.slice(0, 80))} is not a worker id (${WORKER_ID_PATTERN.source})`);
  const by = actorFlag(values, env);
  const reason = reasonFlag(values);
  // With the key store at hand, the decision reaches the worker's credential first (the
  // fleet authority, `capstan auth serve`, does the same for decisions made elsewhere): a
  // revoked worker is cut off before it could act on the record.
  const credential = await actOnCredential(values, t, workerId, verb);
  const a: WorkerAdmission = await withTenant(values, t, Role.Operator, async (conn) => {
    const client = await createClient(conn);
    const opts = { by, ...(reason !== undefined ? { reason } : {}) };
    return verb === 'approve' ? client.approveWorker(t, workerId, opts) : client.revokeWorker(t, workerId, opts);
  });
  print(values['json'] === true, { ...a, ...(credential ? { credential } : {}) }, () =>
    [`worker ${workerId} ${colorAdmission(a.state)} in ${t} by ${a.by} at ${new Date(a.at).toISOString()}`, ...(credential ? [dim(`  its credential: ${credential}`)] : [])].join(
      '\n',
    ),
  );
  return 0;
}

async function actOnCredential(values: Record<string, unknown>, t: TenantId, workerId: string, verb: 'approve' | 'revoke'): Promise<string | undefined> {
  if (!authDir(values, process.env)) return undefined;
  return withAdmin(values, async (admin) => {
    const user = admin.store.user(t, workerId);
    if (!user || user.role !== Role.Worker) return undefined;
    if (verb === 'revoke') {
      if (user.revokedAt === undefined) await revokeCredential(admin, t, workerId);
      return 'revoked at the server (its connections are closed, it cannot reconnect)';
    }
    if (user.revokedAt !== undefined) await restoreCredential(admin, t, workerId);
    return 'in force';
  });
}

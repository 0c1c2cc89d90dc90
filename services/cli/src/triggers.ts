/**
 * `capstan schedules …` and `capstan routes …`: runs on a schedule and from webhooks.
 * Schedule changes are commands the orchestrator judges (a refusal exits 1 with its code);
 * routes are records written directly. Both read back from the tenant's streams.
 */
import { listRoutes, listSchedules, nextSlots, parseEvery, readRoute, sendScheduleCommand, writeRoute, type ScheduleView } from '@capstan/kit';
import {
  CatchupPolicy,
  InvalidArgumentError,
  OverlapPolicy,
  Role,
  SECRET_NAME_PATTERN,
  TRIGGER_ID_PATTERN,
  type JsonValue,
  type ScheduleSpec,
  type TenantId,
  type WebhookRoute,
} from '@capstan/schemas';
import { intFlag, jsonFlag, parse, stringFlag, stringsFlag, tenantFlag } from './args.js';
import { print, withTenant } from './context.js';
import { colorStatus, dim, table } from './format.js';
import { actorFlag } from './operate.js';

const SCHEDULES_USAGE = `usage:
  capstan schedules create <id> --tenant <t> --workflow <w> (--cron <expr> [--timezone <IANA>] | --every <30s|5m|1h|1d>)
                    [--input <json>] [--start <iso>] [--end <iso>] [--overlap skip|buffer-one|allow-all]
                    [--catchup skip|last|all] [--catchup-window <1h>] [--as <user>] [--reason <text>] [--json]
  capstan schedules list --tenant <t> [--all] [--next N] [--json]
  capstan schedules pause|resume|trigger|delete <id> --tenant <t> [--as <user>] [--reason <text>] [--json]`;

const ROUTES_USAGE = `usage:
  capstan routes create <id> --tenant <t> --workflow <w> --secret <NAME> [--secret <NAME> …]
                 [--field key=/json/pointer …] [--as <user>] [--reason <text>] [--json]
  capstan routes list --tenant <t> [--all] [--json]
  capstan routes enable|disable|delete <id> --tenant <t> [--as <user>] [--reason <text>]`;

const common = {
  nats: { type: 'string' },
  tenant: { type: 'string' },
  as: { type: 'string' },
  reason: { type: 'string' },
  json: { type: 'boolean' },
  timeout: { type: 'string' },
} as const;

function idArg(kind: string, raw: string | undefined): string {
  if (!raw || !TRIGGER_ID_PATTERN.test(raw)) throw new InvalidArgumentError(`${JSON.stringify((raw ?? '').slice(0, 64))} is not a ${kind} id (${TRIGGER_ID_PATTERN.source})`);
  return raw;
}

function oneOf<T extends string>(name: string, raw: string | undefined, values: readonly T[]): T | undefined {
  if (raw === undefined) return undefined;
  if (!(values as readonly string[]).includes(raw)) throw new InvalidArgumentError(`--${name} must be one of ${values.join(', ')}; got ${JSON.stringify(raw.slice(0, 40))}`);
  return raw as T;
}

function isoFlag(name: string, raw: string | undefined): string | undefined {
  if (raw === undefined) return undefined;
  const ms = Date.parse(raw);
  if (Number.isNaN(ms)) throw new InvalidArgumentError(`--${name} must be an ISO 8601 time with a zone, such as 2030-01-01T09:00:00Z`);
  return new Date(ms).toISOString();
}

const when = (ms: number | undefined) => (ms === undefined ? '-' : new Date(ms).toISOString().replace('.000Z', 'Z'));

/** Next firing times of a schedule as it stands (none when paused, deleted or ended). */
export function upcoming(s: ScheduleView, now: number, n: number): number[] {
  if (s.record.status !== 'active') return [];
  return nextSlots(s.record.spec, s.record.anchorMs, now, n);
}

export async function schedulesCmd(argv: string[], env: NodeJS.ProcessEnv = process.env): Promise<number> {
  const [sub, ...rest] = argv;
  if (sub === 'list') {
    const { values } = parse(rest, { ...common, all: { type: 'boolean' }, next: { type: 'string' } }, []);
    const t = tenantFlag(values);
    const n = intFlag('next', values['next'], 1, 1);
    const all = await withTenant(values, t, Role.Operator, (tc) => listSchedules(tc.jsm, t));
    const shown = all.filter((s) => values['all'] === true || s.record.status !== 'deleted');
    const now = Date.now();
    const out = shown.map((s) => ({ ...s, next: upcoming(s, now, n) }));
    print(values['json'] === true, out, () => {
      if (out.length === 0) return `no schedules in ${t}${dim(` (make one: ${SCHEDULES_USAGE.split('\n')[1]?.trim() ?? ''})`)}`;
      return table(
        ['SCHEDULE', 'STATUS', 'WHEN', 'WORKFLOW', 'OVERLAP', 'CATCH-UP', 'NEXT', 'STARTED', 'LAST RUN'],
        out.map((s) => {
          const { spec } = s.record;
          const rule = spec.cron !== undefined ? `${spec.cron}${spec.timezone ? ` ${spec.timezone}` : ''}` : `every ${spec.everyMs ?? 0} ms`;
          return [
            s.record.schedule,
            colorStatus(s.record.status),
            rule,
            spec.workflow,
            spec.overlap ?? 'skip',
            spec.catchup ?? 'all',
            s.next.map(when).join(' ') || '-',
            String(s.state?.started ?? 0),
            s.state?.last?.runId ?? '-',
          ];
        }),
      );
    });
    return 0;
  }
  if (sub === 'create') {
    const { values, args } = parse(
      rest,
      {
        ...common,
        workflow: { type: 'string' },
        cron: { type: 'string' },
        timezone: { type: 'string' },
        every: { type: 'string' },
        input: { type: 'string' },
        start: { type: 'string' },
        end: { type: 'string' },
        overlap: { type: 'string' },
        catchup: { type: 'string' },
        'catchup-window': { type: 'string' },
      },
      ['id'],
    );
    const t = tenantFlag(values);
    const id = idArg('schedule', args[0]);
    const workflow = stringFlag(values, 'workflow');
    if (!workflow) throw new InvalidArgumentError('--workflow <id> is required');
    const cron = stringFlag(values, 'cron');
    const every = stringFlag(values, 'every');
    if ((cron === undefined) === (every === undefined)) throw new InvalidArgumentError('give exactly one of --cron <expr> and --every <interval>');
    const input = jsonFlag('input', values['input']);
    if (input !== undefined && (typeof input !== 'object' || input === null || Array.isArray(input))) throw new InvalidArgumentError('--input must be a JSON object');
    const start = isoFlag('start', stringFlag(values, 'start'));
    const end = isoFlag('end', stringFlag(values, 'end'));
    const timezone = stringFlag(values, 'timezone');
    const overlap = oneOf<OverlapPolicy>('overlap', stringFlag(values, 'overlap'), Object.values(OverlapPolicy));
    const catchup = oneOf<CatchupPolicy>('catchup', stringFlag(values, 'catchup'), Object.values(CatchupPolicy));
    const window = stringFlag(values, 'catchup-window');
    const spec: ScheduleSpec = {
      workflow,
      ...(cron !== undefined ? { cron } : { everyMs: parseEvery(every ?? '') }),
      ...(timezone !== undefined ? { timezone } : {}),
      ...(input !== undefined ? { input: input as { [k: string]: JsonValue } } : {}),
      ...(start !== undefined ? { startAt: start } : {}),
      ...(end !== undefined ? { endAt: end } : {}),
      ...(overlap !== undefined ? { overlap } : {}),
      ...(catchup !== undefined ? { catchup } : {}),
      ...(window !== undefined ? { catchupWindowMs: parseEvery(window) } : {}),
    };
    return scheduleChange(values, env, t, { op: 'create', schedule: id, spec });
  }
  if (sub === 'pause' || sub === 'resume' || sub === 'trigger' || sub === 'delete') {
    const { values, args } = parse(rest, common, ['id']);
    return scheduleChange(values, env, tenantFlag(values), { op: sub, schedule: idArg('schedule', args[0]) });
  }
  throw new InvalidArgumentError(sub ? `unknown schedules command ${JSON.stringify(sub.slice(0, 40))}; ${SCHEDULES_USAGE}` : SCHEDULES_USAGE);
}

async function scheduleChange(
  values: Record<string, unknown>,
  env: NodeJS.ProcessEnv,
  t: TenantId,
  change: { op: 'create'; schedule: string; spec: ScheduleSpec } | { op: 'pause' | 'resume' | 'trigger' | 'delete'; schedule: string },
): Promise<number> {
  const by = actorFlag(values, env);
  const reason = stringFlag(values, 'reason');
  const timeoutMs = intFlag('timeout', values['timeout'], 15, 1) * 1000;
  const stored = await withTenant(values, t, Role.Operator, (tc) => sendScheduleCommand(tc.js, tc.jsm, t, { ...change, by, ...(reason ? { reason } : {}) }, timeoutMs));
  const r = stored.record;
  print(values['json'] === true, stored, () => {
    const next = r.status === 'active' ? nextSlots(r.spec, r.anchorMs, Date.now(), 1)[0] : undefined;
    const tail = change.op === 'trigger' ? `started run ${r.change.runId ?? '?'}` : r.status === 'active' ? `next firing ${when(next)}` : r.status;
    return `schedule ${r.schedule}: ${change.op} recorded (${tail})`;
  });
  return 0;
}

export async function routesCmd(argv: string[], env: NodeJS.ProcessEnv = process.env): Promise<number> {
  const [sub, ...rest] = argv;
  if (sub === 'list') {
    const { values } = parse(rest, { ...common, all: { type: 'boolean' } }, []);
    const t = tenantFlag(values);
    const all = await withTenant(values, t, Role.Operator, (tc) => listRoutes(tc.jsm, t));
    const shown = all.filter((r) => values['all'] === true || r.record.status !== 'deleted');
    print(values['json'] === true, shown, () => {
      if (shown.length === 0) return `no webhook routes in ${t}`;
      return table(
        ['ROUTE', 'STATUS', 'WORKFLOW', 'SECRETS', 'FIELDS', 'PATH'],
        shown.map(({ record: r }) => [
          r.route,
          colorStatus(r.status),
          r.workflow,
          r.secrets.join(','),
          r.fields
            ? Object.entries(r.fields)
                .map(([k, p]) => `${k}=${p}`)
                .join(' ')
            : '(body)',
          `/hooks/${t}/${r.route}`,
        ]),
      );
    });
    return 0;
  }
  if (sub === 'create') {
    const { values, args } = parse(rest, { ...common, workflow: { type: 'string' }, secret: { type: 'string', multiple: true }, field: { type: 'string', multiple: true } }, [
      'id',
    ]);
    const t = tenantFlag(values);
    const id = idArg('route', args[0]);
    const workflow = stringFlag(values, 'workflow');
    if (!workflow) throw new InvalidArgumentError('--workflow <id> is required');
    const secrets = stringsFlag(values, 'secret');
    if (secrets.length === 0) throw new InvalidArgumentError('--secret <NAME> is required (a whsec_… value stored with `capstan secrets put`); give it twice while rotating');
    for (const s of secrets)
      if (!SECRET_NAME_PATTERN.test(s)) throw new InvalidArgumentError(`--secret ${JSON.stringify(s.slice(0, 64))} is not a secret name (${SECRET_NAME_PATTERN.source})`);
    const fields: Record<string, string> = {};
    for (const f of stringsFlag(values, 'field')) {
      const eq = f.indexOf('=');
      if (eq < 1) throw new InvalidArgumentError(`--field ${JSON.stringify(f.slice(0, 64))} must be key=/json/pointer`);
      fields[f.slice(0, eq)] = f.slice(eq + 1);
    }
    const reason = stringFlag(values, 'reason');
    const route: WebhookRoute = {
      route: id,
      workflow,
      secrets,
      status: 'enabled',
      by: actorFlag(values, env),
      ...(Object.keys(fields).length > 0 ? { fields } : {}),
      ...(reason ? { reason } : {}),
    };
    const stored = await withTenant(values, t, Role.Operator, (tc) => writeRoute(tc.js, tc.jsm, t, route));
    print(values['json'] === true, stored, () => `route ${id} saved: POST /hooks/${t}/${id} starts ${workflow} (signed with ${secrets.join(' or ')})`);
    return 0;
  }
  if (sub === 'enable' || sub === 'disable' || sub === 'delete') {
    const { values, args } = parse(rest, common, ['id']);
    const t = tenantFlag(values);
    const id = idArg('route', args[0]);
    const reason = stringFlag(values, 'reason');
    const by = actorFlag(values, env);
    const stored = await withTenant(values, t, Role.Operator, async (c) => {
      const cur = await readRoute(c.jsm, t, id);
      if (!cur || cur.record.status === 'deleted') throw new InvalidArgumentError(`tenant ${t} has no webhook route ${id}`);
      const status = sub === 'enable' ? 'enabled' : sub === 'disable' ? 'disabled' : 'deleted';
      const { reason: _r, ...rest } = cur.record;
      return writeRoute(c.js, c.jsm, t, { ...rest, status, by, ...(reason ? { reason } : {}) });
    });
    print(values['json'] === true, stored, () => `route ${id}: ${stored.record.status}`);
    return 0;
  }
  throw new InvalidArgumentError(sub ? `unknown routes command ${JSON.stringify(sub.slice(0, 40))}; ${ROUTES_USAGE}` : ROUTES_USAGE);
}

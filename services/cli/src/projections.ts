/**
 * Projection commands: `capstan migrate` (bring the projection schema up to date) and
 * `capstan projections rebuild|verify` (make the Postgres projections again from the run
 * streams, or check them against the streams). They need the database: `--db <url>`, else
 * `DATABASE_URL`.
 */
import { sql } from 'drizzle-orm';
import { createLogger, dbErrorMessage, migrate, openDatabase, type Database } from '@capstan/kit';
import { rebuildProjections, verifyProjections, type Mismatch, type RebuildResult, type VerifyReport } from '@capstan/projector';
import { InvalidArgumentError, Role, UnavailableError, type TenantId } from '@capstan/schemas';
import { parse, tenantFlag } from './args.js';
import { print, withTenants } from './context.js';
import { bold, dim, green, red } from './format.js';

const PROJECTIONS_USAGE = 'usage: capstan projections rebuild|verify [--tenant <t>] [--json] [--db <url>] [--nats <url>]';
/** Mismatches listed in the human report; `--json` has all of them. */
const MAX_LISTED = 200;

/** `--db`, else `DATABASE_URL`; these commands have no default database. */
export function databaseUrl(flag: unknown, env: NodeJS.ProcessEnv): string {
  if (typeof flag === 'string' && flag) return flag;
  if (env['DATABASE_URL']) return env['DATABASE_URL'];
  throw new InvalidArgumentError('no database: pass --db <postgres://…> or set DATABASE_URL');
}

/** Opens the database and makes sure it answers, so an unreachable one is one clear error. */
async function withDatabase<T>(flag: unknown, fn: (d: Database) => Promise<T>): Promise<T> {
  const log = createLogger('cli', 'error', process.stderr);
  const d = await openDatabase({ url: databaseUrl(flag, process.env), log, poolSize: 2 });
  try {
    try {
      await d.db.execute(sql`select 1`);
    } catch (e) {
      throw new UnavailableError(`cannot reach the database at ${d.where}: ${dbErrorMessage(e)}`, { cause: e });
    }
    return await fn(d);
  } finally {
    await d.close();
  }
}

const n = (x: number) => x.toLocaleString('en-US');
const plural = (x: number, one: string, many = `${one}s`) => `${n(x)} ${x === 1 ? one : many}`;

/** `capstan migrate [--db <url>] [--json]` */
export async function migrateCmd(argv: string[]): Promise<number> {
  const { values } = parse(argv, { db: { type: 'string' }, json: { type: 'boolean' } }, []);
  return withDatabase(values['db'], async (d) => {
    await migrate(d);
    print(values['json'] === true, { migrated: true, database: d.where }, () => `projection schema up to date at ${d.where}`);
    return 0;
  });
}

/** `capstan projections rebuild|verify [--tenant <t>] [--json] [--db <url>] [--nats <url>]` */
export async function projectionsCmd(argv: string[]): Promise<number> {
  const [sub, ...rest] = argv;
  if (sub !== 'rebuild' && sub !== 'verify') {
    throw new InvalidArgumentError(sub ? `unknown projections command ${JSON.stringify(sub)}; ${PROJECTIONS_USAGE}` : PROJECTIONS_USAGE);
  }
  const { values } = parse(rest, { db: { type: 'string' }, nats: { type: 'string' }, tenant: { type: 'string' }, json: { type: 'boolean' } }, []);
  const json = values['json'] === true;
  const only = values['tenant'] === undefined ? undefined : tenantFlag(values);
  const url = databaseUrl(values['db'], process.env);
  // The projector's own read-only role: streams and the projector's consumer, nothing else.
  return withTenants(values, Role.Projector, only, async ({ tenants, tenant }) => {
    const jsm = async (t: TenantId) => (await tenant(t)).jsm;
    return withDatabase(url, async (d) => {
      if (sub === 'rebuild') {
        // A fresh database can be rebuilt into: the schema comes first.
        await migrate(d);
        const r = await rebuildProjections(d, jsm, tenants);
        print(json, r, () => rebuildReport(r));
        return 0;
      }
      const r = await verifyProjections(d, jsm, tenants);
      print(json, r, () => verifyReport(r));
      // The exit code says which: 1 rows differ from the streams (a rebuild repairs them),
      // 4 a run's event chain is broken (the stream itself; a rebuild cannot), 5 both.
      return (r.mismatches.length > 0 ? 1 : 0) | (r.brokenChains.length > 0 ? 4 : 0);
    });
  });
}

function rebuildReport(r: RebuildResult): string {
  const lines = r.tenants.map(
    (t) =>
      `rebuilt ${bold(t.tenant)}: ${plural(t.messages, 'event')}${t.deadLetters > 0 ? ` (${plural(t.deadLetters, 'dead letter')})` : ''}, checkpoint ${n(t.checkpoint)}, ${t.elapsedMs.toFixed(0)} ms`,
  );
  lines.push(`rebuilt ${plural(r.tenants.length, 'tenant')}, ${plural(r.messages, 'event')} in ${r.elapsedMs.toFixed(0)} ms`);
  return lines.join('\n');
}

function value(v: unknown): string {
  return typeof v === 'string' ? JSON.stringify(v) : (JSON.stringify(v) ?? 'null');
}

function mismatchLine(m: Mismatch): string {
  const where = `${m.table} ${m.runId || '-'}${m.key ? ` ${m.key}` : ''}`;
  if (m.field === '(row)') return `  ${where}: row ${m.expected === 'present' ? 'missing' : 'should not exist'}`;
  return `  ${where} ${bold(m.field)}: expected ${value(m.expected)}, found ${value(m.found)}`;
}

function verifyReport(r: VerifyReport): string {
  const lines: string[] = [];
  for (const t of r.tenants) {
    const problems = t.mismatches + t.brokenChains;
    const head = problems === 0 ? green('ok') : red(`${plural(t.mismatches, 'mismatch', 'mismatches')}, ${plural(t.brokenChains, 'broken chain')}`);
    const behind = t.streamLastSeq > t.checkpoint ? dim(` (projector ${plural(t.streamLastSeq - t.checkpoint, 'message')} behind: not checked yet)`) : '';
    lines.push(
      `verify ${bold(t.tenant)}: ${head} — ${plural(t.runs, 'run')}, ${plural(t.events, 'event')} up to stream seq ${n(t.checkpoint)}${t.deadLetters > 0 ? `, ${plural(t.deadLetters, 'dead letter')}` : ''}${behind}`,
    );
    const mine = r.mismatches.filter((m) => m.tenant === t.tenant);
    for (const m of mine.slice(0, MAX_LISTED)) lines.push(mismatchLine(m));
    if (mine.length > MAX_LISTED) lines.push(dim(`  … and ${n(mine.length - MAX_LISTED)} more (--json lists every one)`));
    for (const c of r.brokenChains.filter((x) => x.tenant === t.tenant)) lines.push(`  chain ${c.runId} (${c.where}): ${c.problem}`);
  }
  const bad = r.tenants.filter((t) => t.mismatches + t.brokenChains > 0).length;
  lines.push(
    r.ok
      ? green(`projections match the streams (${plural(r.tenants.length, 'tenant')}, ${r.elapsedMs.toFixed(0)} ms)`)
      : red(`projections differ from the streams in ${bad} of ${plural(r.tenants.length, 'tenant')}`),
  );
  return lines.join('\n');
}

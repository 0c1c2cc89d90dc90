/**
 * Incident review: `capstan export` writes runs to one checksummed file (see kit's
 * export-file.ts), and `capstan replay --from <file>` refolds them on any machine, with no
 * NATS, Postgres or service: each run through the workflow version it recorded (from
 * `CAPSTAN_WORKFLOWS`), its divergence as the precise diff, and with `--recheck-policy` every
 * recorded policy decision decided again, in-process, under the exported policy text.
 */
import { readFileSync, writeFileSync } from 'node:fs';
import { foldRun, statusFromEvents, type Registry, type TimelineEntry } from '@capstan/actors';
import { exportRuns, parseTime, readExport, workflowFingerprint, type ExportContents, type ExportScope } from '@capstan/kit';
import { loadWorkflows } from '@capstan/orchestrator';
import { compilePolicySet, decideAll, type CompileResult } from '@capstan/policy';
import {
  CapstanError,
  type DeterminismViolationError,
  ErrorCode,
  InvalidArgumentError,
  PolicyAction,
  Role,
  type PolicyDecision,
  type PolicyQuery,
  type RunEvent,
  type TenantId,
} from '@capstan/schemas';
import { parse, runIdArg, stringFlag, stringsFlag, tenantFlag } from './args.js';
import { print, withTenant } from './context.js';
import { bold, green, red, timelineLine, dim } from './format.js';

/** One recorded policy decision, decided again. */
export interface Recheck {
  readonly seq: number;
  readonly what: string;
  readonly version: number;
  readonly recorded: string;
  readonly now: string;
  readonly policies: string;
  readonly same: boolean;
}

/**
 * Every policy decision a run recorded (with a version: 0 is "none in force"), decided again
 * by `decideAt` under the version it names, with the questions the run recorded.
 */
export async function recheckDecisions(events: readonly RunEvent[], decideAt: (version: number, queries: PolicyQuery[]) => Promise<PolicyDecision>): Promise<Recheck[]> {
  const out: Recheck[] = [];
  const started = events[0];
  const workflow = started?.type === 'run.started' ? started.data.workflow : '';
  const row = (seq: number, what: string, version: number, recorded: string, now: PolicyDecision): Recheck => ({
    seq,
    what,
    version,
    recorded,
    now: now.decision,
    policies: now.policies.join(', '),
    same: now.decision === recorded,
  });
  for (const e of events) {
    if (e.type === 'policy.decided') {
      const asked = [...events].reverse().find((q) => q.type === 'policy.requested' && q.seq < e.seq && q.data.step === e.data.step);
      if (!asked || asked.type !== 'policy.requested' || e.data.version === 0) continue;
      out.push(row(e.seq, `step ${e.data.step}`, e.data.version, e.data.decision, await decideAt(e.data.version, asked.data.queries as unknown as PolicyQuery[])));
    } else if (e.type === 'credential.decided' && e.data.version > 0) {
      const q = [{ action: PolicyAction.RequestCredential, workflow, step: e.data.step, secret: e.data.name }] as PolicyQuery[];
      out.push(row(e.seq, `credential ${e.data.name}`, e.data.version, e.data.decision, await decideAt(e.data.version, q)));
    }
  }
  return out;
}

export function recheckLine(r: Recheck): string {
  return r.same
    ? green(`policy at event ${r.seq}: ${r.what} → ${r.recorded} again under version ${r.version}`)
    : red(`policy at event ${r.seq}: ${r.what} → recorded ${r.recorded}, version ${r.version} now says ${r.now}${r.policies ? ` (${r.policies})` : ''}`);
}

// ---------------------------------------------------------------------------------------
// capstan export

export async function exportCmd(argv: string[], registryFor: () => Promise<Registry | undefined> = defaultRegistry): Promise<number> {
  const { values } = parse(
    argv,
    {
      nats: { type: 'string' },
      tenant: { type: 'string' },
      run: { type: 'string', multiple: true },
      since: { type: 'string' },
      until: { type: 'string' },
      out: { type: 'string' },
      gzip: { type: 'boolean' },
      json: { type: 'boolean' },
    },
    [],
  );
  const t = tenantFlag(values);
  const out = stringFlag(values, 'out');
  if (!out) throw new InvalidArgumentError('--out <file> is required (a name ending in .gz is written compressed)');
  const runs = stringsFlag(values, 'run').map((r) => runIdArg(r));
  const since = stringFlag(values, 'since');
  if (runs.length > 0 === (since !== undefined)) throw new InvalidArgumentError('give --run <id> (repeatable) or --since <time> [--until <time>], not both');
  const now = Date.now();
  const until = stringFlag(values, 'until');
  const scope: ExportScope =
    since !== undefined ? { since: parseTime('since', since, now).toISOString(), until: (until ? parseTime('until', until, now) : new Date(now)).toISOString() } : { runs };
  if (until !== undefined && since === undefined) throw new InvalidArgumentError('--until needs --since');
  // Runs that recorded no fingerprint (older ones) get their version's from the workflows module, when one is given.
  const registry = await registryFor();
  const fingerprints = registry ? new Map(registry.list().map((w) => [`${w.id}@${w.version}`, workflowFingerprint(w)])) : undefined;
  // Reading the run streams and the policy versions is an operator's.
  return withTenant(values, t, Role.Operator, async ({ jsm }) => {
    const t0 = performance.now();
    const r = await exportRuns(jsm, t, scope, { gzip: values['gzip'] === true || out.endsWith('.gz'), ...(fingerprints ? { fingerprints } : {}) });
    writeFileSync(out, r.file);
    const summary = { file: out, tenant: t, runs: r.runs, events: r.events, policies: r.policies, bytes: r.file.length, ms: Math.round(performance.now() - t0) };
    print(
      values['json'] === true,
      summary,
      () => `exported ${r.runs} runs (${r.events} events, ${r.policies} policy versions) of ${t} to ${out}: ${r.file.length.toLocaleString('en-US')} bytes`,
    );
    return r.runs > 0 ? 0 : 3;
  });
}

async function defaultRegistry(): Promise<Registry | undefined> {
  const m = process.env['CAPSTAN_WORKFLOWS'];
  return m ? loadWorkflows(m) : undefined;
}

// ---------------------------------------------------------------------------------------
// capstan replay --from <file>

export interface ReplayedRun {
  readonly runId: string;
  readonly workflow: string;
  readonly version: number;
  readonly ok: boolean;
  readonly events: number;
  /** The status the record says, and the one the refold reached. */
  readonly recorded: string;
  readonly status?: string;
  readonly timeline?: readonly TimelineEntry[];
  /** Where and how the refold diverges from the record. */
  readonly seq?: number;
  readonly diff?: readonly string[];
  /** A run that could not be refolded at all (its workflow version is not here). */
  readonly error?: { code: string; message: string };
  readonly fingerprint: { recorded?: string; here?: string; same: boolean | null };
  readonly policy?: readonly Recheck[];
}

export interface ReplayReport {
  readonly file: { tenant: TenantId; created: string; sha256: string; runs: number; events: number; policies: number };
  readonly ok: boolean;
  readonly runs: readonly ReplayedRun[];
}

/** Refolds every run of an export offline: nothing but `contents` and the registry is read. */
export async function replayExport(contents: ExportContents, registry: Registry, o: { recheckPolicy?: boolean } = {}): Promise<ReplayReport> {
  const compiled = new Map<number, CompileResult | undefined>();
  const compiledAt = (v: number) => {
    if (!compiled.has(v)) {
      const p = contents.policies.get(v);
      compiled.set(v, p ? compilePolicySet(p.record.text) : undefined);
    }
    return compiled.get(v);
  };
  const fingerprints = new Map(contents.workflows.map((w) => [`${w.id}@${w.version}`, w.fingerprint]));
  const runs: ReplayedRun[] = [];
  for (const [runId, events] of contents.runs) {
    const first = events[0];
    const workflow = first?.type === 'run.started' ? first.data.workflow : '?';
    const version = first?.type === 'run.started' ? first.data.version : 0;
    const recordedFp = (first?.type === 'run.started' ? first.data.fingerprint : undefined) ?? fingerprints.get(`${workflow}@${version}`);
    let here: string | undefined;
    try {
      here = workflowFingerprint(registry.get(workflow, version));
    } catch {
      here = undefined;
    }
    const fingerprint = { ...(recordedFp ? { recorded: recordedFp } : {}), ...(here ? { here } : {}), same: recordedFp && here ? recordedFp === here : null };
    const recorded = statusFromEvents(events);
    // Cedar decides in-process, under the exported text of the version each decision names.
    const policy = o.recheckPolicy
      ? await recheckDecisions(events, (v, queries) => {
          const c = compiledAt(v);
          if (!c) return Promise.resolve({ decision: 'missing', version: v, policies: [`version ${v} is not in the export`] } as unknown as PolicyDecision);
          return Promise.resolve(decideAll(c, v, contents.tenant, queries));
        })
      : undefined;
    const base = { runId, workflow, version, events: events.length, recorded, fingerprint, ...(policy ? { policy } : {}) };
    try {
      const fold = foldRun(registry, events);
      const status = fold.timeline.at(-1)?.status ?? 'pending';
      runs.push({ ...base, ok: status === recorded, status, timeline: fold.timeline });
    } catch (e) {
      if (CapstanError.is(e, ErrorCode.DeterminismViolation))
        runs.push({ ...base, ok: false, seq: (e as DeterminismViolationError).seq, diff: (e as DeterminismViolationError).diff });
      else if (CapstanError.is(e)) runs.push({ ...base, ok: false, error: { code: e.code, message: e.message } });
      else throw e;
    }
  }
  const policyOk = (r: ReplayedRun) => (r.policy ?? []).every((p) => p.same);
  return {
    file: { tenant: contents.tenant, created: contents.created, sha256: contents.sha256, runs: contents.runs.size, events: contents.events, policies: contents.policies.size },
    ok: runs.every((r) => r.ok && policyOk(r)),
    runs,
  };
}

function humanReport(r: ReplayReport, from: string): string {
  const lines: string[] = [];
  const single = r.runs.length === 1;
  for (const run of r.runs) {
    const fp =
      run.fingerprint.same === false
        ? [
            red(
              `  workflow ${run.workflow}@${run.version} here is not the definition the run recorded (fingerprint ${run.fingerprint.here?.slice(0, 12)}… here, ${run.fingerprint.recorded?.slice(0, 12)}… recorded)`,
            ),
          ]
        : [];
    if (run.diff) {
      lines.push(red(`${run.runId}  ${run.workflow}@${run.version}: diverges from its record at event ${run.seq}:`), ...run.diff.map((d) => `  ${d}`), ...fp);
    } else if (run.error) {
      lines.push(red(`${run.runId}  ${run.workflow}@${run.version}: cannot be replayed here: ${run.error.code}: ${run.error.message}`));
    } else {
      if (single) lines.push(...(run.timeline ?? []).map(timelineLine));
      lines.push(
        run.ok
          ? `${green('✓')} ${run.runId}  ${run.workflow}@${run.version}  ${run.status} after ${run.events} events`
          : red(`${run.runId}: replay ends ${run.status}, but the record says ${run.recorded}`),
        ...fp,
      );
    }
    for (const p of run.policy ?? []) if (single || !p.same) lines.push(`  ${recheckLine(p)}`);
  }
  const bad = r.runs.filter((x) => !x.ok || (x.policy ?? []).some((p) => !p.same)).length;
  lines.push(
    dim(`${from}: tenant ${r.file.tenant}, exported ${r.file.created}, sha256 ${r.file.sha256.slice(0, 16)}…, ${r.file.events} events, ${r.file.policies} policy versions`),
    bad === 0 ? green(bold(`replay reproduces all ${r.runs.length} runs`)) : red(bold(`${bad} of ${r.runs.length} runs do not replay to their record`)),
  );
  return lines.join('\n');
}

/** `capstan replay --from <file> [--recheck-policy] [--json]`: no servers needed. */
export async function replayFromFileCmd(argv: string[], registryFor: () => Promise<Registry>): Promise<number> {
  const { values } = parse(argv, { from: { type: 'string' }, 'recheck-policy': { type: 'boolean' }, json: { type: 'boolean' } }, []);
  const from = stringFlag(values, 'from') as string;
  let bytes: Buffer;
  try {
    bytes = readFileSync(from);
  } catch (e) {
    throw new CapstanError(ErrorCode.InvalidArgument, `cannot read ${from}: ${(e as NodeJS.ErrnoException).code ?? (e as Error).message}`);
  }
  const contents = readExport(bytes);
  const report = await replayExport(contents, await registryFor(), { recheckPolicy: values['recheck-policy'] === true });
  print(values['json'] === true, report, () => humanReport(report, from));
  return report.ok ? 0 : 1;
}

/** Run commands: submit, status, events, replay, signal, cancel, dead letters. */
import type { JetStreamManager } from '@nats-io/jetstream';
import { foldRun, statusFromEvents, type Registry } from '@capstan/actors';
import { loadWorkflows } from '@capstan/orchestrator';
import { createClient, decideAt, type TenantConnection } from '@capstan/kit';
import {
  CapstanError,
  type DeterminismViolationError,
  Headers,
  InvalidArgumentError,
  isPlainObject,
  Role,
  RunNotFoundError,
  Streams,
  type JsonValue,
  type RunEvent,
  type RunId,
  type TenantId,
  ErrorCode,
} from '@capstan/schemas';
import { parse, tenantFlag, runIdArg, jsonFlag, intFlag } from './args.js';
import { recheckDecisions, recheckLine, replayFromFileCmd } from './review.js';
import { print, withTenant } from './context.js';
import { bold, colorStatus, describe, dim, red, time, timelineLine, green } from './format.js';

const common = { nats: { type: 'string' }, tenant: { type: 'string' }, json: { type: 'boolean' } } as const;

export interface RunSummary {
  readonly runId: string;
  readonly tenant: string;
  readonly workflow: string;
  readonly version: number;
  readonly status: string;
  readonly startedAt: string;
  readonly endedAt?: string;
  readonly steps: { name: string; attempts: number; outcome: string }[];
  readonly output?: JsonValue;
  readonly error?: { code: string; message: string };
}

export function summarize(t: TenantId, events: readonly RunEvent[]): RunSummary {
  const first = events[0];
  if (!first || first.type !== 'run.started') throw new CapstanError('run_not_found', 'run has no start event');
  const steps = new Map<string, { name: string; attempts: number; outcome: string }>();
  let output: JsonValue | undefined;
  let error: { code: string; message: string } | undefined;
  let endedAt: number | undefined;
  for (const e of events) {
    if (e.type === 'step.scheduled') steps.set(e.data.step, { name: e.data.step, attempts: e.data.attempt, outcome: 'scheduled' });
    else if (e.type === 'step.waiting') steps.set(e.data.step, { name: e.data.step, attempts: 0, outcome: `waiting for ${e.data.signal}` });
    else if (e.type === 'step.started') (steps.get(e.data.step) ?? { outcome: '' }).outcome = 'running';
    else if (e.type === 'step.completed') (steps.get(e.data.step) ?? { outcome: '' }).outcome = 'completed';
    else if (e.type === 'step.failed') (steps.get(e.data.step) ?? { outcome: '' }).outcome = `failed (${e.data.error.code})`;
    else if (e.type === 'run.signaled') {
      for (const s of steps.values()) if (s.outcome === `waiting for ${e.data.name}`) s.outcome = 'signaled';
    } else if (e.type === 'approval.decided') {
      (steps.get(e.data.step) ?? { outcome: '' }).outcome = `${e.data.decision === 'approve' ? 'approved' : 'denied'} by ${e.data.by}`;
    } else if (e.type === 'run.retried') {
      // Reopened: the failure it had is history now.
      error = undefined;
      endedAt = undefined;
    } else if (e.type === 'run.completed') {
      output = e.data.output;
      endedAt = e.at;
    } else if (e.type === 'run.failed') {
      error = { code: e.data.error.code, message: e.data.error.message };
      endedAt = e.at;
    } else if (e.type === 'run.cancelled') endedAt = e.at;
  }
  return {
    runId: first.runId,
    tenant: t,
    workflow: first.data.workflow,
    version: first.data.version,
    status: statusFromEvents(events),
    startedAt: time(first.at),
    ...(endedAt !== undefined ? { endedAt: time(endedAt) } : {}),
    steps: [...steps.values()],
    ...(output !== undefined ? { output } : {}),
    ...(error ? { error } : {}),
  };
}

function humanSummary(s: RunSummary): string {
  const lines = [
    `${bold(s.runId)}  ${s.workflow}@${s.version}  ${colorStatus(s.status)}`,
    `  tenant   ${s.tenant}`,
    `  started  ${s.startedAt}${s.endedAt ? `   ended ${s.endedAt}` : ''}`,
    `  steps    ${s.steps.map((x) => `${x.name}: ${x.outcome}${x.attempts > 1 ? ` (${x.attempts} attempts)` : ''}`).join(', ')}`,
  ];
  if (s.output !== undefined) lines.push(`  output   ${JSON.stringify(s.output)}`);
  if (s.error) lines.push(`  error    ${red(`${s.error.code}: ${s.error.message}`)}`);
  return lines.join('\n');
}

async function runEvents(tc: TenantConnection, t: TenantId, runId: RunId): Promise<RunEvent[]> {
  const client = await createClient(tc);
  const events = await client.events(t, runId);
  if (events.length === 0) throw new RunNotFoundError(t, runId);
  return events;
}

export async function submitCmd(argv: string[]): Promise<number> {
  const { values, args } = parse(
    argv,
    { ...common, input: { type: 'string' }, 'run-id': { type: 'string' }, 'idempotency-key': { type: 'string' }, wait: { type: 'boolean' }, timeout: { type: 'string' } },
    ['workflow'],
  );
  const t = tenantFlag(values);
  const input = jsonFlag('input', values['input']);
  if (input !== undefined && !isPlainObject(input)) throw new InvalidArgumentError('--input must be a JSON object');
  const timeoutS = intFlag('timeout', values['timeout'], 60, 1);
  return withTenant(values, t, Role.Client, async (tc) => {
    const client = await createClient(tc);
    const runId = await client.submit(t, args[0] as string, {
      ...(input ? { input: input as { [k: string]: JsonValue } } : {}),
      ...(values['run-id'] ? { runId: runIdArg(values['run-id'] as string) } : {}),
      ...(values['idempotency-key'] ? { idempotencyKey: values['idempotency-key'] as string } : {}),
      // The caller's trace, carried in the environment (as OpenTelemetry suggests for processes).
      ...(process.env['TRACEPARENT'] ? { traceparent: process.env['TRACEPARENT'] } : {}),
    });
    if (!values['wait']) {
      print(values['json'] === true, { runId, tenant: t }, () => `${runId}  submitted to ${t}`);
      return 0;
    }
    const end = await client.waitForEnd(t, runId, timeoutS * 1000);
    const summary = summarize(t, await client.events(t, runId));
    print(values['json'] === true, summary, () => humanSummary(summary));
    return end.type === 'run.completed' ? 0 : 1;
  });
}

export async function statusCmd(argv: string[]): Promise<number> {
  const { values, args } = parse(argv, common, ['runId']);
  const t = tenantFlag(values);
  const runId = runIdArg(args[0]);
  return withTenant(values, t, Role.Client, async (tc) => {
    const summary = summarize(t, await runEvents(tc, t, runId));
    print(values['json'] === true, summary, () => humanSummary(summary));
    return 0;
  });
}

export async function eventsCmd(argv: string[]): Promise<number> {
  const { values, args } = parse(argv, common, ['runId']);
  const t = tenantFlag(values);
  const runId = runIdArg(args[0]);
  return withTenant(values, t, Role.Client, async (tc) => {
    const events = await runEvents(tc, t, runId);
    print(values['json'] === true, events, () => events.map((e) => `${String(e.seq).padStart(4)}  ${time(e.at)}  ${e.type.padEnd(20)} ${dim(describe(e))}`).join('\n'));
    return 0;
  });
}

/**
 * Refolds the run through the recorded workflow version; non-zero with a diff on divergence.
 * With `--from <file>`, refolds an export's runs instead, with no server (review.ts).
 */
// Replay is a tool run by a person: with no CAPSTAN_WORKFLOWS it replays against the built-in
// and demo workflows (what `capstan dev` runs), where a service would refuse to start.
export async function replayCmd(
  argv: string[],
  registryFor: () => Promise<Registry> = () => loadWorkflows(process.env['CAPSTAN_WORKFLOWS'] ?? '', { demo: true }),
): Promise<number> {
  if (argv.some((a) => a === '--from' || a.startsWith('--from='))) return replayFromFileCmd(argv, registryFor);
  const { values, args } = parse(argv, { ...common, 'recheck-policy': { type: 'boolean' } }, ['runId']);
  const t = tenantFlag(values);
  const runId = runIdArg(args[0]);
  const registry = await registryFor();
  // Asking the policy again is an operator's question; reading the run is a client's.
  return withTenant(values, t, values['recheck-policy'] === true ? Role.Operator : Role.Client, async (tc) => {
    const events = await runEvents(tc, t, runId);
    const recorded = statusFromEvents(events);
    try {
      const fold = foldRun(registry, events);
      const status = fold.timeline.at(-1)?.status ?? 'pending';
      const same = status === recorded;
      const rechecked = values['recheck-policy'] === true ? await recheckDecisions(events, (version, queries) => decideAt(tc.nc, t, version, queries)) : [];
      const differ = rechecked.filter((r) => !r.same);
      print(
        values['json'] === true,
        {
          runId,
          ok: same && differ.length === 0,
          status,
          recorded,
          events: events.length,
          timeline: fold.timeline,
          ...(values['recheck-policy'] === true ? { policy: rechecked } : {}),
        },
        () =>
          [
            ...fold.timeline.map(timelineLine),
            same ? green(`replay reproduces run ${runId}: ${status} after ${events.length} events`) : red(`replay ends ${status}, but the record says ${recorded}`),
            ...rechecked.map(recheckLine),
          ].join('\n'),
      );
      return same && differ.length === 0 ? 0 : 1;
    } catch (e) {
      if (CapstanError.is(e, ErrorCode.DeterminismViolation)) {
        const { seq, diff } = e as DeterminismViolationError;
        print(values['json'] === true, { runId, ok: false, seq, diff }, () =>
          [red(`replay of run ${runId} diverges from its record at event ${seq}:`), ...diff.map((d) => `  ${d}`)].join('\n'),
        );
        return 1;
      }
      throw e;
    }
  });
}

export async function signalCmd(argv: string[]): Promise<number> {
  const { values, args } = parse(argv, { ...common, payload: { type: 'string' } }, ['runId', 'name']);
  const t = tenantFlag(values);
  const runId = runIdArg(args[0]);
  const payload = jsonFlag('payload', values['payload']);
  return withTenant(values, t, Role.Client, async (tc) => {
    await (await createClient(tc)).signal(t, runId, args[1] as string, payload);
    print(values['json'] === true, { runId, signal: args[1] }, () => `signal ${args[1]} sent to ${runId}`);
    return 0;
  });
}

export async function cancelCmd(argv: string[]): Promise<number> {
  const { values, args } = parse(argv, { ...common, reason: { type: 'string' } }, ['runId']);
  const t = tenantFlag(values);
  const runId = runIdArg(args[0]);
  return withTenant(values, t, Role.Client, async (tc) => {
    await (await createClient(tc)).cancel(t, runId, values['reason'] as string | undefined);
    print(values['json'] === true, { runId, cancel: 'requested' }, () => `cancel requested for ${runId}`);
    return 0;
  });
}

export interface DeadLetterView {
  readonly seq: number;
  readonly at: string;
  readonly subject: string;
  readonly code: string;
  readonly error: string;
  readonly source: string;
  /** Stream sequence of the refused command: the `seq` of its submitter's PubAck. */
  readonly sourceSeq?: number;
  readonly runId?: string;
  readonly bytes: number;
}

export async function readDeadLetters(jsm: JetStreamManager, t: TenantId, limit: number): Promise<DeadLetterView[]> {
  const info = await jsm.streams.info(Streams.deadLetters(t));
  const out: DeadLetterView[] = [];
  const first = Math.max(info.state.first_seq, info.state.last_seq - limit + 1);
  if (info.state.messages === 0) return out;
  const iter = await jsm.direct.getBatch(Streams.deadLetters(t), { seq: first, batch: limit });
  for await (const m of iter) {
    const h = m.header;
    const runId = h.get(Headers.RunId);
    const sourceSeq = Number(h.get(Headers.SourceSeq));
    out.push({
      seq: m.seq,
      at: m.time.toISOString(),
      subject: m.subject,
      code: h.get(Headers.ErrorCode),
      error: h.get(Headers.Error),
      source: h.get(Headers.SourceSubject),
      ...(sourceSeq > 0 ? { sourceSeq } : {}),
      ...(runId ? { runId } : {}),
      bytes: m.data.length,
    });
  }
  return out;
}

export async function dlqCmd(argv: string[]): Promise<number> {
  const { values } = parse(argv, { ...common, limit: { type: 'string' } }, []);
  const t = tenantFlag(values);
  const limit = intFlag('limit', values['limit'], 50, 1);
  return withTenant(values, t, Role.Client, async ({ jsm }) => {
    const letters = await readDeadLetters(jsm, t, limit);
    print(values['json'] === true, letters, () =>
      letters.length === 0
        ? 'no dead letters'
        : letters.map((l) => `${String(l.seq).padStart(5)}  ${l.at}  ${red(l.code.padEnd(20))} ${l.error}  ${dim(`(from ${l.source})`)}`).join('\n'),
    );
    return 0;
  });
}

/**
 * Retrying a failed run end to end, against the real nats-server and Postgres: the run is
 * reopened by a `run.retried` event on its own stream, the step that failed runs again with
 * the next attempt number, completed steps never run again, the projections show the run
 * running again and that it was retried (and by whom), and a run that has not failed is
 * refused with `run_not_retryable`. Replay reproduces every run.
 */
import { afterAll, beforeAll, describe, expect, inject, it } from 'vitest';
import { join } from 'node:path';
import { and, asc, eq } from 'drizzle-orm';
import { createRegistry, defineWorkflow, demoWorkflows } from '@capstan/actors';
import { openDatabase, PROJECT_ROOT, type Database } from '@capstan/kit';
import { createOrchestrator, Failpoints, loadConfig as orchestratorConfig } from '@capstan/orchestrator';
import { readDeadLetters } from '@capstan/cli';
import { createProjector, loadConfig, verifyProjections, type ProjectorApp } from '@capstan/projector';
import { createWorker, demoHandlers, loadConfig as workerConfig, StepError, type Handlers } from '@capstan/worker';
import { CommandRejectedError, db as schema, ErrorCode, Streams, type RunId, type TenantId, Role } from '@capstan/schemas';
import { replayAll } from '../harness/checker.js';
import { connect, eventsOf, eventually, provision, runCli, silent, spawnService, startServices, type Harness, serviceEnv, issueCreds } from '../harness/fixtures.js';
import { startReadConsole, type ReadConsole } from '../harness/console.js';
import { scratchDatabase } from '../harness/postgres.js';

/** Extract, load (fails until the downstream is "fixed"), report. */
const etl = defineWorkflow({
  id: 'retry.etl',
  version: 1,
  steps: [
    { name: 'extract', timeoutMs: 10_000 },
    { name: 'load', timeoutMs: 10_000, retry: { maxAttempts: 2, initialIntervalMs: 50 } },
    { name: 'report', timeoutMs: 10_000 },
  ],
});
const registry = createRegistry([etl, ...demoWorkflows]);

/** Per run: handler calls by step, and whether the downstream works yet. */
const calls = new Map<string, string[]>();
const fixed = new Set<string>();
const record = (runId: string, step: string, attempt: number) => calls.set(runId, [...(calls.get(runId) ?? []), `${step}#${attempt}`]);

const handlers: Handlers = {
  ...demoHandlers,
  'retry.etl.extract': ({ runId, attempt }) => (record(runId, 'extract', attempt), { rows: 42 }),
  'retry.etl.load': ({ runId, attempt, previous }) => {
    record(runId, 'load', attempt);
    if (!fixed.has(runId)) throw new StepError('the warehouse refused the connection', { code: 'downstream_down' });
    return { loaded: (previous as { rows: number }).rows, attempt };
  },
  'retry.etl.report': ({ runId, attempt, previous }) => (record(runId, 'report', attempt), { reported: previous ?? null }),
};

let url: string;
let h: Harness;
let t: TenantId;
let scratch: Awaited<ReturnType<typeof scratchDatabase>>;
let database: Database;
let projector: ProjectorApp;
let api: ReadConsole;
const stops: (() => Promise<void>)[] = [];

const capstan = (args: string[]) => runCli(args, { NATS_URL: url, ...api.env });

beforeAll(async () => {
  url = inject('natsUrl');
  h = await connect(url);
  t = await provision(h, 'retry');
  scratch = await scratchDatabase('retry');
  database = await openDatabase({ url: scratch.url, log: silent });
  projector = await createProjector(loadConfig({ ...(await serviceEnv(url, Role.Projector)), DATABASE_URL: scratch.url, CAPSTAN_TENANTS: t }), silent, { database });
  await projector.start();
  const env = { NATS_URL: url, CAPSTAN_TENANTS: t, WORKER_ADMISSION: 'auto' };
  const orch = await createOrchestrator(orchestratorConfig({ ...env, ...(await serviceEnv(url, Role.Orchestrator)) }), silent, { registry });
  const worker = await createWorker(workerConfig({ ...env, NATS_CREDS: await issueCreds(url, t, Role.Worker, 'retry-worker') }), silent, { handlers });
  await orch.start();
  await worker.start();
  stops.push(
    () => worker.stop(),
    () => orch.stop(),
  );
  api = await startReadConsole({ db: database, natsUrl: url, tenants: [t] });
});

afterAll(async () => {
  await api?.stop();
  for (const stop of stops) await stop();
  await projector?.stop();
  await database?.close();
  await scratch?.drop();
  await h?.close();
});

async function runRow(runId: RunId) {
  const [row] = await database.db
    .select()
    .from(schema.runs)
    .where(and(eq(schema.runs.tenant, t), eq(schema.runs.runId, runId)));
  return row;
}

async function failedRun(): Promise<RunId> {
  const runId = await h.client.submit(t, 'retry.etl');
  const end = await h.client.waitForEnd(t, runId, 20_000);
  expect(end.type).toBe('run.failed');
  expect(end.data).toMatchObject({ error: { code: 'downstream_down' } });
  return runId;
}

async function rejection(p: Promise<unknown>): Promise<CommandRejectedError> {
  try {
    await p;
  } catch (e) {
    expect(e).toBeInstanceOf(CommandRejectedError);
    return e as CommandRejectedError;
  }
  throw new Error('the command was accepted');
}

describe('retry', () => {
  it('retry - a failed run continues from the failed step; completed steps do not run again', async () => {
    const runId = await failedRun();
    expect(calls.get(runId)).toEqual(['extract#1', 'load#1', 'load#2']);
    await eventually('the failure projected', async () => ((await runRow(runId))?.status === 'failed' ? true : undefined));

    fixed.add(runId);
    const ev = await h.client.retry(t, runId, { by: 'ops@example.com', reason: 'warehouse back' });
    expect(ev.type).toBe('run.retried');
    expect(ev.data).toMatchObject({ by: 'ops@example.com', reason: 'warehouse back', signer: { role: Role.Admin } });
    // The old failure is not the end any more: waitForEnd waits for the run's latest ending.
    const end = await h.client.waitForEnd(t, runId, 20_000);
    expect(end.type).toBe('run.completed');
    expect(end.data).toEqual({ output: { reported: { loaded: 42, attempt: 3 } } });
    const events = await eventsOf(h, t, runId);
    const last = events.at(-1);
    expect(last).toEqual(end);
    // extract ran once; load went on from attempt 3; nothing ran twice for one attempt
    expect(calls.get(runId)).toEqual(['extract#1', 'load#1', 'load#2', 'load#3', 'report#1']);
    expect(events.filter((e) => e.type === 'step.scheduled').map((e) => `${e.data.step}#${e.data.attempt}`)).toEqual(['extract#1', 'load#1', 'load#2', 'load#3', 'report#1']);
    const retriedAt = events.findIndex((e) => e.type === 'run.retried');
    expect(events[retriedAt - 1]?.type).toBe('run.failed');
    expect(events[retriedAt + 1]).toMatchObject({ type: 'step.scheduled', data: { step: 'load', attempt: 3 } });

    const row = await eventually('the run row completed', async () => {
      const r = await runRow(runId);
      return r?.status === 'completed' ? r : undefined;
    });
    expect(row).toMatchObject({ retries: 1, retriedBy: 'ops@example.com', errorCode: null, errorMessage: null });
    expect(row.retriedAt?.getTime()).toBe(ev.at);
    expect(row.endedAt?.getTime()).toBe(last?.at);
    const steps = await database.db
      .select()
      .from(schema.steps)
      .where(and(eq(schema.steps.tenant, t), eq(schema.steps.runId, runId), eq(schema.steps.step, 'load')))
      .orderBy(asc(schema.steps.attempt));
    expect(steps.map((s) => [s.attempt, s.outcome, s.worker])).toEqual([
      [1, 'failed', 'retry-worker'],
      [2, 'failed', 'retry-worker'],
      [3, 'completed', 'retry-worker'],
    ]);
    const audit = await database.db
      .select()
      .from(schema.auditLog)
      .where(and(eq(schema.auditLog.tenant, t), eq(schema.auditLog.runId, runId)));
    expect(audit.map((a) => [a.kind, a.actor, a.detail])).toEqual([['run.retried', 'ops@example.com', { reason: 'warehouse back', errorCode: 'downstream_down' }]]);
  });

  it('retry - a run that has not failed is run_not_retryable, and nothing is recorded', async () => {
    const runId = await failedRun();
    fixed.add(runId);
    await h.client.retry(t, runId, { by: 'ops' });
    await eventually('the retried run completed', async () => ((await eventsOf(h, t, runId)).at(-1)?.type === 'run.completed' ? true : undefined));
    const before = (await eventsOf(h, t, runId)).length;
    const again = await rejection(h.client.retry(t, runId, { by: 'ops' }));
    expect(again.code).toBe(ErrorCode.RunNotRetryable);
    expect(again.message).toContain('only a failed run can be retried; this one is completed');

    const waiting = await h.client.submit(t, 'demo.signal');
    await eventually('the run waits', async () => ((await eventsOf(h, t, waiting)).some((e) => e.type === 'step.waiting') ? true : undefined));
    expect((await rejection(h.client.retry(t, waiting, { by: 'ops' }))).message).toContain('this one is waiting');
    expect((await eventsOf(h, t, runId)).length).toBe(before);
    expect((await eventsOf(h, t, waiting)).some((e) => e.type === 'run.retried')).toBe(false);
    await h.client.cancel(t, waiting, 'done here');
  });

  it('retry - capstan retry reopens a failed run; on a finished run it exits 1 with the code', async () => {
    const runId = await failedRun();
    fixed.add(runId);
    const r = await capstan(['retry', runId, '--tenant', t, '--as', 'cli-op', '--json']);
    expect(r.err).toBe('');
    expect(r.code).toBe(0);
    expect(JSON.parse(r.out)).toMatchObject({ type: 'run.retried', data: { by: 'cli-op' } });
    await eventually('the retried run completed', async () => ((await eventsOf(h, t, runId)).at(-1)?.type === 'run.completed' ? true : undefined));
    const again = await capstan(['retry', runId, '--tenant', t, '--as', 'cli-op']);
    expect(again.code).toBe(1);
    expect(again.err).toContain('run_not_retryable');
    // the run view shows it was retried
    await eventually('projected', async () => ((await runRow(runId))?.status === 'completed' ? true : undefined));
    const view = await capstan(['run', runId, '--tenant', t]);
    expect(view.out).toContain('retried   1 time(s), last by cli-op');
    expect((await capstan(['retry', 'not-a-run', '--tenant', t])).code).toBe(2);
  });

  it('retry - a denied approval can be retried: the run asks again and completes once approved', async () => {
    const runId = await h.client.submit(t, 'demo.signal');
    await eventually('the run waits', async () => ((await eventsOf(h, t, runId)).some((e) => e.type === 'step.waiting') ? true : undefined));
    await h.client.deny(t, runId, 'review', { by: 'bob', reason: 'typo in the draft' });
    await h.client.retry(t, runId, { by: 'ann', reason: 'typo fixed' });
    const waitingAgain = await eventually('the approval is asked again', async () => {
      const evs = await eventsOf(h, t, runId);
      return evs.filter((e) => e.type === 'step.waiting').length === 2 ? evs : undefined;
    });
    expect(waitingAgain.map((e) => e.type).slice(-3)).toEqual(['run.failed', 'run.retried', 'step.waiting']);
    await eventually('the approval row waits again', async () => {
      const [a] = await database.db
        .select()
        .from(schema.approvals)
        .where(and(eq(schema.approvals.tenant, t), eq(schema.approvals.runId, runId)));
      return a?.status === 'waiting' && a.decidedBy === null ? true : undefined;
    });
    await h.client.approve(t, runId, 'review', { by: 'bob' });
    await eventually('the run completed', async () => ((await eventsOf(h, t, runId)).at(-1)?.type === 'run.completed' ? true : undefined));
    // the draft step ran once: its result stood through the denial and the retry
    expect((await eventsOf(h, t, runId)).filter((e) => e.type === 'step.scheduled' && e.data.step === 'draft')).toHaveLength(1);
  });

  it('retry - an orchestrator dying after recording a retry: the sender is answered, the redelivery is no false refusal', async () => {
    // A tenant of its own, so no stray command of other runs reaches the orchestrator set to die.
    const t2 = await provision(h, 'retry-crash', { consumers: { orchestratorAckWaitMs: 1000 } });
    const env = {};
    const first = await startServices(url, [t2], { env });
    const runId = await h.client.submit(t2, 'demo.signal');
    await eventually('the run waits', async () => ((await eventsOf(h, t2, runId)).some((e) => e.type === 'step.waiting') ? true : undefined));
    await h.client.deny(t2, runId, 'review', { by: 'bob' });
    await first.stop();

    const fixtures = join(PROJECT_ROOT, 'test', 'dist', 'fixtures', 'workflows.js');
    const victim = spawnService('orchestrator', { NATS_URL: url, CAPSTAN_TENANTS: t2, CAPSTAN_WORKFLOWS: fixtures, CAPSTAN_FAILPOINTS: `${Failpoints.BeforeAck}:kill:1` });
    try {
      const ev = await h.client.retry(t2, runId, { by: 'ops', timeoutMs: 20_000 });
      expect(ev.type).toBe('run.retried');
      expect(await victim.exited).not.toBe(0);
      expect(victim.output()).toContain(`failpoint ${Failpoints.BeforeAck}`);
    } finally {
      await victim.kill();
    }
    // The retry is recorded but its command was never acknowledged: a new orchestrator gets it again.
    expect((await (await h.jsm(t2)).streams.info(Streams.commands(t2))).state.messages).toBe(1);
    const second = await startServices(url, [t2], { env });
    try {
      await eventually('the redelivered command is acknowledged', async () =>
        (await (await h.jsm(t2)).streams.info(Streams.commands(t2))).state.messages === 0 ? true : undefined,
      );
      // Decided again it would be refused ("not failed"); it was recognised as done instead.
      expect((await readDeadLetters(await h.jsm(t2), t2, 100)).filter((l) => l.runId === runId)).toEqual([]);
      expect((await eventsOf(h, t2, runId)).filter((e) => e.type === 'run.retried')).toHaveLength(1);
      await h.client.approve(t2, runId, 'review', { by: 'bob' });
      expect((await h.client.waitForEnd(t2, runId, 20_000)).type).toBe('run.completed');
    } finally {
      await second.stop();
    }
  });

  it('retry - every run replays through its recorded version, and the projections match the streams', async () => {
    const { replayed, failures } = await replayAll(await h.jsm(t), t, registry);
    process.stdout.write(`replayed ${replayed} runs of ${t}\n`);
    expect(failures).toEqual([]);
    expect(replayed).toBeGreaterThanOrEqual(5);
    await eventually('projection caught up', async () => ((await projector.lag()).every((l) => l.lag === 0) ? true : undefined));
    const report = await verifyProjections(database, h.jsm, [t]);
    expect(report.mismatches).toEqual([]);
    expect(report.ok).toBe(true);
  });
});

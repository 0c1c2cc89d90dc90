/**
 * Schedules end to end on a real nats-server, with the orchestrator, a worker and the
 * projector in this process: a schedule's life (create, fire, pause, resume, trigger now,
 * delete) with every change an audit row; the refusals; the CLI; the overlap policies with
 * runs that wait for a signal; the catch-up policies after the orchestrator was down.
 */
import { afterAll, beforeAll, describe, expect, inject, it } from 'vitest';
import { and, eq, like } from 'drizzle-orm';
import { createRegistry } from '@capstan/actors';
import { listSchedules, migrate, openDatabase, readScheduleState, sendScheduleCommand, type Database, type TenantConnection } from '@capstan/kit';
import { createOrchestrator, loadConfig as orchestratorConfig, type OrchestratorApp } from '@capstan/orchestrator';
import { createWorker, loadConfig as workerConfig, type WorkerApp } from '@capstan/worker';
import { createProjector, loadConfig as projectorConfig, type ProjectorApp } from '@capstan/projector';
import { CapstanError, db as schema, encode, Role, Subjects, TriggerVerb, type ScheduleSpec, type TenantId } from '@capstan/schemas';
import { readDeadLetters } from '@capstan/cli';
import { connect, eventually, issueCreds, provision, runCli, serviceEnv, silent, TEST_DEFAULTS, type Harness } from '../harness/fixtures.js';
import { scratchDatabase } from '../harness/postgres.js';
import { percentiles, runsOfSchedule } from '../harness/schedules.js';
import { handlers, workflows } from '../fixtures/workflows.js';

const registry = createRegistry(workflows);
const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

describe('schedules', () => {
  let url: string;
  let h: Harness;
  let t: TenantId;
  let tc: TenantConnection;
  let scratch: Awaited<ReturnType<typeof scratchDatabase>>;
  let d: Database;
  let orchestrator: OrchestratorApp;
  let worker: WorkerApp;
  let projector: ProjectorApp;
  const env = () => ({ NATS_URL: url, CAPSTAN_TENANTS: t, ...TEST_DEFAULTS });
  const startOrchestrator = async () => {
    orchestrator = await createOrchestrator(orchestratorConfig({ ...(await serviceEnv(url, Role.Orchestrator)), ...env() }), silent, { registry });
    await orchestrator.start();
  };
  const cmd = (c: Parameters<typeof sendScheduleCommand>[3]) => sendScheduleCommand(tc.js, tc.jsm, t, c);
  const refusal = async (p: Promise<unknown>) => {
    try {
      await p;
    } catch (e) {
      return CapstanError.is(e) ? `${e.code}: ${e.message}` : String(e);
    }
    return 'accepted';
  };

  beforeAll(async () => {
    url = inject('natsUrl');
    h = await connect(url);
    t = await provision(h, 'sched');
    tc = await h.tenant(t);
    scratch = await scratchDatabase('schedules');
    d = await openDatabase({ url: scratch.url });
    await migrate(d);
    await startOrchestrator();
    worker = await createWorker(
      workerConfig({ ...env(), NATS_CREDS: await issueCreds(url, t, Role.Worker, 'w-sched', { pools: ['default'] }), WORKER_ID: 'w-sched', WORKER_CONCURRENCY: '50' }),
      silent,
      { handlers },
    );
    await worker.start();
    projector = await createProjector(projectorConfig({ ...(await serviceEnv(url, Role.Projector)), ...env(), DATABASE_URL: scratch.url }), silent, { database: d });
    await projector.start();
  });

  afterAll(async () => {
    await projector?.stop();
    await worker?.stop();
    await orchestrator?.stop();
    await d?.close();
    await scratch?.drop();
    await h?.close();
  });

  it('schedules - a schedule fires its slots, pauses, resumes, runs now, and is deleted; every change is audited', async () => {
    const spec: ScheduleSpec = { workflow: 'test.pipeline', everyMs: 1000, input: { ms: 0 }, overlap: 'allow-all' };
    const created = await cmd({ op: 'create', schedule: 'tick', spec, by: 'ann', reason: 'every second' });
    expect(created.record).toMatchObject({ schedule: 'tick', status: 'active', change: { op: 'create', by: 'ann' } });
    const gen = created.record.generation;
    const fired = await eventually(
      '3 runs of tick',
      async () => {
        const runs = await runsOfSchedule(tc.jsm, t, 'tick', gen);
        return runs.filter((r) => r.startedAt !== undefined).length >= 3 ? runs : undefined;
      },
      15_000,
    );
    // Slots a second apart from the creation, each its own run, started within a second.
    const slots = fired.map((r) => r.slot);
    for (let i = 1; i < slots.length; i++) expect((slots[i] as number) - (slots[i - 1] as number)).toBe(1000);
    expect(((slots[0] as number) - created.record.anchorMs) % 1000).toBe(0);
    const late = fired.filter((r) => r.startedAt !== undefined).map((r) => (r.startedAt as number) - r.slot);
    process.stdout.write(`tick lateness ms: ${JSON.stringify(percentiles(late))}\n`);
    for (const ms of late) expect(ms).toBeLessThan(1500);

    const paused = await cmd({ op: 'pause', schedule: 'tick', by: 'ann' });
    expect(paused.record.status).toBe('paused');
    await sleep(2500);
    const whilePaused = (await runsOfSchedule(tc.jsm, t, 'tick', gen)).filter((r) => r.slot > paused.at + 100);
    expect(whilePaused).toEqual([]);

    const resumed = await cmd({ op: 'resume', schedule: 'tick', by: 'bob' });
    expect(resumed.record).toMatchObject({ status: 'active', epoch: resumed.record.change.cmdSeq });
    await eventually('a run after the resume', async () => ((await runsOfSchedule(tc.jsm, t, 'tick', gen)).some((r) => r.slot > resumed.at) ? true : undefined), 10_000);
    // No catch-up of the paused time: nothing between the pause and the resume.
    expect((await runsOfSchedule(tc.jsm, t, 'tick', gen)).filter((r) => r.slot > paused.at + 100 && r.slot < resumed.at)).toEqual([]);

    const triggered = await cmd({ op: 'trigger', schedule: 'tick', by: 'cid', reason: 'now please' });
    const runId = triggered.record.change.runId;
    expect(runId).toBeDefined();
    expect((await h.client.waitForEnd(t, runId as string, 15_000)).type).toBe('run.completed');

    const deleted = await cmd({ op: 'delete', schedule: 'tick', by: 'ann' });
    expect(deleted.record.status).toBe('deleted');
    await sleep(2000);
    expect((await runsOfSchedule(tc.jsm, t, 'tick', gen)).filter((r) => r.slot > deleted.at + 100)).toEqual([]);
    const runs = await runsOfSchedule(tc.jsm, t, 'tick', gen);
    for (const r of runs) expect(r.events.filter((e) => e.type === 'run.started')).toHaveLength(1);

    // Made again under the same id: a new generation, whose runs never meet the old ones.
    const again = await cmd({ op: 'create', schedule: 'tick', spec: { ...spec, everyMs: 60_000 }, by: 'ann' });
    expect(again.record.generation).toBeGreaterThan(gen);
    await cmd({ op: 'delete', schedule: 'tick', by: 'ann' });

    // The audit log, through the projector: one row per change, with its author.
    const rows = await eventually('7 schedule audit rows', async () => {
      const a = schema.auditLog;
      const found = await d.db
        .select()
        .from(a)
        .where(and(eq(a.tenant, t), like(a.runId, 'schedule:tick')));
      return found.length >= 7 ? found : undefined;
    });
    expect(rows.map((r) => [r.kind, r.actor])).toEqual([
      ['schedule.created', 'ann'],
      ['schedule.paused', 'ann'],
      ['schedule.resumed', 'bob'],
      ['schedule.triggered', 'cid'],
      ['schedule.deleted', 'ann'],
      ['schedule.created', 'ann'],
      ['schedule.deleted', 'ann'],
    ]);
    expect(rows[3]?.detail).toMatchObject({ runId, reason: 'now please' });
    const row = await eventually(
      'schedule row',
      async () => (await d.db.query.schedules.findFirst({ where: (s, { and: both, eq: is }) => both(is(s.tenant, t), is(s.scheduleId, 'tick')) })) ?? undefined,
    );
    expect(row).toMatchObject({ status: 'deleted', workflow: 'test.pipeline', lastOp: 'delete' });
  }, 90_000);

  it('schedules - refusals come back typed, and record nothing', async () => {
    const spec: ScheduleSpec = { workflow: 'test.pipeline', cron: '0 3 * * *', timezone: 'Europe/Paris' };
    await cmd({ op: 'create', schedule: 'nightly', spec, by: 'ann' });
    const before = (await listSchedules(tc.jsm, t)).find((s) => s.record.schedule === 'nightly')?.seq;
    const refused = [
      await refusal(cmd({ op: 'create', schedule: 'nightly', spec, by: 'ann' })),
      await refusal(cmd({ op: 'create', schedule: 'ghost', spec: { ...spec, workflow: 'no.such.workflow' }, by: 'ann' })),
      await refusal(cmd({ op: 'create', schedule: 'bad', spec: { ...spec, cron: '0 25 * * *' }, by: 'ann' })),
      await refusal(cmd({ op: 'create', schedule: 'past', spec: { ...spec, endAt: '2001-01-01T00:00:00Z' }, by: 'ann' })),
      await refusal(cmd({ op: 'pause', schedule: 'missing', by: 'ann' })),
      await refusal(cmd({ op: 'trigger', schedule: 'missing', by: 'ann' })),
    ];
    expect(refused[0]).toMatch(/^schedule_exists: schedule nightly exists/);
    expect(refused[1]).toMatch(/^unknown_workflow: unknown workflow "no.such.workflow"/);
    expect(refused[2]).toMatch(/^invalid_argument: cron "0 25 \* \* \*" in Europe\/Paris: .*hour/);
    expect(refused[3]).toMatch(/^invalid_argument: schedule past would never fire/);
    expect(refused[4]).toMatch(/^schedule_not_found: tenant .* has no schedule missing/);
    expect(refused[5]).toMatch(/^schedule_not_found/);
    // Malformed on the wire (any NATS client may send it): a dead letter, nothing recorded.
    const ack = await tc.js.publish(Subjects.triggerCommand(t, TriggerVerb.Schedule), encode({ op: 'create', schedule: 'raw', by: 'x', spec: { workflow: 'test.pipeline' } }));
    const letter = await eventually('dead letter of the malformed command', async () => (await readDeadLetters(tc.jsm, t, 1000)).find((l) => l.sourceSeq === ack.seq));
    expect(letter.code).toBe('schema_violation');
    const after = await listSchedules(tc.jsm, t);
    expect(after.find((s) => s.record.schedule === 'nightly')?.seq).toBe(before);
    expect(after.map((s) => s.record.schedule).filter((id) => ['ghost', 'bad', 'past', 'missing', 'raw'].includes(id))).toEqual([]);
    await cmd({ op: 'delete', schedule: 'nightly', by: 'ann' });
  }, 60_000);

  it('schedules - the CLI creates, lists with next firing times, triggers and deletes', async () => {
    const nats = ['--nats', url, '--tenant', t, '--as', 'cli-user'];
    const made = await runCli(['schedules', 'create', 'hourly', '--workflow', 'test.pipeline', '--cron', '0 * * * *', '--timezone', 'Asia/Tokyo', '--input', '{"ms":0}', ...nats]);
    expect(made.err).toBe('');
    expect(made.out).toMatch(/schedule hourly: create recorded \(next firing \d{4}-\d\d-\d\dT\d\d:00:00Z\)/);
    const listed = await runCli(['schedules', 'list', '--next', '3', '--json', ...nats.slice(0, 4)]);
    const list = JSON.parse(listed.out) as { record: { schedule: string }; next: number[] }[];
    const hourly = list.find((s) => s.record.schedule === 'hourly');
    expect(hourly?.next).toHaveLength(3);
    for (const n of hourly?.next ?? []) expect(n % 3_600_000).toBe(0);
    const triggered = await runCli(['schedules', 'trigger', 'hourly', ...nats]);
    expect(triggered.out).toMatch(/started run [0-9A-Z]{26}/);
    const bad = await runCli(['schedules', 'create', 'x', '--workflow', 'test.pipeline', '--every', 'often', ...nats]);
    expect([bad.code, bad.err]).toEqual([2, expect.stringMatching(/"often" is not an interval/)]);
    const missing = await runCli(['schedules', 'pause', 'nope', ...nats]);
    expect([missing.code, missing.err]).toEqual([1, expect.stringMatching(/schedule_not_found/)]);
    expect((await runCli(['schedules', 'delete', 'hourly', ...nats])).code).toBe(0);
  }, 60_000);

  it('schedules - overlap: skip drops slots while a run waits, buffer-one starts one when it ends, allow-all starts them all', async () => {
    const spec = (overlap: ScheduleSpec['overlap']): ScheduleSpec => ({ workflow: 'demo.signal', everyMs: 1000, overlap });
    const made = {
      skip: await cmd({ op: 'create', schedule: 'ov-skip', spec: spec('skip'), by: 'ann' }),
      buffer: await cmd({ op: 'create', schedule: 'ov-buffer', spec: spec('buffer-one'), by: 'ann' }),
      all: await cmd({ op: 'create', schedule: 'ov-all', spec: spec('allow-all'), by: 'ann' }),
    };
    await sleep(4500);
    const runs = async (k: keyof typeof made) => runsOfSchedule(tc.jsm, t, made[k].record.schedule, made[k].record.generation);
    const skip = await runs('skip');
    const buffer = await runs('buffer');
    const all = await runs('all');
    process.stdout.write(`overlap after 4.5 s: skip ${skip.length}, buffer-one ${buffer.length}, allow-all ${all.length}\n`);
    expect(skip).toHaveLength(1);
    expect(buffer).toHaveLength(1);
    expect(all.length).toBeGreaterThanOrEqual(4);
    const skipState = (await readScheduleState(tc.jsm, t, 'ov-skip'))?.record;
    expect(skipState?.skipped).toBeGreaterThanOrEqual(3);
    const bufferState = (await readScheduleState(tc.jsm, t, 'ov-buffer'))?.record;
    const firstBuffered = (buffer[0]?.slot as number) + 1000;
    expect(bufferState?.buffered).toBe(firstBuffered);

    // The waiting runs end; buffer-one then starts the slot it kept (the first one held back).
    await waitAndSignal(buffer[0]?.runId as string);
    await waitAndSignal(skip[0]?.runId as string);
    const next = await eventually(
      'the buffered slot started',
      async () => {
        const r = await runs('buffer');
        return r.length >= 2 ? r : undefined;
      },
      10_000,
    );
    expect(next[1]?.slot).toBe(firstBuffered);
    // Skip starts a new slot (a later one) once its run has ended; the dropped ones never run.
    const skipNext = await eventually(
      'skip starts again',
      async () => {
        const r = await runs('skip');
        return r.length >= 2 ? r : undefined;
      },
      10_000,
    );
    expect((skipNext[1]?.slot as number) - (skip[0]?.slot as number)).toBeGreaterThan(3000);
    for (const k of ['skip', 'buffer', 'all'] as const) await cmd({ op: 'delete', schedule: made[k].record.schedule, by: 'ann' });
    for (const r of [...(await runs('skip')), ...(await runs('buffer')), ...(await runs('all'))]) await h.client.cancel(t, r.runId, 'test over').catch(() => undefined);
  }, 90_000);

  async function waitAndSignal(runId: string): Promise<void> {
    await eventually(`run ${runId} waiting`, async () => ((await h.client.events(t, runId)).some((e) => e.type === 'step.waiting') ? true : undefined), 10_000);
    await h.client.signal(t, runId, 'approve', { by: 'test' });
    expect((await h.client.waitForEnd(t, runId, 15_000)).type).toBe('run.completed');
  }

  it('schedules - catch-up after the orchestrator was down: all runs every missed slot, last the latest, skip none', async () => {
    const spec = (catchup: ScheduleSpec['catchup']): ScheduleSpec => ({
      workflow: 'test.pipeline',
      everyMs: 1000,
      input: { ms: 0 },
      overlap: 'allow-all',
      catchup,
      catchupWindowMs: 60_000,
    });
    const made = {
      all: await cmd({ op: 'create', schedule: 'cu-all', spec: spec('all'), by: 'ann' }),
      last: await cmd({ op: 'create', schedule: 'cu-last', spec: spec('last'), by: 'ann' }),
      skip: await cmd({ op: 'create', schedule: 'cu-skip', spec: spec('skip'), by: 'ann' }),
    };
    await sleep(2500);
    await orchestrator.stop();
    await sleep(6000);
    const restartedAt = Date.now();
    await startOrchestrator();
    await sleep(3500);
    const batches: Record<string, number[]> = {};
    for (const k of ['all', 'last', 'skip'] as const) {
      const runs = await runsOfSchedule(tc.jsm, t, made[k].record.schedule, made[k].record.generation);
      // What the recovering orchestrator started for slots before it came back.
      batches[k] = runs.filter((r) => (r.startedAt ?? 0) >= restartedAt && r.slot < restartedAt).map((r) => r.slot);
      if (k === 'all') {
        // Every slot from the first to the latest ran, exactly once: nothing lost to the outage.
        const slots = runs.map((r) => r.slot);
        for (let i = 1; i < slots.length; i++) expect((slots[i] as number) - (slots[i - 1] as number), `cu-all slot ${i}`).toBe(1000);
      }
      await cmd({ op: 'delete', schedule: made[k].record.schedule, by: 'ann' });
    }
    const state = async (id: string) => (await readScheduleState(tc.jsm, t, id))?.record;
    process.stdout.write(`catch-up batches: ${JSON.stringify(Object.fromEntries(Object.entries(batches).map(([k, v]) => [k, v.length])))}\n`);
    expect(batches['all']?.length).toBeGreaterThanOrEqual(5);
    expect(batches['last']?.length).toBeGreaterThanOrEqual(1);
    expect(batches['last']?.length).toBeLessThanOrEqual(2);
    expect(Math.max(...(batches['last'] ?? []))).toBeGreaterThanOrEqual(restartedAt - 2000);
    expect(batches['skip']?.length).toBeLessThanOrEqual(1);
    expect((await state('cu-skip'))?.skipped).toBeGreaterThanOrEqual(4);
    expect((await state('cu-last'))?.skipped).toBeGreaterThanOrEqual(3);
    expect((await state('cu-all'))?.skipped).toBe(0);
  }, 90_000);
});

/**
 * A Load killed mid-way and retried writes nothing twice. The datasync service runs as its
 * own process with a failpoint that SIGKILLs it between two batches (Postgres destination)
 * or in the middle of a part file (files destination); the worker hears it go silent, the
 * run retries the step, a fresh service process takes the next attempt, which skips what
 * the killed one had committed. Then: the destination equals the model, the load ledger
 * holds each batch once, no key appears twice in the run's parts, no temporary file is left.
 */
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, inject, it } from 'vitest';
import { parseStepResult, PIPELINE_WORKFLOW, Role, type TenantId } from '@capstan/schemas';
import { sql } from 'drizzle-orm';
import { listEntities, queryRows } from '@capstan/kit';
import { eventsOf, eventually, serviceEnv, spawnService, type Harness, type ServiceProcess } from '../harness/fixtures.js';
import { datasyncFixture, defineCatalog, filesDifferences, postgresDifferences, type DatasyncFixture, type Source, type Stack } from '../harness/datasync.js';

describe('data-sync: a load killed mid-way and retried', () => {
  let f: DatasyncFixture;
  let h: Harness;
  let t: TenantId;
  let src: Source;
  let stack: Stack;
  const procs: ServiceProcess[] = [];
  let credsEnv: Record<string, string> = {};

  beforeAll(async () => {
    // The worker hears a silent service within 2 s; the pipeline's own retry policy does the rest.
    f = await datasyncFixture(inject('natsUrl'), 'dsk', { items: 50_000, datasync: false, env: { WORKER_DATASYNC_STALL_MS: '2000' } });
    ({ h, t, src, stack } = f);
    credsEnv = await serviceEnv(inject('natsUrl'), Role.Datasync);
    const first = service('');
    await eventually('the datasync service to answer', async () => listEntities(await h.nc(t), t).then(() => true));
    await defineCatalog(await h.nc(t), t, src, {
      signer: (await h.tenant(t)).signer,
      password: 'trust-auth',
      destinations: {
        warehouse: { type: 'postgres', connection: 'shop', schema: 'warehouse', batchRows: 1000 },
        lake: { type: 'files', path: 'lake', format: 'jsonl', batchRows: 1000 },
      },
    });
    await first.kill('SIGTERM');
  }, 180_000);

  afterAll(async () => {
    for (const p of procs) await p.kill();
    await f?.close();
  }, 60_000);

  function service(failpoints: string): ServiceProcess {
    const p = spawnService('datasync', {
      ...credsEnv,
      CAPSTAN_TENANTS: t,
      DATABASE_URL: f.stateUrl,
      DATASYNC_FILES_ROOT: f.filesRoot,
      CAPSTAN_FAILPOINTS: failpoints,
      DATASYNC_NAME: `datasync-${procs.length}`,
    });
    procs.push(p);
    return p;
  }

  async function killedAndRetried(destination: string, failpoint: string): Promise<{ runId: string; loadAttempts: number; skipped: number }> {
    // Only the doomed process may take the steps.
    for (const p of procs) await p.kill('SIGTERM');
    const doomed = service(`${failpoint}:kill:0.1`);
    await eventually('the datasync service to answer', async () => listEntities(await h.nc(t), t).then(() => true));
    const runId = await h.client.submit(t, PIPELINE_WORKFLOW, { input: { connection: 'shop', model: 'shop-model', destination } });
    const code = await Promise.race([doomed.exited, new Promise<'alive'>((r) => setTimeout(() => r('alive'), 120_000))]);
    expect(doomed.output()).toContain(`failpoint ${failpoint}: SIGKILL`);
    process.stdout.write(`${destination}: datasync process killed at ${failpoint} (exit ${String(code)})\n`);
    service('');
    const end = await h.client.waitForEnd(t, runId, 180_000);
    expect(end.type).toBe('run.completed');
    const events = await eventsOf(h, t, runId);
    const loadAttempts = events.filter((e) => e.type === 'step.scheduled' && (e.data as { step: string }).step === 'load').length;
    const done = events.find((e) => e.type === 'step.completed' && (e.data as { step: string }).step === 'load');
    const result = parseStepResult((done?.data as { result: unknown }).result);
    const skipped = result.entities.reduce((n, e) => n + (e.skipped ?? 0), 0);
    process.stdout.write(`${destination}: load took ${loadAttempts} attempts; the last skipped ${skipped} batches already written\n`);
    return { runId, loadAttempts, skipped };
  }

  it('into Postgres: each batch is in the ledger once, and the schema equals the model', async () => {
    const { runId, loadAttempts, skipped } = await killedAndRetried('warehouse', 'datasync.load.after_batch');
    expect(loadAttempts).toBeGreaterThanOrEqual(2);
    expect(skipped).toBeGreaterThan(0);
    const [ledger] = await src.query<{ n: string; distinct_n: string }>(
      `select count(*) as n, count(distinct (entity, batch)) as distinct_n from warehouse._capstan_loads where run_id = $1`,
      [runId],
    );
    const expectedBatches = 3 + 1 + 10 + 50;
    process.stdout.write(`warehouse ledger: ${ledger?.n} rows, ${ledger?.distinct_n} distinct batches (${expectedBatches} expected)\n`);
    expect(Number(ledger?.n)).toBe(expectedBatches);
    expect(Number(ledger?.distinct_n)).toBe(expectedBatches);
    // Audit first: one intent for the run's load, whatever the attempts.
    const intents = await queryRows<{ n: string }>(stack.db, sql`select count(*) as n from audit_log where tenant = ${t} and run_id = ${runId} and kind = 'datasync.load.intent'`);
    expect(Number(intents[0]?.n)).toBe(1);
    const diff = await postgresDifferences(src, 'warehouse');
    for (const d of Object.values(diff)) expect({ missing: d.missing, extra: d.extra }).toEqual({ missing: 0, extra: 0 });
  }, 400_000);

  it('into files: no key twice in the run, no temporary part left, and the folder equals the model', async () => {
    const { loadAttempts } = await killedAndRetried('lake', 'datasync.load.mid_part');
    expect(loadAttempts).toBeGreaterThanOrEqual(2);
    const diff = await filesDifferences(src, join(f.filesRoot, t, 'lake'));
    process.stdout.write(`lake after a killed load: ${JSON.stringify(diff)}\n`);
    expect(diff.duplicatesInRun).toBe(0);
    expect(diff.tempFiles).toBe(0);
    for (const d of Object.values(diff.entities)) expect({ missing: d.missing, extra: d.extra }).toEqual({ missing: 0, extra: 0 });
  }, 400_000);
});

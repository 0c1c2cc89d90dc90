/**
 * Approval decisions end to end, against the real nats-server and Postgres: approve and deny
 * through the kit client and the `capstan` command, the decision and its author on the run,
 * in the `approvals` projection and in the audit log; a second decision (or one for a step
 * that is not waiting) refused with a typed error and never recorded; plain signals still
 * approving as before.
 */
import { afterAll, beforeAll, describe, expect, inject, it } from 'vitest';
import { and, eq } from 'drizzle-orm';
import { createRegistry } from '@capstan/actors';
import { openDatabase, type Database } from '@capstan/kit';
import { createProjector, loadConfig, verifyProjections, type ProjectorApp } from '@capstan/projector';
import { CapstanError, CommandRejectedError, db as schema, ErrorCode, type RunEvent, type RunId, type TenantId, Role } from '@capstan/schemas';
import { workflows } from '../fixtures/workflows.js';
import { replayAll } from '../harness/checker.js';
import { connect, eventsOf, eventually, provision, runCli, silent, startServices, type Harness, type InProcessServices, serviceEnv } from '../harness/fixtures.js';
import { startReadConsole, type ReadConsole } from '../harness/console.js';
import { scratchDatabase } from '../harness/postgres.js';
import { readDeadLetters } from '@capstan/cli';

let url: string;
let h: Harness;
let t: TenantId;
let scratch: Awaited<ReturnType<typeof scratchDatabase>>;
let database: Database;
let services: InProcessServices;
let projector: ProjectorApp;
let api: ReadConsole;

const capstan = (args: string[]) => runCli(args, { NATS_URL: url, ...api.env, CAPSTAN_USER: '' });

beforeAll(async () => {
  url = inject('natsUrl');
  h = await connect(url);
  t = await provision(h, 'appr');
  scratch = await scratchDatabase('appr');
  database = await openDatabase({ url: scratch.url, log: silent });
  projector = await createProjector(loadConfig({ ...(await serviceEnv(url, Role.Projector)), DATABASE_URL: scratch.url, CAPSTAN_TENANTS: t }), silent, { database });
  await projector.start();
  services = await startServices(url, [t]);
  api = await startReadConsole({ db: database, natsUrl: url, tenants: [t] });
});

afterAll(async () => {
  await api?.stop();
  await services?.stop();
  await projector?.stop();
  await database?.close();
  await scratch?.drop();
  await h?.close();
});

/** A demo.signal run (draft → review, waiting for approval → publish), once it waits. */
async function waitingRun(): Promise<RunId> {
  const runId = await h.client.submit(t, 'demo.signal');
  await eventually('the run waits for review', async () => ((await eventsOf(h, t, runId)).some((e) => e.type === 'step.waiting') ? true : undefined));
  return runId;
}

async function approvalRow(runId: RunId) {
  const a = schema.approvals;
  const [row] = await database.db
    .select()
    .from(a)
    .where(and(eq(a.tenant, t), eq(a.runId, runId), eq(a.step, 'review')));
  return row;
}

async function auditOf(runId: RunId) {
  const l = schema.auditLog;
  return database.db
    .select()
    .from(l)
    .where(and(eq(l.tenant, t), eq(l.runId, runId)));
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

const decisions = (events: readonly RunEvent[]) => events.filter((e) => e.type === 'approval.decided');

describe('approvals', () => {
  it('approvals - approve through the client: recorded with its author, the step completes, the run goes on', async () => {
    const runId = await waitingRun();
    await eventually('the projection shows the approval waiting', async () => ((await approvalRow(runId))?.status === 'waiting' ? true : undefined));

    const ev = await h.client.approve(t, runId, 'review', { by: 'ann@example.com', reason: 'numbers checked' });
    expect(ev.type).toBe('approval.decided');
    // The admin's credential signed it, acting for the person it names: both are on the record.
    expect(ev.data).toEqual({
      step: 'review',
      decision: 'approve',
      by: 'ann@example.com',
      reason: 'numbers checked',
      signer: { name: expect.any(String) as string, key: expect.stringMatching(/^U/) as string, role: Role.Admin },
    });
    const end = await h.client.waitForEnd(t, runId, 20_000);
    expect(end.type).toBe('run.completed');
    // The step's result records who and why, and the next step received it.
    expect(end.data).toEqual({ output: { ok: true, approvedBy: 'ann@example.com' } });

    const row = await eventually('the approval projected', async () => {
      const r = await approvalRow(runId);
      return r?.status === 'approved' ? r : undefined;
    });
    expect(row).toMatchObject({ status: 'approved', decidedBy: 'ann@example.com', reason: 'numbers checked' });
    expect(row.decidedAt?.getTime()).toBe(ev.at);
    const audit = await eventually('the audit row', async () => {
      const rows = (await auditOf(runId)).filter((r) => r.kind === 'approval.decided');
      return rows.length > 0 ? rows : undefined;
    });
    expect(audit).toHaveLength(1);
    expect(audit[0]).toMatchObject({ actor: 'ann@example.com', seq: ev.seq, detail: { step: 'review', decision: 'approve', reason: 'numbers checked' } });
  });

  it('approvals - deny through the CLI fails the run with approval_denied, naming who and why', async () => {
    const runId = await waitingRun();
    const r = await capstan(['deny', runId, 'review', '--tenant', t, '--as', 'bob', '--reason', 'totals do not add up']);
    expect(r.err).toBe('');
    expect(r.code).toBe(0);
    expect(r.out).toContain(`denied step review of ${runId} as bob`);
    const end = await h.client.waitForEnd(t, runId, 20_000);
    expect(end.type).toBe('run.failed');
    // Engine 2 names the step that failed the run.
    expect(end.data).toEqual({ error: { code: ErrorCode.ApprovalDenied, message: 'step review was denied by bob: totals do not add up', retryable: false }, step: 'review' });

    const row = await eventually('the denial projected', async () => {
      const a = await approvalRow(runId);
      return a?.status === 'denied' ? a : undefined;
    });
    expect(row).toMatchObject({ decidedBy: 'bob', reason: 'totals do not add up' });
    await eventually('the run row failed with approval_denied', async () => {
      const [run] = await database.db
        .select()
        .from(schema.runs)
        .where(and(eq(schema.runs.tenant, t), eq(schema.runs.runId, runId)));
      return run?.status === 'failed' && run.errorCode === ErrorCode.ApprovalDenied ? true : undefined;
    });
    expect((await auditOf(runId)).filter((a) => a.kind === 'approval.decided').map((a) => [a.actor, a.detail])).toEqual([
      ['bob', { step: 'review', decision: 'deny', reason: 'totals do not add up' }],
    ]);
  });

  it('approvals - deciding twice is refused with approval_not_waiting, and only the first decision is recorded', async () => {
    const runId = await waitingRun();
    await h.client.approve(t, runId, 'review', { by: 'ann' });

    const again = await rejection(h.client.approve(t, runId, 'review', { by: 'eve' }));
    expect(again.code).toBe(ErrorCode.ApprovalNotWaiting);
    expect(again.message).toContain('not waiting for an approval decision');
    expect(again.runId).toBe(runId);
    const denyAfter = await rejection(h.client.deny(t, runId, 'review', { by: 'eve', reason: 'too late' }));
    expect(denyAfter.code).toBe(ErrorCode.ApprovalNotWaiting);
    // The same through the CLI: exit 1, the code on stderr.
    const cli = await capstan(['approve', runId, 'review', '--tenant', t, '--as', 'eve']);
    expect(cli.code).toBe(1);
    expect(cli.err).toContain('approval_not_waiting');

    await h.client.waitForEnd(t, runId, 20_000);
    const events = await eventsOf(h, t, runId);
    expect(decisions(events).map((e) => e.data)).toMatchObject([{ step: 'review', decision: 'approve', by: 'ann' }]);
    // The refusals are dead letters naming their commands, as for any refused command.
    const letters = (await readDeadLetters(await h.jsm(t), t, 100)).filter((l) => l.runId === runId);
    expect(letters.map((l) => l.code)).toEqual([ErrorCode.ApprovalNotWaiting, ErrorCode.ApprovalNotWaiting, ErrorCode.ApprovalNotWaiting]);
    expect(letters.map((l) => l.sourceSeq)).toContain(again.commandSeq);
  });

  it('approvals - a step that is not waiting, an unknown run and bad input are each refused, typed', async () => {
    const runId = await h.client.submit(t, 'demo.signal');
    // `draft` is a task step: never an approval.
    const task = await rejection(h.client.approve(t, runId, 'draft', { by: 'ann' }));
    expect(task.code).toBe(ErrorCode.ApprovalNotWaiting);
    expect(task.message).toContain('task step');
    const unknown = await rejection(h.client.approve(t, runId, 'nope', { by: 'ann' }));
    expect(unknown.message).toContain('has no step of that name');

    const ghost = '01JD3ZQ8Y9W0K6T2M4X5C7B8AV';
    const missing = await rejection(h.client.deny(t, ghost, 'review', { by: 'ann' }));
    expect(missing.code).toBe(ErrorCode.RunNotFound);
    const cliMissing = await capstan(['approve', ghost, 'review', '--tenant', t, '--as', 'ann']);
    expect(cliMissing.code).toBe(3);

    // Checked before anything is published.
    for (const bad of [{ by: '' }, { by: ' ann' }, { by: 'a\nb' }, { by: 'x'.repeat(129) }, { by: 'ann', reason: 'r'.repeat(501) }]) {
      let caught: unknown;
      try {
        await h.client.approve(t, runId, 'review', bad);
      } catch (e) {
        caught = e;
      }
      expect(CapstanError.is(caught) && caught.code, JSON.stringify(bad)).toBe(ErrorCode.SchemaViolation);
    }
    const noUser = await capstan(['approve', runId, 'review', '--tenant', t, '--as', '']);
    expect(noUser.code).toBe(2);
    const longReason = await capstan(['deny', runId, 'review', '--tenant', t, '--as', 'ann', '--reason', 'r'.repeat(501)]);
    expect(longReason.code).toBe(2);
    expect(longReason.err).toContain('--reason');
    expect(decisions(await eventsOf(h, t, runId))).toEqual([]);
  });

  it('approvals - a plain signal still approves, and records who sent it when the payload says', async () => {
    const runId = await waitingRun();
    await h.client.signal(t, runId, 'approve', { by: 'carol' });
    expect((await h.client.waitForEnd(t, runId, 20_000)).type).toBe('run.completed');
    const row = await eventually('the signal projected', async () => {
      const a = await approvalRow(runId);
      return a?.status === 'approved' ? a : undefined;
    });
    expect(row).toMatchObject({ decidedBy: 'carol', reason: null });
  });

  it("approvals - capstan approvals lists what waits, through the console's API with a token", async () => {
    const runId = await waitingRun();
    await eventually('the approval projected', async () => ((await approvalRow(runId))?.status === 'waiting' ? true : undefined));
    const list = await capstan(['approvals', '--tenant', t, '--json']);
    expect(list.code).toBe(0);
    const body = JSON.parse(list.out) as { approvals: { runId: string; step: string; status: string }[] };
    expect(body.approvals.every((a) => a.status === 'waiting')).toBe(true);
    expect(body.approvals.map((a) => [a.runId, a.step])).toContainEqual([runId, 'review']);
    const human = await capstan(['approvals', '--tenant', t]);
    expect(human.out).toMatch(/RUN\s+STEP\s+SIGNAL\s+STATUS\s+REQUESTED\s+DECIDED BY\s+DECIDED\s+REASON/);
    expect(human.out).toContain(runId);
    const denied = await capstan(['approvals', '--tenant', t, '--status', 'denied', '--json']);
    expect((JSON.parse(denied.out) as { approvals: { status: string; decidedBy: string }[] }).approvals.map((a) => [a.status, a.decidedBy])).toContainEqual(['denied', 'bob']);
    expect((await capstan(['approvals', '--tenant', t, '--status', 'maybe'])).code).toBe(2);
    await h.client.approve(t, runId, 'review', { by: 'ann' });
    await h.client.waitForEnd(t, runId, 20_000);
  });

  it('approvals - every run replays through its recorded version, and the projections match the streams', async () => {
    const { replayed, failures } = await replayAll(await h.jsm(t), t, createRegistry(workflows));
    process.stdout.write(`replayed ${replayed} runs of ${t}\n`);
    expect(failures).toEqual([]);
    expect(replayed).toBeGreaterThanOrEqual(6);
    await eventually('projection caught up', async () => ((await projector.lag()).every((l) => l.lag === 0) ? true : undefined));
    const report = await verifyProjections(database, h.jsm, [t]);
    expect(report.mismatches).toEqual([]);
    expect(report.ok).toBe(true);
  });
});

/**
 * Engine 2 on real servers: a workflow with a branch, a fan-out (one item retried), a
 * sleep, a bounded loop and a wait with a timeout runs to the end and replays; a signal sent
 * before its wait is reached is taken when it is; cancelling a run reaches the mode-0 handler
 * that runs its step (it observes its abort signal) and the step's late result is never
 * recorded; a submit whose input its workflow's schema refuses is a dead letter naming the
 * field. The sandboxed cancel is tested at the end, gated on the sandbox service's cancel.
 */
import { afterAll, beforeAll, describe, expect, inject, it } from 'vitest';
import type Docker from 'dockerode';
import { createRegistry, CURRENT_ENGINE, defineWorkflow } from '@capstan/actors';
import { readDeadLetters } from '@capstan/cli';
import { CapstanError, type RunEvent, type RunId, type StandardSchemaV1, type TenantId } from '@capstan/schemas';
import { replayAll } from '../harness/checker.js';
import { connect, eventsOf, eventually, provision, startServices, type Harness, type InProcessServices } from '../harness/fixtures.js';
import { dockerOrSkip } from '../harness/docker.js';
import { startSandboxes } from '../harness/sandbox.js';
import { aborts, workflows } from '../fixtures/workflows.js';

const url = inject('natsUrl');
let h: Harness;
let t: TenantId;
let services: InProcessServices;

const types = (events: readonly RunEvent[]) => events.map((e) => e.type);
async function waitFor(runId: RunId, pred: (events: RunEvent[]) => boolean, what: string, ms = 30_000): Promise<RunEvent[]> {
  return eventually(
    what,
    async () => {
      const events = await eventsOf(h, t, runId);
      return pred(events) ? events : undefined;
    },
    ms,
    50,
  );
}

beforeAll(async () => {
  h = await connect(url);
  t = await provision(h, 'flow');
  services = await startServices(url, [t]);
});

afterAll(async () => {
  await services?.stop();
  await h?.close();
});

describe('flow - engine 2 end to end', () => {
  it('flow - branch, fan-out with a retried item, sleep, bounded loop and a wait given its signal run to the end', async () => {
    const runId = await h.client.submit(t, 'test.flow', { input: { urgent: true, items: ['x', 'y', 'z'] } });
    await waitFor(runId, (e) => e.some((x) => x.type === 'step.waiting'), 'the feedback wait');
    await h.client.signal(t, runId, 'feedback', { by: 'ann', note: 'ship it' });
    const end = await h.client.waitForEnd(t, runId, 30_000);
    const events = await eventsOf(h, t, runId);
    expect(end.type, types(events).join(' ')).toBe('run.completed');
    expect((events[0] as RunEvent & { type: 'run.started' }).data.engine).toBe(CURRENT_ENGINE);
    expect(events.find((e) => e.type === 'branch.taken')?.data).toEqual({ step: 'route', branch: 'then' });
    expect(events.find((e) => e.type === 'fanout.started')?.data).toEqual({ step: 'research', items: 3, concurrency: 2 });
    // Two items at once: the third is scheduled only after one of the first two ended.
    const scheduled = events
      .filter((e) => e.type === 'step.scheduled' && e.data.step.startsWith('research-'))
      .map((e) => (e.type === 'step.scheduled' ? `${e.data.step}#${e.data.attempt}` : ''));
    expect(scheduled.slice(0, 2).sort()).toEqual(['research-1#1', 'research-2#1']);
    expect(scheduled).toContain('research-2#2');
    expect(events.some((e) => e.type === 'timer.scheduled' && e.data.kind === 'sleep')).toBe(true);
    expect(events.filter((e) => e.type === 'loop.iteration').map((e) => (e.type === 'loop.iteration' ? e.data.iteration : 0))).toEqual([1, 2]);
    expect(end.type === 'run.completed' && end.data.output).toEqual({
      research: [
        { item: 'x', index: 1 },
        { item: 'y', index: 2 },
        { item: 'z', index: 3 },
      ],
      feedback: { by: 'ann', note: 'ship it' },
      drafts: { score: 2 },
    });
  });

  it('flow - a signal sent before its wait is reached is kept and taken when the wait comes', async () => {
    const runId = await h.client.submit(t, 'history.early', { input: { ms: 800 } });
    await waitFor(runId, (e) => e.some((x) => x.type === 'step.started'), 'prep started');
    await h.client.signal(t, runId, 'go', { early: true });
    const end = await h.client.waitForEnd(t, runId, 20_000);
    const events = await eventsOf(h, t, runId);
    expect(end.type, types(events).join(' ')).toBe('run.completed');
    const signaled = events.findIndex((e) => e.type === 'run.signaled');
    const waiting = events.findIndex((e) => e.type === 'step.waiting');
    expect(signaled).toBeLessThan(waiting);
    expect(events[waiting + 1]).toMatchObject({ type: 'signal.consumed', data: { step: 'gate', signal: 'go' } });
  });

  it('flow - cancel reaches the running mode-0 handler (it sees its abort) and its late result is never recorded', async () => {
    const runId = await h.client.submit(t, 'test.cancellable', { input: { ms: 30_000 } });
    await waitFor(runId, (e) => e.some((x) => x.type === 'step.started'), 'the step started');
    const asked = Date.now();
    await h.client.cancel(t, runId, 'changed my mind');
    const seen = await eventually('the handler observed its abort', () => Promise.resolve(aborts.get(`${runId}:1`)), 5000, 20);
    const events = await eventsOf(h, t, runId);
    process.stdout.write(`cancel: the handler saw its abort ${seen - asked} ms after the cancel was sent\n`);
    expect(seen - asked).toBeLessThan(2000);
    expect(types(events).slice(-3)).toEqual(['run.cancel-requested', 'step.cancelled', 'run.cancelled']);
    // Nothing more is recorded for the attempt: the worker does not report a cancelled attempt.
    await new Promise((r) => setTimeout(r, 500));
    expect((await eventsOf(h, t, runId)).length).toBe(events.length);
  });

  it('flow - an input the workflow schema refuses is a dead letter naming the field; no run starts', async () => {
    // A Standard Schema written by hand (zod and valibot implement the same interface).
    const schema: StandardSchemaV1<{ customer: number }> = {
      '~standard': {
        version: 1,
        vendor: 'test',
        validate: (v) =>
          typeof v === 'object' && v !== null && typeof (v as { customer?: unknown }).customer === 'number'
            ? { value: v as { customer: number } }
            : { issues: [{ message: 'must be a number', path: ['customer'] }] },
      },
    };
    const typed = defineWorkflow({ id: 'flow.typed', version: 1, input: schema, steps: [{ name: 'only' }] });
    const u = await provision(h, 'flow-typed');
    const svc = await startServices(url, [u], { registry: createRegistry([...workflows, typed]) });
    try {
      const runId = await h.client.submit(u, 'flow.typed', { input: { customer: 'forty-two' } });
      const dl = await eventually('the dead letter', async () => (await readDeadLetters(await h.jsm(u), u, 10)).find((d) => d.code === 'schema_violation'), 10_000);
      expect(dl.error).toMatch(/customer: must be a number/);
      expect(await eventsOf(h, u, runId)).toEqual([]);
    } finally {
      await svc.stop();
    }
  });

  it('flow - every run of this file replays through its recorded engine and version', async () => {
    const { replayed, failures } = await replayAll(await h.jsm(t), t, createRegistry(workflows));
    process.stdout.write(`replayed ${replayed} runs\n`);
    expect(failures).toEqual([]);
    expect(replayed).toBeGreaterThanOrEqual(3);
  });
});

// A cancel reaches a sandboxed step through its worker and the sandbox service, which kills
// the container holding the attempt.
const docker = await dockerOrSkip();

describe.skipIf(!docker)('flow - cancel reaches a sandboxed step', () => {
  it('flow - the sandbox of a cancelled mode-1 step is gone within 2 s', async () => {
    const u = await provision(h, 'flow-sb');
    const sb = await startSandboxes(h, url, docker as Docker, [u]);
    const slow = defineWorkflow({
      id: 'flow.sandboxed',
      version: 1,
      steps: [{ name: 'work', mode: 1, timeoutMs: 60_000, sandbox: { command: ['sh', '-c', 'sleep 30; echo late'] } }],
    });
    const svc = await startServices(url, [u], { registry: createRegistry([...workflows, slow]) });
    try {
      const runId = await h.client.submit(u, 'flow.sandboxed', { input: {} });
      await eventually(
        'the sandboxed step running',
        async () => {
          const events = await eventsOf(h, u, runId);
          return events.some((e) => e.type === 'step.started' && e.data.step === 'work') ? events : undefined;
        },
        60_000,
      );
      const name = `cap-${runId}-work-1`;
      const asked = Date.now();
      await h.client.cancel(u, runId, 'stop the sandbox');
      await eventually('the sandbox gone', async () => ((await sb.containers()).some((c) => c.Names.some((n) => n.includes(name))) ? undefined : true), 5000, 50);
      const took = Date.now() - asked;
      process.stdout.write(`sandboxed cancel: container gone ${took} ms after the cancel\n`);
      expect(took).toBeLessThan(2000);
    } catch (e) {
      if (CapstanError.is(e)) throw new Error(`${e.code}: ${e.message}`);
      throw e;
    } finally {
      await svc.stop();
      await sb.stop();
    }
  });
});

/**
 * Child workflows, continue-as-new and patches on real servers: a parent awaits a child run
 * (its output becomes the step's result) beside an abandoned one; cancelling the parent
 * mid-child cancels the awaited child and leaves the abandoned one to finish; a ticker
 * continues as new until its rounds are done, each run linked to the next by a derived id;
 * a patched step records its marker. Every run of the tenant replays.
 */
import { afterAll, beforeAll, describe, expect, inject, it } from 'vitest';
import { childRunIdOf, continuedRunIdOf, createRegistry } from '@capstan/actors';
import { readDeadLetters } from '@capstan/cli';
import { newRunId } from '@capstan/kit';
import { CommandVerb, encode, makeRunId, Role, Subjects, type RunEvent, type RunId, type TenantId } from '@capstan/schemas';
import { replayAll } from '../harness/checker.js';
import { connect, connectAs, eventsOf, eventually, provision, startServices, type Harness, type InProcessServices } from '../harness/fixtures.js';
import { workflows } from '../fixtures/workflows.js';

const url = inject('natsUrl');
let h: Harness;
let t: TenantId;
let services: InProcessServices;

const types = (events: readonly RunEvent[]) => events.map((e) => e.type);
const endOf = (events: readonly RunEvent[]) => events.at(-1)?.type;
const ended = (events: readonly RunEvent[]) => ['run.completed', 'run.cancelled', 'run.failed'].includes(endOf(events) ?? '');
async function until(runId: RunId, pred: (events: RunEvent[]) => boolean, what: string, ms = 30_000): Promise<RunEvent[]> {
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
  t = await provision(h, 'kids');
  services = await startServices(url, [t]);
});

afterAll(async () => {
  await services?.stop();
  const replay = await replayAll(await h.jsm(t), t, createRegistry(workflows));
  expect(replay.failures).toEqual([]);
  await h?.close();
});

describe('children - child workflows end to end', () => {
  it("children - the parent awaits its child: the child's output is the step's result, and the child knows its parent", async () => {
    const runId = await h.client.submit(t, 'test.parent', { input: {} });
    const events = await until(runId, ended, 'the parent to end');
    expect(endOf(events), types(events).join(' ')).toBe('run.completed');
    const ship = childRunIdOf(runId, 'ship', 1);
    const notify = childRunIdOf(runId, 'notify', 1);
    expect(events.filter((e) => e.type === 'child.started').map((e) => (e.type === 'child.started' ? e.data.child : ''))).toEqual([ship, notify]);
    expect(events.filter((e) => e.type === 'child.completed')).toHaveLength(2);
    expect(events.at(-1)).toMatchObject({ data: { output: { shipped: { label: 'L-1', packed: { packed: { id: 7 } } } } } });
    const child = await until(ship, ended, 'the child to end');
    expect(child[0]).toMatchObject({ type: 'run.started', data: { workflow: 'test.child', parent: { runId, step: 'ship', attempt: 1 } } });
    expect(endOf(child)).toBe('run.completed');
  });

  it('children - cancelling the parent cancels the awaited child; the abandoned child runs on to its end', async () => {
    const runId = await h.client.submit(t, 'test.parent', { input: { ms: 3000 } });
    const ship = childRunIdOf(runId, 'ship', 1);
    const notify = childRunIdOf(runId, 'notify', 1);
    await until(ship, (e) => e.some((x) => x.type === 'step.started'), 'the child to be running');
    await h.client.cancel(t, runId, 'order withdrawn');
    const events = await until(runId, ended, 'the parent to end');
    expect(endOf(events)).toBe('run.cancelled');
    expect(events.filter((e) => e.type === 'step.cancelled').map((e) => e.data)).toEqual([
      { step: 'ship', attempt: 1, reason: 'the run was cancelled', child: ship },
      { step: 'notify', attempt: 1, reason: 'the run was cancelled' },
    ]);
    expect(endOf(await until(ship, ended, 'the awaited child to be cancelled'))).toBe('run.cancelled');
    expect(endOf(await until(notify, ended, 'the abandoned child to finish', 30_000))).toBe('run.completed');
    // The abandoned child's outcome reaches a parent that has ended: refused, nothing recorded.
    expect((await eventsOf(h, t, runId)).length).toBe(events.length);
  });
});

describe('children - forgeries', () => {
  it('children - a client cannot send a child outcome, and a submit claiming a parent without the derived id is a dead letter; the parent is untouched', async () => {
    const runId = await h.client.submit(t, 'test.parent', { input: { ms: 2000 } });
    const before = await until(runId, (e) => e.filter((x) => x.type === 'child.started').length === 2, 'the children to start');
    // The server refuses a client's child command: only the orchestrator may send one.
    const client = await connectAs(url, t, Role.Client, 'forger');
    let refused = 0;
    try {
      const body = { runId, step: 'ship', attempt: 1, child: childRunIdOf(runId, 'ship', 1), outcome: 'completed', result: { forged: true } };
      await client.request(Subjects.command(t, CommandVerb.Child), encode(body), { timeout: 2000 }).catch(() => refused++);
      // A submit that claims the parent under an id of its own choosing.
      const forged = makeRunId(Date.now(), new Uint8Array(10).fill(7));
      client.publish(
        Subjects.command(t, CommandVerb.Submit),
        encode({ workflow: 'test.child', runId: forged, input: { order: 'forged' }, parent: { runId, step: 'ship', attempt: 1 } }),
      );
      await client.flush();
      const dl = await eventually(
        'the dead letter',
        async () => (await readDeadLetters(await h.jsm(t), t, 20)).find((d) => d.code === 'schema_violation' && /derived from its parent/.test(d.error)),
        10_000,
      );
      expect(dl).toBeDefined();
      expect(await eventsOf(h, t, forged)).toEqual([]);
    } finally {
      await client.close();
    }
    expect(refused).toBe(1);
    const events = await until(runId, ended, 'the parent to end');
    // What the parent took is its real child's output, recorded once.
    expect(events.slice(0, before.length)).toEqual(before);
    expect(events.filter((e) => e.type === 'child.completed' && e.data.step === 'ship')).toHaveLength(1);
    expect(events.at(-1)).toMatchObject({ type: 'run.completed', data: { output: { shipped: { label: 'L-1' } } } });
  });
});

describe('children - a child that cannot start', () => {
  it("children - an unknown child workflow fails the parent's step (unknown_workflow) with its retries; other runs go on meanwhile", async () => {
    const orphan = await h.client.submit(t, 'test.orphan', { input: {} });
    const beside = await h.client.submit(t, 'test.parent', { input: {} });
    const events = await until(orphan, ended, 'the orphan to end');
    expect(types(events)).toEqual(['run.started', 'child.started', 'child.failed', 'timer.scheduled', 'timer.fired', 'child.started', 'child.failed', 'run.failed']);
    const failed = events.filter((e) => e.type === 'child.failed').map((e) => e.data);
    expect(failed.map((d) => [d.attempt, d.child, d.error.code, d.error.retryable])).toEqual([
      [1, childRunIdOf(orphan, 'adopt', 1), 'unknown_workflow', true],
      [2, childRunIdOf(orphan, 'adopt', 2), 'unknown_workflow', true],
    ]);
    expect(failed[0]?.error.message).toMatch(/unknown workflow "test\.nowhere"/);
    expect(events.at(-1)).toMatchObject({ type: 'run.failed', data: { step: 'adopt', error: { code: 'child_failed' } } });
    expect((events.at(-1)?.data as { error: { message: string } }).error.message).toMatch(/unknown_workflow/);
    // No child run exists; each refused submit is a dead letter of its own.
    expect(await eventsOf(h, t, childRunIdOf(orphan, 'adopt', 1))).toEqual([]);
    const refused = new Set([childRunIdOf(orphan, 'adopt', 1), childRunIdOf(orphan, 'adopt', 2)]);
    const letters = (await readDeadLetters(await h.jsm(t), t, 100)).filter((d) => d.code === 'unknown_workflow' && d.runId !== undefined && refused.has(d.runId as RunId));
    expect(letters).toHaveLength(2);
    expect(endOf(await until(beside, ended, 'the run beside it to end'))).toBe('run.completed');
  });

  it('children - a child input its schema refuses fails the step at once (schema_violation, not retried)', async () => {
    const runId = await h.client.submit(t, 'test.misfit', { input: {} });
    const events = await until(runId, ended, 'the misfit to end');
    expect(types(events)).toEqual(['run.started', 'child.started', 'child.failed', 'run.failed']);
    expect(events[2]).toMatchObject({ data: { attempt: 1, error: { code: 'schema_violation', retryable: false } } });
    expect((events[2]?.data as { error: { message: string } }).error.message).toMatch(/order: must be a string/);
    expect(await eventsOf(h, t, childRunIdOf(runId, 'hand', 1))).toEqual([]);
  });
});

describe('children - taking derived ids first', () => {
  /** Dead letters refusing a submit under one of `ids` as reserved. */
  async function reservedRefusals(ids: readonly string[]) {
    const letters = await readDeadLetters(await h.jsm(t), t, 200);
    return letters.filter((d) => d.code === 'run_id_reserved' && ids.some((id) => d.error.includes(id)));
  }
  /** Waits until the orchestrator has judged a submit under each of `ids`: refused as reserved, or (without the fence) started. */
  async function heard(ids: readonly RunId[]): Promise<void> {
    await eventually(
      'every borrowed id judged',
      async () => {
        const refused = await reservedRefusals(ids);
        const started = await Promise.all(ids.map(async (id) => (await eventsOf(h, t, id)).length > 0));
        return ids.every((id, i) => started[i] === true || refused.some((d) => d.error.includes(id))) ? true : undefined;
      },
      10_000,
    );
  }
  /** Child outcomes of the parent that failed because a run of someone else's stood under the child's id. */
  const preempted = (events: readonly RunEvent[]) => events.filter((e) => e.type === 'child.failed' && (e.data as { error: { code: string } }).error.code === 'run_already_exists');

  it("children - a client that submits runs under the derived ids of every attempt of a parent's child step fails none of them (preempted: 0); the parent completes", async () => {
    const runId = await h.client.submit(t, 'test.gated', { input: {} });
    await until(runId, (e) => e.some((x) => x.type === 'step.waiting'), 'the parent to wait at its gate');
    // The attacker computes, with the public function, the ids of attempts 1..5 (the step allows 3) and of the parent's continuation.
    const attempts = [1, 2, 3, 4, 5].map((a) => childRunIdOf(runId, 'ship', a));
    const taken = [...attempts, continuedRunIdOf(runId), continuedRunIdOf(attempts[0] as RunId)];
    const client = await connectAs(url, t, Role.Client, 'squatter');
    try {
      // Plain submits of the client's own workflow and input, claiming nothing: only the id is borrowed.
      for (const id of taken) client.publish(Subjects.command(t, CommandVerb.Submit), encode({ workflow: 'test.child', runId: id, input: { order: 'foreign' } }));
      // A claim of the parent outright (the derived id and the parent): refused as unproven, as before.
      client.publish(
        Subjects.command(t, CommandVerb.Submit),
        encode({ workflow: 'test.child', runId: attempts[1], input: { order: 'forged' }, parent: { runId, step: 'ship', attempt: 2 } }),
      );
      await client.flush();
    } finally {
      await client.close();
    }
    await heard(taken);
    // The platform's own client says no before sending.
    await expect(h.client.submit(t, 'test.child', { runId: attempts[2] as RunId, input: { order: 'foreign' } })).rejects.toMatchObject({ code: 'run_id_reserved' });

    await h.client.signal(t, runId, 'go', {});
    const events = await until(runId, ended, 'the parent to end');
    expect(preempted(events)).toHaveLength(0);
    expect(endOf(events), types(events).join(' ')).toBe('run.completed');
    // Control: attempt 1 started the real child under its derived id, which the parent took.
    const outcomes = events.filter((e) => e.type === 'child.failed' || e.type === 'child.completed');
    expect(outcomes.map((e) => [e.type, e.data.attempt, e.data.child])).toEqual([['child.completed', 1, attempts[0]]]);
    const real = await until(attempts[0] as RunId, ended, 'the real child to end');
    expect(real[0]).toMatchObject({ type: 'run.started', data: { input: { order: 'real' }, parent: { runId, step: 'ship', attempt: 1 } } });
    expect(events.at(-1)).toMatchObject({ type: 'run.completed', data: { output: { label: 'L-1', packed: { packed: 'real' } } } });
    // Every borrowed id was refused as reserved, and the forged claim as unproven; no run of the client's stood under any.
    expect(await reservedRefusals(taken)).toHaveLength(taken.length);
    const unproven = (await readDeadLetters(await h.jsm(t), t, 200)).filter((d) => d.code === 'unproven' && d.error.includes("orchestrator's own"));
    expect(unproven.length).toBeGreaterThanOrEqual(1);
    for (const id of taken.slice(1)) expect(await eventsOf(h, t, id), id).toEqual([]);
  });

  it("children - a child's continuation id taken first is refused too: the chain runs under the ids its runs derive", async () => {
    // A client chooses run ids, so it can work out every id a run will derive before it submits the run.
    const runId = newRunId();
    const children = [1, 2, 3].map((a) => childRunIdOf(runId, 'ticks', a));
    const taken = children.flatMap((c) => [continuedRunIdOf(c), continuedRunIdOf(continuedRunIdOf(c))]);
    const client = await connectAs(url, t, Role.Client, 'squatter-2');
    try {
      for (const id of taken) client.publish(Subjects.command(t, CommandVerb.Submit), encode({ workflow: 'test.ticker', runId: id, input: { round: 9, rounds: 9 } }));
      await client.flush();
    } finally {
      await client.close();
    }
    await heard(taken);
    // Control: the client's own id, outside the reserved space, is its to choose.
    await h.client.submit(t, 'test.relay', { input: {}, runId });
    const events = await until(runId, ended, 'the relay to end');
    expect(preempted(events)).toHaveLength(0);
    expect(endOf(events), types(events).join(' ')).toBe('run.completed');
    expect(events.filter((e) => e.type === 'child.failed' || e.type === 'child.completed').map((e) => [e.type, e.data.attempt, e.data.child])).toEqual([
      ['child.completed', 1, children[0]],
    ]);
    expect(events.at(-1)).toMatchObject({ type: 'run.completed', data: { output: { round: 3 } } });
    // The chain's runs are the relay's, linked hop by hop.
    const next = await eventsOf(h, t, continuedRunIdOf(children[0] as RunId));
    expect(next[0]?.data).toMatchObject({ continuedFrom: children[0] });
    expect(await reservedRefusals(taken)).toHaveLength(taken.length);
  });
});

describe('children - continue-as-new and patches', () => {
  it('continue - a ticker continues as new until its rounds are done, each run linked to the next', async () => {
    const first = await h.client.submit(t, 'test.ticker', { input: { round: 1, rounds: 3 } });
    const second = continuedRunIdOf(first);
    const third = continuedRunIdOf(second);
    const a = await until(first, ended, 'round 1');
    expect(a.slice(-2).map((e) => e.type)).toEqual(['run.continued', 'run.completed']);
    expect(a.at(-2)?.data).toEqual({ next: second, input: { round: 2, rounds: 3 }, reason: 'workflow' });
    const b = await until(second, ended, 'round 2');
    expect(b[0]).toMatchObject({ data: { continuedFrom: first, input: { round: 2, rounds: 3 } } });
    const c = await until(third, ended, 'round 3');
    expect(types(c).slice(-2)).toEqual(['step.skipped', 'run.completed']);
  });

  it("continue - a child that continues as new: its parent takes the output of the chain's last run, reported under the id it started", async () => {
    const runId = await h.client.submit(t, 'test.relay', { input: {} });
    const events = await until(runId, ended, 'the relay to end');
    const child = childRunIdOf(runId, 'ticks', 1);
    expect(events.find((e) => e.type === 'child.completed')?.data).toEqual({ step: 'ticks', attempt: 1, child, result: { round: 3 } });
    expect(events.at(-1)).toMatchObject({ type: 'run.completed', data: { output: { round: 3 } } });
    const last = await until(continuedRunIdOf(continuedRunIdOf(child)), ended, 'the last run of the chain');
    expect(last[0]).toMatchObject({ data: { parent: { runId, step: 'ticks', attempt: 1, child } } });
  });

  it('patched - a hand-written machine: a new run takes the patched path and records its marker once', async () => {
    const runId = await h.client.submit(t, 'test.hand-patched', { input: {} });
    const events = await until(runId, ended, 'the hand-patched run to end');
    expect(types(events).filter((x) => x === 'patch.marked')).toHaveLength(1);
    expect(events.at(-1)).toMatchObject({ type: 'run.completed', data: { output: { checked: { ok: 2 } } } });
  });

  it('patched - a new run takes the patched path and records its marker once', async () => {
    const runId = await h.client.submit(t, 'test.patched', { input: {} });
    const events = await until(runId, ended, 'the patched run to end');
    expect(types(events).filter((x) => x === 'patch.marked')).toHaveLength(1);
    expect(events.at(-1)).toMatchObject({ type: 'run.completed', data: { output: { checked: { ok: 2 } } } });
  });
});

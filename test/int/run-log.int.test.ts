/**
 * The append protocol's failure paths: a group whose run moved on is refused alone while the
 * rest of the batch lands; a single event (sent as a plain publish) is refused the same way; re-published effects (after a crash) are dropped as duplicates.
 */
import { afterAll, beforeAll, describe, expect, inject, it } from 'vitest';
import { appendBatch, newRunId, publishDurably, readRun } from '@capstan/kit';
import { EVENT_ENVELOPE_VERSION, MsgIds, Streams, Subjects, type RunEvent, type RunId, type TenantId } from '@capstan/schemas';
import { connect, provision, type Harness } from '../harness/fixtures.js';

let h: Harness;
let t: TenantId;

beforeAll(async () => {
  h = await connect(inject('natsUrl'));
  t = await provision(h, 'runlog');
});
afterAll(() => h?.close());

const signal = (runId: RunId, seq: number): RunEvent => ({ v: EVENT_ENVELOPE_VERSION, type: 'run.signaled', runId, seq, at: 1, causationId: 'test', data: { name: 'x' } });

describe('run log', () => {
  it('run log - one conflicting group is refused alone; the others of its batch land', async () => {
    const [a, b, c] = [newRunId(), newRunId(), newRunId()];
    const first = await appendBatch(await h.nc(t), t, [{ runId: b, expectedLastSubjectSeq: 0, events: [signal(b, 1)] }]);
    expect(first[0]?.ok).toBe(true);
    const out = await appendBatch(await h.nc(t), t, [
      { runId: a, expectedLastSubjectSeq: 0, events: [signal(a, 1), signal(a, 2)] },
      // b already has an event: expecting none is stale.
      { runId: b, expectedLastSubjectSeq: 0, events: [signal(b, 2)] },
      { runId: c, expectedLastSubjectSeq: 0, events: [signal(c, 1)] },
    ]);
    expect(out.map((o) => o.ok)).toEqual([true, false, true]);
    expect(out[1]?.ok === false && out[1].reason).toMatch(/wrong last sequence/);
    expect((await readRun(await h.jsm(t), t, a)).events.map((e) => e.seq)).toEqual([1, 2]);
    expect((await readRun(await h.jsm(t), t, b)).events.map((e) => e.seq)).toEqual([1]);
    const lastC = await readRun(await h.jsm(t), t, c);
    expect(lastC.events.map((e) => e.seq)).toEqual([1]);
    // The stream sequence handed back for a group is that group's last event.
    expect(out[2]?.ok === true && out[2].lastStreamSeq).toBe(lastC.lastStreamSeq);
  });

  it('run log - a single event (a plain publish) is refused when its run moved on or its event is stored already', async () => {
    const runId = newRunId();
    const nc = await h.nc(t);
    const one = await appendBatch(nc, t, [{ runId, expectedLastSubjectSeq: 0, events: [signal(runId, 1)] }]);
    expect(one[0]?.ok).toBe(true);
    const first = one[0]?.ok === true ? one[0].lastStreamSeq : -1;
    const two = await appendBatch(nc, t, [{ runId, expectedLastSubjectSeq: first, events: [signal(runId, 2)] }]);
    expect(two[0]?.ok).toBe(true);
    // A stale writer: expects the run where it was before event 2.
    const stale = await appendBatch(nc, t, [{ runId, expectedLastSubjectSeq: first, events: [signal(runId, 3)] }]);
    expect(stale[0]).toMatchObject({ ok: false });
    // The same event again under the run's current sequence: the server calls it a duplicate, the log a refusal.
    const last = two[0]?.ok === true ? two[0].lastStreamSeq : -1;
    const again = await appendBatch(nc, t, [{ runId, expectedLastSubjectSeq: last, events: [signal(runId, 2)] }]);
    expect(again[0]?.ok === false && again[0].reason).toMatch(/stored already/);
    expect((await readRun(await h.jsm(t), t, runId)).events.map((e) => e.seq)).toEqual([1, 2]);
  });

  it('run log - effects published again (recovery after a crash) are dropped as duplicates', async () => {
    const runId = newRunId();
    const msgs = ['s1', 's2', 's3'].map((step) => ({ subject: Subjects.work(t, 'default'), data: new TextEncoder().encode(step), msgId: MsgIds.work(runId, step, 1) }));
    await publishDurably(await h.nc(t), await h.js(t), msgs);
    const before = (await (await h.jsm(t)).streams.info(Streams.work(t))).state.messages;
    expect(before).toBe(3);
    // The whole batch again, then a batch mixing one new item with an old one.
    await publishDurably(await h.nc(t), await h.js(t), msgs);
    const extra = { subject: Subjects.work(t, 'default'), data: new TextEncoder().encode('s4'), msgId: MsgIds.work(runId, 's4', 1) };
    await publishDurably(await h.nc(t), await h.js(t), [msgs[0]!, extra]);
    expect((await (await h.jsm(t)).streams.info(Streams.work(t))).state.messages).toBe(4);
  });
});

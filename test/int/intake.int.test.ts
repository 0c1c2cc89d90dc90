/**
 * Intake from any NATS client: JSON or MessagePack on `cap.<t>.cmd.submit`. Duplicates start
 * one run; bad input is dead-lettered with a typed error and no run stream is written.
 */
import { afterAll, beforeAll, describe, expect, inject, it } from 'vitest';
import { readDeadLetters } from '@capstan/cli';
import { jetstream } from '@nats-io/jetstream';
import { connectNats, newRunId, permissionError, readCredentials } from '@capstan/kit';
import { CapstanError, encode, Role, Streams, type TenantId } from '@capstan/schemas';
import { eventsOf, eventually, issueCreds, serveTenant, silent, type Harness, type ServedTenant } from '../harness/fixtures.js';

let h: Harness;
let t: TenantId;
const te = new TextEncoder();

let served: ServedTenant;

beforeAll(async () => {
  served = await serveTenant(inject('natsUrl'), 'intake');
  ({ h, t } = served);
});

// Every run this file made must replay through its recorded version.
afterAll(() => served?.close());

const runSubjects = async () => {
  const info = await (await h.jsm(t)).streams.info(Streams.runs(t), { subjects_filter: `cap.${t}.runs.*` });
  return Object.keys(info.state.subjects ?? {}).length;
};
const runMessages = async () => (await (await h.jsm(t)).streams.info(Streams.runs(t))).state.messages;

describe('intake', () => {
  it('intake - a plain JSON publish starts a run (the documented contract)', async () => {
    const runId = newRunId();
    const ack = await (await h.js(t)).publish(`cap.${t}.cmd.submit`, JSON.stringify({ workflow: 'demo.pipeline', input: { customer: 42 }, runId }));
    expect(ack.stream).toBe(Streams.commands(t));
    const end = await h.client.waitForEnd(t, runId, 15_000);
    expect(end.type).toBe('run.completed');
    const events = await eventsOf(h, t, runId);
    expect(events[0]?.type === 'run.started' && events[0].data.input).toEqual({ customer: 42 });
  });

  it('intake - the same runId submitted 5 times starts one run', async () => {
    const runId = newRunId();
    for (let i = 0; i < 5; i++) await (await h.js(t)).publish(`cap.${t}.cmd.submit`, encode({ workflow: 'demo.pipeline', runId, input: { i } }));
    await h.client.waitForEnd(t, runId, 15_000);
    await new Promise((r) => setTimeout(r, 300));
    const events = await eventsOf(h, t, runId);
    expect(events.filter((e) => e.type === 'run.started')).toHaveLength(1);
    expect(events.filter((e) => e.type === 'run.completed')).toHaveLength(1);
    expect(events[0]?.type === 'run.started' && events[0].data.input).toEqual({ i: 0 });
  });

  it('intake - the same idempotencyKey submitted 5 times (no runId) starts one run', async () => {
    const before = await runSubjects();
    const key = `order-${Math.random()}`;
    const js = await h.js(t);
    await Promise.all(Array.from({ length: 5 }, () => js.publish(`cap.${t}.cmd.submit`, JSON.stringify({ workflow: 'demo.pipeline', idempotencyKey: key }))));
    await eventually('one run', async () => ((await runSubjects()) === before + 1 ? true : undefined), 10_000);
    await new Promise((r) => setTimeout(r, 500));
    expect(await runSubjects()).toBe(before + 1);
  });

  it('intake - malformed payloads are dead-lettered with typed errors and write no run events', async () => {
    const beforeMsgs = await runMessages();
    const beforeDlq = (await readDeadLetters(await h.jsm(t), t, 1000)).length;
    const bad: [string, Uint8Array | string][] = [
      ['decode_failed', '{"workflow": "demo.pipeline", '],
      ['decode_failed', new Uint8Array([0xc1, 0xff, 0x00])],
      ['decode_failed', encode([1, 2, 3])],
      ['schema_violation', JSON.stringify({ workflow: 42 })],
      ['schema_violation', JSON.stringify({ workflow: 'demo.pipeline', input: [1, 2] })],
      ['schema_violation', JSON.stringify({ workflow: 'demo.pipeline', runId: 'not-a-ulid' })],
      ['schema_violation', JSON.stringify({ workflow: 'demo.pipeline', extra: true })],
      ['unknown_workflow', JSON.stringify({ workflow: 'no.such.workflow' })],
      ['payload_too_large', JSON.stringify({ workflow: 'demo.pipeline', input: { blob: 'x'.repeat(70 * 1024) } })],
      ['schema_violation', `{"workflow":"demo.pipeline","input":${'{"a":'.repeat(40)}1${'}'.repeat(40)}}`],
    ];
    const seqs: number[] = [];
    for (const [, payload] of bad) seqs.push((await (await h.js(t)).publish(`cap.${t}.cmd.submit`, typeof payload === 'string' ? te.encode(payload) : payload)).seq);
    const letters = await eventually('dead letters', async () => {
      const l = await readDeadLetters(await h.jsm(t), t, 1000);
      return l.length >= beforeDlq + bad.length ? l.slice(beforeDlq) : undefined;
    });
    // Each dead letter names the command it refuses by the seq its submitter was acked with.
    const bySeq = new Map(letters.map((l) => [l.sourceSeq, l.code]));
    expect(seqs.map((s) => bySeq.get(s))).toEqual(bad.map(([code]) => code));
    for (const l of letters) {
      expect(l.error.length).toBeGreaterThan(10);
      expect(l.source).toBe(`cap.${t}.cmd.submit`);
    }
    expect(await runMessages()).toBe(beforeMsgs);
  });

  it('intake - results for unknown runs and stale attempts are dead-lettered, the run untouched', async () => {
    const runId = await h.client.submit(t, 'demo.pipeline');
    await h.client.waitForEnd(t, runId, 15_000);
    const before = (await eventsOf(h, t, runId)).length;
    const beforeDlq = (await readDeadLetters(await h.jsm(t), t, 1000)).length;
    const stale = { runId, step: 'extract', attempt: 1, worker: 'ghost', outcome: 'completed', result: { late: true }, durationMs: 1 };
    await (await h.js(t)).publish(`cap.${t}.cmd.result`, encode(stale));
    await (await h.js(t)).publish(`cap.${t}.cmd.result`, encode({ ...stale, runId: newRunId() }));
    const letters = await eventually('dead letters', async () => {
      const l = await readDeadLetters(await h.jsm(t), t, 1000);
      return l.length >= beforeDlq + 2 ? l.slice(beforeDlq) : undefined;
    });
    expect(letters.map((l) => l.code).sort()).toEqual(['run_not_found', 'stale_attempt']);
    expect(await eventsOf(h, t, runId)).toHaveLength(before);
  });

  it('intake - the plain nats.js example of docs/intake.md works with a client credential, no Capstan code', async () => {
    const { readFileSync } = await import('node:fs');
    const { connect: natsConnect, credsAuthenticator } = await import('@nats-io/transport-node');
    const { jetstream: js_, jetstreamManager } = await import('@nats-io/jetstream');
    const { decode: decodeJwt } = await import('@nats-io/jwt');
    const { unpack } = await import('msgpackr');
    // As in the doc, with this test's server, tenant and a credential issued for it.
    const creds = readFileSync(await issueCreds(h.url, t, Role.Client, 'doc-example'));
    const jwt = /-----BEGIN NATS USER JWT-----\s+(\S+)/.exec(creds.toString())![1]!;
    const nc = await natsConnect({ servers: h.url, authenticator: credsAuthenticator(creds), inboxPrefix: `_INBOX.${decodeJwt(jwt).sub}` });
    const js = js_(nc);
    const runId = newRunId();
    const ack = await js.publish(`cap.${t}.cmd.submit`, JSON.stringify({ workflow: 'demo.pipeline', input: { customer: 42 }, runId }));
    expect(ack.seq).toBeGreaterThan(0);
    const jsm = await jetstreamManager(nc, { checkAPI: false });
    const seen: string[] = [];
    const read = async (from: number) => {
      const out = [];
      try {
        for await (const m of await jsm.direct.getBatch(Streams.runs(t), { seq: from, next_by_subj: `cap.${t}.runs.${runId}`, batch: 100 })) out.push(m);
      } catch {
        // nothing (yet) at or after `from`
      }
      return out;
    };
    for (let next = 1, done = false, tries = 0; !done && tries < 100; tries++, await new Promise((r) => setTimeout(r, 200))) {
      for (const m of await read(next)) {
        next = m.seq + 1;
        const event = unpack(m.data) as { type: string; data: unknown };
        seen.push(event.type);
        done ||= ['run.completed', 'run.failed', 'run.cancelled'].includes(event.type);
      }
    }
    await nc.close();
    expect(seen.at(-1)).toBe('run.completed');
  });

  it('intake - a client of one tenant cannot submit anywhere else: the server refuses, nothing is stored', async () => {
    // A tenant's client holds a credential for its own account only; another tenant's
    // subjects (or a malformed one) are refused by nats-server before any Capstan code.
    const creds = await issueCreds(h.url, t, Role.Client, 'intake-client');
    const client = await connectNats(h.url, 'intake-client', silent, { credentials: await readCredentials(creds), reconnect: false });
    try {
      const js = jetstream(client);
      for (const subject of ['cap.Bad_Tenant.cmd.submit', 'cap.-x.cmd.submit', `cap.${'a'.repeat(33)}.cmd.submit`, 'cap.nobody-here.cmd.submit', `cap.${t}x.cmd.submit`]) {
        const err = await js.publish(subject, JSON.stringify({ workflow: 'demo.pipeline' }), { timeout: 3000 }).then(
          () => undefined,
          (e: unknown) => permissionError(e),
        );
        expect(CapstanError.is(err) && err.code).toBe('permission_denied');
        expect((err as Error).message).toContain(subject);
      }
      // Its own submit subject works.
      const ack = await js.publish(`cap.${t}.cmd.submit`, JSON.stringify({ workflow: 'demo.pipeline' }));
      expect(ack.stream).toBe(Streams.commands(t));
    } finally {
      await client.close();
    }
    const streams: string[] = [];
    for await (const name of (await h.jsm(t)).streams.names()) streams.push(name);
    expect(streams.filter((s) => /Bad_Tenant|nobody-here/.test(s))).toEqual([]);
  });
});

/**
 * Webhook ingress against the real stack: a nats-server, the secrets-lease service on a
 * scratch Postgres (it checks every signature; ingress never holds a secret), an
 * orchestrator, a worker and ingress itself, all in this process. Deliveries are signed by
 * the `standardwebhooks` library, an independent signer. A valid delivery starts one run;
 * the same delivery again starts nothing; forgeries, stale or future timestamps, oversized
 * bodies, reused ids and floods are refused with their documented status and code, and
 * write nothing (the command, run and webhook-id streams are counted before and after).
 * 1,000 concurrent deliveries with 10 % duplicates start exactly the unique ones.
 */
import { afterAll, beforeAll, describe, expect, inject, it } from 'vitest';
import { randomBytes } from 'node:crypto';
import { Writable } from 'node:stream';
import { Webhook } from 'standardwebhooks';
import { createRegistry } from '@capstan/actors';
import { createLogger, putSecret, webhookRunId, writeRoute, type TenantConnection } from '@capstan/kit';
import { createOrchestrator, loadConfig as orchestratorConfig, type OrchestratorApp } from '@capstan/orchestrator';
import { createWorker, loadConfig as workerConfig, type WorkerApp } from '@capstan/worker';
import { createSecretsLease, loadConfig as secretsConfig, type SecretsLeaseService } from '@capstan/secrets-lease';
import { createIngress, loadConfig as ingressConfig, type Ingress } from '@capstan/ingress';
import { Role, Streams, type TenantId, type WebhookRoute } from '@capstan/schemas';
import { connect, eventually, issueCreds, provision, runCli, serviceEnv, silent, TEST_DEFAULTS, type Harness } from '../harness/fixtures.js';
import { scratchDatabase } from '../harness/postgres.js';
import { allRunIds } from '../harness/schedules.js';
import { handlers, workflows } from '../fixtures/workflows.js';

const secretOf = (fill: number) => `whsec_${Buffer.alloc(32, fill).toString('base64')}`;
const SECRET = `whsec_${randomBytes(32).toString('base64')}`;
const NEXT_SECRET = secretOf(9);
const MAX_BODY = 4096;

interface Answer {
  readonly status: number;
  readonly body: { runId?: string; duplicate?: boolean; error?: { code: string; message: string } };
  readonly retryAfter: string | null;
}

describe('ingress', () => {
  let url: string;
  let h: Harness;
  let t: TenantId;
  let tc: TenantConnection;
  let scratch: Awaited<ReturnType<typeof scratchDatabase>>;
  let secrets: SecretsLeaseService;
  let orchestrator: OrchestratorApp;
  let worker: WorkerApp;
  let ingress: Ingress;
  let logs = '';
  const sink = new Writable({
    write(chunk: Buffer, _enc, cb) {
      logs += chunk.toString();
      cb();
    },
  });

  const route = (over: Partial<WebhookRoute> = {}): WebhookRoute => ({
    route: 'orders',
    workflow: 'test.slow',
    secrets: ['ORDERS_HOOK'],
    fields: { ms: '/ms', order: '/order/id' },
    status: 'enabled',
    by: 'ann',
    ...over,
  });

  /** Signs like a sender would, then POSTs. */
  async function deliver(
    i: Ingress,
    path: string,
    body: string,
    o: { id?: string; at?: Date; secret?: string; signature?: string; headers?: Record<string, string> } = {},
  ): Promise<Answer> {
    const id = o.id ?? `msg_${randomBytes(8).toString('hex')}`;
    const at = o.at ?? new Date();
    const signature = o.signature ?? new Webhook(o.secret ?? SECRET).sign(id, at, body);
    const res = await fetch(`${i.url}${path}`, {
      method: 'POST',
      headers: { 'content-type': 'application/json', 'webhook-id': id, 'webhook-timestamp': String(Math.floor(at.getTime() / 1000)), 'webhook-signature': signature, ...o.headers },
      body,
    });
    return { status: res.status, body: (await res.json()) as Answer['body'], retryAfter: res.headers.get('retry-after') };
  }

  /** Last sequences of every stream a delivery could write to. */
  async function positions(): Promise<string> {
    const last = async (s: string) => (await tc.jsm.streams.info(s)).state.last_seq;
    return JSON.stringify([await last(Streams.commands(t)), await last(Streams.runs(t)), await last(Streams.seen(t))]);
  }

  beforeAll(async () => {
    url = inject('natsUrl');
    h = await connect(url);
    t = await provision(h, 'hooks');
    tc = await h.tenant(t);
    scratch = await scratchDatabase('ingress');
    const env = { NATS_URL: url, CAPSTAN_TENANTS: t, ...TEST_DEFAULTS };
    secrets = await createSecretsLease(
      secretsConfig({
        ...(await serviceEnv(url, Role.SecretsLease)),
        ...env,
        DATABASE_URL: scratch.url,
        SECRETS_MASTER_KEY: randomBytes(32).toString('base64'),
        SECRETS_DB_POOL: '12',
      }),
      createLogger('secrets-lease', 'trace', sink),
    );
    await secrets.start();
    orchestrator = await createOrchestrator(orchestratorConfig({ ...(await serviceEnv(url, Role.Orchestrator)), ...env }), silent, { registry: createRegistry(workflows) });
    await orchestrator.start();
    worker = await createWorker(
      workerConfig({ ...env, NATS_CREDS: await issueCreds(url, t, Role.Worker, 'w-hooks', { pools: ['default'] }), WORKER_ID: 'w-hooks', WORKER_CONCURRENCY: '200' }),
      silent,
      { handlers },
    );
    await worker.start();
    await putSecret(tc.nc, t, 'ORDERS_HOOK', SECRET, { by: 'ann', signer: tc.signer });
    await putSecret(tc.nc, t, 'ORDERS_HOOK_NEXT', NEXT_SECRET, { by: 'ann', signer: tc.signer });
    await writeRoute(tc.js, tc.jsm, t, route());
    ingress = await createIngress(
      ingressConfig({
        ...(await serviceEnv(url, Role.Ingress)),
        ...env,
        INGRESS_PORT: '0',
        INGRESS_MAX_BODY_BYTES: String(MAX_BODY),
        INGRESS_RATE: '10000',
        INGRESS_BURST: '10000',
        INGRESS_DISCOVERY_MS: '200',
        LOG_LEVEL: 'trace',
      }),
      createLogger('ingress', 'trace', sink),
    );
    await ingress.start();
    await eventually('ingress knows the route', () => Promise.resolve(ingress.routes(t).length === 1 ? true : undefined), 10_000);
  });

  afterAll(async () => {
    await ingress?.stop();
    await worker?.stop();
    await orchestrator?.stop();
    await secrets?.stop();
    await scratch?.drop();
    await h?.close();
    // Nothing any service said holds a signing secret.
    for (const s of [SECRET, NEXT_SECRET, SECRET.slice(6), NEXT_SECRET.slice(6)]) expect(logs.includes(s)).toBe(false);
  });

  it('ingress - a valid delivery starts one run with the selected fields; the same delivery again starts nothing', async () => {
    const body = JSON.stringify({ ms: 0, order: { id: 'A-1', lines: 3 }, noise: 'x' });
    const id = 'msg_first';
    const at = new Date();
    const first = await deliver(ingress, `/hooks/${t}/orders`, body, { id, at });
    expect(first.status).toBe(202);
    expect(first.body.runId).toBe(webhookRunId(t, 'orders', id));
    const runId = first.body.runId as string;
    expect((await h.client.waitForEnd(t, runId, 15_000)).type).toBe('run.completed');
    const started = (await h.client.events(t, runId)).find((e) => e.type === 'run.started');
    expect(started?.type === 'run.started' && started.data.input).toEqual({ ms: 0, order: 'A-1' });

    const before = await positions();
    const again = await deliver(ingress, `/hooks/${t}/orders`, body, { id, at });
    expect(again).toMatchObject({ status: 200, body: { runId, duplicate: true } });
    // A sender's retry, re-signed later: the same answer, still nothing new.
    const retried = await deliver(ingress, `/hooks/${t}/orders`, body, { id, at: new Date(at.getTime() + 30_000) });
    expect(retried).toMatchObject({ status: 200, body: { runId, duplicate: true } });
    expect(await positions()).toBe(before);
    expect((await h.client.events(t, runId)).filter((e) => e.type === 'run.started')).toHaveLength(1);
  });

  it('ingress - forgeries, stale and future timestamps, oversized bodies, reused ids and unknown routes are refused and write nothing', async () => {
    const body = JSON.stringify({ ms: 0, order: { id: 'B-1' } });
    const reused = await deliver(ingress, `/hooks/${t}/orders`, body, { id: 'msg_reused' });
    // Its run ends first, so the streams stand still while the refusals are counted.
    await h.client.waitForEnd(t, reused.body.runId as string, 15_000);
    const before = await positions();
    const now = Date.now();
    const signed = new Webhook(SECRET).sign('msg_forged', new Date(now), body);
    const attempts: [string, Promise<Answer>, number, string][] = [
      [
        'body with a flipped bit',
        deliver(ingress, `/hooks/${t}/orders`, body.replace('B-1', 'B-0'), { id: 'msg_forged', at: new Date(now), signature: signed }),
        401,
        'webhook_signature_invalid',
      ],
      ['signed with another secret', deliver(ingress, `/hooks/${t}/orders`, body, { secret: secretOf(1) }), 401, 'webhook_signature_invalid'],
      ['no signature header', deliver(ingress, `/hooks/${t}/orders`, body, { signature: '' }), 401, 'webhook_signature_invalid'],
      ['a signature of the wrong length', deliver(ingress, `/hooks/${t}/orders`, body, { signature: 'v1,AAAA' }), 401, 'webhook_signature_invalid'],
      ['timestamp 310 s old', deliver(ingress, `/hooks/${t}/orders`, body, { at: new Date(now - 310_000) }), 401, 'webhook_timestamp_invalid'],
      ['timestamp 310 s ahead', deliver(ingress, `/hooks/${t}/orders`, body, { at: new Date(now + 310_000) }), 401, 'webhook_timestamp_invalid'],
      ['body over the cap', deliver(ingress, `/hooks/${t}/orders`, JSON.stringify({ ms: 0, order: { id: 'C' }, pad: 'x'.repeat(MAX_BODY) })), 413, 'payload_too_large'],
      [
        'a reused webhook-id with another body',
        deliver(ingress, `/hooks/${t}/orders`, JSON.stringify({ ms: 0, order: { id: 'D' } }), { id: 'msg_reused' }),
        409,
        'webhook_id_conflict',
      ],
      ['an unknown route', deliver(ingress, `/hooks/${t}/nowhere`, body), 404, 'route_not_found'],
      ['an unknown tenant', deliver(ingress, `/hooks/nobody/orders`, body), 404, 'route_not_found'],
      ['a body that is not JSON', deliver(ingress, `/hooks/${t}/orders`, 'not json'), 400, 'decode_failed'],
      ['a body without the selected fields', deliver(ingress, `/hooks/${t}/orders`, JSON.stringify({ ms: 0 })), 400, 'schema_violation'],
    ];
    let through = 0;
    for (const [what, p, status, code] of attempts) {
      const a = await p;
      if (a.status < 300) through++;
      expect([what, a.status, a.body.error?.code], a.body.error?.message).toEqual([what, status, code]);
    }
    const after = await positions();
    process.stdout.write(`ingress refusals: ${attempts.length} tried, ${through} accepted, streams ${before} → ${after}\n`);
    expect(through).toBe(0);
    expect(after).toBe(before);
  });

  it('ingress - secrets rotate on either side: a route with two secrets, a header with two signatures', async () => {
    await writeRoute(tc.js, tc.jsm, t, route({ secrets: ['ORDERS_HOOK', 'ORDERS_HOOK_NEXT'], reason: 'rotating' }));
    await eventually('the route with two secrets', () => Promise.resolve(ingress.routes(t)[0]?.secrets.length === 2 ? true : undefined), 10_000);
    const body = JSON.stringify({ ms: 0, order: { id: 'R' } });
    expect((await deliver(ingress, `/hooks/${t}/orders`, body, { secret: SECRET })).status).toBe(202);
    expect((await deliver(ingress, `/hooks/${t}/orders`, body, { secret: NEXT_SECRET })).status).toBe(202);
    const id = 'msg_two_sigs';
    const at = new Date();
    const both = `${new Webhook(secretOf(3)).sign(id, at, body)} ${new Webhook(NEXT_SECRET).sign(id, at, body)}`;
    expect((await deliver(ingress, `/hooks/${t}/orders`, body, { id, at, signature: both })).status).toBe(202);
    // Disabled: the path is gone (404), the records stay.
    await writeRoute(tc.js, tc.jsm, t, route({ status: 'disabled' }));
    await eventually('the route disabled', () => Promise.resolve(ingress.routes(t).length === 0 ? true : undefined), 10_000);
    expect((await deliver(ingress, `/hooks/${t}/orders`, body)).body.error?.code).toBe('route_not_found');
    await writeRoute(tc.js, tc.jsm, t, route());
    await eventually('the route back', () => Promise.resolve(ingress.routes(t).length === 1 ? true : undefined), 10_000);
  });

  it("ingress - over the tenant's rate: 429 with Retry-After, nothing written", async () => {
    const slow = await createIngress(
      ingressConfig({
        ...(await serviceEnv(url, Role.Ingress)),
        CAPSTAN_TENANTS: t,
        INGRESS_PORT: '0',
        INGRESS_RATE: '1',
        INGRESS_BURST: '2',
        INGRESS_DISCOVERY_MS: '200',
        LOG_LEVEL: 'silent',
      }),
      silent,
    );
    await slow.start();
    try {
      await eventually('the second ingress knows the route', () => Promise.resolve(slow.routes(t).length === 1 ? true : undefined), 10_000);
      const body = JSON.stringify({ ms: 0, order: { id: 'F' } });
      const seenBefore = (await tc.jsm.streams.info(Streams.seen(t))).state.messages;
      // Back to back: the burst of 2 lets two in; the third finds no token.
      const answers: Answer[] = [];
      for (const id of ['msg_rate_1', 'msg_rate_2', 'msg_rate_3']) answers.push(await deliver(slow, `/hooks/${t}/orders`, body, { id }));
      expect(answers.map((a) => a.status)).toEqual([202, 202, 429]);
      const limited = answers[2] as Answer;
      expect(limited.body.error?.code).toBe('rate_limited');
      expect(Number(limited.retryAfter)).toBeGreaterThanOrEqual(1);
      for (const a of answers.slice(0, 2)) await h.client.waitForEnd(t, a.body.runId as string, 15_000);
      // The refused delivery wrote nothing: no webhook id claimed, no run.
      expect((await tc.jsm.streams.info(Streams.seen(t))).state.messages).toBe(seenBefore + 2);
      expect(await h.client.events(t, webhookRunId(t, 'orders', 'msg_rate_3'))).toEqual([]);
    } finally {
      await slow.stop();
    }
  });

  it('ingress - 1,000 concurrent deliveries with 10 % duplicates start exactly the unique ones', async () => {
    const runsBefore = new Set(await allRunIds(tc.jsm, t));
    const unique = Array.from({ length: 900 }, (_, i) => {
      const id = `msg_load_${i}`;
      const at = new Date();
      const body = JSON.stringify({ ms: 0, order: { id: `L-${i}` } });
      return { id, at, body };
    });
    // 100 of them sent twice, byte for byte, at the same time as the first copy.
    const sends = [...unique, ...unique.filter((_, i) => i % 9 === 0).slice(0, 100)];
    expect(sends).toHaveLength(1000);
    const t0 = performance.now();
    const answers = await Promise.all(sends.map((s) => deliver(ingress, `/hooks/${t}/orders`, s.body, s)));
    const ms = performance.now() - t0;
    const count = (f: (a: Answer) => boolean) => answers.filter(f).length;
    const accepted = count((a) => a.status === 202);
    const duplicates = count((a) => a.status === 200 && a.body.duplicate === true);
    const started = await eventually(
      '900 runs started',
      async () => {
        const now = (await allRunIds(tc.jsm, t)).filter((r) => !runsBefore.has(r));
        return now.length >= 900 ? now : undefined;
      },
      60_000,
    );
    await new Promise((r) => setTimeout(r, 1000));
    const finalRuns = (await allRunIds(tc.jsm, t)).filter((r) => !runsBefore.has(r));
    const expected = new Set(unique.map((u) => webhookRunId(t, 'orders', u.id)));
    process.stdout.write(
      `ingress load: 1000 deliveries in ${Math.round(ms)} ms: ${accepted} accepted, ${duplicates} duplicates, ${1000 - accepted - duplicates} other; ${finalRuns.length} runs started\n`,
    );
    expect(accepted).toBe(900);
    expect(duplicates).toBe(100);
    expect(started.length).toBe(900);
    expect(finalRuns.length).toBe(900);
    expect(finalRuns.every((r) => expected.has(r))).toBe(true);
  }, 120_000);

  it('ingress - routes from the CLI', async () => {
    const nats = ['--nats', url, '--tenant', t, '--as', 'cli-user'];
    const made = await runCli(['routes', 'create', 'github', '--workflow', 'test.slow', '--secret', 'ORDERS_HOOK', '--field', 'ms=/ms', ...nats]);
    expect([made.code, made.out.trim()]).toEqual([0, `route github saved: POST /hooks/${t}/github starts test.slow (signed with ORDERS_HOOK)`]);
    const listed = JSON.parse((await runCli(['routes', 'list', '--json', ...nats.slice(0, 4)])).out) as { record: WebhookRoute }[];
    expect(listed.map((r) => r.record.route).sort()).toEqual(['github', 'orders']);
    const bad = await runCli(['routes', 'create', 'x', '--workflow', 'w', '--secret', 'ORDERS_HOOK', '--field', 'ms=nope', ...nats]);
    expect([bad.code, bad.err]).toEqual([1, expect.stringMatching(/JSON Pointer/)]);
    expect((await runCli(['routes', 'delete', 'github', ...nats])).code).toBe(0);
    await eventually('ingress dropped the deleted route', () => Promise.resolve(ingress.routes(t).every((r) => r.route !== 'github') ? true : undefined), 10_000);
  });
});

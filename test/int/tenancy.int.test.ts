/**
 * Tenancy as an attacker tries it, against a real nats-server in operator mode: every role of
 * tenant A tries every operation on A's subjects and on B's, with a plain NATS client (no
 * Capstan code between it and the server). What the server allows is compared with the
 * table below, written from the security design rather than derived from the permission code:
 * every allowed operation must go through, every other must be refused by the server.
 * Then: revocation cuts a worker off at once, and one tenant's full quota leaves the other
 * untouched.
 */
import { afterAll, beforeAll, describe, expect, inject, it } from 'vitest';
import { connect as natsConnect, PermissionViolationError, type NatsConnection } from '@nats-io/transport-node';
import { jetstream } from '@nats-io/jetstream';
import { connectNats, createClient, parseCredentials, permissionError, permissionViolation, readCredentials, revokeCredential, tenantConnection } from '@capstan/kit';
import {
  CapstanError,
  CommandVerb,
  Consumers,
  DeadLetterSource,
  encode,
  JsApi,
  PolicyVerb,
  Role,
  SecretsVerb,
  Streams,
  Subjects,
  TriggerVerb,
  type RunId,
  type TenantId,
} from '@capstan/schemas';
import { adminOf, connect, eventsOf, eventually, issueCreds, provision, silent, startServices, testAuthStore, type Harness } from '../harness/fixtures.js';

const url = inject('natsUrl');
let h: Harness;
let A: TenantId;
let B: TenantId;

beforeAll(async () => {
  h = await connect(url);
  A = await provision(h, 'ten-a', { pools: ['default', 'p1', 'p2'] });
  B = await provision(h, 'ten-b', { pools: ['default', 'p1', 'p2'] });
});
afterAll(() => h?.close());

type Op = { readonly kind: 'pub'; readonly subject: string; readonly body?: unknown } | { readonly kind: 'sub'; readonly subject: string };
type Who = Exclude<Role, 'admin'>;

const RUN = '01JAAAAAAAAAAAAAAAAAAAAAAA' as RunId;
const OTHER_INBOX = '_INBOX.UDOESNOTEXISTAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA.x';
const everyone: Who[] = [Role.Client, Role.Operator, Role.Console, Role.Worker, Role.Orchestrator, Role.Policy, Role.SecretsLease, Role.Sandbox, Role.Projector, Role.Ingress];
const people: Who[] = [Role.Client, Role.Operator, Role.Console];
const operators: Who[] = [Role.Operator, Role.Console];

/**
 * The security table: for tenant `t`, each operation and the roles that may do it (in their
 * own tenant). Anything not listed is refused; in another tenant, everything is refused.
 */
function table(t: TenantId): { name: string; op: Op; allowed: readonly Who[] }[] {
  const pub = (subject: string, body: unknown = {}): Op => ({ kind: 'pub', subject, body });
  const sub = (subject: string): Op => ({ kind: 'sub', subject });
  const api = (subject: string, body: unknown = {}): Op => ({ kind: 'pub', subject, body });
  return [
    // The orchestrator submits a schedule's runs; ingress a webhook delivery's.
    { name: 'submit', op: pub(Subjects.command(t, CommandVerb.Submit)), allowed: [...people, Role.Orchestrator, Role.Ingress] },
    { name: 'change a schedule', op: pub(Subjects.triggerCommand(t, TriggerVerb.Schedule)), allowed: operators },
    { name: 'write a schedule record', op: pub(Subjects.schedule(t, 'nightly')), allowed: [Role.Orchestrator] },
    { name: 'write a webhook route', op: pub(Subjects.route(t, 'github')), allowed: operators },
    { name: 'claim a webhook id', op: pub(Subjects.seenDelivery(t, 'ab'.repeat(20))), allowed: [Role.Ingress] },
    { name: 'check a webhook signature', op: pub(Subjects.secrets(t, SecretsVerb.Verify)), allowed: [Role.Ingress] },
    // The orchestrator cancels a parent's children (signed, like a person's cancel).
    { name: 'cancel', op: pub(Subjects.command(t, CommandVerb.Cancel)), allowed: [...people, Role.Orchestrator] },
    // A child's outcome reaches its parent from the orchestrator only.
    { name: 'child outcome', op: pub(Subjects.command(t, CommandVerb.Child)), allowed: [Role.Orchestrator] },
    { name: 'signal', op: pub(Subjects.command(t, CommandVerb.Signal)), allowed: people },
    { name: 'approve', op: pub(Subjects.command(t, CommandVerb.Approve)), allowed: operators },
    { name: 'deny', op: pub(Subjects.command(t, CommandVerb.Deny)), allowed: operators },
    { name: 'retry', op: pub(Subjects.command(t, CommandVerb.Retry)), allowed: operators },
    { name: 'started', op: pub(Subjects.command(t, CommandVerb.Started)), allowed: [Role.Worker] },
    { name: 'result', op: pub(Subjects.command(t, CommandVerb.Result)), allowed: [Role.Worker] },
    { name: 'credential decision', op: pub(Subjects.command(t, CommandVerb.Credential)), allowed: [Role.Worker] },
    { name: 'policy answer', op: pub(Subjects.command(t, CommandVerb.Policy)), allowed: [Role.Orchestrator] },
    { name: 'timer firing', op: pub(Subjects.command(t, CommandVerb.Timer)), allowed: [] },
    { name: 'append to a run', op: pub(Subjects.run(t, RUN)), allowed: [Role.Orchestrator] },
    { name: 'idempotency claim', op: pub(Subjects.idempotency(t, 'ab12')), allowed: [Role.Orchestrator] },
    { name: 'work item', op: pub(Subjects.work(t, 'p1')), allowed: [Role.Orchestrator] },
    { name: 'timer schedule', op: pub(Subjects.timer(t, RUN, 'x')), allowed: [Role.Orchestrator] },
    { name: 'dead letter (commands)', op: pub(Subjects.deadLetter(t, DeadLetterSource.Command)), allowed: [Role.Orchestrator] },
    { name: 'dead letter (work)', op: pub(Subjects.deadLetter(t, DeadLetterSource.Work)), allowed: [Role.Worker] },
    { name: 'fleet record', op: pub(Subjects.fleet(t, 'w1')), allowed: operators },
    { name: 'policy version', op: pub(Subjects.policyVersions(t)), allowed: [Role.Policy] },
    { name: 'ask the policy', op: pub(Subjects.policy(t, PolicyVerb.Decide)), allowed: [Role.Orchestrator, Role.Worker, ...operators] },
    { name: 'set the policy', op: pub(Subjects.policy(t, PolicyVerb.Set)), allowed: operators },
    { name: 'issue a lease', op: pub(Subjects.secrets(t, SecretsVerb.Lease)), allowed: [Role.Worker] },
    { name: 'redeem a lease', op: pub(Subjects.secrets(t, SecretsVerb.Redeem)), allowed: [Role.Sandbox] },
    { name: 'put a secret', op: pub(Subjects.secrets(t, SecretsVerb.Put)), allowed: operators },
    { name: 'ask for a sandbox', op: pub(Subjects.sandboxExec(t)), allowed: [Role.Worker] },
    { name: 'a 3b credential request', op: pub(Subjects.jitRoute(t, 'r1')), allowed: [Role.Sandbox] },
    { name: 'heartbeat', op: pub(Subjects.workerHeartbeat(t)), allowed: [Role.Worker] },
    { name: "publish on another user's inbox", op: pub(OTHER_INBOX), allowed: [] },
    // Partition ownership: only orchestrators hold leases and hand commands over; nobody moves a run's partition.
    { name: 'take a partition lease', op: pub(Subjects.partitionLease(t, 3), { owner: 'evil', expiresAt: 9e15 }), allowed: [Role.Orchestrator] },
    { name: 'orchestrator presence', op: pub(Subjects.orchestratorMember(t, 'evil'), { owner: 'evil', expiresAt: 0 }), allowed: [Role.Orchestrator] },
    { name: 'change the partition count', op: pub(Subjects.partitionCount(t), { partitions: 1 }), allowed: [] },
    { name: 'hand a command to an owner', op: pub(Subjects.orchestratorInbox(t, 'o1-abcd')), allowed: [Role.Orchestrator] },
    { name: 'listen for hand-overs', op: sub(Subjects.orchestratorInbox(t, 'o1-abcd')), allowed: [Role.Orchestrator] },
    { name: 'read the lease table', op: api(JsApi.directGet(Streams.leases(t)), { seq: 1 }), allowed: [Role.Orchestrator] },
    { name: 'read the run stream', op: api(JsApi.directGet(Streams.runs(t)), { seq: 1 }), allowed: everyone.filter((r) => r !== Role.Policy && r !== Role.Ingress) },
    { name: 'read the dead letters', op: api(JsApi.directGet(Streams.deadLetters(t)), { seq: 1 }), allowed: [...people, Role.Projector] },
    { name: 'read the fleet', op: api(JsApi.directGet(Streams.fleet(t)), { seq: 1 }), allowed: [...operators, Role.Worker, Role.Projector] },
    { name: 'read policy versions', op: api(JsApi.directGet(Streams.policy(t)), { seq: 1 }), allowed: [...operators, Role.Policy, Role.Projector] },
    { name: 'read the commands', op: api(JsApi.directGet(Streams.commands(t)), { seq: 1 }), allowed: [] },
    { name: 'read the work', op: api(JsApi.directGet(Streams.work(t)), { seq: 1 }), allowed: [] },
    { name: 'pull commands', op: api(JsApi.consumerNext(Streams.commands(t), Consumers.orchestrator), { batch: 1, no_wait: true }), allowed: [Role.Orchestrator] },
    { name: 'pull own pool', op: api(JsApi.consumerNext(Streams.work(t), Consumers.workPool('p1')), { batch: 1, no_wait: true }), allowed: [Role.Worker] },
    { name: 'pull another pool', op: api(JsApi.consumerNext(Streams.work(t), Consumers.workPool('p2')), { batch: 1, no_wait: true }), allowed: [] },
    { name: "pull the projector's", op: api(JsApi.consumerNext(Streams.runs(t), Consumers.projector), { batch: 1, no_wait: true }), allowed: [Role.Projector] },
    {
      name: 'create a consumer',
      op: api(`$JS.API.CONSUMER.CREATE.${Streams.runs(t)}.evil`, {
        stream_name: Streams.runs(t),
        config: { name: 'evil', deliver_subject: Subjects.command(t, CommandVerb.Approve) },
      }),
      allowed: [],
    },
    {
      name: 'create a durable consumer',
      op: api(`$JS.API.CONSUMER.DURABLE.CREATE.${Streams.work(t)}.evil`, { stream_name: Streams.work(t), config: { durable_name: 'evil' } }),
      allowed: [],
    },
    { name: 'delete a consumer', op: api(`$JS.API.CONSUMER.DELETE.${Streams.commands(t)}.${Consumers.orchestrator}`), allowed: [] },
    { name: 'delete the run stream', op: api(`$JS.API.STREAM.DELETE.${Streams.runs(t)}`), allowed: [] },
    { name: 'purge the run stream', op: api(`$JS.API.STREAM.PURGE.${Streams.runs(t)}`), allowed: [] },
    { name: 'update the run stream', op: api(`$JS.API.STREAM.UPDATE.${Streams.runs(t)}`, { name: Streams.runs(t), subjects: ['>'] }), allowed: [] },
    { name: 'delete a run event', op: api(`$JS.API.STREAM.MSG.DELETE.${Streams.runs(t)}`, { seq: 1 }), allowed: [] },
    { name: 'create a stream', op: api('$JS.API.STREAM.CREATE.EVIL', { name: 'EVIL', subjects: ['>'] }), allowed: [] },
    { name: 'list streams', op: api('$JS.API.STREAM.NAMES'), allowed: [] },
    { name: 'purge the account', op: api('$JS.API.ACCOUNT.PURGE.X'), allowed: [] },
    { name: 'watch runs live', op: sub(Subjects.allRuns(t)), allowed: people },
    { name: 'serve policy requests', op: sub(Subjects.svcVerbs(t, 'policy')), allowed: [Role.Policy] },
    { name: 'serve secrets requests', op: sub(Subjects.svcVerbs(t, 'secrets')), allowed: [Role.SecretsLease] },
    { name: 'serve sandbox requests', op: sub(Subjects.sandboxExec(t)), allowed: [Role.Sandbox] },
    { name: 'hear 3b requests', op: sub(Subjects.allJitRoutes(t)), allowed: [Role.Worker] },
    { name: 'hear commands', op: sub(Subjects.allCommands(t)), allowed: [] },
    { name: 'hear work', op: sub(Subjects.allWork(t)), allowed: [] },
    { name: 'hear every inbox', op: sub('_INBOX.>'), allowed: [] },
    { name: 'hear everything', op: sub('>'), allowed: [] },
  ];
}

/** Connects as `role` in tenant `t` with a credential minted exactly as issued ones are. */
async function as(role: Who, t: TenantId): Promise<NatsConnection> {
  const store = await testAuthStore();
  const creds = await store.mintUser(t, role, `attack-${role}`, role === Role.Worker ? { pools: ['p1'], workerId: 'w1' } : {});
  return connectNats(url, `attack-${role}`, silent, { credentials: await parseCredentials(creds, role), reconnect: false });
}

/** `refused`: the server said no (a permissions violation); `allowed`: anything else. */
async function attempt(nc: NatsConnection, op: Extract<Op, { kind: 'pub' }>): Promise<'allowed' | 'refused'> {
  try {
    await nc.request(op.subject, encode(op.body ?? {}), { timeout: 1000 });
    return 'allowed';
  } catch (e) {
    return permissionViolation(e) ? 'refused' : 'allowed';
  }
}

/** Subscribes to each subject; a refusal comes back asynchronously, so all are judged after one pause. */
async function attemptSubscriptions(nc: NatsConnection, subjects: readonly string[], denied: ReadonlySet<string>): Promise<Map<string, 'allowed' | 'refused'>> {
  for (const subject of subjects) nc.subscribe(subject, { callback: () => {} });
  await nc.flush();
  await new Promise((r) => setTimeout(r, 400));
  return new Map(subjects.map((subject) => [subject, denied.has(subject) ? 'refused' : 'allowed'] as const));
}

describe('tenancy', () => {
  it('tenancy - every role × its own tenant and another: the server allows exactly the table, refuses the rest', async () => {
    let breaches = 0;
    let wronglyRefused = 0;
    let tried = 0;
    const lines: string[] = [];
    for (const role of everyone) {
      const nc = await as(role, A);
      const denied = new Set<string>();
      void (async () => {
        for await (const s of nc.status())
          if (s.type === 'error' && s.error instanceof PermissionViolationError && s.error.operation === 'subscription') denied.add(s.error.subject);
      })();
      try {
        const rows = (
          [
            [A, true],
            [B, false],
          ] as const
        ).flatMap(([tenant, own]) => table(tenant).map((row) => ({ ...row, own, want: own && row.allowed.includes(role) ? 'allowed' : 'refused' })));
        const subs = await attemptSubscriptions(
          nc,
          rows.flatMap((r) => (r.op.kind === 'sub' ? [r.op.subject] : [])),
          denied,
        );
        for (const row of rows) {
          const got = row.op.kind === 'sub' ? subs.get(row.op.subject) : await attempt(nc, row.op);
          tried++;
          if (got !== row.want) {
            if (row.want === 'refused') breaches++;
            else wronglyRefused++;
            lines.push(`  ${role} in ${row.own ? 'own' : 'other'} tenant: ${row.name} (${row.op.kind} ${row.op.subject}) ${got ?? '?'}, expected ${row.want}`);
          }
        }
      } finally {
        await nc.close().catch(() => undefined);
      }
    }
    process.stdout.write(
      `tenancy matrix: ${everyone.length} roles × ${table(A).length} operations × 2 tenants = ${tried} attempts; breaches ${breaches}, allowed operations refused ${wronglyRefused}\n${lines.join('\n')}\n`,
    );
    expect(tried).toBe(everyone.length * table(A).length * 2);
    expect(breaches).toBe(0);
    expect(wronglyRefused).toBe(0);
  }, 120_000);

  it('tenancy - an anonymous client, a forged credential and a credential of another operator are refused', async () => {
    const anonymous = await natsConnect({ servers: url, reconnect: false, timeout: 3000 }).then(
      async (nc) => {
        await nc.close();
        return 'connected';
      },
      (e: unknown) => String(e),
    );
    expect(anonymous).toMatch(/Authorization Violation|authorization/i);
    // A user signed by a key that is no tenant's account: unknown issuer.
    const { createAccount, createUser, encodeUser, fmtCreds } = await import('@nats-io/jwt');
    const rogue = createAccount();
    const u = createUser();
    const forged = await parseCredentials(fmtCreds(await encodeUser('rogue', u, rogue, { pub: { allow: ['>'] }, sub: { allow: ['>'] } }), u), 'forged');
    const refused = await connectNats(url, 'forged', silent, { credentials: forged, reconnect: false }).then(
      async (nc) => {
        await nc.close();
        return 'connected';
      },
      (e: unknown) => String(e),
    );
    expect(refused).toMatch(/Authorization Violation|authorization/i);
  });

  it("tenancy - a client's refused operation is a typed permission_denied naming the subject", async () => {
    const creds = await issueCreds(url, A, Role.Client, 'typed-client');
    const nc = await connectNats(url, 'typed-client', silent, { credentials: await readCredentials(creds), reconnect: false });
    try {
      const client = await createClient(await tenantConnection(A, nc));
      // Another tenant: refused by the client before the wire (its account has no such tenant).
      const other = await client.submit(B, 'demo.pipeline').then(
        () => undefined,
        (e: unknown) => e,
      );
      expect(CapstanError.is(other) && other.code).toBe('permission_denied');
      // Its own approve subject: refused by the server, surfaced typed.
      const approve = await client.approve(A, RUN, 'review', { by: 'mallory', timeoutMs: 2000 }).then(
        () => undefined,
        (e: unknown) => e,
      );
      expect(CapstanError.is(approve) && approve.code).toBe('permission_denied');
      expect((approve as Error).message).toContain(Subjects.command(A, CommandVerb.Approve));
      const raw = await jetstream(nc)
        .publish(Subjects.run(A, RUN), encode({}))
        .then(
          () => undefined,
          (e: unknown) => permissionError(e),
        );
      expect(CapstanError.is(raw) && raw.code).toBe('permission_denied');
    } finally {
      await nc.close();
    }
  });

  it('tenancy - a worker revoked mid-run is cut off within 2 s and refused again; the run finishes on another worker', async () => {
    const t = await provision(h, 'revoke', { consumers: { workAckWaitMs: 2000 } });
    const services = await startServices(url, [t], { workerId: 'w-doomed', env: { WORKER_STARTED_AFTER_MS: '0' } });
    try {
      const runId = await h.client.submit(t, 'test.slow', { input: { ms: 4000 } });
      const started = await eventually('the step started on w-doomed', async () => (await eventsOf(h, t, runId)).find((e) => e.type === 'step.started'));
      expect(started.type === 'step.started' && started.data.worker).toBe('w-doomed');
      const t0 = performance.now();
      await revokeCredential(await adminOf(url), t, 'w-doomed');
      const revokeMs = performance.now() - t0;
      // Its credential cannot connect any more.
      const user = (await testAuthStore()).user(t, 'w-doomed');
      expect(user?.revokedAt).toBeGreaterThan(0);
      // Another worker takes the run over once the ack wait passes: attempt 1 is reported lost.
      const rescue = await startServices(url, [t], { workerId: 'w-rescue' });
      try {
        const end = await h.client.waitForEnd(t, runId, 30_000);
        expect(end.type).toBe('run.completed');
        const events = await eventsOf(h, t, runId);
        const lost = events.find((e) => e.type === 'step.failed' && e.data.attempt === 1);
        expect(lost?.type === 'step.failed' && lost.data.error.code).toBe('worker_lost');
        const done = events.find((e) => e.type === 'step.completed');
        expect(done?.type === 'step.completed' && [done.data.worker, done.data.attempt]).toEqual(['w-rescue', 2]);
        // The doomed worker's step never reported a result: nothing of attempt 1 completed.
        expect(events.filter((e) => e.type === 'step.completed' && e.data.attempt === 1)).toHaveLength(0);
        process.stdout.write(`revocation: account JWT pushed in ${revokeMs.toFixed(1)} ms; run finished on w-rescue after attempt 1 was lost\n`);
      } finally {
        await rescue.stop();
      }
    } finally {
      await services.stop();
    }
  }, 60_000);

  it("tenancy - revocation closes the holder's connections within 2 s and it cannot reconnect", async () => {
    const t = await provision(h, 'revoke2');
    const path = await issueCreds(url, t, Role.Worker, 'w-probe');
    const creds = await readCredentials(path);
    const times: number[] = [];
    for (let i = 0; i < 5; i++) {
      if (i > 0) await (await import('@capstan/kit')).restoreCredential(await adminOf(url), t, 'w-probe');
      const nc = await connectNats(url, 'probe', silent, { credentials: creds, reconnect: false });
      const closed = nc.closed();
      const t0 = performance.now();
      await revokeCredential(await adminOf(url), t, 'w-probe');
      await closed;
      times.push(performance.now() - t0);
      const again = await connectNats(url, 'probe-again', silent, { credentials: creds, reconnect: false }).then(
        async (c) => {
          await c.close();
          return 'connected';
        },
        (e: unknown) => String(e),
      );
      expect(again).toMatch(/Authorization Violation|authorization|revoked/i);
    }
    process.stdout.write(`revoke → connection closed: ${times.map((x) => x.toFixed(0)).join(', ')} ms\n`);
    expect(Math.max(...times)).toBeLessThan(2000);
  }, 60_000);

  it('tenancy - a tenant filled to its storage quota: its publishes fail, another tenant runs normally; dead letters stay within their cap', async () => {
    const full = await provision(h, 'full', { quota: { maxStorageBytes: 1024 * 1024 } });
    const ok = await provision(h, 'fine');
    const js = await h.js(full);
    let stored = 0;
    let refusal: unknown;
    const blob = new Uint8Array(60 * 1024).fill(7);
    for (let i = 0; i < 100 && refusal === undefined; i++) {
      try {
        await js.publish(Subjects.command(full, CommandVerb.Submit), blob);
        stored++;
      } catch (e) {
        refusal = e;
      }
    }
    process.stdout.write(`quota: ${stored} × 60 KiB stored in a 1 MiB tenant, then: ${String(refusal)}\n`);
    expect(refusal).toBeDefined();
    expect(String(refusal)).toMatch(/resources|exceeded|maximum/i);
    // Capstan's client says so with a code.
    const typed = await h.client.submit(full, 'demo.pipeline', { input: { blob: 'x'.repeat(30_000) } }).then(
      () => undefined,
      (e: unknown) => e,
    );
    expect(CapstanError.is(typed) && typed.code).toBe('quota_exceeded');
    // A flood of refused commands cannot grow the dead letters past their own cap.
    // The other tenant is untouched.
    const services = await startServices(url, [ok]);
    try {
      const runs = await Promise.all(Array.from({ length: 10 }, () => h.client.submit(ok, 'demo.pipeline')));
      for (const r of runs) expect((await h.client.waitForEnd(ok, r, 20_000)).type).toBe('run.completed');
    } finally {
      await services.stop();
    }
    const dlq = await (await h.jsm(full)).streams.info(Streams.deadLetters(full));
    expect(dlq.config.max_bytes).toBeLessThanOrEqual((1024 * 1024) / 8);
  }, 60_000);
});

/**
 * Attacks on work items, mode-3b credential answers, leases, secrets administration and the
 * credential refresher, played as an attacker inside the tenant would (auth on: operator/JWT
 * mode, an account per tenant, a user per role). Each forgery is counted, never assumed:
 * items executed, credential answers recorded, leases granted, secrets obtained or changed,
 * values sent to a token endpoint. All must be zero; each has a legitimate control that goes
 * through, so a zero is a refusal and not a broken probe.
 *
 * The admin connection (`>` in the tenant's account) plays the attacker who got past the
 * server's permissions: what is tested here is the second fence, the services' own checks.
 */
import { randomBytes } from 'node:crypto';
import { createServer, type IncomingMessage, type Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import { afterAll, beforeAll, describe, expect, inject, it } from 'vitest';
import { sql } from 'drizzle-orm';
import { headers as natsHeaders, type MsgHdrs } from '@nats-io/transport-node';
import {
  answerProofSubject,
  askPolicySigned,
  checkExecRequest,
  credentialAbout,
  claimLease,
  deleteSecret,
  generateRecipient,
  issueLease,
  jwtIssuer,
  listSecrets,
  newRunId,
  openDatabase,
  parseCredentials,
  proofHeaders,
  putSecret,
  readFrom,
  queryRows,
  readCredentials,
  redeemLease,
  revokeRun,
  rotateSecret,
  setPolicy,
  signerOf,
  signWork,
  signedWork,
  type Database,
  type NatsConnection,
  type Signer,
} from '@capstan/kit';
import { createOrchestrator, loadConfig as orchestratorConfig, type OrchestratorApp } from '@capstan/orchestrator';
import { createSecretsLease, loadConfig as secretsConfig, type SecretsLeaseService } from '@capstan/secrets-lease';
import { createPolicyService, loadConfig as policyConfig } from '@capstan/policy';
import { createWorker, loadConfig as workerConfig, type WorkerApp } from '@capstan/worker';
import { createRegistry } from '@capstan/actors';
import {
  AuthKind,
  type CapstanError,
  CommandVerb,
  Consumers,
  DeadLetterSource,
  decode,
  encode,
  ErrorCode,
  Headers,
  Lifecycle,
  PolicyAction,
  PolicyVerb,
  Role,
  Streams,
  Subjects,
  type Connector,
  type RunId,
  type SandboxExecRequest,
  type TenantId,
  type WorkItem,
} from '@capstan/schemas';
import { accessAs, codeOf, connect, eventually, eventsOf, issueCreds, provision, serviceEnv, silent, testAuthStore, TEST_DEFAULTS, type Harness } from '../harness/fixtures.js';
import { scratchDatabase } from '../harness/postgres.js';
import { workflows } from '../fixtures/workflows.js';

const url = inject('natsUrl');
const by = 'attack-test';

let h: Harness;
let t: TenantId;
let nc: NatsConnection;
let scratch: { url: string; drop(): Promise<void> };
let d: Database;
let secrets: SecretsLeaseService;
let orchestrator: OrchestratorApp;
let worker: WorkerApp;
let policy: { stop(): Promise<void> } | undefined;
/** The tenant's account key: whose signatures are believed. */
let account: string;
/**
 * Signers: the tenant's orchestrator, sandbox and datasync services, a worker of pool
 * `default` and another of the same pool, a worker of another pool, a client, an operator,
 * and another tenant's orchestrator and worker.
 */
const as: Record<'orchestrator' | 'sandbox' | 'datasync' | 'worker' | 'peer' | 'otherPool' | 'client' | 'operator' | 'foreignOrchestrator' | 'foreignWorker', Signer> = {} as never;
/** How the admin administers secrets: signed, for the user it names. */
let admin: { by: string; signer: Signer };
/** How many times a forged work item's handler ran. */
let executed = 0;

async function signerFromCreds(path: string): Promise<Signer> {
  const c = await readCredentials(path);
  return signerOf(c.jwt, c.seed);
}

beforeAll(async () => {
  scratch = await scratchDatabase('attack');
  h = await connect(url);
  t = await provision(h, 'atk');
  const foreign = await provision(h, 'atk-x');
  nc = await h.nc(t);
  admin = { by, signer: (await h.tenant(t)).signer as Signer };
  const signerOfRole = async (role: 'orchestrator' | 'sandbox' | 'datasync', tenant = t) => (await (await accessAs(url, role)).tenant(tenant)).signer as Signer;
  as.orchestrator = await signerOfRole(Role.Orchestrator);
  as.sandbox = await signerOfRole(Role.Sandbox);
  as.datasync = await signerOfRole(Role.Datasync);
  as.foreignOrchestrator = await signerOfRole(Role.Orchestrator, foreign);
  as.worker = await signerFromCreds(await issueCreds(url, t, Role.Worker, 'atk-worker', { pools: ['default'] }));
  as.peer = await signerFromCreds(await issueCreds(url, t, Role.Worker, 'atk-peer', { pools: ['default'] }));
  as.otherPool = await signerFromCreds(await issueCreds(url, t, Role.Worker, 'atk-other', { pools: ['other'] }));
  as.foreignWorker = await signerFromCreds(await issueCreds(url, foreign, Role.Worker, 'atk-worker', { pools: ['default'] }));
  const client = await parseCredentials(await (await testAuthStore()).mintUser(t, Role.Client, 'mallory'), 'mallory');
  as.client = signerOf(client.jwt, client.seed);
  const operator = await parseCredentials(await (await testAuthStore()).mintUser(t, Role.Operator, 'olive'), 'olive');
  as.operator = signerOf(operator.jwt, operator.seed);

  secrets = await createSecretsLease(
    secretsConfig({
      ...(await serviceEnv(url, Role.SecretsLease)),
      DATABASE_URL: scratch.url,
      SECRETS_MASTER_KEY: randomBytes(32).toString('base64'),
      CAPSTAN_TENANTS: t,
      SECRETS_DISCOVERY_MS: '200',
      SECRETS_REFRESH_ALLOW: '127.0.0.2',
    }),
    silent,
  );
  await secrets.start();
  // The policy service, for the mode-3b answers: it allows demo.jit's DEMO_API_KEY, nothing else.
  const policyService = await createPolicyService(policyConfig({ ...(await serviceEnv(url, Role.Policy)), CAPSTAN_TENANTS: t }), silent);
  await policyService.start();
  policy = policyService;
  await setPolicy(nc, t, {
    text: `permit(principal in Workflow::"${t}/demo.jit", action == Action::"request-credential", resource == Credential::"${t}/DEMO_API_KEY");`,
    by,
  });
  account = (await h.tenant(t)).account as string;
  d = await openDatabase({ url: scratch.url });
  await eventually('the secrets-lease service serving the tenant', () => Promise.resolve(secrets.watched().includes(t) ? true : undefined), 10_000);
  // Only the orchestrator: runs are scheduled and recorded, and no worker of pool `default`
  // takes them until a test starts one.
  orchestrator = await createOrchestrator(orchestratorConfig({ ...(await serviceEnv(url, Role.Orchestrator)), CAPSTAN_TENANTS: t, ...TEST_DEFAULTS }), silent, {
    registry: createRegistry(workflows),
  });
  await orchestrator.start();
}, 120_000);

afterAll(async () => {
  await worker?.stop();
  await orchestrator?.stop();
  await secrets?.stop();
  await policy?.stop();
  await d?.close();
  await h?.close();
  await scratch?.drop();
});

function item(runId: RunId, over: Partial<WorkItem> = {}): WorkItem {
  return { runId, workflow: 'attack', version: 1, step: 'pwn', attempt: 1, handler: 'spy', mode: 0, timeoutMs: 5000, input: {}, ...over };
}

describe('forged work items: none executed, each dead-lettered as work_rejected', () => {
  it('unsigned, signed by a client, altered after signing, another run’s or tenant’s signature: 0 executed; the orchestrator-signed control runs', async () => {
    const creds = await issueCreds(url, t, Role.Worker, 'atk-spy', { pools: ['spy'] });
    worker = await createWorker(workerConfig({ NATS_URL: url, NATS_CREDS: creds, WORKER_ADMISSION: 'auto' }), silent, { handlers: { spy: () => ((executed += 1), 'ran') } });
    await worker.start();
    const js = await h.js(t);
    const subject = Subjects.work(t, 'spy');
    const publish = (data: Uint8Array, headers: MsgHdrs | undefined, id: string) => js.publish(subject, data, { msgID: id, ...(headers ? { headers } : {}) });
    const sig = (s: Signer, data: Uint8Array, subj = subject) => signWork(s, subj, data);
    const fresh = () => encode(item(newRunId()));
    const selfSigned = (s: Signer): [Uint8Array, MsgHdrs] => {
      const data = fresh();
      return [data, sig(s, data)];
    };
    const runA = newRunId();
    const legit = encode(item(runA));
    const forgeries: [string, Uint8Array, MsgHdrs | undefined][] = [
      ['unsigned', fresh(), undefined],
      ['signed by a client credential', ...selfSigned(as.client)],
      ['signed by a worker credential', ...selfSigned(as.worker)],
      ['signed by another tenant’s orchestrator', ...selfSigned(as.foreignOrchestrator)],
      ['altered after signing (its input)', encode(item(runA, { input: { cmd: 'rm -rf /' } })), sig(as.orchestrator, legit)],
      ['replayed for another run', encode(item(newRunId())), sig(as.orchestrator, legit)],
      ['signed for another pool', legit, sig(as.orchestrator, legit, Subjects.work(t, 'default'))],
      [
        'a signature header with no signer',
        legit,
        (() => {
          const x = natsHeaders();
          x.set(Headers.Signature, sig(as.orchestrator, legit).get(Headers.Signature));
          return x;
        })(),
      ],
    ];
    const dlqBefore = await dlqCount();
    for (const [name, data, headers] of forgeries) await publish(data, headers, `forged:${name}`);
    await eventually('every forgery dead-lettered', async () => ((await dlqCount()) - dlqBefore >= forgeries.length ? true : undefined), 20_000);
    expect(executed).toBe(0);
    const letters = await dlqCodes();
    expect(letters.filter((c) => c === ErrorCode.WorkRejected).length).toBeGreaterThanOrEqual(forgeries.length);
    // The control: the orchestrator's own signature over these bytes runs.
    await publish(legit, sig(as.orchestrator, legit), 'legit');
    await eventually('the signed item ran', () => Promise.resolve(executed === 1 ? true : undefined), 20_000);
    expect(executed).toBe(1);
    await worker.stop();
  });

  it('the sandbox runs only the signed item, exactly: 0 of the altered requests pass its check', () => {
    const account = jwtIssuer(as.orchestrator.jwt);
    const runId = newRunId();
    const spec = { command: ['sh', '-c', 'echo ok'], secrets: ['API_TOKEN'], egress: ['api.example.com:443'] };
    const base: Omit<SandboxExecRequest, 'work'> = { runId, workflow: 'w', step: 's', attempt: 1, mode: 2, spec, timeoutMs: 5000, input: {} };
    const signedItem = (s: Signer, r = base) => {
      const wi: WorkItem = {
        runId: r.runId,
        workflow: r.workflow,
        version: 1,
        step: r.step,
        attempt: r.attempt,
        handler: 'sandbox',
        mode: r.mode,
        timeoutMs: r.timeoutMs,
        input: r.input,
        sandbox: r.spec,
      };
      const data = encode(wi);
      const subject = Subjects.work(t, 'default');
      return signedWork(signWork(s, subject, data), subject, data);
    };
    const good = { ...base, work: signedItem(as.orchestrator) };
    expect(checkExecRequest(good, account).runId).toBe(runId);
    const attempts: SandboxExecRequest[] = [
      base,
      { ...base, work: signedItem(as.client) },
      { ...base, work: signedItem(as.worker) },
      { ...good, spec: { ...spec, command: ['sh', '-c', 'cat /etc/shadow'] } },
      { ...good, spec: { ...spec, secrets: ['API_TOKEN', 'DB_PASSWORD'] } },
      { ...good, spec: { ...spec, egress: ['evil.example.com:443'] } },
      { ...good, attempt: 2 },
      { ...good, mode: 3 },
      { ...good, runId: newRunId() },
      { ...good, work: { ...good.work, item: Buffer.from(encode({ ...decodeItem(good.work.item), runId: newRunId() })).toString('base64') } },
    ];
    let passed = 0;
    for (const a of attempts) {
      try {
        checkExecRequest(a, account);
        passed++;
      } catch (e) {
        expect((e as CapstanError).code).toBe(ErrorCode.WorkRejected);
      }
    }
    expect(passed).toBe(0);
  });
});

describe('forged mode-3b credential answers: none recorded, the run’s stream untouched', () => {
  /** A run whose step `step` attempt 1 is scheduled and recorded as started by `atk-worker` (pool `default`), the holder. */
  async function held(workflow: string, step: string): Promise<RunId> {
    const runId = await h.client.submit(t, workflow, { input: {} });
    await eventually('the step scheduled', async () => ((await eventsOf(h, t, runId)).some((e) => e.type === 'step.scheduled' && e.data.step === step) ? true : undefined), 20_000);
    const data = encode({ runId, step, attempt: 1, worker: 'atk-worker' });
    await (await h.js(t)).publish(Subjects.command(t, CommandVerb.Started), data, { headers: proofHeaders(as.worker, Subjects.command(t, CommandVerb.Started), data) });
    await eventually('the holder recorded', async () => ((await eventsOf(h, t, runId)).some((e) => e.type === 'step.started') ? true : undefined), 20_000);
    return runId;
  }

  it('unsigned, signed by anyone but the worker holding the attempt, altered, or for an attempt it does not hold: 0 recorded; the holder’s answer is', async () => {
    const runId = await held('demo.jit', 'call-api');
    const mode2 = await held('test.canary', 'first');
    const subject = Subjects.command(t, CommandVerb.Credential);
    const answer = (over: Record<string, unknown> = {}) =>
      encode({ runId, step: 'call-api', attempt: 1, name: 'DEMO_API_KEY', reason: 'forged', decision: 'allow', version: 1, policies: ['forged'], ...over });
    const signed = (s: Signer, data: Uint8Array, subj = subject): [Uint8Array, MsgHdrs] => [data, proofHeaders(s, subj, data)];
    const forgeries: [string, Uint8Array, MsgHdrs | undefined, string][] = [
      ['unsigned', answer(), undefined, ErrorCode.Unproven],
      ['signed by a client', ...signed(as.client, answer()), ErrorCode.Unproven],
      ['signed by an operator', ...signed(as.operator, answer()), ErrorCode.Unproven],
      ['signed by the orchestrator', ...signed(as.orchestrator, answer()), ErrorCode.Unproven],
      ['signed by the sandbox service', ...signed(as.sandbox, answer()), ErrorCode.Unproven],
      ['signed by another tenant’s worker of the same name', ...signed(as.foreignWorker, answer()), ErrorCode.Unproven],
      ['the holder’s signature over another answer', answer(), signed(as.worker, answer({ decision: 'deny' }))[1], ErrorCode.Unproven],
      ['the holder’s signature for another subject', answer(), signed(as.worker, answer(), Subjects.command(t, CommandVerb.Policy))[1], ErrorCode.Unproven],
      ['signed by a worker of another pool', ...signed(as.otherPool, answer()), ErrorCode.StepNotHeld],
      ['signed by another worker of the step’s pool', ...signed(as.peer, answer()), ErrorCode.StepNotHeld],
      ['the holder, for an attempt never scheduled', ...signed(as.worker, answer({ attempt: 2 })), ErrorCode.StepNotHeld],
      ['the holder, for a step never scheduled', ...signed(as.worker, answer({ step: 'other' })), ErrorCode.StepNotHeld],
      ['the holder, for a mode-2 step', ...signed(as.worker, answer({ runId: mode2, step: 'first' })), ErrorCode.StepNotHeld],
    ];
    const js = await h.js(t);
    const seqs: [string, number, string][] = [];
    for (const [name, data, headers, code] of forgeries) {
      const ack = await js.publish(subject, data, { msgID: `forged-credential:${name}`, ...(headers ? { headers } : {}) });
      seqs.push([name, ack.seq, code]);
    }
    const codes = await eventually(
      'every forged answer dead-lettered',
      async () => {
        const all = await commandDeadLetters();
        return seqs.every(([, seq]) => all.has(seq)) ? all : undefined;
      },
      30_000,
    );
    expect(Object.fromEntries(seqs.map(([name, seq]) => [name, codes.get(seq)]))).toEqual(Object.fromEntries(seqs.map(([name, , code]) => [name, code])));
    const events = [...(await eventsOf(h, t, runId)), ...(await eventsOf(h, t, mode2))];
    expect(events.filter((e) => e.type === 'credential.decided')).toHaveLength(0);
    // Nothing at all of them reached a run: refusals are dead letters, not events.
    const forged = new Set(seqs.map(([, seq]) => `cmd:${seq}`));
    expect(events.filter((e) => forged.has(e.causationId))).toHaveLength(0);

    // The holder's allows the policy never gave: DEMO_OTHER_KEY is denied (no policy permits it).
    const ask = (name: string, about = credentialAbout(runId, 'call-api', 1, name), worker = 'atk-worker') =>
      askPolicySigned(nc, t, [{ action: PolicyAction.RequestCredential, workflow: 'demo.jit', step: 'call-api', secret: name, worker }], {
        trust: { accounts: [account] },
        about,
      });
    const denied = await ask('DEMO_OTHER_KEY');
    expect(denied.decision.decision).toBe('deny');
    const allowed = await ask('DEMO_API_KEY');
    expect(allowed.decision.decision).toBe('allow');
    const other = (over: Record<string, unknown>) => answer({ name: 'DEMO_OTHER_KEY', ...over });
    const fromPolicy = (a: { decision: { version: number; policies: readonly string[] } }) => ({ version: a.decision.version, policies: [...a.decision.policies] });
    // A policy answer the worker signed itself, in the policy service's shape.
    const selfMade = (() => {
      const request = encode({
        queries: [{ action: PolicyAction.RequestCredential, workflow: 'demo.jit', step: 'call-api', secret: 'DEMO_OTHER_KEY', worker: 'atk-worker' }],
        about: credentialAbout(runId, 'call-api', 1, 'DEMO_OTHER_KEY'),
      });
      const reply = encode({ decision: 'allow', version: allowed.decision.version, policies: ['forged'] });
      const h2 = proofHeaders(as.worker, answerProofSubject(Subjects.policy(t, PolicyVerb.Decide), request), reply);
      return { request, answer: reply, signer: h2.get(Headers.Signer), signature: h2.get(Headers.Signature) };
    })();
    const anotherAttempt = await ask('DEMO_OTHER_KEY', credentialAbout(runId, 'call-api', 2, 'DEMO_OTHER_KEY'));
    const anotherWorker = await ask('DEMO_OTHER_KEY', undefined, 'atk-peer');
    const unallowed: [string, Uint8Array][] = [
      ['the holder’s allow with no policy answer', other({})],
      ['the holder’s allow with the policy’s deny', other({ ...fromPolicy(denied), answer: denied.signed })],
      ['the holder’s allow with another key’s allow', other({ ...fromPolicy(allowed), answer: allowed.signed })],
      ['the holder’s allow with an answer it signed itself', other({ version: allowed.decision.version, policies: ['forged'], answer: selfMade })],
      [
        'the holder’s allow with the deny’s body and the allow’s signature',
        other({ ...fromPolicy(allowed), answer: { ...denied.signed, signer: allowed.signed.signer, signature: allowed.signed.signature } }),
      ],
      ['an answer to another attempt’s question', other({ ...fromPolicy(anotherAttempt), decision: anotherAttempt.decision.decision, answer: anotherAttempt.signed })],
      ['an answer to another worker’s question', other({ ...fromPolicy(anotherWorker), decision: anotherWorker.decision.decision, answer: anotherWorker.signed })],
    ];
    const seqs2: [string, number][] = [];
    for (const [name, data] of unallowed) {
      const [d2, h2] = signed(as.worker, data);
      seqs2.push([name, (await js.publish(subject, d2, { headers: h2, msgID: `unallowed-credential:${name}` })).seq]);
    }
    // Every one decided: the orchestrator's consumer has acknowledged past the last.
    const last2 = Math.max(...seqs2.map(([, seq]) => seq));
    const jsm2 = await h.jsm(t);
    await eventually(
      'every unallowed answer decided',
      async () => ((await jsm2.consumers.info(Streams.commands(t), Consumers.orchestrator)).ack_floor.stream_seq >= last2 ? true : undefined),
      30_000,
    );
    const codes2 = await commandDeadLetters();
    const afterForged = await eventsOf(h, t, runId);
    const allowedRecorded = afterForged.filter((e) => e.type === 'credential.decided' && e.data.decision === 'allow').length;
    // Nothing leased for the key the policy never allowed, to the holder that claimed it was.
    const leased = (await codeOf(issueLease(nc, t, { runId, step: 'call-api', attempt: 1, keys: ['DEMO_OTHER_KEY'] }, { signer: as.worker }))) === 'ok' ? 1 : 0;
    process.stdout.write(`unallowed 3b answers: ${unallowed.length} sent by the holder, recorded as allowed ${allowedRecorded}, leases issued ${leased}\n`);
    expect(Object.fromEntries(seqs2.map(([name, seq]) => [name, codes2.get(seq)]))).toEqual(Object.fromEntries(seqs2.map(([name]) => [name, ErrorCode.Unproven])));
    expect(allowedRecorded).toBe(0);
    expect(leased).toBe(0);

    // The controls: the holder forwards the policy's allow, and the policy's deny, as they are.
    const [data, headers] = signed(as.worker, answer({ reason: 'call the demo API', ...fromPolicy(allowed), answer: allowed.signed }));
    await js.publish(subject, data, { headers, msgID: 'holder-credential' });
    const decided = await eventually('the holder’s answer recorded', async () => (await eventsOf(h, t, runId)).find((e) => e.type === 'credential.decided'), 20_000);
    expect(decided.type === 'credential.decided' && decided.data).toMatchObject({ name: 'DEMO_API_KEY', decision: 'allow', reason: 'call the demo API' });
    const [data2, headers2] = signed(as.worker, other({ decision: 'deny', reason: 'try the other key', ...fromPolicy(denied), answer: denied.signed }));
    await js.publish(subject, data2, { headers: headers2, msgID: 'holder-credential-deny' });
    const deniedRecorded = await eventually('the policy’s deny recorded', async () =>
      (await eventsOf(h, t, runId)).find((e) => e.type === 'credential.decided' && e.data.name === 'DEMO_OTHER_KEY'),
    );
    expect(deniedRecorded.type === 'credential.decided' && deniedRecorded.data.decision).toBe('deny');
  });
});

describe('forged step starts: none recorded, the run’s stream untouched', () => {
  it('unsigned, signed by anyone but a worker of the step’s pool, naming another worker, altered, or for an attempt never scheduled: 0 recorded; a worker of the pool is recorded with its key', async () => {
    const runId = await h.client.submit(t, 'test.canary', { input: {} });
    await eventually(
      'the step scheduled',
      async () => ((await eventsOf(h, t, runId)).some((e) => e.type === 'step.scheduled' && e.data.step === 'first') ? true : undefined),
      20_000,
    );
    const subject = Subjects.command(t, CommandVerb.Started);
    const start = (over: Record<string, unknown> = {}) => encode({ runId, step: 'first', attempt: 1, worker: 'atk-worker', ...over });
    const signed = (s: Signer, data: Uint8Array, subj = subject): [Uint8Array, MsgHdrs] => [data, proofHeaders(s, subj, data)];
    const forgeries: [string, Uint8Array, MsgHdrs | undefined, string][] = [
      ['unsigned', start(), undefined, ErrorCode.Unproven],
      ['signed by a client', ...signed(as.client, start()), ErrorCode.Unproven],
      ['signed by an operator', ...signed(as.operator, start()), ErrorCode.Unproven],
      ['signed by the orchestrator', ...signed(as.orchestrator, start()), ErrorCode.Unproven],
      ['signed by the sandbox service', ...signed(as.sandbox, start()), ErrorCode.Unproven],
      ['signed by another tenant’s worker of the same name', ...signed(as.foreignWorker, start()), ErrorCode.Unproven],
      ['a worker’s signature over another start', start(), signed(as.worker, start({ attempt: 2 }))[1], ErrorCode.Unproven],
      ['a worker’s signature for another subject', start(), signed(as.worker, start(), Subjects.command(t, CommandVerb.Result))[1], ErrorCode.Unproven],
      ['signed by a worker of another pool, naming itself', ...signed(as.otherPool, start({ worker: 'atk-other' })), ErrorCode.StepNotHeld],
      ['signed by a worker of the pool, naming another worker', ...signed(as.peer, start()), ErrorCode.StepNotHeld],
      ['a worker of the pool, for an attempt never scheduled', ...signed(as.worker, start({ attempt: 2 })), ErrorCode.StepNotHeld],
      ['a worker of the pool, for a step never scheduled', ...signed(as.worker, start({ step: 'other' })), ErrorCode.StepNotHeld],
    ];
    const js = await h.js(t);
    const seqs: [string, number, string][] = [];
    for (const [name, data, headers, code] of forgeries) {
      const ack = await js.publish(subject, data, { msgID: `forged-started:${name}`, ...(headers ? { headers } : {}) });
      seqs.push([name, ack.seq, code]);
    }
    // Every forgery decided: the orchestrator's consumer has acknowledged past the last one.
    const last = Math.max(...seqs.map(([, seq]) => seq));
    const jsm = await h.jsm(t);
    await eventually(
      'every forged start decided',
      async () => ((await jsm.consumers.info(Streams.commands(t), Consumers.orchestrator)).ack_floor.stream_seq >= last ? true : undefined),
      30_000,
    );
    const codes = await commandDeadLetters();
    const events = await eventsOf(h, t, runId);
    const recorded = events.filter((e) => e.type === 'step.started').length;
    process.stdout.write(`forged starts: ${forgeries.length} sent, step.started recorded ${recorded}\n`);
    expect(Object.fromEntries(seqs.map(([name, seq]) => [name, codes.get(seq)]))).toEqual(Object.fromEntries(seqs.map(([name, , code]) => [name, code])));
    expect(recorded).toBe(0);
    const forged = new Set(seqs.map(([, seq]) => `cmd:${seq}`));
    expect(events.filter((e) => forged.has(e.causationId))).toHaveLength(0);

    // The control: a worker of the step's pool, naming itself, is recorded with its key.
    const [data, headers] = signed(as.worker, start());
    await js.publish(subject, data, { headers, msgID: 'worker-started' });
    const started = await eventually('the worker’s start recorded', async () => (await eventsOf(h, t, runId)).find((e) => e.type === 'step.started'), 20_000);
    expect(started.type === 'step.started' && started.data).toMatchObject({
      step: 'first',
      attempt: 1,
      worker: 'atk-worker',
      signer: { name: 'atk-worker', key: as.worker.publicKey, role: Role.Worker },
    });
  });
});

describe('leases: warranted by the run’s record, bound to the sandbox service', () => {
  let runId: RunId;
  let keys: string[];
  let granted: string | undefined;

  beforeAll(async () => {
    keys = Array.from({ length: 24 }, (_, i) => `CANARY_${i}`);
    for (const k of keys) await putSecret(nc, t, k, `canary-${k}-${randomBytes(6).toString('hex')}`, { ...admin });
    await putSecret(nc, t, 'DB_PASSWORD', `db-${randomBytes(8).toString('hex')}`, { ...admin });
    // A real run: its first step (mode 2, 24 declared keys, pool `default`) is scheduled
    // and waits for a worker, which is not running.
    runId = await h.client.submit(t, 'test.canary', { input: {} });
    await eventually(
      'the mode-2 step scheduled',
      async () => ((await eventsOf(h, t, runId)).some((e) => e.type === 'step.scheduled' && e.data.step === 'first') ? true : undefined),
      20_000,
    );
  }, 60_000);

  it('forged issues: 0 leases granted; the worker of the step’s pool gets one', async () => {
    const forged: [string, () => Promise<unknown>][] = [
      ['nonexistent run', () => issueLease(nc, t, { runId: newRunId(), step: 'first', attempt: 1, keys: ['CANARY_0'] }, { signer: as.worker })],
      ['undeclared key', () => issueLease(nc, t, { runId, step: 'first', attempt: 1, keys: ['DB_PASSWORD'] }, { signer: as.worker })],
      ['declared and undeclared', () => issueLease(nc, t, { runId, step: 'first', attempt: 1, keys: ['CANARY_0', 'DB_PASSWORD'] }, { signer: as.worker })],
      ['another attempt', () => issueLease(nc, t, { runId, step: 'first', attempt: 2, keys: ['CANARY_0'] }, { signer: as.worker })],
      ['a step not scheduled yet', () => issueLease(nc, t, { runId, step: 'second', attempt: 1, keys: ['CANARY_24'] }, { signer: as.worker })],
      ['a worker of another pool', () => issueLease(nc, t, { runId, step: 'first', attempt: 1, keys: ['CANARY_0'] }, { signer: as.otherPool })],
      ['a client', () => issueLease(nc, t, { runId, step: 'first', attempt: 1, keys: ['CANARY_0'] }, { signer: as.client })],
      ['the sandbox service', () => issueLease(nc, t, { runId, step: 'first', attempt: 1, keys: ['CANARY_0'] }, { signer: as.sandbox })],
      ['unsigned', () => issueLease(nc, t, { runId, step: 'first', attempt: 1, keys: ['CANARY_0'] })],
    ];
    let leases = 0;
    const codes: Record<string, string> = {};
    for (const [name, ask] of forged) {
      const code = await codeOf(ask());
      codes[name] = code;
      if (code === 'ok') leases++;
    }
    expect(leases).toBe(0);
    expect(codes['unsigned']).toBe(ErrorCode.Unproven);
    expect(codes['undeclared key']).toBe(ErrorCode.LeaseNotWarranted);
    expect(codes['nonexistent run']).toBe(ErrorCode.LeaseNotWarranted);
    granted = (await issueLease(nc, t, { runId, step: 'first', attempt: 1, keys: ['CANARY_0', 'CANARY_1'] }, { signer: as.worker })).leaseId;
    expect(granted).toBeTruthy();
  });

  it('a second lease of a key for the same attempt: 0 granted, whoever of the pool asks', async () => {
    const again: [string, () => Promise<unknown>][] = [
      ['the same worker, the same keys', () => issueLease(nc, t, { runId, step: 'first', attempt: 1, keys: ['CANARY_0', 'CANARY_1'] }, { signer: as.worker })],
      ['the same worker, one key again', () => issueLease(nc, t, { runId, step: 'first', attempt: 1, keys: ['CANARY_1', 'CANARY_2'] }, { signer: as.worker })],
      ['another worker of the step’s pool', () => issueLease(nc, t, { runId, step: 'first', attempt: 1, keys: ['CANARY_0'] }, { signer: as.peer })],
    ];
    let leases = 0;
    const codes: Record<string, string> = {};
    for (const [name, ask] of again) {
      codes[name] = await codeOf(ask());
      if (codes[name] === 'ok') leases++;
    }
    expect(leases).toBe(0);
    expect(new Set(Object.values(codes))).toEqual(new Set([ErrorCode.LeaseAlreadyIssued]));
    const refused = await queryRows<{ n: number }>(
      d,
      sql`select count(*)::int as n from audit_log where tenant = ${t} and run_id = ${runId} and kind = 'lease.denied' and detail->>'code' = ${ErrorCode.LeaseAlreadyIssued}`,
    );
    expect(refused[0]?.n).toBe(again.length);
  });

  it('redeemed by anyone but the sandbox service, or unsigned: 0 secrets obtained; the sandbox service gets them', async () => {
    const leaseId = granted as string;
    const scope = { leaseId, runId, step: 'first', attempt: 1 };
    let obtained = 0;
    for (const signer of [as.worker, as.client, as.datasync, as.orchestrator, undefined]) {
      const r = generateRecipient();
      const claim = await codeOf(claimLease(nc, t, { ...scope, sandbox: 'cap-evil' }, signer ? { signer } : {}));
      expect(claim).not.toBe('ok');
      try {
        await redeemLease(nc, t, { ...scope, recipientKey: r.publicKey }, signer ? { signer } : {});
        obtained++;
      } catch (e) {
        expect([ErrorCode.LeaseWrongRedeemer, ErrorCode.Unproven]).toContain((e as CapstanError).code);
      }
    }
    expect(obtained).toBe(0);
    const refused = await queryRows<{ code: string }>(
      d,
      sql`select detail->>'code' as code from audit_log where tenant = ${t} and kind = 'lease.denied' and detail->>'leaseId' = ${leaseId}`,
    );
    expect(refused.filter((x) => x.code === ErrorCode.LeaseWrongRedeemer).length).toBeGreaterThanOrEqual(4);
    // The bound redeemer: claimed and redeemed once, values sealed to its one-time key.
    await claimLease(nc, t, { ...scope, sandbox: `cap-${runId}-first-1` }, { signer: as.sandbox });
    const r = generateRecipient();
    const { sealed } = await redeemLease(nc, t, { ...scope, recipientKey: r.publicKey }, { signer: as.sandbox });
    expect(sealed).toBeTruthy();
  });

  it('the lease id travels nowhere another principal reads: not in the run stream, the work item or a dead letter', async () => {
    const leaseId = granted as string;
    const jsm = await h.jsm(t);
    for (const stream of [Streams.runs(t), Streams.work(t), Streams.deadLetters(t)]) {
      const info = await jsm.streams.info(stream).catch(() => undefined);
      if (!info) continue;
      for (let seq = info.state.first_seq; seq <= info.state.last_seq; seq++) {
        const m = await jsm.streams.getMessage(stream, { seq }).catch(() => undefined);
        if (!m) continue;
        expect(Buffer.from(m.data).includes(Buffer.from(leaseId))).toBe(false);
      }
    }
  });
});

describe('the refresher is no deputy', () => {
  let hits: { where: string; body: string }[];
  let servers: Server[];
  let loopback = '';
  let allowed = '';
  let redirecting = '';

  beforeAll(async () => {
    hits = [];
    const listen = async (host: string, answer: (req: IncomingMessage, body: string) => { status: number; headers?: Record<string, string>; body: string }) => {
      const s = createServer((req, res) => {
        let body = '';
        req.on('data', (c: Buffer) => (body += c.toString()));
        req.on('end', () => {
          hits.push({ where: `${host}${req.url ?? ''}`, body });
          const a = answer(req, body);
          res.writeHead(a.status, { 'content-type': 'application/json', ...a.headers }).end(a.body);
        });
      });
      await new Promise<void>((r) => s.listen(0, host, r));
      return { s, port: (s.address() as AddressInfo).port };
    };
    const a = await listen('127.0.0.1', () => ({ status: 200, body: JSON.stringify({ access_token: 'stolen', expires_in: 60 }) }));
    const b = await listen('127.0.0.2', (req) =>
      req.url === '/redirect'
        ? { status: 302, headers: { location: `http://127.0.0.1:${a.port}/token` }, body: '' }
        : { status: 200, body: JSON.stringify({ access_token: 'fresh-token', expires_in: 3600 }) },
    );
    servers = [a.s, b.s];
    loopback = `127.0.0.1:${a.port}`;
    allowed = `127.0.0.2:${b.port}`;
    redirecting = `http://${allowed}/redirect`;
  });
  afterAll(async () => {
    await Promise.all(servers.map((s) => new Promise<void>((r) => s.close(() => r()))));
  });

  it('loopback, private, link-local, plain-http, unbound-secret and redirecting endpoints: 0 values sent; an allowed, bound one is called', async () => {
    await putSecret(nc, t, 'VICTIM_PASSWORD', `victim-${randomBytes(8).toString('hex')}`, { ...admin });
    const password = 'VICTIM_PASSWORD';
    const cases: [string, string, string | undefined][] = [
      ['loopback over http', `http://${loopback}/token`, undefined],
      ['loopback over https', `https://${loopback}/token`, undefined],
      ['localhost', `https://localhost:${loopback.split(':')[1] ?? ''}/token`, undefined],
      ['private', 'https://10.1.2.3/token', undefined],
      ['link-local metadata', 'http://169.254.169.254/latest/meta-data', undefined],
      ['IPv4-mapped loopback', `https://[::ffff:127.0.0.1]:${loopback.split(':')[1] ?? ''}/token`, undefined],
      ['allowed address, another secret not bound to the connector', `http://${allowed}/token`, password],
      ['allowed address redirecting to loopback', redirecting, 'bound'],
    ];
    let n = 0;
    for (const [name, tokenUrl, secretKey] of cases) {
      n++;
      const connectorName = `c${n}`;
      const clientSecretKey = secretKey === 'bound' ? `BOUND_${n}` : (secretKey ?? `CLIENT_${n}`);
      const connector: Connector = { name: connectorName, auth: { type: AuthKind.OAuth2ClientCredentials, tokenUrl, clientId: 'x', clientSecretKey } };
      if (secretKey !== password) await putSecret(nc, t, clientSecretKey, `client-secret-${n}`, { ...admin, connector });
      await putSecret(nc, t, `TOKEN_${n}`, 'placeholder', { ...admin, lifecycle: Lifecycle.Refreshable, connector });
      const code = await codeOf(rotateSecret(nc, t, `TOKEN_${n}`, undefined, { ...admin }));
      expect([name, code]).not.toEqual([name, 'ok']);
    }
    // Nothing reached the loopback listener; the allowed one got only the redirect request (whose client secret was bound to it), nothing with the victim's value.
    const victim = hits.filter((x) => x.body.includes('victim-'));
    expect(victim).toHaveLength(0);
    expect(hits.filter((x) => x.where.startsWith('127.0.0.1'))).toHaveLength(0);
    // Every refused refresh is an audit row.
    const failed = await queryRows<{ name: string }>(d, sql`select detail->>'name' as name from audit_log where tenant = ${t} and kind = 'secret.refresh_failed'`);
    expect(failed.length).toBeGreaterThanOrEqual(cases.length);
    // The control: an allowed endpoint with a secret bound to its connector is called, once.
    const connector: Connector = {
      name: 'good',
      auth: { type: AuthKind.OAuth2ClientCredentials, tokenUrl: `http://${allowed}/token`, clientId: 'x', clientSecretKey: 'GOOD_CLIENT' },
    };
    await putSecret(nc, t, 'GOOD_CLIENT', 'good-client-secret', { ...admin, connector });
    await putSecret(nc, t, 'GOOD_TOKEN', 'placeholder', { ...admin, lifecycle: Lifecycle.Refreshable, connector });
    const before = hits.length;
    expect((await rotateSecret(nc, t, 'GOOD_TOKEN', undefined, { ...admin })).version).toBe(2);
    expect(hits.slice(before).map((x) => x.where)).toEqual(['127.0.0.2/token']);
  });
});

describe('secrets administration: only a proven operator (or the console or admin for its user)', () => {
  it('unsigned, or signed by any other role or tenant: 0 secrets stored, rotated, deleted, listed or runs revoked; an operator is recorded as who signed', async () => {
    await putSecret(nc, t, 'ADMIN_TARGET', 'original', admin);
    const victimRun = newRunId();
    const forgers: [string, Signer | undefined][] = [
      ['unsigned', undefined],
      ['a client', as.client],
      ['a worker', as.worker],
      ['the sandbox service', as.sandbox],
      ['the datasync service', as.datasync],
      ['the orchestrator', as.orchestrator],
      ['another tenant’s orchestrator', as.foreignOrchestrator],
    ];
    let through = 0;
    const codes = new Set<string>();
    for (const [, signer] of forgers) {
      // Each claims to be the tenant's security lead: a claim is not a proof.
      const o = { by: 'ceo', ...(signer ? { signer } : {}) };
      for (const attempt of [
        () => putSecret(nc, t, 'ADMIN_TARGET', 'forged', o),
        () => putSecret(nc, t, 'ADMIN_PLANTED', 'forged', o),
        () => rotateSecret(nc, t, 'ADMIN_TARGET', 'forged', o),
        () => deleteSecret(nc, t, 'ADMIN_TARGET', o),
        () => listSecrets(nc, t, o),
        () => revokeRun(nc, t, victimRun, o),
      ]) {
        const code = await codeOf(attempt());
        if (code === 'ok') through++;
        codes.add(code);
      }
    }
    expect(through).toBe(0);
    expect([...codes]).toEqual([ErrorCode.Unproven]);
    const listed = await listSecrets(nc, t, { ...admin, includeDeleted: true });
    expect(listed.find((x) => x.name === 'ADMIN_TARGET')).toMatchObject({ version: 1 });
    expect(listed.find((x) => x.name === 'ADMIN_TARGET')?.deletedAt).toBeUndefined();
    expect(listed.some((x) => x.name === 'ADMIN_PLANTED')).toBe(false);
    const revoked = await queryRows(d, sql`select 1 from lease_revocations where tenant = ${t} and run_id = ${victimRun}`);
    expect(revoked).toHaveLength(0);

    // The control: an operator rotates, and is recorded by the name its credential carries, not the one it states.
    expect((await rotateSecret(nc, t, 'ADMIN_TARGET', 'next', { by: 'ceo', signer: as.operator })).version).toBe(2);
    const actors = await queryRows<{ actor: string }>(d, sql`select actor from audit_log where tenant = ${t} and kind = 'secret.rotated' and detail->>'name' = 'ADMIN_TARGET'`);
    expect(actors.map((x) => x.actor)).toEqual(['olive']);
  });
});

describe('the sealing key is the tenant’s secrets-lease service’s, proven', () => {
  it('a key handed out by anyone else: 0 values sealed to it or sent; the service’s own signed key is used', async () => {
    // A tenant whose key requests an attacker answers (no secrets-lease service serves it).
    const victim = await provision(h, 'atk-seal');
    const vnc = await h.nc(victim);
    const attacker = generateRecipient();
    const forger = await parseCredentials(await (await testAuthStore()).mintUser(victim, Role.Operator, 'mallory'), 'mallory');
    let puts = 0;
    const subs = [
      vnc.subscribe(Subjects.secrets(victim, 'key'), {
        callback: (_e, m) =>
          void m.respond(encode({ publicKey: attacker.publicKey }), {
            headers: signWork(signerOf(forger.jwt, forger.seed), Subjects.secrets(victim, 'key'), encode({ publicKey: attacker.publicKey })),
          }),
      }),
      vnc.subscribe(Subjects.secrets(victim, 'put'), { callback: () => void puts++ }),
    ];
    const account = jwtIssuer(forger.jwt);
    const code = await codeOf(putSecret(vnc, victim, 'SEALED', 'never-sent', { by, account, timeoutMs: 2000 }));
    expect(code).toBe(ErrorCode.SealingKeyMismatch);
    await vnc.flush();
    expect(puts).toBe(0);
    for (const x of subs) x.unsubscribe();
    // The control: the real service's key, signed by it, is used.
    const own = await putSecret(nc, t, 'SEALED_OK', 'sent-sealed', { ...admin, account: jwtIssuer(as.orchestrator.jwt) });
    expect(own.version).toBe(1);
  });
});

// ---------------------------------------------------------------------------------------

/** Dead letters of commands: source stream sequence → error code. */
async function commandDeadLetters(): Promise<Map<number, string>> {
  const out = new Map<number, string>();
  for (const m of await readFrom(await h.jsm(t), Streams.deadLetters(t), Subjects.deadLetter(t, DeadLetterSource.Command), 1)) {
    out.set(Number(m.header.get(Headers.SourceSeq)), m.header.get(Headers.ErrorCode));
  }
  return out;
}

async function dlqCount(): Promise<number> {
  const info = await (await h.jsm(t)).streams.info(Streams.deadLetters(t)).catch(() => undefined);
  return info?.state.messages ?? 0;
}

async function dlqCodes(): Promise<string[]> {
  const jsm = await h.jsm(t);
  const info = await jsm.streams.info(Streams.deadLetters(t));
  const out: string[] = [];
  for (let seq = info.state.first_seq; seq <= info.state.last_seq; seq++) {
    const m = await jsm.streams.getMessage(Streams.deadLetters(t), { seq }).catch(() => undefined);
    const code = m?.header?.get(Headers.ErrorCode);
    if (code) out.push(code);
  }
  return out;
}

function decodeItem(b64: string): WorkItem {
  return decode(new Uint8Array(Buffer.from(b64, 'base64'))) as WorkItem;
}

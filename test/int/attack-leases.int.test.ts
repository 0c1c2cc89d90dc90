/**
 * Attacks on work items, leases and the credential refresher, played as an attacker inside
 * the tenant would (auth on: operator/JWT mode, an account per tenant, a user per role).
 * Each forgery is counted, never assumed: items executed, leases granted, secrets obtained,
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
  checkExecRequest,
  claimLease,
  generateRecipient,
  issueLease,
  jwtIssuer,
  newRunId,
  openDatabase,
  parseCredentials,
  putSecret,
  queryRows,
  readCredentials,
  redeemLease,
  rotateSecret,
  signerOf,
  signWork,
  signedWork,
  type Database,
  type NatsConnection,
  type Signer,
} from '@capstan/kit';
import { createOrchestrator, loadConfig as orchestratorConfig, type OrchestratorApp } from '@capstan/orchestrator';
import { createSecretsLease, loadConfig as secretsConfig, type SecretsLeaseService } from '@capstan/secrets-lease';
import { createWorker, loadConfig as workerConfig, type WorkerApp } from '@capstan/worker';
import { createRegistry } from '@capstan/actors';
import {
  AuthKind,
  CapstanError,
  decode,
  encode,
  ErrorCode,
  Headers,
  Lifecycle,
  Role,
  Streams,
  Subjects,
  type Connector,
  type RunId,
  type SandboxExecRequest,
  type TenantId,
  type WorkItem,
} from '@capstan/schemas';
import { accessAs, connect, eventually, eventsOf, issueCreds, provision, serviceEnv, silent, testAuthStore, TEST_DEFAULTS, type Harness } from '../harness/fixtures.js';
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
/** Signers: the tenant's orchestrator, sandbox and datasync services, a worker of pool `default`, a client. */
const as: Record<'orchestrator' | 'sandbox' | 'datasync' | 'worker' | 'otherPool' | 'client' | 'foreignOrchestrator', Signer> = {} as never;
/** How many times a forged work item's handler ran. */
let executed = 0;

async function codeOf(p: Promise<unknown>): Promise<string> {
  try {
    await p;
    return 'ok';
  } catch (e) {
    return CapstanError.is(e) ? e.code : String(e);
  }
}

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
  const signerOfRole = async (role: 'orchestrator' | 'sandbox' | 'datasync', tenant = t) => (await (await accessAs(url, role)).tenant(tenant)).signer as Signer;
  as.orchestrator = await signerOfRole(Role.Orchestrator);
  as.sandbox = await signerOfRole(Role.Sandbox);
  as.datasync = await signerOfRole(Role.Datasync);
  as.foreignOrchestrator = await signerOfRole(Role.Orchestrator, foreign);
  as.worker = await signerFromCreds(await issueCreds(url, t, Role.Worker, 'atk-worker', { pools: ['default'] }));
  as.otherPool = await signerFromCreds(await issueCreds(url, t, Role.Worker, 'atk-other', { pools: ['other'] }));
  const client = await parseCredentials(await (await testAuthStore()).mintUser(t, Role.Client, 'mallory'), 'mallory');
  as.client = signerOf(client.jwt, client.seed);

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

describe('leases: warranted by the run’s record, bound to the sandbox service', () => {
  let runId: RunId;
  let keys: string[];
  let granted: string | undefined;

  beforeAll(async () => {
    keys = Array.from({ length: 24 }, (_, i) => `CANARY_${i}`);
    for (const k of keys) await putSecret(nc, t, k, `canary-${k}-${randomBytes(6).toString('hex')}`, { by });
    await putSecret(nc, t, 'DB_PASSWORD', `db-${randomBytes(8).toString('hex')}`, { by });
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
    await putSecret(nc, t, 'VICTIM_PASSWORD', `victim-${randomBytes(8).toString('hex')}`, { by });
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
      if (secretKey !== password) await putSecret(nc, t, clientSecretKey, `client-secret-${n}`, { by, connector });
      await putSecret(nc, t, `TOKEN_${n}`, 'placeholder', { by, lifecycle: Lifecycle.Refreshable, connector });
      const code = await codeOf(rotateSecret(nc, t, `TOKEN_${n}`, undefined, { by }));
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
    await putSecret(nc, t, 'GOOD_CLIENT', 'good-client-secret', { by, connector });
    await putSecret(nc, t, 'GOOD_TOKEN', 'placeholder', { by, lifecycle: Lifecycle.Refreshable, connector });
    const before = hits.length;
    expect((await rotateSecret(nc, t, 'GOOD_TOKEN', undefined, { by })).version).toBe(2);
    expect(hits.slice(before).map((x) => x.where)).toEqual(['127.0.0.2/token']);
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
    const own = await putSecret(nc, t, 'SEALED_OK', 'sent-sealed', { by, account: jwtIssuer(as.orchestrator.jwt) });
    expect(own.version).toBe(1);
  });
});

// ---------------------------------------------------------------------------------------

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

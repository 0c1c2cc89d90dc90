/**
 * `capstan dev`: the whole platform on one machine, under the same tenancy model as
 * production. Keeps a key store in `.capstan/dev/auth` (made on first start, owner-only),
 * starts a private nats-server in operator mode (unless NATS_URL is set), provisions the
 * `demo` tenant (its account, quota, streams, registry record), issues a client and a
 * worker credential, runs every service in-process, each with its own credential, and with
 * `--demo` runs the demo workflows while printing their progress.
 */
import { execFileSync } from 'node:child_process';
import { createServer } from 'node:net';
import { randomBytes } from 'node:crypto';
import { existsSync, mkdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { createOrchestrator, loadConfig as orchestratorConfig } from '@capstan/orchestrator';
import { createWorker, loadConfig as workerConfig } from '@capstan/worker';
import { createSandboxService, loadConfig as sandboxConfig } from '@capstan/sandbox';
import { createPolicyService, loadConfig as policyConfig } from '@capstan/policy';
import { createSecretsLease, loadConfig as secretsConfig } from '@capstan/secrets-lease';
import { createDatasync, loadConfig as datasyncConfig } from '@capstan/datasync';
import { createProjector, loadConfig as projectorConfig, type ProjectorApp } from '@capstan/projector';
import { createConsole, localAdmin, loadConfig as consoleConfig, newApiToken } from '@capstan/console';
import { createIngress, loadConfig as ingressConfig } from '@capstan/ingress';
import {
  connectNats,
  createAuditSink,
  createClient,
  migrate,
  openDatabase,
  createLogger,
  ensurePlatform,
  findNatsServer,
  issueCredential,
  listSecrets,
  newRunId,
  openAuthStore,
  parseCredentials,
  PROJECT_ROOT,
  provisionTenant,
  putSecret,
  readRun,
  serviceAccess,
  setPolicy,
  startNatsServer,
  startNatsCluster,
  signerOf,
  type Signer,
  tenantConnection,
  type AuthStore,
  startTelemetry,
  telemetryConfig,
  type NatsServer,
  type TenantConnection,
} from '@capstan/kit';
import { InvalidArgumentError, parseTenantId, Role, runIdOfSubject, Subjects, type RunEvent, type RunId, type ServiceRole, CapstanError, ErrorCode } from '@capstan/schemas';
import { parse } from './args.js';
import { DEV_AUTH_DIR, DEV_CONSOLE_URL_FILE, DEV_DIR, DEV_TOKEN_FILE, DEV_URL_FILE } from './context.js';
import { bold, colorStatus, cyan, describe, dim, green, red } from './format.js';
import { startFleetAuthority } from './fleet-authority.js';

const say = (s: string) => process.stdout.write(`${s}\n`);

/** The dev servers' usual ports, so URLs in docs work; any free port when taken. */
const DEV_PORT = 4333;
const DEV_CONSOLE_PORT = 4335;
const DEV_INGRESS_PORT = 4336;
/** The dev CLI token lives as long as a dev stack might (it is made again at each start). */
const DEV_TOKEN_DAYS = 30;
const PGLITE_DIR = join(DEV_DIR, 'pg');

function preferredPort(port = DEV_PORT, fallback = -1): Promise<number> {
  return new Promise((resolve) => {
    const probe = createServer();
    probe.once('error', () => resolve(fallback));
    probe.listen(port, '127.0.0.1', () => probe.close(() => resolve(port)));
  });
}

/** Waits (up to 10 s) until the projections have caught up with every run stream. */
async function waitForProjections(projector: ProjectorApp): Promise<void> {
  const deadline = Date.now() + 10_000;
  while (Date.now() < deadline) {
    const lag = await projector.lag();
    if (lag.every((l) => l.lag === 0)) return;
    await new Promise((r) => setTimeout(r, 100));
  }
}

function portFlag(raw: unknown): number {
  const n = Number(raw);
  if (!Number.isInteger(n) || n < 1 || n > 65535) throw new InvalidArgumentError(`--port must be a TCP port (1-65535), got ${JSON.stringify(raw)}`);
  return n;
}

function ensureNatsBinary(): string {
  try {
    return findNatsServer();
  } catch (e) {
    if (!CapstanError.is(e, ErrorCode.NatsServerMissing)) throw e;
    // The installer is repository tooling: in a checkout it fetches the binary into
    // .capstan/bin; anywhere else the error stands and says to set CAPSTAN_NATS_SERVER.
    const installer = join(PROJECT_ROOT, 'infra', 'nats', 'install.mjs');
    if (!existsSync(installer)) throw e;
    say(dim('nats-server >= 2.12 not found; installing it into .capstan/bin …'));
    execFileSync(process.execPath, [installer], { stdio: 'inherit' });
    return findNatsServer();
  }
}

export async function devCmd(argv: string[]): Promise<number> {
  const { values } = parse(
    argv,
    {
      demo: { type: 'boolean' },
      exit: { type: 'boolean' },
      tenant: { type: 'string', default: 'demo' },
      port: { type: 'string' },
      fresh: { type: 'boolean' },
      nats: { type: 'string' },
      db: { type: 'string' },
      cluster: { type: 'boolean' },
    },
    [],
  );
  const tenant = parseTenantId(values['tenant']);
  let server: Pick<NatsServer, 'stop'> | undefined;
  const clustered = values['cluster'] === true;
  let url = typeof values['nats'] === 'string' ? values['nats'] : process.env['NATS_URL'];
  const storeDir = join(DEV_DIR, clustered ? 'nats-cluster' : 'nats');
  mkdirSync(DEV_DIR, { recursive: true, mode: 0o700 });
  // The key store survives --fresh: a fresh server learns every account from it again.
  const store = await openAuthStore(DEV_AUTH_DIR, { create: true });
  const logLevel = (process.env['LOG_LEVEL'] ?? 'warn') as 'warn';
  const devLog = createLogger('dev', logLevel, process.stderr);
  if (!url) {
    if (values['fresh']) rmSync(storeDir, { recursive: true, force: true });
    if (values['fresh']) rmSync(PGLITE_DIR, { recursive: true, force: true });
    if (clustered) {
      // Three nodes on loopback, the production shape in miniature (docs/cluster.md).
      say(dim('starting a 3-node nats-server cluster (JetStream, operator mode: an account per tenant) …'));
      const cluster = await startNatsCluster({ binary: ensureNatsBinary(), storeDir, auth: store });
      server = cluster;
      url = cluster.urls;
    } else {
      say(dim('starting nats-server (JetStream, operator mode: an account per tenant) …'));
      const single = await startNatsServer({ binary: ensureNatsBinary(), storeDir, port: values['port'] ? portFlag(values['port']) : await preferredPort(), auth: store });
      server = single;
      url = single.url;
    }
    writeFileSync(DEV_URL_FILE, url);
  } else {
    // A server of the user's: it must run in operator mode with this key store (docs/tenancy.md).
    await ensurePlatform({ servers: url, store, log: devLog });
  }
  const admin = { servers: url, store, log: devLog };
  // On the cluster the dev tenant's streams are kept on all three nodes.
  await provisionTenant(admin, tenant, clustered ? { placement: { replicas: 3, tags: [] } } : {});
  const credsOf = await devCredentials(admin, tenant);
  const env = {
    ...process.env,
    NATS_URL: url,
    LOG_LEVEL: logLevel,
    ORCH_DISCOVERY_MS: '500',
    WORKER_DISCOVERY_MS: '500',
    POLICY_DISCOVERY_MS: '500',
    SECRETS_DISCOVERY_MS: '500',
    SANDBOX_DISCOVERY_MS: '500',
    WORKER_ADMISSION: 'auto',
  };
  /** A service's environment: its own credential, and nothing it could act on elsewhere with. */
  const as = (role: ServiceRole, extra: Record<string, string> = {}) => ({ ...env, NATS_CREDS: store.serviceCredsPath(role), ...extra });
  // The dev stack's own actions (policy, secrets, the demo's approvals) are an operator's.
  // One process, every service: one tracing SDK and one metrics endpoint for them all.
  const telemetry = await startTelemetry('dev', telemetryConfig(env), devLog);
  const operator = await connectAs(url, await store.mintUser(tenant, Role.Operator, 'capstan-dev', {}, 30 * 86_400), tenant);
  const nc = operator.nc;
  // Projections: Postgres when given one, else PGlite (embedded Postgres) in .capstan/dev/pg.
  const dbUrl = typeof values['db'] === 'string' ? values['db'] : process.env['DATABASE_URL'];
  say(dim(dbUrl ? 'opening the projections database …' : 'opening the embedded projections database (PGlite) …'));
  const dbLog = createLogger('projector', logLevel, process.stderr);
  const database = await openDatabase(dbUrl ? { url: dbUrl, log: dbLog } : { dataDir: PGLITE_DIR, log: dbLog });
  await migrate(database);
  // Policy (Cedar) and secrets (envelope-encrypted in the same database): the dev tenant gets
  // the dev policy and two demo secrets, made once with random values.
  const policyService = await createPolicyService(policyConfig(as(Role.Policy)), createLogger('policy', logLevel, process.stderr));
  await policyService.start();
  const secretsService = await createSecretsLease(
    secretsConfig(as(Role.SecretsLease, { DATABASE_URL: dbUrl ?? 'postgres://embedded.pglite/capstan', SECRETS_MASTER_KEY: devMasterKey() })),
    createLogger('secrets-lease', logLevel, process.stderr),
    { database },
  );
  await secretsService.start();
  await setPolicy(nc, tenant, { text: devPolicy(tenant), by: 'capstan-dev', reason: 'the dev policy' });
  // Signed as the dev operator: the secrets-lease service administers for proven operators only.
  const signed = operator.signer ? { signer: operator.signer } : {};
  const stored = new Set((await listSecrets(nc, tenant, signed)).map((x) => x.name));
  for (const name of ['DEMO_TOKEN', 'DEMO_API_KEY']) {
    if (!stored.has(name)) await putSecret(nc, tenant, name, `${name.toLowerCase()}-${randomBytes(12).toString('hex')}`, signed);
  }

  // Data sync keeps its staging and state in Postgres (COPY, unlogged tables): only with a real one.
  const datasync = dbUrl
    ? await createDatasync(
        datasyncConfig(as(Role.Datasync, { DATABASE_URL: dbUrl, DATASYNC_FILES_ROOT: join(DEV_DIR, 'datasync') })),
        createLogger('datasync', logLevel, process.stderr),
      )
    : undefined;
  await datasync?.start();

  const orchestrator = await createOrchestrator(orchestratorConfig(as(Role.Orchestrator)), createLogger('orchestrator', logLevel, process.stderr), { demo: true });
  const worker = await createWorker(workerConfig({ ...env, NATS_CREDS: credsOf.worker }), createLogger('worker', logLevel, process.stderr), { demo: true });
  // Fleet decisions (the console's too) revoke or restore worker credentials at the server.
  const authority = await startFleetAuthority(admin);
  await orchestrator.start();
  await worker.start();

  // Sandboxes (modes 1–3) on the local Docker engine. Without one, sandboxed steps fail
  // with `sandbox_unavailable`; they never run unsandboxed.
  // Egress connections are audited in the dev database before they open.
  const sandboxSettings = sandboxConfig(as(Role.Sandbox, { SANDBOX_NODE: 'dev', SANDBOX_POOL_MIN: '1', SANDBOX_POOL_MAX: '4' }));
  const sandboxes = await createSandboxService(sandboxSettings, createLogger('sandbox', logLevel, process.stderr), { audit: createAuditSink(database) });
  await sandboxes.start();
  say(dim('preparing sandboxes (the first run builds the sandbox image, about a minute) …'));
  await sandboxes.ready;
  const noSandboxes = sandboxes.unavailable();

  // The projector is handed the open database; its URL setting is then only a label. The dev
  // store is disposable: projections found following another run stream (a new store, or
  // --nats pointing elsewhere) are rebuilt from the one there is, at once.
  const projector = await createProjector(
    projectorConfig({
      PROJECTOR_ON_STREAM_CHANGE: 'rebuild',
      PROJECTOR_SYNC_CHECK_MS: '1000',
      ...as(Role.Projector, { DATABASE_URL: dbUrl ?? 'postgres://embedded.pglite/capstan' }),
    }),
    dbLog,
    { database },
  );
  await projector.start();
  // The console: a local admin over the dev tenant, signed in by a one-time link; the CLI's
  // read commands use the admin's API token, made at each start and kept owner-only.
  const cliToken = newApiToken();
  const consoleAdmin = localAdmin([tenant], [{ name: 'dev-cli', sha256: cliToken.sha256, expiresAt: Date.now() + DEV_TOKEN_DAYS * 86_400_000 }]);
  const consolePort = process.env['CONSOLE_PORT'] ?? String(await preferredPort(DEV_CONSOLE_PORT, 0));
  const devConsoleConfig = consoleConfig({ ...env, CONSOLE_PORT: consolePort }, { dev: true });
  const consoleAccess = await serviceAccess(
    Role.Console,
    { natsUrl: url, nats: { credsPaths: [store.serviceCredsPath(Role.Console)] } },
    'capstan-console',
    createLogger('console', logLevel, process.stderr),
  );
  const operatorConsole = createConsole({
    db: database,
    access: consoleAccess,
    config: devConsoleConfig,
    log: createLogger('console', logLevel, process.stderr),
    users: [consoleAdmin],
  });
  await operatorConsole.start();
  const signInLink = operatorConsole.signInLink(consoleAdmin.userId);
  // The token before the URL: a read command that finds the URL finds its token too. Written
  // again whole, as a file left by an earlier stack would otherwise keep its mode.
  rmSync(DEV_TOKEN_FILE, { force: true });
  writeFileSync(DEV_TOKEN_FILE, `${cliToken.token}\n`, { mode: 0o600 });
  writeFileSync(DEV_CONSOLE_URL_FILE, `${operatorConsole.url}\n${signInLink}\n`, { mode: 0o600 });

  // Webhooks: ingress on its usual port (verification through the secrets-lease service).
  const ingress = await createIngress(
    ingressConfig(as(Role.Ingress, { INGRESS_PORT: process.env['INGRESS_PORT'] ?? String(await preferredPort(DEV_INGRESS_PORT, 0)) })),
    createLogger('ingress', logLevel, process.stderr),
  );
  await ingress.start();

  say('');
  say(`${bold('Capstan dev stack')} ${green('ready')}`);
  say(`  NATS        ${url}${server ? dim(`  (${clustered ? '3-node cluster, tenant streams R3, ' : ''}store ${storeDir}; operator mode, key store ${DEV_AUTH_DIR})`) : ''}`);
  say(`  tenant      ${tenant}`);
  say(`  credentials ${credsOf.client}  ${dim(`(the tenant's client: nats --creds … / NATS_CREDS=…)`)}`);
  say(`  projections ${database.kind === 'pglite' ? `PGlite in ${PGLITE_DIR}` : database.where}`);
  say(`  console     ${operatorConsole.url}  ${dim(`(capstan runs / run / audit read through it with the token in ${DEV_TOKEN_FILE})`)}`);
  say(`  sign in     ${signInLink}  ${dim(`(one use, ${Math.round(devConsoleConfig.linkTtlMs / 60_000)} min; also in .capstan/dev/console.url)`)}`);
  say(
    `  sandboxes   ${noSandboxes ? red(`unavailable: ${noSandboxes}`) : `docker (${sandboxes.runtime() ?? '?'}), image ${sandboxes.image() ?? '?'}${dim(`  (artifacts in ${sandboxSettings.artifactsDir})`)}`}`,
  );
  say(`  webhooks    ${ingress.url}/hooks/${tenant}/<route>  ${dim('(capstan routes create …; Standard Webhooks signatures)')}`);
  say(
    `  data sync   ${datasync ? `files in ${join(DEV_DIR, 'datasync')}  ${dim("(capstan datasync …, the console's Data sync view)")}` : dim('off: needs a Postgres (--db or DATABASE_URL) for its staging')}`,
  );

  say(
    `  workflows   ${orchestrator.registry
      .list()
      .map((w) => `${w.id}@${w.version}`)
      .join(', ')}`,
  );
  say(`  try         npx capstan submit demo.pipeline --tenant ${tenant} --wait`);
  say('');

  const stopAll = async () => {
    await ingress.stop();
    await operatorConsole.stop();
    rmSync(DEV_CONSOLE_URL_FILE, { force: true });
    rmSync(DEV_TOKEN_FILE, { force: true });
    await consoleAccess.close();
    await authority.stop();
    await worker.stop();
    await datasync?.stop();
    await sandboxes.stop();
    await orchestrator.stop();
    await secretsService.stop();
    await policyService.stop();
    await projector.stop();
    await database.close();
    await operator.nc.close();
    await telemetry.stop();
    await server?.stop();
    if (server) rmSync(DEV_URL_FILE, { force: true });
  };

  let code = 0;
  if (values['demo']) {
    // The demo's approvals are another operator's: whoever submitted a run may not approve it.
    const approver = await parseCredentials(await store.mintUser(tenant, Role.Operator, 'demo-operator', {}, 86_400), 'capstan dev');
    code = await runDemo(operator, signerOf(approver.jwt, approver.seed), tenant, !noSandboxes);
    await waitForProjections(projector);
    say(dim(`  list them:   npx capstan runs --tenant ${tenant}`));
    say('');
  }
  if (values['exit']) {
    await stopAll();
    return code;
  }
  say(dim('serving; press Ctrl-C to stop'));
  await new Promise<void>((resolve) => {
    for (const sig of ['SIGINT', 'SIGTERM'] as const) process.once(sig, () => resolve());
  });
  say(dim('stopping …'));
  await stopAll();
  return code;
}

async function connectAs(url: string, creds: Uint8Array, tenant: ReturnType<typeof parseTenantId>): Promise<TenantConnection> {
  const credentials = await parseCredentials(creds, 'capstan dev');
  return tenantConnection(tenant, await connectNats(url, 'capstan-dev', createLogger('dev', 'warn', process.stderr), { credentials }), {
    signer: signerOf(credentials.jwt, credentials.seed),
  });
}

/**
 * The dev tenant's client and worker credentials, issued once and kept in the key store's
 * `creds/` (owner-only): the client's is what a user's own application would hold.
 */
async function devCredentials(admin: { servers: string; store: AuthStore }, tenant: ReturnType<typeof parseTenantId>): Promise<{ client: string; worker: string }> {
  const out = { client: admin.store.defaultCredsPath(tenant, 'demo-client'), worker: admin.store.defaultCredsPath(tenant, 'dev-worker-1') };
  for (const [role, name, path] of [
    [Role.Client, 'demo-client', out.client],
    [Role.Worker, 'dev-worker-1', out.worker],
  ] as const) {
    const known = admin.store.user(tenant, name);
    if (known && !known.revokedAt && existsSync(path)) continue;
    const { creds } = await issueCredential(admin, tenant, role, name, role === Role.Worker ? { pools: ['default'] } : {});
    writeFileSync(path, creds, { mode: 0o600 });
  }
  return out;
}

/**
 * The dev stack's master key for secrets, made once: `.capstan/dev/secrets-master.key`
 * (mode 0600). A development convenience; production takes `SECRETS_MASTER_KEY` from its
 * secret store.
 */
function devMasterKey(): string {
  const file = join(DEV_DIR, 'secrets-master.key');
  mkdirSync(DEV_DIR, { recursive: true });
  try {
    return readFileSync(file, 'utf8').trim();
  } catch {
    const key = randomBytes(32).toString('base64');
    writeFileSync(file, key, { mode: 0o600 });
    return key;
  }
}

/**
 * The dev policy: sandboxed steps may run in any mode; `demo.sandboxed` may lease
 * `DEMO_TOKEN`, `demo.approval` only with an operator's approval; `demo.jit` may ask for
 * `DEMO_API_KEY` while it runs. Everything else is denied (default deny).
 */
function devPolicy(t: string): string {
  return [
    '@id("dev-sandboxed-steps")',
    'permit(principal, action == Action::"run-step", resource);',
    '@id("dev-demo-token")',
    `permit(principal in Workflow::"${t}/demo.sandboxed", action == Action::"lease-secret", resource == Secret::"${t}/DEMO_TOKEN");`,
    '@id("dev-demo-token-needs-approval")',
    '@approval("operators")',
    `permit(principal in Workflow::"${t}/demo.approval", action == Action::"lease-secret", resource == Secret::"${t}/DEMO_TOKEN");`,
    '@id("dev-jit-api-key")',
    `permit(principal in Workflow::"${t}/demo.jit", action == Action::"request-credential", resource == Credential::"${t}/DEMO_API_KEY");`,
    '',
  ].join('\n');
}

/** Runs each demo workflow once, printing every event as it is recorded. */
async function runDemo(operator: TenantConnection, approverSigner: Signer, tenant: ReturnType<typeof parseTenantId>, sandboxed: boolean): Promise<number> {
  const client = await createClient(operator);
  const approver = await createClient({ ...operator, signer: approverSigner });
  const names = new Map<RunId, string>();
  const ended = new Map<RunId, RunEvent>();
  // Every event of every demo run as it is stored (run subjects are live as well as stored).
  const watch = operator.nc.subscribe(Subjects.allRuns(tenant));
  /** Events already shown, per run: the subscription only says a run moved; what moved is read back from the stream, committed. */
  const seen = new Map<RunId, number>();
  const watching = (async () => {
    for await (const m of watch) {
      const runId = runIdOfSubject(m.subject) as RunId;
      const name = names.get(runId);
      if (!name) continue;
      const fresh = (await readRun(operator.jsm, tenant, runId)).events.slice(seen.get(runId) ?? 0);
      seen.set(runId, (seen.get(runId) ?? 0) + fresh.length);
      for (const e of fresh) {
        say(`  ${dim(runId.slice(-6))} ${cyan(name.padEnd(14))} ${describe(e)}`);
        if (e.type === 'approval.requested') {
          say(`  ${dim(runId.slice(-6))} ${cyan(name.padEnd(14))} ${dim(`(the demo approves it: capstan approve ${runId} ${e.data.step} --as <you>)`)}`);
          await approver.approve(tenant, runId, e.data.step, { by: 'demo-operator', reason: 'the demo approves' });
        }
        if (e.type === 'step.waiting' && e.data.signal === 'approve') {
          say(`  ${dim(runId.slice(-6))} ${cyan(name.padEnd(14))} ${dim('(the demo approves it: capstan signal <run> approve)')}`);
          await client.signal(tenant, runId, 'approve', { by: 'demo-operator' });
        }
        if (e.type === 'step.waiting' && e.data.signal !== 'approve') {
          say(`  ${dim(runId.slice(-6))} ${cyan(name.padEnd(14))} ${dim(`(nobody sends "${e.data.signal}": the wait times out and the run goes on)`)}`);
        }
        if (e.type === 'run.completed' || e.type === 'run.failed' || e.type === 'run.cancelled') ended.set(runId, e);
      }
      if (ended.size === names.size) break;
    }
  })();
  const demos = ['demo.pipeline', 'demo.flaky', 'demo.signal', 'demo.agent', ...(sandboxed ? ['demo.sandboxed', 'demo.approval', 'demo.jit'] : [])];
  say(bold(`demo: submitting ${demos.join(', ')}`));
  if (!sandboxed) say(dim('  (demo.sandboxed, demo.approval and demo.jit need a Docker engine; skipped)'));
  for (const wf of demos) {
    // Named before it is submitted: its first events may come before the submit returns.
    const runId = newRunId();
    names.set(runId, wf);
    await client.submit(tenant, wf, { runId, input: { customer: 42, source: 'capstan dev', urgent: true } });
  }
  const timeout = setTimeout(() => watch.unsubscribe(), 60_000);
  await watching;
  clearTimeout(timeout);
  watch.unsubscribe();
  say('');
  let failures = 0;
  for (const [runId, name] of names) {
    const e = ended.get(runId);
    const status = e ? e.type.slice(4) : 'did not finish in 60 s';
    if (status !== 'completed') failures++;
    say(`  ${runId}  ${name.padEnd(14)} ${colorStatus(status)}`);
  }
  say(failures === 0 ? green('demo: all runs completed') : red(`demo: ${failures} run(s) did not complete`));
  say(dim(`  inspect one: npx capstan status <runId> --tenant ${tenant}; replay it: npx capstan replay <runId> --tenant ${tenant}`));
  say('');
  return failures === 0 ? 0 : 1;
}

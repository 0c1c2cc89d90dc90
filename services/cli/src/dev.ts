/**
 * `capstan dev`: the whole platform on one machine. Starts a private nats-server (unless
 * NATS_URL is set), provisions the `demo` tenant, runs the orchestrator and a worker
 * in-process, and with `--demo` runs the demo workflows while printing their progress.
 */
import { execFileSync } from 'node:child_process';
import { createServer } from 'node:net';
import { randomBytes } from 'node:crypto';
import { mkdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { jetstreamManager, DeliverPolicy } from '@nats-io/jetstream';
import { createOrchestrator, loadConfig as orchestratorConfig } from '@capstan/orchestrator';
import { createWorker, loadConfig as workerConfig } from '@capstan/worker';
import { createSandboxService, loadConfig as sandboxConfig } from '@capstan/sandbox';
import { createPolicyService, loadConfig as policyConfig } from '@capstan/policy';
import { createSecretsLease, loadConfig as secretsConfig } from '@capstan/secrets-lease';
import { createProjector, loadConfig as projectorConfig, type ProjectorApp } from '@capstan/projector';
import { createConsole, localAdmin, loadConfig as consoleConfig } from '@capstan/console';
import {
  connectNats,
  createClient,
  createQueryServer,
  migrate,
  openDatabase,
  createLogger,
  decodeEvent,
  ensureTenant,
  findNatsServer,
  listSecrets,
  NatsServerMissingError,
  PROJECT_ROOT,
  putSecret,
  setPolicy,
  startNatsServer,
  type NatsServer,
} from '@capstan/kit';
import { InvalidArgumentError, parseTenantId, runIdOfSubject, Streams, Subjects, type RunEvent, type RunId } from '@capstan/schemas';
import { parse } from './args.js';
import { DEV_API_URL_FILE, DEV_DIR, DEV_URL_FILE } from './context.js';
import { bold, colorStatus, cyan, describe, dim, green, red } from './format.js';

const say = (s: string) => process.stdout.write(`${s}\n`);

/** The dev servers' usual ports, so URLs in docs work; any free port when taken. */
const DEV_PORT = 4333;
const DEV_API_PORT = 4334;
const DEV_CONSOLE_PORT = 4335;
/** The console's URL (first line) and a one-time sign-in link for the local admin (second). */
const DEV_CONSOLE_URL_FILE = join(DEV_DIR, 'console.url');
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
    if (!(e instanceof NatsServerMissingError)) throw e;
    say(dim('nats-server >= 2.12 not found; installing it into .capstan/bin …'));
    execFileSync(process.execPath, [join(PROJECT_ROOT, 'infra', 'nats', 'install.mjs')], { stdio: 'inherit' });
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
    },
    [],
  );
  const tenant = parseTenantId(values['tenant']);
  let server: NatsServer | undefined;
  let url = typeof values['nats'] === 'string' ? values['nats'] : process.env['NATS_URL'];
  const storeDir = join(DEV_DIR, 'nats');
  if (!url) {
    if (values['fresh']) rmSync(storeDir, { recursive: true, force: true });
    if (values['fresh']) rmSync(PGLITE_DIR, { recursive: true, force: true });
    say(dim('starting nats-server (JetStream) …'));
    server = await startNatsServer({ binary: ensureNatsBinary(), storeDir, port: values['port'] ? portFlag(values['port']) : await preferredPort() });
    url = server.url;
    mkdirSync(DEV_DIR, { recursive: true });
    writeFileSync(DEV_URL_FILE, url);
  }
  const env = { ...process.env, NATS_URL: url, LOG_LEVEL: process.env['LOG_LEVEL'] ?? 'warn', ORCH_DISCOVERY_MS: '500', WORKER_DISCOVERY_MS: '500', WORKER_ADMISSION: 'auto' };
  const logLevel = env.LOG_LEVEL as 'warn';
  const nc = await connectNats(url, 'capstan-dev', createLogger('dev', logLevel, process.stderr));
  await ensureTenant(await jetstreamManager(nc), tenant);
  // Projections: Postgres when given one, else PGlite (embedded Postgres) in .capstan/dev/pg.
  const dbUrl = typeof values['db'] === 'string' ? values['db'] : process.env['DATABASE_URL'];
  say(dim(dbUrl ? 'opening the projections database …' : 'opening the embedded projections database (PGlite) …'));
  const dbLog = createLogger('projector', logLevel, process.stderr);
  const database = await openDatabase(dbUrl ? { url: dbUrl, log: dbLog } : { dataDir: PGLITE_DIR, log: dbLog });
  await migrate(database);
  // Policy (Cedar) and secrets (envelope-encrypted in the same database): the dev tenant gets
  // the dev policy and two demo secrets, made once with random values.
  const policyService = await createPolicyService(policyConfig(env), createLogger('policy', logLevel, process.stderr));
  await policyService.start();
  const secretsService = await createSecretsLease(
    secretsConfig({ ...env, DATABASE_URL: dbUrl ?? 'postgres://embedded.pglite/capstan', SECRETS_MASTER_KEY: devMasterKey() }),
    createLogger('secrets-lease', logLevel, process.stderr),
    { database },
  );
  await secretsService.start();
  await setPolicy(nc, tenant, { text: devPolicy(tenant), by: 'capstan-dev', reason: 'the dev policy' });
  const stored = new Set((await listSecrets(nc, tenant)).map((x) => x.name));
  for (const name of ['DEMO_TOKEN', 'DEMO_API_KEY']) {
    if (!stored.has(name)) await putSecret(nc, tenant, name, `${name.toLowerCase()}-${randomBytes(12).toString('hex')}`, { by: 'capstan-dev' });
  }

  const orchestrator = await createOrchestrator(orchestratorConfig(env), createLogger('orchestrator', logLevel, process.stderr));
  const worker = await createWorker(workerConfig({ ...env, WORKER_ID: 'dev-worker-1' }), createLogger('worker', logLevel, process.stderr));
  await orchestrator.start();
  await worker.start();

  // Sandboxes (modes 1–3) on the local Docker engine. Without one, sandboxed steps fail
  // with `sandbox_unavailable`; they never run unsandboxed.
  const sandboxes = await createSandboxService(
    sandboxConfig({ ...env, SANDBOX_NODE: 'dev', SANDBOX_POOL_MIN: '1', SANDBOX_POOL_MAX: '4' }),
    createLogger('sandbox', logLevel, process.stderr),
  );
  await sandboxes.start();
  say(dim('preparing sandboxes (the first run builds the sandbox image, about a minute) …'));
  await sandboxes.ready;
  const noSandboxes = sandboxes.unavailable();

  // The projector is handed the open database; its URL setting is then only a label.
  const projector = await createProjector(projectorConfig({ ...env, DATABASE_URL: dbUrl ?? 'postgres://embedded.pglite/capstan' }), dbLog, { database });
  await projector.start();
  const api = createQueryServer({ db: database, jsm: await jetstreamManager(nc), nc, log: dbLog, port: await preferredPort(DEV_API_PORT, 0) });
  await api.start();
  writeFileSync(DEV_API_URL_FILE, api.url);
  // The console: a local admin over the dev tenant, signed in by a one-time link.
  const consolePort = process.env['CONSOLE_PORT'] ?? String(await preferredPort(DEV_CONSOLE_PORT, 0));
  const devConsoleConfig = consoleConfig({ ...env, CONSOLE_PORT: consolePort }, { dev: true });
  const operatorConsole = createConsole({
    db: database,
    nc,
    config: devConsoleConfig,
    log: createLogger('console', logLevel, process.stderr),
    users: [localAdmin([tenant])],
  });
  await operatorConsole.start();
  const signInLink = operatorConsole.signInLink(localAdmin([tenant]).userId);
  writeFileSync(DEV_CONSOLE_URL_FILE, `${operatorConsole.url}\n${signInLink}\n`, { mode: 0o600 });

  say('');
  say(`${bold('Capstan dev stack')} ${green('ready')}`);
  say(`  NATS        ${url}${server ? dim(`  (store ${storeDir})`) : ''}`);
  say(`  tenant      ${tenant}`);
  say(`  projections ${database.kind === 'pglite' ? `PGlite in ${PGLITE_DIR}` : database.where}`);
  say(`  query API   ${api.url}  ${dim('(capstan runs / run / audit use it)')}`);
  say(`  console     ${operatorConsole.url}`);
  say(`  sign in     ${signInLink}  ${dim(`(one use, ${Math.round(devConsoleConfig.linkTtlMs / 60_000)} min; also in .capstan/dev/console.url)`)}`);
  say(`  sandboxes   ${noSandboxes ? red(`unavailable: ${noSandboxes}`) : `docker, image ${sandboxes.image() ?? '?'}${dim(`  (artifacts in ${SANDBOX_ARTIFACTS})`)}`}`);
  say(`  workflows   ${orchestrator.registry.list().map((w) => `${w.id}@${w.version}`).join(', ')}`);
  say(`  try         npx capstan submit demo.pipeline --tenant ${tenant} --wait`);
  say('');

  const stopAll = async () => {
    await operatorConsole.stop();
    rmSync(DEV_CONSOLE_URL_FILE, { force: true });
    await api.stop();
    rmSync(DEV_API_URL_FILE, { force: true });
    await worker.stop();
    await sandboxes.stop();
    await orchestrator.stop();
    await secretsService.stop();
    await policyService.stop();
    await projector.stop();
    await database.close();
    await nc.close();
    await server?.stop();
    if (server) rmSync(DEV_URL_FILE, { force: true });
  };

  let code = 0;
  if (values['demo']) {
    code = await runDemo(nc, tenant, !noSandboxes);
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

const SANDBOX_ARTIFACTS = join(PROJECT_ROOT, '.capstan', 'artifacts');

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
async function runDemo(nc: Awaited<ReturnType<typeof connectNats>>, tenant: ReturnType<typeof parseTenantId>, sandboxed: boolean): Promise<number> {
  const client = await createClient(nc);
  const names = new Map<RunId, string>();
  const ended = new Map<RunId, RunEvent>();
  // Watch the tenant's run stream from now on: every event of every demo run.
  const consumer = await client.js.consumers.get(Streams.runs(tenant), { filter_subjects: [Subjects.allRuns(tenant)], deliver_policy: DeliverPolicy.New });
  const watch = await consumer.consume();
  const watching = (async () => {
    for await (const m of watch) {
      const runId = runIdOfSubject(m.subject) as RunId;
      const name = names.get(runId);
      if (!name) continue;
      const e = decodeEvent(m);
      say(`  ${dim(runId.slice(-6))} ${cyan(name.padEnd(14))} ${describe(e)}`);
      if (e.type === 'approval.requested') {
        say(`  ${dim(runId.slice(-6))} ${cyan(name.padEnd(14))} ${dim(`(the demo approves it: capstan approve ${runId} ${e.data.step} --as <you>)`)}`);
        await client.approve(tenant, runId, e.data.step, { by: 'demo-operator', reason: 'the demo approves' });
      }
      if (e.type === 'step.waiting') {
        say(`  ${dim(runId.slice(-6))} ${cyan(name.padEnd(14))} ${dim('(the demo approves it: capstan signal <run> approve)')}`);
        await client.signal(tenant, runId, 'approve', { by: 'demo-operator' });
      }
      if (e.type === 'run.completed' || e.type === 'run.failed' || e.type === 'run.cancelled') {
        ended.set(runId, e);
        if (ended.size === names.size) break;
      }
    }
  })();
  const demos = ['demo.pipeline', 'demo.flaky', 'demo.signal', ...(sandboxed ? ['demo.sandboxed', 'demo.approval', 'demo.jit'] : [])];
  say(bold(`demo: submitting ${demos.join(', ')}`));
  if (!sandboxed) say(dim('  (demo.sandboxed, demo.approval and demo.jit need a Docker engine; skipped)'));
  for (const wf of demos) {
    const runId = await client.submit(tenant, wf, { input: { customer: 42, source: 'capstan dev' } });
    names.set(runId, wf);
  }
  const timeout = setTimeout(() => void watch.close(), 60_000);
  await watching;
  clearTimeout(timeout);
  await watch.close();
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

/**
 * A tenant's data plane on its own nats-server, joined to the platform as a leaf node that
 * dials out with the tenant's leaf credential (`capstan leaf config` writes both, the tenant
 * runs `nats-server -c leaf.conf`). The worker is given the leaf server's URL only (never the
 * platform's client port), and runs complete end to end. Forgeries from the tenant's side (a
 * run event published through the leaf server, the leaf credential used as a client on the
 * platform to append to a run or publish work) are counted: none gets through.
 */
import { afterAll, describe, expect, it } from 'vitest';
import { spawn } from 'node:child_process';
import { existsSync, mkdtempSync, readFileSync, statSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { createRegistry } from '@capstan/actors';
import { connectNats, findNatsServer, freePort, PROJECT_ROOT, readCredentials, startNatsServer, type NatsServer } from '@capstan/kit';
import { encode, Platform, Role, Subjects, type RunId } from '@capstan/schemas';
import { connect, eventsOf, eventually, issueCreds, provision, runCli, silent, spawnService, testAuthStore, type Harness, type ServiceProcess } from '../harness/fixtures.js';
import { checkRuns, report } from '../harness/checker.js';
import { workflows } from '../fixtures/workflows.js';

const fixtures = join(PROJECT_ROOT, 'test', 'dist', 'fixtures', 'workflows.js');
const procs: ServiceProcess[] = [];
const servers: NatsServer[] = [];
let h: Harness | undefined;
let stopLeaf: (() => Promise<void>) | undefined;

afterAll(async () => {
  await Promise.all(procs.map((p) => p.kill()));
  await h?.close();
  await stopLeaf?.();
  for (const s of servers.reverse()) await s.stop();
});

describe('leaf-node data plane', () => {
  it('a worker reaching the platform only through the tenant leaf server completes runs; forgeries through the leaf get nowhere', async () => {
    const auth = await testAuthStore();
    const platform = await startNatsServer({ auth, leafPort: await freePort() });
    servers.push(platform);
    h = await connect(platform.url);
    const t = await provision(h, 'leaf');

    // The tenant's side: a worker credential, and a leaf credential carrying its replies.
    const workerCreds = await issueCreds(platform.url, t, Role.Worker, 'edge-w');
    const worker = await readCredentials(workerCreds);
    const dir = mkdtempSync(join(tmpdir(), 'capstan-leaf-'));
    const leafPort = await freePort();
    const made = await runCli([
      'leaf',
      'config',
      '--tenant',
      t,
      '--nats',
      platform.url,
      '--platform',
      `nats-leaf://127.0.0.1:${platform.leafPort ?? 0}`,
      '--user',
      workerCreds,
      '--listen',
      `127.0.0.1:${leafPort}`,
      '--out',
      dir,
    ]);
    expect(made.code, made.err).toBe(0);
    const conf = readFileSync(join(dir, 'leaf.conf'), 'utf8');
    expect(conf).toContain('remotes');
    expect(conf).not.toMatch(/SU[A-Z2-7]{50,}/);
    expect(statSync(join(dir, 'leaf.creds')).mode & 0o077).toBe(0);

    // The tenant's server, as the tenant runs it: `nats-server -c leaf.conf` (no JetStream, only
    // the tenant's account, one outbound leaf connection).
    const leafProc = spawn(findNatsServer(), ['-c', join(dir, 'leaf.conf'), '-l', join(dir, 'leaf.log')], { stdio: 'ignore' });
    stopLeaf = () => new Promise((res) => (leafProc.exitCode !== null ? res() : (leafProc.once('exit', () => res()), leafProc.kill('SIGTERM'))));
    const leaf = { url: `nats://127.0.0.1:${leafPort}`, logFile: join(dir, 'leaf.log') };
    await eventually(
      'the leaf server linked to the platform',
      () => Promise.resolve(existsSync(leaf.logFile) && /Leafnode connection created/.test(readFileSync(leaf.logFile, 'utf8')) ? true : undefined),
      10_000,
    );

    // The platform side runs the orchestrator; the worker is handed the leaf URL and nothing else.
    const env = { CAPSTAN_TENANTS: t, CAPSTAN_WORKFLOWS: fixtures, CAPSTAN_HANDLERS: fixtures };
    const domain = { NATS_JS_DOMAIN: Platform.jsDomain };
    procs.push(spawnService('orchestrator', { ...env, NATS_URL: platform.url }));
    const edge = spawnService('worker', { ...env, NATS_URL: leaf.url, NATS_CREDS: workerCreds, ...domain });
    procs.push(edge);
    await new Promise((r) => setTimeout(r, 2000));

    const runIds: RunId[] = await Promise.all(Array.from({ length: 10 }, (_, i) => h!.client.submit(t, 'test.pipeline', { input: { ms: 5, i } })));
    try {
      for (const runId of runIds) expect((await h.client.waitForEnd(t, runId, 30_000)).type).toBe('run.completed');
    } catch (e) {
      process.stdout.write(
        `WORKER ${edge.output().slice(-3000)}\nLEAF LOG ${readFileSync(leaf.logFile, 'utf8').slice(-3000)}\nPLATFORM LOG ${readFileSync(platform.logFile, 'utf8').slice(-2000)}\n`,
      );
      throw e;
    }
    const c = await checkRuns(await h.jsm(t), t, runIds, createRegistry(workflows));
    report('leaf data plane', c);
    expect(c.completed).toBe(10);
    expect(c.forks + c.brokenChains + c.resultsRecordedTwice + c.replayMismatches).toBe(0);
    for (const runId of runIds) {
      for (const e of await eventsOf(h, t, runId)) if (e.type === 'step.completed') expect(e.data.worker).toBe('edge-w');
    }

    // Forgeries from the tenant's side, each counted if it got through.
    let through = 0;
    const before = (await eventsOf(h, t, runIds[0] as RunId)).length;
    // A local client with the worker's credential publishing a run event: refused by the leaf server itself.
    const local = await connectNats(leaf.url, 'forger', silent, { credentials: worker });
    local.publish(Subjects.run(t, runIds[0] as RunId), encode({ forged: true }));
    await local.flush().catch(() => undefined);
    // The leaf credential used directly as a client on the platform: still only a worker's rights.
    const leafAsClient = await connectNats(platform.url, 'leaf-forger', silent, { credentials: await readCredentials(join(dir, 'leaf.creds')) });
    for (const subject of [Subjects.run(t, runIds[0] as RunId), Subjects.allWork(t).replace('>', 'other.x')]) {
      try {
        await leafAsClient.request(subject, encode({ forged: true }), { timeout: 500 });
        through++;
      } catch {
        // refused (permission) or unanswered: nothing stored
      }
    }
    await new Promise((r) => setTimeout(r, 500));
    if ((await eventsOf(h, t, runIds[0] as RunId)).length !== before) through++;
    await local.close().catch(() => undefined);
    await leafAsClient.close().catch(() => undefined);
    process.stdout.write(`leaf forgeries through: ${through}\n`);
    expect(through).toBe(0);
    expect(edge.output()).not.toMatch(/"level":(50|60)/);
  }, 120_000);
});

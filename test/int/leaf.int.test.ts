/**
 * A tenant's data plane on its own nats-server, joined to the platform as a leaf node that
 * dials out with the tenant's leaf credential. The worker is given the leaf server's URL
 * only (never the platform's client port), and runs complete end to end. Forgeries through
 * the leaf (run events, another pool's work, another user's replies) are counted: none
 * gets through.
 */
import { afterAll, describe, expect, it } from 'vitest';
import { mkdtempSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { createRegistry } from '@capstan/actors';
import {
  connectNats,
  freePort,
  issueLeaf,
  leafAuthConfig,
  leafConfigInput,
  leafRemoteConfig,
  parseCredentials,
  PROJECT_ROOT,
  readCredentials,
  startNatsServer,
  type NatsServer,
} from '@capstan/kit';
import { encode, Platform, Role, Subjects, type RunId } from '@capstan/schemas';
import { adminOf, connect, eventsOf, issueCreds, provision, silent, spawnService, testAuthStore, type Harness, type ServiceProcess } from '../harness/fixtures.js';
import { checkRuns, report } from '../harness/checker.js';
import { workflows } from '../fixtures/workflows.js';

const fixtures = join(PROJECT_ROOT, 'test', 'dist', 'fixtures', 'workflows.js');
const procs: ServiceProcess[] = [];
const servers: NatsServer[] = [];
let h: Harness | undefined;

afterAll(async () => {
  await Promise.all(procs.map((p) => p.kill()));
  await h?.close();
  for (const s of servers.reverse()) await s.stop();
});

describe('leaf-node data plane', () => {
  it('a worker reaching the platform only through the tenant leaf server completes runs; forgeries through the leaf get nowhere', async () => {
    const auth = await testAuthStore();
    const platform = await startNatsServer({ auth, leafPort: await freePort() });
    servers.push(platform);
    h = await connect(platform.url);
    const t = await provision(h, 'leaf');
    const admin = await adminOf(platform.url);

    // The tenant's side: a worker credential, and a leaf credential carrying its replies.
    const workerCreds = await issueCreds(platform.url, t, Role.Worker, 'edge-w');
    const worker = await readCredentials(workerCreds);
    const dir = mkdtempSync(join(tmpdir(), 'capstan-leaf-'));
    const leafUrls = [`nats-leaf://127.0.0.1:${platform.leafPort ?? 0}`];
    const issued = await issueLeaf(admin, t, { localUsers: [worker.publicKey], platformLeafUrls: leafUrls, credsPath: join(dir, 'leaf.creds') });
    writeFileSync(join(dir, 'leaf.creds'), issued.creds, { mode: 0o600 });
    writeFileSync(join(dir, 'leaf.conf'), issued.config);
    expect(issued.config).toContain('remotes');
    expect(issued.config).not.toContain('SUAB');

    // The tenant's server: no JetStream, only the tenant's account, one outbound leaf connection.
    const input = await leafConfigInput(auth, t, { platformLeafUrls: leafUrls, credsPath: join(dir, 'leaf.creds') });
    const leaf = await startNatsServer({ auth, storeDir: join(dir, 'server'), jetstream: false, authConfig: leafAuthConfig(input), extraConfig: leafRemoteConfig(input), serverName: `leaf-${t}` });
    servers.push(leaf);

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
      const { readFileSync } = await import('node:fs');
      process.stdout.write(`WORKER ${edge.output().slice(-3000)}\nLEAF LOG ${readFileSync(leaf.logFile, 'utf8').slice(-3000)}\nPLATFORM LOG ${readFileSync(platform.logFile, 'utf8').slice(-2000)}\n`);
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
    const leafAsClient = await connectNats(platform.url, 'leaf-forger', silent, { credentials: await parseCredentials(issued.creds, 'leaf.creds') });
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

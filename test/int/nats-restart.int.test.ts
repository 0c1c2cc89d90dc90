/**
 * The broker itself crashes: nats-server SIGKILLed while runs are in flight and started again
 * on the same store a couple of seconds later. Services reconnect on their own; every run
 * completes with one unbroken chain and each step recorded once.
 */
import { afterAll, describe, expect, it } from 'vitest';
import { join } from 'node:path';
import { createRegistry } from '@capstan/actors';
import { PROJECT_ROOT, startNatsServer, type NatsServer } from '@capstan/kit';
import { Role, type RunId } from '@capstan/schemas';
import { connect, eventually, issueCreds, provision, spawnService, testAuthStore, watchRuns, type Harness, type ServiceProcess } from '../harness/fixtures.js';
import { checkRuns, report } from '../harness/checker.js';
import { workflows } from '../fixtures/workflows.js';

const fixtures = join(PROJECT_ROOT, 'test', 'dist', 'fixtures', 'workflows.js');
const procs: ServiceProcess[] = [];
let server: NatsServer | undefined;
let h: Harness | undefined;

afterAll(async () => {
  await Promise.all(procs.map((p) => p.kill()));
  await h?.close();
  await server?.stop();
});

describe('broker crash', () => {
  it('faults - nats-server SIGKILLed mid-flow and restarted: every run completes, 0 forks, each result once', async () => {
    server = await startNatsServer({ auth: await testAuthStore() });
    h = await connect(server.url);
    const consumers = { orchestratorAckWaitMs: 2000, workAckWaitMs: 5000 };
    const t = await provision(h, 'nats-kill', { consumers });
    const env = { NATS_URL: server.url, CAPSTAN_TENANTS: t, CAPSTAN_WORKFLOWS: fixtures, CAPSTAN_HANDLERS: fixtures };
    procs.push(spawnService('orchestrator', env), spawnService('worker', { ...env, NATS_CREDS: await issueCreds(server.url, t, Role.Worker, 'w-nk', { consumers }) }));
    await new Promise((r) => setTimeout(r, 1500));

    const runIds: RunId[] = await Promise.all(Array.from({ length: 100 }, (_, i) => h!.client.submit(t, 'test.pipeline', { input: { ms: 200, i } })));
    await new Promise((r) => setTimeout(r, 400));
    await server.kill();
    await new Promise((r) => setTimeout(r, 2000));
    await server.restart();

    // The test's own connection reconnects too; then watch every run to its end.
    const watch = await eventually('JetStream back', () => watchRuns(h!, t), 30_000, 250);
    await watch.waitAll(runIds, 60_000);
    await watch.close();
    const c = await checkRuns(await h.jsm(t), t, runIds, createRegistry(workflows));
    report('nats-server kill', c);
    for (const p of procs) expect(p.output()).not.toMatch(/"level":(50|60)/);
    expect(c.completed).toBe(100);
    expect(c.brokenChains + c.forks + c.resultsRecordedTwice + c.startsRecordedTwice + c.replayMismatches).toBe(0);
  }, 120_000);
});

/**
 * Records run histories on real servers, for the replay lane (test/unit/histories.test.ts):
 * every scenario below is run through the real services (orchestrator with policy checks on,
 * worker with leases, policy, secrets-lease, sandboxes on Docker) and its run stream is
 * written, event by event, to `test/fixtures/histories/engine-<N>/<scenario>.jsonl`, where N
 * is the engine version the run recorded on its `run.started` (1 when it names none).
 *
 * A history, once committed, is never re-recorded: a file that exists is left alone, so
 * running this again after an engine change adds the new engine's histories beside the old.
 *
 *   npx vitest run --config test/vitest.record.config.ts
 */
import { randomBytes } from 'node:crypto';
import { existsSync, mkdirSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { afterAll, beforeAll, describe, expect, inject, it } from 'vitest';
import type Docker from 'dockerode';
import { createRegistry, defineWorkflow, foldRun } from '@capstan/actors';
import { createLogger, migrate, openDatabase, putSecret, setPolicy, type Database } from '@capstan/kit';
import { createOrchestrator, loadConfig as orchestratorConfig } from '@capstan/orchestrator';
import { createPolicyService, loadConfig as policyConfig } from '@capstan/policy';
import { createSecretsLease, loadConfig as secretsConfig } from '@capstan/secrets-lease';
import { createWorker, loadConfig as workerConfig } from '@capstan/worker';
import { ErrorCode, Role, type JsonValue, type RunEvent, type RunId, type TenantId } from '@capstan/schemas';
import { connect, eventsOf, eventually, issueCreds, provision, serviceEnv, startServices, type Harness } from '../harness/fixtures.js';
import { dockerOrSkip } from '../harness/docker.js';
import { scratchDatabase } from '../harness/postgres.js';
import { startSandboxes } from '../harness/sandbox.js';
import { handlers, handPatchedBefore, workflows } from '../fixtures/workflows.js';

const url = inject('natsUrl');
const docker = await dockerOrSkip();
const HISTORIES = join(fileURLToPath(new URL('.', import.meta.url)), '..', '..', 'test', 'fixtures', 'histories');
const silent = createLogger('record', 'silent');
const registry = createRegistry(workflows);

const policyFor = (t: TenantId) => `
@id("sandboxed-demos")
permit(principal in Workflow::"${t}/demo.sandboxed", action == Action::"run-step", resource) when { resource.level <= 2 };
@id("approval-demo")
permit(principal in Workflow::"${t}/demo.approval", action == Action::"run-step", resource) when { resource.level <= 2 };
@id("jit-agent")
permit(principal in Workflow::"${t}/demo.jit", action == Action::"run-step", resource) when { resource.level == 3 };
@id("demo-token")
permit(principal in Workflow::"${t}/demo.sandboxed", action == Action::"lease-secret", resource == Secret::"${t}/DEMO_TOKEN");
@id("demo-token-needs-approval")
@approval("operators")
permit(principal in Workflow::"${t}/demo.approval", action == Action::"lease-secret", resource == Secret::"${t}/DEMO_TOKEN");
@id("jit-api-key")
permit(principal in Workflow::"${t}/demo.jit", action == Action::"request-credential", resource == Credential::"${t}/DEMO_API_KEY");
`;

interface Scenario {
  readonly name: string;
  readonly workflow: string;
  readonly input?: { [k: string]: JsonValue };
  readonly idempotencyKey?: string;
  /** Needs the sandbox service (Docker). */
  readonly sandboxed?: boolean;
  /** Drives the run after its submit (signals, decisions, cancels). */
  readonly drive?: (run: Driver) => Promise<void>;
  /** The last event the recorded history must end with (engines may differ: an early signal ends engine-1 runs cancelled). */
  readonly ends: RunEvent['type'] | readonly RunEvent['type'][];
  /** Runs on a tenant whose orchestrator has the definitions as they were before a patch. */
  readonly beforePatch?: boolean;
}

interface Driver {
  readonly h: Harness;
  readonly t: TenantId;
  readonly runId: RunId;
  waitFor(type: RunEvent['type'], count?: number): Promise<RunEvent[]>;
}

const scenarios: Scenario[] = [
  { name: 'demo-pipeline-completed', workflow: 'demo.pipeline', input: { customer: 42, source: 'history' }, idempotencyKey: 'history-pipeline-1', ends: 'run.completed' },
  { name: 'demo-flaky-retried', workflow: 'demo.flaky', ends: 'run.completed' },
  {
    name: 'demo-signal-signalled',
    workflow: 'demo.signal',
    drive: async (r) => {
      await r.waitFor('step.waiting');
      await r.h.client.signal(r.t, r.runId, 'approve', { by: 'ann' });
    },
    ends: 'run.completed',
  },
  {
    name: 'demo-signal-approved',
    workflow: 'demo.signal',
    drive: async (r) => {
      await r.waitFor('step.waiting');
      await r.h.client.approve(r.t, r.runId, 'review', { by: 'ann', reason: 'looks right' });
    },
    ends: 'run.completed',
  },
  {
    name: 'demo-signal-denied-then-retried',
    workflow: 'demo.signal',
    drive: async (r) => {
      await r.waitFor('step.waiting');
      await r.h.client.deny(r.t, r.runId, 'review', { by: 'bob', reason: 'not yet' });
      await r.waitFor('run.failed');
      await r.h.client.retry(r.t, r.runId, { by: 'ops', reason: 'second look' });
      await r.waitFor('step.waiting', 2);
      await r.h.client.approve(r.t, r.runId, 'review', { by: 'ann' });
    },
    ends: 'run.completed',
  },
  { name: 'demo-sandboxed-policy-allowed', workflow: 'demo.sandboxed', input: { text: 'durable runs need sandboxes' }, sandboxed: true, ends: 'run.completed' },
  {
    name: 'demo-approval-approved',
    workflow: 'demo.approval',
    sandboxed: true,
    drive: async (r) => {
      await r.waitFor('approval.requested');
      await r.h.client.approve(r.t, r.runId, 'deliver', { by: 'ann', reason: 'release day' });
    },
    ends: 'run.completed',
  },
  {
    name: 'demo-approval-denied',
    workflow: 'demo.approval',
    sandboxed: true,
    drive: async (r) => {
      await r.waitFor('approval.requested');
      await r.h.client.deny(r.t, r.runId, 'deliver', { by: 'bob', reason: 'not today' });
    },
    ends: 'run.failed',
  },
  { name: 'demo-approval-expired', workflow: 'demo.approval', sandboxed: true, ends: 'run.failed' },
  { name: 'demo-jit-credential', workflow: 'demo.jit', sandboxed: true, ends: 'run.completed' },
  { name: 'test-sandboxed-policy-denied', workflow: 'test.sandboxed', sandboxed: true, ends: 'run.failed' },
  {
    name: 'test-pipeline-cancelled',
    workflow: 'test.pipeline',
    input: { ms: 2000 },
    drive: async (r) => {
      await r.waitFor('step.started');
      await r.h.client.cancel(r.t, r.runId, 'no longer needed');
    },
    ends: 'run.cancelled',
  },
  { name: 'test-timeout-retried', workflow: 'test.timeout', ends: 'run.completed' },
  { name: 'test-slow-completed', workflow: 'test.slow', input: { ms: 700 }, ends: 'run.completed' },
  { name: 'bench-w3-completed', workflow: 'bench.w3', ends: 'run.completed' },
  { name: 'history-etl-failed', workflow: 'history.etl', input: { okFrom: 99 }, ends: 'run.failed' },
  {
    name: 'history-etl-failed-then-retried',
    workflow: 'history.etl',
    input: { okFrom: 3 },
    drive: async (r) => {
      await r.waitFor('run.failed');
      await r.h.client.retry(r.t, r.runId, { by: 'ops', reason: 'the warehouse is back' });
    },
    ends: 'run.completed',
  },
  {
    // The signal arrives while `prep` runs, before the wait is reached.
    name: 'history-early-signal',
    workflow: 'history.early',
    input: { ms: 1500 },
    drive: async (r) => {
      await r.waitFor('step.started');
      await r.h.client.signal(r.t, r.runId, 'go', { early: true });
      const events = await r.waitFor('step.waiting');
      // Whatever the engine does with the early signal, give it time to show.
      await new Promise((res) => setTimeout(res, 1000));
      const now = await eventsOf(r.h, r.t, r.runId);
      if (now.length === events.length && !now.some((e) => e.type === 'run.completed')) {
        await r.h.client.cancel(r.t, r.runId, 'the early signal was never consumed');
      }
    },
    ends: ['run.cancelled', 'run.completed'],
  },
  // Engine 2's constructs.
  {
    name: 'test-flow-urgent-signalled',
    workflow: 'test.flow',
    input: { urgent: true, items: ['x', 'y', 'z'] },
    drive: async (r) => {
      await r.waitFor('step.waiting');
      await r.h.client.signal(r.t, r.runId, 'feedback', { by: 'ann', note: 'ship it' });
    },
    ends: 'run.completed',
  },
  {
    name: 'test-flow-routine-cancelled-waiting',
    workflow: 'test.flow',
    input: { urgent: false, items: ['p', 'q'] },
    drive: async (r) => {
      await r.waitFor('step.waiting');
      await r.h.client.cancel(r.t, r.runId, 'no feedback coming');
    },
    ends: 'run.cancelled',
  },
  { name: 'demo-agent-feedback-timed-out', workflow: 'demo.agent', input: { urgent: true }, ends: 'run.completed' },
  {
    name: 'test-cancellable-cancelled-running',
    workflow: 'test.cancellable',
    input: { ms: 20_000 },
    drive: async (r) => {
      await r.waitFor('step.started');
      await r.h.client.cancel(r.t, r.runId, 'changed my mind');
    },
    ends: 'run.cancelled',
  },
  // Child workflows, continue-as-new and patches: the runs they start are recorded beside them
  // (`<name>--child-<step>`, `<name>--next`, `<name>--next--next`).
  { name: 'test-parent-completed', workflow: 'test.parent', ends: 'run.completed' },
  {
    name: 'test-parent-cancelled-mid-child',
    workflow: 'test.parent',
    input: { ms: 3000 },
    drive: async (r) => {
      await r.waitFor('child.started', 2);
      await new Promise((res) => setTimeout(res, 500));
      await r.h.client.cancel(r.t, r.runId, 'order withdrawn');
    },
    ends: 'run.cancelled',
  },
  { name: 'demo-agent-v2-briefed', workflow: 'demo.agent', input: { urgent: true }, ends: 'run.completed' },
  { name: 'test-ticker-continued', workflow: 'test.ticker', input: { round: 1, rounds: 3 }, ends: 'run.completed' },
  { name: 'test-relay-child-continued', workflow: 'test.relay', ends: 'run.completed' },
  { name: 'test-patched-marked', workflow: 'test.patched', ends: 'run.completed' },
  // Recorded by a build without the patch: today's build must replay it on the old path.
  { name: 'test-patched-before-patch', workflow: 'test.patched', beforePatch: true, ends: 'run.completed' },
  // The same in a machine written by hand (`h.patched`).
  { name: 'test-hand-patched-marked', workflow: 'test.hand-patched', ends: 'run.completed' },
  { name: 'test-hand-patched-before-patch', workflow: 'test.hand-patched', beforePatch: true, ends: 'run.completed' },
  // Children that never start: an unknown workflow (retried, then the run fails), an input the child's schema refuses.
  { name: 'test-orphan-unknown-child', workflow: 'test.orphan', ends: 'run.failed' },
  { name: 'test-misfit-child-refused', workflow: 'test.misfit', ends: 'run.failed' },
];

/** The runs a run started (its children, its continuation), with the names their histories get. */
function startedBy(name: string, events: readonly RunEvent[]): { name: string; runId: RunId }[] {
  const out: { name: string; runId: RunId }[] = [];
  // A child whose submit was refused never ran: its parent recorded the refusal's code, not child_failed.
  const neverRan = new Set(events.flatMap((e) => (e.type === 'child.failed' && e.data.error.code !== ErrorCode.ChildFailed ? [e.data.child] : [])));
  for (const e of events) {
    if (e.type === 'child.started' && !neverRan.has(e.data.child)) out.push({ name: `${name}--child-${e.data.step}`, runId: e.data.child as RunId });
    if (e.type === 'run.continued') out.push({ name: `${name}--next`, runId: e.data.next as RunId });
  }
  return out;
}

const ONLY = process.env['CAPSTAN_RECORD_ONLY'] ? new RegExp(process.env['CAPSTAN_RECORD_ONLY']) : undefined;

describe('record histories', () => {
  let h: Harness;
  let t: TenantId;
  let scratch: Awaited<ReturnType<typeof scratchDatabase>>;
  let d: Database;
  let old: TenantId;
  const stops: (() => Promise<void>)[] = [];

  beforeAll(async () => {
    h = await connect(url);
    t = await provision(h, 'hist');
    scratch = await scratchDatabase('hist');
    d = await openDatabase({ url: scratch.url, log: silent });
    await migrate(d);
    const env = { NATS_URL: url, CAPSTAN_TENANTS: t, DATABASE_URL: scratch.url };
    const policy = await createPolicyService(policyConfig({ ...env, ...(await serviceEnv(url, Role.Policy)) }), silent);
    await policy.start();
    stops.push(() => policy.stop());
    const secrets = await createSecretsLease(
      secretsConfig({ ...env, ...(await serviceEnv(url, Role.SecretsLease)), SECRETS_MASTER_KEY: randomBytes(32).toString('base64') }),
      silent,
      { database: d },
    );
    await secrets.start();
    stops.push(() => secrets.stop());
    if (docker) {
      const sb = await startSandboxes(h, url, docker as Docker, [t], { SANDBOX_SECRETS_FILE: '' });
      stops.push(() => sb.stop());
    }
    const orch = await createOrchestrator(orchestratorConfig({ ...env, ...(await serviceEnv(url, Role.Orchestrator)), ORCH_POLICY: 'on', ORCH_APPROVAL_TTL_MS: '5000' }), silent, {
      registry,
    });
    await orch.start();
    stops.push(() => orch.stop());
    const worker = await createWorker(
      workerConfig({ ...env, NATS_CREDS: await issueCreds(url, t, Role.Worker, 'history-w'), WORKER_ADMISSION: 'auto', WORKER_LEASES: 'on' }),
      silent,
      { handlers },
    );
    await worker.start();
    stops.push(() => worker.stop());
    await setPolicy(await h.nc(t), t, { text: policyFor(t), by: 'sec-team', reason: 'history recording policy' });
    const admin = { by: 'sec-team', signer: (await h.tenant(t)).signer };
    await putSecret(await h.nc(t), t, 'DEMO_TOKEN', `tok-${randomBytes(12).toString('hex')}`, admin);
    await putSecret(await h.nc(t), t, 'DEMO_API_KEY', `key-${randomBytes(12).toString('hex')}`, admin);
    // The tenant whose definitions predate the patch of test.patched.
    old = await provision(h, 'hist-old');
    const before = createRegistry([
      ...workflows.filter((w) => w.id !== 'test.patched' && w.id !== 'test.hand-patched'),
      handPatchedBefore,
      defineWorkflow({
        id: 'test.patched',
        version: 1,
        steps: [
          { name: 'first', timeoutMs: 10_000 },
          { name: 'last', timeoutMs: 10_000 },
        ],
      }),
    ]);
    const oldServices = await startServices(url, [old], { registry: before });
    stops.push(() => oldServices.stop());
  }, 300_000);

  afterAll(async () => {
    for (const stop of stops.reverse()) await stop().catch(() => {});
    await h?.close();
    await d?.close();
    await scratch?.drop();
  });

  it('runs every scenario and writes its history', async () => {
    let written = 0;
    let kept = 0;
    const todo = scenarios.filter((s) => (!s.sandboxed || docker) && (!ONLY || ONLY.test(s.name)));
    await Promise.all(
      todo.map(async (s) => {
        const tenant = s.beforePatch ? old : t;
        const runId = await h.client.submit(tenant, s.workflow, { input: s.input ?? {}, ...(s.idempotencyKey ? { idempotencyKey: s.idempotencyKey } : {}) });
        const driver: Driver = {
          h,
          t: tenant,
          runId,
          waitFor: (type, count = 1) =>
            eventually(
              `${count} × ${type} on ${s.name}`,
              async () => {
                const events = await eventsOf(h, tenant, runId);
                return events.filter((e) => e.type === type).length >= count ? events : undefined;
              },
              60_000,
              100,
            ),
        };
        await s.drive?.(driver);
        const events = await eventually(
          `${s.name} to end with ${String(s.ends)}`,
          async () => {
            const all = await eventsOf(h, tenant, runId);
            const last = all.at(-1)?.type;
            return last !== undefined && (typeof s.ends === 'string' ? last === s.ends : s.ends.includes(last)) ? all : undefined;
          },
          60_000,
          100,
        );
        const runs = [{ name: s.name, events }];
        // The runs it started, once they have ended (a child, a continuation, and theirs).
        for (let i = 0; i < runs.length; i++) {
          for (const r of startedBy(runs[i]?.name ?? '', runs[i]?.events ?? [])) {
            const more = await eventually(
              `${r.name} to end`,
              async () => {
                const all = await eventsOf(h, tenant, r.runId);
                return ['run.completed', 'run.cancelled', 'run.failed'].includes(all.at(-1)?.type ?? '') ? all : undefined;
              },
              60_000,
              100,
            );
            runs.push({ name: r.name, events: more });
          }
        }
        for (const run of runs) {
          // What is written must replay under the build that wrote it.
          foldRun(registry, run.events);
          const first = run.events[0] as RunEvent & { type: 'run.started' };
          const engine = (first.data as { engine?: number }).engine ?? 1;
          const dir = join(HISTORIES, `engine-${engine}`);
          const file = join(dir, `${run.name}.jsonl`);
          if (existsSync(file)) {
            kept++;
            continue;
          }
          mkdirSync(dir, { recursive: true });
          writeFileSync(file, run.events.map((e) => JSON.stringify(e)).join('\n') + '\n');
          written++;
        }
      }),
    );
    process.stdout.write(`histories: ${written} written, ${kept} already recorded, ${scenarios.length - todo.length} not run (filtered out, or no docker)\n`);
    expect(written + kept).toBeGreaterThanOrEqual(todo.length);
  }, 600_000);
});

/**
 * `node test/dist/bench/triggers.js`: webhook ingress and schedule firing, on a private
 * nats-server and a scratch database on the machine's Postgres, with the secrets-lease
 * service, an orchestrator, a worker and ingress in the benchmark's process.
 *
 *   ingress      `BENCH_DELIVERIES` (2000) signed deliveries (the `standardwebhooks` signer),
 *                `BENCH_CONCURRENCY` (32) in flight: deliveries/s, the HTTP answer's
 *                p50/p99, and request → the run's first event (`run.started`'s time)
 *   schedules    `BENCH_SCHEDULES` (20) schedules firing every second for `BENCH_SECONDS`
 *                (30): lateness of each run's start after its slot, p50/p99
 *
 * Results go to docs/benchmarks.md (section `triggers`), or `BENCH_OUT`. Say the load the
 * machine was under (`uptime`): the figures mean nothing on a busy one.
 */
import { randomBytes } from 'node:crypto';
import { cpus, loadavg, totalmem } from 'node:os';
import { join } from 'node:path';
import { Webhook } from 'standardwebhooks';
import { createRegistry } from '@capstan/actors';
import { createLogger, findNatsServer, PROJECT_ROOT, putSecret, readRun, sendScheduleCommand, writeRoute } from '@capstan/kit';
import { createSecretsLease, loadConfig as secretsConfig } from '@capstan/secrets-lease';
import { createOrchestrator, loadConfig as orchestratorConfig } from '@capstan/orchestrator';
import { createWorker, loadConfig as workerConfig } from '@capstan/worker';
import { createIngress, loadConfig as ingressConfig } from '@capstan/ingress';
import { parseTenantId, Role, type RunId } from '@capstan/schemas';
import { scratchDatabase } from '../harness/postgres.js';
import { runsOfSchedule } from '../harness/schedules.js';
import { handlers, workflows } from '../fixtures/workflows.js';
import { percentile, writeSection } from './report.js';
import { startBenchNats } from './stack.js';

const env = process.env;
const DELIVERIES = Number(env['BENCH_DELIVERIES'] ?? 2000);
const CONCURRENCY = Number(env['BENCH_CONCURRENCY'] ?? 32);
const SCHEDULES = Number(env['BENCH_SCHEDULES'] ?? 20);
const SECONDS = Number(env['BENCH_SECONDS'] ?? 30);
const OUT = env['BENCH_OUT'] ?? join(PROJECT_ROOT, 'docs', 'benchmarks.md');
const say = (s: string) => process.stderr.write(`${s}\n`);
const silent = createLogger('bench', 'silent');
const fmt = (ms: number) => ms.toFixed(1);
const load = loadavg()
  .map((x) => x.toFixed(2))
  .join(', ');

const nats = await startBenchNats({ binary: findNatsServer(), sync: 'always' });
const db = await scratchDatabase('bench_triggers');
const t = parseTenantId('bench');
await nats.provision(t);
const admin = await nats.connect(t, Role.Admin);
const base = { CAPSTAN_TENANTS: t, ORCH_POLICY: 'off', WORKER_ADMISSION: 'auto', WORKER_LEASES: 'off', LOG_LEVEL: 'silent' };
const secrets = await createSecretsLease(
  secretsConfig({ ...nats.env(Role.SecretsLease), ...base, DATABASE_URL: db.url, SECRETS_MASTER_KEY: randomBytes(32).toString('base64') }),
  silent,
);
const orchestrator = await createOrchestrator(orchestratorConfig({ ...nats.env(Role.Orchestrator), ...base }), silent, { registry: createRegistry(workflows) });
const worker = await createWorker(workerConfig({ ...base, NATS_URL: nats.url, NATS_CREDS: await nats.workerCreds(t, 'bench'), WORKER_CONCURRENCY: '256' }), silent, { handlers });
const ingress = await createIngress(ingressConfig({ ...nats.env(Role.Ingress), ...base, INGRESS_PORT: '0', INGRESS_RATE: '1000000', INGRESS_BURST: '1000000' }), silent);
for (const s of [secrets, orchestrator, worker, ingress]) await s.start();

const SECRET = `whsec_${randomBytes(32).toString('base64')}`;
await putSecret(admin.nc, t, 'BENCH_HOOK', SECRET, { by: 'bench', signer: admin.signer });
await writeRoute(admin.js, admin.jsm, t, { route: 'bench', workflow: 'test.slow', secrets: ['BENCH_HOOK'], fields: { ms: '/ms' }, status: 'enabled', by: 'bench' });
while (ingress.routes(t).length === 0) await new Promise((r) => setTimeout(r, 50));
const signer = new Webhook(SECRET);

async function deliver(i: number): Promise<{ runId: RunId; sentAt: number; answerMs: number }> {
  const id = `msg_bench_${i}_${randomBytes(4).toString('hex')}`;
  const body = JSON.stringify({ ms: 0, i });
  const now = new Date();
  const sentAt = Date.now();
  const t0 = performance.now();
  const res = await fetch(`${ingress.url}/hooks/${t}/bench`, {
    method: 'POST',
    headers: {
      'content-type': 'application/json',
      'webhook-id': id,
      'webhook-timestamp': String(Math.floor(now.getTime() / 1000)),
      'webhook-signature': signer.sign(id, now, body),
    },
    body,
  });
  const answer = (await res.json()) as { runId?: RunId };
  if (res.status !== 202 || !answer.runId) throw new Error(`delivery ${i}: ${res.status} ${JSON.stringify(answer)}`);
  return { runId: answer.runId, sentAt, answerMs: performance.now() - t0 };
}

say(`ingress: warm-up, then ${DELIVERIES} deliveries, ${CONCURRENCY} in flight`);
for (let i = 0; i < 50; i++) await deliver(-1 - i);
const sent: Awaited<ReturnType<typeof deliver>>[] = [];
let next = 0;
const i0 = performance.now();
await Promise.all(
  Array.from({ length: CONCURRENCY }, async () => {
    while (next < DELIVERIES) sent.push(await deliver(next++));
  }),
);
const ingressSeconds = (performance.now() - i0) / 1000;
// Request → the run's first event: `run.started` is recorded with the orchestrator's clock.
const firstEvent: number[] = [];
for (const s of sent) {
  for (let tries = 0; ; tries++) {
    const started = (await readRun(admin.jsm, t, s.runId)).events.find((e) => e.type === 'run.started');
    if (started) {
      firstEvent.push(started.at - s.sentAt);
      break;
    }
    if (tries > 200) throw new Error(`run ${s.runId} never started`);
    await new Promise((r) => setTimeout(r, 50));
  }
}

say(`schedules: ${SCHEDULES} schedules every second for ${SECONDS} s`);
const made = [];
for (let i = 0; i < SCHEDULES; i++) {
  made.push(
    await sendScheduleCommand(admin.js, admin.jsm, t, {
      op: 'create',
      schedule: `bench-${i}`,
      spec: { workflow: 'test.slow', everyMs: 1000, input: { ms: 0 }, overlap: 'allow-all' },
      by: 'bench',
    }),
  );
}
await new Promise((r) => setTimeout(r, SECONDS * 1000));
for (const m of made) await sendScheduleCommand(admin.js, admin.jsm, t, { op: 'delete', schedule: m.record.schedule, by: 'bench' });
await new Promise((r) => setTimeout(r, 2000));
const lateness: number[] = [];
for (const m of made) {
  for (const r of await runsOfSchedule(admin.jsm, t, m.record.schedule, m.record.generation)) if (r.startedAt !== undefined) lateness.push(r.startedAt - r.slot);
}

for (const s of [ingress, worker, orchestrator, secrets]) await s.stop();
await nats.stop();
await db.drop();

const answers = sent.map((s) => s.answerMs);
const md = [
  '## Triggers: webhook ingress and schedule firing (`node test/dist/bench/triggers.js`)',
  '',
  `Machine: ${cpus().length} × ${cpus()[0]?.model ?? 'cpu'}, ${Math.round(totalmem() / 2 ** 30)} GiB, node ${process.version}; load average at the start ${load}. nats-server (fsync always) and Postgres on loopback; the secrets-lease service, an orchestrator, a worker and ingress in the benchmark's process.`,
  `Measured ${new Date().toISOString().slice(0, 16).replace('T', ' ')} UTC.`,
  '',
  `Ingress: ${DELIVERIES} deliveries signed by the \`standardwebhooks\` library, ${CONCURRENCY} in flight. Each one: read and cap the body, check the timestamp, the signature (a request to the secrets-lease service), the rate, claim the webhook id (one JetStream write), submit (one JetStream write). Request → first event: from sending the request to the run's \`run.started\` as the orchestrator recorded it.`,
  '',
  '| measure | n | p50 | p99 |',
  '| --- | --- | --- | --- |',
  `| HTTP answer (202) | ${answers.length} | ${fmt(percentile(answers, 50))} ms | ${fmt(percentile(answers, 99))} ms |`,
  `| request → the run's first event | ${firstEvent.length} | ${fmt(percentile(firstEvent, 50))} ms | ${fmt(percentile(firstEvent, 99))} ms |`,
  `| schedule firing lateness (run started − slot) | ${lateness.length} | ${fmt(percentile(lateness, 50))} ms | ${fmt(percentile(lateness, 99))} ms |`,
  '',
  `Throughput: **${(DELIVERIES / ingressSeconds).toFixed(0)} deliveries/s**. Schedules: ${SCHEDULES} firing every second for ${SECONDS} s, lateness from the slot to the recorded start (the message schedule's own delay, the fire, the submit, the orchestrator's tick).`,
].join('\n');
writeSection(OUT, 'triggers', md);
say(md);

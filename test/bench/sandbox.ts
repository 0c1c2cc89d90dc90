/**
 * `npm run bench:sandbox`: sandboxes on this machine's Docker engine, under each container
 * runtime side by side (`BENCH_RUNTIMES`, default `runc,runsc`; a runtime the engine has not
 * registered is reported as such, not measured).
 *
 *   warm acquire → first byte   claim an idle sandbox of the tenant's pool (rename), run
 *                               `echo`, until its first output byte reaches the service; each
 *                               release scrubs and proves before the next claim (BENCH_WARM, 300)
 *   cold start → first byte     create + start a sandbox, wait for its tool runner, run `echo`,
 *                               first byte (BENCH_COLD, 20)
 *   sandboxed steps/s           a trivial mode-1 step requested over NATS as a worker does,
 *                               4 at a time, by a sandbox service (BENCH_STEPS, 400)
 *
 * Aim: warm acquire p50 ≤ 20 ms. Results go to docs/benchmarks.md (section `sandbox`).
 */
import { cpus, loadavg, totalmem, tmpdir } from 'node:os';
import { mkdtempSync } from 'node:fs';
import { join } from 'node:path';
import Docker from 'dockerode';
import { connectAsService, createLogger, execInSandbox, findNatsServer, PROJECT_ROOT, type NatsConnection, type Signer } from '@capstan/kit';
import { withSignedWork } from '../harness/sandbox.js';
import {
  createSandboxService,
  DEFAULT_LIMITS,
  dockerBackend,
  ensureSandboxImage,
  Labels,
  loadConfig,
  SandboxPools,
  type BackendSandbox,
  type SandboxRuntime,
} from '@capstan/sandbox';
import { makeRunId, Mode, parseTenantId, Role, type TenantId } from '@capstan/schemas';
import { startBenchNats } from './stack.js';
import { percentile, writeSection } from './report.js';

const env = process.env;
const WARM = Number(env['BENCH_WARM'] ?? 300);
const COLD = Number(env['BENCH_COLD'] ?? 20);
const STEPS = Number(env['BENCH_STEPS'] ?? 400);
const RUNTIMES = (env['BENCH_RUNTIMES'] ?? 'runc,runsc').split(',').map((r) => r.trim()) as SandboxRuntime[];
const OUT = env['BENCH_OUT'] ?? join(PROJECT_ROOT, 'docs', 'benchmarks.md');
const say = (s: string) => process.stderr.write(`${s}\n`);
const LOAD = loadavg()[0]?.toFixed(1) ?? '?';
const silent = createLogger('bench', 'silent');
const fmt = (ms: number) => (Number.isNaN(ms) ? '—' : ms.toFixed(1));

/** Runs `echo` in a sandbox; resolves with ms from `t0` to the first output byte. */
async function firstByte(s: BackendSandbox, t0: number): Promise<number> {
  let first = NaN;
  const ch = s.channel;
  await ch.call(
    { t: 'exec', id: ch.newId(), argv: ['echo', 'hello'], env: {}, files: [], timeoutMs: 10_000, egress: false },
    (f) => {
      if (f.t === 'out' && Number.isNaN(first)) first = performance.now() - t0;
      return f.t === 'exit';
    },
    20_000,
  );
  return first;
}

interface Figures {
  warm: number[];
  cold: number[];
  steps: number[];
  stepsPerSecond: number;
  warmHits: number;
  failed: number;
}

const docker = new Docker();
await docker.ping();
const image = (await ensureSandboxImage(docker, { log: createLogger('bench', 'info', process.stderr) })).ref;
const backend = dockerBackend(docker);
const registered = await backend.runtimes();
const limits = DEFAULT_LIMITS;
const tenant = parseTenantId('bench');
const nats = await startBenchNats({ binary: findNatsServer(), storeDir: mkdtempSync(join(tmpdir(), 'capstan-bench-nats-')) });
await nats.provision(tenant);
// Asking for sandboxes is a worker's right; the admin's connection stands in for one.
const { nc } = await nats.connect(tenant, Role.Admin);

async function measure(runtime: SandboxRuntime): Promise<Figures> {
  const node = `bench${process.pid}${runtime}`;
  const labels = { [Labels.Sandbox]: '1', [Labels.Node]: node };

  say(`[${runtime}] warm: ${WARM} claims from the tenant's pool, scrub and proof on every release`);
  const pools = new SandboxPools({
    backend,
    runtime,
    node,
    instance: 'b',
    labels: {},
    min: 4,
    max: 4,
    maxUses: 1_000_000,
    idleMs: 3_600_000,
    identityReuse: 'never',
    limits,
    log: silent,
  });
  pools.warm(image);
  const key = { tenant, mode: Mode.Sandboxed, image, scope: '' };
  while (pools.freshCount < 4) await new Promise((r) => setTimeout(r, 20));
  const warm: number[] = [];
  for (let i = 0; i < WARM; i++) {
    const t0 = performance.now();
    const c = await pools.acquire(key, `cap-bench-${process.pid}-${runtime}-warm-${i}`);
    const ms = await firstByte(c.sandbox, t0);
    if (c.warm) warm.push(ms);
    await pools.release(c, true);
    if ((i + 1) % 50 === 0) say(`  ${i + 1}/${WARM}  p50 ${fmt(percentile(warm, 50))} ms`);
  }
  await pools.stop();

  say(`[${runtime}] cold: ${COLD} sandboxes created for one step each`);
  const cold: number[] = [];
  for (let i = 0; i < COLD; i++) {
    const t0 = performance.now();
    const s = await backend.create({ name: `cap-bench-${process.pid}-${runtime}-cold-${i}`, image, labels, limits, runtime });
    cold.push(await firstByte(s, t0));
    await backend.remove(s.id);
  }

  say(`[${runtime}] service: ${STEPS} mode-1 steps over NATS, 4 at a time`);
  const service = await createSandboxService(
    loadConfig({
      ...nats.env(Role.Sandbox),
      SANDBOX_NODE: `${node}s`,
      SANDBOX_RUNTIME: runtime,
      SANDBOX_POOL_MIN: '4',
      SANDBOX_POOL_MAX: '4',
      SANDBOX_CONCURRENCY: '4',
      SANDBOX_ARTIFACTS_DIR: mkdtempSync(join(tmpdir(), 'capstan-bench-art-')),
    }),
    silent,
    { image },
  );
  await service.start();
  await service.ready;
  while (service.stats().fresh < 4) await new Promise((r) => setTimeout(r, 20));
  // Work items are signed by the tenant's orchestrator; the sandbox runs nothing else.
  const orch = await connectAsService(Role.Orchestrator, nats.store.serviceCredsPath(Role.Orchestrator), { servers: nats.url, name: 'bench-orchestrator', log: silent });
  const signer = (await orch.tenant(tenant)).signer as Signer;
  const f = await stepsOverNats(nc, tenant, signer);
  await orch.close();
  await service.stop();
  return { warm, cold, ...f };
}

async function stepsOverNats(conn: NatsConnection, t: TenantId, signer: Signer): Promise<Pick<Figures, 'steps' | 'stepsPerSecond' | 'warmHits' | 'failed'>> {
  const steps: number[] = [];
  let next = 0;
  let failed = 0;
  let warmHits = 0;
  const t0 = performance.now();
  await Promise.all(
    Array.from({ length: 4 }, async () => {
      while (next < STEPS) {
        next++;
        const s0 = performance.now();
        const out = await execInSandbox(
          conn,
          t,
          withSignedWork(signer, t, {
            runId: makeRunId(Date.now(), crypto.getRandomValues(new Uint8Array(10))),
            workflow: 'bench',
            step: 'echo',
            attempt: 1,
            mode: 1,
            spec: { command: ['echo', 'ok'] },
            timeoutMs: 10_000,
            input: {},
          }),
          { firstReplyMs: 60_000 },
        );
        steps.push(performance.now() - s0);
        if (out.error) failed++;
        if (out.result?.warm) warmHits++;
      }
    }),
  );
  return { steps, stepsPerSecond: STEPS / ((performance.now() - t0) / 1000), warmHits, failed };
}

const results = new Map<SandboxRuntime, Figures | string>();
for (const runtime of RUNTIMES) {
  if (!registered.includes(runtime)) {
    results.set(runtime, `not registered with the engine (${registered.join(', ')}); infra/docker/ensure-runsc.sh adds runsc`);
    say(`[${runtime}] skipped: not registered`);
    continue;
  }
  results.set(runtime, await measure(runtime));
}
await nc.close();
await nats.stop();

const version = await docker.version();
const cols = [...results.keys()];
const cell = (r: SandboxRuntime, f: (x: Figures) => string) => {
  const v = results.get(r);
  return typeof v === 'string' || !v ? '—' : f(v);
};
const row = (label: string, f: (x: Figures) => string, aim = '') => `| ${label} | ${cols.map((r) => cell(r, f)).join(' | ')} | ${aim} |`;
const p = (xs: number[]) => `${fmt(percentile(xs, 50))} / ${fmt(percentile(xs, 99))} ms (n ${xs.length})`;
const warmP50 = cols.map((r) => cell(r, (x) => (percentile(x.warm, 50) <= 20 ? 'met' : 'not met'))).join(', ');
const md = [
  '## Sandboxes (`npm run bench:sandbox`)',
  '',
  `Machine: ${cpus().length} × ${cpus()[0]?.model ?? 'cpu'}, ${Math.round(totalmem() / 2 ** 30)} GiB, Docker ${version.Version} (${version.KernelVersion ?? ''}), node ${process.version}. Image ${image}.`,
  `Measured ${new Date().toISOString().slice(0, 16).replace('T', ' ')} UTC, load average ${LOAD} at the start (other work on the machine moves these figures). Limits per sandbox: ${limits.memoryBytes / 2 ** 20} MiB, ${limits.pids} pids, ${limits.nanoCpus / 1e9} CPU. p50 / p99.`,
  '',
  `| measure | ${cols.join(' | ')} | aim |`,
  `| --- | ${cols.map(() => '---').join(' | ')} | --- |`,
  row('warm acquire → first byte of tool output', (x) => p(x.warm), `p50 ≤ 20 ms (${warmP50})`),
  row('cold start → first byte', (x) => p(x.cold)),
  row('sandboxed step over NATS (request → done)', (x) => p(x.steps)),
  row('sandboxed steps/s, 4 at a time, scrub and proof on every release', (x) => `**${x.stepsPerSecond.toFixed(1)}** (${x.warmHits}/${STEPS} warm, ${x.failed} failed)`),
  '',
  ...cols.flatMap((r) => (typeof results.get(r) === 'string' ? [`${r}: ${String(results.get(r))}.`] : [])),
  "Warm acquire is a rename of an idle container of the tenant's pool (the claim) plus the tool runner starting the command as the step user; release (scrub, proof checked against the nonce, the runner's pid and the engine's view, rename back) happens after the answer, off the step's path.",
].join('\n');
writeSection(OUT, 'sandbox', md);
say(md);

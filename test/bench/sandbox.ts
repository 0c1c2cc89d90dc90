/**
 * `npm run bench:sandbox`: sandboxes on this machine's Docker engine.
 *
 *   warm acquire → first byte   claim an idle pooled sandbox (rename), run `echo`, until its
 *                               first output byte reaches the service (BENCH_WARM, 300)
 *   cold start → first byte     create + start a sandbox, wait for its tool runner, run `echo`,
 *                               first byte (BENCH_COLD, 20)
 *   sandboxed steps/s           a trivial mode-1 step requested over NATS as a worker does,
 *                               4 at a time, by a sandbox service with a pool of 4 (BENCH_STEPS, 400)
 *
 * Aim: warm acquire p50 ≤ 20 ms. Results go to docs/benchmarks.md (section `sandbox`).
 */
import { cpus, loadavg, totalmem, tmpdir } from 'node:os';
import { mkdtempSync } from 'node:fs';
import { join } from 'node:path';
import Docker from 'dockerode';
import { createLogger, execInSandbox, findNatsServer, PROJECT_ROOT } from '@capstan/kit';
import { createSandboxService, DEFAULT_LIMITS, dockerBackend, ensureSandboxImage, loadConfig, WarmPool, type BackendSandbox } from '@capstan/sandbox';
import { makeRunId, parseTenantId, Role } from '@capstan/schemas';
import { startBenchNats } from './stack.js';
import { percentile, writeSection } from './report.js';

const env = process.env;
const WARM = Number(env['BENCH_WARM'] ?? 300);
const COLD = Number(env['BENCH_COLD'] ?? 20);
const STEPS = Number(env['BENCH_STEPS'] ?? 400);
const OUT = env['BENCH_OUT'] ?? join(PROJECT_ROOT, 'docs', 'benchmarks.md');
const say = (s: string) => process.stderr.write(`${s}\n`);
const LOAD = loadavg()[0]?.toFixed(1) ?? '?';
const silent = createLogger('bench', 'silent');
const fmt = (ms: number) => ms.toFixed(1);

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

const docker = new Docker();
await docker.ping();
const image = (await ensureSandboxImage(docker, { log: createLogger('bench', 'info', process.stderr) })).ref;
const backend = dockerBackend(docker);
const node = `bench${process.pid}`;
const limits = DEFAULT_LIMITS;

// ---- warm --------------------------------------------------------------------------------
say(`warm: ${WARM} acquisitions from a pool of 4`);
const pool = new WarmPool({ backend, image, key: 'bench', node, instance: 'b', min: 4, max: 4, maxUses: 1_000_000, limits, log: silent });
pool.fill();
const warm: number[] = [];
for (let i = 0; i < WARM; i++) {
  while (pool.idleCount === 0) await new Promise((r) => setTimeout(r, 5));
  const t0 = performance.now();
  const c = await pool.acquire(`cap-bench-${process.pid}-warm-${i}`);
  warm.push(await firstByte(c.sandbox, t0));
  await pool.release(c);
  if ((i + 1) % 50 === 0) say(`  ${i + 1}/${WARM}  p50 ${fmt(percentile(warm, 50))} ms`);
}
await pool.stop();

// ---- cold --------------------------------------------------------------------------------
say(`cold: ${COLD} sandboxes created for one step each`);
const cold: number[] = [];
for (let i = 0; i < COLD; i++) {
  const t0 = performance.now();
  const s = await backend.create({ name: `cap-bench-${process.pid}-cold-${i}`, image, labels: { 'capstan.sandbox': '1', 'capstan.sandbox.node': node }, limits });
  cold.push(await firstByte(s, t0));
  await backend.remove(s.id);
}

// ---- steps/s through the service -----------------------------------------------------------
say(`service: ${STEPS} mode-1 steps over NATS, 4 at a time, pool of 4`);
const nats = await startBenchNats({ binary: findNatsServer(), storeDir: mkdtempSync(join(tmpdir(), 'capstan-bench-nats-')) });
const tenant = parseTenantId('bench');
await nats.provision(tenant);
// Asking for sandboxes is a worker's right; the admin's connection stands in for one.
const { nc } = await nats.connect(tenant, Role.Admin);
const service = await createSandboxService(
  loadConfig({ ...nats.env(Role.Sandbox), SANDBOX_NODE: `${node}s`, SANDBOX_POOL_MIN: '4', SANDBOX_POOL_MAX: '4', SANDBOX_CONCURRENCY: '4', SANDBOX_ARTIFACTS_DIR: mkdtempSync(join(tmpdir(), 'capstan-bench-art-')) }),
  silent,
  { image },
);
await service.start();
await service.ready;
await new Promise((r) => setTimeout(r, 3000));
const stepMs: number[] = [];
let next = 0;
let failed = 0;
let warmHits = 0;
const t0 = performance.now();
await Promise.all(
  Array.from({ length: 4 }, async () => {
    while (next < STEPS) {
      next++;
      const s0 = performance.now();
      const out = await execInSandbox(nc, tenant, {
        runId: makeRunId(Date.now(), crypto.getRandomValues(new Uint8Array(10))),
        workflow: 'bench',
        step: 'echo',
        attempt: 1,
        mode: 1,
        spec: { command: ['echo', 'ok'] },
        timeoutMs: 10_000,
        input: {},
      });
      stepMs.push(performance.now() - s0);
      if (out.error) failed++;
      if (out.result?.warm) warmHits++;
    }
  }),
);
const seconds = (performance.now() - t0) / 1000;
await service.stop();
await nc.close();
await nats.stop();

const version = await docker.version();
const md = [
  '## Sandboxes (`npm run bench:sandbox`)',
  '',
  `Machine: ${cpus().length} × ${cpus()[0]?.model ?? 'cpu'}, ${Math.round(totalmem() / 2 ** 30)} GiB, Docker ${version.Version} (${version.KernelVersion ?? ''}), node ${process.version}. Image ${image}.`,
  `Measured ${new Date().toISOString().slice(0, 16).replace('T', ' ')} UTC, load average ${LOAD} at the start (other work on the machine moves these figures). Limits per sandbox: ${limits.memoryBytes / 2 ** 20} MiB, ${limits.pids} pids, ${limits.nanoCpus / 1e9} CPU.`,
  '',
  '| measure | n | p50 | p99 | aim |',
  '| --- | --- | --- | --- | --- |',
  `| warm acquire → first byte of tool output | ${warm.length} | ${fmt(percentile(warm, 50))} ms | ${fmt(percentile(warm, 99))} ms | p50 ≤ 20 ms ${percentile(warm, 50) <= 20 ? '(met)' : '(not met)'} |`,
  `| cold start → first byte | ${cold.length} | ${fmt(percentile(cold, 50))} ms | ${fmt(percentile(cold, 99))} ms | |`,
  `| sandboxed step over NATS (request → done) | ${stepMs.length} | ${fmt(percentile(stepMs, 50))} ms | ${fmt(percentile(stepMs, 99))} ms | |`,
  '',
  `Sandboxed steps/s with a pool of 4 (4 requests at a time, each \`echo ok\` in mode 1, scrub and proof on every release): **${(STEPS / seconds).toFixed(1)} steps/s**; ${warmHits}/${STEPS} served warm, ${failed} failed.`,
  'Warm acquire is a rename of an idle container (the claim) plus the tool runner spawning the command; release (scrub, proof, rename back) happens after the answer, off the step\'s path.',
].join('\n');
writeSection(OUT, 'sandbox', md);
say(md);

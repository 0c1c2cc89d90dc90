/**
 * `node test/dist/bench/policy.js`: policy decision latency.
 *
 *   in-process   `evaluate` (one query) and `decideAll` (a step's four queries: mode, two
 *                secrets, one host) against a realistic policy (about 1 KiB) and a 4 KiB one
 *   over NATS    `askPolicy` (a step's four queries, one request) to a policy service in this
 *                process, through a private nats-server: one at a time, then 16 in flight
 *   compile      `compilePolicySet` of the 4 KiB policy (what a `policy set` costs)
 *
 * Target (reliability G2): a decision within 10 ms for inputs up to 4 KiB. Results go to
 * docs/benchmarks.md (section `policy`).
 *
 * Options (env): BENCH_POLICY_ITER (20000 in-process decisions), BENCH_POLICY_NATS (5000
 * requests), BENCH_OUT.
 */
import { cpus } from 'node:os';
import { join } from 'node:path';
import { askPolicy, createLogger, PROJECT_ROOT, setPolicy } from '@capstan/kit';
import { compilePolicySet, createPolicyService, decideAll, evaluate, loadConfig, type CompiledPolicySet } from '@capstan/policy';
import { parseTenantId, PolicyAction, Role, type PolicyQuery } from '@capstan/schemas';
import { startBenchNats } from './stack.js';
import { percentile, writeSection } from './report.js';

const env = process.env;
const ITER = Number(env['BENCH_POLICY_ITER'] ?? 20_000);
const NATS_ITER = Number(env['BENCH_POLICY_NATS'] ?? 5000);
const OUT = env['BENCH_OUT'] ?? join(PROJECT_ROOT, 'docs', 'benchmarks.md');
const say = (s: string) => process.stderr.write(`${s}\n`);
const log = createLogger('bench', 'warn', process.stderr);
const T = parseTenantId('bench');

const REALISTIC = `
@id("inline-anywhere")
permit(principal, action == Action::"run-step", resource == Mode::"bench/0");
@id("sandbox-etl")
permit(principal in Workflow::"bench/etl", action == Action::"run-step", resource) when { resource.level <= 2 };
@id("etl-secrets")
permit(principal in Workflow::"bench/etl", action == Action::"lease-secret", resource) when { ["DB_PASSWORD", "S3_KEY", "API_TOKEN"].contains(resource.key) };
@id("prod-key-needs-ops") @approval("operators")
permit(principal in Workflow::"bench/etl", action == Action::"lease-secret", resource == Secret::"bench/PROD_KEY");
@id("github-egress")
permit(principal, action == Action::"egress", resource) when { resource.hostname like "*.github.com" && resource.port == 443 };
@id("db-egress")
permit(principal in Workflow::"bench/etl", action == Action::"egress", resource == Host::"bench/db.internal:5432");
@id("no-ssh")
forbid(principal, action == Action::"egress", resource) when { resource.port == 22 };
@id("billing-writes") @approval("finance")
permit(principal == Step::"bench/etl/load", action == Action::"external-write", resource == Target::"bench/billing-api");
@id("worker-credentials")
permit(principal, action == Action::"request-credential", resource) when { context has worker && context.worker in Tenant::"bench" };
`;

function fourKiB(): string {
  const lines = [REALISTIC];
  for (let i = 0; Buffer.byteLength(lines.join('\n')) < 3950; i++) {
    lines.push(`permit(principal in Workflow::"bench/wf${i}", action == Action::"lease-secret", resource == Secret::"bench/K${i}");`);
  }
  return lines.join('\n');
}

const STEP: PolicyQuery[] = [
  { action: PolicyAction.RunStep, workflow: 'etl', step: 'load', mode: 2 },
  { action: PolicyAction.LeaseSecret, workflow: 'etl', step: 'load', secret: 'DB_PASSWORD' },
  { action: PolicyAction.LeaseSecret, workflow: 'etl', step: 'load', secret: 'S3_KEY' },
  { action: PolicyAction.Egress, workflow: 'etl', step: 'load', host: 'api.github.com:443' },
];

interface Row {
  readonly name: string;
  readonly n: number;
  readonly times: number[];
  readonly wallMs: number;
}

function measure(name: string, n: number, fn: (i: number) => void): Row {
  for (let i = 0; i < Math.min(500, n); i++) fn(i);
  const times: number[] = [];
  const w0 = performance.now();
  for (let i = 0; i < n; i++) {
    const t0 = performance.now();
    fn(i);
    times.push(performance.now() - t0);
  }
  return { name, n, times, wallMs: performance.now() - w0 };
}

async function measureAsync(name: string, n: number, inflight: number, fn: (i: number) => Promise<void>): Promise<Row> {
  for (let i = 0; i < Math.min(200, n); i++) await fn(i);
  const times: number[] = [];
  let next = 0;
  const w0 = performance.now();
  await Promise.all(
    Array.from({ length: inflight }, async () => {
      while (next < n) {
        const i = next++;
        const t0 = performance.now();
        await fn(i);
        times.push(performance.now() - t0);
      }
    }),
  );
  return { name, n, times, wallMs: performance.now() - w0 };
}

const ms = (x: number) => (x < 1 ? x.toFixed(3) : x.toFixed(2));
const line = (r: Row) =>
  `| ${r.name} | ${r.n.toLocaleString('en-US')} | ${ms(percentile(r.times, 50))} | **${ms(percentile(r.times, 99))}** | ${ms(Math.max(...r.times))} | ${Math.round((r.n / r.wallMs) * 1000).toLocaleString('en-US')} |`;

function compiled(text: string): CompiledPolicySet {
  const c = compilePolicySet(text);
  if (!c.ok) throw new Error(`bench policy does not compile: ${JSON.stringify(c.diagnostics)}`);
  return c.policySet;
}

async function main(): Promise<void> {
  const small = compiled(REALISTIC);
  const bigText = fourKiB();
  const big = compiled(bigText);
  for (const [set, what] of [
    [small, 'realistic'],
    [big, '4 KiB'],
  ] as const) {
    const d = decideAll(set, 1, T, STEP);
    if (d.decision !== 'allow') throw new Error(`the ${what} policy should allow the bench step: ${JSON.stringify(d)}`);
  }
  say(`in-process, ${ITER} decisions per case:`);
  // Each step name is new: every decision goes through Cedar (a compiled set remembers answers to repeated queries).
  let unique = 0;
  const fresh = (q: PolicyQuery): PolicyQuery => ({ ...q, step: `s${unique++}` });
  const rows: Row[] = [
    measure(`evaluate, 1 new query, ${Buffer.byteLength(REALISTIC)} B policy`, ITER, (i) => void evaluate(small, 1, T, fresh(STEP[i % 4]!))),
    measure(`evaluate, 1 new query, ${Buffer.byteLength(bigText)} B policy`, ITER, (i) => void evaluate(big, 1, T, fresh(STEP[i % 4]!))),
    measure(`decideAll, 4 new queries, ${Buffer.byteLength(bigText)} B policy`, Math.ceil(ITER / 4), () => void decideAll(big, 1, T, STEP.map(fresh))),
    measure(`decideAll, 4 repeated queries, ${Buffer.byteLength(bigText)} B policy`, ITER, () => void decideAll(big, 1, T, STEP)),
  ];
  const compile = measure(`compilePolicySet, ${Buffer.byteLength(bigText)} B policy`, 50, () => void compilePolicySet(bigText));
  for (const r of rows) say(`  ${r.name}: p50 ${ms(percentile(r.times, 50))} ms, p99 ${ms(percentile(r.times, 99))} ms`);

  const bench = await startBenchNats();
  const server = bench.server;
  await bench.provision(T);
  // The orchestrator asks the policy; the admin sets it (one connection for both here).
  const { nc } = await bench.connect(T, Role.Admin);
  const service = await createPolicyService(loadConfig({ ...bench.env(Role.Policy), CAPSTAN_TENANTS: T, LOG_LEVEL: 'warn' }), log);
  const nats: Row[] = [];
  try {
    await service.start();
    const set = await setPolicy(nc, T, { text: bigText, by: 'bench' });
    const check = await askPolicy(nc, T, STEP);
    if (check.decision !== 'allow' || check.version !== set.version) throw new Error(`unexpected decision over NATS: ${JSON.stringify(check)}`);
    say(`over NATS, ${NATS_ITER} requests per case:`);
    for (const [inflight, repeated] of [
      [1, false],
      [1, true],
      [16, false],
      [16, true],
    ] as const) {
      const r = await measureAsync(`askPolicy, 4 ${repeated ? 'repeated' : 'new'} queries, ${inflight} in flight`, NATS_ITER, inflight, async () => {
        const queries = repeated ? STEP : STEP.map(fresh);
        const d = await askPolicy(nc, T, queries, { timeoutMs: 5000 });
        if (d.decision !== 'allow') throw new Error(`unexpected decision: ${d.decision}`);
      });
      say(`  ${r.name}: p50 ${ms(percentile(r.times, 50))} ms, p99 ${ms(percentile(r.times, 99))} ms`);
      nats.push(r);
    }
  } finally {
    await service.stop();
    await nc.close();
    await server.stop();
  }

  const worst = Math.max(...rows.filter((r) => r.name.startsWith('evaluate')).map((r) => percentile(r.times, 99)));
  const step = nats.find((r) => r.name.includes('new queries, 1 in flight'));
  const md = [
    '## Policy decisions (Cedar)',
    '',
    `Measured ${new Date().toISOString().slice(0, 16).replace('T', ' ')} UTC with \`node test/dist/bench/policy.js\` (\`test/bench/policy.ts\`) on ${cpus().length} × ${cpus()[0]?.model ?? 'unknown'},`,
    `Node ${process.version}, \`@cedar-policy/cedar-wasm\` (Cedar in WebAssembly). A decision builds the Cedar request and its`,
    'entities (tenant, workflow, step, resource, worker), evaluates the compiled policy set (parsed once per version and',
    'kept in the wasm instance) with the tenant fences, and reads `@approval` annotations. The step asks about its mode,',
    'two secrets and one egress host. Over NATS: one `askPolicy` request carrying those four queries, answered by the',
    'policy service running in the same process as the client, through a private nats-server on loopback. "New" queries',
    'differ from every earlier one (a new step name each time), so each goes through Cedar; "repeated" ones are what a',
    'workflow asks run after run, answered from what the compiled set remembers (up to 2,048 answers per version).',
    'Target (reliability G2): a decision within 10 ms for inputs up to 4 KiB.',
    '',
    '| case | n | p50 ms | p99 ms | max ms | per second |',
    '| --- | --- | --- | --- | --- | --- |',
    ...[...rows, ...nats].map(line),
    '',
    `Compiling the ${Buffer.byteLength(bigText)} B policy (parse and strict validation against the schema, what \`capstan policy set\` costs once per version): p50 ${ms(percentile(compile.times, 50))} ms, p99 ${ms(percentile(compile.times, 99))} ms.`,
    `Worst p99 of one decision through Cedar: ${ms(worst)} ms, ${worst <= 10 ? 'within' : '**over**'} the target; a step's four new queries over NATS, one request at a time: p99 ${step ? ms(percentile(step.times, 99)) : '?'} ms.`,
  ].join('\n');
  writeSection(OUT, 'policy', md);
  say(`written to ${OUT}`);
}

main().catch((e: unknown) => {
  process.stderr.write(`${e instanceof Error ? (e.stack ?? e.message) : String(e)}\n`);
  process.exit(1);
});

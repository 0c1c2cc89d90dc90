/**
 * `node test/dist/bench/secrets.js`: the secrets-lease service on a private nats-server and a
 * scratch database on the machine's Postgres.
 *
 *   issue                 `issueLease` for one key, as a worker does before a sandboxed step
 *   redeem                `redeemValues` (fresh key pair, redeem, open), as the sandbox service does
 *   issue + redeem        the two back to back: what a sandboxed step with secrets pays
 *   concurrent            the same, `BENCH_CONCURRENCY` (8) at a time, for throughput
 *
 * `BENCH_LEASES` (1000) sequential pairs, then as many concurrent. Results go to
 * docs/benchmarks.md (section `secrets`), or `BENCH_OUT`.
 */
import { randomBytes } from 'node:crypto';
import { cpus, totalmem } from 'node:os';
import { join } from 'node:path';
import { connectAsService, createLogger, findNatsServer, issueLease, newRunId, PROJECT_ROOT, putSecret, redeemValues, type Signer } from '@capstan/kit';
import { createSecretsLease, loadConfig } from '@capstan/secrets-lease';
import { parseTenantId, Role } from '@capstan/schemas';
import { startBenchNats } from './stack.js';
import { scratchDatabase } from '../harness/postgres.js';
import { pipelineWarrants } from '../harness/lease-warrant.js';
import { percentile, writeSection } from './report.js';

const env = process.env;
const N = Number(env['BENCH_LEASES'] ?? 1000);
const CONCURRENCY = Number(env['BENCH_CONCURRENCY'] ?? 8);
const OUT = env['BENCH_OUT'] ?? join(PROJECT_ROOT, 'docs', 'benchmarks.md');
const say = (s: string) => process.stderr.write(`${s}\n`);
const silent = createLogger('bench', 'silent');
const fmt = (ms: number) => ms.toFixed(2);

const nats = await startBenchNats({ binary: findNatsServer() });
const db = await scratchDatabase('bench_secrets');
const t = parseTenantId('bench');
await nats.provision(t);
const service = await createSecretsLease(
  loadConfig({ ...nats.env(Role.SecretsLease), DATABASE_URL: db.url, SECRETS_MASTER_KEY: randomBytes(32).toString('base64'), CAPSTAN_TENANTS: t, SECRETS_DB_POOL: '8' }),
  silent,
);
await service.start();
// Issuing and redeeming from one admin connection, signed as a service that leases for its
// own use (datasync): the lease is bound to the signer, and warranted by a pipeline run's
// record (its stream and its connection's catalog record are read), which is written for
// each pair before the clock starts (harness/lease-warrant.ts).
const { nc, js, signer: adminSigner } = await nats.connect(t, Role.Admin);
const warrants = pipelineWarrants(js, t, 'bench');
const access = await connectAsService(Role.Datasync, nats.store.serviceCredsPath(Role.Datasync), { servers: nats.url, name: 'bench-datasync', log: silent });
const signer = (await access.tenant(t)).signer as Signer;
const natsVersion = nc.info?.version ?? '?';
await putSecret(nc, t, 'BENCH_TOKEN', randomBytes(24).toString('base64url'), { by: 'bench', signer: adminSigner });

async function pair(issue: number[], redeem: number[], both: number[]): Promise<void> {
  const runId = newRunId();
  await warrants.warrant({ runId, step: 'step', attempt: 1, keys: ['BENCH_TOKEN'] });
  const t0 = performance.now();
  const lease = await issueLease(nc, t, { runId, step: 'step', attempt: 1, keys: ['BENCH_TOKEN'] }, { signer });
  const t1 = performance.now();
  await redeemValues(nc, t, { leaseId: lease.leaseId, runId, step: 'step', attempt: 1 }, { signer });
  const t2 = performance.now();
  issue.push(t1 - t0);
  redeem.push(t2 - t1);
  both.push(t2 - t0);
}

// Warm up connections, caches and the JIT.
for (let i = 0; i < 50; i++) await pair([], [], []);

say(`sequential: ${N} issue + redeem pairs`);
const issue: number[] = [];
const redeem: number[] = [];
const both: number[] = [];
for (let i = 0; i < N; i++) await pair(issue, redeem, both);

say(`concurrent: ${N} pairs, ${CONCURRENCY} at a time`);
const cIssue: number[] = [];
const cRedeem: number[] = [];
const cBoth: number[] = [];
let next = 0;
const c0 = performance.now();
await Promise.all(
  Array.from({ length: CONCURRENCY }, async () => {
    while (next < N) {
      next++;
      await pair(cIssue, cRedeem, cBoth);
    }
  }),
);
const seconds = (performance.now() - c0) / 1000;

await nc.close();
await access.close();
await service.stop();
await nats.stop();
await db.drop();

const row = (what: string, xs: number[]) => `| ${what} | ${xs.length} | ${fmt(percentile(xs, 50))} ms | ${fmt(percentile(xs, 99))} ms |`;
const md = [
  '## Secrets: lease issue and redemption (`node test/dist/bench/secrets.js`)',
  '',
  `Machine: ${cpus().length} × ${cpus()[0]?.model ?? 'cpu'}, ${Math.round(totalmem() / 2 ** 30)} GiB, node ${process.version}; nats-server ${natsVersion} and Postgres on loopback, the service in the benchmark's process (pool of 8 connections).`,
  `Measured ${new Date().toISOString().slice(0, 16).replace('T', ' ')} UTC. One key per lease. Issue: one request; the service checks the key, writes the lease and its audit row in one transaction. Redeem: a fresh X25519 key pair, one request (look, then claim + read + audit in one transaction, seal), open.`,
  '',
  '| measure | n | p50 | p99 |',
  '| --- | --- | --- | --- |',
  row('issue (sequential)', issue),
  row('redeem (sequential)', redeem),
  row('issue + redeem (sequential)', both),
  row(`issue + redeem (${CONCURRENCY} at a time)`, cBoth),
  '',
  `Throughput, ${CONCURRENCY} at a time: **${(N / seconds).toFixed(0)} issue + redeem pairs/s**.`,
].join('\n');
writeSection(OUT, 'secrets', md);
say(md);

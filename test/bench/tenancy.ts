/**
 * `npm run bench:tenancy`: what accounts and credentials cost.
 *
 * - revocation: `capstan creds revoke` (a new account JWT pushed through the system account)
 *   until the server has closed the holder's connection, over BENCH_REVOCATIONS (50) rounds;
 * - provisioning: adding a tenant (account, quota, six streams, three consumers, registry);
 * - the route from services to tenants: one connection per service per tenant. With
 *   BENCH_TENANTS (100) tenants, every platform service role follows all of them in one
 *   process; the server's and the process's resident memory before and after, per connection.
 *
 * Figures go to docs/benchmarks.md (section "tenancy").
 */
import { readFileSync } from 'node:fs';
import { cpus, totalmem } from 'node:os';
import { join } from 'node:path';
import { connectAsService, connectNats, createLogger, issueCredential, parseCredentials, PROJECT_ROOT, restoreCredential, revokeCredential, type TenantAccess } from '@capstan/kit';
import { parseTenantId, Role, SERVICE_ROLES, type TenantId } from '@capstan/schemas';
import { median, percentile, writeSection } from './report.js';
import { startBenchNats } from './stack.js';

const env = process.env;
const REVOCATIONS = Number(env['BENCH_REVOCATIONS'] ?? 50);
const TENANTS = Number(env['BENCH_TENANTS'] ?? 100);
const OUT = env['BENCH_OUT'] ?? join(PROJECT_ROOT, 'docs', 'benchmarks.md');
const say = (s: string) => process.stderr.write(`${s}\n`);
const quiet = createLogger('bench', 'silent');
const ms = (x: number) => x.toFixed(1);

function rssMiB(pid: number): number {
  const m = /VmRSS:\s+(\d+) kB/.exec(readFileSync(`/proc/${pid}/status`, 'utf8'));
  return m ? Number(m[1]) / 1024 : NaN;
}

const bench = await startBenchNats();
try {
  // ---- revocation ------------------------------------------------------------------------
  const t0 = parseTenantId('revoke');
  await bench.provision(t0);
  const { creds } = await issueCredential(bench.admin, t0, Role.Worker, 'probe', { pools: ['default'] });
  const probe = await parseCredentials(creds, 'probe');
  const revoke: number[] = [];
  for (let i = 0; i < REVOCATIONS; i++) {
    const nc = await connectNats(bench.url, 'probe', quiet, { credentials: probe, reconnect: false });
    const closed = nc.closed();
    const start = performance.now();
    await revokeCredential(bench.admin, t0, 'probe');
    await closed;
    revoke.push(performance.now() - start);
    await restoreCredential(bench.admin, t0, 'probe');
  }
  say(`revoke → closed: p50 ${ms(percentile(revoke, 50))} ms, p99 ${ms(percentile(revoke, 99))} ms over ${REVOCATIONS}`);

  // ---- provisioning and connections --------------------------------------------------------
  const serverBefore = rssMiB(bench.server.pid);
  const provision: number[] = [];
  const tenants: TenantId[] = [];
  for (let i = 0; i < TENANTS; i++) {
    const t = parseTenantId(`t${String(i).padStart(4, '0')}`);
    const start = performance.now();
    await bench.provision(t, { quota: { maxStorageBytes: 64 * 1024 * 1024 } });
    provision.push(performance.now() - start);
    tenants.push(t);
  }
  say(`provision a tenant: p50 ${ms(median(provision))} ms, p99 ${ms(percentile(provision, 99))} ms`);
  const serverProvisioned = rssMiB(bench.server.pid);
  const selfBefore = process.memoryUsage().rss / 1024 / 1024;
  const accesses: TenantAccess[] = [];
  const openStart = performance.now();
  for (const role of SERVICE_ROLES) {
    const access = await connectAsService(role, bench.store.serviceCredsPath(role), { servers: bench.url, name: `bench-${role}`, log: quiet });
    const follower = await access.follow('all', 60_000, () => Promise.resolve(), quiet);
    follower.stop();
    accesses.push(access);
  }
  const openMs = performance.now() - openStart;
  const connections = SERVICE_ROLES.length * (TENANTS + 1) + 0;
  const serverAfter = rssMiB(bench.server.pid);
  const selfAfter = process.memoryUsage().rss / 1024 / 1024;
  say(
    `${SERVICE_ROLES.length} services × ${TENANTS + 1} tenants: ${connections} connections opened in ${ms(openMs)} ms; server RSS ${ms(serverProvisioned)} → ${ms(serverAfter)} MiB, client RSS ${ms(selfBefore)} → ${ms(selfAfter)} MiB`,
  );
  await Promise.all(accesses.map((a) => a.close()));

  const kib = (mib: number) => ((mib * 1024) / connections).toFixed(0);
  writeSection(
    OUT,
    'tenancy',
    [
      '## Tenancy: accounts and credentials (`npm run bench:tenancy`)',
      '',
      `Measured ${new Date().toISOString().slice(0, 16).replace('T', ' ')} UTC on ${cpus().length} × ${cpus()[0]?.model ?? '?'}, ${Math.round(totalmem() / 2 ** 30)} GiB, load average ${(await import('node:os')).loadavg()[0]?.toFixed(1)}; a private nats-server in operator mode.`,
      '',
      '| what | figure |',
      '| --- | --- |',
      `| \`creds revoke\` → the holder's connection closed by the server (${REVOCATIONS} rounds) | p50 **${ms(percentile(revoke, 50))} ms**, p99 ${ms(percentile(revoke, 99))} ms |`,
      `| adding a tenant (account JWT pushed, its ten streams and their consumers, registry record) | p50 **${ms(median(provision))} ms**, p99 ${ms(percentile(provision, 99))} ms |`,
      `| nats-server resident memory: empty → ${TENANTS} tenants → + ${connections} service connections | ${ms(serverBefore)} → ${ms(serverProvisioned)} → ${ms(serverAfter)} MiB (${kib(serverAfter - serverProvisioned)} KiB per connection) |`,
      `| one process holding all ${SERVICE_ROLES.length} service roles for ${TENANTS + 1} accounts | opened in ${ms(openMs)} ms; resident memory + ${ms(selfAfter - selfBefore)} MiB (${kib(selfAfter - selfBefore)} KiB per connection) |`,
      '',
      'Services reach tenants as users in each tenant account (one connection per service per tenant), not',
      'through imports into a platform account: see docs/ARCHITECTURE.md ("Tenancy") for why, and W3 for the',
      'cost of authentication on the run path.',
    ].join('\n'),
  );
} finally {
  await bench.stop();
}

/**
 * `npm run bench:nats-profile`: where nats-server spends its CPU under W3. The bench stack
 * (operator mode, per-role credentials) runs W3 while Go's profiler samples the server for
 * BENCH_PROFILE_SECONDS (5); the profile (pprof, gzip) is written to BENCH_OUT
 * (`.capstan/bench/nats-<time>.pb.gz`) and its top functions printed (flat and cumulative
 * share of the server's CPU); `go tool pprof` reads the file too.
 *
 * Options (env): BENCH_RUNS (4000), BENCH_INFLIGHT (64), BENCH_PROFILE_SECONDS (5), BENCH_TOP (25), BENCH_OUT.
 */
import { mkdirSync, writeFileSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { freePort, PROJECT_ROOT } from '@capstan/kit';
import { parseTenantId } from '@capstan/schemas';
import { startBenchNats, startW3Services, type W3Services } from './stack.js';
import { summarizeProfile } from './pprof.js';

const env = process.env;
const RUNS = Number(env['BENCH_RUNS'] ?? 4000);
const INFLIGHT = Number(env['BENCH_INFLIGHT'] ?? 64);
const SECONDS = Number(env['BENCH_PROFILE_SECONDS'] ?? 5);
const TOP = Number(env['BENCH_TOP'] ?? 25);
const OUT = env['BENCH_OUT'] ?? join(PROJECT_ROOT, '.capstan', 'bench', `nats-${new Date().toISOString().replace(/[:.]/g, '-')}.pb.gz`);

const profPort = await freePort();
const bench = await startBenchNats({ profPort });
let stack: W3Services | undefined;
try {
  stack = await startW3Services(bench, parseTenantId('bench'));
  const { load } = stack;
  await load.run(200, 200);
  const running = load.run(RUNS, INFLIGHT);
  await new Promise((r) => setTimeout(r, 500));
  const res = await fetch(`http://127.0.0.1:${profPort}/debug/pprof/profile?seconds=${SECONDS}`);
  if (!res.ok) throw new Error(`the server's profiler answered ${res.status}`);
  mkdirSync(dirname(OUT), { recursive: true });
  const profile = Buffer.from(await res.arrayBuffer());
  writeFileSync(OUT, profile);
  await running;
  const s = summarizeProfile(profile);
  const show = (rows: readonly [string, number][]) =>
    rows.slice(0, TOP).map(([fn, share]) => `  ${(share * 100).toFixed(1).padStart(5)} %  ${fn.replace(/github.com\/nats-io\/nats-server(\/v2)?\//, '')}`);
  process.stdout.write(
    [
      `nats-server under W3: ${(s.total / 1e9).toFixed(2)} CPU-s sampled in ${SECONDS} s; profile in ${OUT}`,
      'flat (where the CPU was):',
      ...show(s.flat),
      'cumulative (under which calls):',
      ...show(s.cumulative),
      '',
    ].join('\n'),
  );
} finally {
  await stack?.stop();
  await bench.stop();
}

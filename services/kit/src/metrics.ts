/**
 * Prometheus metrics (`prom-client`): every metric Capstan exports, defined here once so the
 * names, labels and the Grafana dashboard (`docs/grafana-dashboard.json`) agree, and the
 * endpoint each service serves them on (`METRICS_PORT`, `GET /metrics`).
 *
 * One registry per process: `capstan dev` runs every service in one process and serves
 * them all on one endpoint. Counters are incremented where the thing happens; gauges that
 * need a look at NATS or Postgres (queue depth, projector lag, approvals waiting) are
 * filled by collectors just before a scrape ({@link addCollector}).
 */
import { createServer, type Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import { Counter, Gauge, Histogram, Registry } from 'prom-client';
import type { Env } from './env.js';
import { envInt, envString } from './env.js';
import type { Logger } from './log.js';

export const registry = new Registry();

const counter = <L extends string>(name: string, help: string, labelNames: readonly L[]) => new Counter<L>({ name, help, labelNames, registers: [registry] });
const gauge = <L extends string>(name: string, help: string, labelNames: readonly L[]) => new Gauge<L>({ name, help, labelNames, registers: [registry] });

/** Step durations from 5 ms to 30 min. */
const STEP_BUCKETS = [0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 1800];

export const metrics = {
  // orchestrator
  runsStarted: counter('capstan_runs_started_total', 'Runs started (run.started recorded).', ['tenant', 'workflow']),
  runsCompleted: counter('capstan_runs_completed_total', 'Runs completed (run.completed recorded).', ['tenant', 'workflow']),
  runsFailed: counter('capstan_runs_failed_total', 'Runs failed (run.failed recorded), by the error code they failed with.', ['tenant', 'workflow', 'code']),
  runsCancelled: counter('capstan_runs_cancelled_total', 'Runs cancelled (run.cancelled recorded).', ['tenant', 'workflow']),
  stepsScheduled: counter('capstan_steps_scheduled_total', 'Step attempts scheduled (step.scheduled recorded), by mode.', ['tenant', 'mode']),
  commands: counter('capstan_orchestrator_commands_total', 'Commands the orchestrator took from its consumers.', ['tenant']),
  appended: counter('capstan_orchestrator_events_appended_total', 'Run events the orchestrator appended.', ['tenant']),
  conflicts: counter('capstan_orchestrator_conflicts_total', 'Appends refused because another writer moved the run on (the run is reloaded).', ['tenant']),
  deadLetters: counter('capstan_dead_letters_total', 'Messages refused and dead-lettered, by where they came from and why.', ['tenant', 'source', 'code']),
  // worker
  steps: counter('capstan_steps_total', 'Step attempts a worker finished and reported, by mode and outcome.', ['tenant', 'pool', 'mode', 'outcome']),
  stepDuration: new Histogram<'tenant' | 'pool' | 'mode' | 'outcome'>({
    name: 'capstan_step_duration_seconds',
    help: 'How long step attempts ran on a worker (handler or sandbox), by mode and outcome.',
    labelNames: ['tenant', 'pool', 'mode', 'outcome'],
    buckets: STEP_BUCKETS,
    registers: [registry],
  }),
  workQueueDepth: gauge('capstan_work_queue_depth', 'Work items stored for a pool and not yet acknowledged (waiting or running).', ['tenant', 'pool']),
  workQueueWait: new Histogram<'tenant' | 'pool'>({
    name: 'capstan_work_queue_wait_seconds',
    help: 'How long work items waited in their pool, from stored to taken by a worker (their age when taken).',
    labelNames: ['tenant', 'pool'],
    buckets: STEP_BUCKETS,
    registers: [registry],
  }),
  // sandbox
  sandboxIdle: gauge('capstan_sandbox_pool_idle', 'Warm sandboxes waiting in a pool.', ['pool']),
  sandboxRunning: gauge('capstan_sandbox_running', 'Sandboxed attempts running now.', []),
  sandboxWaiting: gauge('capstan_sandbox_waiting', 'Sandboxed attempts waiting for a slot.', []),
  sandboxClaims: counter('capstan_sandbox_claims_total', 'Sandboxes claimed for an attempt, warm (from the pool) or cold (created).', ['tenant', 'warm']),
  // secrets-lease
  leases: counter('capstan_leases_total', 'Lease events: issued, redeemed, denied (a refused issue or redemption) and revoked.', ['tenant', 'event']),
  // policy
  policyDecisions: counter('capstan_policy_decisions_total', 'Policy decisions the policy service answered, by verdict.', ['tenant', 'verdict']),
  // projector
  projectorLag: gauge('capstan_projector_lag_events', 'Run events stored but not yet projected (stream last sequence minus the checkpoint).', ['tenant']),
  projected: counter('capstan_projector_events_total', 'Run events applied to the projections.', ['tenant']),
  projectionOutOfSync: gauge(
    'capstan_projection_out_of_sync',
    "1 while a tenant's projections do not follow its run stream (projection_out_of_sync: reads refused, no lag reported), else 0.",
    ['tenant'],
  ),
  approvalsWaiting: gauge('capstan_approvals_waiting', 'Steps waiting for a person (approvals with status waiting).', ['tenant']),
} as const;

type Collector = () => Promise<void> | void;
const collectors = new Set<Collector>();

/**
 * Registers a function that refreshes gauges before each scrape; returns its removal.
 * A collector that fails or takes more than 2 s leaves its gauges as they were.
 */
export function addCollector(fn: Collector): () => void {
  collectors.add(fn);
  return () => collectors.delete(fn);
}

const COLLECT_TIMEOUT_MS = 2000;

/** The metrics in Prometheus text format, after running the collectors. */
export async function scrape(): Promise<string> {
  await Promise.allSettled([...collectors].map((c) => Promise.race([Promise.resolve().then(c), new Promise((r) => setTimeout(r, COLLECT_TIMEOUT_MS).unref())])));
  return registry.metrics();
}

export interface MetricsConfig {
  /** Port of the endpoint; undefined: no endpoint (counters still count). 0: any free port. */
  readonly port?: number;
  readonly host: string;
}

/** `METRICS_PORT` (unset: no endpoint) and `METRICS_HOST` (default 127.0.0.1). Pure. */
export function metricsConfig(env: Env, problems: string[]): MetricsConfig {
  const raw = env['METRICS_PORT'];
  const host = envString(env, 'METRICS_HOST', '127.0.0.1');
  if (raw === undefined || raw === '') return { host };
  return { host, port: envInt(env, 'METRICS_PORT', 0, problems, 0, 65535) };
}

export interface MetricsServer {
  /** `http://host:port/metrics`. */
  readonly url: string;
  stop(): Promise<void>;
}

/** Serves `GET /metrics` (and nothing else) on `config.port`. */
export async function serveMetrics(config: MetricsConfig & { port: number }, log: Logger): Promise<MetricsServer> {
  const server: Server = createServer((req, res) => {
    if (req.method !== 'GET' || (req.url ?? '').split('?', 1)[0] !== '/metrics') {
      res.writeHead(404, { 'content-type': 'text/plain' }).end('not found: GET /metrics\n');
      return;
    }
    scrape().then(
      (text) => res.writeHead(200, { 'content-type': registry.contentType }).end(text),
      (e: unknown) => {
        log.warn({ err: e }, 'metrics scrape failed');
        res.writeHead(500, { 'content-type': 'text/plain' }).end('metrics unavailable\n');
      },
    );
  });
  await new Promise<void>((resolve, reject) => {
    server.once('error', reject);
    server.listen(config.port, config.host, () => resolve());
  });
  const addr = server.address() as AddressInfo;
  const url = `http://${addr.family === 'IPv6' ? `[${addr.address}]` : addr.address}:${addr.port}/metrics`;
  log.info({ url }, 'metrics listening');
  return {
    url,
    stop: () => new Promise<void>((resolve) => server.close(() => resolve())),
  };
}

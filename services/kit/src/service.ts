/** What every Capstan service process shares: its access to tenants, telemetry, and its process boundary. */
import { CapstanError, ConfigError, type ServiceRole } from '@capstan/schemas';
import { createLogger, type Logger } from './log.js';
import type { Env, NatsAuthConfig } from './env.js';
import { connectAsService, connectAsTenantUser, type TenantAccess } from './access.js';
import type { LevelWithSilent } from 'pino';
import { metricsConfig, serveMetrics, type MetricsConfig, type MetricsServer } from './metrics.js';
import { startTracing, tracingConfig, type TracingConfig, type TracingHandle } from './tracing.js';

/**
 * A platform service's access to its tenants, from its config's `NATS_URL`/`NATS_CREDS`.
 * @throws CredentialsError when the credential is not this service's
 */
export function serviceAccess(role: ServiceRole, c: { readonly natsUrl: string; readonly nats: NatsAuthConfig }, name: string, log: Logger): Promise<TenantAccess> {
  return connectAsService(role, c.nats.credsPaths[0] ?? '', { servers: c.natsUrl, name, log, ...(c.nats.tls ? { tls: c.nats.tls } : {}) });
}

/** A tenant deployment's access (a worker): one credential per tenant it serves. */
export function tenantUserAccess(c: { readonly natsUrl: string; readonly nats: NatsAuthConfig }, name: string, log: Logger) {
  return connectAsTenantUser(c.nats.credsPaths, {
    servers: c.natsUrl,
    name,
    log,
    ...(c.nats.tls ? { tls: c.nats.tls } : {}),
    ...(c.nats.jsDomain ? { jsDomain: c.nats.jsDomain } : {}),
  });
}

/** What every service reads besides its own config: traces (`OTEL_*`) and metrics (`METRICS_*`). */
export interface TelemetryConfig {
  readonly tracing: TracingConfig;
  readonly metrics: MetricsConfig;
}

/** Pure. @throws ConfigError listing every problem */
export function telemetryConfig(env: Env): TelemetryConfig {
  const problems: string[] = [];
  const config = { tracing: tracingConfig(env, problems), metrics: metricsConfig(env, problems) };
  if (problems.length > 0) throw new ConfigError(problems);
  return config;
}

export interface Telemetry {
  readonly tracing: TracingHandle;
  readonly metrics?: MetricsServer;
  stop(): Promise<void>;
}

/** Starts the tracing SDK (when configured) and the metrics endpoint (when `METRICS_PORT` is set). */
export async function startTelemetry(service: string, config: TelemetryConfig, log: Logger): Promise<Telemetry> {
  const tracing = await startTracing(service, config.tracing);
  const port = config.metrics.port;
  const server = port === undefined ? undefined : await serveMetrics({ ...config.metrics, port }, log);
  if (tracing.enabled) log.info({ sampler: config.tracing.sampler, ratio: config.tracing.ratio }, 'tracing on');
  return {
    tracing,
    ...(server ? { metrics: server } : {}),
    async stop() {
      await server?.stop();
      await tracing.stop();
    },
  };
}

/**
 * The process boundary of a service: reads the config from the environment (exit 2 with
 * every problem on bad config), starts telemetry and the app, and stops them by draining on
 * SIGINT/SIGTERM (buffered spans are exported before the process exits).
 */
export async function runService<C extends { readonly logLevel: LevelWithSilent }>(
  service: string,
  loadConfig: (env: Env) => C,
  create: (config: C, log: Logger) => Promise<{ start(): Promise<void>; stop(): Promise<void> }>,
): Promise<void> {
  let config: C;
  let telemetry: TelemetryConfig;
  try {
    config = loadConfig(process.env);
    telemetry = telemetryConfig(process.env);
  } catch (e) {
    process.stderr.write(`${CapstanError.is(e) ? e.message : String(e)}\n`);
    process.exit(2);
  }
  const log = createLogger(service, config.logLevel);
  let app: { start(): Promise<void>; stop(): Promise<void> };
  let running: Telemetry | undefined;
  try {
    running = await startTelemetry(service, telemetry, log);
    app = await create(config, log);
    await app.start();
  } catch (e) {
    // A start that cannot succeed (a workflows module that does not load, say) says why once.
    process.stderr.write(`${service}: ${CapstanError.is(e) ? `${e.code}: ${e.message}` : String(e)}\n`);
    process.exit(1);
  }
  for (const sig of ['SIGINT', 'SIGTERM'] as const) {
    process.once(sig, () => {
      app.stop().then(
        () => (running?.stop() ?? Promise.resolve()).finally(() => process.exit(0)),
        (err: unknown) => {
          log.fatal({ err }, 'stop failed');
          process.exit(1);
        },
      );
    });
  }
}

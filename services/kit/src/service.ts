/** What every Capstan service process shares: following tenants, and its process boundary. */
import { jetstreamManager } from '@nats-io/jetstream';
import type { NatsConnection } from '@nats-io/transport-node';
import { CapstanError, type TenantId } from '@capstan/schemas';
import { createLogger, type Logger } from './log.js';
import { listTenants } from './tenant.js';
import type { Env } from './env.js';
import type { LevelWithSilent } from 'pino';

export interface TenantFollower {
  /** Tenants handed to `onTenant` so far. */
  readonly tenants: ReadonlySet<TenantId>;
  stop(): void;
}

/**
 * Calls `onTenant` once for every tenant the service should serve: the configured list, or
 * every provisioned tenant when `wanted` is `all`, including tenants provisioned later
 * (looked for every `everyMs`). Resolves after the first round.
 */
export async function followTenants(
  nc: NatsConnection,
  wanted: readonly TenantId[] | 'all',
  everyMs: number,
  onTenant: (t: TenantId) => Promise<void>,
  log: Logger,
): Promise<TenantFollower> {
  const served = new Set<TenantId>();
  const missing = new Set<TenantId>();
  let timer: NodeJS.Timeout | undefined;
  let stopped = false;
  const round = async () => {
    const provisioned = await listTenants(await jetstreamManager(nc));
    for (const t of wanted === 'all' ? provisioned : wanted) {
      if (served.has(t)) continue;
      if (!provisioned.includes(t)) {
        if (!missing.has(t)) log.warn({ tenant: t }, 'configured tenant is not provisioned yet');
        missing.add(t);
        continue;
      }
      served.add(t);
      await onTenant(t);
    }
  };
  const loop = () => {
    if (stopped) return;
    timer = setTimeout(() => {
      round()
        .catch((e: unknown) => log.warn({ err: e }, 'tenant discovery failed'))
        .finally(loop);
    }, everyMs);
    timer.unref();
  };
  await round();
  loop();
  return {
    tenants: served,
    stop() {
      stopped = true;
      clearTimeout(timer);
    },
  };
}

/**
 * The process boundary of a service: reads the config from the environment (exit 2 with
 * every problem on bad config), starts the app, and stops it by draining on SIGINT/SIGTERM.
 */
export async function runService<C extends { readonly logLevel: LevelWithSilent }>(
  service: string,
  loadConfig: (env: Env) => C,
  create: (config: C, log: Logger) => Promise<{ start(): Promise<void>; stop(): Promise<void> }>,
): Promise<void> {
  let config: C;
  try {
    config = loadConfig(process.env);
  } catch (e) {
    process.stderr.write(`${CapstanError.is(e) ? e.message : String(e)}\n`);
    process.exit(2);
  }
  const log = createLogger(service, config.logLevel);
  let app: { start(): Promise<void>; stop(): Promise<void> };
  try {
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
        () => process.exit(0),
        (err: unknown) => {
          log.fatal({ err }, 'stop failed');
          process.exit(1);
        },
      );
    });
  }
}

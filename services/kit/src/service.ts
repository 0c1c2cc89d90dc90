/** What every Capstan service process shares: its access to tenants, and its process boundary. */
import { CapstanError, type ServiceRole } from '@capstan/schemas';
import { createLogger, type Logger } from './log.js';
import type { Env, NatsAuthConfig } from './env.js';
import { connectAsService, connectAsTenantUser, type TenantAccess } from './access.js';
import type { LevelWithSilent } from 'pino';

/**
 * A platform service's access to its tenants, from its config's `NATS_URL`/`NATS_CREDS`.
 * @throws CredentialsError when the credential is not this service's
 */
export function serviceAccess(role: ServiceRole, c: { readonly natsUrl: string; readonly nats: NatsAuthConfig }, name: string, log: Logger): Promise<TenantAccess> {
  return connectAsService(role, c.nats.credsPaths[0] ?? '', { servers: c.natsUrl, name, log, ...(c.nats.tls ? { tls: c.nats.tls } : {}) });
}

/** A tenant deployment's access (a worker): one credential per tenant it serves. */
export function tenantUserAccess(c: { readonly natsUrl: string; readonly nats: NatsAuthConfig }, name: string, log: Logger) {
  return connectAsTenantUser(c.nats.credsPaths, { servers: c.natsUrl, name, log, ...(c.nats.tls ? { tls: c.nats.tls } : {}) });
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

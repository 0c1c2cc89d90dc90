/** NATS connections with settings that survive server restarts (see reliability notes). */
import { connect, type NatsConnection } from '@nats-io/transport-node';
import type { Logger } from './log.js';

export type { NatsConnection };

export async function connectNats(servers: string, name: string, log: Logger): Promise<NatsConnection> {
  const nc = await connect({
    servers: servers.split(','),
    name,
    // The client's defaults give up after ~20 s of outage; a service must outlive a restart.
    maxReconnectAttempts: -1,
    reconnectTimeWait: 250,
    reconnectJitter: 250,
    pingInterval: 10_000,
    maxPingOut: 3,
    timeout: 5000,
    // The client otherwise builds two Error objects (for stack traces) on every request,
    // which was a tenth of the orchestrator's CPU under load.
    noAsyncTraces: true,
  });
  void (async () => {
    for await (const s of nc.status()) {
      if (s.type === 'disconnect' || s.type === 'reconnect' || s.type === 'error') {
        log.warn({ nats: s.type, server: 'server' in s ? s.server : undefined }, `nats ${s.type}`);
      }
    }
  })();
  return nc;
}

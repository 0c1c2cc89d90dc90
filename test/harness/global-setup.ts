/**
 * Starts one private nats-server (>= 2.12, JetStream, free port, temp store) for the whole
 * test run and hands its URL to tests via `inject('natsUrl')`. Tests isolate themselves by
 * using fresh random tenants. Tests that kill or restart a server start their own.
 */
import type { TestProject } from 'vitest/node';
import type {} from 'vitest';
import { startNatsServer, type NatsServer } from '@capstan/kit';

let server: NatsServer | undefined;

export async function setup(project: TestProject): Promise<void> {
  server = await startNatsServer();
  project.provide('natsUrl', server.url);
  process.stdout.write(`test harness: nats-server at ${server.url} (store ${server.storeDir})\n`);
}

export async function teardown(): Promise<void> {
  await server?.stop();
}

declare module 'vitest' {
  export interface ProvidedContext {
    natsUrl: string;
  }
}

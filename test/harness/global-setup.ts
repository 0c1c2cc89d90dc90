/**
 * Starts one private nats-server (>= 2.12, JetStream, free port, temp store) for the whole
 * test run, in operator mode with a key store made for the run, and hands both to tests
 * (`inject('natsUrl')`, `inject('natsAuthDir')`). Tests isolate themselves by using fresh
 * random tenants, each its own NATS account. Tests that kill or restart a server start
 * their own (with the same key store).
 */
import { mkdtempSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import type { TestProject } from 'vitest/node';
import type {} from 'vitest';
import { openAuthStore, startNatsServer, type NatsServer } from '@capstan/kit';

let server: NatsServer | undefined;

export async function setup(project: TestProject): Promise<void> {
  const authDir = join(mkdtempSync(join(tmpdir(), 'capstan-test-auth-')), 'auth');
  const auth = await openAuthStore(authDir, { create: true });
  server = await startNatsServer({ auth });
  project.provide('natsUrl', server.url);
  project.provide('natsAuthDir', authDir);
  process.stdout.write(`test harness: nats-server at ${server.url} (store ${server.storeDir}, operator mode, key store ${authDir})\n`);
}

export async function teardown(): Promise<void> {
  await server?.stop();
}

declare module 'vitest' {
  export interface ProvidedContext {
    natsUrl: string;
    natsAuthDir: string;
  }
}

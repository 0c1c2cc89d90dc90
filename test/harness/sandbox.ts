/**
 * A sandbox service for tests: in-process, on the test's nats-server and the machine's
 * Docker engine, with its own node name (so its reaper touches only its own containers),
 * its own artifacts folder and secrets file, and its log lines captured for canary checks.
 */
import { mkdtempSync, readFileSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { Writable } from 'node:stream';
import type Docker from 'dockerode';
import { createLogger, execInSandbox, type SandboxOutcome } from '@capstan/kit';
import { createSandboxService, Labels, loadConfig, type SandboxService } from '@capstan/sandbox';
import { makeRunId, Role, type SandboxExecRequest, type SandboxSpec, type TenantId } from '@capstan/schemas';
import { serviceEnv, type Harness } from './fixtures.js';

export interface TestSandboxes {
  readonly service: SandboxService;
  readonly node: string;
  readonly artifactsDir: string;
  readonly secretsFile: string;
  /** Everything the service logged so far. */
  logs(): string;
  setSecrets(table: Record<string, Record<string, string>>): void;
  /** Runs one attempt of a throwaway run through the service, as a worker would. */
  exec(t: TenantId, mode: 1 | 2 | 3, spec: SandboxSpec, opts?: { timeoutMs?: number; input?: Record<string, string>; attempt?: number }): Promise<SandboxOutcome>;
  /** The stdout of an attempt, read from its destination. */
  stdout(o: SandboxOutcome): string;
  /** Containers of this node (pooled and claimed). */
  containers(): Promise<Docker.ContainerInfo[]>;
  stop(): Promise<void>;
}

export async function startSandboxes(h: Pick<Harness, 'nc'>, natsUrl: string, docker: Docker, tenants: readonly TenantId[], env: Record<string, string> = {}): Promise<TestSandboxes> {
  const node = `t${Math.random().toString(36).slice(2, 10)}`;
  const artifactsDir = mkdtempSync(join(tmpdir(), 'capstan-artifacts-'));
  const secretsFile = join(artifactsDir, '..', `${node}-secrets.json`);
  writeFileSync(secretsFile, '{}');
  let captured = '';
  const sink = new Writable({
    write(chunk: Buffer, _enc, cb) {
      captured += chunk.toString();
      cb();
    },
  });
  const log = createLogger('sandbox', 'debug', sink);
  const config = loadConfig({ ...(await serviceEnv(natsUrl, Role.Sandbox)), SANDBOX_DISCOVERY_MS: '200', CAPSTAN_TENANTS: tenants.join(','), SANDBOX_NODE: node, SANDBOX_ARTIFACTS_DIR: artifactsDir, SANDBOX_SECRETS_FILE: secretsFile, SANDBOX_POOL_MIN: '1', SANDBOX_POOL_MAX: '2', ...env });
  const service = await createSandboxService(config, log);
  await service.start();
  await service.ready;
  return {
    service,
    node,
    artifactsDir,
    secretsFile,
    logs: () => captured,
    setSecrets: (table) => writeFileSync(secretsFile, JSON.stringify(table)),
    async exec(t, mode, spec, o = {}) {
      const req: SandboxExecRequest = {
        runId: makeRunId(Date.now(), crypto.getRandomValues(new Uint8Array(10))),
        workflow: 'test.sandbox',
        step: 'probe',
        attempt: o.attempt ?? 1,
        mode,
        spec,
        timeoutMs: o.timeoutMs ?? 20_000,
        input: o.input ?? {},
      };
      return execInSandbox(await h.nc(t), t, req, { firstReplyMs: 60_000 });
    },
    stdout(o) {
      const dest = o.result?.destination;
      if (!dest) return '';
      try {
        return readFileSync(join(fileURLToPath(dest), 'stdout.log'), 'utf8');
      } catch {
        return '';
      }
    },
    containers: () => docker.listContainers({ all: true, filters: { label: [`${Labels.Node}=${node}`] } }),
    async stop() {
      await service.stop();
    },
  };
}

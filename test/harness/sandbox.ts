/**
 * A sandbox service for tests: in-process, on the test's nats-server and the machine's
 * Docker engine, with its own node name (so its reaper touches only its own containers),
 * its own artifacts folder and secrets file, its log lines captured for canary checks, and
 * (with `audit`) a scratch database for the audit rows egress needs.
 */
import { mkdtempSync, readFileSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { Writable } from 'node:stream';
import type Docker from 'dockerode';
import { createLogger, execInSandbox, migrate, openDatabase, queryRows, signWork, signedWork, type SandboxCallOptions, type SandboxOutcome, type Signer } from '@capstan/kit';
import { createSandboxService, Labels, loadConfig, type SandboxService } from '@capstan/sandbox';
import { encode, makeRunId, Role, Subjects, type RunId, type SandboxExecRequest, type SandboxSpec, type TenantId, type WorkItem } from '@capstan/schemas';
import { sql } from 'drizzle-orm';
import { scratchDatabase } from './postgres.js';
import { accessAs, serviceEnv, type Harness } from './fixtures.js';
import { SANDBOX_IMAGE_DIR } from './docker.js';

const orchestrators = new Map<string, Promise<Signer>>();

/** The tenant's orchestrator identity (its per-tenant JWT and seed): what signs work items. */
export function orchestratorSigner(natsUrl: string, t: TenantId): Promise<Signer> {
  const key = `${natsUrl} ${t}`;
  let p = orchestrators.get(key);
  if (!p) {
    p = (async () => {
      const access = await accessAs(natsUrl, Role.Orchestrator);
      const { signer } = await access.tenant(t);
      if (!signer) throw new Error(`no orchestrator identity for ${t}`);
      return signer;
    })();
    orchestrators.set(key, p);
  }
  return p;
}

/**
 * A sandbox request as a worker sends it: with the work item the orchestrator signed for it
 * (here, signed with the orchestrator's own identity, as dispatch does).
 */
export function withSignedWork(signer: Signer, t: TenantId, req: Omit<SandboxExecRequest, 'work'>, pool = 'default'): SandboxExecRequest {
  const item: WorkItem = {
    runId: req.runId,
    workflow: req.workflow,
    version: 1,
    step: req.step,
    attempt: req.attempt,
    handler: 'sandbox',
    mode: req.mode,
    timeoutMs: req.timeoutMs,
    input: req.input,
    ...(req.previous !== undefined ? { previous: req.previous } : {}),
    sandbox: req.spec,
  };
  const subject = Subjects.work(t, pool);
  const data = encode(item);
  return { ...req, work: signedWork(signWork(signer, subject, data), subject, data) };
}

export interface TestSandboxes {
  readonly service: SandboxService;
  readonly node: string;
  readonly artifactsDir: string;
  readonly secretsFile: string;
  /** Everything the service logged so far. */
  logs(): string;
  setSecrets(table: Record<string, Record<string, string>>): void;
  /** Runs one attempt of a throwaway run (or of `runId`) through the service, as a worker would. */
  exec(t: TenantId, mode: 1 | 2 | 3, spec: SandboxSpec, opts?: ExecOptions): Promise<SandboxOutcome>;
  /** With `audit`: the rows of `audit_log` of a run (kind and detail). */
  auditRows(t: TenantId, runId: string): Promise<{ kind: string; detail: Record<string, unknown> }[]>;
  /** The stdout of an attempt, read from its destination. */
  stdout(o: SandboxOutcome): string;
  /** Containers of this node (pooled and claimed). */
  containers(): Promise<Docker.ContainerInfo[]>;
  stop(): Promise<void>;
}

export interface ExecOptions {
  timeoutMs?: number;
  input?: Record<string, string>;
  attempt?: number;
  runId?: RunId;
  workflow?: string;
  step?: string;
  /** A lease issued for the step's secrets (with a sandbox service that redeems leases). */
  leaseId?: string;
  call?: SandboxCallOptions;
}

export async function startSandboxes(
  h: Pick<Harness, 'nc'>,
  natsUrl: string,
  docker: Docker,
  tenants: readonly TenantId[],
  env: Record<string, string> = {},
  o: { audit?: boolean } = {},
): Promise<TestSandboxes> {
  const node = `t${Math.random().toString(36).slice(2, 10)}`;
  const scratch = o.audit ? await scratchDatabase('sbxaudit') : undefined;
  const db = scratch ? await openDatabase({ url: scratch.url, log: createLogger('test', 'silent') }) : undefined;
  if (db) await migrate(db);
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
  const config = loadConfig({
    ...(await serviceEnv(natsUrl, Role.Sandbox)),
    SANDBOX_DISCOVERY_MS: '200',
    CAPSTAN_TENANTS: tenants.join(','),
    SANDBOX_NODE: node,
    SANDBOX_ARTIFACTS_DIR: artifactsDir,
    SANDBOX_IMAGE_DIR,
    SANDBOX_SECRETS_FILE: secretsFile,
    SANDBOX_POOL_MIN: '1',
    SANDBOX_POOL_MAX: '2',
    ...(scratch ? { AUDIT_DATABASE_URL: scratch.url } : {}),
    ...env,
  });
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
    async exec(t, mode, spec, x = {}) {
      const req: SandboxExecRequest = {
        runId: x.runId ?? makeRunId(Date.now(), crypto.getRandomValues(new Uint8Array(10))),
        workflow: x.workflow ?? 'test.sandbox',
        step: x.step ?? 'probe',
        attempt: x.attempt ?? 1,
        mode,
        spec,
        timeoutMs: x.timeoutMs ?? 20_000,
        input: x.input ?? {},
        ...(x.leaseId ? { leaseId: x.leaseId } : {}),
      };
      return execInSandbox(await h.nc(t), t, withSignedWork(await orchestratorSigner(natsUrl, t), t, req), { firstReplyMs: 60_000, ...x.call });
    },
    async auditRows(t, runId) {
      if (!db) throw new Error('startSandboxes was not given { audit: true }');
      return queryRows<{ kind: string; detail: Record<string, unknown> }>(db, sql`select kind, detail from audit_log where tenant = ${t} and run_id = ${runId} order by id`);
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
      await db?.close();
      await scratch?.drop();
      // A stopped service leaves nothing behind: every pooled sandbox is destroyed.
      const left = await docker.listContainers({ all: true, filters: { label: [`${Labels.Node}=${node}`, `${Labels.Instance}=${service.instance}`] } });
      if (left.length > 0) throw new Error(`${left.length} sandboxes of instance ${service.instance} left after stop: ${left.map((c) => c.Names[0] ?? c.Id).join(', ')}`);
    },
  };
}

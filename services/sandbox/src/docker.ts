/**
 * The Docker backend (dockerode over the engine's socket). Every sandbox is hardened the
 * same way whatever its mode: no capabilities, read-only root, no-new-privileges, the
 * image's non-root user, pids/memory/CPU limits, size-capped tmpfs for /workspace and
 * /tmp, no IPC namespace sharing, `--network none` (granted egress goes through the tool
 * runner's tunnel, never a container network), the `none` log driver (the engine keeps no
 * copy of anything a step prints), and the engine's init as PID 1 so orphans are reaped.
 * Nothing from the host is mounted: no Docker socket, no host path.
 */
import { PassThrough, type Duplex } from 'node:stream';
import Docker from 'dockerode';
import { CapstanError } from '@capstan/schemas';
import { RunnerChannel } from './channel.js';
import { SandboxConflictError, SandboxUnavailableError, type BackendSandbox, type CreateOptions, type ListedSandbox, type SandboxBackend } from './backend.js';

/** How long a new sandbox's tool runner may take to say it is ready. */
const READY_TIMEOUT_MS = 30_000;

interface DockerApiError {
  statusCode?: number;
  code?: string;
  message?: string;
}

function statusOf(e: unknown): number | undefined {
  return (e as DockerApiError).statusCode;
}

/** Engine errors in words; never the request body (which has no secrets, but stays short). */
function describe(e: unknown): string {
  const d = e as DockerApiError;
  if (d.code === 'ENOENT' || d.code === 'ECONNREFUSED' || d.code === 'EACCES') return `Docker engine not reachable (${d.code})`;
  return (d.message ?? String(e)).split('\n')[0]?.slice(0, 300) ?? 'unknown error';
}

export function dockerBackend(docker: Docker = new Docker()): SandboxBackend {
  const guard = async <T>(what: string, fn: () => Promise<T>): Promise<T> => {
    try {
      return await fn();
    } catch (e) {
      if (CapstanError.is(e)) throw e;
      if (statusOf(e) === undefined) throw new SandboxUnavailableError(`${what}: ${describe(e)}`);
      throw e;
    }
  };

  return {
    kind: 'docker',

    async ping() {
      await guard('docker ping', () => docker.ping());
    },

    async create(o: CreateOptions): Promise<BackendSandbox> {
      const container = await guard('create sandbox', async () => {
        try {
          return await docker.createContainer({
            name: o.name,
            Image: o.image,
            Labels: { ...o.labels },
            // Identity never goes here: it is injected over the control channel at run time.
            Env: [],
            User: '10001:10001',
            WorkingDir: '/workspace',
            AttachStdin: true,
            AttachStdout: true,
            AttachStderr: true,
            OpenStdin: true,
            StdinOnce: false,
            Tty: false,
            NetworkDisabled: true,
            HostConfig: {
              NetworkMode: 'none',
              CapDrop: ['ALL'],
              SecurityOpt: ['no-new-privileges'],
              ReadonlyRootfs: true,
              IpcMode: 'none',
              Init: true,
              PidsLimit: o.limits.pids,
              Memory: o.limits.memoryBytes,
              MemorySwap: o.limits.memoryBytes,
              NanoCpus: o.limits.nanoCpus,
              Tmpfs: {
                '/workspace': `rw,nosuid,nodev,size=${o.limits.workspaceBytes},uid=10001,gid=10001,mode=0700`,
                '/tmp': `rw,nosuid,nodev,noexec,size=${o.limits.tmpBytes},uid=10001,gid=10001,mode=0700`,
              },
              LogConfig: { Type: 'none', Config: {} },
              AutoRemove: false,
            },
          });
        } catch (e) {
          if (statusOf(e) === 409) throw new SandboxConflictError(o.name);
          throw e;
        }
      });
      try {
        // Attach before start: the runner's first `ready` must not be missed.
        const stream = (await container.attach({ stream: true, stdin: true, stdout: true, stderr: true, hijack: true })) as NodeJS.ReadWriteStream & Duplex;
        const stdout = new PassThrough();
        const stderr = new PassThrough();
        docker.modem.demuxStream(stream, stdout, stderr);
        stream.on('end', () => stdout.end());
        stderr.resume();
        const channel = new RunnerChannel(stream, stdout, o.name);
        await container.start();
        let timer: NodeJS.Timeout | undefined;
        await Promise.race([
          channel.ready,
          new Promise((_, reject) => {
            timer = setTimeout(() => reject(new SandboxUnavailableError(`sandbox ${o.name}: tool runner not ready after ${READY_TIMEOUT_MS} ms`)), READY_TIMEOUT_MS);
          }),
        ]).finally(() => clearTimeout(timer));
        return { id: container.id, name: o.name, channel };
      } catch (e) {
        await container.remove({ force: true }).catch(() => {});
        if (CapstanError.is(e) || statusOf(e) !== undefined) throw e;
        throw new SandboxUnavailableError(`start sandbox ${o.name}: ${describe(e)}`);
      }
    },

    async rename(s: BackendSandbox, name: string) {
      await guard('rename sandbox', async () => {
        try {
          await docker.getContainer(s.id).rename({ name });
          s.name = name;
        } catch (e) {
          if (statusOf(e) === 409) throw new SandboxConflictError(name);
          throw e;
        }
      });
    },

    async remove(idOrName: string) {
      await guard('remove sandbox', async () => {
        try {
          await docker.getContainer(idOrName).remove({ force: true, v: true });
        } catch (e) {
          // Gone already, or its removal is already under way.
          if (statusOf(e) === 404 || statusOf(e) === 409) return;
          throw e;
        }
      });
    },

    async list(labels): Promise<ListedSandbox[]> {
      const filters = { label: Object.entries(labels).map(([k, v]) => `${k}=${v}`) };
      const found = await guard('list sandboxes', () => docker.listContainers({ all: true, filters }));
      return found.map((c) => ({ id: c.Id, name: (c.Names[0] ?? '').replace(/^\//, ''), labels: c.Labels }));
    },

    async exists(name: string) {
      return guard('inspect sandbox', async () => {
        try {
          await docker.getContainer(name).inspect();
          return true;
        } catch (e) {
          if (statusOf(e) === 404) return false;
          throw e;
        }
      });
    },
  };
}

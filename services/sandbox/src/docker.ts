/**
 * The Docker backend (dockerode over the engine's socket). Every sandbox is hardened the
 * same way whatever its mode: read-only root, no-new-privileges, pids/memory/CPU limits,
 * size-capped tmpfs for /workspace and /tmp, no IPC namespace sharing, `--network none`
 * (granted egress goes through the tool runner's tunnel, never a container network), the
 * `none` log driver (the engine keeps no copy of anything a step prints), and the engine's
 * init as PID 1 so orphans are reaped. Nothing from the host is mounted: no Docker socket,
 * no host path. The runtime is gVisor (`runsc`) or runc, per service.
 *
 * The tool runner is the container's root with only {@link RUNNER_CAPABILITIES}, fewer than
 * Docker gives a default container: enough to start each step as the unprivileged
 * `STEP_UID` (which has no capabilities at all and cannot signal, trace or read the runner)
 * and to kill and clean up whatever the step leaves.
 */
import { readFile } from 'node:fs/promises';
import { PassThrough, type Duplex } from 'node:stream';
import Docker from 'dockerode';
import { CapstanError } from '@capstan/schemas';
import { RunnerChannel } from './channel.js';
import { lineSplitter, STEP_GID, STEP_UID } from './runner/protocol.js';
import { SandboxConflictError, SandboxUnavailableError, type BackendSandbox, type CreateOptions, type ListedSandbox, type SandboxBackend, type SandboxState } from './backend.js';

/** How long a new sandbox's tool runner may take to say it is ready. */
const READY_TIMEOUT_MS = 30_000;

/**
 * What the runner may do: chown the inputs to the step's uid, read and remove whatever the
 * step leaves (dac_override, fowner), kill its processes, and setuid/setgid to start it.
 */
export const RUNNER_CAPABILITIES = ['CHOWN', 'DAC_OVERRIDE', 'FOWNER', 'KILL', 'SETGID', 'SETUID'] as const;

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
            // The runner; steps run as STEP_UID (see runner/protocol.ts).
            User: '0:0',
            WorkingDir: '/workspace',
            AttachStdin: true,
            AttachStdout: true,
            AttachStderr: true,
            OpenStdin: true,
            StdinOnce: false,
            Tty: false,
            NetworkDisabled: true,
            HostConfig: {
              Runtime: o.runtime,
              NetworkMode: 'none',
              CapDrop: ['ALL'],
              CapAdd: [...RUNNER_CAPABILITIES],
              SecurityOpt: ['no-new-privileges'],
              ReadonlyRootfs: true,
              IpcMode: 'none',
              Init: true,
              PidsLimit: hostPidsLimit(o),
              Memory: o.limits.memoryBytes,
              MemorySwap: o.limits.memoryBytes,
              NanoCpus: o.limits.nanoCpus,
              Tmpfs: {
                '/workspace': `rw,nosuid,nodev,size=${o.limits.workspaceBytes},uid=${STEP_UID},gid=${STEP_GID},mode=0700`,
                '/tmp': `rw,nosuid,nodev,noexec,size=${o.limits.tmpBytes},uid=${STEP_UID},gid=${STEP_GID},mode=0700`,
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
        // The runner's own diagnostics (never step output, never identity).
        if (o.diag) stderr.on('data', lineSplitter(o.diag, 4096));
        else stderr.resume();
        const channel = new RunnerChannel(stream, stdout, o.name);
        await container.start();
        let timer: NodeJS.Timeout | undefined;
        await Promise.race([
          channel.ready,
          new Promise((_, reject) => {
            timer = setTimeout(() => reject(new SandboxUnavailableError(`sandbox ${o.name}: tool runner not ready after ${READY_TIMEOUT_MS} ms`)), READY_TIMEOUT_MS);
          }),
        ]).finally(() => clearTimeout(timer));
        const started = await stateOf(docker, container.id);
        if (!started?.running) throw new SandboxUnavailableError(`sandbox ${o.name} stopped right after it started`);
        return { id: container.id, name: o.name, channel, started };
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
          s.channel.label = name;
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

    state: (id) => guard('inspect sandbox', () => stateOf(docker, id)),

    async runtimes() {
      const info = (await guard('docker info', () => docker.info())) as { Runtimes?: Record<string, unknown> };
      return Object.keys(info.Runtimes ?? {});
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

/**
 * The engine's pids limit counts host tasks. Under runc those are the step's processes and
 * threads. Under gVisor they are the sandbox kernel's own threads (its Go runtime, its
 * platform's stubs), which it needs dozens of and which grow with use: the step's
 * processes live inside it, where the memory limit and the timeout bound them, so the host
 * limit is raised to keep the sandbox kernel itself from running out.
 */
export function hostPidsLimit(o: Pick<CreateOptions, 'limits' | 'runtime'>): number {
  return o.runtime === 'runsc' ? Math.max(o.limits.pids * 8, 1024) : o.limits.pids;
}

async function stateOf(docker: Docker, id: string): Promise<SandboxState | undefined> {
  try {
    const info = await docker.getContainer(id).inspect();
    const tasks = await hostTasks(info.Id);
    return {
      running: info.State.Running && !info.State.Restarting && !info.State.Paused,
      pid: info.State.Pid,
      restarts: info.RestartCount,
      oomKilled: info.State.OOMKilled,
      ...(tasks !== undefined ? { tasks, tasksLimit: info.HostConfig.PidsLimit ?? 0 } : {}),
    };
  } catch (e) {
    if (statusOf(e) === 404) return undefined;
    throw e;
  }
}

/** The kernel's count of the container's tasks (its pids cgroup), where this process can read it. */
async function hostTasks(id: string): Promise<number | undefined> {
  for (const dir of [`/sys/fs/cgroup/pids/docker/${id}`, `/sys/fs/cgroup/docker/${id}`, `/sys/fs/cgroup/system.slice/docker-${id}.scope`]) {
    try {
      const n = Number((await readFile(`${dir}/pids.current`, 'utf8')).trim());
      if (Number.isInteger(n)) return n;
    } catch {
      // not this layout
    }
  }
  return undefined;
}

/**
 * Docker for tests: the machine's engine on /var/run/docker.sock (started by
 * `infra/docker/ensure-dockerd.sh` in CI) and the sandbox image, built once per test process.
 *
 *   const docker = await dockerOrSkip();
 *   describe.skipIf(!docker)('sandbox - …', () => { … });
 */
import Docker from 'dockerode';
import { ensureSandboxImage, type SandboxImage } from '@capstan/sandbox';

export const DOCKER_SOCKET = '/var/run/docker.sock';

/**
 * A client for the machine's Docker engine, or undefined (after printing why) when none
 * answers. Under CI a missing engine is an error, not a skip: CI must exercise the sandbox.
 */
export async function dockerOrSkip(): Promise<Docker | undefined> {
  const docker = new Docker({ socketPath: DOCKER_SOCKET });
  try {
    await docker.ping();
    return docker;
  } catch (e) {
    const why = e instanceof Error ? e.message : String(e);
    if (process.env['CI']) throw new Error(`no docker engine on ${DOCKER_SOCKET} (${why}); CI needs one: run infra/docker/ensure-dockerd.sh`);
    process.stdout.write(`SKIPPED: no docker engine (${DOCKER_SOCKET}: ${why})\n`);
    return undefined;
  }
}

/**
 * The container runtimes sandbox tests run under: runc, and gVisor's runsc when the engine
 * has it registered (`infra/docker/ensure-runsc.sh`). Under CI a missing runsc is an error:
 * the escape tests must run under both.
 */
export async function sandboxRuntimes(docker: Docker): Promise<('runc' | 'runsc')[]> {
  const info = (await docker.info()) as { Runtimes?: Record<string, unknown> };
  if (Object.keys(info.Runtimes ?? {}).includes('runsc')) return ['runc', 'runsc'];
  if (process.env['CI']) throw new Error('the Docker engine has no runsc runtime; CI needs it: run infra/docker/ensure-runsc.sh');
  process.stdout.write('SKIPPED: runsc (gVisor) is not registered with the Docker engine; sandbox tests run under runc only\n');
  return ['runc'];
}

let image: Promise<SandboxImage> | undefined;

/** The sandbox image for the current build, built on first use and shared by every test in the process. */
export function sandboxImage(docker: Docker): Promise<SandboxImage> {
  image ??= ensureSandboxImage(docker).catch((e: unknown) => {
    // A failed build is retried by the next caller rather than cached.
    image = undefined;
    throw e;
  });
  return image;
}

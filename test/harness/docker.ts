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

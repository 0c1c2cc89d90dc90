/**
 * Docker for tests: the engine DOCKER_HOST names (default /var/run/docker.sock), started by
 * `npm test`'s provisioning (infra/docker/ensure-dockerd.sh), and the sandbox image, built
 * once per test process.
 *
 *   const docker = await dockerOrSkip();
 *   describe.skipIf(!docker)('sandbox - …', () => { … });
 */
import { join } from 'node:path';
import Docker from 'dockerode';
import { PROJECT_ROOT } from '@capstan/kit';
import { ensureSandboxImage, type SandboxImage } from '@capstan/sandbox';
import { requirementMissing } from './requirements.js';

/**
 * Where tests assemble the sandbox image: the checkout's `.capstan/sandbox`, whatever the
 * working directory, so busybox and the digest cache are fetched and computed once per checkout.
 */
export const SANDBOX_IMAGE_DIR = join(PROJECT_ROOT, '.capstan', 'sandbox');

/** The engine's socket: DOCKER_HOST's when it is a unix socket, else Docker's default. */
export const DOCKER_SOCKET = process.env['DOCKER_HOST']?.startsWith('unix://') ? process.env['DOCKER_HOST'].slice('unix://'.length) : '/var/run/docker.sock';

/**
 * A client for the machine's Docker engine, or undefined (after printing what is missing and
 * how to get it) when none answers. Under CI a missing engine is an error, not a skip.
 */
export async function dockerOrSkip(): Promise<Docker | undefined> {
  const docker = new Docker({ socketPath: DOCKER_SOCKET });
  try {
    await docker.ping();
    return docker;
  } catch (e) {
    const why = e instanceof Error ? e.message : String(e);
    requirementMissing(
      `a Docker engine (${DOCKER_SOCKET}: ${why})`,
      '`npm test` starts one as root or with passwordless sudo; else run `sudo bash infra/docker/ensure-dockerd.sh` once',
    );
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
  // The runc half still runs; the gVisor half is what is skipped.
  requirementMissing(
    'gVisor (runsc registered with the Docker engine)',
    '`npm test` registers it as root or with passwordless sudo; else `sudo bash infra/docker/ensure-runsc.sh`',
  );
  return ['runc'];
}

let image: Promise<SandboxImage> | undefined;

/** The sandbox image for the current build, built on first use and shared by every test in the process. */
export function sandboxImage(docker: Docker): Promise<SandboxImage> {
  image ??= ensureSandboxImage(docker, { root: SANDBOX_IMAGE_DIR }).catch((e: unknown) => {
    // A failed build is retried by the next caller rather than cached.
    image = undefined;
    throw e;
  });
  return image;
}

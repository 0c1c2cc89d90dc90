/**
 * The sandbox image against the machine's Docker engine: built from a root filesystem
 * (no registry), tagged by content, reused when present, and runnable the way sandboxes
 * run (no network, read-only root, uid 10001).
 */
import { describe, expect, it } from 'vitest';
import Docker from 'dockerode';
import { ensureSandboxImage, SandboxImageError, type SandboxImage } from '@capstan/sandbox';
import { ErrorCode } from '@capstan/schemas';
import { dockerOrSkip, SANDBOX_IMAGE_DIR, sandboxImage } from '../harness/docker.js';

const docker = await dockerOrSkip();

/** Splits the engine's multiplexed log stream (8-byte frame headers) into stdout and stderr. */
function demux(buf: Buffer): { out: string; err: string } {
  let out = '';
  let err = '';
  for (let i = 0; i + 8 <= buf.length;) {
    const size = buf.readUInt32BE(i + 4);
    const text = buf.subarray(i + 8, i + 8 + size).toString('utf8');
    if (buf[i] === 2) err += text;
    else out += text;
    i += 8 + size;
  }
  return { out, err };
}

/** Runs `script` with /bin/sh in a throwaway container shaped like a sandbox; returns its exit code and output. */
async function sh(d: Docker, image: SandboxImage, script: string): Promise<{ code: number; out: string; err: string }> {
  const c = await d.createContainer({
    Image: image.ref,
    Entrypoint: ['/bin/sh'],
    Cmd: ['-c', script],
    User: '10001:10001',
    Labels: { 'capstan.test': 'sandbox-image' },
    HostConfig: { NetworkMode: 'none', ReadonlyRootfs: true, CapDrop: ['ALL'], SecurityOpt: ['no-new-privileges'] },
  });
  try {
    await c.start();
    const { StatusCode } = (await c.wait()) as { StatusCode: number };
    const logs = (await c.logs({ stdout: true, stderr: true, follow: false })) as unknown as Buffer;
    return { code: StatusCode, ...demux(logs) };
  } finally {
    await c.remove({ force: true });
  }
}

describe('sandbox image - errors', () => {
  it('sandbox image - an unreachable engine is a typed error that says so', async () => {
    const nowhere = new Docker({ socketPath: '/nonexistent/docker.sock' });
    const e = await ensureSandboxImage(nowhere).then(
      () => undefined,
      (err: unknown) => err,
    );
    expect(SandboxImageError.is(e)).toBe(true);
    expect(e).toMatchObject({ code: ErrorCode.SandboxImageFailed, stage: 'docker', retryable: true });
    expect((e as Error).message).toMatch(/docker engine not reachable: .*ENOENT/);
  });
});

describe.skipIf(!docker)('sandbox image', () => {
  const d = docker as Docker;

  it('sandbox image - tagged by its content hash, labelled, and reused by a second call', async () => {
    const image = await sandboxImage(d);
    expect(image.hash).toMatch(/^[0-9a-f]{64}$/);
    expect(image.ref).toBe(`capstan-sandbox:${image.hash.slice(0, 16)}`);

    const started = Date.now();
    const again = await ensureSandboxImage(d, { root: SANDBOX_IMAGE_DIR });
    expect(again).toEqual(image);
    // Present means no rebuild: a few stats, one ldd, one inspect.
    expect(Date.now() - started).toBeLessThan(5_000);

    const info = await d.getImage(image.ref).inspect();
    expect(info.Config.Labels).toMatchObject({ 'capstan.image': 'sandbox', 'capstan.image.hash': image.hash });
    expect(info.Config.User).toBe('10001:10001');
    expect(info.Config.WorkingDir).toBe('/workspace');
    expect(info.Config.Env).toContain('PATH=/usr/bin:/bin');
    expect(info.Config.Entrypoint).toEqual(['/usr/bin/node', '/opt/capstan/runner/tool-runner.js']);
  });

  it('sandbox image - node, uid 10001 and busybox work on a read-only root with no network', async () => {
    const image = await sandboxImage(d);
    const script = [
      'echo "node=$(node --version)"',
      'echo "uid=$(id -u) gid=$(id -g) user=$(id -un) home=$HOME"',
      'echo "pwd=$(pwd)"',
      'echo "sh=$(readlink /bin/sh)"',
      'echo "applets=$(ls /bin | wc -l)"',
      'echo "sed=$(echo capstan | sed s/cap/CAP/ | tr a-z A-Z)"',
      'echo "awk=$(echo 2 3 | awk \'{ print $1 * $2 }\')"',
      'echo "workspace=$(stat -c %u:%g /workspace) tmp=$(stat -c %a /tmp)"',
      "echo \"net=$(ls /sys/class/net | tr '\\n' ' ')\"",
      'if touch /etc/probe 2>/dev/null; then echo rootfs=writable; else echo rootfs=read-only; fi',
      'echo "sha=$(node -e \'process.stdout.write(require("node:crypto").createHash("sha256").update("x").digest("hex").slice(0, 12))\')"',
      'echo "runner=$(node -p \'require("/opt/capstan/runner/package.json").type\') $(test -f /opt/capstan/runner/tool-runner.js && echo present)"',
      // The agent loads as an ES module in the image; without arguments it exits 2 (usage).
      'node /opt/capstan/agents/mini-agent.js >/dev/null 2>&1; echo "agent=$?"',
    ].join('\n');
    const r = await sh(d, image, script);
    expect(r.code, r.err).toBe(0);
    const seen = Object.fromEntries(
      r.out
        .trim()
        .split('\n')
        .flatMap((line) => line.split(' ').map((kv) => kv.split('=')))
        .filter((kv) => kv.length === 2),
    );
    expect(seen).toMatchObject({
      node: process.version,
      uid: '10001',
      gid: '10001',
      user: 'sandbox',
      home: '/workspace',
      pwd: '/workspace',
      sh: 'busybox',
      sed: 'CAPSTAN',
      awk: '6',
      workspace: '10001:10001',
      tmp: '1777',
      net: 'lo',
      rootfs: 'read-only',
      sha: '2d711642b726',
      runner: 'module',
      agent: '2',
    });
    expect(Number(seen['applets'])).toBeGreaterThan(100);
    expect(r.out).toContain('runner=module present');
  });

  it('sandbox image - concurrent forced builds are serialised and agree on one image', async () => {
    const image = await sandboxImage(d);
    const [a, b] = await Promise.all([ensureSandboxImage(d, { root: SANDBOX_IMAGE_DIR, force: true }), ensureSandboxImage(d, { root: SANDBOX_IMAGE_DIR, force: true })]);
    expect(a).toEqual(image);
    expect(b).toEqual(image);
    const info = await d.getImage(image.ref).inspect();
    expect(info.Config.Labels?.['capstan.image.hash']).toBe(image.hash);
  });
});

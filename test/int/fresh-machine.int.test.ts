/**
 * The README's commands on a machine whose Docker engine is down: `npm run demo` starts one
 * (infra/provision.mjs → infra/docker/ensure-dockerd.sh) and completes every demo run,
 * sandboxed ones included; and a user who may not start an engine is told, in one line, what
 * to run.
 *
 * Why a private engine: other work on a machine uses its engine, and a test must never stop
 * or restart it. So this test starts a dockerd of its own beside it (its own socket,
 * --data-root, --exec-root and --pidfile; no bridge and no iptables rules, so it changes
 * nothing of the machine's networking), stops that one, and points `npm run demo` at it with
 * DOCKER_HOST, the variable a user's shell would carry. CAPSTAN_DOCKERD_FLAGS gives the
 * engine the demo starts the same directories, so it is that private engine that comes back.
 * The code path is the one that starts /var/run/docker.sock's engine on a new machine; only
 * the socket and the directories differ.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { spawn, spawnSync } from 'node:child_process';
import { existsSync, mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { join } from 'node:path';
import Docker from 'dockerode';
import { PROJECT_ROOT } from '@capstan/kit';
import { requirementMissing } from '../harness/requirements.js';

const ENSURE = join(PROJECT_ROOT, 'infra', 'docker', 'ensure-dockerd.sh');
const DEMOS = ['demo.pipeline', 'demo.flaky', 'demo.signal', 'demo.agent', 'demo.sandboxed', 'demo.approval', 'demo.jit'];
const DEMO_TIMEOUT_MS = 8 * 60_000;

const isRoot = process.getuid?.() === 0;
const mayStartEngines = isRoot || spawnSync('sudo', ['-n', 'true'], { stdio: 'ignore' }).status === 0;
if (!mayStartEngines) requirementMissing('root or passwordless sudo (to start a private Docker engine)', 'run `npm test` as root, or with passwordless sudo');

interface Ran {
  readonly code: number | null;
  readonly out: string;
}

function run(cmd: string, args: readonly string[], env: NodeJS.ProcessEnv, timeoutMs: number): Promise<Ran> {
  return new Promise((resolve, reject) => {
    const child = spawn(cmd, args, { cwd: PROJECT_ROOT, env, stdio: ['ignore', 'pipe', 'pipe'] });
    let out = '';
    child.stdout.on('data', (d: Buffer) => (out += d.toString()));
    child.stderr.on('data', (d: Buffer) => (out += d.toString()));
    const timer = setTimeout(() => {
      child.kill('SIGTERM');
      reject(new Error(`${cmd} ${args.join(' ')} took longer than ${timeoutMs} ms:\n${out.slice(-4000)}`));
    }, timeoutMs);
    child.once('exit', (code) => {
      clearTimeout(timer);
      resolve({ code, out });
    });
  });
}

const pidAlive = (pid: number) => {
  try {
    process.kill(pid, 0);
    return true;
  } catch {
    return false;
  }
};

describe('a fresh machine', () => {
  it('fresh machine - without root or sudo, the engine script says in one line what to run, and starts nothing (exit 3)', async () => {
    const dir = mkdtempSync('/tmp/cdk-');
    try {
      const env = { ...process.env, DOCKER_HOST: `unix://${dir}/sock` };
      // As `nobody` when we are root; as ourselves when we have no sudo either.
      const r = isRoot ? await run('runuser', ['-u', 'nobody', '--', 'bash', ENSURE], env, 60_000) : mayStartEngines ? undefined : await run('bash', [ENSURE], env, 60_000);
      if (!r) return;
      const lines = r.out.trim().split('\n');
      process.stdout.write(`ensure-dockerd.sh unprivileged: exit ${r.code}, ${lines.length} line(s): ${lines.join(' | ')}\n`);
      expect(r.code).toBe(3);
      expect(lines).toHaveLength(1);
      expect(lines[0]).toMatch(/needs root or passwordless sudo: run `sudo bash infra\/docker\/ensure-dockerd.sh` once$/);
      expect(existsSync(join(dir, 'sock'))).toBe(false);
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });

  describe.skipIf(!mayStartEngines)('with the Docker engine stopped', () => {
    // Short: dockerd's own sockets live under --exec-root, and a unix socket path is short.
    let dir = '';
    let socket = '';
    let pidfile = '';
    let engineEnv: NodeJS.ProcessEnv = {};
    const answers = () =>
      new Docker({ socketPath: socket }).ping().then(
        () => true,
        () => false,
      );
    const enginePid = () => (existsSync(pidfile) ? Number(readFileSync(pidfile, 'utf8').trim()) : 0);

    /** Stops the private engine (ours: started by this test) and waits for it to be gone. */
    async function stopEngine(): Promise<void> {
      const pid = enginePid();
      if (!pid || !pidAlive(pid)) return;
      process.kill(pid, 'SIGTERM');
      const deadline = Date.now() + 60_000;
      while (pidAlive(pid) && Date.now() < deadline) await new Promise((r) => setTimeout(r, 200));
      if (pidAlive(pid)) process.kill(pid, 'SIGKILL');
    }

    beforeAll(async () => {
      dir = mkdtempSync('/tmp/cdk-');
      socket = join(dir, 'sock');
      pidfile = join(dir, 'pid');
      engineEnv = {
        ...process.env,
        DOCKER_HOST: `unix://${socket}`,
        CAPSTAN_DOCKERD_FLAGS: `--data-root ${dir}/data --exec-root ${dir}/x --pidfile ${pidfile} --bridge none --iptables=false`,
        CAPSTAN_DOCKERD_LOG: join(dir, 'dockerd.log'),
      };
      // The private engine, started by the script under test, then stopped: the state a
      // machine is in when its engine is installed but down.
      const first = await run('bash', [ENSURE], engineEnv, 120_000);
      expect(first.code, first.out).toBe(0);
      expect(await answers()).toBe(true);
      await stopEngine();
    }, 180_000);

    afterAll(async () => {
      if (!dir) return;
      await stopEngine();
      rmSync(dir, { recursive: true, force: true });
    }, 120_000);

    it(
      'fresh machine - `npm run demo` starts the engine and completes every demo run',
      async () => {
        const stoppedPid = enginePid();
        expect(await answers()).toBe(false);
        const env: NodeJS.ProcessEnv = { ...engineEnv, CAPSTAN_DEV_DIR: join(dir, 'dev'), NO_COLOR: '1', LOG_LEVEL: 'warn' };
        // The demo starts its own nats-server and embedded projections, as on a new machine.
        delete env['NATS_URL'];
        delete env['DATABASE_URL'];
        const demo = await run('npm', ['run', 'demo'], env, DEMO_TIMEOUT_MS);
        const completed = DEMOS.filter((w) => new RegExp(`^\\s+[0-9A-Z]{26}\\s+${w.replace('.', '\\.')}\\s+completed\\s*$`, 'm').test(demo.out));
        process.stdout.write(
          `npm run demo: exit ${demo.code}; engine started: ${/starting dockerd at/.test(demo.out)}; completed ${completed.length}/${DEMOS.length}: ${completed.join(', ')}\n`,
        );
        expect(demo.code, demo.out.slice(-6000)).toBe(0);
        expect(demo.out).toContain(`starting dockerd at ${socket}`);
        expect(completed).toEqual(DEMOS);
        expect(demo.out).toContain('demo: all runs completed');
        // A new engine, on the private socket, still running after the demo.
        expect(await answers()).toBe(true);
        expect(enginePid()).not.toBe(stoppedPid);
      },
      DEMO_TIMEOUT_MS + 60_000,
    );
  });
});

/**
 * Sandboxed steps against the real Docker engine: isolation (network, privileges, limits),
 * identity injection and scrub between runs, egress grants, canaries, and the service's
 * answers when no engine is there. Each test drives the sandbox service as a worker does:
 * one request on NATS, replies with metadata, output read from the attempt's destination.
 */
import { createHash } from 'node:crypto';
import { readFileSync } from 'node:fs';
import { createServer, type Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import { fileURLToPath } from 'node:url';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, inject, it } from 'vitest';
import type Docker from 'dockerode';
import { Streams, type TenantId, Role } from '@capstan/schemas';
import { connect, eventually, provision, silent, type Harness, serviceEnv } from '../harness/fixtures.js';
import { dockerOrSkip } from '../harness/docker.js';
import { startSandboxes, type TestSandboxes } from '../harness/sandbox.js';
import { createSandboxService, loadConfig } from '@capstan/sandbox';
import { execInSandbox } from '@capstan/kit';
import { decode, encode, makeRunId, parseSandboxReply, Subjects } from '@capstan/schemas';

const url = inject('natsUrl');
const docker = await dockerOrSkip();
const sha = (s: string) => createHash('sha256').update(s).digest('hex');

/** Node code run with `node -e` inside the sandbox; prints one JSON line. */
const PROBE = `
const net = require('node:net'), dns = require('node:dns'), fs = require('node:fs'), cp = require('node:child_process');
const tcp = (port, host) => new Promise((res) => { const s = net.connect(port, host); s.setTimeout(2000, () => { s.destroy(); res('timeout'); }); s.on('connect', () => { s.destroy(); res('connected'); }); s.on('error', (e) => res(e.code)); });
const attempt = (f) => { try { f(); return 'allowed'; } catch (e) { return e.code || e.message; } };
const status = fs.readFileSync('/proc/self/status', 'utf8');
(async () => {
  const r = {
    tcp4222: await tcp(4222, '127.0.0.1'),
    tcp5432: await tcp(5432, '127.0.0.1'),
    tcpBridge: await tcp(4222, '172.17.0.1'),
    tcpExternal: await tcp(443, '1.1.1.1'),
    dns: await new Promise((res) => dns.lookup('example.com', (e) => res(e ? e.code : 'resolved'))),
    interfaces: fs.readdirSync('/sys/class/net'),
    uid: process.getuid(),
    capEff: /CapEff:\\s+(\\w+)/.exec(status)[1],
    noNewPrivs: /NoNewPrivs:\\s+(\\d)/.exec(status)[1],
    writeRoot: attempt(() => fs.writeFileSync('/etc/capstan-probe', 'x')),
    writeUsr: attempt(() => fs.writeFileSync('/usr/bin/capstan-probe', 'x')),
    chown: attempt(() => fs.chownSync('/workspace/input.json', 0, 0)),
    mount: cp.spawnSync('mount', ['-t', 'tmpfs', 'none', '/workspace/out']).status,
    unshare: cp.spawnSync('unshare', ['-r', 'true']).status,
    dockerSocket: fs.existsSync('/var/run/docker.sock'),
    mounts: fs.readFileSync('/proc/self/mountinfo', 'utf8').split('\\n').filter(Boolean).map((l) => l.split(' ')[4]),
  };
  console.log(JSON.stringify(r));
})();
`;

describe.skipIf(!docker)('sandboxed steps on Docker', () => {
  let h: Harness;
  let t: TenantId;
  let sb: TestSandboxes;

  beforeAll(async () => {
    h = await connect(url);
    t = await provision(h, 'sbx');
    // No warm sandboxes ahead of time and at most one idle per mode: reuse is then predictable.
    sb = await startSandboxes(h, url, docker as Docker, [t], { SANDBOX_POOL_MIN: '0', SANDBOX_POOL_MAX: '1' });
  }, 300_000);

  afterAll(async () => {
    await sb?.stop();
    await h?.close();
  });

  it('a mode-1 step has no network, no privileges and a read-only root', async () => {
    const out = await sb.exec(t, 1, { command: ['node', '-e', PROBE] });
    expect(out.error).toBeUndefined();
    const r = JSON.parse(sb.stdout(out).trim()) as Record<string, unknown>;
    process.stdout.write(`isolation probe: ${JSON.stringify(r)}\n`);
    // The container's own loopback has nothing on it; no route leaves the container.
    expect(r['tcp4222']).toBe('ECONNREFUSED');
    expect(r['tcp5432']).toBe('ECONNREFUSED');
    expect(r['tcpBridge']).toBe('ENETUNREACH');
    expect(r['tcpExternal']).toBe('ENETUNREACH');
    expect(r['dns']).not.toBe('resolved');
    expect(r['interfaces']).toEqual(['lo']);
    expect(r['uid']).toBe(10001);
    expect(r['capEff']).toBe('0000000000000000');
    expect(r['noNewPrivs']).toBe('1');
    expect(r['writeRoot']).toBe('EROFS');
    expect(r['writeUsr']).toBe('EROFS');
    expect(r['chown']).toBe('EPERM');
    expect(r['mount']).not.toBe(0);
    expect(r['unshare']).not.toBe(0);
    expect(r['dockerSocket']).toBe(false);
    // Nothing from the host but what the engine itself provides (resolv.conf, hostname, hosts).
    const hostPaths = (r['mounts'] as string[]).filter((m) => !['/', '/proc', '/dev', '/dev/pts', '/sys', '/dev/mqueue', '/workspace', '/tmp', '/etc/resolv.conf', '/etc/hostname', '/etc/hosts', '/sbin/docker-init', '/dev/console'].includes(m) && !m.startsWith('/sys/') && !m.startsWith('/proc/') && !m.startsWith('/dev/'));
    expect(hostPaths).toEqual([]);
  });

  it('a fork bomb, a memory hog and a workspace filler are stopped by the limits; the host keeps answering', async () => {
    const rtt = async () => {
      const t0 = performance.now();
      await (await h.nc(t)).flush();
      return performance.now() - t0;
    };
    const before = await rtt();
    let worst = 0;
    const probe = setInterval(() => void rtt().then((ms) => (worst = Math.max(worst, ms))), 100);
    try {
      const [bomb, hog, filler] = await Promise.all([
        sb.exec(t, 1, { command: ['sh', '-c', 'bomb() { bomb | bomb & }; bomb; sleep 30'] }, { timeoutMs: 4000 }),
        sb.exec(t, 1, { command: ['node', '-e', 'const a = []; for (;;) a.push(Buffer.alloc(64 << 20, 1));'] }, { timeoutMs: 20_000 }),
        sb.exec(t, 1, { command: ['sh', '-c', 'dd if=/dev/zero of=/workspace/fill bs=1M count=1024; echo exit=$?'] }, { timeoutMs: 20_000 }),
      ]);
      process.stdout.write(`limits: bomb=${bomb.error?.code} hog=${hog.error?.code}/${hog.result?.signal ?? hog.result?.exitCode} filler=${sb.stdout(filler).trim()}\n`);
      // Either the pids limit makes the shell's own fork fail (it exits non-zero) or the
      // step's timeout ends it; both are the limit holding.
      expect(['step_timeout', 'sandbox_exit']).toContain(bomb.error?.code);
      expect(hog.error?.code).toBe('sandbox_exit');
      expect(hog.result?.exitCode).not.toBe(0);
      // The workspace is a 64 MiB tmpfs: dd stops there with ENOSPC.
      expect(sb.stdout(filler)).toMatch(/exit=1/);
    } finally {
      clearInterval(probe);
    }
    process.stdout.write(`nats round trip: ${before.toFixed(1)} ms before, worst ${worst.toFixed(1)} ms during\n`);
    expect(worst).toBeLessThan(1000);
  });

  it('a mode-2 step sees only its own identity; the next run in the same sandbox sees none of it', async () => {
    // The pool keeps at most one idle sandbox per mode, so the second run gets the one the first run used.
    const canaryA = `canary-A-${Math.random().toString(36).slice(2)}`;
    sb.setSecrets({ [t]: { API_TOKEN: canaryA } });
    const first = await sb.exec(t, 2, {
      secrets: ['API_TOKEN'],
      command: [
        'sh',
        '-c',
        [
          'printf "digest=%s\\n" "$(printf %s "$API_TOKEN" | sha256sum | cut -c1-64)"',
          'echo "pid1-env=$(tr "\\0" "\\n" < /proc/1/environ | grep -c API_TOKEN)"',
          'echo "host=$(hostname)"',
          'echo "$API_TOKEN" > /workspace/left-behind.txt; echo x > /tmp/left; (sleep 600 &) ; echo "printed=$API_TOKEN"',
        ].join('; '),
      ],
    });
    expect(first.error).toBeUndefined();
    const out1 = sb.stdout(first);
    expect(out1).toContain(`digest=${sha(canaryA)}`);
    expect(out1).toContain('pid1-env=0');
    // Printed values are redacted on their way to the destination.
    expect(out1).toContain('printed=[redacted]');
    expect(out1).not.toContain(canaryA);
    const host1 = /host=(\w+)/.exec(out1)?.[1];

    await eventually('the sandbox back in the pool', () => Promise.resolve(Object.entries(sb.service.stats().idle).some(([pool, n]) => pool.startsWith('m2-') && n > 0) ? true : undefined), 10_000);
    sb.setSecrets({ [t]: { OTHER: 'other-value' } });
    const second = await sb.exec(t, 2, {
      secrets: ['OTHER'],
      command: ['sh', '-c', 'echo "host=$(hostname)"; echo "token=${API_TOKEN:-none}"; ls -A /workspace /tmp; ps -o comm | grep -cx sleep; for p in /proc/[0-9]*; do cat $p/environ 2>/dev/null; done | tr "\\0" "\\n" | grep -c API_TOKEN; true'],
    });
    expect(second.error).toBeUndefined();
    const out2 = sb.stdout(second);
    process.stdout.write(`reuse: first in ${host1}, second ${out2.replace(/\n/g, ' | ')}\n`);
    if (second.result?.warm !== true) process.stdout.write(`service log: ${sb.logs().split('\n').filter((l) => /scrub|proven|pool/.test(l)).join('\n')}\n`);
    expect(second.result?.warm).toBe(true);
    expect(/host=(\w+)/.exec(out2)?.[1]).toBe(host1);
    expect(out2).toContain('token=none');
    expect(out2).not.toContain('left-behind');
    expect(out2).not.toMatch(/^left$/m);
    // No `sleep` left from the first run; API_TOKEN in no process's environ.
    expect(out2.trim().split('\n').slice(-2)).toEqual(['0', '0']);
    expect(sb.logs()).not.toContain(canaryA);
  });

  it('egress: a granted host:port is reachable through the tunnel, anything else is refused', async () => {
    const server: Server = createServer((req, res) => res.end(`hello from ${req.url ?? ''}`));
    await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
    const port = (server.address() as AddressInfo).port;
    try {
      sb.setSecrets({ [t]: { API_TOKEN: 'egress-token-value' } });
      const fetcher = (target: string) =>
        `const http = require('node:http'); const u = new URL(process.env.HTTP_PROXY); http.get({ host: u.hostname, port: u.port, path: '${target}' }, (r) => { let b = ''; r.on('data', (d) => b += d); r.on('end', () => console.log(r.statusCode, b.trim())); }).on('error', (e) => console.log('error', e.code));`;
      const granted = await sb.exec(t, 2, { secrets: ['API_TOKEN'], egress: [`127.0.0.1:${port}`], command: ['node', '-e', fetcher(`http://127.0.0.1:${port}/granted`)] });
      expect(sb.stdout(granted).trim()).toBe('200 hello from /granted');
      const other = await sb.exec(t, 2, { secrets: ['API_TOKEN'], egress: [`127.0.0.1:${port}`], command: ['node', '-e', fetcher('http://127.0.0.1:4222/')] });
      expect(sb.stdout(other)).toMatch(/^403 egress denied: egress_denied/);
      expect(sb.logs()).toContain('egress denied');
    } finally {
      server.close();
    }
  });

  it('artifacts: files under out/ are collected with digests; links out of the workspace are refused', async () => {
    const out = await sb.exec(t, 1, {
      command: ['sh', '-c', 'mkdir -p out/sub; echo report > out/sub/report.txt; echo secret-b > /workspace/b.txt; ln -s /etc/passwd out/passwd-link; ln -s ../b.txt out/escape; ln b.txt out/hard 2>/dev/null || true; echo done'],
    });
    expect(out.error).toBeUndefined();
    const r = out.result;
    expect(r?.artifacts.map((a) => a.path)).toEqual(['out/sub/report.txt']);
    expect(r?.artifacts[0]?.sha256).toBe(sha('report\n'));
    expect(r?.refused.map((x) => x.path).sort()).toEqual(['escape', 'passwd-link'].concat(r?.refused.some((x) => x.path === 'hard') ? ['hard'] : []).sort());
    const dir = fileURLToPath(r?.destination ?? '');
    expect(readFileSync(join(dir, 'out/sub/report.txt'), 'utf8')).toBe('report\n');
  });

  it('planted canaries appear in no service log, NATS stream or pooled container inspect', async () => {
    const canaries = Array.from({ length: 5 }, (_, i) => `cnry${i}-${Math.random().toString(36).slice(2, 12)}`);
    sb.setSecrets({ [t]: Object.fromEntries(canaries.map((c, i) => [`KEY_${i}`, c])) });
    const out = await sb.exec(t, 2, { secrets: canaries.map((_, i) => `KEY_${i}`), command: ['sh', '-c', 'env; cat /proc/1/environ; exit 3'] });
    expect(out.error?.code).toBe('sandbox_exit');
    const forms = (c: string) => [c, Buffer.from(c).toString('base64'), Buffer.from(c).toString('hex'), encodeURIComponent(c)];
    const inspected = await Promise.all((await sb.containers()).map((c) => (docker as Docker).getContainer(c.Id).inspect()));
    const haystacks: [string, string][] = [
      ['service log', sb.logs()],
      ['docker inspect', JSON.stringify(inspected)],
      ['error message', JSON.stringify(out)],
      ['stdout.log', sb.stdout(out)],
    ];
    for (const kind of ['runs', 'commands', 'work', 'deadLetters'] as const) {
      const name = Streams[kind](t);
      const jsm = await h.jsm(t);
      const info = await jsm.streams.info(name).catch(() => undefined);
      if (!info) continue;
      let text = '';
      for (let seq = info.state.first_seq; seq <= info.state.last_seq && seq > 0; seq++) {
        const m = await jsm.streams.getMessage(name, { seq }).catch(() => undefined);
        if (m) text += Buffer.from(m.data).toString('latin1');
      }
      haystacks.push([`stream ${name}`, text]);
    }
    const found = canaries.flatMap((c) => forms(c).flatMap((f) => haystacks.filter(([, hay]) => hay.includes(f)).map(([where]) => `${c} in ${where}`)));
    process.stdout.write(`canaries: ${canaries.length} planted, ${haystacks.length} places searched, ${found.length} found\n`);
    expect(found).toEqual([]);
    expect(inspected.length).toBeGreaterThan(0);
  });
});

describe('without a Docker engine', () => {
  it('sandboxed steps fail with sandbox_unavailable and never run', async () => {
    const h = await connect(url);
    const t = await provision(h, 'nodock');
    const service = await createSandboxService(loadConfig({ ...(await serviceEnv(url, Role.Sandbox)), CAPSTAN_TENANTS: t, DOCKER_SOCKET: '/nonexistent/docker.sock', SANDBOX_NODE: 'nodocker' }), silent);
    await service.start();
    await service.ready;
    try {
      const out = await execInSandbox(await h.nc(t), t, {
        runId: makeRunId(Date.now(), crypto.getRandomValues(new Uint8Array(10))),
        workflow: 'w',
        step: 's',
        attempt: 1,
        mode: 1,
        spec: { command: ['sh', '-c', 'echo ran'] },
        timeoutMs: 5000,
        input: {},
      });
      expect(out.result).toBeUndefined();
      expect(out.error?.code).toBe('sandbox_unavailable');
      expect(out.error?.message).toMatch(/Docker engine not reachable/);
      // Malformed requests get a typed, final answer (not a retry loop).
      for (const [payload, code] of [
        [new TextEncoder().encode('{not msgpack or json'), 'decode_failed'],
        [encode({ runId: 'nope', step: 's' }), 'schema_violation'],
      ] as const) {
        const m = await (await h.nc(t)).request(Subjects.sandboxExec(t), payload, { timeout: 5000 });
        const r = parseSandboxReply(decode(m.data));
        expect(r.type === 'done' && r.error?.code).toBe(code);
        expect(r.type === 'done' && r.error?.retryable).toBe(false);
      }
    } finally {
      await service.stop();
    }
    // And with no sandbox service at all.
    const none = await execInSandbox(await h.nc(t), t, {
      runId: makeRunId(Date.now(), crypto.getRandomValues(new Uint8Array(10))),
      workflow: 'w',
      step: 's',
      attempt: 1,
      mode: 1,
      spec: { command: ['true'] },
      timeoutMs: 5000,
      input: {},
    });
    expect(none.error?.code).toBe('sandbox_unavailable');
    await h.close();
  });
});

/**
 * Sandboxed steps against the real Docker engine. Under each runtime (runc, and gVisor's
 * runsc when registered): isolation (network, privileges, the step's uid apart from the
 * runner's), limits, identity and scrub across reuse within one identity scope, canaries.
 * Under the default runtime: egress (resolved and checked on the host, allow-listed,
 * audited first, capped), artifacts, output caps, cancel, and the service's answers when no
 * engine is there. Each test drives the sandbox service as a worker does: one request on
 * NATS, replies with metadata, output read from the attempt's destination.
 */
import { createHash } from 'node:crypto';
import { readFileSync, statSync } from 'node:fs';
import { createServer, type Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import { fileURLToPath } from 'node:url';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, inject, it } from 'vitest';
import type Docker from 'dockerode';
import { Role, Streams, type TenantId } from '@capstan/schemas';
import { connect, eventually, provision, serviceEnv, silent, type Harness } from '../harness/fixtures.js';
import { dockerOrSkip, sandboxRuntimes } from '../harness/docker.js';
import { orchestratorSigner, startSandboxes, withSignedWork, type TestSandboxes } from '../harness/sandbox.js';
import { createSandboxService, Labels, loadConfig } from '@capstan/sandbox';
import { cancelInSandbox, execInSandbox } from '@capstan/kit';
import { decode, encode, makeRunId, parseSandboxReply, Subjects } from '@capstan/schemas';

const url = inject('natsUrl');
const docker = await dockerOrSkip();
const runtimes = docker ? await sandboxRuntimes(docker) : [];
const sha = (s: string) => createHash('sha256').update(s).digest('hex');
const newRunId = () => makeRunId(Date.now(), crypto.getRandomValues(new Uint8Array(10)));

/** Node code run with `node -e` inside the sandbox; prints one JSON line. */
const PROBE = `
const net = require('node:net'), dns = require('node:dns'), fs = require('node:fs'), cp = require('node:child_process');
const tcp = (port, host) => new Promise((res) => { const s = net.connect(port, host); s.setTimeout(2000, () => { s.destroy(); res('timeout'); }); s.on('connect', () => { s.destroy(); res('connected'); }); s.on('error', (e) => res(e.code)); });
const attempt = (f) => { try { const v = f(); return v === undefined ? 'allowed' : v; } catch (e) { return e.code || e.message; } };
const status = fs.readFileSync('/proc/self/status', 'utf8');
const runner = Number(process.env.PROBE_RUNNER || 0);
(async () => {
  const r = {
    tcp4222: await tcp(4222, '127.0.0.1'),
    tcp5432: await tcp(5432, '127.0.0.1'),
    tcpBridge: await tcp(4222, '172.17.0.1'),
    tcpExternal: await tcp(443, '1.1.1.1'),
    dns: await new Promise((res) => dns.lookup('example.com', (e) => res(e ? e.code : 'resolved'))),
    interfaces: attempt(() => fs.readdirSync('/sys/class/net').filter((i) => i !== 'lo').length),
    uid: process.getuid(),
    capEff: /CapEff:\\s+(\\w+)/.exec(status)[1],
    noNewPrivs: (/NoNewPrivs:\\s+(\\d)/.exec(status) || [])[1] || 'not shown',
    writeRoot: attempt(() => fs.writeFileSync('/etc/capstan-probe', 'x')),
    writeUsr: attempt(() => fs.writeFileSync('/usr/bin/capstan-probe', 'x')),
    chown: attempt(() => fs.chownSync('/workspace/input.json', 0, 0)),
    mount: cp.spawnSync('mount', ['-t', 'tmpfs', 'none', '/workspace/out']).status,
    unshare: cp.spawnSync('unshare', ['-r', 'true']).status,
    dockerSocket: fs.existsSync('/var/run/docker.sock'),
    killRunner: attempt(() => process.kill(runner, 'SIGSTOP')),
    killInit: attempt(() => process.kill(1, 'SIGKILL')),
    runnerMem: attempt(() => fs.openSync('/proc/' + runner + '/mem', 'r') && 'opened'),
    runnerOut: attempt(() => fs.openSync('/proc/' + runner + '/fd/1', 'w') && 'opened'),
    mounts: fs.readFileSync('/proc/self/mountinfo', 'utf8').split('\\n').filter(Boolean).map((l) => l.split(' ')[4]),
  };
  console.log(JSON.stringify(r));
})();
`;

/** The tool runner's pid, as a step sees it in /proc (the node process that is not this one). */
const FIND_RUNNER = `for p in /proc/[0-9]*; do c=$(tr "\\0" " " < $p/cmdline 2>/dev/null); case "$c" in *tool-runner.js*) echo \${p#/proc/};; esac; done | head -1`;

for (const runtime of runtimes) {
  describe(`sandboxed steps on Docker (${runtime})`, () => {
    let h: Harness;
    let t: TenantId;
    let sb: TestSandboxes;

    beforeAll(async () => {
      h = await connect(url);
      t = await provision(h, 'sbx');
      // No fresh sandboxes ahead of time and at most one idle per pool key: reuse is then
      // predictable; identities may be reused by their own scope (the test of the scrub).
      sb = await startSandboxes(h, url, docker as Docker, [t], { SANDBOX_RUNTIME: runtime, SANDBOX_POOL_MIN: '0', SANDBOX_POOL_MAX: '1', SANDBOX_IDENTITY_REUSE: 'scope' });
      expect(sb.service.runtime()).toBe(runtime);
    }, 300_000);

    afterAll(async () => {
      await sb?.stop();
      await h?.close();
    });

    it(`${runtime}: a mode-1 step has no network, no privileges, a read-only root, and cannot touch the runner`, async () => {
      const out = await sb.exec(t, 1, { command: ['sh', '-c', `PROBE_RUNNER=$(${FIND_RUNNER}) node -e "$0"`, PROBE] });
      if (out.error) process.stdout.write(`probe failed: ${JSON.stringify(out)}\n`);
      expect(out.error).toBeUndefined();
      const r = JSON.parse(sb.stdout(out).trim()) as Record<string, unknown>;
      process.stdout.write(`isolation probe (${runtime}): ${JSON.stringify(r)}\n`);
      // The container's own loopback has nothing on it but the runner's two local channels; no route leaves the container.
      expect(r['tcp4222']).toBe('ECONNREFUSED');
      expect(r['tcp5432']).toBe('ECONNREFUSED');
      expect(['ENETUNREACH', 'EHOSTUNREACH']).toContain(r['tcpBridge']);
      expect(['ENETUNREACH', 'EHOSTUNREACH']).toContain(r['tcpExternal']);
      expect(r['dns']).not.toBe('resolved');
      expect([0, 'ENOENT']).toContain(r['interfaces']);
      expect(r['uid']).toBe(10001);
      expect(r['capEff']).toBe('0000000000000000');
      if (runtime === 'runc') expect(r['noNewPrivs']).toBe('1');
      expect(['EROFS', 'EACCES']).toContain(r['writeRoot']);
      expect(['EROFS', 'EACCES']).toContain(r['writeUsr']);
      expect(r['chown']).toBe('EPERM');
      expect(r['mount']).not.toBe(0);
      expect(r['unshare']).not.toBe(0);
      expect(r['dockerSocket']).toBe(false);
      // The runner is another uid: no signal, no memory, no writing its channel.
      expect(r['killRunner']).toBe('EPERM');
      expect(r['killInit']).toBe('EPERM');
      expect(r['runnerMem']).toBe('EACCES');
      expect(r['runnerOut']).toBe('EACCES');
      // Nothing from the host but what the engine itself provides (resolv.conf, hostname, hosts).
      const hostPaths = (r['mounts'] as string[]).filter(
        (m) =>
          ![
            '/',
            '/proc',
            '/dev',
            '/dev/pts',
            '/dev/shm',
            '/sys',
            '/dev/mqueue',
            '/workspace',
            '/tmp',
            '/etc/resolv.conf',
            '/etc/hostname',
            '/etc/hosts',
            '/sbin/docker-init',
            '/dev/console',
          ].includes(m) &&
          !m.startsWith('/sys/') &&
          !m.startsWith('/proc/') &&
          !m.startsWith('/dev/'),
      );
      expect(hostPaths).toEqual([]);
    });

    it(`${runtime}: a fork bomb, a memory hog and a workspace filler are stopped by the limits; the host keeps answering`, async () => {
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
        process.stdout.write(
          `limits (${runtime}): bomb=${bomb.error?.code} hog=${hog.error?.code}/${hog.result?.signal ?? hog.result?.exitCode} filler=${sb.stdout(filler).trim()}\n`,
        );
        // The pids limit makes the shell's own fork fail (it exits non-zero), the step's
        // timeout ends it, or (gVisor) the sandbox is killed whole at its memory limit and
        // the attempt is lost: each is the limit holding.
        expect(['step_timeout', 'sandbox_exit', 'sandbox_lost']).toContain(bomb.error?.code);
        expect(['sandbox_exit', 'sandbox_lost']).toContain(hog.error?.code);
        expect(hog.result?.exitCode ?? -1).not.toBe(0);
        // The workspace is a 64 MiB tmpfs: dd stops there with ENOSPC.
        expect(sb.stdout(filler)).toMatch(/exit=1/);
      } finally {
        clearInterval(probe);
      }
      process.stdout.write(`nats round trip (${runtime}): ${before.toFixed(1)} ms before, worst ${worst.toFixed(1)} ms during\n`);
      expect(worst).toBeLessThan(1000);
      // And the service still serves.
      const after = await sb.exec(t, 1, { command: ['echo', 'still here'] });
      expect(sb.stdout(after)).toBe('still here\n');
    });

    it(`${runtime}: a mode-2 step sees only its own identity; the next step of its identity scope in the same sandbox sees none of it`, async () => {
      // One idle sandbox per key, reused by the same identity scope (workflow, step, key names).
      const canaryA = `canary-A-${Math.random().toString(36).slice(2)}`;
      sb.setSecrets({ [t]: { API_TOKEN: canaryA } });
      const first = await sb.exec(t, 2, {
        secrets: ['API_TOKEN'],
        command: [
          'sh',
          '-c',
          [
            'printf "digest=%s\\n" "$(printf %s "$API_TOKEN" | sha256sum | cut -c1-64)"',
            'echo "pid1-env=$(tr "\\0" "\\n" < /proc/1/environ 2>/dev/null | grep -c API_TOKEN)"',
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

      await eventually(
        'the sandbox back in its pool',
        () => Promise.resolve(Object.entries(sb.service.stats().idle).some(([pool, n]) => pool.startsWith(`${t}/m2/`) && n > 0) ? true : undefined),
        10_000,
      );
      // Rotated since: a new value under the same name.
      sb.setSecrets({ [t]: { API_TOKEN: 'rotated-value' } });
      const second = await sb.exec(t, 2, {
        secrets: ['API_TOKEN'],
        command: [
          'sh',
          '-c',
          'echo "host=$(hostname)"; echo "token=${API_TOKEN}"; ls -A /workspace /tmp; ps -o comm | grep -cx sleep; for p in /proc/[0-9]*; do cat $p/environ 2>/dev/null; done | tr "\\0" "\\n" | grep -c "canary-A"; true',
        ],
      });
      expect(second.error).toBeUndefined();
      const out2 = sb.stdout(second);
      process.stdout.write(`reuse (${runtime}): first in ${host1}, second ${out2.replace(/\n/g, ' | ')}\n`);
      if (second.result?.warm !== true)
        process.stdout.write(
          `service log: ${sb
            .logs()
            .split('\n')
            .filter((l) => /scrub|proven|pool/.test(l))
            .join('\n')}\n`,
        );
      expect(second.result?.warm).toBe(true);
      expect(/host=(\w+)/.exec(out2)?.[1]).toBe(host1);
      expect(out2).toContain('token=[redacted]');
      expect(out2).not.toContain('left-behind');
      expect(out2).not.toMatch(/^left$/m);
      // No `sleep` left from the first step; the first value in no process's environ.
      expect(out2.trim().split('\n').slice(-2)).toEqual(['0', '0']);
      expect(sb.logs()).not.toContain(canaryA);

      // Another identity scope (another key name) never gets that sandbox.
      sb.setSecrets({ [t]: { OTHER: 'other-value' } });
      const third = await sb.exec(t, 2, { secrets: ['OTHER'], command: ['sh', '-c', 'echo "host=$(hostname)"'] });
      expect(/host=(\w+)/.exec(sb.stdout(third))?.[1]).not.toBe(host1);
    });

    it(`${runtime}: planted canaries appear in no service log, NATS stream, pooled container inspect or result`, async () => {
      const canaries = Array.from({ length: 5 }, (_, i) => `cnry${i}-${Math.random().toString(36).slice(2, 12)}`);
      sb.setSecrets({ [t]: Object.fromEntries(canaries.map((c, i) => [`KEY_${i}`, c])) });
      // The step prints them, names an artifact after one, fails with them on stderr.
      const out = await sb.exec(t, 2, {
        secrets: canaries.map((_, i) => `KEY_${i}`),
        command: ['sh', '-c', 'env; cat /proc/1/environ; mkdir -p out; echo x > "out/$KEY_0.txt"; echo "$KEY_1" >&2; exit 3'],
      });
      expect(out.error?.code).toBe('sandbox_exit');
      const forms = (c: string) => [c, Buffer.from(c).toString('base64'), Buffer.from(c).toString('hex'), encodeURIComponent(c)];
      const inspected = await Promise.all((await sb.containers()).map((c) => (docker as Docker).getContainer(c.Id).inspect()));
      const haystacks: [string, string][] = [
        ['service log', sb.logs()],
        ['docker inspect', JSON.stringify(inspected)],
        ['result and error', JSON.stringify(out)],
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
      process.stdout.write(`canaries (${runtime}): ${canaries.length} planted, ${haystacks.length} places searched, ${found.length} found\n`);
      expect(found).toEqual([]);
      // The artifact named after a canary is in the result under a redacted name.
      expect(out.result?.artifacts.map((a) => a.path)).toEqual(['out/[redacted].txt']);
    });
  });
}

describe.skipIf(!docker)('sandboxed steps: egress, artifacts, output caps, cancel', () => {
  let h: Harness;
  let t: TenantId;
  let other: TenantId;
  let sb: TestSandboxes;
  let noAudit: TestSandboxes;
  let unauditedTenant: TenantId;
  let home: Server;
  let homePort = 0;
  const homeSeen: { path: string; auditRows: number }[] = [];

  beforeAll(async () => {
    h = await connect(url);
    t = await provision(h, 'sbxe');
    other = await provision(h, 'sbxo');
    // An HTTP server on this host's loopback: "home" for a step that wants to reach it.
    // Each request records how many audit rows its run had when it arrived.
    home = createServer((req, res) => {
      const runId = String(req.headers['x-run'] ?? '');
      void sb
        .auditRows(t, runId)
        .then((rows) => homeSeen.push({ path: req.url ?? '', auditRows: rows.filter((r) => r.kind === 'egress.connect').length }))
        .finally(() => {
          if (req.url === '/big') {
            res.setHeader('content-type', 'application/octet-stream');
            res.end(Buffer.alloc(3 * 1024 * 1024, 7));
          } else res.end(`hello from ${req.url ?? ''}`);
        });
    });
    await new Promise<void>((r) => home.listen(0, '127.0.0.1', r));
    homePort = (home.address() as AddressInfo).port;
    sb = await startSandboxes(
      h,
      url,
      docker as Docker,
      [t, other],
      { SANDBOX_EGRESS_ALLOW: '127.0.0.1/32', SANDBOX_EGRESS_MAX_MB: '1', SANDBOX_MAX_OUTPUT_MB: '1' },
      { audit: true },
    );
    unauditedTenant = await provision(h, 'sbxn');
    noAudit = await startSandboxes(h, url, docker as Docker, [unauditedTenant], { SANDBOX_EGRESS_ALLOW: '127.0.0.1/32', SANDBOX_POOL_MIN: '0', SANDBOX_CONCURRENCY: '1' });
  }, 300_000);

  afterAll(async () => {
    home?.close();
    await sb?.stop();
    await noAudit?.stop();
    await h?.close();
  });

  const fetcher = (target: string, runId: string) =>
    `const http = require('node:http'); const u = new URL(process.env.HTTP_PROXY); http.get({ host: u.hostname, port: u.port, path: '${target}', headers: { 'x-run': '${runId}' } }, (r) => { let n = 0, b = ''; r.on('data', (d) => { n += d.length; if (b.length < 200) b += d; }); r.on('end', () => console.log(r.statusCode, n > 1000 ? 'bytes=' + n : b.trim())); r.on('error', (e) => console.log('cut', n)); r.on('aborted', () => console.log('cut', n)); }).on('error', (e) => console.log('error', e.code));`;

  it('egress: an allow-listed host:port in the grant is reached through the tunnel, with its audit row written first', async () => {
    sb.setSecrets({ [t]: { API_TOKEN: 'egress-token-value' } });
    const runId = newRunId();
    const granted = await sb.exec(
      t,
      2,
      { secrets: ['API_TOKEN'], egress: [`127.0.0.1:${homePort}`], command: ['node', '-e', fetcher(`http://127.0.0.1:${homePort}/granted`, runId)] },
      { runId },
    );
    expect(sb.stdout(granted).trim()).toBe('200 hello from /granted');
    const rows = await sb.auditRows(t, runId);
    const connect = rows.filter((r) => r.kind === 'egress.connect');
    expect(connect).toHaveLength(1);
    expect(connect[0]?.detail).toMatchObject({ target: `127.0.0.1:${homePort}`, address: '127.0.0.1', step: 'probe', attempt: 1 });
    // The row was there when the connection reached the server.
    expect(homeSeen.find((s) => s.path === '/granted')?.auditRows).toBe(1);
  });

  it('egress: outside the grant is refused; without an audit store nothing is opened; the byte cap cuts the tunnel', async () => {
    const before = homeSeen.length;
    const runId = newRunId();
    const outside = await sb.exec(
      t,
      2,
      { secrets: ['API_TOKEN'], egress: [`127.0.0.1:${homePort}`], command: ['node', '-e', fetcher('http://127.0.0.1:4222/', runId)] },
      { runId },
    );
    expect(sb.stdout(outside)).toMatch(/^403 egress denied: egress_denied/);
    expect((await sb.auditRows(t, runId)).map((r) => r.kind)).toEqual(['egress.denied']);

    noAudit.setSecrets({ [unauditedTenant]: { API_TOKEN: 'x-value' } });
    const unaudited = await noAudit.exec(unauditedTenant, 2, {
      secrets: ['API_TOKEN'],
      egress: [`127.0.0.1:${homePort}`],
      command: ['node', '-e', fetcher(`http://127.0.0.1:${homePort}/unaudited`, 'x')],
    });
    expect(noAudit.stdout(unaudited)).toMatch(/^403 egress denied: audit_unavailable/);
    expect(homeSeen.slice(before).map((s) => s.path)).toEqual([]);

    const capped = await sb.exec(t, 2, { secrets: ['API_TOKEN'], egress: [`127.0.0.1:${homePort}`], command: ['node', '-e', fetcher(`http://127.0.0.1:${homePort}/big`, 'cap')] });
    const said = sb.stdout(capped).trim();
    process.stdout.write(`egress byte cap: a 3 MiB answer through a 1 MiB cap: ${said}\n`);
    const got = Number(/(\d+)$/.exec(said)?.[1] ?? 0);
    expect(said).not.toMatch(/bytes=3145728/);
    expect(got).toBeLessThanOrEqual(1024 * 1024 + 64 * 1024);
    expect(sb.logs()).toContain('egress byte cap reached');
  });

  it('artifacts: files under out/ are collected with digests; links out of the workspace are refused', async () => {
    const out = await sb.exec(t, 1, {
      command: [
        'sh',
        '-c',
        'mkdir -p out/sub; echo report > out/sub/report.txt; echo secret-b > /workspace/b.txt; ln -s /etc/passwd out/passwd-link; ln -s ../b.txt out/escape; ln b.txt out/hard 2>/dev/null || true; echo done',
      ],
    });
    expect(out.result?.artifacts.map((a) => a.path)).toEqual(['out/sub/report.txt']);
    const r = out.result;
    expect(r?.artifacts[0]?.sha256).toBe(sha('report\n'));
    expect(r?.refused.map((x) => x.path).sort()).toEqual(['escape', 'passwd-link'].concat(r?.refused.some((x) => x.path === 'hard') ? ['hard'] : []).sort());
    const dir = fileURLToPath(r?.destination ?? '');
    expect(readFileSync(join(dir, 'out/sub/report.txt'), 'utf8')).toBe('report\n');
  });

  it('a step that writes past the output cap is killed there; the destination holds at most the cap', async () => {
    const out = await sb.exec(t, 1, { command: ['sh', '-c', 'while true; do echo 0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef; done'] }, { timeoutMs: 30_000 });
    expect(out.error?.code).toBe('sandbox_output_limit');
    expect(out.error?.retryable).toBe(false);
    const written = statSync(join(fileURLToPath(out.result?.destination ?? ''), 'stdout.log')).size;
    process.stdout.write(`output cap: ${out.result?.stdoutBytes} bytes read, ${written} written, in ${out.result?.durationMs} ms\n`);
    expect(written).toBeLessThanOrEqual(1024 * 1024);
    expect(out.result?.timedOut).toBe(false);
  });

  it('cancel reaches a running sandbox: killed within 2 s, the exec answers cancelled, and another tenant cannot cancel it', async () => {
    const runId = newRunId();
    let accepted!: () => void;
    const started = new Promise<void>((r) => (accepted = r));
    const running = sb.exec(t, 1, { command: ['sh', '-c', 'echo started; sleep 120'] }, { runId, step: 'long', timeoutMs: 150_000, call: { onAccepted: () => accepted() } });
    await started;
    // Give the command time to start, then a foreign tenant tries first.
    await new Promise((r) => setTimeout(r, 300));
    const foreign = await cancelInSandbox(await h.nc(other), other, { runId, step: 'long', attempt: 1 }, { timeoutMs: 5000 });
    expect(foreign.cancelled).toBe(false);
    const t0 = performance.now();
    const reply = await cancelInSandbox(await h.nc(t), t, { runId, step: 'long', attempt: 1 }, { timeoutMs: 5000 });
    const out = await running;
    const ms = performance.now() - t0;
    process.stdout.write(`cancel: reply ${JSON.stringify(reply)}, exec done after ${ms.toFixed(0)} ms: ${JSON.stringify(out.error)}\n`);
    expect(reply).toMatchObject({ cancelled: true, sandbox: `cap-${runId}-long-1` });
    expect(reply.killMs).toBeLessThan(2000);
    expect(ms).toBeLessThan(2000);
    expect(out.error?.code).toBe('cancelled');
    expect(out.error?.retryable).toBe(false);
    const gone = await (docker as Docker)
      .getContainer(`cap-${runId}-long-1`)
      .inspect()
      .then(
        () => false,
        (e: { statusCode?: number }) => e.statusCode === 404,
      );
    expect(gone).toBe(true);
    // With one slot busy, a queued attempt is cancelled before it reaches a sandbox; a cancel
    // that overtakes its exec request is remembered.
    const cancel = async (tn: TenantId, runId: string, step: string) => cancelInSandbox(await h.nc(tn), tn, { runId, step, attempt: 1 }, { timeoutMs: 5000 });
    const busyRun = newRunId();
    let busyAccepted!: () => void;
    const busyStarted = new Promise<void>((r) => (busyAccepted = r));
    const busy = noAudit.exec(unauditedTenant, 1, { command: ['sleep', '60'] }, { runId: busyRun, step: 'busy', timeoutMs: 90_000, call: { onAccepted: () => busyAccepted() } });
    await busyStarted;
    const queuedRun = newRunId();
    const queued = noAudit.exec(unauditedTenant, 1, { command: ['echo', 'never'] }, { runId: queuedRun, step: 'queued' });
    await eventually('the second attempt queued', () => Promise.resolve(noAudit.service.stats().waiting > 0 ? true : undefined), 5000, 20);
    expect(await cancel(unauditedTenant, queuedRun, 'queued')).toMatchObject({ cancelled: true });
    expect((await queued).error?.code).toBe('cancelled');
    const earlyRun = newRunId();
    expect(await cancel(unauditedTenant, earlyRun, 'early')).toMatchObject({ cancelled: false });
    expect((await noAudit.exec(unauditedTenant, 1, { command: ['echo', 'never'] }, { runId: earlyRun, step: 'early' })).error?.code).toBe('cancelled');
    expect(await cancel(unauditedTenant, busyRun, 'busy')).toMatchObject({ cancelled: true });
    expect((await busy).error?.code).toBe('cancelled');
    // A malformed cancel is refused with its typed error (kit's request/reply convention).
    const bad = await cancelInSandbox(await h.nc(t), t, { runId: 'nope' } as never, { timeoutMs: 5000 }).then(
      () => 'answered',
      (e: unknown) => (e as { code?: string }).code,
    );
    expect(bad).toBe('schema_violation');
  });
});

describe.skipIf(!docker)('reaping', () => {
  it("a service removes the sandboxes of its node whose instance is gone, and leaves a live instance's alone", async () => {
    const d = docker as Docker;
    const h = await connect(url);
    const t = await provision(h, 'reap');
    const first = await startSandboxes(h, url, d, [t], { SANDBOX_POOL_MIN: '1' });
    try {
      await eventually('a fresh sandbox of the first instance', () => Promise.resolve(first.service.stats().fresh > 0 ? true : undefined), 60_000);
      const mine = (await first.containers()).map((c) => c.Id);
      // A sandbox left by an instance that died (its owner process is gone), on the same node.
      const image = first.service.image() ?? '';
      const orphan = await d.createContainer({
        name: `cap-pool-${first.node}-dead-orphan`,
        Image: image,
        Labels: {
          [Labels.Sandbox]: '1',
          [Labels.Node]: first.node,
          [Labels.Instance]: 'deadbeef',
          [Labels.Owner]: `${readFileSync('/proc/sys/kernel/random/boot_id', 'utf8').trim()}/4194300/1`,
        },
        HostConfig: { NetworkMode: 'none' },
      });
      // A second, live service given the same node name by mistake.
      const second = await startSandboxes(h, url, d, [t], { SANDBOX_NODE: first.node, SANDBOX_POOL_MIN: '0' });
      try {
        const orphanGone = await orphan.inspect().then(
          () => false,
          (e: { statusCode?: number }) => e.statusCode === 404,
        );
        const survivors = await Promise.all(
          mine.map((id) =>
            d
              .getContainer(id)
              .inspect()
              .then(
                () => true,
                () => false,
              ),
          ),
        );
        process.stdout.write(`reaping: orphan removed ${orphanGone}, live instance's sandboxes kept ${survivors.filter(Boolean).length}/${mine.length}\n`);
        expect(orphanGone).toBe(true);
        expect(survivors.every(Boolean)).toBe(true);
        expect(second.logs()).toContain('another live sandbox service uses this SANDBOX_NODE');
        // The first instance still serves.
        expect(first.stdout(await first.exec(t, 1, { command: ['echo', 'alive'] }))).toBe('alive\n');
      } finally {
        await second.stop();
      }
    } finally {
      await first.stop();
      await h.close();
    }
  });
});

describe('without a Docker engine', () => {
  it('sandboxed steps fail with sandbox_unavailable and never run', async () => {
    const h = await connect(url);
    const t = await provision(h, 'nodock');
    const service = await createSandboxService(
      loadConfig({ ...(await serviceEnv(url, Role.Sandbox)), CAPSTAN_TENANTS: t, DOCKER_SOCKET: '/nonexistent/docker.sock', SANDBOX_NODE: 'nodocker' }),
      silent,
    );
    await service.start();
    await service.ready;
    try {
      const out = await execInSandbox(
        await h.nc(t),
        t,
        withSignedWork(await orchestratorSigner(url, t), t, {
          runId: newRunId(),
          workflow: 'w',
          step: 's',
          attempt: 1,
          mode: 1,
          spec: { command: ['sh', '-c', 'echo ran'] },
          timeoutMs: 5000,
          input: {},
        }),
      );
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
      runId: newRunId(),
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

/**
 * Hostile steps, under each runtime (runc, and gVisor's runsc when registered). Tenant A's
 * steps attack the sandbox they run in: they try to kill, stop, read or replace the tool
 * runner, forge its scrub proof, leave processes and files behind, exhaust processes,
 * memory and disk, read another tenant's running sandbox, and reach the host through
 * egress (its loopback, a private address, the Docker API, the metadata address, a name
 * that resolves to the loopback, a name that rebinds to it). After each, tenant B runs a
 * probe that looks for anything A left or held.
 *
 * Witnesses outside the sandboxes: the engine's event stream (which container served which
 * run, so which tenant), `docker inspect` (the hostile sandbox is gone), a server on this
 * host's loopback (counts every connection that reached "home"), the audit log. Counts are
 * printed; every breach count must be zero.
 */
import { createServer as createTcpServer, type Server } from 'node:net';
import { afterAll, beforeAll, describe, expect, inject, it } from 'vitest';
import type Docker from 'dockerode';
import { Labels } from '@capstan/sandbox';
import { makeRunId, type RunId, type TenantId } from '@capstan/schemas';
import { connect, eventually, provision, type Harness } from '../harness/fixtures.js';
import { dockerOrSkip, sandboxRuntimes } from '../harness/docker.js';
import { startSandboxes, type TestSandboxes } from '../harness/sandbox.js';
import { startDns, type TestDns } from '../harness/dns.js';

const url = inject('natsUrl');
const docker = await dockerOrSkip();
const runtimes = docker ? await sandboxRuntimes(docker) : [];
const newRunId = () => makeRunId(Date.now(), crypto.getRandomValues(new Uint8Array(10)));

/** The runner's pid as a step finds it in /proc. */
const RUNNER = `R=$(for p in /proc/[0-9]*; do c=$(tr "\\0" " " < $p/cmdline 2>/dev/null); case "$c" in *tool-runner.js*) echo \${p#/proc/};; esac; done | head -1)`;
/** Prints `name=<what happened>` per try; `denied` when the attempt failed. */
const TRY = (name: string, cmd: string) => `if ( ${cmd} ) >/dev/null 2>&1; then echo "${name}=done"; else echo "${name}=denied"; fi`;

/** What B's probe prints: everything a trace of A could be in. */
const PROBE = `
const fs = require('node:fs');
const ls = (d) => { try { return fs.readdirSync(d); } catch { return []; } };
const pids = ls('/proc').filter((n) => /^\\d+$/.test(n));
const read = (f) => { try { return fs.readFileSync(f, 'latin1'); } catch { return ''; } };
console.log(JSON.stringify({
  host: require('node:os').hostname(),
  workspace: ls('/workspace'), tmp: ls('/tmp'), shm: ls('/dev/shm'), mqueue: ls('/dev/mqueue'),
  procs: pids.map((p) => read('/proc/' + p + '/cmdline').split('\\0').join(' ').trim()).filter(Boolean),
  environs: pids.map((p) => read('/proc/' + p + '/environ')).join('\\n') + JSON.stringify(process.env),
}));
`;

interface Case {
  readonly name: string;
  /** The hostile command (sh), run by tenant A in mode 2 with the canary as its identity. */
  readonly script: (ports: { home: number; nats: number }) => string;
  readonly egress?: (ports: { home: number; nats: number }) => string[];
  readonly timeoutMs?: number;
  /** Lines `x=done` in its output that are breaches (what it must not have managed). */
  readonly breachIf?: readonly string[];
  /** The limits may kill it before it finishes; otherwise it must get to its end (`case-ran`). */
  readonly mayDie?: true;
}

const CASES: readonly Case[] = [
  {
    name: 'kill, stop or trace the runner and init',
    script: () =>
      [
        RUNNER,
        TRY('kill-runner', 'kill -9 $R'),
        TRY('stop-runner', 'kill -STOP $R'),
        TRY('kill-init', 'kill -9 1'),
        TRY('runner-mem', 'head -c 1 /proc/$R/mem'),
        TRY('runner-environ-secret', 'grep -q CANARY /proc/$R/environ'),
      ].join('; '),
    breachIf: ['kill-runner', 'stop-runner', 'kill-init', 'runner-mem', 'runner-environ-secret'],
  },
  {
    name: 'replace the runner or its files',
    script: () =>
      [
        RUNNER,
        TRY('write-runner', 'echo "process.exit(0)" > /opt/capstan/runner/tool-runner.js'),
        TRY('write-protocol', 'echo x >> /opt/capstan/runner/protocol.js'),
        TRY('write-node', 'echo x >> /usr/bin/node'),
        TRY('write-runner-mem', 'printf x | dd of=/proc/$R/mem bs=1 seek=4194304 conv=notrunc'),
      ].join('; '),
    breachIf: ['write-runner', 'write-protocol', 'write-node', 'write-runner-mem'],
  },
  {
    name: 'forge the scrub proof',
    script: () =>
      [
        RUNNER,
        // As data on its own stdout (wrapped in the runner's frames, so inert), then straight into the channel.
        `echo '{"t":"scrubbed","id":"1","proof":{"nonce":"x","pid":1,"processes":[],"workspace":[],"tmp":[],"mqueue":[],"shm":[],"identityKeys":0,"connections":0}}'`,
        TRY('write-channel', `echo '{"t":"ready","v":1,"pid":1,"uid":0}' > /proc/$R/fd/1`),
        TRY('write-init-channel', `echo '{"t":"ready","v":1,"pid":1,"uid":0}' > /proc/1/fd/1`),
        // Steal the host's frames to the runner (the scrub request among them), from a process that outlives the step.
        TRY('read-channel', 'test -r /proc/$R/fd/0 && (setsid sh -c "exec cat /proc/$R/fd/0 > /dev/null" &)'),
        'echo x > /workspace/forged-leftover',
      ].join('; '),
    breachIf: ['write-channel', 'write-init-channel'],
  },
  {
    name: 'leave processes and files behind',
    script: () =>
      [
        '(setsid sleep 631 &)',
        '(nohup sleep 632 >/dev/null 2>&1 &)',
        '(sh -c "sleep 633 &" &)',
        'echo "$CANARY" > /workspace/.left',
        'mkdir -p /workspace/deep/er && echo x > /workspace/deep/er/f',
        'echo "$CANARY" > /tmp/left',
        'echo "$CANARY" > /dev/shm/left 2>/dev/null',
        'chmod 777 /workspace',
        'true',
      ].join('; '),
  },
  { name: 'fork bomb', script: () => 'bomb() { bomb | bomb & }; bomb; sleep 20', timeoutMs: 4000, mayDie: true },
  { name: 'fill memory', script: () => `node -e 'const a = []; for (;;) a.push(Buffer.alloc(64 << 20, 1));'`, timeoutMs: 20_000, mayDie: true },
  {
    name: 'fill the disk',
    script: () =>
      'dd if=/dev/zero of=/workspace/fill bs=1M count=1024 2>/dev/null; dd if=/dev/zero of=/tmp/fill bs=1M count=1024 2>/dev/null; dd if=/dev/zero of=/dev/shm/fill bs=1M count=1024 2>/dev/null; true',
    timeoutMs: 20_000,
  },
  {
    name: 'reach the host directly (loopback, bridge, Docker API)',
    script: ({ nats }) =>
      [
        TRY('tcp-nats', `nc -w 2 127.0.0.1 ${nats} </dev/null`),
        TRY('tcp-postgres', 'nc -w 2 127.0.0.1 5432 </dev/null'),
        TRY('tcp-bridge', 'nc -w 2 172.17.0.1 2375 </dev/null'),
        TRY('docker-socket', 'test -e /var/run/docker.sock || test -e /run/docker.sock'),
      ].join('; '),
    breachIf: ['tcp-nats', 'tcp-postgres', 'tcp-bridge', 'docker-socket'],
  },
  {
    name: 'egress to the loopback, a private address, the Docker API and the metadata address',
    egress: ({ home, nats }) => [`127.0.0.1:${home}`, `127.0.0.1:${nats}`, '10.0.0.1:80', '172.17.0.1:2375', '169.254.169.254:80', `localhost:${home}`],
    script: ({ home, nats }) =>
      [`127.0.0.1:${home}`, `127.0.0.1:${nats}`, '10.0.0.1:80', '172.17.0.1:2375', '169.254.169.254:80', `localhost:${home}`]
        .map((t, i) => TRY(`egress-${i}`, `printf 'CONNECT ${t} HTTP/1.1\\r\\n\\r\\n' | nc -w 3 127.0.0.1 3128 | grep -q ' 200 '`))
        .join('; '),
    breachIf: ['egress-0', 'egress-1', 'egress-2', 'egress-3', 'egress-4', 'egress-5'],
  },
  {
    name: 'a name that resolves to the loopback, and one that rebinds to it',
    egress: ({ home }) => [`loop.capstan.test:${home}`, `rebind.capstan.test:${home}`],
    script: ({ home }) =>
      [`loop.capstan.test:${home}`, `rebind.capstan.test:${home}`, `rebind.capstan.test:${home}`, `rebind.capstan.test:${home}`]
        .map((t, i) => TRY(`dns-${i}`, `printf 'CONNECT ${t} HTTP/1.1\\r\\n\\r\\n' | nc -w 3 127.0.0.1 3128 | grep -q ' 200 '`))
        .join('; '),
    // Reaching the public first answer of `rebind` is allowed; reaching home is what counts (below).
    breachIf: ['dns-0', 'dns-2', 'dns-3'],
  },
];

for (const runtime of runtimes) {
  describe(`hostile steps (${runtime})`, () => {
    let h: Harness;
    let a: TenantId;
    let b: TenantId;
    let sb: TestSandboxes;
    let dns: TestDns;
    let home: Server;
    let homeConnections = 0;
    const ports = { home: 0, nats: Number(new URL(url).port) };
    const tenantOfRun = new Map<string, TenantId>();
    /** Container id → the runs it served (the engine's record of creates and renames). */
    const served = new Map<string, Set<string>>();
    let events: NodeJS.ReadableStream | undefined;
    const canaryA = `hostile-canary-${Math.random().toString(36).slice(2, 12)}`;
    const canaryB = `probe-canary-${Math.random().toString(36).slice(2, 12)}`;

    beforeAll(async () => {
      h = await connect(url);
      a = await provision(h, 'hosta');
      b = await provision(h, 'hostb');
      home = createTcpServer((s) => {
        homeConnections++;
        s.destroy();
      });
      await new Promise<void>((r) => home.listen(0, '127.0.0.1', r));
      ports.home = (home.address() as { port: number }).port;
      // `rebind` answers a public address first and the loopback after; `loop` the loopback.
      dns = await startDns((name, n) => (name === 'loop.capstan.test' ? '127.0.0.1' : name === 'rebind.capstan.test' ? (n === 1 ? '93.184.215.14' : '127.0.0.1') : undefined));
      sb = await startSandboxes(
        h,
        url,
        docker as Docker,
        [a, b],
        { SANDBOX_RUNTIME: runtime, SANDBOX_POOL_MIN: '2', SANDBOX_POOL_MAX: '2', SANDBOX_EGRESS_DNS: `127.0.0.1:${dns.port}`, SANDBOX_EGRESS_CONNECT_MS: '1500' },
        { audit: true },
      );
      sb.setSecrets({ [a]: { CANARY: canaryA }, [b]: { CANARY: canaryB } });
      events = (await (docker as Docker).getEvents({ filters: { type: ['container'], label: [`${Labels.Node}=${sb.node}`] } })) as NodeJS.ReadableStream;
      let buffered = '';
      events.on('data', (chunk: Buffer) => {
        buffered += chunk.toString();
        for (let nl = buffered.indexOf('\n'); nl >= 0; nl = buffered.indexOf('\n')) {
          const e = JSON.parse(buffered.slice(0, nl)) as { Action: string; id: string; Actor: { Attributes: Record<string, string> } };
          buffered = buffered.slice(nl + 1);
          const m = /^cap-([0-9A-Z]{26})-/.exec(e.Actor.Attributes['name'] ?? '');
          if ((e.Action === 'create' || e.Action === 'rename') && m?.[1]) served.set(e.id, (served.get(e.id) ?? new Set()).add(m[1]));
        }
      });
    }, 300_000);

    afterAll(async () => {
      (events as unknown as { destroy?: () => void } | undefined)?.destroy?.();
      await sb?.stop();
      await dns?.close();
      home?.close();
      await h?.close();
    });

    /** Runs one step for `t` as run `runId`, remembering whose run it is. */
    const step = (t: TenantId, mode: 1 | 2, command: string | string[], o: { egress?: string[]; timeoutMs?: number; runId?: RunId } = {}) => {
      const runId = o.runId ?? newRunId();
      tenantOfRun.set(runId, t);
      return sb
        .exec(
          t,
          mode,
          { command: typeof command === 'string' ? ['sh', '-c', command] : command, ...(mode === 2 ? { secrets: ['CANARY'] } : {}), ...(o.egress ? { egress: o.egress } : {}) },
          { runId, timeoutMs: o.timeoutMs ?? 20_000 },
        )
        .then((out) => ({ out, runId }));
    };
    const containerOf = (runId: string) => [...served].find(([, runs]) => runs.has(runId))?.[0];
    /** The container a finished step ran in, once the engine's event about it has arrived. */
    const containerFor = (runId: string) => eventually(`the container of run ${runId}`, () => Promise.resolve(containerOf(runId)), 10_000);
    const probeArgv = ['node', '-e', PROBE];

    it(`${runtime}: every attack fails or stays in its own sandbox; the next tenant sees nothing; no sandbox serves two tenants`, async () => {
      const tally = { cases: 0, attempts: 0, breaches: [] as string[], destroyed: 0, probes: 0, contained: [] as string[] };
      for (const c of CASES) {
        tally.cases++;
        const { out, runId } = await step(a, 2, `${c.script(ports)}; echo case-ran`, {
          ...(c.egress ? { egress: c.egress(ports) } : {}),
          ...(c.timeoutMs ? { timeoutMs: c.timeoutMs } : {}),
        });
        const said = sb.stdout(out);
        const tries = [...said.matchAll(/^([a-z0-9-]+)=(done|denied)$/gm)];
        tally.attempts += Math.max(1, tries.length);
        for (const [, what, how] of tries) {
          if (how !== 'done') continue;
          if (c.breachIf?.includes(what ?? '')) tally.breaches.push(`${c.name}: ${what ?? ''}`);
          else tally.contained.push(what ?? '');
        }
        if (said.includes(canaryA)) tally.breaches.push(`${c.name}: the identity reached the destination unredacted`);
        // A case that never got to its end proved nothing.
        if (!c.mayDie) expect(said, `${c.name}: ${JSON.stringify(out.error)}`).toContain('case-ran');
        // The hostile sandbox is destroyed (its identity was never to be handed on).
        const id = await containerFor(runId);
        const gone = await eventually(
          `"${c.name}" destroyed`,
          () =>
            (docker as Docker)
              .getContainer(id)
              .inspect()
              .then(
                () => undefined,
                (e: { statusCode?: number }) => (e.statusCode === 404 ? true : undefined),
              ),
          15_000,
        ).catch(() => false);
        if (gone) tally.destroyed++;
        else tally.breaches.push(`${c.name}: its sandbox was not destroyed`);

        // Tenant B, in both modes: nothing of A anywhere it can look.
        for (const mode of [1, 2] as const) {
          const probe = await step(b, mode, probeArgv);
          tally.probes++;
          if (probe.out.error) {
            tally.breaches.push(`${c.name}: B's mode-${mode} probe failed (${probe.out.error.code}: ${probe.out.error.message})`);
            continue;
          }
          const text = sb.stdout(probe.out);
          const seen = JSON.parse(text.trim()) as { workspace: string[]; tmp: string[]; shm: string[]; mqueue: string[]; procs: string[]; environs: string };
          if (text.includes(canaryA)) tally.breaches.push(`${c.name}: A's identity seen by B (mode ${mode})`);
          const extra = seen.workspace.filter((f) => !['input.json', 'out'].includes(f));
          if (extra.length + seen.tmp.length + seen.shm.length + seen.mqueue.length > 0)
            tally.breaches.push(`${c.name}: B (mode ${mode}) found files: ${JSON.stringify([extra, seen.tmp, seen.shm, seen.mqueue])}`);
          const foreign = seen.procs.filter((p) => /sleep|cat \/proc|bomb/.test(p));
          if (foreign.length > 0) tally.breaches.push(`${c.name}: B (mode ${mode}) sees processes ${JSON.stringify(foreign)}`);
          if ((await containerFor(probe.runId)) === id) tally.breaches.push(`${c.name}: B ran in A's sandbox`);
        }
      }

      // Mode 1 (no identity, so a clean scrub returns the sandbox to its tenant's pool): A
      // leaves a mess and forges at its proof, exiting 0. A's next mode-1 step (which may get
      // the same sandbox) sees nothing of it; B never gets it.
      let reusedByA = 0;
      const mode1Outcomes: string[] = [];
      for (const name of ['forge the scrub proof', 'leave processes and files behind']) {
        const dirty = await step(a, 1, `${CASES.find((c) => c.name === name)?.script(ports) ?? 'false'}; echo case-ran`);
        expect(sb.stdout(dirty.out)).toContain('case-ran');
        const dirtyId = await containerFor(dirty.runId);
        // Released after the answer: wait until it is back in A's pool or destroyed.
        const outcome = await eventually(
          `"${name}" in mode 1 scrubbed or destroyed`,
          async () => {
            const gone = await (docker as Docker)
              .getContainer(dirtyId)
              .inspect()
              .then(
                (i) => !i.Name.startsWith('/cap-pool-') && undefined,
                () => 'destroyed',
              );
            if (gone) return gone;
            return Object.entries(sb.service.stats().idle).some(([k, n]) => k.startsWith(`${a}/m1/`) && n > 0) ? 'pooled' : undefined;
          },
          15_000,
        );
        mode1Outcomes.push(`${name}: ${outcome}`);
        const next = await step(a, 1, probeArgv);
        const afterDirty = JSON.parse(sb.stdout(next.out).trim()) as { workspace: string[]; tmp: string[]; shm: string[]; procs: string[] };
        const reused = (await containerFor(next.runId)) === dirtyId;
        if (reused) reusedByA++;
        if (
          afterDirty.workspace.some((f) => !['input.json', 'out'].includes(f)) ||
          afterDirty.tmp.length + afterDirty.shm.length > 0 ||
          afterDirty.procs.some((p) => /sleep 63|cat \/proc/.test(p))
        ) {
          tally.breaches.push(`mode 1, ${name}: A's next step found what the last one left (same sandbox: ${reused})`);
        }
        for (let i = 0; i < 2; i++) {
          const probe = await step(b, 1, 'true');
          if ((await containerFor(probe.runId)) === dirtyId) tally.breaches.push(`mode 1, ${name}: B got A's used sandbox`);
        }
      }

      // The engine's record: no container served runs of two tenants.
      const crossed = [...served].filter(([, runs]) => new Set([...runs].map((r) => tenantOfRun.get(r))).size > 1);
      for (const [id] of crossed) tally.breaches.push(`container ${id.slice(0, 12)} served two tenants`);
      if (homeConnections > 0) tally.breaches.push(`${homeConnections} connections reached the host's loopback server`);
      const audit = (await Promise.all([...tenantOfRun].filter(([, t]) => t === a).map(([r]) => sb.auditRows(a, r)))).flat();
      const opened = audit.filter((r) => r.kind === 'egress.connect');
      const denied = audit.filter((r) => r.kind === 'egress.denied');
      // The only connection opened is the rebinding name's first, public answer.
      for (const r of opened) if (r.detail['address'] !== '93.184.215.14') tally.breaches.push(`egress opened to ${String(r.detail['address'])}`);

      process.stdout.write(
        `hostile (${runtime}): ${tally.cases} cases, ${tally.attempts} attempts, ${tally.destroyed}/${tally.cases} hostile sandboxes destroyed, ${tally.probes} probes by the other tenant, ` +
          `${served.size} containers over ${tenantOfRun.size} runs, ${crossed.length} served two tenants, home reached ${homeConnections} times, ` +
          `egress audit rows: ${opened.length} opened, ${denied.length} denied; rebind name asked ${dns.queries.get('rebind.capstan.test') ?? 0} times; mode 1 after an attack: ${mode1Outcomes.join(', ')}, reused by their tenant ${reusedByA}/2; ` +
          `done but contained in its own sandbox: [${tally.contained.join(', ')}]; breaches ${tally.breaches.length}\n`,
      );
      if (tally.breaches.length > 0) process.stdout.write(`breaches:\n  ${tally.breaches.join('\n  ')}\n`);
      expect(tally.breaches).toEqual([]);
      expect(tally.destroyed).toBe(CASES.length);
      expect(opened.length).toBeLessThanOrEqual(1);
      expect(denied.length).toBeGreaterThanOrEqual(9);
      // The service kept serving: a plain step still runs for both tenants.
      for (const t of [a, b]) expect(sb.stdout((await step(t, 1, 'echo ok')).out)).toBe('ok\n');
    }, 600_000);
  });
}

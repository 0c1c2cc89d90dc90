import { mkdtempSync, readFileSync, symlinkSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import fc from 'fast-check';
import { defineWorkflow } from '@capstan/actors';
import { PassThrough } from 'node:stream';
import {
  DEFAULT_LIMITS,
  fromSandbox,
  identityScope,
  loadConfig,
  MAX_FRAME_BYTES,
  nullBackend,
  parseAllowList,
  parseDnsServers,
  Redactor,
  refusalOf,
  resolveChecked,
  RunnerChannel,
  SandboxPools,
} from '@capstan/sandbox';
import { createLogger } from '@capstan/kit';
import { ConfigError, InvalidWorkflowError, parseSandboxExecRequest, parseWorkItem, sandboxName, SchemaError, type TenantId } from '@capstan/schemas';
// Internal pieces, tested directly from the built package.
import { Destination } from '../../services/sandbox/dist/outputs.js';
import { agentCommand } from '../../services/sandbox/dist/agent-adapters.js';
import { isCleanProof } from '../../services/sandbox/dist/runner/protocol.js';

const silent = createLogger('test', 'silent');

describe('Redactor', () => {
  it('replaces every identity value, also when split across chunks at any point', () => {
    fc.assert(
      fc.property(
        fc.string({ minLength: 4, maxLength: 40 }),
        fc.string({ maxLength: 60 }),
        fc.string({ maxLength: 60 }),
        fc.array(fc.nat(200), { maxLength: 6 }),
        (secret, before, after, cuts) => {
          const text = Buffer.from(`${before}${secret}${after}${secret}`);
          const r = new Redactor([secret]);
          const points = [...new Set(cuts.map((c) => c % (text.length + 1)))].sort((a, b) => a - b);
          let out = Buffer.alloc(0);
          let last = 0;
          for (const p of [...points, text.length]) {
            out = Buffer.concat([out, r.push(text.subarray(last, p))]);
            last = p;
          }
          out = Buffer.concat([out, r.flush()]);
          expect(out.toString('utf8')).not.toContain(secret);
          expect(out.toString('utf8')).toContain('[redacted]');
        },
      ),
      { numRuns: 300 },
    );
  });

  it('passes output through untouched when there is no identity', () => {
    const r = new Redactor([]);
    expect(r.push(Buffer.from('hello')).toString()).toBe('hello');
  });
});

describe('Destination', () => {
  it('refuses paths that leave the attempt folder and never writes through a link', () => {
    const root = mkdtempSync(join(tmpdir(), 'capstan-dest-'));
    const d = new Destination(root, ['t', 'run', 'step', '1']);
    expect(d.append('out/ok.txt', Buffer.from('ok'))).toBe(true);
    for (const bad of ['../escape.txt', '/etc/passwd', 'out/../../x', '', 'a\0b']) expect(d.append(bad, Buffer.from('x'))).toBe(false);
    symlinkSync('/tmp', join(d.dir, 'link'));
    expect(() => d.append('link', Buffer.from('x'))).toThrow();
    const artifacts = d.close(new Set());
    expect(artifacts.map((a) => a.path)).toEqual(['out/ok.txt']);
    expect(readFileSync(join(d.dir, 'out/ok.txt'), 'utf8')).toBe('ok');
  });
});

describe('sandbox steps in workflow definitions', () => {
  const def = (step: object) => () => defineWorkflow({ id: 'w', version: 1, steps: [{ name: 's', ...step }] });
  it('holds each mode to its rules before any run starts', () => {
    expect(def({ mode: 1 })).toThrow(InvalidWorkflowError);
    expect(def({ mode: 1, sandbox: { command: ['true'], secrets: ['KEY'] } })).toThrow(/mode 1 has no secrets/);
    expect(def({ mode: 1, sandbox: { command: ['true'], egress: ['example.com:443'] } })).toThrow(/no egress/);
    expect(def({ mode: 2, sandbox: { command: ['true'] } })).toThrow(/needs `sandbox.secrets`/);
    expect(def({ mode: 3, sandbox: { agent: 'mini' } })).toThrow(/agent/);
    expect(def({ mode: 3, sandbox: { agent: 'mini', task: 'x', command: ['true'] } })).toThrow(/agent/);
    expect(def({ mode: 2, sandbox: { command: ['true'], secrets: ['K'], jit: true } })).toThrow(/needs mode 3/);
    expect(def({ mode: 3, sandbox: { command: ['true'], jit: true } })).not.toThrow();
    expect(def({ mode: 0, sandbox: { command: ['true'] } })).toThrow(/mode-0/);
    expect(def({ mode: 2, sandbox: { command: ['true'], secrets: ['lower'] } })).toThrow(InvalidWorkflowError);
    expect(def({ mode: 2, sandbox: { command: ['true'], secrets: ['KEY'], egress: ['not a host'] } })).toThrow(InvalidWorkflowError);
    expect(def({ mode: 1, sandbox: { command: ['true'] } })).not.toThrow();
    expect(def({ mode: 3, sandbox: { agent: 'mini', task: 'do it', secrets: ['OPENAI_API_KEY'], egress: ['127.0.0.1:8080'] } })).not.toThrow();
  });
});

describe('sandbox requests from the network', () => {
  const ok = { runId: '01KAB8X7M5Q3ZQ0Y3W4V5T6S7R', workflow: 'w', step: 's', attempt: 1, mode: 1, spec: { command: ['true'] }, timeoutMs: 1000, input: {} };
  it('accepts a well-formed request and refuses malformed ones with a schema error', () => {
    expect(parseSandboxExecRequest(ok).step).toBe('s');
    for (const bad of [
      { ...ok, mode: 0 },
      { ...ok, runId: 'x' },
      { ...ok, spec: { command: 'true' } },
      { ...ok, spec: { command: ['true'], extra: 1 } },
      { ...ok, spec: { command: ['true'], secrets: ['A-B'] } },
      { ...ok, attempt: 0 },
      'not an object',
    ]) {
      expect(() => parseSandboxExecRequest(bad)).toThrow(SchemaError);
    }
  });
  it('carries the sandbox spec in work items', () => {
    const item = parseWorkItem({
      runId: ok.runId,
      workflow: 'w',
      version: 1,
      step: 's',
      attempt: 1,
      handler: 'w.s',
      mode: 1,
      timeoutMs: 1000,
      input: {},
      sandbox: { command: ['echo', 'hi'] },
    });
    expect(item.sandbox?.command).toEqual(['echo', 'hi']);
  });
  it('names containers deterministically per attempt', () => {
    expect(sandboxName(ok.runId, 'step-a', 2)).toBe(`cap-${ok.runId}-step-a-2`);
  });
});

describe('agents, proofs and config', () => {
  it('an agent adapter needs its env; unknown agents are refused', () => {
    expect(
      agentCommand({ agent: 'mini', task: 'x', env: [{ name: 'OPENAI_BASE_URL', value: 'http://h:1' }], secrets: ['OPENAI_API_KEY'] }, ['OPENAI_BASE_URL'], ['OPENAI_API_KEY'])
        .argv[0],
    ).toBe('node');
    expect(() => agentCommand({ agent: 'mini', task: 'x' }, [], [])).toThrow(/needs OPENAI_BASE_URL, OPENAI_API_KEY/);
    expect(() => agentCommand({ agent: 'nobody', task: 'x' }, [], [])).toThrow(/unknown agent/);
  });
  it('a proof is clean only when nothing at all is left', () => {
    const clean = { nonce: 'n', pid: 7, processes: [], workspace: [], tmp: [], mqueue: [], shm: [], identityKeys: 0, connections: 0 };
    expect(isCleanProof(clean)).toBe(true);
    expect(isCleanProof({ ...clean, processes: [12] })).toBe(false);
    expect(isCleanProof({ ...clean, workspace: ['.hidden'] })).toBe(false);
    expect(isCleanProof({ ...clean, shm: ['seg'] })).toBe(false);
    expect(isCleanProof({ ...clean, identityKeys: 1 })).toBe(false);
    // A forged proof with a list that is not a list is not clean either.
    expect(isCleanProof({ ...clean, tmp: 'nothing' as unknown as string[] })).toBe(false);
  });
  it('loadConfig reports every problem at once', () => {
    try {
      loadConfig({
        SANDBOX_BACKEND: 'k8s',
        SANDBOX_NODE: 'Bad Name',
        SANDBOX_POOL_MIN: '9',
        SANDBOX_POOL_MAX: '2',
        SANDBOX_MEMORY_MB: 'lots',
        SANDBOX_RUNTIME: 'kata',
        SANDBOX_IDENTITY_REUSE: 'always',
        SANDBOX_EGRESS_ALLOW: 'example.com',
        AUDIT_DATABASE_URL: 'mysql://x',
      });
      expect.unreachable();
    } catch (e) {
      expect(e).toBeInstanceOf(ConfigError);
      const m = (e as Error).message;
      for (const key of [
        'NATS_URL',
        'SANDBOX_BACKEND',
        'SANDBOX_NODE',
        'SANDBOX_POOL_MAX',
        'SANDBOX_MEMORY_MB',
        'SANDBOX_RUNTIME',
        'SANDBOX_IDENTITY_REUSE',
        'SANDBOX_EGRESS_ALLOW',
        'AUDIT_DATABASE_URL',
      ])
        expect(m).toContain(key);
      // A database URL may hold a password: never echoed.
      expect(m).not.toContain('mysql://x');
    }
    const c = loadConfig({ NATS_URL: 'nats://127.0.0.1:4222', NATS_CREDS: 'svc.creds' });
    expect(c.limits.pids).toBe(128);
    // gVisor where it works, identities never reused, egress capped and allow-listing nothing.
    expect([c.runtime, c.identityReuse, c.egress.allow, c.egress.maxBytes, c.maxOutputBytes]).toEqual(['auto', 'never', [], 256 * 1024 * 1024, 64 * 1024 * 1024]);
  });
});

describe('egress: which addresses a sandbox may reach', () => {
  const none = new Set<string>();
  it('refuses loopback, private, link-local, multicast, reserved and this host; allows public addresses', () => {
    const cases: [string, string | undefined][] = [
      ['127.0.0.1', 'loopback'],
      ['127.255.0.9', 'loopback'],
      ['::1', 'loopback'],
      ['::ffff:127.0.0.1', 'loopback'],
      ['10.1.2.3', 'private'],
      ['172.17.0.1', 'private'],
      ['192.168.1.1', 'private'],
      ['100.64.0.1', 'private (shared address space)'],
      ['169.254.169.254', 'link-local (metadata)'],
      ['fe80::1', 'link-local'],
      ['fd00:ec2::254', 'private (unique local)'],
      ['224.0.0.1', 'multicast'],
      ['ff02::1', 'multicast'],
      ['0.0.0.0', 'unspecified'],
      ['255.255.255.255', 'reserved'],
      ['64:ff9b::7f00:1', 'NAT64 (embeds an IPv4 address)'],
      ['2002:7f00:1::', '6to4 (embeds an IPv4 address)'],
      ['93.184.215.14', undefined],
      ['1.1.1.1', undefined],
      ['2606:4700:4700::1111', undefined],
      ['not-an-ip', 'not an IP address'],
    ];
    for (const [address, why] of cases) expect([address, refusalOf(address, [], none)]).toEqual([address, why]);
    // This host's own addresses, public or not.
    expect(refusalOf('93.184.215.14', [], new Set(['93.184.215.14']))).toBe('this host');
  });

  it('an admin allow-list lets named addresses and blocks through, and nothing else', () => {
    const problems: string[] = [];
    const allow = parseAllowList('127.0.0.1, 10.20.0.0/16,fd00::/8', problems);
    expect(problems).toEqual([]);
    expect(refusalOf('127.0.0.1', allow, new Set())).toBeUndefined();
    expect(refusalOf('127.0.0.2', allow, new Set())).toBe('loopback');
    expect(refusalOf('10.20.3.4', allow, new Set())).toBeUndefined();
    expect(refusalOf('10.21.3.4', allow, new Set())).toBe('private');
    expect(refusalOf('fd12::1', allow, new Set())).toBeUndefined();
    expect(refusalOf('::ffff:10.20.0.1', allow, new Set())).toBeUndefined();
    const bad: string[] = [];
    parseAllowList('10.0.0.0/33,example.com,1.2.3.4/x,::1/129', bad);
    expect(bad).toHaveLength(4);
    const dns: string[] = [];
    expect(parseDnsServers('127.0.0.1:5353, 10.0.0.2,[::1]:53, ::1', dns)).toEqual(['127.0.0.1:5353', '10.0.0.2', '[::1]:53', '::1']);
    parseDnsServers('dns.example.com,127.0.0.1:99999', dns);
    expect(dns).toHaveLength(2);
  });

  it('a name is resolved on this side: one refused address refuses the name; an IP literal is checked as it is', async () => {
    await expect(resolveChecked('localhost', { allow: [], dns: [] })).rejects.toMatchObject({ code: 'egress_denied' });
    await expect(resolveChecked('127.0.0.1', { allow: [], dns: [] })).rejects.toThrow(/loopback/);
    expect(await resolveChecked('127.0.0.1', { allow: parseAllowList('127.0.0.0/8', []), dns: [] })).toEqual({ address: '127.0.0.1', family: 4 });
    await expect(resolveChecked('no-such-host.invalid', { allow: [], dns: [] })).rejects.toThrow(/does not resolve/);
  });
});

describe('text from inside a sandbox', () => {
  it('is bounded, printable and redacted before the cut', () => {
    expect(fromSandbox('a'.repeat(1000), 10)).toBe(`${'a'.repeat(9)}…`);
    expect(fromSandbox('line\nbreak\u202e\u0007', 100)).toBe('line?break??');
    expect(
      fromSandbox(
        {
          toString: () => {
            throw new Error('hostile');
          },
        },
        20,
      ),
    ).toBe('[object]');
    expect(fromSandbox(undefined, 5)).toBe('');
    fc.assert(
      fc.property(
        fc.string({ minLength: 4, maxLength: 30 }).filter((s) => !/[\u0000-\u001f\u007f-\u009f\u2028\u2029\u202a-\u202e\u2066-\u2069]/.test(s)),
        fc.string({ maxLength: 80 }),
        fc.nat(120),
        (secret, around, max) => {
          const r = new Redactor([secret]);
          const out = fromSandbox(`${around}${secret}${around}`, Math.max(2, max), r);
          expect(out).not.toContain(secret);
          expect(out.length).toBeLessThanOrEqual(Math.max(2, max));
        },
      ),
      { numRuns: 300 },
    );
  });
});

describe('the control channel', () => {
  const channel = () => {
    const toRunner = new PassThrough();
    const fromRunner = new PassThrough();
    const sent: string[] = [];
    toRunner.on('data', (d: Buffer) => sent.push(d.toString()));
    return { ch: new RunnerChannel(toRunner, fromRunner, 'test'), fromRunner, sent };
  };
  it('a frame outside the protocol taints the runner; a frame over the cap closes the channel', async () => {
    const a = channel();
    a.fromRunner.write('{"t":"ready","v":1,"pid":7,"uid":0}\n');
    await a.ch.ready;
    expect(a.ch.runner).toEqual({ pid: 7, uid: 0 });
    expect(a.ch.tainted).toBeUndefined();
    a.fromRunner.write('not json\n');
    expect(a.ch.tainted).toMatch(/not part of the protocol/);
    const b = channel();
    b.fromRunner.write('{"t":"ready","v":1,"pid":7,"uid":0}\n{"t":"ready","v":1,"pid":8,"uid":0}\n');
    expect(b.ch.tainted).toBe('a second ready');
    const c = channel();
    c.fromRunner.write(`{"t":"out","id":"1","fd":1,"d":"${'A'.repeat(MAX_FRAME_BYTES)}"}\n`);
    expect(c.ch.isClosed).toBe(true);
    expect(c.ch.tainted).toMatch(/over/);
    // Even without a newline, a frame that keeps growing past the cap is cut off.
    const d = channel();
    for (let i = 0; i < 20; i++) d.fromRunner.write('B'.repeat(64 * 1024));
    expect(d.ch.isClosed).toBe(true);
  });
  it('with no egress grant, a connection the runner asks for is refused', async () => {
    const a = channel();
    a.fromRunner.write('{"t":"conn","cid":3,"host":"127.0.0.1","port":4222}\n');
    await new Promise((r) => setImmediate(r));
    expect(a.sent.join('')).toContain('"t":"conn.err","cid":3,"code":"egress_denied"');
  });
});

describe('pools and identity scopes', () => {
  const tenant = 'acme' as TenantId;
  it('mode 1 pools per tenant; identities are reused only within their scope, and by default never', () => {
    const pools = (identityReuse: 'never' | 'scope') =>
      new SandboxPools({
        backend: nullBackend(),
        runtime: 'runc',
        node: 'n',
        instance: 'i',
        labels: {},
        min: 0,
        max: 1,
        maxUses: 5,
        idleMs: 60_000,
        identityReuse,
        limits: DEFAULT_LIMITS,
        log: silent,
      });
    const never = pools('never');
    const scoped = pools('scope');
    const scope = identityScope({ workflow: 'w', step: 's', secrets: ['B', 'A'], egress: ['x:1'] });
    expect(never.keyOf({ tenant, mode: 1, image: 'img:1', scope })).toBe('acme/m1/img1');
    expect(never.keyOf({ tenant: 'other' as TenantId, mode: 1, image: 'img:1', scope })).toBe('other/m1/img1');
    expect(never.keyOf({ tenant, mode: 2, image: 'img:1', scope })).toBeUndefined();
    expect(scoped.keyOf({ tenant, mode: 2, image: 'img:1', scope })).toBe(`acme/m2/img1/${scope}`);
    expect(identityScope({ workflow: 'w', step: 's', secrets: ['A', 'B'], egress: ['x:1'] })).toBe(scope);
    for (const other of [{ step: 't' }, { workflow: 'v' }, { secrets: ['A'] }, { egress: [] }, { jit: true }]) {
      expect(identityScope({ workflow: 'w', step: 's', secrets: ['A', 'B'], egress: ['x:1'], ...other })).not.toBe(scope);
    }
    void never.stop();
    void scoped.stop();
  });
  it('the engine: DOCKER_SOCKET, else DOCKER_HOST when it is a unix socket, else the default; a remote DOCKER_HOST is refused', () => {
    const nats = { NATS_URL: 'nats://127.0.0.1:4222', NATS_CREDS: 'svc.creds' };
    expect(loadConfig(nats).dockerSocket).toBe('/var/run/docker.sock');
    expect(loadConfig({ ...nats, DOCKER_HOST: 'unix:///tmp/d/sock' }).dockerSocket).toBe('/tmp/d/sock');
    expect(loadConfig({ ...nats, DOCKER_HOST: 'unix:///tmp/d/sock', DOCKER_SOCKET: '/run/other.sock' }).dockerSocket).toBe('/run/other.sock');
    expect(() => loadConfig({ ...nats, DOCKER_HOST: 'tcp://10.0.0.1:2375' })).toThrow(/DOCKER_HOST must be a unix:\/\/ socket/);
  });
});

import { mkdtempSync, readFileSync, symlinkSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import fc from 'fast-check';
import { defineWorkflow } from '@capstan/actors';
import { loadConfig, Redactor } from '@capstan/sandbox';
import { ConfigError, InvalidWorkflowError, parseSandboxExecRequest, parseWorkItem, sandboxName, SchemaError } from '@capstan/schemas';
// Internal pieces, tested directly from the built package.
import { Destination } from '../../services/sandbox/dist/outputs.js';
import { agentCommand } from '../../services/sandbox/dist/agent-adapters.js';
import { isCleanProof } from '../../services/sandbox/dist/runner/protocol.js';

describe('Redactor', () => {
  it('replaces every identity value, also when split across chunks at any point', () => {
    fc.assert(
      fc.property(fc.string({ minLength: 4, maxLength: 40 }), fc.string({ maxLength: 60 }), fc.string({ maxLength: 60 }), fc.array(fc.nat(200), { maxLength: 6 }), (secret, before, after, cuts) => {
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
      }),
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
    const item = parseWorkItem({ runId: ok.runId, workflow: 'w', version: 1, step: 's', attempt: 1, handler: 'w.s', mode: 1, timeoutMs: 1000, input: {}, sandbox: { command: ['echo', 'hi'] } });
    expect(item.sandbox?.command).toEqual(['echo', 'hi']);
  });
  it('names containers deterministically per attempt', () => {
    expect(sandboxName(ok.runId, 'step-a', 2)).toBe(`cap-${ok.runId}-step-a-2`);
  });
});

describe('agents, proofs and config', () => {
  it('an agent adapter needs its env; unknown agents are refused', () => {
    expect(agentCommand({ agent: 'mini', task: 'x', env: [{ name: 'OPENAI_BASE_URL', value: 'http://h:1' }], secrets: ['OPENAI_API_KEY'] }, ['OPENAI_BASE_URL'], ['OPENAI_API_KEY']).argv[0]).toBe('node');
    expect(() => agentCommand({ agent: 'mini', task: 'x' }, [], [])).toThrow(/needs OPENAI_BASE_URL, OPENAI_API_KEY/);
    expect(() => agentCommand({ agent: 'nobody', task: 'x' }, [], [])).toThrow(/unknown agent/);
  });
  it('a proof is clean only when nothing at all is left', () => {
    const clean = { processes: [], workspace: [], tmp: [], mqueue: [], identityKeys: 0, connections: 0 };
    expect(isCleanProof(clean)).toBe(true);
    expect(isCleanProof({ ...clean, processes: [12] })).toBe(false);
    expect(isCleanProof({ ...clean, workspace: ['.hidden'] })).toBe(false);
    expect(isCleanProof({ ...clean, identityKeys: 1 })).toBe(false);
  });
  it('loadConfig reports every problem at once', () => {
    try {
      loadConfig({ SANDBOX_BACKEND: 'k8s', SANDBOX_NODE: 'Bad Name', SANDBOX_POOL_MIN: '9', SANDBOX_POOL_MAX: '2', SANDBOX_MEMORY_MB: 'lots' });
      expect.unreachable();
    } catch (e) {
      expect(e).toBeInstanceOf(ConfigError);
      const m = (e as Error).message;
      for (const key of ['NATS_URL', 'SANDBOX_BACKEND', 'SANDBOX_NODE', 'SANDBOX_POOL_MAX', 'SANDBOX_MEMORY_MB']) expect(m).toContain(key);
    }
    expect(loadConfig({ NATS_URL: 'nats://127.0.0.1:4222', NATS_CREDS: 'svc.creds' }).limits.pids).toBe(128);
  });
  it('the engine: DOCKER_SOCKET, else DOCKER_HOST when it is a unix socket, else the default; a remote DOCKER_HOST is refused', () => {
    const nats = { NATS_URL: 'nats://127.0.0.1:4222', NATS_CREDS: 'svc.creds' };
    expect(loadConfig(nats).dockerSocket).toBe('/var/run/docker.sock');
    expect(loadConfig({ ...nats, DOCKER_HOST: 'unix:///tmp/d/sock' }).dockerSocket).toBe('/tmp/d/sock');
    expect(loadConfig({ ...nats, DOCKER_HOST: 'unix:///tmp/d/sock', DOCKER_SOCKET: '/run/other.sock' }).dockerSocket).toBe('/run/other.sock');
    expect(() => loadConfig({ ...nats, DOCKER_HOST: 'tcp://10.0.0.1:2375' })).toThrow(/DOCKER_HOST must be a unix:\/\/ socket/);
  });
});

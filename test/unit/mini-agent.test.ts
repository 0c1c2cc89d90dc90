/**
 * The mini agent as a process, against a local OpenAI-compatible endpoint: the tool loop,
 * the out/ fence on write_file, HTTP failures, the turn limit, and both proxy paths the
 * sandbox uses (absolute-form HTTP, CONNECT + TLS).
 */
import { execFileSync, spawn } from 'node:child_process';
import { existsSync, mkdirSync, mkdtempSync, readFileSync, symlinkSync, writeFileSync } from 'node:fs';
import { createServer, type IncomingMessage, type Server, type ServerResponse } from 'node:http';
import { createServer as createHttpsServer } from 'node:https';
import { connect as netConnect, type AddressInfo, type Socket } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterEach, describe, expect, it } from 'vitest';
import { PROJECT_ROOT } from '@capstan/kit';
import { provides, requirementMissing } from '../harness/requirements.js';

const AGENT = join(PROJECT_ROOT, 'services', 'sandbox', 'dist', 'agents', 'mini-agent.js');
const KEY = 'sk-test-7f3c9e1a5b';

interface ChatMessage {
  readonly role: string;
  readonly content?: string | null;
  readonly tool_call_id?: string;
  readonly tool_calls?: readonly unknown[];
}
/** What the agent posts to `/chat/completions`. */
interface ChatRequest {
  readonly model: string;
  readonly messages: readonly ChatMessage[];
  readonly tools: readonly { readonly function: { readonly name: string } }[];
}
interface Seen {
  readonly url: string;
  readonly headers: IncomingMessage['headers'];
  readonly body: ChatRequest;
}
type Reply = { status?: number; json: unknown } | { status: number; text: string };

const servers: Server[] = [];
const sockets = new Set<Socket>();
afterEach(async () => {
  // Tunnelled sockets are not the HTTP server's to close: end them so close() can finish.
  for (const s of sockets) s.destroy();
  sockets.clear();
  await Promise.all(servers.splice(0).map((s) => new Promise((r) => s.close(r))));
});

function listen(server: Server): Promise<number> {
  servers.push(server);
  server.on('connection', (s: Socket) => {
    sockets.add(s);
    s.once('close', () => sockets.delete(s));
  });
  return new Promise((resolve) => server.listen(0, '127.0.0.1', () => resolve((server.address() as AddressInfo).port)));
}

/** A model endpoint answering each request with `script(n, body)`, recording what it got. */
function modelHandler(seen: Seen[], script: (n: number) => Reply) {
  return (req: IncomingMessage, res: ServerResponse) => {
    const chunks: Buffer[] = [];
    req.on('data', (c: Buffer) => chunks.push(c));
    req.on('end', () => {
      const body = JSON.parse(Buffer.concat(chunks).toString('utf8')) as ChatRequest;
      seen.push({ url: req.url ?? '', headers: req.headers, body });
      const reply = script(seen.length);
      res.writeHead(reply.status ?? 200, { 'content-type': 'application/json', connection: 'close' });
      res.end('text' in reply ? reply.text : JSON.stringify(reply.json));
    });
  };
}

const toolCall = (id: string, path: string, content: string) => ({ id, type: 'function', function: { name: 'write_file', arguments: JSON.stringify({ path, content }) } });
const answer = (message: Record<string, unknown>) => ({
  json: { id: 'c', object: 'chat.completion', choices: [{ index: 0, message: { role: 'assistant', ...message }, finish_reason: 'stop' }] },
});

function workspace(task: string): string {
  const ws = mkdtempSync(join(tmpdir(), 'capstan-agent-'));
  writeFileSync(join(ws, 'task.md'), task);
  return ws;
}

function runAgent(ws: string, env: Record<string, string>, args: string[] = ['--task', 'task.md', '--workspace', ws]): Promise<{ code: number | null; out: string; err: string }> {
  return new Promise((resolve, reject) => {
    // Only what the test gives: no proxy variables leak in from the machine.
    const child = spawn(process.execPath, [AGENT, ...args], { env: { PATH: process.env['PATH'] ?? '/usr/bin:/bin', OPENAI_API_KEY: KEY, ...env }, cwd: ws });
    let out = '';
    let err = '';
    child.stdout.on('data', (c: Buffer) => (out += c.toString()));
    child.stderr.on('data', (c: Buffer) => (err += c.toString()));
    child.once('error', reject);
    child.once('close', (code) => resolve({ code, out, err }));
  });
}

describe('mini-agent', () => {
  it('mini-agent - runs write_file calls inside out/, refuses escapes as tool errors, writes the final answer', async () => {
    const seen: Seen[] = [];
    const port = await listen(
      createServer(
        modelHandler(seen, (n) =>
          n === 1
            ? answer({
                content: null,
                tool_calls: [
                  toolCall('c1', 'src/hello.py', 'print("hello")\n'),
                  toolCall('c2', '../escape.txt', 'x'),
                  toolCall('c3', '/etc/capstan-escape', 'x'),
                  toolCall('c4', 'link/inside-symlink.txt', 'x'),
                ],
              })
            : answer({ content: 'Wrote src/hello.py.' }),
        ),
      ),
    );
    const ws = workspace('Write a hello world in Python.');
    const outside = mkdtempSync(join(tmpdir(), 'capstan-outside-'));
    mkdirSync(join(ws, 'out'));
    symlinkSync(outside, join(ws, 'out', 'link'));

    const r = await runAgent(ws, { OPENAI_BASE_URL: `http://127.0.0.1:${port}/v1/` });
    expect(r.err).not.toContain(KEY);
    expect(r.code, r.err).toBe(0);
    expect(readFileSync(join(ws, 'out', 'src', 'hello.py'), 'utf8')).toBe('print("hello")\n');
    expect(readFileSync(join(ws, 'out', 'answer.md'), 'utf8')).toBe('Wrote src/hello.py.');
    expect(existsSync(join(ws, 'escape.txt'))).toBe(false);
    expect(existsSync('/etc/capstan-escape')).toBe(false);
    expect(existsSync(join(outside, 'inside-symlink.txt'))).toBe(false);

    expect(seen).toHaveLength(2);
    const [first, second] = seen as [Seen, Seen];
    expect(first.url).toBe('/v1/chat/completions');
    expect(first.headers.authorization).toBe(`Bearer ${KEY}`);
    expect(first.body.model).toBe('mini');
    expect(first.body.tools.map((t) => t.function.name)).toEqual(['write_file']);
    expect(first.body.messages.at(-1)).toEqual({ role: 'user', content: 'Write a hello world in Python.' });
    // The second turn carries the assistant's calls and one tool result per call, in order.
    const results = second.body.messages.filter((m) => m.role === 'tool');
    expect(results.map((m) => m.tool_call_id)).toEqual(['c1', 'c2', 'c3', 'c4']);
    expect(results[0]?.content).toMatch(/^ok: wrote 15 bytes/);
    for (const refused of results.slice(1)) expect(refused.content).toMatch(/^error: /);
    expect(results[1]?.content).toContain('outside');
    expect(second.body.messages.some((m) => m.role === 'assistant' && m.tool_calls?.length === 4)).toBe(true);
  });

  it('mini-agent - an HTTP error exits 1 with one line naming the status, never the key', async () => {
    const seen: Seen[] = [];
    const port = await listen(createServer(modelHandler(seen, () => ({ status: 401, text: `{"error":{"message":"Incorrect API key provided: ${KEY}"}}` }))));
    const ws = workspace('anything');
    const r = await runAgent(ws, { OPENAI_BASE_URL: `http://127.0.0.1:${port}/v1`, OPENAI_MODEL: 'small-1' });
    expect(r.code).toBe(1);
    expect(r.err.trim().split('\n')).toHaveLength(1);
    expect(r.err).toContain('HTTP 401');
    expect(r.err).not.toContain(KEY);
    expect(r.out).not.toContain(KEY);
    expect(seen[0]?.body.model).toBe('small-1');
    expect(existsSync(join(ws, 'out', 'answer.md'))).toBe(false);
  });

  it('mini-agent - stops after 8 turns of tool calls without an answer', async () => {
    const seen: Seen[] = [];
    const port = await listen(createServer(modelHandler(seen, (n) => answer({ content: null, tool_calls: [toolCall(`c${n}`, `f${n}.txt`, 'x')] }))));
    const ws = workspace('loop forever');
    const r = await runAgent(ws, { OPENAI_BASE_URL: `http://127.0.0.1:${port}` });
    expect(r.code).toBe(1);
    expect(r.err).toContain('no final answer after 8 turns');
    expect(seen).toHaveLength(8);
    expect(existsSync(join(ws, 'out', 'f8.txt'))).toBe(true);
    expect(existsSync(join(ws, 'out', 'answer.md'))).toBe(false);
  });

  it('mini-agent - bad usage exits 2 and says what is missing', async () => {
    const ws = workspace('x');
    const r = await runAgent(ws, { OPENAI_API_KEY: '' }, ['--workspace', ws]);
    expect(r.code).toBe(2);
    expect(r.err).toContain('--task <file> is required');
    expect(r.err).toContain('OPENAI_API_KEY is not set');
  });

  it('mini-agent - an http:// endpoint goes through HTTP_PROXY in absolute form', async () => {
    const seen: Seen[] = [];
    // The "proxy" answers as the model itself: what matters is the request line it receives.
    const port = await listen(createServer(modelHandler(seen, () => answer({ content: 'via proxy' }))));
    const ws = workspace('x');
    const r = await runAgent(ws, { OPENAI_BASE_URL: 'http://model.invalid:8080/v1', HTTP_PROXY: `http://127.0.0.1:${port}` });
    expect(r.code, r.err).toBe(0);
    expect(seen[0]?.url).toBe('http://model.invalid:8080/v1/chat/completions');
    expect(seen[0]?.headers.host).toBe('model.invalid:8080');
    expect(readFileSync(join(ws, 'out', 'answer.md'), 'utf8')).toBe('via proxy');
  });

  it('mini-agent - an https:// endpoint goes through HTTPS_PROXY with CONNECT, TLS verified end to end', async (ctx) => {
    const certDir = mkdtempSync(join(tmpdir(), 'capstan-tls-'));
    try {
      execFileSync(
        'openssl',
        [
          'req',
          '-x509',
          '-newkey',
          'rsa:2048',
          '-nodes',
          '-days',
          '1',
          '-subj',
          '/CN=model.test',
          '-addext',
          'subjectAltName=DNS:model.test',
          '-keyout',
          join(certDir, 'key.pem'),
          '-out',
          join(certDir, 'cert.pem'),
        ],
        { stdio: 'ignore' },
      );
    } catch (e) {
      // Counted as a skip (and checked as one), never as a pass.
      ctx.skip(requirementMissing(`openssl that makes a test certificate (${(e as Error).message})`, provides('openssl')));
    }
    const seen: Seen[] = [];
    const tlsServer = createHttpsServer(
      { key: readFileSync(join(certDir, 'key.pem')), cert: readFileSync(join(certDir, 'cert.pem')) },
      modelHandler(seen, () => answer({ content: 'via tunnel' })),
    );
    const tlsPort = await listen(tlsServer);
    const connects: string[] = [];
    const proxy = createServer((_req, res) => res.writeHead(405).end());
    proxy.on('connect', (req: IncomingMessage, client: Socket) => {
      connects.push(req.url ?? '');
      const upstream = netConnect(tlsPort, '127.0.0.1', () => {
        client.write('HTTP/1.1 200 Connection Established\r\n\r\n');
        upstream.pipe(client);
        client.pipe(upstream);
      });
      upstream.on('error', () => client.destroy());
      client.on('error', () => upstream.destroy());
    });
    const proxyPort = await listen(proxy);
    const ws = workspace('x');
    const r = await runAgent(ws, {
      OPENAI_BASE_URL: `https://model.test:${tlsPort}/v1`,
      HTTPS_PROXY: `http://127.0.0.1:${proxyPort}`,
      NODE_EXTRA_CA_CERTS: join(certDir, 'cert.pem'),
    });
    expect(r.code, r.err).toBe(0);
    expect(connects).toEqual([`model.test:${tlsPort}`]);
    expect(seen[0]?.url).toBe('/v1/chat/completions');
    expect(seen[0]?.headers.authorization).toBe(`Bearer ${KEY}`);
    expect(readFileSync(join(ws, 'out', 'answer.md'), 'utf8')).toBe('via tunnel');
  });
});

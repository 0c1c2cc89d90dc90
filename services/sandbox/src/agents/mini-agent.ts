/**
 * mini-agent: a small CLI coding agent that runs inside a sandbox.
 *
 *   node mini-agent.js --task <file> [--workspace <dir>]
 *
 * Sends the task to an OpenAI-compatible `POST $OPENAI_BASE_URL/chat/completions`
 * (`Authorization: Bearer $OPENAI_API_KEY`, model `$OPENAI_MODEL`, default `mini`) with one
 * tool, `write_file(path, content)`, and runs the model's tool calls for up to 8 turns. Files
 * may only be written under `<workspace>/out` (`/workspace/out` in a sandbox); anything else
 * is refused and the refusal goes back to the model as the tool's result. When the model
 * answers without tool calls, its text is written to `<workspace>/out/answer.md`.
 *
 * A sandbox has no network: the tool runner serves an HTTP proxy on 127.0.0.1 and sets
 * `HTTP_PROXY`/`HTTPS_PROXY`. `http://` endpoints are reached through it with absolute-form
 * requests, `https://` ones with `CONNECT` and TLS end to end. Without proxy variables (or
 * for hosts in `NO_PROXY`) the endpoint is called directly.
 *
 * Exit status: 0 done; 1 the model endpoint failed or never finished (one line on stderr
 * says why); 2 bad usage. The API key is never printed, not even when the endpoint echoes it.
 *
 * Node builtins only: this file runs from the image, without node_modules.
 */
import { readFileSync, lstatSync, mkdirSync, openSync, writeFileSync, closeSync, constants as fsc } from 'node:fs';
import { request as httpRequest, type ClientRequest, type IncomingMessage, type OutgoingHttpHeaders } from 'node:http';
import { request as httpsRequest } from 'node:https';
import type { Socket } from 'node:net';
import { isAbsolute, join, relative, resolve, sep } from 'node:path';
import { connect as tlsConnect } from 'node:tls';

const MAX_TURNS = 8;
const MAX_TASK_BYTES = 1 << 20;
const MAX_RESPONSE_BYTES = 8 << 20;
const REQUEST_TIMEOUT_MS = 120_000;
const DEFAULT_BASE_URL = 'https://api.openai.com/v1';
const DEFAULT_MODEL = 'mini';

const SYSTEM_PROMPT =
  'You are a careful coding agent working in a sandbox. Use the write_file tool to create the files the task asks for ' +
  '(paths are relative to the output folder). When you are done, reply with a short summary of what you did and no tool call.';

const WRITE_FILE_TOOL = {
  type: 'function',
  function: {
    name: 'write_file',
    description: 'Write a UTF-8 text file in the output folder (/workspace/out). Relative paths are taken from there; parent folders are created.',
    parameters: {
      type: 'object',
      properties: {
        path: { type: 'string', description: 'File path inside /workspace/out, e.g. "src/main.py"' },
        content: { type: 'string', description: 'The whole file content' },
      },
      required: ['path', 'content'],
      additionalProperties: false,
    },
  },
} as const;

type Env = Readonly<Record<string, string | undefined>>;

interface Config {
  readonly endpoint: URL;
  readonly apiKey: string;
  readonly model: string;
  readonly taskFile: string;
  readonly outDir: string;
}

interface ToolCall {
  readonly id: string;
  readonly type: 'function';
  readonly function: { readonly name: string; readonly arguments: string };
}

type Message =
  | { readonly role: 'system' | 'user'; readonly content: string }
  | { readonly role: 'assistant'; readonly content: string | null; readonly tool_calls?: readonly ToolCall[] }
  | { readonly role: 'tool'; readonly tool_call_id: string; readonly content: string };

/** A failure that ends the run with one line on stderr and the given exit status. */
class Fatal extends Error {
  constructor(
    message: string,
    readonly status: 1 | 2,
  ) {
    super(message);
    this.name = 'Fatal';
  }
}

/** A refused tool call: reported back to the model, not fatal. */
class ToolRefused extends Error {}

// ---- configuration -------------------------------------------------------------------

function loadConfig(argv: readonly string[], env: Env): Config {
  const problems: string[] = [];
  let taskFile: string | undefined;
  let workspace = '/workspace';
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i];
    const value = argv[i + 1];
    if ((a === '--task' || a === '--workspace') && (value === undefined || value.startsWith('--'))) {
      problems.push(`${a} needs a value`);
    } else if (a === '--task') {
      taskFile = value;
      i++;
    } else if (a === '--workspace') {
      workspace = resolve(value ?? workspace);
      i++;
    } else {
      problems.push(`unknown argument ${JSON.stringify(a)}`);
    }
  }
  if (!taskFile) problems.push('--task <file> is required');
  const apiKey = env['OPENAI_API_KEY'] ?? '';
  if (!apiKey) problems.push('OPENAI_API_KEY is not set');
  const base = env['OPENAI_BASE_URL'] || DEFAULT_BASE_URL;
  let endpoint: URL | undefined;
  try {
    endpoint = new URL(`${base.replace(/\/+$/, '')}/chat/completions`);
    if (endpoint.protocol !== 'http:' && endpoint.protocol !== 'https:') throw new Error('not http(s)');
  } catch {
    problems.push(`OPENAI_BASE_URL must be an http:// or https:// URL (got ${JSON.stringify(base.slice(0, 100))})`);
  }
  if (problems.length > 0 || !taskFile || !endpoint) {
    throw new Fatal(`${problems.join('; ')}\nusage: node mini-agent.js --task <file> [--workspace <dir>]`, 2);
  }
  return { endpoint, apiKey, model: env['OPENAI_MODEL'] || DEFAULT_MODEL, taskFile: resolve(workspace, taskFile), outDir: join(workspace, 'out') };
}

// ---- HTTP, direct or through the sandbox's proxy ----------------------------------------

interface HttpResponse {
  readonly status: number;
  readonly body: string;
}

/** The proxy for `url` from the environment, unless NO_PROXY exempts its host. */
function proxyFor(url: URL, env: Env): URL | undefined {
  const raw = url.protocol === 'https:' ? (env['HTTPS_PROXY'] ?? env['https_proxy']) : (env['HTTP_PROXY'] ?? env['http_proxy']);
  if (!raw) return undefined;
  const host = bareHost(url.hostname);
  const noProxy = (env['NO_PROXY'] ?? env['no_proxy'] ?? '')
    .split(',')
    .map((s) => s.trim().toLowerCase())
    .filter(Boolean);
  for (const rule of noProxy) {
    if (rule === '*') return undefined;
    const suffix = rule.replace(/^\*?\./, '');
    if (host === suffix || host.endsWith(`.${suffix}`)) return undefined;
  }
  try {
    return new URL(raw.includes('://') ? raw : `http://${raw}`);
  } catch {
    throw new Fatal(`the proxy URL in the environment is not a URL`, 1);
  }
}

function bareHost(hostname: string): string {
  return hostname.replace(/^\[|\]$/g, '').toLowerCase();
}

function defaultPort(url: URL): number {
  return Number(url.port) || (url.protocol === 'https:' ? 443 : 80);
}

function proxyAuth(proxy: URL): OutgoingHttpHeaders {
  if (!proxy.username) return {};
  const creds = `${decodeURIComponent(proxy.username)}:${decodeURIComponent(proxy.password)}`;
  return { 'proxy-authorization': `Basic ${Buffer.from(creds).toString('base64')}` };
}

/** Opens a `CONNECT` tunnel to `target` through `proxy`. */
function tunnel(proxy: URL, target: URL): Promise<Socket> {
  const authority = `${target.hostname}:${defaultPort(target)}`;
  return new Promise((resolveTunnel, reject) => {
    const req = httpRequest({
      host: bareHost(proxy.hostname),
      port: defaultPort(proxy),
      method: 'CONNECT',
      path: authority,
      headers: { host: authority, ...proxyAuth(proxy) },
      agent: false,
    });
    req.setTimeout(REQUEST_TIMEOUT_MS, () => req.destroy(new Error(`proxy did not answer CONNECT within ${REQUEST_TIMEOUT_MS / 1000} s`)));
    req.once('connect', (res: IncomingMessage, socket: Socket) => {
      req.setTimeout(0);
      if (res.statusCode === 200) return resolveTunnel(socket);
      socket.destroy();
      reject(new Error(`proxy refused CONNECT ${authority}: ${res.statusCode} ${res.statusMessage ?? ''}`.trim()));
    });
    req.once('error', reject);
    req.end();
  });
}

async function postJson(url: URL, payload: unknown, headers: OutgoingHttpHeaders, env: Env): Promise<HttpResponse> {
  const body = Buffer.from(JSON.stringify(payload));
  const base: OutgoingHttpHeaders = { ...headers, host: url.host, 'content-type': 'application/json', accept: 'application/json', 'content-length': body.length };
  const path = `${url.pathname}${url.search}`;
  const proxy = proxyFor(url, env);
  let req: ClientRequest;
  if (url.protocol === 'http:') {
    req = proxy
      ? // Absolute-form: the proxy reads the target from the request line.
        httpRequest({ host: bareHost(proxy.hostname), port: defaultPort(proxy), method: 'POST', path: url.href, headers: { ...base, ...proxyAuth(proxy) }, agent: false })
      : httpRequest({ host: bareHost(url.hostname), port: defaultPort(url), method: 'POST', path, headers: base, agent: false });
  } else if (proxy) {
    const socket = await tunnel(proxy, url);
    const servername = bareHost(url.hostname);
    req = httpsRequest({ host: servername, port: defaultPort(url), method: 'POST', path, headers: base, createConnection: () => tlsConnect({ socket, servername }) });
  } else {
    req = httpsRequest({ host: bareHost(url.hostname), port: defaultPort(url), method: 'POST', path, headers: base, agent: false });
  }
  return new Promise((resolveResponse, reject) => {
    req.setTimeout(REQUEST_TIMEOUT_MS, () => req.destroy(new Error(`no response within ${REQUEST_TIMEOUT_MS / 1000} s`)));
    req.once('error', reject);
    req.once('response', (res: IncomingMessage) => {
      const chunks: Buffer[] = [];
      let size = 0;
      res.on('data', (c: Buffer) => {
        size += c.length;
        if (size <= MAX_RESPONSE_BYTES) chunks.push(c);
        else res.destroy(new Error(`response larger than ${MAX_RESPONSE_BYTES} bytes`));
      });
      res.once('error', reject);
      res.once('end', () => resolveResponse({ status: res.statusCode ?? 0, body: Buffer.concat(chunks).toString('utf8') }));
    });
    req.end(body);
  });
}

// ---- the model's answer ------------------------------------------------------------------

interface Reply {
  readonly content: string | null;
  readonly toolCalls: readonly ToolCall[];
}

const isRecord = (v: unknown): v is Record<string, unknown> => typeof v === 'object' && v !== null && !Array.isArray(v);

function parseReply(text: string): Reply {
  let json: unknown;
  try {
    json = JSON.parse(text);
  } catch {
    throw new Fatal('the model endpoint answered with something that is not JSON', 1);
  }
  const choices = isRecord(json) ? json['choices'] : undefined;
  const message = Array.isArray(choices) && isRecord(choices[0]) ? choices[0]['message'] : undefined;
  if (!isRecord(message)) throw new Fatal('the model endpoint answered without choices[0].message', 1);
  const content = typeof message['content'] === 'string' ? message['content'] : null;
  const raw = message['tool_calls'];
  const toolCalls: ToolCall[] = [];
  if (Array.isArray(raw)) {
    for (const c of raw) {
      const fn = isRecord(c) ? c['function'] : undefined;
      if (!isRecord(c) || typeof c['id'] !== 'string' || !isRecord(fn) || typeof fn['name'] !== 'string') {
        throw new Fatal('the model endpoint answered with a malformed tool call', 1);
      }
      const args = typeof fn['arguments'] === 'string' ? fn['arguments'] : JSON.stringify(fn['arguments'] ?? {});
      toolCalls.push({ id: c['id'], type: 'function', function: { name: fn['name'], arguments: args } });
    }
  }
  return { content, toolCalls };
}

// ---- writing files, only under out/ -------------------------------------------------------

/**
 * Writes `content` at `path` inside `outDir`. Every folder on the way is checked with lstat,
 * so a symlink planted in the workspace cannot lead the write outside it.
 */
function writeInside(outDir: string, path: string, content: string): string {
  if (!path || path.includes('\0')) throw new ToolRefused('path must be a non-empty file path');
  const abs = resolve(outDir, path);
  const rel = relative(outDir, abs);
  if (!rel || rel === '..' || rel.startsWith(`..${sep}`) || isAbsolute(rel)) throw new ToolRefused(`path ${JSON.stringify(path)} is outside ${outDir}; write inside it`);
  let at = outDir;
  for (const part of rel.split(sep).slice(0, -1)) {
    at = join(at, part);
    let isDir: boolean | undefined;
    try {
      isDir = lstatSync(at).isDirectory();
    } catch {
      isDir = undefined;
    }
    if (isDir === false) throw new ToolRefused(`${relative(outDir, at)} exists and is not a folder`);
    if (isDir === undefined) {
      try {
        mkdirSync(at);
      } catch (e) {
        throw new ToolRefused(`cannot create ${relative(outDir, at)}: ${(e as NodeJS.ErrnoException).code ?? 'error'}`);
      }
    }
  }
  let fd: number;
  try {
    fd = openSync(abs, fsc.O_WRONLY | fsc.O_CREAT | fsc.O_TRUNC | fsc.O_NOFOLLOW, 0o644);
  } catch (e) {
    throw new ToolRefused(`cannot write ${rel}: ${(e as NodeJS.ErrnoException).code ?? 'error'}`);
  }
  try {
    writeFileSync(fd, content);
  } finally {
    closeSync(fd);
  }
  return rel;
}

function runTool(call: ToolCall, outDir: string): string {
  if (call.function.name !== 'write_file') return `error: unknown tool ${JSON.stringify(call.function.name)}; the only tool is write_file`;
  let args: unknown;
  try {
    args = JSON.parse(call.function.arguments);
  } catch {
    return 'error: arguments are not valid JSON';
  }
  if (!isRecord(args) || typeof args['path'] !== 'string' || typeof args['content'] !== 'string') {
    return 'error: write_file needs {"path": string, "content": string}';
  }
  try {
    const rel = writeInside(outDir, args['path'], args['content']);
    const bytes = Buffer.byteLength(args['content']);
    say(`wrote out/${rel} (${bytes} bytes)`);
    return `ok: wrote ${bytes} bytes to ${join(outDir, rel)}`;
  } catch (e) {
    if (!(e instanceof ToolRefused)) throw e;
    say(`refused write_file: ${e.message}`);
    return `error: ${e.message}`;
  }
}

// ---- the loop ----------------------------------------------------------------------------

let secret = '';
/** Progress and failures go to stderr, with the API key masked wherever it appears. */
function say(line: string): void {
  process.stderr.write(`mini-agent: ${mask(line)}\n`);
}
function mask(text: string): string {
  return secret ? text.split(secret).join('[redacted]') : text;
}

async function run(config: Config, env: Env): Promise<void> {
  let task: string;
  try {
    const buf = readFileSync(config.taskFile);
    if (buf.length > MAX_TASK_BYTES) throw new Error(`larger than ${MAX_TASK_BYTES} bytes`);
    task = buf.toString('utf8');
  } catch (e) {
    throw new Fatal(`cannot read the task file ${config.taskFile}: ${(e as NodeJS.ErrnoException).code ?? (e as Error).message}`, 2);
  }
  mkdirSync(config.outDir, { recursive: true });
  // A task's files may include a symlink named out; writes must not follow it anywhere.
  if (!lstatSync(config.outDir).isDirectory()) throw new Fatal(`${config.outDir} is not a folder`, 1);
  const messages: Message[] = [
    { role: 'system', content: SYSTEM_PROMPT },
    { role: 'user', content: task },
  ];
  const headers = { authorization: `Bearer ${config.apiKey}` };
  for (let turn = 1; turn <= MAX_TURNS; turn++) {
    let res: HttpResponse;
    try {
      res = await postJson(config.endpoint, { model: config.model, messages, tools: [WRITE_FILE_TOOL], tool_choice: 'auto' }, headers, env);
    } catch (e) {
      if (e instanceof Fatal) throw e;
      throw new Fatal(`cannot reach ${config.endpoint.origin}: ${(e as Error).message}`, 1);
    }
    if (res.status < 200 || res.status > 299) {
      const detail = res.body.replace(/\s+/g, ' ').trim().slice(0, 200);
      throw new Fatal(`HTTP ${res.status} from ${config.endpoint.origin}${detail ? `: ${detail}` : ''}`, 1);
    }
    const reply = parseReply(res.body);
    if (reply.toolCalls.length === 0) {
      writeInside(config.outDir, 'answer.md', reply.content ?? '');
      say(`done after ${turn} turn${turn === 1 ? '' : 's'}; answer in out/answer.md`);
      return;
    }
    messages.push({ role: 'assistant', content: reply.content, tool_calls: reply.toolCalls });
    for (const call of reply.toolCalls) messages.push({ role: 'tool', tool_call_id: call.id, content: runTool(call, config.outDir) });
  }
  throw new Fatal(`no final answer after ${MAX_TURNS} turns`, 1);
}

async function main(argv: readonly string[], env: Env): Promise<number> {
  secret = env['OPENAI_API_KEY'] ?? '';
  try {
    await run(loadConfig(argv, env), env);
    return 0;
  } catch (e) {
    if (e instanceof Fatal) {
      say(e.message);
      return e.status;
    }
    say(`failed: ${e instanceof Error ? e.message : String(e)}`);
    return 1;
  }
}

process.exitCode = await main(process.argv.slice(2), process.env);

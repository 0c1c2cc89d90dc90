/**
 * The tool runner: the daemon every sandbox runs (under the engine's init, as the
 * container's root with a few capabilities). It takes frames from the sandbox service on
 * stdin, runs tools and CLI agents as subprocesses in /workspace **as `STEP_UID`** (no
 * capabilities: a step cannot signal, trace or read this process), streams their output
 * back with backpressure, and enforces each step's timeout. Identity (secret env) lives only
 * in this process's memory and in the env of the subprocess it is for: never in the
 * container's own env, so `/proc/1/environ` and `docker inspect` hold none of it.
 *
 * `scrub` returns the sandbox to a state a different run may use, and reports what is
 * left so the service can prove it (see `isCleanProof`): no process but the runner and
 * init, an empty workspace, /tmp and message-queue namespace, no identity, no tunnel.
 *
 * Node builtins only: this file runs from the image, without node_modules.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import {
  chmodSync,
  chownSync,
  lstatSync,
  mkdirSync,
  openSync,
  readdirSync,
  readFileSync,
  readSync,
  closeSync,
  realpathSync,
  rmSync,
  writeFileSync,
  constants as fsc,
} from 'node:fs';
import { createServer as createHttpServer } from 'node:http';
import { createServer, type Server, type Socket } from 'node:net';
import { join, relative, resolve, sep } from 'node:path';
import {
  CREDENTIALS_PORT,
  isCleanProof,
  lineSplitter,
  MAX_FRAME_BYTES,
  OUT_DIR,
  PROTOCOL_VERSION,
  PROXY_PORT,
  STEP_GID,
  STEP_UID,
  WORKSPACE,
  type HostFrame,
  type RunnerFrame,
  type ScrubProof,
} from './protocol.js';

const BASE_ENV: Readonly<Record<string, string>> = { PATH: '/usr/bin:/bin', HOME: WORKSPACE, LANG: 'C.UTF-8', TMPDIR: '/tmp' };
const SCRUB_DIRS = { workspace: WORKSPACE, tmp: '/tmp', mqueue: '/dev/mqueue', shm: '/dev/shm' } as const;
/** Directories the step owns: given back to it, empty and private, at every scrub. */
const STEP_DIRS = [WORKSPACE, '/tmp'] as const;
const FILE_CHUNK = 192 * 1024;

let identity = new Map<string, string>();
const procs = new Map<string, ChildProcess>();
const conns = new Map<number, Socket>();
let proxy: Server | undefined;
let nextCid = 1;

// ---- output to the host, with backpressure -------------------------------------------
const drainWaiters: (() => void)[] = [];
process.stdout.on('drain', () => {
  for (const w of drainWaiters.splice(0)) w();
});
/** Sends a frame; false when the channel is full (the caller pauses its source until drain). */
function send(f: RunnerFrame): boolean {
  return process.stdout.write(`${JSON.stringify(f)}\n`);
}
function whenDrained(): Promise<void> {
  return new Promise((r) => drainWaiters.push(r));
}
function diag(msg: string): void {
  process.stderr.write(`tool-runner: ${msg}\n`);
}

// ---- files -----------------------------------------------------------------------------
/** Resolves a workspace-relative path, refusing anything that escapes the workspace. */
function inWorkspace(p: string): string {
  const abs = resolve(WORKSPACE, p);
  if (abs !== WORKSPACE && !abs.startsWith(WORKSPACE + sep)) throw new Error(`path ${JSON.stringify(p)} escapes the workspace`);
  return abs;
}

/** Creates `dir` and its missing parents under the workspace, owned by the step. */
function stepDir(dir: string): void {
  const made = mkdirSync(dir, { recursive: true });
  if (made === undefined) return;
  for (let d = dir; d.startsWith(made); d = resolve(d, '..')) chownSync(d, STEP_UID, STEP_GID);
}

function writeInputs(files: Extract<HostFrame, { t: 'exec' }>['files']): void {
  stepDir(join(WORKSPACE, OUT_DIR));
  for (const f of files) {
    const abs = inWorkspace(f.path);
    stepDir(resolve(abs, '..'));
    // O_NOFOLLOW|O_EXCL-like: a link planted by an earlier command of this step is replaced, never followed.
    rmSync(abs, { force: true });
    writeFileSync(abs, Buffer.from(f.d, 'base64'), { mode: f.mode ?? 0o600, flag: 'wx' });
    chownSync(abs, STEP_UID, STEP_GID);
  }
}

// ---- exec ------------------------------------------------------------------------------
function exec(f: Extract<HostFrame, { t: 'exec' }>): void {
  try {
    writeInputs(f.files);
  } catch (e) {
    send({ t: 'exit', id: f.id, code: -1, timedOut: false, ms: 0, error: `inputs: ${(e as Error).message}` });
    return;
  }
  const env: Record<string, string> = { ...BASE_ENV, ...f.env };
  for (const [k, v] of identity) env[k] = v;
  if (f.jit) env['CAPSTAN_CREDENTIALS_URL'] = `http://127.0.0.1:${CREDENTIALS_PORT}`;
  if (f.egress) {
    const url = `http://127.0.0.1:${PROXY_PORT}`;
    Object.assign(env, { HTTP_PROXY: url, HTTPS_PROXY: url, http_proxy: url, https_proxy: url });
  }
  const t0 = performance.now();
  const [cmd, ...args] = f.argv;
  // Its own process group, so a timeout or kill takes every descendant with it; its own
  // uid, with no capabilities (setuid from root clears them), so it cannot touch this process.
  const child = spawn(cmd ?? '', args, { cwd: WORKSPACE, env, detached: true, uid: STEP_UID, gid: STEP_GID, stdio: ['ignore', 'pipe', 'pipe'] });
  procs.set(f.id, child);
  let timedOut = false;
  let spawnError: string | undefined;
  const timer = setTimeout(() => {
    timedOut = true;
    killGroup(child);
  }, f.timeoutMs);
  const pump = (fd: 1 | 2, stream: NodeJS.ReadableStream) => {
    stream.on('data', (chunk: Buffer) => {
      if (!send({ t: 'out', id: f.id, fd, d: chunk.toString('base64') })) {
        stream.pause();
        void whenDrained().then(() => stream.resume());
      }
    });
  };
  pump(1, child.stdout as NodeJS.ReadableStream);
  pump(2, child.stderr as NodeJS.ReadableStream);
  child.on('error', (e: NodeJS.ErrnoException) => {
    spawnError = e.code === 'ENOENT' ? `command not found: ${cmd ?? ''}` : `cannot start ${cmd ?? ''}: ${e.code ?? e.message}`;
  });
  // The step ends when its command exits. Descendants it left behind go with its process
  // group; one that escaped the group (setsid) must not keep the step open through the
  // inherited pipes: after a short drain the pipes are cut (scrub kills it later).
  let reported = false;
  child.on('exit', () => {
    killGroup(child);
    setTimeout(() => {
      child.stdout?.destroy();
      child.stderr?.destroy();
      finish(child.exitCode, child.signalCode);
    }, 1000).unref();
  });
  child.on('close', (code, signal) => finish(code, signal));
  const finish = (code: number | null, signal: NodeJS.Signals | null) => {
    if (reported) return;
    reported = true;
    clearTimeout(timer);
    procs.delete(f.id);
    send({
      t: 'exit',
      id: f.id,
      code: spawnError ? 127 : (code ?? -1),
      ...(signal ? { signal } : {}),
      timedOut,
      ms: Math.round(performance.now() - t0),
      ...(spawnError ? { error: spawnError } : {}),
    });
  };
}

function killGroup(child: ChildProcess): void {
  if (child.pid === undefined) return;
  try {
    process.kill(-child.pid, 'SIGKILL');
  } catch {
    child.kill('SIGKILL');
  }
}

// ---- artifacts -------------------------------------------------------------------------
/**
 * Streams regular files under /workspace/out back to the host. Links and special files are
 * refused, never followed: a symlink or hard link could point at anything the step user can
 * read. Sizes are capped so a step cannot flood the host.
 */
async function collect(f: Extract<HostFrame, { t: 'collect' }>): Promise<void> {
  const root = join(WORKSPACE, OUT_DIR);
  const files: { path: string; bytes: number }[] = [];
  const refused: { path: string; reason: string }[] = [];
  let total = 0;
  const walk = async (dir: string): Promise<void> => {
    let names: string[];
    try {
      names = readdirSync(dir).sort();
    } catch {
      return;
    }
    for (const name of names) {
      const abs = join(dir, name);
      const rel = relative(root, abs);
      const st = lstatSync(abs);
      if (st.isSymbolicLink()) refused.push({ path: rel, reason: 'symlink' });
      else if (st.isDirectory()) await walk(abs);
      else if (!st.isFile()) refused.push({ path: rel, reason: 'not a regular file' });
      else if (st.nlink > 1) refused.push({ path: rel, reason: 'hard link' });
      else if (!realpathSync(abs).startsWith(root + sep)) refused.push({ path: rel, reason: 'outside the workspace' });
      else if (total + st.size > f.maxBytes) refused.push({ path: rel, reason: 'size limit' });
      else {
        total += st.size;
        await sendFile(f.id, rel, abs);
        files.push({ path: rel, bytes: st.size });
      }
    }
  };
  await walk(root);
  send({ t: 'collected', id: f.id, files, refused });
}

async function sendFile(id: string, rel: string, abs: string): Promise<void> {
  const fd = openSync(abs, fsc.O_RDONLY | fsc.O_NOFOLLOW);
  try {
    const buf = Buffer.alloc(FILE_CHUNK);
    for (;;) {
      const n = readSync(fd, buf, 0, FILE_CHUNK, null);
      const last = n < FILE_CHUNK;
      if (!send({ t: 'file', id, path: rel, d: buf.subarray(0, n).toString('base64'), last })) await whenDrained();
      if (last) return;
    }
  } finally {
    closeSync(fd);
  }
}

// ---- scrub -----------------------------------------------------------------------------
function otherPids(): number[] {
  const out: number[] = [];
  for (const name of readdirSync('/proc')) {
    const pid = Number(name);
    if (!Number.isInteger(pid) || pid === 1 || pid === process.pid) continue;
    // Zombies are already dead; init reaps them.
    try {
      if (/^\d+ \(.*\) Z /.test(readFileSync(`/proc/${pid}/stat`, 'utf8'))) continue;
    } catch {
      continue;
    }
    out.push(pid);
  }
  return out;
}

function entries(dir: string): string[] {
  try {
    return readdirSync(dir);
  } catch {
    return [];
  }
}

async function scrub(id: string, nonce: string): Promise<void> {
  for (const child of procs.values()) killGroup(child);
  procs.clear();
  for (const s of conns.values()) s.destroy();
  conns.clear();
  identity = new Map();
  // Anything else still alive (a daemonised grandchild) goes too.
  for (let round = 0; round < 20; round++) {
    const pids = otherPids();
    if (pids.length === 0) break;
    for (const pid of pids) {
      try {
        process.kill(pid, 'SIGKILL');
      } catch {
        // already gone
      }
    }
    await new Promise((r) => setTimeout(r, 25));
  }
  for (const dir of Object.values(SCRUB_DIRS)) {
    for (const name of entries(dir)) {
      try {
        rmSync(join(dir, name), { recursive: true, force: true });
      } catch (e) {
        diag(`scrub: cannot remove an entry of ${dir}: ${(e as NodeJS.ErrnoException).code ?? 'error'}`);
      }
    }
  }
  // The step owns these and may have opened them up; it gets them back private.
  for (const dir of STEP_DIRS) {
    try {
      chownSync(dir, STEP_UID, STEP_GID);
      chmodSync(dir, 0o700);
    } catch (e) {
      diag(`scrub: cannot reset ${dir}: ${(e as NodeJS.ErrnoException).code ?? 'error'}`);
    }
  }
  const proof: ScrubProof = {
    nonce,
    pid: process.pid,
    processes: otherPids(),
    workspace: entries(SCRUB_DIRS.workspace),
    tmp: entries(SCRUB_DIRS.tmp),
    mqueue: entries(SCRUB_DIRS.mqueue),
    shm: entries(SCRUB_DIRS.shm),
    identityKeys: identity.size,
    connections: conns.size,
  };
  if (!isCleanProof(proof)) diag('scrub left entries behind; the service will destroy this sandbox');
  send({ t: 'scrubbed', id, proof });
}

// ---- egress: a local HTTP proxy tunnelled through the control channel ------------------
const pendingConns = new Map<number, (ok: boolean, code?: string) => void>();

function ensureProxy(): void {
  if (proxy) return;
  proxy = createServer((sock) => handleProxyClient(sock));
  proxy.on('error', (e) => diag(`proxy: ${(e as NodeJS.ErrnoException).code ?? 'error'}`));
  proxy.listen(PROXY_PORT, '127.0.0.1');
}

/**
 * `CONNECT host:port` (HTTPS and any TCP) or an absolute-form HTTP request
 * (`GET http://host:port/path`): either way the service decides whether the step's grant
 * allows `host:port` and makes the connection from outside.
 */
function handleProxyClient(sock: Socket): void {
  let head = Buffer.alloc(0);
  const onData = (chunk: Buffer) => {
    head = Buffer.concat([head, chunk]);
    const end = head.indexOf('\r\n\r\n');
    if (end < 0) {
      if (head.length > 64 * 1024) sock.destroy();
      return;
    }
    sock.off('data', onData);
    sock.pause();
    const headText = head.subarray(0, end).toString('latin1');
    const rest = head.subarray(end + 4);
    const [line = '', ...headers] = headText.split('\r\n');
    const [method = '', target = ''] = line.split(' ');
    let host: string;
    let port: number;
    let preamble: Buffer | undefined;
    if (method === 'CONNECT') {
      const i = target.lastIndexOf(':');
      host = target.slice(0, i);
      port = Number(target.slice(i + 1));
    } else {
      let url: URL;
      try {
        url = new URL(target);
      } catch {
        sock.end('HTTP/1.1 400 Bad Request\r\nConnection: close\r\n\r\n');
        return;
      }
      if (url.protocol !== 'http:') {
        sock.end('HTTP/1.1 400 Bad Request\r\nConnection: close\r\n\r\n');
        return;
      }
      host = url.hostname;
      port = Number(url.port || 80);
      const kept = headers.filter((h) => !/^(proxy-|connection:)/i.test(h));
      preamble = Buffer.from(`${method} ${url.pathname}${url.search} HTTP/1.1\r\n${[...kept, 'Connection: close'].join('\r\n')}\r\n\r\n`, 'latin1');
    }
    const cid = nextCid++;
    pendingConns.set(cid, (ok, code) => {
      if (!ok) {
        sock.end(`HTTP/1.1 403 Forbidden\r\nContent-Type: text/plain\r\nConnection: close\r\n\r\negress denied: ${code ?? 'denied'}\n`);
        return;
      }
      conns.set(cid, sock);
      if (method === 'CONNECT') sock.write('HTTP/1.1 200 Connection Established\r\n\r\n');
      const forward = (b: Buffer) => {
        if (b.length > 0 && !send({ t: 'data', cid, d: b.toString('base64') })) {
          sock.pause();
          void whenDrained().then(() => sock.resume());
        }
      };
      if (preamble) forward(preamble);
      forward(rest);
      sock.on('data', forward);
      // Half-close travels as `end`; the far side may still answer until the socket closes.
      let ended = false;
      const end = () => {
        if (!ended) send({ t: 'end', cid });
        ended = true;
      };
      sock.on('end', end);
      sock.on('close', () => {
        conns.delete(cid);
        end();
      });
      sock.on('error', () => sock.destroy());
      sock.resume();
    });
    send({ t: 'conn', cid, host, port });
  };
  sock.on('data', onData);
  sock.on('error', () => sock.destroy());
}

// ---- mode 3b: credentials asked for at run time ----------------------------------------
let credentialChannel: Server | undefined;
const pendingCredentials = new Map<number, (f: Extract<HostFrame, { t: 'credential.ok' | 'credential.err' }>) => void>();

/**
 * A tool asks for a credential by name, with a reason. The request goes to the service and
 * on to the worker and the tenant's policy; what comes back is the value (which also joins
 * this sandbox's identity, so later commands of the step see it) or a typed refusal.
 */
function ensureCredentialChannel(): void {
  if (credentialChannel) return;
  credentialChannel = createHttpServer((req, res) => {
    const reply = (status: number, body: object) => {
      res.writeHead(status, { 'content-type': 'application/json' });
      res.end(JSON.stringify(body));
    };
    if (req.method !== 'POST' || req.url !== '/credential') return reply(404, { error: { code: 'not_found', message: 'POST /credential {"name","reason"}' } });
    let raw = '';
    req.on('data', (c: Buffer) => {
      raw += c.toString();
      if (raw.length > 16_384) req.destroy();
    });
    req.on('end', () => {
      let name = '';
      let reason = '';
      try {
        const b = JSON.parse(raw) as { name?: unknown; reason?: unknown };
        name = typeof b.name === 'string' ? b.name : '';
        reason = typeof b.reason === 'string' ? b.reason.slice(0, 500) : '';
      } catch {
        // answered below
      }
      if (!/^[A-Z_][A-Z0-9_]{0,63}$/.test(name)) return reply(400, { error: { code: 'invalid_argument', message: 'name must be an env-style key name (A-Z, 0-9, _)' } });
      const cid = nextCid++;
      pendingCredentials.set(cid, (f) => {
        if (f.t === 'credential.ok') {
          for (const [k, v] of Object.entries(f.env)) identity.set(k, v);
          reply(200, { name, value: f.env[name] ?? '' });
        } else reply(403, { error: { code: f.code, message: f.message } });
      });
      send({ t: 'credential', cid, name, reason });
    });
  });
  credentialChannel.on('error', (e) => diag(`credential channel: ${(e as NodeJS.ErrnoException).code ?? 'error'}`));
  credentialChannel.listen(CREDENTIALS_PORT, '127.0.0.1');
}

// ---- dispatch --------------------------------------------------------------------------
function handle(f: HostFrame): void {
  switch (f.t) {
    case 'hello':
      send({ t: 'ready', id: f.id, v: PROTOCOL_VERSION, pid: process.pid, uid: process.getuid?.() ?? -1 });
      return;
    case 'identity':
      identity = new Map(Object.entries(f.env));
      send({ t: 'ok', id: f.id });
      return;
    case 'exec':
      exec(f);
      return;
    case 'kill': {
      const child = procs.get(f.id);
      if (child) killGroup(child);
      send({ t: 'ok', id: f.id });
      return;
    }
    case 'collect':
      void collect(f).catch((e: unknown) => send({ t: 'error', id: f.id, code: 'collect_failed', message: (e as Error).message }));
      return;
    case 'scrub':
      void scrub(f.id, String(f.nonce)).catch((e: unknown) => send({ t: 'error', id: f.id, code: 'scrub_failed', message: (e as Error).message }));
      return;
    case 'credential.ok':
    case 'credential.err': {
      const waiter = pendingCredentials.get(f.cid);
      pendingCredentials.delete(f.cid);
      waiter?.(f);
      return;
    }
    case 'conn.ok':
    case 'conn.err': {
      const waiter = pendingConns.get(f.cid);
      pendingConns.delete(f.cid);
      waiter?.(f.t === 'conn.ok', f.t === 'conn.err' ? f.code : undefined);
      return;
    }
    case 'data':
      conns.get(f.cid)?.write(Buffer.from(f.d, 'base64'));
      return;
    case 'end': {
      const s = conns.get(f.cid);
      conns.delete(f.cid);
      s?.end();
      return;
    }
  }
}

/** One frame from the host: a line of JSON. */
function receive(line: string): void {
  let frame: HostFrame;
  try {
    frame = JSON.parse(line) as HostFrame;
  } catch {
    diag('ignored a frame that is not JSON');
    return;
  }
  try {
    handle(frame);
  } catch (e) {
    const id = 'id' in frame ? frame.id : '';
    send({ t: 'error', id, code: 'runner_error', message: (e as Error).message });
  }
}

process.stdin.on(
  'data',
  lineSplitter(receive, MAX_FRAME_BYTES, () => diag('a frame over the size limit: reading no more')),
);
// The service detaching is not the end: a re-attached service can scrub or reap us.
process.stdin.on('end', () => diag('control channel closed'));
// Both local channels are bound before any step runs, so no step can take their ports first.
ensureProxy();
ensureCredentialChannel();
const uid = process.getuid?.() ?? -1;
if (uid !== 0) diag(`running as uid ${uid}, not root: steps cannot be started as uid ${STEP_UID}, and the service will not use this sandbox`);
send({ t: 'ready', v: PROTOCOL_VERSION, pid: process.pid, uid });

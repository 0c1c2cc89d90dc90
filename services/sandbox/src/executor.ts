/**
 * Runs one sandboxed attempt: claim a sandbox under the attempt's deterministic name,
 * inject identity from a lease (modes 2 and 3), write the inputs, run the command or agent
 * with the step's timeout, stream its output to the destination (redacted), collect the
 * artifacts, answer with metadata only, and release the sandbox (scrub and prove, or
 * destroy).
 */
import { connect, type Socket } from 'node:net';
import { inSpan, SpanKind, type Logger } from '@capstan/kit';
import {
  CapstanError,
  ErrorCode,
  Mode,
  sandboxName,
  toErrorRecord,
  type CredentialAnswer,
  type CredentialRequest,
  type ErrorRecord,
  type SandboxExecRequest,
  type SandboxResult,
  type TenantId,
} from '@capstan/schemas';
import { SandboxConflictError, type SandboxBackend } from './backend.js';
import type { RunnerChannel, TunnelFrame } from './channel.js';
import type { LeaseRedeemer } from './leases.js';
import { Destination, Redactor } from './outputs.js';
import type { Claimed, WarmPool } from './pool.js';
import { OUT_DIR, type FileInput, type RunnerFrame } from './runner/protocol.js';
import { agentCommand } from './agent-adapters.js';

export interface ExecDeps {
  readonly backend: SandboxBackend;
  readonly pools: (mode: Mode, image: string | undefined) => WarmPool;
  readonly leases: LeaseRedeemer;
  readonly artifactsDir: string;
  readonly maxArtifactBytes: number;
  readonly log: Logger;
  /** Asks the worker that sent the step (mode 3b credentials); resolves with its answer. */
  readonly askWorker: (tenant: TenantId, subject: string, request: CredentialRequest, timeoutMs: number) => Promise<CredentialAnswer>;
}

export interface ExecProgress {
  accepted(sandbox: string, warm: boolean): void;
  output(fd: 1 | 2, bytes: number): void;
}

export type ExecOutcome = { result: SandboxResult; error?: ErrorRecord };

/** Extra time the service gives the runner beyond the step timeout before calling it lost. */
const RUNNER_GRACE_MS = 15_000;
const LOG_FILES = new Set(['stdout.log', 'stderr.log']);

export async function runAttempt(deps: ExecDeps, tenant: TenantId, req: SandboxExecRequest, progress: ExecProgress): Promise<ExecOutcome> {
  const name = sandboxName(req.runId, req.step, req.attempt);
  // The worker's request is data from the network: mode 1 gets no identity and no egress
  // whatever the request says (the workflow definition refuses both too).
  if (req.mode === Mode.Sandboxed && ((req.spec.secrets?.length ?? 0) > 0 || (req.spec.egress?.length ?? 0) > 0)) {
    throw new CapstanError(ErrorCode.InvalidArgument, `step ${req.step} is mode 1: no secrets and no egress`, false);
  }
  const log = deps.log.child({ tenant, runId: req.runId, step: req.step, attempt: req.attempt, sandbox: name });
  const pool = deps.pools(req.mode, req.spec.image);
  let claimed: Claimed;
  try {
    claimed = await pool.acquire(name);
  } catch (e) {
    if (e instanceof SandboxConflictError) {
      // Left by a service instance that died mid-attempt: that attempt is lost, and its
      // container must not run on. Remove it; the run retries with a new attempt.
      await deps.backend.remove(name).catch(() => {});
      throw new CapstanError(ErrorCode.SandboxLost, `attempt ${req.attempt} of step ${req.step} was already claimed by a sandbox that is no longer driven; it was removed`, true);
    }
    throw e;
  }
  progress.accepted(name, claimed.warm);
  const { channel } = claimed.sandbox;
  const dest = new Destination(deps.artifactsDir, [tenant, req.runId, req.step, String(req.attempt)]);
  let identityValues: string[] = [];
  let released = false;
  const release = () => {
    if (released) return;
    released = true;
    void pool.release(claimed).catch((e: unknown) => log.warn({ err: e }, 'sandbox release failed'));
  };
  try {
    const env: Record<string, string> = {};
    for (const { name: k, value } of req.spec.env ?? []) env[k] = value;
    const secrets = req.spec.secrets ?? [];
    if (secrets.length > 0) {
      const values = await deps.leases.redeem({ tenant, runId: req.runId, step: req.step, attempt: req.attempt, keys: secrets, ...(req.leaseId ? { leaseId: req.leaseId } : {}) });
      identityValues = Object.values(values);
      await channel.call({ t: 'identity', id: channel.newId(), env: values }, (f) => f.t === 'ok', 10_000);
      log.info({ keys: secrets }, 'identity injected');
    }
    const egress = new Set(req.spec.egress ?? []);
    if (req.mode !== Mode.Sandboxed && egress.size > 0) channel.onTunnel = tunnel(channel, egress, log);

    const files: FileInput[] = [{ path: 'input.json', d: Buffer.from(JSON.stringify({ input: req.input, previous: req.previous ?? null })).toString('base64') }];
    let argv = req.spec.command ?? [];
    if (req.mode === Mode.Agent && req.spec.agent) {
      const a = agentCommand(req.spec, Object.keys(env), secrets);
      argv = a.argv;
      files.push({ path: a.taskFile, d: Buffer.from(req.spec.task ?? '').toString('base64') });
    }

    const redact = { 1: new Redactor(identityValues), 2: new Redactor(identityValues) };
    if (req.mode === Mode.Agent && req.spec.jit) {
      channel.onCredential = (f) => {
        void grantCredential(deps, tenant, req, f.name, f.reason).then(
          (values) => {
            redact[1].add(Object.values(values));
            redact[2].add(Object.values(values));
            log.info({ key: f.name }, 'credential granted at run time');
            return channel.send({ t: 'credential.ok', cid: f.cid, env: values });
          },
          (e: unknown) => {
            const r = toErrorRecord(e, ErrorCode.SandboxFailed);
            log.info({ key: f.name, code: r.code }, 'credential refused');
            return channel.send({ t: 'credential.err', cid: f.cid, code: r.code, message: r.message });
          },
        ).catch(() => {});
      };
    }
    const counts = { 1: 0, 2: 0 };
    let exit: Extract<RunnerFrame, { t: 'exit' }> | undefined;
    const execId = channel.newId();
    // The tool call: the step's command (or agent) running in the sandbox, a hop of its own.
    const tool = req.mode === Mode.Agent && req.spec.agent ? `agent ${req.spec.agent}` : (argv[0] ?? 'command');
    await inSpan('sandbox', `tool ${tool}`, { kind: SpanKind.INTERNAL, attributes: { 'capstan.hop': 'tool', 'capstan.sandbox': name, 'capstan.tool': tool } }, async (span) => {
    await channel.call(
      { t: 'exec', id: execId, argv, env, files, timeoutMs: req.timeoutMs, egress: egress.size > 0 && req.mode !== Mode.Sandboxed, jit: req.mode === Mode.Agent && req.spec.jit === true },
      (f) => {
        if (f.t === 'out') {
          const bytes = Buffer.from(f.d, 'base64');
          counts[f.fd] += bytes.length;
          dest.append(f.fd === 1 ? 'stdout.log' : 'stderr.log', redact[f.fd].push(bytes));
          progress.output(f.fd, bytes.length);
          return false;
        }
        if (f.t === 'exit') {
          exit = f;
          return true;
        }
        return false;
      },
      req.timeoutMs + RUNNER_GRACE_MS,
    );
      const ex = exit as Extract<RunnerFrame, { t: 'exit' }> | undefined;
      span?.setAttributes({ 'capstan.tool.exit_code': ex?.code ?? -1, 'capstan.tool.timed_out': ex?.timedOut ?? false });
    });
    dest.append('stdout.log', redact[1].flush());
    dest.append('stderr.log', redact[2].flush());

    // Artifacts, streamed file by file; paths are checked again on this side.
    const refused: { path: string; reason: string }[] = [];
    await channel.call(
      { t: 'collect', id: channel.newId(), maxBytes: deps.maxArtifactBytes },
      (f) => {
        if (f.t === 'file') {
          const rel = `${OUT_DIR}/${f.path}`;
          if (!dest.append(rel, Buffer.from(f.d, 'base64')) && f.last) refused.push({ path: f.path, reason: 'outside the destination' });
          return false;
        }
        if (f.t === 'collected') {
          refused.push(...f.refused);
          return true;
        }
        return false;
      },
      60_000,
    );
    const artifacts = dest.close(LOG_FILES);
    const ex = exit as Extract<RunnerFrame, { t: 'exit' }> | undefined;
    const result: SandboxResult = {
      sandbox: name,
      warm: claimed.warm,
      exitCode: Math.max(-1, Math.min(255, ex?.code ?? -1)),
      ...(ex?.signal ? { signal: ex.signal } : {}),
      timedOut: ex?.timedOut ?? false,
      durationMs: ex?.ms ?? 0,
      stdoutBytes: counts[1],
      stderrBytes: counts[2],
      artifacts,
      refused,
      destination: dest.uri,
    };
    release();
    if (refused.length > 0) log.warn({ refused: refused.map((r) => `${r.path}: ${r.reason}`) }, 'artifacts refused');
    return { result, ...(ex ? failureOf(req, ex, counts[2]) : {}) };
  } catch (e) {
    dest.close(LOG_FILES);
    // Whatever went wrong mid-step, this sandbox's state is unknown: destroy, never reuse.
    released = true;
    await pool.destroy(claimed).catch(() => {});
    throw e;
  } finally {
    release();
  }
}

/**
 * Mode 3b: the worker decides (it asks the tenant's policy, and a person when the policy
 * says so) and has a lease issued for the one key; the service redeems it and the value
 * goes to the runner only.
 */
async function grantCredential(deps: ExecDeps, tenant: TenantId, req: SandboxExecRequest, name: string, reason: string): Promise<Record<string, string>> {
  if (!req.credentials) throw new CapstanError(ErrorCode.InvalidArgument, 'the worker gave this step no credential route', false);
  const answer = await deps.askWorker(tenant, req.credentials, { name, reason }, req.timeoutMs);
  if (!answer.granted) throw new CapstanError((answer.error?.code ?? ErrorCode.PolicyDenied) as ErrorCode, answer.error?.message ?? `credential ${name} was refused`, false);
  return deps.leases.redeem({ tenant, runId: req.runId, step: req.step, attempt: req.attempt, keys: [name], ...(answer.leaseId ? { leaseId: answer.leaseId } : {}) });
}

function failureOf(req: SandboxExecRequest, ex: Extract<RunnerFrame, { t: 'exit' }>, stderrBytes: number): { error?: ErrorRecord } {
  if (ex.timedOut) return { error: { code: ErrorCode.StepTimeout, message: `step ${req.step} attempt ${req.attempt} timed out after ${req.timeoutMs} ms in its sandbox`, retryable: true } };
  if (ex.error) return { error: { code: ErrorCode.SandboxExit, message: ex.error, retryable: false } };
  if (ex.code === 0) return {};
  const how = ex.signal ? `was killed by ${ex.signal}${ex.signal === 'SIGKILL' ? ' (a memory or process limit, or a kill)' : ''}` : `exited with code ${ex.code}`;
  return { error: { code: ErrorCode.SandboxExit, message: `the command ${how}; ${stderrBytes} bytes on stderr (stderr.log at the destination)`, retryable: true } };
}

/**
 * The host end of the egress tunnel: a `host:port` in the step's grant is connected from
 * here; anything else is refused. Granted and refused connections are logged by name.
 */
function tunnel(channel: RunnerChannel, allow: ReadonlySet<string>, log: Logger): (f: TunnelFrame) => void {
  const sockets = new Map<number, Socket>();
  return (f) => {
    if (f.t === 'conn') {
      const target = `${f.host}:${f.port}`;
      if (!allow.has(target)) {
        log.warn({ target }, 'egress denied');
        void channel.send({ t: 'conn.err', cid: f.cid, code: ErrorCode.EgressDenied }).catch(() => {});
        return;
      }
      const sock = connect(f.port, f.host);
      sockets.set(f.cid, sock);
      let connected = false;
      sock.once('connect', () => {
        connected = true;
        log.info({ target }, 'egress connected');
        void channel.send({ t: 'conn.ok', cid: f.cid }).catch(() => sock.destroy());
      });
      sock.on('data', (b: Buffer) => {
        sock.pause();
        channel.send({ t: 'data', cid: f.cid, d: b.toString('base64') }).then(() => sock.resume(), () => sock.destroy());
      });
      const end = () => {
        if (sockets.delete(f.cid)) void channel.send({ t: 'end', cid: f.cid }).catch(() => {});
      };
      sock.on('end', end);
      sock.on('close', end);
      sock.on('error', (e: NodeJS.ErrnoException) => {
        if (connected) return;
        sockets.delete(f.cid);
        void channel.send({ t: 'conn.err', cid: f.cid, code: e.code ?? 'connect_failed' }).catch(() => {});
      });
    } else if (f.t === 'data') {
      sockets.get(f.cid)?.write(Buffer.from(f.d, 'base64'));
    } else {
      sockets.get(f.cid)?.end();
    }
  };
}

/**
 * Runs one sandboxed attempt: claim a sandbox of the tenant's pool under the attempt's
 * deterministic name, claim and redeem the lease (modes 2 and 3) and inject the identity,
 * write the inputs, run the command or agent with the step's timeout, stream its output to
 * the destination (redacted, capped), collect the artifacts, answer with metadata only, and
 * release the sandbox (scrub and prove, or destroy). Text that comes out of the sandbox is
 * bounded and redacted before it reaches a result, a log line or the audit log.
 */
import { inSpan, SpanKind, type AuditSink, type Logger } from '@capstan/kit';
import {
  CapstanError,
  ErrorCode,
  Mode,
  sandboxName,
  toErrorRecord,
  ENV_NAME_PATTERN,
  type CredentialAnswer,
  type CredentialRequest,
  type ErrorRecord,
  type SandboxExecRequest,
  type SandboxResult,
  type TenantId,
} from '@capstan/schemas';
import { SandboxConflictError, type SandboxBackend } from './backend.js';
import { openTunnels, type EgressRules } from './egress.js';
import type { LeaseRedeemer } from './leases.js';
import { Destination, Redactor } from './outputs.js';
import { identityScope, type Claimed, type SandboxPools } from './pool.js';
import { OUT_DIR, type FileInput, type RunnerFrame } from './runner/protocol.js';
import { agentCommand } from './agent-adapters.js';
import { fromSandbox, TEXT_LIMITS } from './untrusted.js';

export interface ExecDeps {
  readonly backend: SandboxBackend;
  readonly pools: SandboxPools;
  /** The image a step gets: the built-in one, or one it names that the node allows. @throws CapstanError */
  readonly image: (requested: string | undefined) => string;
  readonly leases: LeaseRedeemer;
  readonly audit: AuditSink;
  readonly egress: EgressRules;
  /** This service in the audit log (`sandbox:<node>`). */
  readonly actor: string;
  readonly artifactsDir: string;
  readonly maxArtifactBytes: number;
  readonly maxOutputBytes: number;
  readonly log: Logger;
  /** Asks the worker that sent the step (mode 3b credentials); resolves with its answer. */
  readonly askWorker: (tenant: TenantId, subject: string, request: CredentialRequest, timeoutMs: number) => Promise<CredentialAnswer>;
}

export interface ExecProgress {
  accepted(sandbox: string, warm: boolean): void;
  output(fd: 1 | 2, bytes: number): void;
  /** Called once a sandbox is claimed, with what kills it (a cancel). */
  killable(kill: () => Promise<void>): void;
}

export type ExecOutcome = { result: SandboxResult; error?: ErrorRecord };

/** Extra time the service gives the runner beyond the step timeout before calling it lost. */
const RUNNER_GRACE_MS = 15_000;
const LOG_FILES = new Set(['stdout.log', 'stderr.log']);
const SIGNAL_PATTERN = /^SIG[A-Z0-9]{1,12}$/;

export class CancelledError extends CapstanError {
  constructor(message: string) {
    super(ErrorCode.Cancelled, message, false);
  }
}

export async function runAttempt(deps: ExecDeps, tenant: TenantId, req: SandboxExecRequest, progress: ExecProgress, signal: AbortSignal): Promise<ExecOutcome> {
  const name = sandboxName(req.runId, req.step, req.attempt);
  // The worker's request is data from the network: mode 1 gets no identity and no egress
  // whatever the request says (the workflow definition refuses both too).
  if (req.mode === Mode.Sandboxed && ((req.spec.secrets?.length ?? 0) > 0 || (req.spec.egress?.length ?? 0) > 0)) {
    throw new CapstanError(ErrorCode.InvalidArgument, `step ${req.step} is mode 1: no secrets and no egress`, false);
  }
  const cancelled = () => new CancelledError(`step ${req.step} attempt ${req.attempt} was cancelled`);
  if (signal.aborted) throw cancelled();
  const log = deps.log.child({ tenant, runId: req.runId, step: req.step, attempt: req.attempt, sandbox: name });
  const key = { tenant, mode: req.mode, image: deps.image(req.spec.image), scope: identityScope({ workflow: req.workflow, step: req.step, ...req.spec }) };
  let claimed: Claimed;
  try {
    claimed = await deps.pools.acquire(key, name);
  } catch (e) {
    if (e instanceof SandboxConflictError) {
      // Left by a service instance that died mid-attempt: that attempt is lost, and its
      // container must not run on. Remove it; the run retries with a new attempt.
      await deps.backend.remove(name).catch(() => {});
      throw new CapstanError(ErrorCode.SandboxLost, `attempt ${req.attempt} of step ${req.step} was already claimed by a sandbox that is no longer driven; it was removed`, true);
    }
    throw e;
  }
  const { channel } = claimed.sandbox;
  const kill = () => deps.backend.remove(claimed.sandbox.id);
  progress.killable(kill);
  if (signal.aborted) {
    await deps.pools.destroy(claimed).catch(() => {});
    throw cancelled();
  }
  progress.accepted(name, claimed.warm);
  const dest = new Destination(deps.artifactsDir, [tenant, req.runId, req.step, String(req.attempt)]);
  // Every identity value the step gets (from its lease, or granted at run time) joins these.
  const identity: string[] = [];
  const redactor = new Redactor([]);
  channel.redactor = redactor;
  let tunnels: ReturnType<typeof openTunnels> | undefined;
  try {
    const env: Record<string, string> = {};
    for (const { name: k, value } of req.spec.env ?? []) env[k] = value;
    const secrets = req.spec.secrets ?? [];
    if (secrets.length > 0) {
      // The lease's TTL starts now, with a container in hand: the queue and a cold start are behind us.
      const values = await deps.leases.redeem({
        tenant,
        runId: req.runId,
        step: req.step,
        attempt: req.attempt,
        keys: secrets,
        sandbox: name,
        ...(req.leaseId ? { leaseId: req.leaseId } : {}),
      });
      identity.push(...Object.values(values));
      redactor.add(Object.values(values));
      await channel.call({ t: 'identity', id: channel.newId(), env: values }, (f) => f.t === 'ok', 10_000);
      log.info({ keys: secrets }, 'identity injected');
    }
    const grant = new Set((req.spec.egress ?? []).map((g) => g.toLowerCase()));
    const egress = req.mode !== Mode.Sandboxed && grant.size > 0;
    if (egress) {
      tunnels = openTunnels(channel, grant, deps.egress, deps.audit, { tenant, runId: req.runId, step: req.step, attempt: req.attempt, sandbox: name, actor: deps.actor }, log);
      channel.onTunnel = tunnels.onFrame;
    }

    const files: FileInput[] = [{ path: 'input.json', d: Buffer.from(JSON.stringify({ input: req.input, previous: req.previous ?? null })).toString('base64') }];
    let argv = req.spec.command ?? [];
    if (req.mode === Mode.Agent && req.spec.agent) {
      const a = agentCommand(req.spec, Object.keys(env), secrets);
      argv = a.argv;
      files.push({ path: a.taskFile, d: Buffer.from(req.spec.task ?? '').toString('base64') });
    }

    const redact = { 1: new Redactor(identity), 2: new Redactor(identity) };
    if (req.mode === Mode.Agent && req.spec.jit) {
      channel.onCredential = (f) => {
        const reason = fromSandbox(f.reason, TEXT_LIMITS.reason, redactor);
        const keyName = typeof f.name === 'string' && ENV_NAME_PATTERN.test(f.name) ? f.name : undefined;
        const asked = keyName
          ? grantCredential(deps, tenant, req, keyName, reason, name)
          : Promise.reject(new CapstanError(ErrorCode.InvalidArgument, 'a credential name is an env-style key name', false));
        void asked
          .then(
            (values) => {
              redactor.add(Object.values(values));
              redact[1].add(Object.values(values));
              redact[2].add(Object.values(values));
              log.info({ key: keyName }, 'credential granted at run time');
              return channel.send({ t: 'credential.ok', cid: f.cid, env: values });
            },
            (e: unknown) => {
              const r = toErrorRecord(e, ErrorCode.SandboxFailed);
              log.info({ key: keyName, code: r.code }, 'credential refused');
              return channel.send({ t: 'credential.err', cid: f.cid, code: r.code, message: r.message });
            },
          )
          .catch(() => {});
      };
    }
    const counts = { 1: 0, 2: 0 };
    let outputCapped = false;
    let exit: Extract<RunnerFrame, { t: 'exit' }> | undefined;
    const execId = channel.newId();
    // The tool call: the step's command (or agent) running in the sandbox, a hop of its own.
    const tool = req.mode === Mode.Agent && req.spec.agent ? `agent ${req.spec.agent}` : (argv[0] ?? 'command');
    await inSpan('sandbox', `tool ${tool}`, { kind: SpanKind.INTERNAL, attributes: { 'capstan.hop': 'tool', 'capstan.sandbox': name, 'capstan.tool': tool } }, async (span) => {
      await channel.call(
        { t: 'exec', id: execId, argv, env, files, timeoutMs: req.timeoutMs, egress, jit: req.mode === Mode.Agent && req.spec.jit === true },
        (f) => {
          if (f.t === 'out') {
            const fd = f.fd === 2 ? 2 : 1;
            const bytes = Buffer.from(String(f.d), 'base64');
            counts[fd] += bytes.length;
            progress.output(fd, bytes.length);
            if (counts[1] + counts[2] > deps.maxOutputBytes) {
              if (!outputCapped) {
                outputCapped = true;
                log.warn({ cap: deps.maxOutputBytes }, 'output cap reached; killing the step');
                void channel.send({ t: 'kill', id: execId }).catch(() => {});
              }
              return false;
            }
            dest.append(fd === 1 ? 'stdout.log' : 'stderr.log', redact[fd].push(bytes));
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
          const rel = `${OUT_DIR}/${String(f.path)}`;
          if (!dest.append(rel, Buffer.from(String(f.d), 'base64')) && f.last) refused.push({ path: String(f.path), reason: 'outside the destination' });
          return false;
        }
        if (f.t === 'collected') {
          if (Array.isArray(f.refused)) refused.push(...(f.refused as { path: string; reason: string }[]).slice(0, 1000));
          return true;
        }
        return false;
      },
      60_000,
    );
    const artifacts = dest.close(LOG_FILES).map((a) => ({ ...a, path: fromSandbox(a.path, TEXT_LIMITS.path, redactor) }));
    const ex = exit as Extract<RunnerFrame, { t: 'exit' }> | undefined;
    const refusedClean = refused.map((r) => ({ path: fromSandbox(r.path, TEXT_LIMITS.path, redactor) || '?', reason: fromSandbox(r.reason, TEXT_LIMITS.code, redactor) }));
    const signalName = typeof ex?.signal === 'string' && SIGNAL_PATTERN.test(ex.signal) ? ex.signal : undefined;
    const result: SandboxResult = {
      sandbox: name,
      warm: claimed.warm,
      exitCode: Math.max(-1, Math.min(255, Math.trunc(Number(ex?.code ?? -1)) || 0)),
      ...(signalName ? { signal: signalName } : {}),
      timedOut: ex?.timedOut === true,
      durationMs: Math.max(0, Math.round(Number(ex?.ms) || 0)),
      stdoutBytes: counts[1],
      stderrBytes: counts[2],
      artifacts,
      refused: refusedClean,
      destination: dest.uri,
    };
    tunnels?.close();
    const failure = outputCapped
      ? {
          error: {
            code: ErrorCode.SandboxOutputLimit,
            message: `step ${req.step} wrote more than ${deps.maxOutputBytes} bytes of output and was killed; the first ${deps.maxOutputBytes} bytes are at the destination`,
            retryable: false,
          },
        }
      : ex
        ? failureOf(req, ex, counts[2], redactor)
        : {};
    // Only a step that ended cleanly, refused nothing and was refused nothing may leave its
    // sandbox to the next step of its pool; anything else is destroyed.
    const clean = !failure.error && result.exitCode === 0 && refused.length === 0 && (tunnels?.stats.refused ?? 0) === 0 && !tunnels?.stats.capped;
    // Off the step's path: the answer goes out while the runner scrubs.
    void deps.pools.release(claimed, clean).catch((e: unknown) => log.warn({ err: e }, 'sandbox release failed'));
    if (refusedClean.length > 0) log.warn({ refused: refusedClean.map((r) => `${r.path}: ${r.reason}`) }, 'artifacts refused');
    return { result, ...failure };
  } catch (e) {
    tunnels?.close();
    dest.close(LOG_FILES);
    // Whatever went wrong mid-step, this sandbox's state is unknown: destroy, never reuse.
    await deps.pools.destroy(claimed).catch(() => {});
    if (signal.aborted) throw cancelled();
    throw e;
  }
}

/**
 * Mode 3b: the worker decides (it asks the tenant's policy, and a person when the policy
 * says so) and has a lease issued for the one key; the service claims and redeems it and the
 * value goes to the runner only.
 */
async function grantCredential(deps: ExecDeps, tenant: TenantId, req: SandboxExecRequest, name: string, reason: string, sandbox: string): Promise<Record<string, string>> {
  if (!req.credentials) throw new CapstanError(ErrorCode.InvalidArgument, 'the worker gave this step no credential route', false);
  const answer = await deps.askWorker(tenant, req.credentials, { name, reason }, req.timeoutMs);
  if (!answer.granted) throw new CapstanError((answer.error?.code ?? ErrorCode.PolicyDenied) as ErrorCode, answer.error?.message ?? `credential ${name} was refused`, false);
  return deps.leases.redeem({ tenant, runId: req.runId, step: req.step, attempt: req.attempt, keys: [name], sandbox, ...(answer.leaseId ? { leaseId: answer.leaseId } : {}) });
}

function failureOf(req: SandboxExecRequest, ex: Extract<RunnerFrame, { t: 'exit' }>, stderrBytes: number, redactor: Redactor): { error?: ErrorRecord } {
  if (ex.timedOut === true)
    return { error: { code: ErrorCode.StepTimeout, message: `step ${req.step} attempt ${req.attempt} timed out after ${req.timeoutMs} ms in its sandbox`, retryable: true } };
  if (ex.error) return { error: { code: ErrorCode.SandboxExit, message: fromSandbox(ex.error, TEXT_LIMITS.message, redactor), retryable: false } };
  if (ex.code === 0) return {};
  const signal = typeof ex.signal === 'string' && SIGNAL_PATTERN.test(ex.signal) ? ex.signal : undefined;
  const how = signal ? `was killed by ${signal}${signal === 'SIGKILL' ? ' (a memory or process limit, or a kill)' : ''}` : `exited with code ${Number(ex.code)}`;
  return { error: { code: ErrorCode.SandboxExit, message: `the command ${how}; ${stderrBytes} bytes on stderr (stderr.log at the destination)`, retryable: true } };
}

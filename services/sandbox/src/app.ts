/**
 * Composition root of the sandbox service: answers `cap.<t>.svc.sandbox.exec` for every
 * tenant it serves, on that tenant's own connection (one queue group, so several nodes
 * share the load), runs each request through `runAttempt`, keeps the warm pools (per
 * tenant, see `pool.ts`), and answers `cap.<t>.svc.sandbox.cancel` (no queue group: every
 * instance hears it, the one holding the attempt kills it).
 *
 * Replies go to the request's inbox: `accepted`, a `beat` every `beatMs` while the step
 * runs (or waits for a slot), then one `done`. A worker that hears nothing for a few beats
 * reports the attempt `sandbox_lost`; a new attempt gets a new sandbox.
 *
 * On start it removes the containers of its node whose owning instance is gone (their
 * steps were lost with it, and nothing may run on undriven), and leaves those of a live
 * instance alone, even one sharing the node name by mistake.
 */
import { randomBytes } from 'node:crypto';
import { readFileSync } from 'node:fs';
import Docker from 'dockerode';
import type { Msg, Subscription } from '@nats-io/transport-node';
import {
  CapstanError,
  decode,
  encode,
  ErrorCode,
  parseCredentialAnswer,
  parseSandboxCancelRequest,
  parseSandboxExecRequest,
  Role,
  sandboxName,
  Subjects,
  toErrorRecord,
  type ErrorRecord,
  type SandboxCancelReply,
  type SandboxReply,
  type TenantId,
} from '@capstan/schemas';
import {
  addCollector,
  answerRequest,
  checkExecRequest,
  refuseRequest,
  createAuditSink,
  inSpan,
  metrics,
  openDatabase,
  serviceAccess,
  SpanKind,
  traceParentOf,
  unavailableAuditSink,
  withTraceHeader,
  type AuditSink,
  type Logger,
  type TenantAccess,
  type TenantConnection,
  type TenantFollower,
} from '@capstan/kit';
import type { Config } from './config.js';
import { nullBackend, SandboxUnavailableError, type SandboxBackend, type SandboxRuntime } from './backend.js';
import { dockerBackend } from './docker.js';
import { CancelledError, runAttempt, type ExecDeps } from './executor.js';
import { ensureSandboxImage } from './image.js';
import { fileLeases, natsLeases, type LeaseRedeemer } from './leases.js';
import { Labels, SandboxPools } from './pool.js';

export interface SandboxServiceOptions {
  /** Defaults to the configured backend. */
  readonly backend?: SandboxBackend;
  readonly leases?: LeaseRedeemer;
  /** Where egress connections are recorded before they open; `AUDIT_DATABASE_URL` otherwise. */
  readonly audit?: AuditSink;
  /** The built-in image; built when missing (Docker backend) unless given. */
  readonly image?: string;
}

export interface SandboxService {
  start(): Promise<void>;
  stop(): Promise<void>;
  /** This instance's id, carried by its containers. */
  readonly instance: string;
  /** Resolves once the backend is known usable (or not) and the node is reaped. */
  readonly ready: Promise<void>;
  /** After `ready`: why no sandbox can run here, or undefined when they can. */
  unavailable(): string | undefined;
  /** After `ready`: the built-in image. */
  image(): string | undefined;
  /** After `ready`: the container runtime sandboxes run under. */
  runtime(): SandboxRuntime | undefined;
  stats(): { running: number; waiting: number; fresh: number; idle: Record<string, number> };
}

const QUEUE = 'sandbox';
/** A cancel that found nothing is remembered this long, so an exec request it overtook is refused. */
const CANCEL_MEMORY_MS = 60_000;
/** An instance that does not hold the attempt answers a cancel this late, so the holder's answer comes first. */
const NOT_FOUND_DELAY_MS = 500;

interface Attempt {
  readonly tenant: TenantId;
  readonly controller: AbortController;
  kill?: () => Promise<void>;
}

export async function createSandboxService(config: Config, log: Logger, opts: SandboxServiceOptions = {}): Promise<SandboxService> {
  const instance = randomBytes(4).toString('hex');
  const owner = ownerId();
  const docker = new Docker({ socketPath: config.dockerSocket });
  const backend = opts.backend ?? (config.backend === 'docker' ? dockerBackend(docker) : nullBackend('SANDBOX_BACKEND=none: this node runs no sandboxes'));
  // A secrets file (tests) or the secrets-lease service.
  const leases = opts.leases ?? (config.secretsFile ? fileLeases(config.secretsFile) : natsLeases((t) => conns.get(t)));
  const audit =
    opts.audit ??
    (config.auditDatabaseUrl
      ? createAuditSink(await openDatabase({ url: config.auditDatabaseUrl, log, poolSize: 4 }), { closeDatabase: true })
      : unavailableAuditSink('this sandbox service has no audit store (set AUDIT_DATABASE_URL): egress is refused, never opened unaudited'));
  let image = opts.image;
  let runtime: SandboxRuntime | undefined;
  /** Why nothing can run, once the backend has been tried. */
  let unavailable: string | undefined;
  let pools: SandboxPools | undefined;
  let access: TenantAccess | undefined;
  let follower: TenantFollower | undefined;
  /** One connection per tenant served: each tenant is its own account. */
  const conns = new Map<TenantId, TenantConnection>();
  const subs: Subscription[] = [];
  let running = 0;
  const waiting: (() => void)[] = [];
  const inflight = new Set<Promise<void>>();
  const attempts = new Map<string, Attempt>();
  const cancelledEarly = new Map<string, number>();
  let readyResolve!: () => void;
  const ready = new Promise<void>((r) => (readyResolve = r));
  const labels = { [Labels.Owner]: owner };

  function imageFor(requested: string | undefined): string {
    const ref = requested ?? image;
    if (!ref) throw new SandboxUnavailableError('the sandbox image is not ready');
    if (requested && requested !== image && !config.images.includes(requested)) {
      throw new CapstanError(ErrorCode.InvalidArgument, `image ${requested} is not allowed on this node (SANDBOX_IMAGES)`, false);
    }
    return ref;
  }

  /** Removes every container of this node whose owning instance is gone. */
  async function reap(): Promise<number> {
    const found = await backend.list({ [Labels.Sandbox]: '1', [Labels.Node]: config.node });
    const others = found.filter((c) => c.labels[Labels.Instance] !== instance);
    const live = others.filter((c) => ownerAlive(c.labels[Labels.Owner]));
    const stale = others.filter((c) => !live.includes(c));
    await Promise.all(stale.map((c) => backend.remove(c.id)));
    if (stale.length > 0) log.info({ removed: stale.length }, 'removed sandboxes left by an instance that is gone');
    if (live.length > 0)
      log.warn(
        { node: config.node, containers: live.length },
        'another live sandbox service uses this SANDBOX_NODE; its sandboxes are left alone (give each service its own node name)',
      );
    return stale.length;
  }

  /** gVisor where it is registered and starts a sandbox; runc otherwise (with a warning), unless runsc was asked for. */
  async function chooseRuntime(ref: string): Promise<SandboxRuntime> {
    if (config.runtime === 'runc' || backend.kind !== 'docker') return 'runc';
    const registered = await backend.runtimes();
    let why: string | undefined;
    if (!registered.includes('runsc')) why = 'the engine has no runsc runtime registered (infra/docker/ensure-runsc.sh installs and registers it)';
    else {
      try {
        const probe = await backend.create({
          name: `cap-probe-${config.node}-${instance}`,
          image: ref,
          labels: { ...labels, [Labels.Sandbox]: '1', [Labels.Node]: config.node, [Labels.Instance]: instance },
          limits: config.limits,
          runtime: 'runsc',
        });
        await backend.remove(probe.id);
        return 'runsc';
      } catch (e) {
        why = `a gVisor sandbox did not start: ${CapstanError.is(e) ? e.message : String(e)}`;
      }
    }
    if (config.runtime === 'runsc') throw new SandboxUnavailableError(`SANDBOX_RUNTIME=runsc, but ${why}`);
    log.warn({ reason: why }, "gVisor (runsc) is not usable here: sandboxes run under runc, with the kernel's isolation only (set SANDBOX_RUNTIME=runc to say this is intended)");
    return 'runc';
  }

  async function prepare(): Promise<void> {
    try {
      await backend.ping();
      await reap();
      if (!image && backend.kind === 'docker') {
        log.info('checking the sandbox image (built on first use; this can take a minute)');
        image = (await ensureSandboxImage(docker, { log, root: config.imageDir })).ref;
      }
      runtime = await chooseRuntime(image ?? '');
      pools = new SandboxPools({
        backend,
        runtime,
        node: config.node,
        instance,
        labels,
        min: config.poolMin,
        max: config.poolMax,
        maxUses: config.maxUses,
        idleMs: config.idleMs,
        identityReuse: config.identityReuse,
        limits: config.limits,
        log,
      });
      log.info({ backend: backend.kind, runtime, image, node: config.node, instance }, 'sandboxes ready');
      if (image) pools.warm(image);
    } catch (e) {
      unavailable = CapstanError.is(e) ? e.message : String(e);
      log.error({ code: CapstanError.is(e) ? e.code : undefined, reason: unavailable }, 'sandboxes unavailable: sandboxed steps will fail until this service restarts');
    } finally {
      readyResolve();
    }
  }

  /** Waits for a slot; false when the attempt was cancelled while it waited. */
  async function slot(signal: AbortSignal): Promise<boolean> {
    if (running < config.concurrency) {
      running++;
      return true;
    }
    const turn = await new Promise<boolean>((r) => {
      const take = () => r(true);
      waiting.push(take);
      signal.addEventListener(
        'abort',
        () => {
          const i = waiting.indexOf(take);
          if (i >= 0) waiting.splice(i, 1);
          r(false);
        },
        { once: true },
      );
    });
    if (turn) running++;
    return turn;
  }
  function freeSlot(): void {
    running--;
    waiting.shift()?.();
  }

  async function serve(tenant: TenantId, msg: Msg): Promise<void> {
    if (!msg.reply) return;
    const answer = (r: SandboxReply) => msg.respond(encode(r));
    const fail = (error: ErrorRecord) => answer({ type: 'done', error });
    let req;
    try {
      req = parseSandboxExecRequest(decode(msg.data));
    } catch (e) {
      fail({ ...toErrorRecord(e, ErrorCode.SchemaViolation), retryable: false });
      return;
    }
    try {
      // Nothing runs but the orchestrator's signed work item, exactly as signed.
      checkExecRequest(req, conns.get(tenant)?.account);
    } catch (e) {
      log.warn(
        { tenant, runId: req.runId, step: req.step, attempt: req.attempt, code: CapstanError.is(e) ? e.code : undefined, reason: CapstanError.is(e) ? e.message : undefined },
        'sandbox request rejected',
      );
      fail({ ...toErrorRecord(e, ErrorCode.WorkRejected), retryable: false });
      return;
    }
    const name = sandboxName(req.runId, req.step, req.attempt);
    if (cancelledEarly.delete(name)) {
      fail(new CancelledError(`step ${req.step} attempt ${req.attempt} was cancelled before it reached a sandbox`).toRecord());
      return;
    }
    if (attempts.has(name)) {
      fail({ code: ErrorCode.SandboxConflict, message: `attempt ${req.attempt} of step ${req.step} is already running here`, retryable: false });
      return;
    }
    const attempt: Attempt = { tenant, controller: new AbortController() };
    attempts.set(name, attempt);
    const counts = { 1: 0, 2: 0 };
    const beat = setInterval(() => answer({ type: 'beat', stdoutBytes: counts[1], stderrBytes: counts[2] }), config.beatMs);
    let slotted = false;
    const attributes = {
      'capstan.tenant': tenant,
      'capstan.run_id': req.runId,
      'capstan.step': req.step,
      'capstan.attempt': req.attempt,
      'capstan.mode': req.mode,
      'capstan.hop': 'sandbox',
    };
    // The worker's step span is the parent (the request's traceparent).
    await inSpan('sandbox', `sandbox ${req.step}#${req.attempt}`, { kind: SpanKind.SERVER, parent: traceParentOf(msg.headers), attributes }, async (span) => {
      try {
        slotted = await slot(attempt.controller.signal);
        if (!slotted) throw new CancelledError(`step ${req.step} attempt ${req.attempt} was cancelled while it waited for a sandbox`);
        await ready;
        if (unavailable || !pools) throw new SandboxUnavailableError(`no sandbox can run on node ${config.node}: ${unavailable ?? 'not ready'}`);
        const deps: ExecDeps = {
          backend,
          pools,
          image: imageFor,
          leases,
          audit,
          egress: config.egress,
          actor: `sandbox:${config.node}`,
          artifactsDir: config.artifactsDir,
          maxArtifactBytes: config.maxArtifactBytes,
          maxOutputBytes: config.maxOutputBytes,
          log,
          askWorker: async (t, subject, request, timeoutMs) => {
            const nc = conns.get(t)?.nc;
            if (!nc) throw new SandboxUnavailableError('not connected');
            // Only a worker's credential route of this tenant: the request names where to ask.
            if (!subject.startsWith(Subjects.allJitRoutes(t).slice(0, -1)))
              throw new CapstanError(ErrorCode.InvalidArgument, "the credential route is not one of this tenant's", false);
            const headers = withTraceHeader();
            const m = await nc.request(subject, encode(request), { timeout: timeoutMs, ...(headers ? { headers } : {}) });
            return parseCredentialAnswer(decode(m.data));
          },
        };
        const { result, error } = await runAttempt(
          deps,
          tenant,
          req,
          {
            accepted: (sandbox, warm) => {
              metrics.sandboxClaims.inc({ tenant, warm: String(warm) });
              span?.setAttributes({ 'capstan.sandbox': sandbox, 'capstan.sandbox.warm': warm });
              answer({ type: 'accepted', sandbox, warm });
            },
            output: (fd, bytes) => (counts[fd] += bytes),
            killable: (kill) => (attempt.kill = kill),
          },
          attempt.controller.signal,
        );
        answer({ type: 'done', result, ...(error ? { error } : {}) });
      } catch (e) {
        if (!CapstanError.is(e)) log.error({ err: e, runId: req.runId, step: req.step }, 'sandboxed step failed unexpectedly');
        fail(toErrorRecord(e, ErrorCode.SandboxFailed));
      } finally {
        clearInterval(beat);
        attempts.delete(name);
        if (slotted) freeSlot();
      }
    });
  }

  /** Kills the attempt named in a cancel if this instance holds it. */
  async function cancel(tenant: TenantId, msg: Msg): Promise<void> {
    const respond = (r: SandboxCancelReply) => (msg.reply ? answerRequest(msg, r) : undefined);
    let name: string;
    try {
      const req = parseSandboxCancelRequest(decode(msg.data));
      name = sandboxName(req.runId, req.step, req.attempt);
    } catch (e) {
      // kit's one convention: a refusal is its code and message in headers (rpc.ts).
      const r = toErrorRecord(e, ErrorCode.SchemaViolation);
      if (msg.reply) refuseRequest(msg, r.code, r.message);
      return;
    }
    const a = attempts.get(name);
    // A tenant cancels only its own attempts.
    if (!a || a.tenant !== tenant) {
      const now = Date.now();
      for (const [n, until] of cancelledEarly) if (until < now) cancelledEarly.delete(n);
      cancelledEarly.set(name, now + CANCEL_MEMORY_MS);
      setTimeout(() => respond({ cancelled: false }), NOT_FOUND_DELAY_MS).unref();
      return;
    }
    const t0 = performance.now();
    a.controller.abort();
    try {
      await a.kill?.();
    } catch (e) {
      log.warn({ err: e, sandbox: name }, 'cancel: the sandbox could not be removed');
    }
    const killMs = Math.round(performance.now() - t0);
    log.info({ tenant, sandbox: name, killMs }, 'attempt cancelled');
    respond({ cancelled: true, sandbox: name, killMs });
  }

  const track = (p: Promise<void>) => {
    inflight.add(p);
    void p.finally(() => inflight.delete(p));
  };

  const stats = () => ({ running, waiting: waiting.length, fresh: pools?.freshCount ?? 0, idle: pools?.idle() ?? {} });
  let removeCollector: (() => void) | undefined;

  return {
    instance,
    ready,
    unavailable: () => unavailable,
    image: () => image,
    runtime: () => runtime,
    stats,
    async start() {
      removeCollector = addCollector(() => {
        const s = stats();
        metrics.sandboxRunning.set(s.running);
        metrics.sandboxWaiting.set(s.waiting);
        for (const [pool, idle] of Object.entries(s.idle)) metrics.sandboxIdle.set({ pool }, idle);
      });
      access = await serviceAccess(Role.Sandbox, config, `sandbox-${config.node}-${instance}`, log);
      // A node may be dedicated to some tenants (CAPSTAN_TENANTS): it then serves only them.
      follower = await access.follow(
        config.tenants,
        config.discoveryMs,
        async (tc) => {
          const t = tc.tenant;
          conns.set(t, tc);
          subs.push(
            tc.nc.subscribe(Subjects.sandboxExec(t), {
              queue: QUEUE,
              callback: (err, msg) => void (err || track(serve(t, msg).catch((e: unknown) => log.error({ err: e }, 'sandbox request failed')))),
            }),
          );
          subs.push(
            tc.nc.subscribe(Subjects.sandboxCancel(t), {
              callback: (err, msg) => void (err || track(cancel(t, msg).catch((e: unknown) => log.error({ err: e }, 'sandbox cancel failed')))),
            }),
          );
          await tc.nc.flush();
        },
        log,
      );
      void prepare();
      log.info({ node: config.node, instance }, 'sandbox service started');
    },
    async stop() {
      removeCollector?.();
      follower?.stop();
      for (const s of subs) s.unsubscribe();
      await Promise.allSettled([...inflight]);
      await pools?.stop();
      await audit.close();
      await access?.close();
    },
  };
}

/** This process, as the reaper of another instance recognises it: `<boot id>/<pid>/<start time>`. */
function ownerId(pid = process.pid): string {
  return `${bootId()}/${pid}/${startTime(pid) ?? 0}`;
}

/** Whether the process named by an owner label runs on this machine now. Unlabelled sandboxes have no owner to wait for. */
function ownerAlive(label: string | undefined): boolean {
  const [boot, pid, started] = (label ?? '').split('/');
  if (!boot || boot !== bootId() || !pid || !/^\d+$/.test(pid)) return false;
  return String(startTime(Number(pid)) ?? '') === started;
}

function bootId(): string {
  try {
    return readFileSync('/proc/sys/kernel/random/boot_id', 'utf8').trim();
  } catch {
    return 'unknown-boot';
  }
}

/** A process's start time in clock ticks since boot (field 22 of /proc/<pid>/stat): with the pid, it names the process uniquely. */
function startTime(pid: number): number | undefined {
  try {
    const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
    // The command name (field 2) may hold spaces and parentheses: count from its end.
    const fields = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
    const v = Number(fields[19]);
    return Number.isFinite(v) ? v : undefined;
  } catch {
    return undefined;
  }
}

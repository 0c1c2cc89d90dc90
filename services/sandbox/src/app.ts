/**
 * Composition root of the sandbox service: answers `cap.<t>.svc.sandbox.exec` for every
 * tenant (one queue group, so several nodes share the load), runs each request through
 * `runAttempt`, and keeps one warm pool per image and mode.
 *
 * Replies go to the request's inbox: `accepted`, a `beat` every `beatMs` while the step
 * runs (or waits for a slot), then one `done`. A worker that hears nothing for a few beats
 * reports the attempt `sandbox_lost`; a new attempt gets a new sandbox.
 *
 * On start it removes every container of its node left by an earlier instance: their
 * steps were lost with that instance, and nothing may run on undriven.
 */
import { randomBytes } from 'node:crypto';
import Docker from 'dockerode';
import type { Msg, Subscription } from '@nats-io/transport-node';
import {
  CapstanError,
  decode,
  encode,
  ErrorCode,
  Mode,
  parseCredentialAnswer,
  parseSandboxExecRequest,
  Role,
  Subjects,
  toErrorRecord,
  type ErrorRecord,
  type SandboxReply,
  type TenantId,
} from '@capstan/schemas';
import { addCollector, inSpan, metrics, serviceAccess, SpanKind, traceParentOf, withTraceHeader, type Logger, type TenantAccess, type TenantConnection, type TenantFollower } from '@capstan/kit';
import type { Config } from './config.js';
import { nullBackend, SandboxUnavailableError, type SandboxBackend } from './backend.js';
import { dockerBackend } from './docker.js';
import { runAttempt, type ExecDeps } from './executor.js';
import { ensureSandboxImage } from './image.js';
import { fileLeases, natsLeases, type LeaseRedeemer } from './leases.js';
import { Labels, WarmPool } from './pool.js';

export interface SandboxServiceOptions {
  /** Defaults to the configured backend. */
  readonly backend?: SandboxBackend;
  readonly leases?: LeaseRedeemer;
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
  stats(): { running: number; waiting: number; idle: Record<string, number> };
}

const QUEUE = 'sandbox';

export function createSandboxService(config: Config, log: Logger, opts: SandboxServiceOptions = {}): Promise<SandboxService> {
  const instance = randomBytes(4).toString('hex');
  const docker = new Docker({ socketPath: config.dockerSocket });
  const backend = opts.backend ?? (config.backend === 'docker' ? dockerBackend(docker) : nullBackend('SANDBOX_BACKEND=none: this node runs no sandboxes'));
  // A secrets file (development, tests) or the secrets-lease service.
  const leases = opts.leases ?? (config.secretsFile ? fileLeases(config.secretsFile) : natsLeases((t) => conns.get(t)?.nc));
  let image = opts.image;
  /** Why nothing can run, once the backend has been tried. */
  let unavailable: string | undefined;
  const pools = new Map<string, WarmPool>();
  let access: TenantAccess | undefined;
  let follower: TenantFollower | undefined;
  /** One connection per tenant served: each tenant is its own account. */
  const conns = new Map<TenantId, TenantConnection>();
  const subs: Subscription[] = [];
  let running = 0;
  const waiting: (() => void)[] = [];
  const inflight = new Set<Promise<void>>();
  let readyResolve!: () => void;
  const ready = new Promise<void>((r) => (readyResolve = r));

  function poolFor(mode: Mode, requested: string | undefined): WarmPool {
    const ref = requested ?? image;
    if (!ref) throw new SandboxUnavailableError('the sandbox image is not ready');
    if (requested && requested !== image && !config.images.includes(requested)) {
      throw new CapstanError(ErrorCode.InvalidArgument, `image ${requested} is not allowed on this node (SANDBOX_IMAGES)`, false);
    }
    const key = `m${mode}-${ref.replace(/[^a-zA-Z0-9]/g, '').slice(-12)}`;
    let pool = pools.get(key);
    if (!pool) {
      pool = new WarmPool({ backend, image: ref, key, node: config.node, instance, min: config.poolMin, max: config.poolMax, maxUses: config.maxUses, limits: config.limits, log });
      pools.set(key, pool);
      pool.fill();
    }
    return pool;
  }

  const deps: ExecDeps = {
    backend,
    pools: poolFor,
    leases,
    artifactsDir: config.artifactsDir,
    maxArtifactBytes: config.maxArtifactBytes,
    log,
    async askWorker(tenant, subject, request, timeoutMs) {
      const nc = conns.get(tenant)?.nc;
      if (!nc) throw new SandboxUnavailableError('not connected');
      // Only a worker's credential route of this tenant: the request names where to ask.
      if (!subject.startsWith(Subjects.allJitRoutes(tenant).slice(0, -1))) throw new CapstanError(ErrorCode.InvalidArgument, 'the credential route is not one of this tenant\'s', false);
      const headers = withTraceHeader();
      const m = await nc.request(subject, encode(request), { timeout: timeoutMs, ...(headers ? { headers } : {}) });
      return parseCredentialAnswer(decode(m.data));
    },
  };

  /** Removes every container of this node that an earlier instance left. */
  async function reap(): Promise<number> {
    const found = await backend.list({ [Labels.Sandbox]: '1', [Labels.Node]: config.node });
    const stale = found.filter((c) => c.labels[Labels.Instance] !== instance);
    await Promise.all(stale.map((c) => backend.remove(c.id)));
    if (stale.length > 0) log.info({ removed: stale.length }, 'removed sandboxes left by an earlier instance');
    return stale.length;
  }

  async function prepare(): Promise<void> {
    try {
      await backend.ping();
      await reap();
      if (!image && backend.kind === 'docker') {
        log.info('checking the sandbox image (built on first use; this can take a minute)');
        image = (await ensureSandboxImage(docker, { log })).ref;
      }
      log.info({ backend: backend.kind, image, node: config.node, instance }, 'sandboxes ready');
      // Warm the modes most steps use.
      poolFor(Mode.Sandboxed, undefined);
      poolFor(Mode.SandboxedWithLease, undefined);
    } catch (e) {
      unavailable = CapstanError.is(e) ? e.message : String(e);
      log.error({ code: CapstanError.is(e) ? e.code : undefined, reason: unavailable }, 'sandboxes unavailable: sandboxed steps will fail until this service restarts');
    } finally {
      readyResolve();
    }
  }

  async function slot(): Promise<void> {
    if (running < config.concurrency) {
      running++;
      return;
    }
    await new Promise<void>((r) => waiting.push(r));
    running++;
  }
  function freeSlot(): void {
    running--;
    waiting.shift()?.();
  }

  async function serve(tenant: TenantId, msg: Msg): Promise<void> {
    const reply = msg.reply;
    if (!reply) return;
    const answer = (r: SandboxReply) => msg.respond(encode(r));
    const fail = (error: ErrorRecord) => answer({ type: 'done', error });
    let req;
    try {
      req = parseSandboxExecRequest(decode(msg.data));
    } catch (e) {
      fail({ ...toErrorRecord(e, ErrorCode.SchemaViolation), retryable: false });
      return;
    }
    const counts = { 1: 0, 2: 0 };
    const beat = setInterval(() => answer({ type: 'beat', stdoutBytes: counts[1], stderrBytes: counts[2] }), config.beatMs);
    const attributes = { 'capstan.tenant': tenant, 'capstan.run_id': req.runId, 'capstan.step': req.step, 'capstan.attempt': req.attempt, 'capstan.mode': req.mode, 'capstan.hop': 'sandbox' };
    // The worker's step span is the parent (the request's traceparent).
    await inSpan('sandbox', `sandbox ${req.step}#${req.attempt}`, { kind: SpanKind.SERVER, parent: traceParentOf(msg.headers), attributes }, async (span) => {
      await slot();
      try {
        await ready;
        if (unavailable) throw new SandboxUnavailableError(`no sandbox can run on node ${config.node}: ${unavailable}`);
        const { result, error } = await runAttempt(deps, tenant, req, {
          accepted: (sandbox, warm) => {
            metrics.sandboxClaims.inc({ tenant, warm: String(warm) });
            span?.setAttributes({ 'capstan.sandbox': sandbox, 'capstan.sandbox.warm': warm });
            answer({ type: 'accepted', sandbox, warm });
          },
          output: (fd, bytes) => (counts[fd] += bytes),
        });
        answer({ type: 'done', result, ...(error ? { error } : {}) });
      } catch (e) {
        if (!CapstanError.is(e)) log.error({ err: e, runId: req.runId, step: req.step }, 'sandboxed step failed unexpectedly');
        fail(toErrorRecord(e, ErrorCode.SandboxFailed));
      } finally {
        clearInterval(beat);
        freeSlot();
      }
    });
  }

  const stats = () => ({ running, waiting: waiting.length, idle: Object.fromEntries([...pools].map(([k, p]) => [k, p.idleCount])) });
  let removeCollector: (() => void) | undefined;

  return Promise.resolve({
    instance,
    ready,
    unavailable: () => unavailable,
    image: () => image,
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
      follower = await access.follow(config.tenants, config.discoveryMs, async (tc) => {
        conns.set(tc.tenant, tc);
        subs.push(
          tc.nc.subscribe(Subjects.sandboxExec(tc.tenant), {
            queue: QUEUE,
            callback: (err, msg) => {
              if (err) return;
              const p = serve(tc.tenant, msg).catch((e: unknown) => log.error({ err: e }, 'sandbox request failed'));
              inflight.add(p);
              void p.finally(() => inflight.delete(p));
            },
          }),
        );
        await tc.nc.flush();
      }, log);
      void prepare();
      log.info({ node: config.node, instance }, 'sandbox service started');
    },
    async stop() {
      removeCollector?.();
      follower?.stop();
      for (const s of subs) s.unsubscribe();
      await Promise.allSettled([...inflight]);
      await Promise.allSettled([...pools.values()].map((p) => p.stop()));
      await access?.close();
    },
  });
}

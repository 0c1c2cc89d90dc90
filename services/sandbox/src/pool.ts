/**
 * Warm sandboxes, kept so that no sandbox ever serves two tenants.
 *
 * - **Fresh** sandboxes (per image) have run nothing: created ahead of time, any tenant's
 *   first claim may take one. `min` of them are kept ready.
 * - **Used** sandboxes go back only to the pool of the key they served: tenant, mode, image
 *   and identity scope. A mode-1 sandbox is reused by the same tenant's mode-1 steps; a
 *   sandbox that held an identity (modes 2–3) only by steps of the same identity scope (same
 *   workflow, step, secret names and egress) when the service allows it, and by default
 *   never (`keyOf` answers undefined: destroyed after one step).
 *
 * Acquiring renames the sandbox to the attempt's deterministic name, which is the claim: the
 * engine refuses a second sandbox by that name, so a retried claim cannot run an attempt
 * twice. Releasing asks the tool runner to scrub and checks its proof from every side it
 * can: the proof answers this scrub's nonce, comes from the runner that said `ready` at
 * start, lists nothing left, the channel never carried a frame outside the protocol, and the
 * engine (outside the sandbox, out of the step's reach) sees the same container still
 * running, never restarted or OOM-killed. Anything missing, late or inconsistent destroys
 * the sandbox.
 */
import { createHash, randomBytes } from 'node:crypto';
import type { Logger } from '@capstan/kit';
import { Mode, type TenantId } from '@capstan/schemas';
import { isCleanProof, type ScrubProof } from './runner/protocol.js';
import { fromSandbox, TEXT_LIMITS } from './untrusted.js';
import { SandboxConflictError, type BackendSandbox, type SandboxBackend, type SandboxLimits, type SandboxRuntime } from './backend.js';

export const Labels = {
  Sandbox: 'capstan.sandbox',
  Node: 'capstan.sandbox.node',
  Instance: 'capstan.sandbox.instance',
  /** Which process owns the sandbox (`<boot id>/<pid>/<start time>`): the reaper leaves a live owner's sandboxes alone. */
  Owner: 'capstan.sandbox.owner',
} as const;

/** What a sandbox may be shared by. */
export interface PoolKey {
  readonly tenant: TenantId;
  readonly mode: Mode;
  readonly image: string;
  /** Modes 2–3: the identity scope (see {@link identityScope}). Mode 1: ignored. */
  readonly scope: string;
}

/** Whether sandboxes that held an identity are reused: never (the default), or by the same identity scope only. */
export type IdentityReuse = 'never' | 'scope';

export interface PoolOptions {
  readonly backend: SandboxBackend;
  readonly runtime: SandboxRuntime;
  readonly node: string;
  readonly instance: string;
  /** Labels every sandbox carries besides {@link Labels.Sandbox}. */
  readonly labels: Readonly<Record<string, string>>;
  /** Fresh sandboxes kept ready per image. */
  readonly min: number;
  /** Used sandboxes kept idle per key at most (the rest are destroyed on release). */
  readonly max: number;
  /** A sandbox is destroyed after this many steps even when its scrubs are clean. */
  readonly maxUses: number;
  /** A used sandbox idle this long is destroyed: tenants that stopped sending steps hold nothing. */
  readonly idleMs: number;
  readonly identityReuse: IdentityReuse;
  readonly limits: SandboxLimits;
  readonly log: Logger;
}

export interface Claimed {
  readonly sandbox: BackendSandbox;
  /** Taken from a pool (true) or created for this claim (false). */
  readonly warm: boolean;
  uses: number;
  /** The only tenant this sandbox ever serves. */
  readonly tenant: TenantId;
  /** The pool it may go back to; undefined: destroyed at release. */
  readonly key: string | undefined;
}

interface Idle {
  readonly sandbox: BackendSandbox;
  readonly uses: number;
  /** Undefined while fresh. */
  readonly tenant: TenantId | undefined;
  readonly since: number;
}

const SCRUB_TIMEOUT_MS = 5_000;

/**
 * The identity scope of a mode-2/3 step: sandboxes that held one identity are reused only
 * for that same identity (workflow, step, secret names, egress grant, agent, 3b channel).
 */
export function identityScope(s: { workflow: string; step: string; secrets?: readonly string[]; egress?: readonly string[]; agent?: string; jit?: boolean }): string {
  const canonical = JSON.stringify([s.workflow, s.step, [...(s.secrets ?? [])].sort(), [...(s.egress ?? [])].sort(), s.agent ?? '', s.jit === true]);
  return createHash('sha256').update(canonical).digest('hex').slice(0, 16);
}

export class SandboxPools {
  private readonly fresh = new Map<string, Idle[]>();
  private readonly used = new Map<string, Idle[]>();
  private readonly creating = new Map<string, number>();
  private seq = 0;
  private stopped = false;
  private readonly inflight = new Set<Promise<unknown>>();
  private readonly sweeper: NodeJS.Timeout;

  constructor(private readonly o: PoolOptions) {
    this.sweeper = setInterval(() => this.sweep(), Math.max(1000, Math.min(o.idleMs, 30_000)));
    this.sweeper.unref();
  }

  /** The pool a sandbox claimed for `k` may go back to; undefined when it must be destroyed after its step. */
  keyOf(k: PoolKey): string | undefined {
    const image = k.image.replace(/[^a-zA-Z0-9]/g, '').slice(-12);
    if (k.mode === Mode.Sandboxed) return `${k.tenant}/m1/${image}`;
    if (this.o.identityReuse === 'never') return undefined;
    return `${k.tenant}/m${k.mode}/${image}/${k.scope}`;
  }

  get freshCount(): number {
    let n = 0;
    for (const l of this.fresh.values()) n += l.length;
    return n;
  }

  /** Idle sandboxes per pool: `fresh/<image>` and each used key. */
  idle(): Record<string, number> {
    const out: Record<string, number> = {};
    for (const [image, l] of this.fresh) out[`fresh/${image}`] = l.length;
    for (const [key, l] of this.used) if (l.length > 0) out[key] = l.length;
    return out;
  }

  private labels(): Record<string, string> {
    return { ...this.o.labels, [Labels.Sandbox]: '1', [Labels.Node]: this.o.node, [Labels.Instance]: this.o.instance };
  }

  private poolName(tenant: TenantId | undefined): string {
    return `cap-pool-${this.o.node}-${this.o.instance}-${tenant ?? 'fresh'}-${++this.seq}`;
  }

  private track<T>(p: Promise<T>): Promise<T> {
    this.inflight.add(p);
    void p.finally(() => this.inflight.delete(p)).catch(() => {});
    return p;
  }

  private create(name: string, image: string): Promise<BackendSandbox> {
    const diag = (line: string) => this.o.log.debug({ sandbox: name, runner: fromSandbox(line, TEXT_LIMITS.message) }, 'tool runner');
    return this.o.backend.create({ name, image, labels: this.labels(), limits: this.o.limits, runtime: this.o.runtime, diag });
  }

  /** Tops the fresh pool of `image` up to `min`, in the background. */
  warm(image: string): void {
    if (this.stopped) return;
    const list = this.fresh.get(image) ?? [];
    this.fresh.set(image, list);
    while (list.length + (this.creating.get(image) ?? 0) < this.o.min) {
      this.creating.set(image, (this.creating.get(image) ?? 0) + 1);
      void this.track(
        this.create(this.poolName(undefined), image)
          .then((sandbox) => {
            if (this.stopped) return this.o.backend.remove(sandbox.id);
            list.push({ sandbox, uses: 0, tenant: undefined, since: Date.now() });
            return undefined;
          })
          .catch((e: unknown) => this.o.log.warn({ err: e, image }, 'could not create a fresh sandbox'))
          .finally(() => this.creating.set(image, (this.creating.get(image) ?? 1) - 1)),
      );
    }
  }

  /**
   * Claims a sandbox for `k` under `name`: one `k`'s tenant used before under the same key,
   * else a fresh one, else a new one (cold).
   * @throws SandboxConflictError when a sandbox by that name exists already.
   */
  async acquire(k: PoolKey, name: string): Promise<Claimed> {
    const key = this.keyOf(k);
    const pools = [...(key ? [this.used.get(key)] : []), this.fresh.get(k.image)];
    for (const list of pools) {
      for (let c = list?.pop(); c && list; c = list.pop()) {
        // By construction a used pool holds one tenant's sandboxes; checked anyway.
        if (c.sandbox.channel.isClosed || (c.tenant !== undefined && c.tenant !== k.tenant)) {
          if (c.tenant !== undefined && c.tenant !== k.tenant) this.o.log.error({ sandbox: c.sandbox.name, tenant: k.tenant }, "a pool held another tenant's sandbox; destroyed");
          void this.track(this.o.backend.remove(c.sandbox.id).catch(() => {}));
          continue;
        }
        try {
          await this.o.backend.rename(c.sandbox, name);
        } catch (e) {
          if (e instanceof SandboxConflictError) {
            list.push(c);
            throw e;
          }
          void this.track(this.o.backend.remove(c.sandbox.id).catch(() => {}));
          continue;
        }
        this.warm(k.image);
        return { sandbox: c.sandbox, warm: true, uses: c.uses, tenant: k.tenant, key };
      }
    }
    this.warm(k.image);
    const sandbox = await this.create(name, k.image);
    return { sandbox, warm: false, uses: 0, tenant: k.tenant, key };
  }

  /**
   * Back to its pool when `reusable`, its key allows it and the scrub is proven; destroyed
   * otherwise. Resolves once it is pooled or gone.
   */
  release(c: Claimed, reusable: boolean): Promise<void> {
    return this.track(this.recycle(c, reusable));
  }

  private async recycle(c: Claimed, reusable: boolean): Promise<void> {
    const { sandbox } = c;
    c.uses++;
    const room = () => c.key !== undefined && !this.stopped && (this.used.get(c.key)?.length ?? 0) < this.o.max;
    if (reusable && c.key && c.uses < this.o.maxUses && room()) {
      const why = await this.proven(sandbox);
      if (why) this.o.log.warn({ sandbox: sandbox.name, reason: why }, 'cleanup not proven; destroying the sandbox');
      else {
        try {
          await this.o.backend.rename(sandbox, this.poolName(c.tenant));
          // Asked again: other releases of this key, or a stop, may have come in meanwhile.
          if (room()) {
            const list = this.used.get(c.key) ?? [];
            list.push({ sandbox, uses: c.uses, tenant: c.tenant, since: Date.now() });
            this.used.set(c.key, list);
            return;
          }
        } catch (e) {
          this.o.log.warn({ err: e, sandbox: sandbox.name }, 'could not return a sandbox to its pool');
        }
      }
    }
    await this.destroy(c);
  }

  /** Why this sandbox's cleanup is not proven; undefined when it is. */
  private async proven(sandbox: BackendSandbox): Promise<string | undefined> {
    const { channel } = sandbox;
    if (channel.isClosed) return 'its control channel is closed';
    if (channel.tainted) return `its runner sent ${channel.tainted}`;
    const nonce = randomBytes(12).toString('base64url');
    let proof: ScrubProof | undefined;
    try {
      await channel.call({ t: 'scrub', id: channel.newId(), nonce }, (f) => (f.t === 'scrubbed' ? ((proof = f.proof), true) : false), SCRUB_TIMEOUT_MS);
    } catch (e) {
      return `no proof: ${(e as Error).message}`;
    }
    const p = proof as ScrubProof | undefined;
    if (!p || typeof p !== 'object') return 'no proof';
    if (p.nonce !== nonce) return 'the proof answers another scrub';
    if (p.pid !== channel.runner?.pid) return 'the proof comes from another process than the runner that started';
    if (!isCleanProof(p)) {
      // Counts only: what was left, never names or contents.
      const n = (l: unknown) => (Array.isArray(l) ? l.length : 'invalid');
      return `left behind: ${n(p.processes)} processes, ${n(p.workspace)}/${n(p.tmp)}/${n(p.mqueue)}/${n(p.shm)} entries in workspace/tmp/mqueue/shm, ${p.identityKeys} identity keys, ${p.connections} tunnels`;
    }
    if (channel.tainted) return `its runner sent ${channel.tainted}`;
    // The engine's view, which nothing inside the sandbox can write.
    const now = await this.o.backend.state(sandbox.id).catch(() => undefined);
    if (!now) return 'the engine no longer knows it';
    if (!now.running || now.pid !== sandbox.started.pid || now.restarts !== sandbox.started.restarts) return 'the engine says it is not the container that started';
    if (now.oomKilled) return 'the engine says a process in it was OOM-killed';
    // gVisor's own threads grow with use; a sandbox near its host task limit is not handed on.
    if (now.tasks !== undefined && now.tasksLimit && now.tasks > now.tasksLimit * 0.75) return `${now.tasks} host tasks of its limit ${now.tasksLimit}`;
    return undefined;
  }

  async destroy(c: Claimed | Idle): Promise<void> {
    c.sandbox.channel.close(new Error('sandbox destroyed'));
    await this.o.backend.remove(c.sandbox.id);
  }

  /** Destroys used sandboxes idle for longer than `idleMs`. */
  private sweep(): void {
    const cutoff = Date.now() - this.o.idleMs;
    for (const [key, list] of this.used) {
      const stale = list.filter((c) => c.since < cutoff);
      if (stale.length === 0) continue;
      this.used.set(
        key,
        list.filter((c) => c.since >= cutoff),
      );
      for (const c of stale) void this.track(this.destroy(c).catch(() => {}));
    }
  }

  async stop(): Promise<void> {
    this.stopped = true;
    clearInterval(this.sweeper);
    await Promise.allSettled([...this.inflight]);
    const idle = [...this.fresh.values(), ...this.used.values()].flatMap((l) => l.splice(0));
    await Promise.allSettled(idle.map((c) => this.destroy(c)));
  }
}

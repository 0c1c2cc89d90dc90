/**
 * A warm pool of sandboxes for one image and mode. Idle sandboxes are running and ready;
 * acquiring one renames it to the attempt's deterministic name, which is the claim: the
 * engine refuses a second sandbox by that name, so a retried claim cannot run an attempt
 * twice. On release the tool runner scrubs the sandbox and reports what is left; only a
 * clean proof puts it back (under a fresh pool name), anything else destroys it.
 *
 * Modes have separate pools on purpose: a sandbox that ran untrusted mode-1 code never
 * later receives a mode-2 identity, whatever that code did to it.
 */
import type { Logger } from '@capstan/kit';
import { isCleanProof, type ScrubProof } from './runner/protocol.js';
import { SandboxConflictError, type BackendSandbox, type SandboxBackend, type SandboxLimits } from './backend.js';

export const Labels = {
  Sandbox: 'capstan.sandbox',
  Node: 'capstan.sandbox.node',
  Instance: 'capstan.sandbox.instance',
  Pool: 'capstan.sandbox.pool',
} as const;

export interface PoolOptions {
  readonly backend: SandboxBackend;
  readonly image: string;
  /** `<mode>`-`<image hash>`: which sandboxes may be shared. */
  readonly key: string;
  readonly node: string;
  readonly instance: string;
  /** Idle sandboxes kept ready. */
  readonly min: number;
  /** Idle sandboxes kept at most (the rest are destroyed on release). */
  readonly max: number;
  /** A sandbox is destroyed after this many steps even when its scrubs are clean. */
  readonly maxUses: number;
  readonly limits: SandboxLimits;
  readonly log: Logger;
}

export interface Claimed {
  readonly sandbox: BackendSandbox;
  /** Taken from the idle pool (true) or created for this claim (false). */
  readonly warm: boolean;
  uses: number;
}

const SCRUB_TIMEOUT_MS = 10_000;

export class WarmPool {
  private readonly idle: Claimed[] = [];
  private creating = 0;
  private seq = 0;
  private stopped = false;
  private readonly inflight = new Set<Promise<unknown>>();

  constructor(private readonly o: PoolOptions) {}

  get idleCount(): number {
    return this.idle.length;
  }

  labels(): Record<string, string> {
    return { [Labels.Sandbox]: '1', [Labels.Node]: this.o.node, [Labels.Instance]: this.o.instance, [Labels.Pool]: this.o.key };
  }

  private poolName(): string {
    return `cap-pool-${this.o.node}-${this.o.instance}-${this.o.key}-${++this.seq}`;
  }

  private track<T>(p: Promise<T>): Promise<T> {
    this.inflight.add(p);
    void p.finally(() => this.inflight.delete(p)).catch(() => {});
    return p;
  }

  /** Tops the idle pool up to `min` in the background. */
  fill(): void {
    if (this.stopped) return;
    while (this.idle.length + this.creating < this.o.min) {
      this.creating++;
      void this.track(
        this.o.backend
          .create({ name: this.poolName(), image: this.o.image, labels: this.labels(), limits: this.o.limits })
          .then((sandbox) => {
            if (this.stopped) return this.o.backend.remove(sandbox.id);
            this.idle.push({ sandbox, warm: true, uses: 0 });
            return undefined;
          })
          .catch((e: unknown) => this.o.log.warn({ err: e, pool: this.o.key }, 'could not create a pooled sandbox'))
          .finally(() => this.creating--),
      );
    }
  }

  /**
   * Claims a sandbox under `name`: a warm one when idle, else a new one (cold).
   * @throws SandboxConflictError when a sandbox by that name exists already.
   */
  async acquire(name: string): Promise<Claimed> {
    for (;;) {
      const c = this.idle.shift();
      if (!c) break;
      if (c.sandbox.channel.isClosed) {
        void this.track(this.o.backend.remove(c.sandbox.id).catch(() => {}));
        continue;
      }
      try {
        await this.o.backend.rename(c.sandbox, name);
      } catch (e) {
        if (e instanceof SandboxConflictError) {
          this.idle.unshift(c);
          throw e;
        }
        void this.track(this.o.backend.remove(c.sandbox.id).catch(() => {}));
        continue;
      }
      this.fill();
      return { sandbox: c.sandbox, warm: true, uses: c.uses };
    }
    this.fill();
    const sandbox = await this.o.backend.create({ name, image: this.o.image, labels: this.labels(), limits: this.o.limits });
    return { sandbox, warm: false, uses: 0 };
  }

  /** Scrubs and returns to the pool when the proof is clean; destroys otherwise. */
  release(c: Claimed): Promise<void> {
    return this.track(this.recycle(c));
  }

  private async recycle(c: Claimed): Promise<void> {
    const { sandbox } = c;
    c.uses++;
    let proof: ScrubProof | undefined;
    if (!this.stopped && !sandbox.channel.isClosed && c.uses < this.o.maxUses && this.idle.length < this.o.max) {
      const id = sandbox.channel.newId();
      try {
        await sandbox.channel.call({ t: 'scrub', id }, (f) => (f.t === 'scrubbed' ? ((proof = f.proof), true) : false), SCRUB_TIMEOUT_MS);
      } catch (e) {
        this.o.log.warn({ err: e, sandbox: sandbox.name }, 'scrub failed; destroying the sandbox');
      }
    }
    if (proof && isCleanProof(proof)) {
      try {
        await this.o.backend.rename(sandbox, this.poolName());
        if (!this.stopped) {
          this.idle.push({ sandbox, warm: true, uses: c.uses });
          return;
        }
      } catch (e) {
        this.o.log.warn({ err: e, sandbox: sandbox.name }, 'could not return a sandbox to the pool');
      }
    } else if (proof) {
      // Names only: what was left, never contents.
      this.o.log.warn({ sandbox: sandbox.name, left: { processes: proof.processes.length, workspace: proof.workspace.length, tmp: proof.tmp.length, mqueue: proof.mqueue.length, identityKeys: proof.identityKeys } }, 'cleanup not proven; destroying the sandbox');
    }
    await this.destroy(c);
  }

  async destroy(c: Claimed): Promise<void> {
    c.sandbox.channel.close(new Error('sandbox destroyed'));
    await this.o.backend.remove(c.sandbox.id);
  }

  async stop(): Promise<void> {
    this.stopped = true;
    await Promise.allSettled([...this.inflight]);
    const idle = this.idle.splice(0);
    await Promise.allSettled(idle.map((c) => this.destroy(c)));
  }
}

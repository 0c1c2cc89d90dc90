/**
 * The host end of a tool runner's control channel (see `runner/protocol.ts`): frames out
 * on the sandbox's stdin, frames in from its stdout, matched to calls by `id`; tunnel
 * frames (`conn`, `data`, `end`) go to the egress handler.
 */
import type { Readable, Writable } from 'node:stream';
import { CapstanError, ErrorCode } from '@capstan/schemas';
import { lineSplitter, type HostFrame, type RunnerFrame } from './runner/protocol.js';

export type TunnelFrame = Extract<RunnerFrame, { t: 'conn' | 'data' | 'end' }>;
export type CredentialFrame = Extract<RunnerFrame, { t: 'credential' }>;
type Waiter = { onFrame: (f: RunnerFrame) => boolean; resolve: () => void; reject: (e: Error) => void };

export class SandboxLostError extends CapstanError {
  constructor(message: string) {
    super(ErrorCode.SandboxLost, message, true);
  }
}

export class RunnerChannel {
  private readonly waiters = new Map<string, Waiter>();
  private nextId = 1;
  private closedWith: Error | undefined;
  /** Receives the runner's egress tunnel frames. */
  onTunnel: (f: TunnelFrame) => void = () => {};
  /** Receives a mode-3b tool's credential requests; refused unless the step asked for the channel. */
  onCredential: (f: CredentialFrame) => void = (f) => {
    void this.send({ t: 'credential.err', cid: f.cid, code: 'invalid_argument', message: 'this step has no credential channel' }).catch(() => {});
  };
  /** The runner's first `ready` (sent once at start). */
  readonly ready: Promise<void>;

  constructor(
    private readonly input: Writable,
    output: Readable,
    private readonly label: string,
  ) {
    let markReady!: () => void;
    this.ready = new Promise((r) => (markReady = r));
    output.on(
      'data',
      lineSplitter((line) => {
        let f: RunnerFrame;
        try {
          f = JSON.parse(line) as RunnerFrame;
        } catch {
          return;
        }
        if (f.t === 'ready' && f.id === undefined) {
          markReady();
          return;
        }
        if (f.t === 'conn' || f.t === 'data' || f.t === 'end') {
          this.onTunnel(f);
          return;
        }
        if (f.t === 'credential') {
          this.onCredential(f);
          return;
        }
        const w = this.waiters.get(f.id ?? '');
        if (!w) return;
        if (f.t === 'error') {
          this.waiters.delete(f.id);
          w.reject(new CapstanError(ErrorCode.SandboxFailed, `tool runner in ${this.label}: ${f.code}: ${f.message}`, true));
        } else if (w.onFrame(f)) {
          this.waiters.delete(f.id ?? '');
          w.resolve();
        }
      }),
    );
    const close = (why: string) => this.close(new SandboxLostError(`control channel of ${this.label} ${why}`));
    output.on('end', () => close('ended'));
    output.on('error', (e) => close(`failed: ${e.message}`));
    input.on('error', (e) => close(`failed: ${e.message}`));
  }

  get isClosed(): boolean {
    return this.closedWith !== undefined;
  }

  close(e: Error): void {
    if (this.closedWith) return;
    this.closedWith = e;
    for (const w of this.waiters.values()) w.reject(e);
    this.waiters.clear();
  }

  /** Writes a frame; resolves once the channel can take more (backpressure). */
  async send(frame: HostFrame): Promise<void> {
    if (this.closedWith) throw this.closedWith;
    if (!this.input.write(`${JSON.stringify(frame)}\n`)) await new Promise<void>((r) => this.input.once('drain', () => r()));
  }

  newId(): string {
    return String(this.nextId++);
  }

  /**
   * Sends a request and feeds every answer with its id to `onFrame` until it returns true.
   * Rejects when the runner reports an error, the channel closes, or `timeoutMs` passes.
   */
  call(frame: HostFrame & { id: string }, onFrame: (f: RunnerFrame) => boolean, timeoutMs: number): Promise<void> {
    if (this.closedWith) return Promise.reject(this.closedWith);
    return new Promise<void>((resolve, reject) => {
      const timer = setTimeout(() => {
        this.waiters.delete(frame.id);
        reject(new SandboxLostError(`tool runner in ${this.label} did not answer ${frame.t} within ${timeoutMs} ms`));
      }, timeoutMs);
      const done = <A extends unknown[]>(fn: (...a: A) => void) => (...a: A) => {
        clearTimeout(timer);
        fn(...a);
      };
      this.waiters.set(frame.id, { onFrame, resolve: done(resolve), reject: done(reject) });
      this.send(frame).catch((e: unknown) => {
        this.waiters.delete(frame.id);
        clearTimeout(timer);
        reject(e as Error);
      });
    });
  }
}

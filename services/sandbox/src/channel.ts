/**
 * The host end of a tool runner's control channel (see `runner/protocol.ts`): frames out
 * on the sandbox's stdin, frames in from its stdout, matched to calls by `id`; tunnel
 * frames (`conn`, `data`, `end`) go to the egress handler.
 *
 * Frames are capped (`MAX_FRAME_BYTES`): a longer one closes the channel. A frame that is
 * not JSON or not a frame the protocol knows **taints** the channel: the runner is not
 * behaving as built, so its sandbox is destroyed at release, whatever its proof says.
 */
import type { Readable, Writable } from 'node:stream';
import { CapstanError, ErrorCode, isPlainObject } from '@capstan/schemas';
import { lineSplitter, MAX_FRAME_BYTES, type HostFrame, type RunnerFrame } from './runner/protocol.js';
import { fromSandbox, TEXT_LIMITS, type TextRedactor } from './untrusted.js';

const RUNNER_FRAMES: ReadonlySet<string> = new Set(['ready', 'ok', 'error', 'out', 'exit', 'file', 'collected', 'scrubbed', 'credential', 'conn', 'data', 'end']);

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
  /** Receives the runner's egress tunnel frames; with no grant, every connection is refused. */
  onTunnel: (f: TunnelFrame) => void = (f) => {
    if (f.t === 'conn') void this.send({ t: 'conn.err', cid: f.cid, code: ErrorCode.EgressDenied }).catch(() => {});
  };
  /** Receives a mode-3b tool's credential requests; refused unless the step asked for the channel. */
  onCredential: (f: CredentialFrame) => void = (f) => {
    void this.send({ t: 'credential.err', cid: f.cid, code: 'invalid_argument', message: 'this step has no credential channel' }).catch(() => {});
  };
  /** The runner's first `ready` (sent once at start). */
  readonly ready: Promise<void>;
  /** What the runner said about itself in its first `ready`. */
  runner: { readonly pid: number; readonly uid: number } | undefined;
  /** Why this channel's runner is not trusted any more (a malformed frame), if it is not. */
  tainted: string | undefined;
  /** Hides the attempt's identity in text from the runner (its error messages). */
  redactor: TextRedactor | undefined;
  private readonly markReady: () => void;

  constructor(
    private readonly input: Writable,
    output: Readable,
    public label: string,
  ) {
    let markReady!: () => void;
    this.ready = new Promise((r) => (markReady = r));
    this.markReady = markReady;
    output.on(
      'data',
      lineSplitter(
        (line) => this.receive(line),
        MAX_FRAME_BYTES,
        () => {
          this.tainted ??= `a frame over ${MAX_FRAME_BYTES} bytes`;
          this.close(new SandboxLostError(`the tool runner in ${this.label} sent a frame over ${MAX_FRAME_BYTES} bytes`));
        },
      ),
    );
    const close = (why: string) => this.close(new SandboxLostError(`control channel of ${this.label} ${why}`));
    output.on('end', () => close('ended'));
    output.on('error', (e) => close(`failed: ${e.message}`));
    input.on('error', (e) => close(`failed: ${e.message}`));
  }

  private receive(line: string): void {
    let f: RunnerFrame;
    try {
      const parsed: unknown = JSON.parse(line);
      if (!isPlainObject(parsed) || typeof parsed['t'] !== 'string' || !RUNNER_FRAMES.has(parsed['t'])) throw new Error('not a frame');
      f = parsed as unknown as RunnerFrame;
    } catch {
      this.tainted ??= 'a frame that is not part of the protocol';
      return;
    }
    if (f.t === 'ready' && f.id === undefined) {
      if (this.runner) {
        this.tainted ??= 'a second ready';
        return;
      }
      this.runner = { pid: Number(f.pid), uid: Number(f.uid) };
      this.markReady();
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
    const w = this.waiters.get(String(f.id ?? ''));
    if (!w) return;
    if (f.t === 'error') {
      this.waiters.delete(f.id);
      const why = fromSandbox(`${String(f.code)}: ${String(f.message)}`, TEXT_LIMITS.message, this.redactor);
      w.reject(new CapstanError(ErrorCode.SandboxFailed, `tool runner in ${this.label}: ${why}`, true));
    } else if (w.onFrame(f)) {
      this.waiters.delete(f.id ?? '');
      w.resolve();
    }
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
      const done =
        <A extends unknown[]>(fn: (...a: A) => void) =>
        (...a: A) => {
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

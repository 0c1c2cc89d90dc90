/**
 * Sandbox backends: where sandboxes come from. The pool and the service speak only this
 * interface, so a Kubernetes or Lambda backend can replace Docker without changing them.
 * A backend makes a hardened, running sandbox whose tool runner is reachable over a
 * control channel, renames it (the claim of an attempt), lists and removes its own.
 */
import { CapstanError, ErrorCode } from '@capstan/schemas';
import type { RunnerChannel } from './channel.js';

export interface SandboxLimits {
  readonly memoryBytes: number;
  readonly pids: number;
  readonly nanoCpus: number;
  readonly workspaceBytes: number;
  readonly tmpBytes: number;
}

export const DEFAULT_LIMITS: SandboxLimits = Object.freeze({
  memoryBytes: 512 * 1024 * 1024,
  pids: 128,
  nanoCpus: 1_000_000_000,
  workspaceBytes: 64 * 1024 * 1024,
  tmpBytes: 16 * 1024 * 1024,
});

/** The container runtimes Capstan knows how to use: gVisor's `runsc`, or the kernel's own isolation (`runc`). */
export type SandboxRuntime = 'runc' | 'runsc';

export interface CreateOptions {
  readonly name: string;
  readonly image: string;
  readonly labels: Readonly<Record<string, string>>;
  readonly limits: SandboxLimits;
  readonly runtime: SandboxRuntime;
  /** Receives the tool runner's own diagnostic lines (its stderr). */
  readonly diag?: (line: string) => void;
}

/** What the engine says about a sandbox from outside it: the witness the step cannot write to. */
export interface SandboxState {
  readonly running: boolean;
  /** The engine's pid for the sandbox (runc: its init; runsc: the sandbox process). */
  readonly pid: number;
  readonly restarts: number;
  readonly oomKilled: boolean;
  /** Tasks (processes and threads) in the sandbox's pids cgroup, and its limit, where the host shows them. */
  readonly tasks?: number;
  readonly tasksLimit?: number;
}

export interface BackendSandbox {
  readonly id: string;
  name: string;
  readonly channel: RunnerChannel;
  /** The engine's view right after start, compared with its view at each release. */
  readonly started: SandboxState;
}

export interface ListedSandbox {
  readonly id: string;
  readonly name: string;
  readonly labels: Readonly<Record<string, string>>;
}

export interface SandboxBackend {
  readonly kind: string;
  /** Throws `SandboxUnavailableError` when the backend cannot run anything. */
  ping(): Promise<void>;
  /** Creates and starts a sandbox; resolves once its tool runner is ready. */
  create(o: CreateOptions): Promise<BackendSandbox>;
  /** Renames a sandbox; throws `SandboxConflictError` when the name is taken. */
  rename(s: BackendSandbox, name: string): Promise<void>;
  /** Kills and removes, whatever its state; a sandbox already gone is not an error. */
  remove(idOrName: string): Promise<void>;
  /** Sandboxes carrying all of these labels. */
  list(labels: Readonly<Record<string, string>>): Promise<ListedSandbox[]>;
  /** Whether a sandbox by this name exists (running or not). */
  exists(name: string): Promise<boolean>;
  /** The engine's view of a sandbox; undefined when it is gone. */
  state(id: string): Promise<SandboxState | undefined>;
  /** The runtimes the engine has registered. */
  runtimes(): Promise<string[]>;
}

export class SandboxUnavailableError extends CapstanError {
  constructor(message: string) {
    super(ErrorCode.SandboxUnavailable, message, true);
  }
}

export class SandboxConflictError extends CapstanError {
  constructor(readonly sandboxName: string) {
    super(ErrorCode.SandboxConflict, `a sandbox named ${sandboxName} already exists`, true);
  }
}

/**
 * The backend of a node without a sandbox engine: every sandboxed step fails with a clear
 * error instead of running unsandboxed. It is what a node gets when no engine answers.
 */
export function nullBackend(reason = 'no sandbox backend is configured on this node'): SandboxBackend {
  const refuse = (): Promise<never> => Promise.reject(new SandboxUnavailableError(reason));
  return {
    kind: 'null',
    ping: refuse,
    create: refuse,
    rename: refuse,
    remove: () => Promise.resolve(),
    list: () => Promise.resolve([]),
    exists: () => Promise.resolve(false),
    state: () => Promise.resolve(undefined),
    runtimes: () => Promise.resolve([]),
  };
}

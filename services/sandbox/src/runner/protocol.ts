/**
 * The control channel between the sandbox service and the tool runner inside a sandbox:
 * newline-delimited JSON frames over the container's attached stdin (host → runner) and
 * stdout (runner → host). Binary data travels base64-encoded in `d`. The runner's stderr is
 * for its own diagnostics and never carries step output or identity.
 *
 * No network is involved (sandboxes run with `--network none`), no host path is mounted,
 * and nothing is logged by the engine (the containers use the `none` log driver).
 *
 * This module is compiled into the image too: node builtins only.
 */
import { StringDecoder } from 'node:string_decoder';

export const PROTOCOL_VERSION = 1;
/** Inside the sandbox: where steps run, where they leave artifacts. */
export const WORKSPACE = '/workspace';
export const OUT_DIR = 'out';
/** The local HTTP proxy that carries granted egress through the control channel. */
export const PROXY_PORT = 3128;
/**
 * Mode 3b: the local request channel a tool or agent asks for a credential on
 * (`POST /credential {"name","reason"}` → `{"name","value"}` or `{"error":{code,message}}`);
 * `credential.js` in the image is its command-line client.
 */
export const CREDENTIALS_PORT = 3129;
/**
 * The uid and gid steps run as. The tool runner runs as root inside the container with a
 * handful of capabilities (to drop each step to this uid, and to kill and clean up after
 * it); the step has none, so it cannot signal, trace or read the runner.
 */
export const STEP_UID = 10001;
export const STEP_GID = 10001;
/** Longest frame either side accepts: a longer line is a broken or hostile peer. */
export const MAX_FRAME_BYTES = 1024 * 1024;

export interface FileInput {
  readonly path: string;
  readonly d: string;
  readonly mode?: number;
}

/** Host → runner. Requests carry an `id`; the runner answers with the same `id`. */
export type HostFrame =
  | { readonly t: 'hello'; readonly id: string }
  | { readonly t: 'identity'; readonly id: string; readonly env: Readonly<Record<string, string>> }
  | {
      readonly t: 'exec';
      readonly id: string;
      readonly argv: readonly string[];
      readonly env: Readonly<Record<string, string>>;
      readonly files: readonly FileInput[];
      readonly timeoutMs: number;
      /** Start the local egress proxy and point the step's HTTP(S)_PROXY at it. */
      readonly egress: boolean;
      /** Mode 3b: open the credential request channel (`CAPSTAN_CREDENTIALS_URL`). */
      readonly jit?: boolean;
    }
  | { readonly t: 'kill'; readonly id: string }
  | { readonly t: 'collect'; readonly id: string; readonly maxBytes: number }
  /** `nonce` comes back in the proof, so an old or forged proof cannot answer a new scrub. */
  | { readonly t: 'scrub'; readonly id: string; readonly nonce: string }
  // egress tunnel: answers to a runner's `conn`, and data from the far end
  | { readonly t: 'credential.ok'; readonly cid: number; readonly env: Readonly<Record<string, string>> }
  | { readonly t: 'credential.err'; readonly cid: number; readonly code: string; readonly message: string }
  | { readonly t: 'conn.ok'; readonly cid: number }
  | { readonly t: 'conn.err'; readonly cid: number; readonly code: string }
  | { readonly t: 'data'; readonly cid: number; readonly d: string }
  | { readonly t: 'end'; readonly cid: number };

/** What a scrub leaves behind; a sandbox is reused only when every list is empty. */
export interface ScrubProof {
  /** The scrub request's nonce. */
  readonly nonce: string;
  /** The runner's pid: the same runner that said `ready`, or the sandbox is not what it was. */
  readonly pid: number;
  readonly processes: readonly number[];
  readonly workspace: readonly string[];
  readonly tmp: readonly string[];
  readonly mqueue: readonly string[];
  /** /dev/shm, where the runtime gives one (gVisor does, even with no IPC namespace shared). */
  readonly shm: readonly string[];
  readonly identityKeys: number;
  readonly connections: number;
}

export interface CollectedFile {
  readonly path: string;
  readonly bytes: number;
}

/** Runner → host. */
export type RunnerFrame =
  | { readonly t: 'ready'; readonly id?: string; readonly v: number; readonly pid: number; readonly uid: number }
  | { readonly t: 'ok'; readonly id: string }
  | { readonly t: 'error'; readonly id: string; readonly code: string; readonly message: string }
  | { readonly t: 'out'; readonly id: string; readonly fd: 1 | 2; readonly d: string }
  | {
      readonly t: 'exit';
      readonly id: string;
      readonly code: number;
      readonly signal?: string;
      readonly timedOut: boolean;
      readonly ms: number;
      readonly error?: string;
    }
  | { readonly t: 'file'; readonly id: string; readonly path: string; readonly d: string; readonly last: boolean }
  | {
      readonly t: 'collected';
      readonly id: string;
      readonly files: readonly CollectedFile[];
      readonly refused: readonly { readonly path: string; readonly reason: string }[];
    }
  | { readonly t: 'scrubbed'; readonly id: string; readonly proof: ScrubProof }
  | { readonly t: 'credential'; readonly cid: number; readonly name: string; readonly reason: string }
  | { readonly t: 'conn'; readonly cid: number; readonly host: string; readonly port: number }
  | { readonly t: 'data'; readonly cid: number; readonly d: string }
  | { readonly t: 'end'; readonly cid: number };

/** Whether a proof says nothing is left (lists empty, no identity, no tunnel); its nonce and pid are checked by the caller. */
export function isCleanProof(p: ScrubProof): boolean {
  const empty = (l: unknown) => Array.isArray(l) && l.length === 0;
  return empty(p.processes) && empty(p.workspace) && empty(p.tmp) && empty(p.mqueue) && empty(p.shm) && p.identityKeys === 0 && p.connections === 0;
}

/**
 * Splits a byte stream into lines; tolerant of frames split across chunks. A line longer
 * than `maxChars` calls `onOverflow` once and nothing more is read: the peer is broken.
 */
export function lineSplitter(onLine: (line: string) => void, maxChars = Infinity, onOverflow: () => void = () => {}): (chunk: Buffer) => void {
  // A multi-byte character may straddle two chunks.
  const decoder = new StringDecoder('utf8');
  let pending = '';
  let overflowed = false;
  const overflow = () => {
    overflowed = true;
    pending = '';
    onOverflow();
  };
  return (chunk) => {
    if (overflowed) return;
    pending += decoder.write(chunk);
    for (let nl = pending.indexOf('\n'); nl >= 0; nl = pending.indexOf('\n')) {
      if (nl > maxChars) return overflow();
      const line = pending.slice(0, nl);
      pending = pending.slice(nl + 1);
      if (line.length > 0) onLine(line);
      if (overflowed) return;
    }
    if (pending.length > maxChars) overflow();
  };
}

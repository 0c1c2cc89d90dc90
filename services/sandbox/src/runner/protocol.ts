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
  | { readonly t: 'scrub'; readonly id: string }
  // egress tunnel: answers to a runner's `conn`, and data from the far end
  | { readonly t: 'credential.ok'; readonly cid: number; readonly env: Readonly<Record<string, string>> }
  | { readonly t: 'credential.err'; readonly cid: number; readonly code: string; readonly message: string }
  | { readonly t: 'conn.ok'; readonly cid: number }
  | { readonly t: 'conn.err'; readonly cid: number; readonly code: string }
  | { readonly t: 'data'; readonly cid: number; readonly d: string }
  | { readonly t: 'end'; readonly cid: number };

/** What a scrub leaves behind; a sandbox is reused only when every list is empty. */
export interface ScrubProof {
  readonly processes: readonly number[];
  readonly workspace: readonly string[];
  readonly tmp: readonly string[];
  readonly mqueue: readonly string[];
  readonly identityKeys: number;
  readonly connections: number;
}

export interface CollectedFile {
  readonly path: string;
  readonly bytes: number;
}

/** Runner → host. */
export type RunnerFrame =
  | { readonly t: 'ready'; readonly id?: string; readonly v: number; readonly pid: number }
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

export function isCleanProof(p: ScrubProof): boolean {
  return p.processes.length === 0 && p.workspace.length === 0 && p.tmp.length === 0 && p.mqueue.length === 0 && p.identityKeys === 0 && p.connections === 0;
}

/** Splits a byte stream into lines; tolerant of frames split across chunks. */
export function lineSplitter(onLine: (line: string) => void): (chunk: Buffer) => void {
  // A multi-byte character may straddle two chunks.
  const decoder = new StringDecoder('utf8');
  let pending = '';
  return (chunk) => {
    pending += decoder.write(chunk);
    let nl = pending.indexOf('\n');
    while (nl >= 0) {
      const line = pending.slice(0, nl);
      pending = pending.slice(nl + 1);
      if (line.length > 0) onLine(line);
      nl = pending.indexOf('\n');
    }
  };
}

/**
 * What leaves a sandbox: its output streams (redacted of the identity it was given) and
 * its artifacts, written under a destination folder with every path checked so nothing a
 * step names can land outside its own attempt's folder.
 */
import { createHash } from 'node:crypto';
import { closeSync, constants as fsc, mkdirSync, openSync, rmSync, writeSync } from 'node:fs';
import { dirname, isAbsolute, normalize, resolve, sep } from 'node:path';
import type { Artifact } from '@capstan/schemas';

/**
 * Replaces identity values in a byte stream. Holds back the last `longest - 1` bytes of
 * each chunk so a value split across two chunks is still caught.
 */
export class Redactor {
  private needles: string[] = [];
  private keep = 0;
  private carry = '';

  constructor(values: readonly string[]) {
    this.add(values);
  }

  /** More values to hide (a credential granted while the step runs). */
  add(values: readonly string[]): void {
    // latin1 maps bytes 1:1 to chars, so replacing in strings replaces bytes.
    const more = values.filter((v) => v.length >= 4).map((v) => Buffer.from(v, 'utf8').toString('latin1'));
    this.needles = [...this.needles, ...more].sort((a, b) => b.length - a.length);
    this.keep = Math.max(0, ...this.needles.map((n) => n.length - 1));
  }

  /** A complete string with every identity value replaced. */
  text(s: string): string {
    if (this.needles.length === 0) return s;
    return Buffer.from(this.scrub(Buffer.from(s, 'utf8').toString('latin1')), 'latin1').toString('utf8');
  }

  private scrub(s: string): string {
    for (const n of this.needles) s = s.split(n).join('[redacted]');
    return s;
  }

  push(chunk: Buffer): Buffer {
    if (this.needles.length === 0) return chunk;
    const s = this.scrub(this.carry + chunk.toString('latin1'));
    const cut = Math.max(0, s.length - this.keep);
    this.carry = s.slice(cut);
    return Buffer.from(s.slice(0, cut), 'latin1');
  }

  flush(): Buffer {
    const s = this.scrub(this.carry);
    this.carry = '';
    return Buffer.from(s, 'latin1');
  }
}

/** One attempt's destination folder. Files are created exclusively and never through links. */
export class Destination {
  readonly dir: string;
  private readonly digests = new Map<string, { hash: ReturnType<typeof createHash>; bytes: number; fd: number }>();

  constructor(root: string, parts: readonly string[]) {
    this.dir = resolve(root, ...parts);
    // A folder left by an earlier, lost execution of this attempt holds nothing we vouch for.
    rmSync(this.dir, { recursive: true, force: true });
    mkdirSync(this.dir, { recursive: true, mode: 0o700 });
  }

  get uri(): string {
    return `file://${this.dir}`;
  }

  /** The absolute path for `rel`, or undefined when it would escape the destination. */
  private place(rel: string): string | undefined {
    if (rel.length === 0 || isAbsolute(rel) || rel.includes('\0')) return undefined;
    const abs = resolve(this.dir, normalize(rel));
    return abs.startsWith(this.dir + sep) ? abs : undefined;
  }

  /** Appends to `rel`; false when the path is refused. */
  append(rel: string, data: Buffer): boolean {
    let f = this.digests.get(rel);
    if (!f) {
      const abs = this.place(rel);
      if (!abs) return false;
      mkdirSync(dirname(abs), { recursive: true, mode: 0o700 });
      const fd = openSync(abs, fsc.O_WRONLY | fsc.O_CREAT | fsc.O_EXCL | fsc.O_NOFOLLOW, 0o600);
      f = { hash: createHash('sha256'), bytes: 0, fd };
      this.digests.set(rel, f);
    }
    if (data.length > 0) {
      writeSync(f.fd, data);
      f.hash.update(data);
      f.bytes += data.length;
    }
    return true;
  }

  /** Closes every file; returns the artifacts (logs excluded) with their digests. */
  close(exclude: ReadonlySet<string>): Artifact[] {
    const out: Artifact[] = [];
    for (const [path, f] of this.digests) {
      closeSync(f.fd);
      if (!exclude.has(path)) out.push({ path, bytes: f.bytes, sha256: f.hash.digest('hex') });
    }
    this.digests.clear();
    return out.sort((a, b) => a.path.localeCompare(b.path));
  }
}

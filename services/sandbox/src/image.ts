/**
 * The sandbox image, built on this machine because no registry is reachable: a root
 * filesystem (static busybox, the Node runtime running this process with the shared
 * libraries it links, the tool runner and the agents) assembled under `.capstan/sandbox/`
 * and loaded with `docker import`. The tag is a hash of the tree's content, so any changed
 * byte (runner code, Node, busybox) makes a new image, and an unchanged tree reuses the
 * image already loaded without rebuilding anything.
 */
import { execFile } from 'node:child_process';
import { createHash } from 'node:crypto';
import { createReadStream } from 'node:fs';
import { chmod, copyFile, link, mkdir, readFile, readdir, rename, rm, stat, symlink, unlink, writeFile } from 'node:fs/promises';
import { dirname, join, resolve, sep } from 'node:path';
import { Readable } from 'node:stream';
import { fileURLToPath } from 'node:url';
import type Docker from 'dockerode';
import { CapstanError, ErrorCode } from '@capstan/schemas';
import type { Logger } from '@capstan/kit';
import { STEP_GID, STEP_UID } from './runner/protocol.js';

/** A loaded sandbox image: `ref` to create containers from, `hash` of its content. */
export interface SandboxImage {
  /** `capstan-sandbox:<first 16 hex of hash>`. */
  readonly ref: string;
  /** sha256 (hex) over every entry's path, type, mode, owner and bytes, plus the image config. */
  readonly hash: string;
}

export interface EnsureSandboxImageOptions {
  readonly log?: Logger;
  /**
   * Where the root filesystem, busybox, apt's cache and the digest cache live;
   * `.capstan/sandbox` under the working directory by default.
   */
  readonly root?: string;
  /** Rebuild and re-import even when an image with this content's tag exists. */
  readonly force?: boolean;
}

/** Which part of the build failed: says where to look. */
export type SandboxImageStage = 'docker' | 'apt' | 'busybox' | 'ldd' | 'runner' | 'rootfs' | 'import' | 'lock';

/** The sandbox image could not be built or loaded; `stage` says which part failed and the message why. */
export class SandboxImageError extends CapstanError {
  constructor(
    readonly stage: SandboxImageStage,
    reason: string,
    options?: ErrorOptions,
  ) {
    // Engine, network and lock problems can clear up by themselves; a broken tree cannot.
    super(ErrorCode.SandboxImageFailed, `sandbox image (${stage}): ${reason}`, ['docker', 'apt', 'import', 'lock'].includes(stage), options);
  }
}

export const SANDBOX_IMAGE_REPO = 'capstan-sandbox';
/** The unprivileged user steps run as (the tool runner starts them so; see `runner/protocol.ts`). */
export const SANDBOX_UID = STEP_UID;
export const SANDBOX_GID = STEP_GID;
export const SANDBOX_WORKSPACE = '/workspace';
export const SANDBOX_RUNNER_DIR = '/opt/capstan/runner';
export const SANDBOX_AGENTS_DIR = '/opt/capstan/agents';
const NODE_PATH = '/usr/bin/node';

/** Image config applied on import; part of the hash, so changing it makes a new tag. */
const CHANGES = [
  `USER ${SANDBOX_UID}:${SANDBOX_GID}`,
  `WORKDIR ${SANDBOX_WORKSPACE}`,
  'ENV PATH=/usr/bin:/bin',
  `ENTRYPOINT ${JSON.stringify([NODE_PATH, `${SANDBOX_RUNNER_DIR}/tool-runner.js`])}`,
] as const;
const LABEL_KIND = 'capstan.image';
const LABEL_HASH = 'capstan.image.hash';
/** Bumped when the layout rules below change in a way the entries alone would not show. */
const FORMAT = 'capstan-sandbox/1';
const BUSYBOX = { pkg: 'busybox-static', suite: 'bookworm' } as const;
/** Older tagged images kept besides the current one, so checkouts of different versions on one engine do not evict each other. */
const KEEP_OLD_IMAGES = 2;
const LOCK_WAIT_MS = 10 * 60_000;

/**
 * Returns the sandbox image for the current tree, building and importing it when the engine
 * does not have it yet. When it exists this costs a few stats, one `ldd` and one image
 * inspect (file digests are cached by size, mtime and inode).
 *
 * Safe to call from several processes at once: builds are serialised by a lock file next to
 * the root filesystem, and the loser of a race finds the image already there. After a build,
 * older `capstan-sandbox:*` images beyond the newest {@link KEEP_OLD_IMAGES} are removed when
 * no container uses them (best effort; Docker refuses to remove an image a container uses).
 *
 * @throws SandboxImageError when the engine, apt, ldd, the runner build or the import fails.
 * @example
 *   const { ref } = await ensureSandboxImage(new Docker(), { log });
 */
export async function ensureSandboxImage(docker: Docker, opts: EnsureSandboxImageOptions = {}): Promise<SandboxImage> {
  const root = resolve(opts.root ?? join('.capstan', 'sandbox'));
  const log = opts.log;
  await wrap('docker', 'docker engine not reachable', () => docker.ping());
  await mkdir(root, { recursive: true });
  const lockFile = join(root, 'build.lock');
  const busyboxDir = join(root, 'busybox');
  if (!(await busyboxReady(busyboxDir))) {
    await withLock(lockFile, async () => {
      if (!(await busyboxReady(busyboxDir))) await fetchBusybox(busyboxDir, join(root, 'apt'), log);
    });
  }

  const current = async () => {
    const plan = await planRootfs(busyboxDir);
    const hash = await hashPlan(plan, join(root, 'digests.json'));
    return { plan, hash, image: { ref: `${SANDBOX_IMAGE_REPO}:${hash.slice(0, 16)}`, hash } satisfies SandboxImage };
  };
  const seen = await current();
  if (!opts.force && (await imageHash(docker, seen.image.ref)) === seen.hash) return seen.image;

  return withLock(lockFile, async () => {
    // Planned again under the lock: the inputs may have been rebuilt while we waited.
    const { plan, hash, image } = await current();
    if (!opts.force && (await imageHash(docker, image.ref)) === hash) return image;
    log?.info({ image: image.ref }, 'building the sandbox image');
    const started = Date.now();
    const staging = join(root, `rootfs.${process.pid}.tmp`);
    await rm(staging, { recursive: true, force: true });
    try {
      await wrap('rootfs', `cannot assemble the root filesystem in ${staging}`, () => materialize(plan, staging));
      await importRootfs(docker, plan, staging, image);
      const built = await imageHash(docker, image.ref);
      if (built !== hash) throw new SandboxImageError('import', `${image.ref} has label ${LABEL_HASH}=${built ?? '(none)'} after import; expected ${hash}`);
    } catch (e) {
      await rm(staging, { recursive: true, force: true });
      throw e;
    }
    // Keep the last assembled tree for inspection; it is rebuilt from the inputs every time,
    // so losing a race with another builder here costs nothing.
    const kept = join(root, 'rootfs');
    await rm(kept, { recursive: true, force: true });
    await rename(staging, kept).catch(() => rm(staging, { recursive: true, force: true }));
    log?.info({ image: image.ref, ms: Date.now() - started }, 'sandbox image built');
    await pruneOldImages(docker, image.ref, log);
    return image;
  });
}

// ---------------------------------------------------------------------------------------
// The plan: every entry of the root filesystem, with where its bytes come from.

interface Owned {
  readonly path: string;
  readonly mode: number;
  readonly uid: number;
  readonly gid: number;
}
type Bytes = { readonly file: string; readonly size: number } | { readonly data: Buffer };
type Entry = (Owned & { readonly kind: 'dir' }) | (Owned & { readonly kind: 'file'; readonly bytes: Bytes }) | (Owned & { readonly kind: 'symlink'; readonly target: string });

const rootOwned = { uid: 0, gid: 0 } as const;

const PASSWD = [
  'root:x:0:0:root:/root:/bin/sh',
  `sandbox:x:${SANDBOX_UID}:${SANDBOX_GID}:sandbox:${SANDBOX_WORKSPACE}:/bin/sh`,
  'nobody:x:65534:65534:nobody:/nonexistent:/bin/false',
  '',
].join('\n');
const GROUP = ['root:x:0:', `sandbox:x:${SANDBOX_GID}:`, 'nogroup:x:65534:', ''].join('\n');
// glibc reads this for user and host lookups; without it the defaults vary by version.
const NSSWITCH = 'passwd: files\ngroup: files\nhosts: files dns\n';
const MODULE_PACKAGE = '{"type":"module"}\n';

async function planRootfs(busyboxDir: string): Promise<Entry[]> {
  const entries = new Map<string, Entry>();
  const add = (e: Entry) => entries.set(e.path, e);
  const hostFile = async (path: string, source: string, modeMask = 0o755): Promise<Entry> => {
    const st = await stat(source);
    return { kind: 'file', path, mode: st.mode & modeMask, ...rootOwned, bytes: { file: source, size: st.size } };
  };
  const data = (path: string, text: string, mode = 0o644): Entry => ({ kind: 'file', path, mode, ...rootOwned, bytes: { data: Buffer.from(text) } });
  const dir = (path: string, mode = 0o755, owner: { uid: number; gid: number } = rootOwned): Entry => ({ kind: 'dir', path, mode, ...owner });

  add(dir('/tmp', 0o1777));
  add(dir(SANDBOX_WORKSPACE, 0o755, { uid: SANDBOX_UID, gid: SANDBOX_GID }));
  for (const d of ['/proc', '/sys', '/dev', '/root']) add(dir(d, d === '/root' ? 0o700 : 0o755));
  add(data('/etc/passwd', PASSWD));
  add(data('/etc/group', GROUP));
  add(data('/etc/nsswitch.conf', NSSWITCH));

  add(await hostFile('/bin/busybox', join(busyboxDir, 'bin', 'busybox')));
  for (const applet of await busyboxApplets(busyboxDir)) {
    if (applet !== 'busybox') add({ kind: 'symlink', path: `/bin/${applet}`, mode: 0o777, ...rootOwned, target: 'busybox' });
  }

  const node = process.execPath;
  add(await hostFile(node, node));
  if (node !== NODE_PATH) add({ kind: 'symlink', path: NODE_PATH, mode: 0o777, ...rootOwned, target: node });
  for (const lib of await sharedLibraries(node)) add(await hostFile(lib, lib));

  const dist = fileURLToPath(new URL('.', import.meta.url));
  const runner = await compiledScripts(join(dist, 'runner'));
  if (!runner.some((f) => f === 'tool-runner.js')) {
    throw new SandboxImageError('runner', `${join(dist, 'runner', 'tool-runner.js')} is missing; build the sandbox package first (npx tsc -b)`);
  }
  for (const [from, to, files] of [
    [join(dist, 'runner'), SANDBOX_RUNNER_DIR, runner],
    [join(dist, 'agents'), SANDBOX_AGENTS_DIR, await compiledScripts(join(dist, 'agents'))],
  ] as const) {
    add(data(`${to}/package.json`, MODULE_PACKAGE));
    for (const f of files) add(await hostFile(`${to}/${f.split(sep).join('/')}`, join(from, f), 0o644));
  }

  // Every ancestor is a directory entry, so the tar never relies on implicit parents.
  for (const path of [...entries.keys()]) {
    for (let p = dirname(path); p !== '/'; p = dirname(p)) if (!entries.has(p)) add(dir(p));
  }
  return [...entries.values()].sort((a, b) => (a.path < b.path ? -1 : a.path > b.path ? 1 : 0));
}

/** The `.js` files under a compiled folder (no declarations or maps), relative to it; none when it does not exist. */
async function compiledScripts(dir: string): Promise<string[]> {
  let found: string[];
  try {
    found = await readdir(dir, { recursive: true });
  } catch (e) {
    if (errnoCode(e) === 'ENOENT') return [];
    throw new SandboxImageError('runner', `cannot read ${dir}: ${reason(e)}`, { cause: e });
  }
  return found.filter((f) => f.endsWith('.js')).sort();
}

/** The absolute paths of the shared libraries (and the dynamic loader) `binary` needs, as `ldd` lists them. */
async function sharedLibraries(binary: string): Promise<string[]> {
  let out: string;
  try {
    out = await new Promise<string>((resolve, reject) =>
      execFile('ldd', [binary], { encoding: 'utf8' }, (err, stdout, stderr) => {
        if (err && /not a dynamic executable|statically linked/.test(stdout + stderr)) return resolve('');
        if (err) return reject(new Error(err.code === 'ENOENT' ? 'ldd is not installed (package libc-bin)' : stderr.trim() || err.message));
        resolve(stdout);
      }),
    );
  } catch (e) {
    throw new SandboxImageError('ldd', `cannot list the shared libraries of ${binary}: ${reason(e)}`, { cause: e });
  }
  const libs: string[] = [];
  for (const line of out.split('\n')) {
    if (/=>\s*not found/.test(line)) throw new SandboxImageError('ldd', `${binary} needs ${line.trim().split(/\s/)[0]}, which ldd cannot find`);
    const m = /^\s*(?:\S+\s+=>\s+)?(\/\S+)\s+\(0x[0-9a-f]+\)\s*$/.exec(line);
    if (m?.[1]) libs.push(m[1]);
  }
  if (out.trim() && libs.length === 0) throw new SandboxImageError('ldd', `could not parse ldd's output for ${binary}: ${JSON.stringify(out.slice(0, 200))}`);
  return libs;
}

// ---------------------------------------------------------------------------------------
// busybox, from Debian's static package.

async function busyboxReady(dir: string): Promise<boolean> {
  try {
    await stat(join(dir, 'bin', 'busybox'));
    return (await readFile(join(dir, 'applets'), 'utf8')).trim().length > 0;
  } catch {
    return false;
  }
}

async function busyboxApplets(dir: string): Promise<string[]> {
  const text = await wrap('busybox', `cannot read ${join(dir, 'applets')}`, () => readFile(join(dir, 'applets'), 'utf8'));
  return text.split('\n').filter((a) => /^[A-Za-z0-9_.[\]-]+$/.test(a));
}

interface AptModule {
  fetchDeb(pkg: string, opts: { suite: string; into: string; work: string }): Promise<{ deb: string; into: string }>;
}

/**
 * The apt fetcher is this package's own file (`apt/fetch-deb.mjs`, beside `dist/` and shipped
 * with it), found relative to this module so the service needs no repository checkout. It
 * stays plain JavaScript because infra/nats/install.mjs runs it before anything is built.
 */
const FETCH_DEB = new URL('../apt/fetch-deb.mjs', import.meta.url).href;

async function fetchBusybox(dir: string, aptDir: string, log: Logger | undefined): Promise<void> {
  log?.info({ pkg: BUSYBOX.pkg, suite: BUSYBOX.suite }, 'fetching busybox for the sandbox image');
  await wrap('apt', `cannot fetch ${BUSYBOX.pkg} from Debian ${BUSYBOX.suite}`, async () => {
    const apt = (await import(FETCH_DEB)) as AptModule;
    await apt.fetchDeb(BUSYBOX.pkg, { suite: BUSYBOX.suite, into: dir, work: join(aptDir, BUSYBOX.suite) });
  });
  const busybox = join(dir, 'bin', 'busybox');
  const list = await wrap(
    'busybox',
    `${busybox} --list failed`,
    () => new Promise<string>((resolve, reject) => execFile(busybox, ['--list'], { encoding: 'utf8' }, (err, stdout) => (err ? reject(new Error(err.message)) : resolve(stdout)))),
  );
  await writeFile(join(dir, 'applets'), list);
}

// ---------------------------------------------------------------------------------------
// Content hash, with per-file digests cached by size, mtime and inode (Node alone is ~100 MB).

interface CachedDigest {
  size: number;
  mtimeMs: number;
  ino: number;
  sha256: string;
}

async function hashPlan(plan: readonly Entry[], cacheFile: string): Promise<string> {
  let cache: Record<string, CachedDigest> = {};
  try {
    cache = JSON.parse(await readFile(cacheFile, 'utf8')) as Record<string, CachedDigest>;
  } catch {
    // Missing or unreadable: every digest is computed again.
  }
  let dirty = false;
  const digestOf = async (bytes: Bytes): Promise<string> => {
    if ('data' in bytes) return createHash('sha256').update(bytes.data).digest('hex');
    const st = await stat(bytes.file);
    const hit = cache[bytes.file];
    if (hit && hit.size === st.size && hit.mtimeMs === st.mtimeMs && hit.ino === st.ino) return hit.sha256;
    const h = createHash('sha256');
    for await (const chunk of createReadStream(bytes.file)) h.update(chunk as Buffer);
    const sha256 = h.digest('hex');
    cache[bytes.file] = { size: st.size, mtimeMs: st.mtimeMs, ino: st.ino, sha256 };
    dirty = true;
    return sha256;
  };

  const h = createHash('sha256');
  h.update(JSON.stringify([FORMAT, CHANGES]) + '\n');
  for (const e of plan) {
    const content = e.kind === 'file' ? await digestOf(e.bytes) : e.kind === 'symlink' ? e.target : '';
    h.update(JSON.stringify([e.kind, e.path, e.mode, e.uid, e.gid, content]) + '\n');
  }
  if (dirty) {
    const tmp = `${cacheFile}.${process.pid}.tmp`;
    await writeFile(tmp, JSON.stringify(cache));
    await rename(tmp, cacheFile);
  }
  return h.digest('hex');
}

// ---------------------------------------------------------------------------------------
// Assembling the tree on disk, and the tar stream `docker import` reads.

async function materialize(plan: readonly Entry[], dir: string): Promise<void> {
  await mkdir(dir, { recursive: true });
  for (const e of plan) {
    const at = join(dir, e.path);
    switch (e.kind) {
      case 'dir':
        await mkdir(at, { recursive: true });
        await chmod(at, e.mode);
        break;
      case 'file':
        if ('data' in e.bytes) await writeFile(at, e.bytes.data);
        else await copyFile(e.bytes.file, at);
        await chmod(at, e.mode);
        break;
      case 'symlink':
        await symlink(e.target, at);
        break;
    }
  }
}

const BLOCK = 512;

/** A ustar header; names too long for ustar's name + prefix fields are refused rather than cut. */
function tarHeader(e: Entry, size: number): Buffer {
  const h = Buffer.alloc(BLOCK);
  let name = e.path.slice(1) + (e.kind === 'dir' ? '/' : '');
  let prefix = '';
  if (Buffer.byteLength(name) > 100) {
    const cut = name.lastIndexOf('/', name.length - 2);
    prefix = name.slice(0, cut);
    name = name.slice(cut + 1);
    if (cut < 0 || Buffer.byteLength(name) > 100 || Buffer.byteLength(prefix) > 155) {
      throw new SandboxImageError('rootfs', `path too long for the image archive: ${e.path}`);
    }
  }
  const octal = (value: number, width: number, at: number) => h.write(value.toString(8).padStart(width - 1, '0') + '\0', at, 'ascii');
  h.write(name, 0, 'utf8');
  octal(e.mode, 8, 100);
  octal(e.uid, 8, 108);
  octal(e.gid, 8, 116);
  octal(size, 12, 124);
  // A fixed mtime keeps the layer identical for identical content.
  octal(0, 12, 136);
  h.write(e.kind === 'dir' ? '5' : e.kind === 'symlink' ? '2' : '0', 156, 'ascii');
  if (e.kind === 'symlink') {
    if (Buffer.byteLength(e.target) > 100) throw new SandboxImageError('rootfs', `symlink target too long for the image archive: ${e.path}`);
    h.write(e.target, 157, 'utf8');
  }
  h.write('ustar\0', 257, 'ascii');
  h.write('00', 263, 'ascii');
  h.write(prefix, 345, 'utf8');
  h.fill(0x20, 148, 156);
  let sum = 0;
  for (const b of h) sum += b;
  h.write(sum.toString(8).padStart(6, '0') + '\0 ', 148, 'ascii');
  return h;
}

/** The tar archive of the assembled tree, with modes and owners from the plan (not from the disk). */
async function* tarChunks(plan: readonly Entry[], dir: string): AsyncGenerator<Buffer> {
  for (const e of plan) {
    if (e.kind !== 'file') {
      yield tarHeader(e, 0);
      continue;
    }
    const file = join(dir, e.path);
    const size = (await stat(file)).size;
    yield tarHeader(e, size);
    let written = 0;
    for await (const chunk of createReadStream(file)) {
      written += (chunk as Buffer).length;
      yield chunk as Buffer;
    }
    if (written !== size) throw new SandboxImageError('rootfs', `${file} changed size while being archived`);
    if (size % BLOCK) yield Buffer.alloc(BLOCK - (size % BLOCK));
  }
  yield Buffer.alloc(BLOCK * 2);
}

// ---------------------------------------------------------------------------------------
// Docker.

async function importRootfs(docker: Docker, plan: readonly Entry[], dir: string, image: SandboxImage): Promise<void> {
  const [repo, tag] = image.ref.split(':') as [string, string];
  // The archive's own failure (a file that vanished) explains more than the aborted upload does.
  let archiveError: unknown;
  const archive = Readable.from(
    (async function* () {
      try {
        yield* tarChunks(plan, dir);
      } catch (e) {
        archiveError = e;
        throw e;
      }
    })(),
  );
  try {
    const progress = await docker.importImage(archive, {
      repo,
      tag,
      message: 'capstan sandbox root filesystem',
      changes: [...CHANGES, `LABEL ${LABEL_KIND}=sandbox ${LABEL_HASH}=${image.hash}`],
    });
    await new Promise<void>((resolve, reject) => {
      docker.modem.followProgress(progress, (err: Error | null) => (err ? reject(err) : resolve()));
    });
  } catch (e) {
    if (CapstanError.is(archiveError)) throw archiveError;
    throw new SandboxImageError('import', `docker import of ${image.ref} failed: ${reason(archiveError ?? e)}`, { cause: archiveError ?? e });
  } finally {
    archive.destroy();
  }
}

/** The content hash label of `ref`, or undefined when the engine has no such image. */
async function imageHash(docker: Docker, ref: string): Promise<string | undefined> {
  try {
    const info = await docker.getImage(ref).inspect();
    return info.Config?.Labels?.[LABEL_HASH] ?? '';
  } catch (e) {
    if ((e as { statusCode?: number }).statusCode === 404) return undefined;
    throw new SandboxImageError('docker', `cannot inspect image ${ref}: ${reason(e)}`, { cause: e });
  }
}

async function pruneOldImages(docker: Docker, current: string, log: Logger | undefined): Promise<void> {
  try {
    const images = await docker.listImages({ filters: { label: [`${LABEL_KIND}=sandbox`] } });
    const tagsOf = (i: Docker.ImageInfo) => (i.RepoTags ?? []).filter((t) => t.startsWith(`${SANDBOX_IMAGE_REPO}:`));
    const others = images.filter((i) => !tagsOf(i).includes(current));
    const tagged = others.filter((i) => tagsOf(i).length > 0).sort((a, b) => b.Created - a.Created);
    // Untagged ones are what forced rebuilds left behind: nobody can ask for them by tag.
    const untagged = others.filter((i) => tagsOf(i).length === 0);
    for (const img of [...tagged.slice(KEEP_OLD_IMAGES), ...untagged]) {
      const tags = tagsOf(img);
      for (const name of tags.length > 0 ? tags : [img.Id]) {
        // Without force, Docker refuses to remove an image a container (even a stopped one) uses.
        await docker
          .getImage(name)
          .remove()
          .then(
            () => log?.info({ image: name }, 'removed an old sandbox image'),
            (e: unknown) => log?.debug({ image: name, reason: reason(e) }, 'old sandbox image kept'),
          );
      }
    }
  } catch (e) {
    log?.warn({ reason: reason(e) }, 'could not list old sandbox images');
  }
}

// ---------------------------------------------------------------------------------------
// The build lock: a file holding the builder's pid, created atomically with its content.

async function withLock<T>(lockFile: string, fn: () => Promise<T>): Promise<T> {
  const mine = `${lockFile}.${process.pid}.${Math.random().toString(36).slice(2)}`;
  await writeFile(mine, String(process.pid));
  const deadline = Date.now() + LOCK_WAIT_MS;
  try {
    for (;;) {
      try {
        await link(mine, lockFile);
        break;
      } catch (e) {
        if (errnoCode(e) !== 'EEXIST') throw new SandboxImageError('lock', `cannot create ${lockFile}: ${reason(e)}`, { cause: e });
      }
      const holder = Number((await readFile(lockFile, 'utf8').catch(() => '')).trim());
      if (!Number.isInteger(holder) || holder <= 0 || !alive(holder)) {
        // Left by a builder that died; the build is idempotent, so a rare double build is harmless.
        await rm(lockFile, { force: true });
        continue;
      }
      if (Date.now() > deadline) throw new SandboxImageError('lock', `process ${holder} has held ${lockFile} for over ${LOCK_WAIT_MS / 60_000} min`);
      await new Promise((r) => setTimeout(r, 250));
    }
  } finally {
    await unlink(mine).catch(() => undefined);
  }
  try {
    return await fn();
  } finally {
    await rm(lockFile, { force: true });
  }
}

function alive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch (e) {
    return errnoCode(e) === 'EPERM';
  }
}

// ---------------------------------------------------------------------------------------

function errnoCode(e: unknown): string | undefined {
  return typeof e === 'object' && e !== null && 'code' in e ? String((e as { code: unknown }).code) : undefined;
}

function reason(e: unknown): string {
  return e instanceof Error ? e.message : String(e);
}

/** Runs `fn`; anything it throws that is not already typed becomes a {@link SandboxImageError} of `stage`. */
async function wrap<T>(stage: SandboxImageStage, what: string, fn: () => Promise<T>): Promise<T> {
  try {
    return await fn();
  } catch (e) {
    if (CapstanError.is(e)) throw e;
    throw new SandboxImageError(stage, `${what}: ${reason(e)}`, { cause: e });
  }
}

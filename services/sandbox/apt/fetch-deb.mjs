#!/usr/bin/env node
// Fetches one Debian package with apt and unpacks it, without touching the system's apt
// configuration: a private sources list for one suite (signed by the Debian archive key
// already on the machine), with its own lists and cache in the caller's work folder.
// Nothing is installed; the package's files land in a folder of the caller's choosing.
//
// Part of the sandbox package (shipped beside dist/, see package.json `files`) because the
// sandbox image builder needs it at run time (busybox-static from bookworm), wherever the
// package is installed. infra/nats/install.mjs borrows it from here (nats-server from sid).
//
//   node services/sandbox/apt/fetch-deb.mjs <package> --suite <suite> --into <dir> [--work <dir>]
//   (--work defaults to .capstan/apt/<suite> under the working directory)
import { execFile } from 'node:child_process';
import { mkdirSync, readdirSync, renameSync, rmSync, writeFileSync } from 'node:fs';
import { dirname, join, resolve } from 'node:path';
import { pathToFileURL } from 'node:url';

const KEYRING = '/usr/share/keyrings/debian-archive-keyring.gpg';
const MIRROR = 'http://deb.debian.org/debian';

/** Runs a command; on failure the error names it and carries the tail of its stderr. */
function run(cmd, args, cwd) {
  return new Promise((resolveRun, reject) => {
    execFile(cmd, args, { cwd, encoding: 'utf8', maxBuffer: 16 * 1024 * 1024 }, (err, _stdout, stderr) => {
      if (!err) return resolveRun();
      const why = err.code === 'ENOENT' ? `${cmd} not found (needs Debian/Ubuntu with apt-get and dpkg-deb)` : stderr.trim().split('\n').slice(-3).join(' / ') || err.message;
      reject(new Error(`${cmd} ${args.filter((a) => !a.startsWith('Dir::') && !a.startsWith('APT::') && a !== '-o').join(' ')} failed: ${why}`));
    });
  });
}

/**
 * Downloads `pkg` from Debian `suite` and unpacks its files into `into` (replaced whole,
 * so a failed fetch never leaves a half-written folder behind).
 *
 * @param {string} pkg  package name, e.g. `busybox-static`
 * @param {{ suite: string, into: string, work: string }} opts  `work` holds apt's lists, cache and downloads for the suite
 * @returns {Promise<{ deb: string, into: string }>}  the downloaded .deb and the unpacked folder
 */
export async function fetchDeb(pkg, { suite, into, work }) {
  if (!/^[a-z0-9][a-z0-9+.-]*$/.test(pkg)) throw new Error(`invalid package name ${JSON.stringify(pkg)}`);
  if (!/^[a-z]+(-[a-z]+)?$/.test(suite)) throw new Error(`invalid suite ${JSON.stringify(suite)}`);
  if (typeof work !== 'string' || work.length === 0) throw new Error('fetchDeb needs a work folder for apt');
  const lists = join(work, 'lists');
  const cache = join(work, 'cache');
  const debs = join(work, 'debs');
  mkdirSync(join(lists, 'partial'), { recursive: true });
  mkdirSync(join(cache, 'archives', 'partial'), { recursive: true });
  mkdirSync(debs, { recursive: true });
  const sources = join(work, 'sources.list');
  writeFileSync(sources, `deb [signed-by=${KEYRING}] ${MIRROR} ${suite} main\n`);
  const opts = [
    '-q',
    '-o',
    `Dir::Etc::SourceList=${sources}`,
    '-o',
    'Dir::Etc::SourceParts=/dev/null',
    '-o',
    `Dir::State::Lists=${lists}`,
    '-o',
    `Dir::Cache=${cache}`,
    '-o',
    'Dir::State::status=/dev/null',
    '-o',
    'APT::Sandbox::User=root',
  ];
  await run('apt-get', [...opts, 'update'], work);
  const isOurs = (f) => f.startsWith(`${pkg}_`) && f.endsWith('.deb');
  for (const f of readdirSync(debs)) if (isOurs(f)) rmSync(join(debs, f));
  await run('apt-get', [...opts, 'download', pkg], debs);
  const deb = readdirSync(debs).find(isOurs);
  if (!deb) throw new Error(`apt-get download produced no ${pkg} package`);
  const staging = `${into}.${process.pid}.tmp`;
  rmSync(staging, { recursive: true, force: true });
  mkdirSync(dirname(into), { recursive: true });
  await run('dpkg-deb', ['-x', join(debs, deb), staging]);
  rmSync(into, { recursive: true, force: true });
  renameSync(staging, into);
  return { deb: join(debs, deb), into };
}

if (process.argv[1] && import.meta.url === pathToFileURL(resolve(process.argv[1])).href) {
  const args = process.argv.slice(2);
  const flag = (name) => {
    const i = args.indexOf(name);
    return i >= 0 ? args[i + 1] : undefined;
  };
  const pkg = args[0];
  const suite = flag('--suite');
  const into = flag('--into');
  if (!pkg || pkg.startsWith('-') || !suite || !into) {
    console.error('usage: node fetch-deb.mjs <package> --suite <suite> --into <dir> [--work <dir>]');
    process.exit(2);
  }
  try {
    const r = await fetchDeb(pkg, { suite, into: resolve(into), work: resolve(flag('--work') ?? join('.capstan', 'apt', suite)) });
    console.log(`${pkg} (${suite}) unpacked into ${r.into}`);
  } catch (e) {
    console.error(`fetch-deb: ${e instanceof Error ? e.message : e}`);
    process.exit(1);
  }
}

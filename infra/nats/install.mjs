#!/usr/bin/env node
// Provides nats-server >= 2.12 for Capstan's dev stack and tests, at .capstan/bin/nats-server.
//
// Debian bookworm ships 2.9.10, which lacks fsync control, message schedules and atomic
// batches. Debian unstable's package (2.15.x) is a static Go binary that runs on bookworm,
// so we fetch just that one package with apt through a private sources list
// (the sandbox package's apt/fetch-deb.mjs), unpack it into the project, and never touch the system's apt
// configuration or its nats-server.
//
//   node infra/nats/install.mjs          install if missing (exit 1 on failure)
//   node infra/nats/install.mjs --soft   same, but only warn on failure (npm postinstall)
import { execFileSync } from 'node:child_process';
import { copyFileSync, chmodSync, existsSync, mkdirSync } from 'node:fs';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { fetchDeb } from '../../services/sandbox/apt/fetch-deb.mjs';

const MIN = [2, 12, 0];
const root = resolve(dirname(fileURLToPath(import.meta.url)), '../..');
const target = join(root, '.capstan', 'bin', 'nats-server');
const soft = process.argv.includes('--soft');

function versionOf(bin) {
  try {
    const out = execFileSync(bin, ['--version'], { encoding: 'utf8', stdio: ['ignore', 'pipe', 'ignore'] });
    const m = /v?(\d+)\.(\d+)\.(\d+)/.exec(out);
    return m ? m.slice(1, 4).map(Number) : undefined;
  } catch {
    return undefined;
  }
}
const atLeast = (v, min) => {
  for (let i = 0; i < 3; i++) if (v[i] !== min[i]) return v[i] > min[i];
  return true;
};

function done(bin, v) {
  console.log(`capstan: nats-server ${v.join('.')} at ${bin}`);
  process.exit(0);
}

const existing = versionOf(target);
if (existing && atLeast(existing, MIN)) done(target, existing);

try {
  console.log('capstan: fetching nats-server from Debian unstable (private sources list, this package only)…');
  const { into: unpacked } = await fetchDeb('nats-server', { suite: 'sid', into: join(root, '.capstan', 'apt', 'nats-server'), work: join(root, '.capstan', 'apt', 'sid') });
  mkdirSync(dirname(target), { recursive: true });
  copyFileSync(join(unpacked, 'usr', 'sbin', 'nats-server'), target);
  chmodSync(target, 0o755);
  const v = versionOf(target);
  if (!v || !atLeast(v, MIN)) throw new Error(`installed nats-server reports ${v ? v.join('.') : 'no version'}; need >= ${MIN.join('.')}`);
  done(target, v);
} catch (e) {
  const msg =
    `capstan: could not install nats-server >= ${MIN.join('.')}: ${e instanceof Error ? e.message : e}\n` +
    `  Needs apt-get and dpkg-deb (Debian/Ubuntu) with access to deb.debian.org, or put a nats-server >= 2.12\n` +
    `  binary at ${target} (or set CAPSTAN_NATS_SERVER to its path).`;
  console.error(msg);
  process.exit(soft || existsSync(target) ? 0 : 1);
}

#!/usr/bin/env node
// Brings this machine up to what the README's commands need, and does only what is missing,
// so running it again is cheap (a second or two when everything is there):
//
//   node infra/provision.mjs start   (`npm start`, `npm run demo`)
//       nats-server >= 2.12 in .capstan/bin, the build, a Docker engine, the sandbox image
//   node infra/provision.mjs test    (`npm test`)
//       the same, plus what the tests use: Chromium (/usr/bin/chromium), openssl, and a
//       PostgreSQL server on 127.0.0.1:5432 with its binaries
//
// Missing system packages come from Debian's archive (apt-get), which needs root or
// passwordless sudo. Without either, what cannot be had is listed with the one command that
// gets it, and the rest goes on: `npm start` runs without sandboxes, and tests that need the
// missing part say so when they skip (see .capstan/provision.json, which the test run reads).
// Under CI (CI set) anything missing fails the run: CI must test everything.
//
// It never restarts or reconfigures a running Docker engine, Postgres or nats-server.
import { spawnSync } from 'node:child_process';
import { existsSync, mkdirSync, readdirSync, readFileSync, writeFileSync } from 'node:fs';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';

const root = resolve(dirname(fileURLToPath(import.meta.url)), '..');
const RECORD = join(root, '.capstan', 'provision.json');
const CHROMIUM = '/usr/bin/chromium';
const KEYRING = '/usr/share/keyrings/debian-archive-keyring.gpg';
const PG_WAIT_S = 30;

const purpose = process.argv[2];
if ((purpose !== 'start' && purpose !== 'test') || process.argv.length > 3) {
  console.error('usage: node infra/provision.mjs start|test');
  process.exit(2);
}
const ci = Boolean(process.env.CI) && process.env.CI !== 'false';

const t0 = performance.now();
/** What could not be had here, each with how to get it. */
const missing = [];
/** Per step: what it found or did, and how long it took. */
const steps = [];

const say = (s) => process.stdout.write(`${s}\n`);

/** Runs a step and prints one line for it: its name, what it found or did, its time. */
function step(name, fn) {
  const s0 = performance.now();
  let status = 'ok';
  let note;
  try {
    note = fn();
  } catch (e) {
    status = 'failed';
    note = e instanceof Error ? e.message : String(e);
  }
  const ms = Math.round(performance.now() - s0);
  steps.push({ name, status, note, ms });
  say(`capstan provision: ${name.padEnd(16)} ${status === 'ok' ? '' : 'FAILED: '}${note ?? ''} (${(ms / 1000).toFixed(1)} s)`);
  if (status === 'failed') finish(1);
}

/** Records something this machine lacks (once), with the command that gets it. */
function lack(what, how) {
  if (!missing.some((m) => m.what === what)) missing.push({ what, how });
  return `missing: ${how}`;
}

function finish(code) {
  mkdirSync(dirname(RECORD), { recursive: true });
  const total = Math.round(performance.now() - t0);
  writeFileSync(RECORD, `${JSON.stringify({ purpose, at: new Date().toISOString(), ms: total, missing, steps }, null, 2)}\n`);
  for (const m of missing) say(`capstan provision: MISSING ${m.what}: ${m.how}`);
  if (code === 0 && ci && missing.length > 0) {
    say('capstan provision: CI needs everything above; failing');
    code = 1;
  }
  say(`capstan provision: ${code === 0 ? 'done' : 'failed'} in ${(total / 1000).toFixed(1)} s`);
  process.exit(code);
}

const has = (cmd) => spawnSync('sh', ['-c', `command -v ${cmd}`], { stdio: 'ignore' }).status === 0;
/** Runs a command with the output shown; throws naming it when it fails. */
function run(cmd, args, opts = {}) {
  const r = spawnSync(cmd, args, { stdio: 'inherit', cwd: root, ...opts });
  if (r.status !== 0) throw new Error(`${[cmd, ...args].join(' ')} exited with ${r.status ?? r.signal}`);
}
const quiet = (cmd, args) => spawnSync(cmd, args, { encoding: 'utf8', cwd: root });

// ---------------------------------------------------------------------------------------
// The machine: which OS, and may we install and start things?

const osRelease = existsSync('/etc/os-release') ? readFileSync('/etc/os-release', 'utf8') : '';
const osField = (k) => new RegExp(`^${k}="?([^"\\n]*)"?$`, 'm').exec(osRelease)?.[1] ?? '';
const debian = /\b(debian|ubuntu)\b/.test(`${osField('ID')} ${osField('ID_LIKE')}`) && has('apt-get');
const root0 = process.getuid?.() === 0;
const sudo = !root0 && has('sudo') && spawnSync('sudo', ['-n', 'true'], { stdio: 'ignore' }).status === 0;
/** Whether we may install packages and start system services. */
const may = debian && (root0 || sudo);
const getIt = (pkg) => (debian ? `sudo apt-get install ${pkg}` : `install ${pkg}`);

say(
  `capstan provision: for \`npm ${purpose}\` on ${osField('PRETTY_NAME') || 'an unknown OS'}, node ${process.version}, ${root0 ? 'root' : sudo ? 'passwordless sudo' : 'no root'}`,
);
if (!debian) say('capstan provision: not Debian or Ubuntu with apt-get: nothing is installed, only checked');

// ---------------------------------------------------------------------------------------
// Debian packages: fetched together, so one `apt-get update` at most.

/** Whether DOCKER_HOST's engine (or the default one) answers, whatever runs it. */
const engineAnswers = () =>
  has('docker')
    ? spawnSync('docker', ['info'], { stdio: 'ignore', timeout: 10_000 }).status === 0
    : quiet('curl', ['-fsS', '--max-time', '2', '--unix-socket', (process.env.DOCKER_HOST ?? '').replace(/^unix:\/\//, '') || '/var/run/docker.sock', 'http://localhost/_ping'])
        .status === 0;
const ENGINE = 'a Docker engine (sandboxed steps and their tests)';
const CHROMIUM_WHAT = `Chromium at ${CHROMIUM} (the console's browser tests)`;

/** Runs a command as root: directly, or through passwordless sudo. */
function privileged(cmd, args) {
  const env = ['DEBIAN_FRONTEND=noninteractive'];
  if (root0) run('env', [...env, cmd, ...args]);
  else run('sudo', ['-n', 'env', ...env, cmd, ...args]);
}

step('debian packages', () => {
  const wanted = [];
  // services/sandbox/apt/fetch-deb.mjs (nats-server, the sandbox's busybox) checks Debian's signatures.
  if (!existsSync(KEYRING)) wanted.push(['debian-archive-keyring', 'the Debian archive keyring (to fetch nats-server and busybox)']);
  if (!has('dockerd') && !engineAnswers()) wanted.push(['docker.io', ENGINE]);
  if (purpose === 'test') {
    if (!existsSync(CHROMIUM)) wanted.push(['chromium', CHROMIUM_WHAT]);
    if (!has('openssl')) wanted.push(['openssl', 'openssl (test certificates)']);
  }
  if (wanted.length === 0) return 'none missing';
  if (!may) {
    for (const [pkg, what] of wanted) lack(what, getIt(pkg));
    return `${wanted.map(([p]) => p).join(', ')} not installed (${debian ? 'needs root or passwordless sudo' : 'not Debian'})`;
  }
  const pkgs = wanted.map(([p]) => p);
  const apt = (...args) => privileged('flock', ['/tmp/capstan-apt.lock', 'apt-get', '-q', '-o', 'DPkg::Lock::Timeout=600', ...args]);
  // A fresh machine has no package lists yet; a machine that knows the packages needs no update.
  if (pkgs.some((p) => quiet('apt-cache', ['show', '--no-all-versions', p]).status !== 0)) apt('update');
  apt('install', '-y', '--no-install-recommends', ...pkgs);
  return `installed ${pkgs.join(', ')}`;
});

// ---------------------------------------------------------------------------------------
// nats-server >= 2.12 (Debian bookworm's is 2.9), into .capstan/bin.

step('nats-server', () => {
  const r = quiet(process.execPath, [join(root, 'infra/nats/install.mjs')]);
  if (r.status !== 0) throw new Error((r.stderr || r.stdout).trim());
  return r.stdout
    .trim()
    .replace(/^capstan: /, '')
    .split('\n')
    .at(-1);
});

// ---------------------------------------------------------------------------------------
// PostgreSQL for the tests: scratch databases on 127.0.0.1:5432 and the server binaries for
// a private cluster. The machine's cluster is started when it is down; never restarted.

if (purpose === 'test') {
  step('postgresql', () => {
    const bins = existsSync('/usr/lib/postgresql') ? readdirSync('/usr/lib/postgresql').filter((v) => existsSync(`/usr/lib/postgresql/${v}/bin/initdb`)) : [];
    const how = `install PostgreSQL (${getIt('postgresql')}) with trust auth for 127.0.0.1:5432, or set CAPSTAN_TEST_PG`;
    if (bins.length === 0) throw new Error(`PostgreSQL server binaries (/usr/lib/postgresql/<v>/bin) not found: ${how}`);
    if (process.env.CAPSTAN_TEST_PG) return `binaries ${bins.join(', ')}; server: CAPSTAN_TEST_PG`;
    const ready = () => has('pg_isready') && quiet('pg_isready', ['-q', '-h', '127.0.0.1', '-p', '5432']).status === 0;
    if (ready()) return `answering on 127.0.0.1:5432 (binaries ${bins.join(', ')})`;
    const clusters = existsSync('/etc/postgresql') ? readdirSync('/etc/postgresql').sort((a, b) => Number(a) - Number(b)) : [];
    if (!may || clusters.length === 0 || !has('pg_ctlcluster')) throw new Error(`nothing answers on 127.0.0.1:5432: ${how}`);
    const v = clusters.at(-1);
    privileged('pg_ctlcluster', ['--skip-systemctl-redirect', v, 'main', 'start']);
    for (let i = 0; i < PG_WAIT_S * 2 && !ready(); i++) spawnSync('sleep', ['0.5']);
    if (!ready()) throw new Error(`started cluster ${v}/main, but nothing answers on 127.0.0.1:5432 after ${PG_WAIT_S} s`);
    return `started cluster ${v}/main`;
  });
}

// ---------------------------------------------------------------------------------------
// The build: the sandbox image is made from it, and the commands run it.

step('build', () => {
  const r = quiet('npm', ['run', 'build', '--silent']);
  if (r.status !== 0) throw new Error(`npm run build failed:\n${(r.stdout + r.stderr).trim().split('\n').slice(-30).join('\n')}`);
  return 'npm run build';
});

// ---------------------------------------------------------------------------------------
// The Docker engine (infra/docker/ensure-dockerd.sh: DOCKER_HOST's engine, started when it
// does not answer) and the sandbox image in it.

let engine = false;
step('docker engine', () => {
  const r = quiet('bash', [join(root, 'infra/docker/ensure-dockerd.sh')]);
  const out = `${r.stdout}${r.stderr}`.trim();
  if (r.status === 0) {
    engine = true;
    return out
      .split('\n')
      .map((l) => l.replace(/^docker engine: /, ''))
      .join('; ');
  }
  // Not allowed to start one: sandboxes (and their tests) wait for someone who may.
  if (r.status === 3) return lack(ENGINE, 'run `sudo bash infra/docker/ensure-dockerd.sh` once');
  // The dev stack runs without sandboxes; the tests need them.
  if (purpose === 'start') return lack(ENGINE, `dockerd did not start here; see its log:\n${out}`);
  throw new Error(out);
});

step('sandbox image', () => {
  if (!engine) return 'no engine; not built';
  const r = quiet(process.execPath, [join(root, 'infra/sandbox/build.mjs')]);
  if (r.status !== 0) throw new Error((r.stderr || r.stdout).trim().split('\n').slice(-10).join('\n'));
  return r.stdout.trim();
});

// ---------------------------------------------------------------------------------------
// What the tests use besides.

if (purpose === 'test') {
  step('chromium', () => {
    if (!existsSync(CHROMIUM)) return lack(CHROMIUM_WHAT, getIt('chromium'));
    return quiet(CHROMIUM, ['--version']).stdout.trim() || CHROMIUM;
  });
}

finish(0);

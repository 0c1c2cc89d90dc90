#!/usr/bin/env bash
# Makes gVisor's runsc available to the Docker engine as the runtime `runsc`, for sandboxes.
#
#   bash infra/docker/ensure-runsc.sh
#
# Idempotent. Installs Debian's `runsc` package with apt when /usr/bin/runsc is missing, and
# registers it in /etc/docker/daemon.json under `runtimes` (other keys are kept) with the
# argument `--network=none`: sandboxes have no network, and runsc's own network stack would
# otherwise try to configure one. When dockerd is running it is sent SIGHUP, which reloads
# `runtimes` without a restart (running containers are untouched); when it is not, the file is
# read when it starts (ensure-dockerd.sh calls this script before starting it).
#
# Needs root to install or register. Where runsc cannot be had, it says why and exits 0: the
# sandbox service then runs sandboxes under runc with a warning. CAPSTAN_REQUIRE_RUNSC=1 makes
# that an error instead.
set -euo pipefail

DAEMON_JSON=${DOCKER_DAEMON_JSON:-/etc/docker/daemon.json}
PIDFILE=/var/run/docker.pid
RUNSC=/usr/bin/runsc
APT_LOCK=/tmp/capstan-apt.lock

give_up() {
  echo "gVisor (runsc): $*" >&2
  if [[ ${CAPSTAN_REQUIRE_RUNSC:-0} == 1 ]]; then exit 1; fi
  echo "gVisor (runsc): sandboxes will run under runc (SANDBOX_RUNTIME=auto falls back with a warning)" >&2
  exit 0
}

# The engine's registered runtimes, one per line (empty when it does not answer).
registered() {
  if command -v docker >/dev/null 2>&1; then
    timeout 10 docker info --format '{{range $k, $v := .Runtimes}}{{$k}}{{"\n"}}{{end}}' 2>/dev/null || true
  else
    curl -fsS --max-time 5 --unix-socket /var/run/docker.sock http://localhost/info 2>/dev/null |
      node -e 'let s="";process.stdin.on("data",(d)=>s+=d).on("end",()=>{try{console.log(Object.keys(JSON.parse(s).Runtimes||{}).join("\n"))}catch{}})' || true
  fi
}
dockerd_running() { [[ -s $PIDFILE ]] && kill -0 "$(cat "$PIDFILE")" 2>/dev/null; }
version() { { "$RUNSC" --version 2>/dev/null || echo 'version unknown'; } | sed -n 1p; }

if dockerd_running && registered | grep -qx runsc; then
  echo "gVisor (runsc): registered ($(version))"
  exit 0
fi

if [[ $(id -u) -ne 0 ]]; then give_up "not registered, and installing or registering it needs root"; fi

# Holds the apt lock for the whole install: several checkouts may provision at once.
with_apt_lock() {
  if command -v flock >/dev/null 2>&1; then flock "$APT_LOCK" "$@"; else "$@"; fi
}
install_runsc() {
  if [[ -x $RUNSC ]]; then return 0; fi
  if ! apt-cache policy runsc 2>/dev/null | grep -q 'Candidate: [0-9]'; then apt-get update -q; fi
  DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends runsc
}
if [[ ! -x $RUNSC ]]; then
  echo "gVisor (runsc): installing Debian's runsc package"
  with_apt_lock bash -c "$(declare -f install_runsc); RUNSC=$RUNSC; install_runsc" || give_up "apt-get install runsc failed"
fi
[[ -x $RUNSC ]] || give_up "$RUNSC is missing after the install"

# Merge our runtime into daemon.json, keeping everything else; write only when it changes.
mkdir -p "$(dirname "$DAEMON_JSON")"
changed=$(with_apt_lock node - "$DAEMON_JSON" "$RUNSC" <<'EOF'
const fs = require('node:fs');
const [file, path] = process.argv.slice(2);
let doc = {};
try {
  doc = JSON.parse(fs.readFileSync(file, 'utf8'));
} catch (e) {
  if (e.code !== 'ENOENT') { console.error(`${file} is not valid JSON: ${e.message}`); process.exit(2); }
}
const want = { path, runtimeArgs: ['--network=none'] };
const runtimes = { ...(doc.runtimes || {}) };
if (JSON.stringify(runtimes.runsc) === JSON.stringify(want)) { console.log('no'); process.exit(0); }
runtimes.runsc = want;
const tmp = `${file}.capstan.tmp`;
fs.writeFileSync(tmp, `${JSON.stringify({ ...doc, runtimes }, null, 2)}\n`);
fs.renameSync(tmp, file);
console.log('yes');
EOF
) || give_up "cannot update $DAEMON_JSON"

if ! dockerd_running; then
  echo "gVisor (runsc): registered in $DAEMON_JSON; dockerd reads it when it starts"
  exit 0
fi
if [[ $changed == yes ]] || ! registered | grep -qx runsc; then
  # SIGHUP reloads daemon.json's reloadable keys, `runtimes` among them; nothing restarts.
  echo "gVisor (runsc): reloading dockerd's configuration (SIGHUP; running containers are untouched)"
  kill -HUP "$(cat "$PIDFILE")"
fi
for _ in $(seq 1 20); do
  if registered | grep -qx runsc; then
    echo "gVisor (runsc): registered ($(version))"
    exit 0
  fi
  sleep 0.5
done
give_up "dockerd did not pick up the runsc runtime from $DAEMON_JSON (see its log)"

#!/usr/bin/env bash
# Makes sure a Docker engine answers on this machine, for the sandbox service and its tests.
#
#   bash infra/docker/ensure-dockerd.sh
#
# If `docker info` already succeeds, the engine is never restarted: only gVisor's runsc is
# added to its runtimes when missing (ensure-runsc.sh: a configuration reload, SIGHUP).
# Otherwise `docker.io` is installed with apt when `dockerd` is missing, runsc is installed
# and registered, and dockerd is started in the background (log:
# /var/log/capstan-dockerd.log). Waits up to 30 s for the engine to answer. Needs root to
# install or start the engine.
#
# `docker info` is only a liveness probe: the CLI on PATH may be a different version from the
# engine, and Capstan itself talks to the engine through its API (dockerode).
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
LOG=/var/log/capstan-dockerd.log
PIDFILE=/var/run/docker.pid
WAIT_S=30

# The CLI when there is one; otherwise the engine's own ping endpoint on its socket.
alive() {
  if command -v docker >/dev/null 2>&1; then
    timeout 10 docker info >/dev/null 2>&1
  else
    curl -fsS --max-time 2 --unix-socket /var/run/docker.sock http://localhost/_ping >/dev/null 2>&1
  fi
}
running() {
  echo "docker engine: running ($(docker info --format '{{.ServerVersion}}' 2>/dev/null || echo 'version unknown'))"
}

if alive; then
  running
  bash "$HERE/ensure-runsc.sh"
  exit 0
fi

if [[ $(id -u) -ne 0 ]]; then
  echo "docker engine: not answering, and starting one needs root" >&2
  exit 1
fi

if ! command -v dockerd >/dev/null 2>&1; then
  echo "docker engine: dockerd not found; installing docker.io with apt"
  apt-get update -q
  DEBIAN_FRONTEND=noninteractive apt-get install -y -q docker.io
fi

# Registered before the engine starts, so it reads runsc from daemon.json with no reload.
bash "$HERE/ensure-runsc.sh"

# A dockerd that is still starting (its pid file names a live process) is waited for, not
# doubled; a stale pid file from an engine that died does not stop a new one.
if [[ -s $PIDFILE ]] && kill -0 "$(cat "$PIDFILE")" 2>/dev/null; then
  echo "docker engine: dockerd is running but not answering yet; waiting"
else
  echo "docker engine: starting dockerd (log: $LOG)"
  nohup dockerd >>"$LOG" 2>&1 </dev/null &
  disown || true
fi

for _ in $(seq 1 "$WAIT_S"); do
  if alive; then
    running
    bash "$HERE/ensure-runsc.sh"
    exit 0
  fi
  sleep 1
done
echo "docker engine: no answer after ${WAIT_S} s; see $LOG" >&2
tail -n 20 "$LOG" >&2 2>/dev/null || true
exit 1

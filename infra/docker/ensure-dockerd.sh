#!/usr/bin/env bash
# Makes sure a Docker engine answers on this machine, for the sandbox service and its tests.
#
#   bash infra/docker/ensure-dockerd.sh
#
# If the engine answers, it is never restarted: only gVisor's runsc is added to its runtimes
# when missing (ensure-runsc.sh: a configuration reload, SIGHUP; the machine's engine only, at
# the default socket). Otherwise `docker.io` is installed from Debian when `dockerd` is missing, and
# dockerd is started in the background. Waits up to 30 s for the engine to answer.
#
# Installing or starting an engine needs root or passwordless sudo. Without either, one line
# says what to run, and the exit code is 3 (1 is an engine that failed to start).
#
# The engine is the one DOCKER_HOST names (a unix:// socket; default /var/run/docker.sock).
# For a socket other than the default, dockerd is started listening there, with
# CAPSTAN_DOCKERD_FLAGS added (its own --data-root, --exec-root, --pidfile: an engine beside
# the machine's, which is how the tests exercise this script without touching the machine's
# engine). CAPSTAN_DOCKERD_LOG is its log (default /var/log/capstan-dockerd.log).
#
# `docker info` is only a liveness probe: the CLI on PATH may be a different version from the
# engine, and Capstan itself talks to the engine through its API (dockerode).
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
DEFAULT_SOCKET=/var/run/docker.sock
HOST=${DOCKER_HOST:-unix://$DEFAULT_SOCKET}
LOG=${CAPSTAN_DOCKERD_LOG:-/var/log/capstan-dockerd.log}
# Word splitting is intended: the flags are a list.
read -r -a FLAGS <<<"${CAPSTAN_DOCKERD_FLAGS:-}"
WAIT_S=30

if [[ $HOST != unix://* ]]; then
  # A remote engine is someone else's to start; say so rather than start a local one.
  if timeout 10 docker info >/dev/null 2>&1; then
    echo "docker engine: running at $HOST"
    exit 0
  fi
  echo "docker engine: $HOST does not answer; start it there, or unset DOCKER_HOST for a local engine" >&2
  exit 1
fi
SOCKET=${HOST#unix://}

# The pid file dockerd writes: the one in the flags, else dockerd's default.
PIDFILE=/var/run/docker.pid
for ((i = 0; i < ${#FLAGS[@]}; i++)); do
  case ${FLAGS[i]} in
    --pidfile=*) PIDFILE=${FLAGS[i]#--pidfile=} ;;
    --pidfile | -p) PIDFILE=${FLAGS[i + 1]:-$PIDFILE} ;;
  esac
done

# The CLI when there is one; otherwise the engine's own ping endpoint on its socket.
alive() {
  if command -v docker >/dev/null 2>&1; then
    DOCKER_HOST=$HOST timeout 10 docker info >/dev/null 2>&1
  else
    curl -fsS --max-time 2 --unix-socket "$SOCKET" http://localhost/_ping >/dev/null 2>&1
  fi
}
# gVisor for the machine's engine; an engine beside it (its own socket) is left as it is.
ensure_runsc() {
  if [[ $SOCKET == "$DEFAULT_SOCKET" ]]; then "${SUDO[@]}" bash "$HERE/ensure-runsc.sh"; fi
}
running() {
  echo "docker engine: running at $SOCKET ($(DOCKER_HOST=$HOST docker info --format '{{.ServerVersion}}' 2>/dev/null || echo 'version unknown'))"
}

SUDO=()
if alive; then
  running
  ensure_runsc
  exit 0
fi

# Root does it itself; anyone else through passwordless sudo, or not at all.
if [[ $(id -u) -ne 0 ]]; then
  if command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then
    SUDO=(sudo -n)
  else
    echo "docker engine: none answers at $SOCKET, and starting one needs root or passwordless sudo: run \`sudo bash infra/docker/ensure-dockerd.sh\` once" >&2
    exit 3
  fi
fi

# Two callers at once (two test runs) start one engine: the second waits here, then finds it.
LOCK=/tmp/capstan-dockerd-$(printf '%s' "$SOCKET" | cksum | cut -d' ' -f1).lock
if { exec 9>>"$LOCK"; } 2>/dev/null; then
  chmod 0666 "$LOCK" 2>/dev/null || true
  flock -w 120 9 || true
fi
if alive; then
  running
  ensure_runsc
  exit 0
fi

if ! command -v dockerd >/dev/null 2>&1; then
  echo "docker engine: dockerd not found; installing docker.io from Debian"
  "${SUDO[@]}" env DEBIAN_FRONTEND=noninteractive flock /tmp/capstan-apt.lock apt-get -q -o DPkg::Lock::Timeout=600 update
  "${SUDO[@]}" env DEBIAN_FRONTEND=noninteractive flock /tmp/capstan-apt.lock apt-get install -y -q -o DPkg::Lock::Timeout=600 docker.io
fi

# Registered before the engine starts, so it reads runsc from daemon.json with no reload.
ensure_runsc

ARGS=()
[[ $SOCKET != "$DEFAULT_SOCKET" ]] && ARGS+=(-H "unix://$SOCKET")
ARGS+=("${FLAGS[@]}")
# Started through sudo, the socket belongs to the caller's group, so the caller can use it.
[[ ${#SUDO[@]} -gt 0 ]] && ARGS+=(--group "$(id -gn)")

# A dockerd that is still starting (its pid file names a live process) is waited for, not
# doubled; a stale pid file from an engine that died does not stop a new one.
if [[ -s $PIDFILE ]] && "${SUDO[@]}" kill -0 "$(cat "$PIDFILE")" 2>/dev/null; then
  echo "docker engine: dockerd is running but not answering yet; waiting"
else
  echo "docker engine: starting dockerd at $SOCKET (log: $LOG)"
  # setsid: the engine outlives the command that started it (npm, a test run).
  # 9>&-: the engine must not hold the lock above for the rest of its life.
  "${SUDO[@]}" setsid sh -c 'exec dockerd "$@" >>"$0" 2>&1 </dev/null' "$LOG" "${ARGS[@]}" 9>&- &
  disown || true
fi

for _ in $(seq 1 "$WAIT_S"); do
  if alive; then
    running
    ensure_runsc
    exit 0
  fi
  sleep 1
done
echo "docker engine: no answer at $SOCKET after ${WAIT_S} s; see $LOG" >&2
tail -n 20 "$LOG" >&2 2>/dev/null || true
exit 1

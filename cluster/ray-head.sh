#!/usr/bin/env bash
# A local Ray head for development and end-to-end tests: its own temp dir, non-default ports, dashboard
# (and so the job submission API) on 127.0.0.1 only, token auth off unless RAY_AUTH_MODE says otherwise,
# and stopped by PID -- never `ray stop`, which kills every Ray on the machine.
#
#   cluster/ray-head.sh start    start the head (no-op if this head already runs); returns once the
#                                dashboard answers for this head's session and its dashboard agent (which
#                                runs submitted jobs) listens; the last line of stdout is
#                                `export RAY_ADDRESS=http://127.0.0.1:<dashboard port>`
#   cluster/ray-head.sh stop     stop exactly the processes this script started (and their descendants)
#   cluster/ray-head.sh status   "running ..." (exit 0) or "not running" (exit 3)
#   cluster/ray-head.sh address  print the dashboard address (for `ray job submit --address`)
#
# Environment (all optional):
#   RAY_HEAD_DIR            Ray's --temp-dir, pid file and logs. Default <repo>/.ray-dev when that path is short,
#                           else /tmp/wan-dist-ray-$USER. Must stay short (<= 45 characters): Ray puts unix sockets
#                           at <dir>/session_<date>_<pid>/sockets/... and socket paths are limited to 107 bytes.
#   RAY_HEAD_PORT           GCS port (default 26379)
#   RAY_DASHBOARD_PORT      dashboard + job submission API port (default 28265)
#   RAY_CLIENT_PORT         Ray Client server port (default 20001)
#   RAY_METRICS_PORT        --metrics-export-port (default 28080)
#   RAY_DASHBOARD_AGENT_PORT  --dashboard-agent-listen-port (default 28266; Ray's default 52365 clashes
#                           with any other Ray on the machine)
#   RAY_NODE_IP             --node-ip-address (default: Ray's choice, the host's outbound IP; Ray turns 127.0.0.1
#                           into that IP anyway). Only the dashboard / job API binds 127.0.0.1; Ray binds GCS,
#                           raylet and client-server ports on all interfaces (GCS reachable at 127.0.0.1:PORT).
#   RAY_HEAD_CPUS           --num-cpus (default: nproc)
#   RAY_HEAD_GPUS           --num-gpus (default: Ray's autodetection)
#   RAY_OBJECT_STORE_BYTES  --object-store-memory in bytes (default 536870912 = 512 MB)
#   RAY_AUTH_MODE           exported to Ray (default "disabled")
#   RAY_START_TIMEOUT_S     how long `start` waits for the dashboard (default 120)
#   RAY_STOP_GRACE_S        seconds `stop` waits after SIGTERM before SIGKILL (default 15; a clean shutdown takes
#                           ~7 s; 0 kills at once)
#   RAY_HEAD_EXTRA_ARGS     extra arguments appended to `ray start` (word-split)
#
# Files in RAY_HEAD_DIR: head.pid (line 1: the session leader = `ray start --block`; then every PID of its
# session at start), head.env (RAY_ADDRESS=..., RAY_GCS_ADDRESS=..., ports), head.log (ray start's output).
# Linux (uses `ps -o sid`); the processes run in their own session, started by `ray start --block`.
set -euo pipefail

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"

if [ -x "$repo/.venv/bin/ray" ]; then
  RAY_BIN="$repo/.venv/bin/ray"
  PY="$repo/.venv/bin/python"
  # Ray's workers and job entrypoints (`python -m wan_dist.cli.batch ...`) inherit this PATH.
  export VIRTUAL_ENV="$repo/.venv" PATH="$repo/.venv/bin:$PATH"
else
  RAY_BIN="$(command -v ray || true)"
  PY="$(command -v python3 || command -v python || true)"
  if [ -z "$RAY_BIN" ] || [ -z "$PY" ]; then
    echo "ray-head: no .venv/bin/ray and no ray on PATH" >&2
    exit 2
  fi
fi

default_dir="$repo/.ray-dev"
if [ "${#default_dir}" -gt 40 ]; then
  default_dir="/tmp/wan-dist-ray-${USER:-$(id -u)}"
fi
HEAD_DIR="${RAY_HEAD_DIR:-$default_dir}"
case "$HEAD_DIR" in
  /*) ;;
  *) HEAD_DIR="$PWD/$HEAD_DIR" ;;
esac
while [ "${#HEAD_DIR}" -gt 1 ] && [ "${HEAD_DIR%/}" != "$HEAD_DIR" ]; do HEAD_DIR="${HEAD_DIR%/}"; done
if [ "${#HEAD_DIR}" -gt 45 ]; then
  echo "ray-head: RAY_HEAD_DIR=$HEAD_DIR is ${#HEAD_DIR} characters; keep it <= 45 (unix socket paths)" >&2
  exit 2
fi

GCS_PORT="${RAY_HEAD_PORT:-26379}"
DASH_PORT="${RAY_DASHBOARD_PORT:-28265}"
CLIENT_PORT="${RAY_CLIENT_PORT:-20001}"
METRICS_PORT="${RAY_METRICS_PORT:-28080}"
AGENT_PORT="${RAY_DASHBOARD_AGENT_PORT:-28266}"
NODE_IP="${RAY_NODE_IP:-}"
CPUS="${RAY_HEAD_CPUS:-$(nproc 2>/dev/null || getconf _NPROCESSORS_ONLN)}"
OBJ_BYTES="${RAY_OBJECT_STORE_BYTES:-536870912}"
START_TIMEOUT="${RAY_START_TIMEOUT_S:-120}"
STOP_GRACE="${RAY_STOP_GRACE_S:-15}"
export RAY_AUTH_MODE="${RAY_AUTH_MODE:-disabled}"
export RAY_USAGE_STATS_ENABLED=0

PID_FILE="$HEAD_DIR/head.pid"
ENV_FILE="$HEAD_DIR/head.env"
LOG_FILE="$HEAD_DIR/head.log"
DASH_URL="http://127.0.0.1:$DASH_PORT"

log() { echo "ray-head: $*" >&2; }

# The session leader recorded in head.pid, if it is alive and is our `ray start` (guards against PID reuse).
leader_pid() {
  [ -f "$PID_FILE" ] || return 1
  local pid
  pid="$(head -n1 "$PID_FILE" 2>/dev/null | tr -dc '0-9')"
  [ -n "$pid" ] || return 1
  is_live "$pid" || return 1
  local args
  args="$(ps -ww -o args= -p "$pid" 2>/dev/null || true)"
  case "$args" in
    *ray*start*) names_our_dir "$args" && echo "$pid" ;;
    *) return 1 ;;
  esac
}

# Whether a command line names HEAD_DIR itself (not merely a longer path starting with it).
names_our_dir() {
  printf '%s \n' "$1" | grep -qF -e "$HEAD_DIR/" -e "$HEAD_DIR "
}

# Alive and not a zombie.
is_live() {
  local st
  st="$(ps -o stat= -p "$1" 2>/dev/null || true)"
  [ -n "$st" ] && [ "${st:0:1}" != "Z" ]
}

# Every live process in session $1 plus all descendants of those (a job's driver runs in a session of its own,
# started by the job supervisor, which is in ours).
session_tree() {
  ps -eo pid=,ppid=,sid=,stat= | awk -v s="$1" '
    { pid[NR]=$1; ppid[NR]=$2; sid[NR]=$3; st[NR]=$4 }
    END {
      for (i = 1; i <= NR; i++) if (sid[i] == s) keep[pid[i]] = 1
      changed = 1
      while (changed) {
        changed = 0
        for (i = 1; i <= NR; i++) if ((ppid[i] in keep) && !(pid[i] in keep)) { keep[pid[i]] = 1; changed = 1 }
      }
      for (i = 1; i <= NR; i++) if ((pid[i] in keep) && substr(st[i], 1, 1) != "Z") print pid[i]
    }'
}

dashboard_session() {
  # Prints the session_name the dashboard on DASH_PORT reports; fails if nothing answers.
  "$PY" - "$DASH_URL/api/version" <<'EOF'
import json, sys, urllib.request
# No proxy for loopback, whatever http_proxy says.
with urllib.request.build_opener(urllib.request.ProxyHandler({})).open(sys.argv[1], timeout=2) as r:
    print(json.load(r)["session_name"])
EOF
}

our_session_name() {
  local link="$HEAD_DIR/session_latest"
  [ -L "$link" ] && basename "$(readlink "$link")"
}

port_in_use() {
  "$PY" - "$1" "$2" <<'EOF'
import socket, sys
s = socket.socket()
s.settimeout(0.5)
sys.exit(0 if s.connect_ex((sys.argv[1], int(sys.argv[2]))) == 0 else 1)
EOF
}

print_address() {
  echo "export RAY_ADDRESS=$DASH_URL"
}

cmd_status() {
  local pid
  if pid="$(leader_pid)"; then
    if [ "$(dashboard_session 2>/dev/null || true)" = "$(our_session_name)" ]; then
      echo "running (pid $pid, dir $HEAD_DIR, dashboard $DASH_URL, gcs 127.0.0.1:$GCS_PORT)"
    else
      echo "running (pid $pid, dir $HEAD_DIR), dashboard $DASH_URL not answering"
    fi
    return 0
  fi
  if pid="$(stale_leader)"; then
    echo "not running (dir $HEAD_DIR; processes of a dead head in session $pid remain: run stop)"
    return 3
  fi
  echo "not running (dir $HEAD_DIR)"
  return 3
}

cmd_start() {
  local pid
  if pid="$(leader_pid)"; then
    log "already running (pid $pid, dir $HEAD_DIR)"
    wait_dashboard "$pid"
    print_address
    return 0
  fi
  if pid="$(stale_leader)"; then
    log "cleaning up what is left of a previous head (session $pid)"
    do_stop "$pid" || return 1
  fi
  mkdir -p "$HEAD_DIR"
  # Keep the dir out of git and out of `ray job submit --working-dir .` uploads (Ray honours .gitignore files).
  [ -f "$HEAD_DIR/.gitignore" ] || echo '*' > "$HEAD_DIR/.gitignore"
  rm -f "$PID_FILE" "$ENV_FILE" "$HEAD_DIR/session_latest"
  local port
  for port in "$GCS_PORT" "$DASH_PORT" "$CLIENT_PORT" "$METRICS_PORT" "$AGENT_PORT"; do
    if port_in_use 127.0.0.1 "$port" || { [ -n "$NODE_IP" ] && port_in_use "$NODE_IP" "$port"; }; then
      log "port $port is already in use (another Ray?); set RAY_HEAD_PORT / RAY_DASHBOARD_PORT / RAY_CLIENT_PORT / RAY_METRICS_PORT / RAY_DASHBOARD_AGENT_PORT"
      return 1
    fi
  done
  local args=(start --head --block
    --temp-dir "$HEAD_DIR"
    --port "$GCS_PORT"
    --include-dashboard true
    --dashboard-host 127.0.0.1
    --dashboard-port "$DASH_PORT"
    --dashboard-agent-listen-port "$AGENT_PORT"
    --ray-client-server-port "$CLIENT_PORT"
    --metrics-export-port "$METRICS_PORT"
    --num-cpus "$CPUS"
    --object-store-memory "$OBJ_BYTES"
    --disable-usage-stats)
  if [ -n "$NODE_IP" ]; then args+=(--node-ip-address "$NODE_IP"); fi
  if [ -n "${RAY_HEAD_GPUS:-}" ]; then args+=(--num-gpus "$RAY_HEAD_GPUS"); fi
  # shellcheck disable=SC2206
  if [ -n "${RAY_HEAD_EXTRA_ARGS:-}" ]; then args+=($RAY_HEAD_EXTRA_ARGS); fi
  log "starting: $RAY_BIN ${args[*]}"
  # A new session (setsid) whose leader is `ray start --block`: every process Ray starts stays in it (workers
  # change process group, not session), so `stop` finds them all by session id. All fds go to the log file so
  # a caller capturing our output (subprocess.run) does not wait for the head to exit.
  # RAY_ADDRESS (e.g. left exported by an earlier `start`) is for clients, not for the head's own processes.
  unset RAY_ADDRESS
  "$PY" -c 'import os, sys; os.setsid(); os.execv(sys.argv[1], sys.argv[1:])' "$RAY_BIN" "${args[@]}" \
    </dev/null >"$LOG_FILE" 2>&1 &
  pid=$!
  echo "$pid" > "$PID_FILE"
  if ! wait_dashboard "$pid"; then
    log "start failed; last lines of $LOG_FILE:"
    tail -n 30 "$LOG_FILE" >&2 || true
    do_stop "$pid" >/dev/null 2>&1 || true
    return 1
  fi
  { echo "$pid"; session_tree "$pid" | grep -vx "$pid" || true; } > "$PID_FILE.tmp"
  mv "$PID_FILE.tmp" "$PID_FILE"
  cat > "$ENV_FILE" <<EOF
RAY_ADDRESS=$DASH_URL
RAY_GCS_ADDRESS=127.0.0.1:$GCS_PORT
RAY_HEAD_DIR=$HEAD_DIR
RAY_HEAD_PORT=$GCS_PORT
RAY_DASHBOARD_PORT=$DASH_PORT
RAY_CLIENT_PORT=$CLIENT_PORT
RAY_METRICS_PORT=$METRICS_PORT
RAY_DASHBOARD_AGENT_PORT=$AGENT_PORT
RAY_AUTH_MODE=$RAY_AUTH_MODE
EOF
  log "running (pid $pid, $(wc -l < "$PID_FILE") processes, dir $HEAD_DIR, gcs 127.0.0.1:$GCS_PORT, log $LOG_FILE)"
  log "submit jobs with: ray job submit --address $DASH_URL --working-dir . -- python -m wan_dist.cli.batch ..."
  print_address
}

# Waits until the dashboard on DASH_PORT answers for *our* session (not some other Ray on that port) and the
# head's dashboard agent (which runs submitted jobs) listens.
wait_dashboard() {
  local pid="$1" deadline=$((SECONDS + START_TIMEOUT)) want got
  while [ "$SECONDS" -lt "$deadline" ]; do
    if ! is_live "$pid"; then
      log "ray start (pid $pid) exited"
      return 1
    fi
    want="$(our_session_name || true)"
    if [ -n "$want" ]; then
      got="$(dashboard_session 2>/dev/null || true)"
      if [ "$got" = "$want" ] && port_in_use 127.0.0.1 "$AGENT_PORT"; then
        return 0
      fi
    fi
    sleep 0.5
  done
  log "dashboard $DASH_URL did not answer within ${START_TIMEOUT}s"
  return 1
}

do_stop() {
  local pid="$1" pids="" extra="" p alive="" deadline
  pids="$(session_tree "$pid")"
  # Recorded PIDs still alive whose command line names our dir (a descendant reparented out of the tree):
  # nothing else is touched.
  if [ -f "$PID_FILE" ]; then
    for p in $(tail -n +2 "$PID_FILE" | tr -dc '0-9\n'); do
      if is_live "$p" && names_our_dir "$(ps -ww -o args= -p "$p" 2>/dev/null || true)"; then extra+=" $p"; fi
    done
  fi
  pids="$(printf '%s\n' $pids $extra | sort -un)"
  log "stopping pid $pid and its session: $(echo $pids | wc -w) processes"
  # SIGTERM to the leader only: `ray start --block` then shuts its children down in order (~7 s). SIGTERM to
  # all of them at once makes the shutdown hang; whatever is left after RAY_STOP_GRACE_S gets SIGKILL.
  kill -TERM "$pid" 2>/dev/null || true
  deadline=$((SECONDS + STOP_GRACE))
  while [ "$SECONDS" -lt "$deadline" ]; do
    alive=""
    for p in $pids; do if is_live "$p"; then alive+=" $p"; fi; done
    [ -z "$alive" ] && break
    sleep 0.2
  done
  # Anything left (and anything the session started meanwhile): SIGKILL.
  pids="$(printf '%s\n' $pids $(session_tree "$pid") | sort -un)"
  for p in $pids; do if is_live "$p"; then kill -KILL "$p" 2>/dev/null || true; fi; done
  deadline=$((SECONDS + 5))
  while :; do
    alive=""
    for p in $pids; do if is_live "$p"; then alive+=" $p"; fi; done
    if [ -z "$alive" ] || [ "$SECONDS" -ge "$deadline" ]; then break; fi
    sleep 0.1
  done
  if [ -n "$alive" ]; then
    log "still alive after SIGKILL:$alive"
    return 1
  fi
  return 0
}

# The recorded leader of a head whose leader died while some of its processes live on (e.g. after `kill -9` of
# the leader: Ray's agents survive it). A session id is not reused while the session has members, so the session's
# members are ours if one of them was recorded in head.pid at start or names our dir.
stale_leader() {
  [ -f "$PID_FILE" ] || return 1
  local pid p members
  pid="$(head -n1 "$PID_FILE" 2>/dev/null | tr -dc '0-9')"
  [ -n "$pid" ] || return 1
  members="$(session_tree "$pid")"
  [ -n "$members" ] || return 1
  for p in $members; do
    if grep -qx "$p" <(tail -n +2 "$PID_FILE") || names_our_dir "$(ps -ww -o args= -p "$p" 2>/dev/null || true)"; then
      echo "$pid"
      return 0
    fi
  done
  return 1
}

cmd_stop() {
  local pid
  if pid="$(leader_pid)" || pid="$(stale_leader)"; then
    if do_stop "$pid"; then
      rm -f "$PID_FILE" "$ENV_FILE"
      echo "stopped"
      return 0
    fi
    return 1
  fi
  rm -f "$PID_FILE" "$ENV_FILE"
  echo "not running (dir $HEAD_DIR)"
}

case "${1:-}" in
  start) cmd_start ;;
  stop) cmd_stop ;;
  status) cmd_status ;;
  address) echo "$DASH_URL" ;;
  *)
    echo "usage: $0 {start|stop|status|address}" >&2
    exit 2
    ;;
esac

#!/usr/bin/env bash
# Start a single-node Ray head for tests and laptops: everything on 127.0.0.1, token auth on.
#
#   cluster/start_local_head.sh [--port N] [--dashboard-port N] [--num-cpus N] [--num-gpus N]
#                               [--client-server-port N] [--dashboard-agent-port N]
#                               [--dashboard-metrics-port N] [--autoscaler-metrics-port N]
#                               [--state-dir DIR] [--ready-timeout S] [--ray BIN]
#
# Every flag has an environment-variable twin (the flag wins):
#   SINGE_RAY_PORT (6379)  SINGE_RAY_DASHBOARD_PORT (8265)  SINGE_RAY_NUM_CPUS (all cores)
#   SINGE_RAY_NUM_GPUS (Ray's detection)  SINGE_RAY_CLIENT_SERVER_PORT (10001)
#   SINGE_RAY_DASHBOARD_AGENT_PORT (52365)  SINGE_RAY_DASHBOARD_METRICS_PORT (44227)
#   SINGE_RAY_AUTOSCALER_METRICS_PORT (44217)  SINGE_RAY_STATE_DIR (/tmp/singe-ray-<uid>-<port>)
#   SINGE_RAY_READY_TIMEOUT (180 s)  SINGE_RAY_BIN (ray of the repo's .venv, else `ray` on PATH)
#
# Token: RAY_AUTH_TOKEN_PATH (a file) or RAY_AUTH_TOKEN (a value) if set, else a token kept in
# the state dir (generated on first start, 256 random bits, mode 600). ~/.ray/auth_token is
# never read or written, so this head does not change how other Ray commands on the machine behave.
#
# Why RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0: on Linux Ray rewrites --node-ip-address=127.0.0.1 (and
# any 127.0.0.1 address a client gives) into the machine's LAN address; with this variable set to 0
# Ray keeps 127.0.0.1, so the GCS, raylet, agents and metrics servers bind 127.0.0.1 only. The price:
# no other machine can join this head, which is what a local head is for. Clients that talk to the
# GCS (ray status, ray.init) need the same variable; the env file written below has it.
#
# Output: the addresses and the client environment, also written to <state dir>/client.env
# (`source` it). The process-group id of the head goes to <state dir>/head.pgid, which
# cluster/stop_local_head.sh uses to stop exactly this head and nothing else.
set -euo pipefail

die() { echo "start_local_head.sh: $*" >&2; exit 1; }

usage() { awk 'NR > 1 && /^#/ { sub(/^# ?/, ""); print; next } NR > 1 { exit }' "$0"; }

PORT="${SINGE_RAY_PORT:-6379}"
DASHBOARD_PORT="${SINGE_RAY_DASHBOARD_PORT:-8265}"
NUM_CPUS="${SINGE_RAY_NUM_CPUS:-}"
NUM_GPUS="${SINGE_RAY_NUM_GPUS:-}"
CLIENT_SERVER_PORT="${SINGE_RAY_CLIENT_SERVER_PORT:-10001}"
DASHBOARD_AGENT_PORT="${SINGE_RAY_DASHBOARD_AGENT_PORT:-52365}"
DASHBOARD_METRICS_PORT="${SINGE_RAY_DASHBOARD_METRICS_PORT:-44227}"
AUTOSCALER_METRICS_PORT="${SINGE_RAY_AUTOSCALER_METRICS_PORT:-44217}"
STATE_DIR="${SINGE_RAY_STATE_DIR:-}"
READY_TIMEOUT="${SINGE_RAY_READY_TIMEOUT:-180}"
RAY_BIN="${SINGE_RAY_BIN:-}"

need_value() { [[ $# -ge 2 && -n "$2" ]] || die "$1 needs a value"; }
while [[ $# -gt 0 ]]; do
    case "$1" in
        --port) need_value "$@"; PORT="$2"; shift 2 ;;
        --dashboard-port) need_value "$@"; DASHBOARD_PORT="$2"; shift 2 ;;
        --num-cpus) need_value "$@"; NUM_CPUS="$2"; shift 2 ;;
        --num-gpus) need_value "$@"; NUM_GPUS="$2"; shift 2 ;;
        --client-server-port) need_value "$@"; CLIENT_SERVER_PORT="$2"; shift 2 ;;
        --dashboard-agent-port) need_value "$@"; DASHBOARD_AGENT_PORT="$2"; shift 2 ;;
        --dashboard-metrics-port) need_value "$@"; DASHBOARD_METRICS_PORT="$2"; shift 2 ;;
        --autoscaler-metrics-port) need_value "$@"; AUTOSCALER_METRICS_PORT="$2"; shift 2 ;;
        --state-dir) need_value "$@"; STATE_DIR="$2"; shift 2 ;;
        --ready-timeout) need_value "$@"; READY_TIMEOUT="$2"; shift 2 ;;
        --ray) need_value "$@"; RAY_BIN="$2"; shift 2 ;;
        -h|--help) usage; exit 0 ;;
        *) die "unknown argument '$1' (see --help)" ;;
    esac
done

is_uint() { [[ "$1" =~ ^[0-9]+$ ]]; }
for pair in "--port=$PORT" "--dashboard-port=$DASHBOARD_PORT" "--client-server-port=$CLIENT_SERVER_PORT" \
            "--dashboard-agent-port=$DASHBOARD_AGENT_PORT" "--dashboard-metrics-port=$DASHBOARD_METRICS_PORT" \
            "--autoscaler-metrics-port=$AUTOSCALER_METRICS_PORT"; do
    value="${pair#*=}"
    { is_uint "$value" && (( value >= 1024 && value <= 65535 )); } || die "${pair%%=*} must be a port in 1024..65535, got '$value'"
done
[[ -z "$NUM_CPUS" ]] || is_uint "$NUM_CPUS" || die "--num-cpus must be a non-negative integer, got '$NUM_CPUS'"
[[ -z "$NUM_GPUS" ]] || is_uint "$NUM_GPUS" || die "--num-gpus must be a non-negative integer, got '$NUM_GPUS'"
is_uint "$READY_TIMEOUT" || die "--ready-timeout must be a number of seconds, got '$READY_TIMEOUT'"
ports=("$PORT" "$DASHBOARD_PORT" "$CLIENT_SERVER_PORT" "$DASHBOARD_AGENT_PORT" "$DASHBOARD_METRICS_PORT" "$AUTOSCALER_METRICS_PORT")
[[ $(printf '%s\n' "${ports[@]}" | sort -u | wc -l) -eq ${#ports[@]} ]] || die "the six ports must differ: ${ports[*]}"

REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
if [[ -z "$RAY_BIN" ]]; then
    if [[ -x "$REPO_ROOT/.venv/bin/ray" ]]; then RAY_BIN="$REPO_ROOT/.venv/bin/ray"
    else RAY_BIN="$(command -v ray || true)"; fi
fi
[[ -n "$RAY_BIN" && -x "$RAY_BIN" ]] || die "no ray executable (install the project: make env; or pass --ray BIN)"
PYTHON="$(dirname "$RAY_BIN")/python"
[[ -x "$PYTHON" ]] || PYTHON="$(command -v python3)" || die "no python next to $RAY_BIN"

STATE_DIR="${STATE_DIR:-/tmp/singe-ray-$(id -u)-$PORT}"
# Ray's temp dir is <state dir>/ray: Ray makes it world-writable (mode 777), so the token and
# the pid file stay one level up, in a directory of mode 700. Ray's Unix sockets live below it
# (ray/session_*/sockets/...); Unix socket paths are limited to 107 bytes, Ray's part takes ~70.
(( ${#STATE_DIR} <= 36 )) || die "--state-dir '$STATE_DIR' is too long for Ray's Unix sockets (36 characters at most)"
mkdir -p "$STATE_DIR"
chmod 700 "$STATE_DIR"
STATE_DIR="$(cd "$STATE_DIR" && pwd)"

group_alive() {  # any live (non-zombie) process in process group $1?
    ps -eo pgid=,stat= | awk -v g="$1" '$1 == g && $2 !~ /^Z/ { found = 1 } END { exit !found }'
}
if [[ -f "$STATE_DIR/head.pgid" ]] && group_alive "$(cat "$STATE_DIR/head.pgid")"; then
    die "a head started from $STATE_DIR is still running (process group $(cat "$STATE_DIR/head.pgid")); stop it first: cluster/stop_local_head.sh --state-dir $STATE_DIR"
fi
for port in "${ports[@]}"; do
    if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
        die "port $port on 127.0.0.1 is already in use (choose other ports: --help)"
    fi
done

# --- token -----------------------------------------------------------------------------------
if [[ -n "${RAY_AUTH_TOKEN_PATH:-}" ]]; then
    [[ -s "$RAY_AUTH_TOKEN_PATH" ]] || die "RAY_AUTH_TOKEN_PATH=$RAY_AUTH_TOKEN_PATH is not a non-empty file"
    TOKEN_PATH="$(cd "$(dirname "$RAY_AUTH_TOKEN_PATH")" && pwd)/$(basename "$RAY_AUTH_TOKEN_PATH")"
else
    TOKEN_PATH="$STATE_DIR/auth_token"
    if [[ -n "${RAY_AUTH_TOKEN:-}" ]]; then
        (umask 077; printf '%s' "$RAY_AUTH_TOKEN" > "$TOKEN_PATH")
    elif [[ ! -s "$TOKEN_PATH" ]]; then
        (umask 077; od -An -N32 -tx1 /dev/urandom | tr -d ' \n' > "$TOKEN_PATH")
    fi
    chmod 600 "$TOKEN_PATH"
fi

DASHBOARD_URL="http://127.0.0.1:$DASHBOARD_PORT"
GCS_ADDRESS="127.0.0.1:$PORT"
cat > "$STATE_DIR/client.env" <<EOF
# Client environment for the local Ray head started from $STATE_DIR (source this file).
export RAY_API_SERVER_ADDRESS=$DASHBOARD_URL
export RAY_ADDRESS=$GCS_ADDRESS
export RAY_AUTH_MODE=token
export RAY_AUTH_TOKEN_PATH=$TOKEN_PATH
export RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0
unset RAY_AUTH_TOKEN
EOF

# --- start -----------------------------------------------------------------------------------
start_args=(start --head
    --node-ip-address=127.0.0.1 --port="$PORT"
    --dashboard-host=127.0.0.1 --dashboard-port="$DASHBOARD_PORT"
    --dashboard-agent-listen-port="$DASHBOARD_AGENT_PORT"
    --ray-client-server-port="$CLIENT_SERVER_PORT"
    --temp-dir="$STATE_DIR/ray" --disable-usage-stats)
[[ -z "$NUM_CPUS" ]] || start_args+=(--num-cpus="$NUM_CPUS")
[[ -z "$NUM_GPUS" ]] || start_args+=(--num-gpus="$NUM_GPUS")

rm -f "$STATE_DIR/head.pgid"
# The head gets a session and process group of its own (setsid, done by Python so that macOS,
# which has no setsid command, works too), so the stop script can end exactly it. The background
# child of a non-interactive shell is not a group leader, so setsid succeeds and $! is the new
# group id; were it a leader already, it would be alone in its group, which serves as well.
# PATH: a job's entrypoint (`python jobs/prune.py ...`) must find the Python environment of
# this Ray, also when the script was called as .venv/bin/... without activating the venv.
env -u RAY_AUTH_TOKEN -u RAY_ADDRESS \
    PATH="$(dirname "$RAY_BIN"):$PATH" RAY_AUTH_MODE=token RAY_AUTH_TOKEN_PATH="$TOKEN_PATH" RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0 \
    DASHBOARD_METRIC_PORT="$DASHBOARD_METRICS_PORT" AUTOSCALER_METRIC_PORT="$AUTOSCALER_METRICS_PORT" \
    "$PYTHON" -c 'import os, sys
try:
    os.setsid()
except OSError:
    pass
os.execv(sys.argv[1], sys.argv[1:])' "$RAY_BIN" "${start_args[@]}" > "$STATE_DIR/start.log" 2>&1 < /dev/null &
starter=$!
echo "$starter" > "$STATE_DIR/head.pgid"

fail() {
    echo "start_local_head.sh: $*" >&2
    echo "--- last lines of $STATE_DIR/start.log ---" >&2
    tail -n 30 "$STATE_DIR/start.log" >&2 || true
    "$REPO_ROOT/cluster/stop_local_head.sh" --state-dir "$STATE_DIR" --grace 5 >&2 || true
    exit 1
}
rc=0
wait "$starter" || rc=$?
(( rc == 0 )) || fail "ray start exited with status $rc"

# `ray start` returns before the job server necessarily answers: wait for an authenticated
# request to succeed, which also proves the token works.
"$PYTHON" - "$DASHBOARD_URL/api/version" "$TOKEN_PATH" "$READY_TIMEOUT" <<'PY' || fail "the dashboard/job server did not answer an authenticated request within ${READY_TIMEOUT}s"
import sys, time, urllib.request
url, token_path, timeout = sys.argv[1], sys.argv[2], float(sys.argv[3])
token = open(token_path).read().strip()
deadline = time.monotonic() + timeout
while True:
    try:
        request = urllib.request.Request(url, headers={"Authorization": f"Bearer {token}"})
        with urllib.request.urlopen(request, timeout=5) as response:
            if response.status == 200:
                sys.exit(0)
    except Exception:
        pass
    if time.monotonic() > deadline:
        sys.exit(1)
    time.sleep(0.5)
PY

cat <<EOF
Ray head running on 127.0.0.1 with token authentication (process group $(cat "$STATE_DIR/head.pgid")).
  job submission / dashboard : $DASHBOARD_URL
  GCS address                : $GCS_ADDRESS
  token file                 : $TOKEN_PATH
  state dir                  : $STATE_DIR (Ray logs: ray/session_latest/logs)
Client environment (also in $STATE_DIR/client.env; \`source\` it):
$(grep -E '^(export|unset) ' "$STATE_DIR/client.env")
Submit a job:
  ray job submit --working-dir . -- python -c "print('ok')"
  (or explicitly: RAY_AUTH_MODE=token RAY_AUTH_TOKEN_PATH=$TOKEN_PATH ray job submit --address $DASHBOARD_URL ...)
Stop it:
  cluster/stop_local_head.sh --state-dir $STATE_DIR
EOF

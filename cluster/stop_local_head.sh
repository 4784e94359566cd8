#!/usr/bin/env bash
# Stop a head started by cluster/start_local_head.sh, and only that head.
#
#   cluster/stop_local_head.sh [--state-dir DIR | --port N] [--grace S] [--clean]
#   cluster/stop_local_head.sh --all
#
# The head is found through <state dir>/head.pgid (default state dir: /tmp/singe-ray-<uid>-<port>,
# port from --port, else SINGE_RAY_PORT, else 6379). Its processes are that process group plus
# all their descendants (Ray puts job drivers in sessions of their own). They get SIGTERM in the
# order `ray stop` uses (raylet, then the others, then the GCS), and SIGKILL once --grace seconds
# (default 10) have passed. Nothing else is touched: plain `ray stop` would end every Ray
# process on the machine, including other people's heads and test runs.
#
#   --clean  also delete the state dir (logs, client.env, and the generated token)
#   --all    run `ray stop` instead: every Ray process of this user on this machine (laptops)
#
# Exits 0 when the head is gone, also when it was not running.
set -euo pipefail

die() { echo "stop_local_head.sh: $*" >&2; exit 1; }

PORT="${SINGE_RAY_PORT:-6379}"
STATE_DIR="${SINGE_RAY_STATE_DIR:-}"
GRACE=10
CLEAN=0
ALL=0
need_value() { [[ $# -ge 2 && -n "$2" ]] || die "$1 needs a value"; }
while [[ $# -gt 0 ]]; do
    case "$1" in
        --state-dir) need_value "$@"; STATE_DIR="$2"; shift 2 ;;
        --port) need_value "$@"; PORT="$2"; shift 2 ;;
        --grace) need_value "$@"; GRACE="$2"; shift 2 ;;
        --clean) CLEAN=1; shift ;;
        --all) ALL=1; shift ;;
        -h|--help) awk 'NR > 1 && /^#/ { sub(/^# ?/, ""); print; next } NR > 1 { exit }' "$0"; exit 0 ;;
        *) die "unknown argument '$1' (see --help)" ;;
    esac
done
[[ "$GRACE" =~ ^[0-9]+$ ]] || die "--grace must be a whole number of seconds, got '$GRACE'"

if (( ALL )); then
    REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
    RAY_BIN="${SINGE_RAY_BIN:-}"
    if [[ -z "$RAY_BIN" ]]; then
        if [[ -x "$REPO_ROOT/.venv/bin/ray" ]]; then RAY_BIN="$REPO_ROOT/.venv/bin/ray"
        else RAY_BIN="$(command -v ray)" || die "no ray executable"; fi
    fi
    exec "$RAY_BIN" stop --grace-period "$GRACE"
fi

STATE_DIR="${STATE_DIR:-/tmp/singe-ray-$(id -u)-$PORT}"
[[ ! -d "$STATE_DIR" ]] || STATE_DIR="$(cd "$STATE_DIR" && pwd)"  # as the start script wrote it
PGID_FILE="$STATE_DIR/head.pgid"
if [[ ! -f "$PGID_FILE" ]]; then
    echo "No head recorded in $STATE_DIR (nothing to stop)."
    (( CLEAN )) && [[ -f "$STATE_DIR/client.env" ]] && rm -rf "$STATE_DIR"
    exit 0
fi
PGID="$(tr -d ' \n' < "$PGID_FILE")"
[[ "$PGID" =~ ^[0-9]+$ ]] && (( PGID > 1 )) || die "$PGID_FILE does not hold a process group id"
own_pgid="$(ps -o pgid= -p $$ | tr -d ' ')"
[[ "$PGID" != "$own_pgid" ]] || die "refusing to signal my own process group $PGID"

# "pid comm" of every live process of the head: its process group and all their descendants.
head_processes() {
    ps -eo pid=,ppid=,pgid=,stat=,comm= | awk -v g="$PGID" '
        { pid[NR] = $1; ppid[NR] = $2; pgid[NR] = $3; stat[NR] = $4; comm[NR] = $5 }
        END {
            for (i = 1; i <= NR; i++) if (pgid[i] == g) member[pid[i]] = 1
            do {
                grew = 0
                for (i = 1; i <= NR; i++)
                    if (!(pid[i] in member) && (ppid[i] in member)) { member[pid[i]] = 1; grew = 1 }
            } while (grew)
            for (i = 1; i <= NR; i++) if ((pid[i] in member) && stat[i] !~ /^Z/) { sub(".*/", "", comm[i]); print pid[i], comm[i] }
        }'
}
alive() {  # the live pids among "$@"
    local p st
    for p in "$@"; do
        st="$(ps -o stat= -p "$p" 2>/dev/null)" || continue
        [[ "$st" == Z* ]] || echo "$p"
    done
}
wait_gone() {  # wait_gone SECONDS PID...: wait until the pids are gone or the time is up
    local deadline=$(( $(date +%s) + $1 )); shift
    while [[ -n "$(alive "$@")" ]] && (( $(date +%s) < deadline )); do sleep 0.2; done
}

procs=(); while IFS= read -r line; do procs+=("$line"); done < <(head_processes)
if (( ${#procs[@]} == 0 )); then
    echo "The head of $STATE_DIR (process group $PGID) is not running."
else
    # A stale pid file could name a group that now belongs to something else: only go on if
    # one of the processes is visibly this head's (its command line names the state dir).
    ours=0
    for entry in "${procs[@]}"; do
        if ps -ww -o args= -p "${entry%% *}" 2>/dev/null | grep -qF -- "$STATE_DIR"; then ours=1; break; fi
    done
    (( ours )) || die "process group $PGID does not look like the head of $STATE_DIR; not touching it (remove $PGID_FILE if it is stale)"

    phase() {  # phase SECONDS AWK-FILTER-ON-COMM
        local pids=() pid
        while IFS= read -r pid; do pids+=("$pid"); done < <(head_processes | awk "$2 { print \$1 }")
        (( ${#pids[@]} )) || return 0
        kill -TERM "${pids[@]}" 2>/dev/null || true
        wait_gone "$1" "${pids[@]}"
    }
    third=$(( (GRACE + 2) / 3 ))
    phase "$third" '$2 == "raylet"'
    phase "$third" '$2 != "raylet" && $2 != "gcs_server"'
    phase "$third" '1'
    left=(); while IFS= read -r pid; do left+=("$pid"); done < <(head_processes | awk '{ print $1 }')
    if (( ${#left[@]} )); then
        kill -KILL "${left[@]}" 2>/dev/null || true
        wait_gone 5 "${left[@]}"
    fi
    left=(); while IFS= read -r line; do left+=("$line"); done < <(head_processes)
    (( ${#left[@]} == 0 )) || die "could not stop: ${left[*]}"
    echo "Stopped the head of $STATE_DIR (${#procs[@]} processes, process group $PGID)."
fi
rm -f "$PGID_FILE"
if (( CLEAN )); then rm -rf "$STATE_DIR"; fi
exit 0

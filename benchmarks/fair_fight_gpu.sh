#!/usr/bin/env bash
# The fair fight (benchmarks/fair_fight.py) on one lent GPU: many fair_fight.py processes at once, one per job
# line, sharing the GPU (a ResNet-20 at 28 px uses a sliver of it; the CPU cores decode the JPEGs). Each line
# names its own --out store, so nothing races, and every finished cell is saved at once, so a rerun resumes.
# The shards are written, and the seeds' missing baselines trained (one process per seed), before any cell.
#
#   bash benchmarks/fair_fight_gpu.sh WORK JOBS_FILE DEADLINE_S [PARALLEL]
#
# JOBS_FILE: one fair_fight.py argument list per line ('#' lines skipped), e.g.
#   --seeds 2 --fractions 0.7 0.85 --recipes default --out docs/results/fair-gpu-s2-default
# DEADLINE_S: no job starts after it and a running one is stopped at it (its finished cells are kept).
# DEVICE (default cuda) is fair_fight.py's --device; SEEDS (default "0 1 2") the baselines made sure of first;
# BASELINES fair_fight.py's --baselines; COMMON more arguments for every invocation (the test: --smoke).
set -euo pipefail
cd "$(dirname "$0")/.."
WORK=$1 JOBS=$2 DEADLINE=$3 PARALLEL=${4:-8}
if [ -x .venv/bin/python ]; then PY=.venv/bin/python; else PY=${PYTHON:-python3}; fi
export DEVICE=${DEVICE:-cuda} PY WORK END=$(( $(date +%s) + DEADLINE )) OMP_NUM_THREADS=1 PYTHONUNBUFFERED=1
export BASELINES=${BASELINES:-} COMMON=${COMMON:-}
mkdir -p "$WORK"
# shellcheck disable=SC2086
$PY benchmarks/fair_fight.py --work "$WORK" --phase data $COMMON
pids=()
for seed in ${SEEDS:-0 1 2}; do
    # shellcheck disable=SC2086
    $PY benchmarks/fair_fight.py --work "$WORK" --phase baselines --device "$DEVICE" --seeds "$seed" \
        ${BASELINES:+--baselines "$BASELINES"} $COMMON > "$WORK/baseline-s$seed.log" 2>&1 &
    pids+=($!)
done
for pid in "${pids[@]}"; do
    wait "$pid" || { echo "fair_fight_gpu.sh: a baseline failed (logs: $WORK/baseline-s*.log)" >&2; exit 1; }
done

run_job() {
    local left=$(( END - $(date +%s) )) log
    log="$WORK/job-$(printf '%s' "$1" | md5sum | cut -c1-8).log"
    if (( left < 30 )); then echo "skipped (deadline): $1"; return 0; fi
    echo "start $1 (${left}s left)"
    # shellcheck disable=SC2086
    eval "timeout $left $PY benchmarks/fair_fight.py --work \"$WORK\" --device $DEVICE ${BASELINES:+--baselines \"$BASELINES\"} $COMMON $1" \
        > "$log" 2>&1 && echo "done $1" || echo "stopped $1 (exit $?): $(tail -n 1 "$log")"
}
export -f run_job
{ grep -v '^\s*#' "$JOBS" || true; } | { grep -v '^\s*$' || true; } | xargs -d '\n' -P "$PARALLEL" -I{} bash -c 'run_job "$1"' _ {}

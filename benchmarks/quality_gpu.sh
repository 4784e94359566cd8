#!/usr/bin/env bash
# The quality sweep (benchmarks/quality.py) on one GPU: many quality.py processes at once, one per job line,
# all sharing the GPU (a ResNet-20 at 28 px uses a sliver of it; the CPU cores decode the JPEGs). Each job
# has its own store, so nothing races; every finished cell is saved at once, so a rerun resumes. Merge the
# stores afterwards: quality.py --merge STORES/*.json ...
#
#   bash benchmarks/quality_gpu.sh WORK STORES JOBS_FILE DEADLINE_S [PARALLEL] [-- EXTRA quality.py ARGS]
#
# WORK: quality.py's --work (shards and baselines; prepared once here before the jobs start).
# JOBS_FILE: one job per line, "SEED|ALLOCATION|CRITERION LABEL[|FRACTION ...]" ('#' lines skipped), run in
# order; a line's own fractions replace those of EXTRA (so one pool can run short and long jobs together).
# DEADLINE_S: no job starts after it, and a running one is stopped at it (its finished cells are kept).
# DEVICE (default cuda) is quality.py's --device. Fine-tuning runs in fp32 (finetune.amp=false), as on the
# CPU, so GPU cells are comparable with CPU ones. Train the baselines first (quality.py --seeds ...), or the
# first jobs of each seed train them side by side.
set -euo pipefail
cd "$(dirname "$0")/.."
WORK=$1 STORES=$2 JOBS=$3 DEADLINE=$4 PARALLEL=${5:-8}
shift $(( $# < 5 ? $# : 5 ))
[ "${1:-}" = "--" ] && shift
if [ -x .venv/bin/python ]; then PY=.venv/bin/python; else PY=${PYTHON:-python3}; fi
export DEVICE=${DEVICE:-cuda} PY WORK STORES END=$(( $(date +%s) + DEADLINE )) OMP_NUM_THREADS=1 PYTHONUNBUFFERED=1
export EXTRA="$*"
mkdir -p "$STORES"
# shellcheck disable=SC2086
$PY benchmarks/quality.py --work "$WORK" --phase entwined --seeds 0 $EXTRA --entwined-criteria >/dev/null  # shards, once

run_job() {
    IFS='|' read -r seed allocation label fractions <<<"$1"
    local left=$(( END - $(date +%s) )) tag=${fractions// /-}  # "0.7 0.85" -> "-0p7-0p85": --out takes no dots
    local name="s${seed}-${allocation}-${label// /_}${tag:+-${tag//./p}}"
    if (( left < 30 )); then echo "skipped (deadline): $1"; return 0; fi
    echo "start $1 (${left}s left)"
    # shellcheck disable=SC2086
    timeout "$left" $PY benchmarks/quality.py --work "$WORK" --phase entwined --device "$DEVICE" --seeds "$seed" \
        --allocations "$allocation" --entwined-criteria "$label" --out "$STORES/$name" \
        --set finetune.amp=false criterion.max_rows=4096 $EXTRA ${fractions:+--fractions $fractions} \
        >"$STORES/$name.log" 2>&1 \
        && echo "done $1" || echo "stopped $1 (exit $?): $(tail -n 1 "$STORES/$name.log")"
}
export -f run_job
{ grep -v '^\s*#' "$JOBS" || true; } | { grep -v '^\s*$' || true; } | xargs -d '\n' -P "$PARALLEL" -I{} bash -c 'run_job "$1"' _ {}

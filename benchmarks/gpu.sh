#!/usr/bin/env bash
# GPU throughput of singe-dist: SInGE relevance vs plain training, and DDP fine-tuning (ResNet-50, 224 px).
# Run it on any machine with a GPU, from the repository root; record the device line with the numbers in
# docs/BENCHMARKS.md. Extra arguments go to benchmarks/gpu_throughput.py (e.g. --batch 128, --out f.json).
#
#   bash benchmarks/gpu.sh            # every visible GPU
#   bash benchmarks/gpu.sh --smoke    # tiny, on the CPU: checks the script works (the test suite runs this)
set -euo pipefail
cd "$(dirname "$0")/.."
if command -v nvidia-smi >/dev/null 2>&1; then
    nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
fi
if [ -x .venv/bin/python ]; then PY=.venv/bin/python; else PY="uv run --locked python"; fi
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-1}"
exec $PY benchmarks/gpu_throughput.py "$@"

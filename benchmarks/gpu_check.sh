#!/usr/bin/env bash
# One-command GPU check (issue 23): on a machine with a CUDA GPU, in one short run,
#   1. every Triton operator against float64 (the gradient-RNN kernels at each dot precision, the
#      single-call operator's kernels for every activation): the CUDA cases of tests/test_triton.py;
#   2. the benchmark tables of every model (gradrnn, hnn, field, dhnn, lnn) on the one harness, each way
#      checked against the naive way (a disagreement fails the run).
# Usage: benchmarks/gpu_check.sh [OUT_DIR]   (OUT_DIR, new or empty: the tables as JSON; default: none)
# Environment: PYTHON (default: python), REPS (timed steps per way, default 20).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python}
REPS=${REPS:-20}
OUT=${1:-}
export XLA_PYTHON_CLIENT_PREALLOCATE=false  # JAX beside torch on one GPU
"$PY" -c "import sys, torch; sys.exit(0 if torch.cuda.is_available() else 'gpu_check: no CUDA device visible to torch; this check needs a GPU')"
"$PY" -c "import triton" 2>/dev/null || { echo "gpu_check: triton is not installed (pip install 'innergrad[triton]')" >&2; exit 2; }
if [ -n "$OUT" ]; then
  if [ -e "$OUT" ] && [ -n "$(ls -A "$OUT")" ]; then echo "gpu_check: $OUT exists and is not empty; give a new folder" >&2; exit 2; fi
  mkdir -p "$OUT"
fi
echo "== 1. Triton operators against float64 (CUDA cases) =="
"$PY" -m pytest -q -p no:cacheprovider -m cuda tests/test_triton.py
echo "== 2. bench tables, every model =="
status=0
run() {  # model, then bench options
  local model=$1; shift
  local json=()
  [ -n "$OUT" ] && json=(--json "$OUT/bench_$model.json")
  "$PY" -m innergrad bench --device cuda --model "$model" --reps "$REPS" --interleave "${json[@]}" "$@" || status=1
}
run gradrnn --T 64 --B 256 --width 128
run hnn --B 256,4096
run field
run dhnn
run lnn --B 256,4096
exit $status

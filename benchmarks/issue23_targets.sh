#!/usr/bin/env bash
# The issue-23 target tables on CPU (benchmarks/README.md, "Single calls"): every model's step every
# way, interleaved in one process per configuration (medians over REPS steps), with the matmul floor
# and, where the anchor scripts exist, the anchor beside it in the same run.
# Usage: benchmarks/issue23_targets.sh OUT_DIR   (a new or empty folder: one JSON per table, and the log)
# BENCH_OPTS adds bench options to every table, e.g. BENCH_OPTS="--threads 1 --clock cpu" for the
# CPU-time tables of a shared machine (the anchors, which time the wall clock, are then left out).
set -uo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python}
REPS=${REPS:-30}
OUT=${1:?usage: benchmarks/issue23_targets.sh OUT_DIR}
if [ -e "$OUT" ] && [ -n "$(ls -A "$OUT")" ]; then echo "$OUT exists and is not empty; give a new folder" >&2; exit 2; fi
mkdir -p "$OUT"
ANCHORS=${ANCHORS:-/work/shared/anchors}
status=0
bench() {  # name, then bench options
  local name=$1; shift
  echo "== $name: innergrad bench $*" | tee -a "$OUT/log.txt"
  # shellcheck disable=SC2086
  "$PY" -m innergrad bench --interleave --reps "$REPS" --json "$OUT/$name.json" ${BENCH_OPTS:-} "$@" 2>/dev/null | tee -a "$OUT/log.txt" || status=1
}
anchor() {  # the user-written anchor step (not part of the package), when present
  [ -f "$ANCHORS/hnn_step.py" ] && [ -z "${BENCH_OPTS:-}" ] || return 0
  echo "== anchor hnn_step.py $*" | tee -a "$OUT/log.txt"
  "$PY" "$ANCHORS/hnn_step.py" "$@" 2>&1 | tail -1 | tee -a "$OUT/log.txt"
}
ALL=naive,torch_func,closed_form,auto,fused,compiled_user_step,jax,matmul_floor
bench hnn_d2 --model hnn --dim 2 --B 256,4096 --width 200 --ways "$ALL"; anchor 2 4096 200; anchor 2 256 200
bench hnn_d64 --model hnn --dim 64 --B 1024 --width 256 --ways "$ALL"; anchor 64 1024 256
bench field --model field --dim 64 --B 1024 --width 256 --ways "$ALL"
bench dhnn --model dhnn --dim 2 --B 4096 --width 200 --ways "$ALL"
bench lnn --model lnn --dim 4 --B 256,4096 --width 128 --ways naive,torch_func,closed_form,auto,jax
bench gradrnn --model gradrnn --T 64 --B 256 --width 128 --ways naive,fused,fused_loop,jax,matmul_floor
exit $status

#!/usr/bin/env bash
# One short GPU check (about 2-5 min on one H200; budget it 8): sink detection at LLaDA-8B scale
# (ours vs the paper's T x T collector: time, peak memory, numerics against fp64) and the 2:4
# semi-structured speed-up. Everything lands in $OUT (default benchmarks/results/gpu_check/):
# gpu_sink_check.json, sparse24_speed.json, gpu_check.md, and the log gpu_check.log.
#
#   bash benchmarks/gpu_check.sh                 # on the GPU machine, from the repo root
#   OUT=/some/dir bash benchmarks/gpu_check.sh   # elsewhere
#   bash benchmarks/gpu_check.sh --cpu-smoke     # same code path, tiny shapes, CPU (or GPU_CHECK_CPU_SMOKE=1)
#
# Without a CUDA GPU (and without --cpu-smoke) it says so and exits 0, measuring nothing.
# Exit 1 when our attention mass disagrees with the fp64 reference or a step fails.
set -uo pipefail

cd "$(dirname "$0")/.."
SMOKE="${GPU_CHECK_CPU_SMOKE:-0}"
for arg in "$@"; do
  case "$arg" in
    --cpu-smoke) SMOKE=1 ;;
    -h|--help) sed -n '2,13p' "$0"; exit 0 ;;
    *) echo "gpu_check.sh: unknown argument $arg" >&2; exit 2 ;;
  esac
done
PY="${PYTHON:-python}"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
export HF_HUB_OFFLINE=1 LLM_COMPRESSOR_LOG_LEVEL=ERROR TOKENIZERS_PARALLELISM=false

if [ "$SMOKE" != "1" ] && ! "$PY" -c 'import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)' 2>/dev/null; then
  echo "gpu_check: no CUDA GPU visible to torch here: nothing measured, nothing written."
  echo "gpu_check: run 'bash benchmarks/gpu_check.sh --cpu-smoke' to test the code path on CPU."
  exit 0
fi

if [ "$SMOKE" = "1" ]; then
  OUT="${OUT:-${TMPDIR:-/tmp}/gpu_check_smoke}"
else
  OUT="${OUT:-benchmarks/results/gpu_check}"
fi
mkdir -p "$OUT"
LOG="$OUT/gpu_check.log"
: > "$LOG"
status=0
start=$(date +%s)

echo "== gpu_check $( [ "$SMOKE" = 1 ] && echo '(CPU smoke: tiny shapes, numbers mean nothing)' ) -> $OUT" | tee -a "$LOG"
if [ "$SMOKE" != "1" ]; then
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>&1 | tee -a "$LOG" || true
fi

echo "== 1/2 sink detection: ours vs the paper's collector, numerics vs fp64" | tee -a "$LOG"
if [ "$SMOKE" = "1" ]; then
  "$PY" benchmarks/gpu_sink_check.py --cpu-smoke --out "$OUT" 2>&1 | tee -a "$LOG"
else
  timeout 300 "$PY" benchmarks/gpu_sink_check.py --out "$OUT" 2>&1 | tee -a "$LOG"
fi
rc=${PIPESTATUS[0]}
[ "$rc" -ne 0 ] && { echo "gpu_check: sink check exited $rc" | tee -a "$LOG"; status=1; }

echo "== 2/2 2:4 semi-structured speed (sparse24_speed.py)" | tee -a "$LOG"
if [ "$SMOKE" = "1" ]; then
  "$PY" benchmarks/sparse24_speed.py --device cpu --dry-run --hidden 64 --mlp 192 --heads 4 --seq 32 \
    --layers 2 --vocab 128 --min-features 0 --warmup 0 --repeats 1 2>&1 | tee -a "$LOG"
else
  timeout 240 "$PY" benchmarks/sparse24_speed.py --output "$OUT/sparse24_speed.json" 2>&1 | tee -a "$LOG"
fi
rc=${PIPESTATUS[0]}
[ "$rc" -ne 0 ] && { echo "gpu_check: sparse24_speed exited $rc" | tee -a "$LOG"; status=1; }

echo "== summary ($(( $(date +%s) - start )) s)" | tee -a "$LOG"
"$PY" benchmarks/gpu_sink_check.py --summarize "$OUT" 2>&1 | tee -a "$LOG"
echo "gpu_check: $( [ $status -eq 0 ] && echo OK || echo FAILED ); results in $OUT" | tee -a "$LOG"
exit $status

#!/usr/bin/env bash
# The GPU check, for a machine with a CUDA GPU and no network: from a fresh copy of the repository, builds the
# extension with its CUDA kernels, runs the GPU tests and compute-sanitizer, times the benchmarks, and prints a table
# of the stages and the benchmark tables last. Every stage runs under its own time limit, inside one overall budget,
# and reports its outcome on one line, so that one hang cannot eat the run.
#
#   bash benchmarks/gpu_check.sh             everything, within 470 s (build, GPU tests, memcheck, the benchmarks,
#                                            the trainer under torchrun, then the compiled trainer's benchmark and
#                                            tests)
#   bash benchmarks/gpu_check.sh --quick     build, GPU tests and the float32 op benchmarks, within 230 s (a second
#                                            try)
#   bash benchmarks/gpu_check.sh --dry-run   every stage that needs no GPU (the build with ZSKT_CUDA=1 included);
#                                            the others report "skipped: no GPU"
# Options: --budget SECONDS (overall time limit). Environment: OUT (results folder, default benchmarks/out), PYTHON
# (default python3), MAX_JOBS (default: all cores), TORCH_CUDA_ARCH_LIST (default 9.0), GPU_CHECK_LIMIT_<STAGE>
# (a stage's own limit in seconds, e.g. GPU_CHECK_LIMIT_BUILD=600).
#
# Results, at most 8 files under $OUT: gpu_check.log (every command's output), summary.txt (what is printed last),
# ops_gpu.json (the op benchmarks' short sweep: every op, mode and backend), train_gpu.json, mte_gpu.json,
# compiled_gpu.json (the trainer's compiled variants; pytest-benchmark). Exit status: 0 when every stage that ran passed (and, without --dry-run, a GPU was there), 1
# otherwise, 2 for bad options.
set -uo pipefail
cd "$(dirname "$0")/.."

usage() { awk 'NR > 1 && /^#/ { sub(/^# ?/, ""); print; next } NR > 1 { exit }' "$0"; }
MODE=full
DRY_RUN=0
BUDGET=""
while [ $# -gt 0 ]; do
  case "$1" in
    --quick) MODE=quick ;;
    --dry-run) DRY_RUN=1 ;;
    --budget)
      if [ $# -lt 2 ] || ! [[ "$2" =~ ^[0-9]+$ ]]; then echo "gpu_check.sh: --budget needs a number of seconds" >&2; exit 2; fi
      BUDGET=$2; shift ;;
    -h|--help) usage; exit 0 ;;
    *) echo "gpu_check.sh: unknown option $1 (see --help)" >&2; exit 2 ;;
  esac
  shift
done

OUT=${OUT:-benchmarks/out}
PY=${PYTHON:-python3}
export MAX_JOBS=${MAX_JOBS:-$(nproc)} TORCH_CUDA_ARCH_LIST=${TORCH_CUDA_ARCH_LIST:-9.0} PYTHONUNBUFFERED=1
if [ -z "$BUDGET" ]; then BUDGET=$([ "$MODE" = quick ] && echo 230 || echo 470); fi
REPORT_RESERVE=20  # seconds kept for the report at the end
mkdir -p "$OUT" || { echo "gpu_check.sh: cannot create $OUT" >&2; exit 2; }
LOG=$OUT/gpu_check.log
SUMMARY=$OUT/summary.txt
: > "$LOG"
: > "$SUMMARY"
START=$SECONDS
status=0

say() { echo "$*" | tee -a "$SUMMARY"; }
outcome() { say "$(printf '%-16s %-48s %5s s' "$1" "$2" "$3")"; }

if [ "$DRY_RUN" = 1 ]; then
  HAS_GPU=0
elif "$PY" -c 'import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)' >>"$LOG" 2>&1; then
  HAS_GPU=1
else
  HAS_GPU=0
fi

# stage NAME LIMIT NEEDS_GPU COMMAND...: runs COMMAND under min(LIMIT, what is left of the budget) seconds, its output
# in the log, and prints one line: ok, FAILED (exit N), TIMED OUT, unavailable (the command's exit status 3: its tool
# cannot run on this machine), skipped: no GPU, or skipped: out of time (a failure, unless OPTIONAL=1).
stage() {
  local name=$1 limit=$2 needs_gpu=$3
  shift 3
  local override="GPU_CHECK_LIMIT_$(echo "$name" | tr 'a-z-' 'A-Z_')"
  limit=${!override:-$limit}
  if [ "$needs_gpu" = 1 ] && [ "$HAS_GPU" = 0 ]; then outcome "$name" "skipped: no GPU" 0; return 0; fi
  local left=$((BUDGET - (SECONDS - START) - REPORT_RESERVE))
  if [ "$left" -lt 5 ]; then
    if [ "${OPTIONAL:-0}" = 1 ]; then outcome "$name" "skipped: out of time (optional stage)" 0; return 1; fi
    outcome "$name" "skipped: out of time (budget $BUDGET s)" 0; status=1; return 1
  fi
  [ "$limit" -gt "$left" ] && limit=$left
  local began=$SECONDS rc
  echo "== stage $name (limit $limit s): $*" >>"$LOG"
  timeout --kill-after=10 "$limit" "$@" >>"$LOG" 2>&1
  rc=$?
  local took=$((SECONDS - began))
  case $rc in
    0) outcome "$name" "ok" "$took" ;;
    124|137) outcome "$name" "TIMED OUT after $limit s" "$took"; status=1 ;;
    3) outcome "$name" "$name unavailable (see $LOG)" "$took" ;;
    *) outcome "$name" "FAILED (exit $rc; see $LOG)" "$took"; status=1 ;;
  esac
  return $rc
}

# compute-sanitizer over one forward+backward of the CUDA kernels. It refuses the device on some virtualised machines:
# that is "memcheck unavailable" (exit status 3), not an error of the kernels.
memcheck() {
  command -v compute-sanitizer >/dev/null 2>&1 || { echo "compute-sanitizer is not installed"; return 3; }
  local output rc
  output=$(compute-sanitizer --tool memcheck --error-exitcode 1 "$PY" benchmarks/memcheck_ops.py 2>&1)
  rc=$?
  echo "$output"
  if [ $rc -ne 0 ] && echo "$output" | grep -qi "device not supported\|unable to find injection library"; then
    return 3
  fi
  return $rc
}
# The trainer under torchrun on the GPUs of this machine: one process (NCCL, CUDA graphs with the all-reduces inside),
# and two when there are two GPUs or more. Runs the digits default for 20 iterations into a temporary folder.
torchrun_check() {
  local gpus runs rc=0
  gpus=$(nvidia-smi -L 2>/dev/null | wc -l)
  runs=$(mktemp -d)
  for n in 1 2; do
    if [ "$n" -gt "$gpus" ]; then echo "torchrun --nproc-per-node $n: skipped, $gpus GPU(s)"; continue; fi
    echo "== torchrun --nproc-per-node $n"
    "$PY" -m torch.distributed.run --standalone --nproc-per-node "$n" -m zskt_fast.train --iterations 20 \
      --eval-every 10 --no-progress --no-tensorboard --out "$runs/n$n" || rc=1
  done
  rm -rf "$runs"
  return $rc
}
export -f memcheck torchrun_check
export PY

say "gpu_check ($MODE$([ "$DRY_RUN" = 1 ] && echo ', dry run'); budget $BUDGET s; MAX_JOBS $MAX_JOBS; arch $TORCH_CUDA_ARCH_LIST)"
say "machine: $(nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>/dev/null | head -1 || true)$([ "$HAS_GPU" = 0 ] && echo ' (no GPU used)')"
say "versions: $(timeout 60 "$PY" -c 'import sys, torch, triton; print("python", sys.version.split()[0], "torch", torch.__version__, "cuda", torch.version.cuda, "triton", triton.__version__)' 2>&1 | tail -1); $(date -u +%Y-%m-%dT%H:%MZ)"
say "$(printf '%-16s %-48s %5s' stage outcome time)"

if stage build 300 0 env ZSKT_CUDA=1 "$PY" -m pip install --no-build-isolation --no-deps --no-index -e .; then
  stage extension 60 0 "$PY" -c "
from zskt_fast.ops import _library
assert _library.compiled_with_cuda(), 'zskt_fast._C has no CUDA kernels'
print('backends on cuda:', _library.available_backends('cuda'))"
  stage gpu-tests $([ "$MODE" = quick ] && echo 150 || echo 200) 1 \
    "$PY" -m pytest -q -ra -m gpu -p no:cacheprovider tests -k "not compiled_steps_train"
  [ "$MODE" = full ] && stage memcheck 90 1 bash -c memcheck
  stage bench-ops $([ "$MODE" = quick ] && echo 70 || echo 150) 1 env ZSKT_BENCH_SHORT=1 \
    "$PY" -m pytest -q -p no:cacheprovider benchmarks/bench_memory_bandwidth.py benchmarks/bench_kl_divergence.py \
    benchmarks/bench_attention_transfer.py benchmarks/bench_zskt_losses.py benchmarks/bench_bn_statistics_prior.py \
    --benchmark-json="$OUT/ops_gpu.json" \
    --benchmark-columns=min,median,rounds $([ "$MODE" = quick ] && echo "-k float32 or copy")
  if [ "$MODE" = full ]; then
    stage bench-train 120 1 env ZSKT_BENCH_ITERATIONS="${ZSKT_BENCH_ITERATIONS:-20}" \
      "$PY" -m pytest -q -p no:cacheprovider benchmarks/bench_train.py --benchmark-json="$OUT/train_gpu.json" \
      --benchmark-columns=min,median,rounds
    stage bench-mte 90 1 "$PY" -m pytest -q -p no:cacheprovider benchmarks/bench_mte.py -k gpu \
      --benchmark-json="$OUT/mte_gpu.json" --benchmark-columns=min,median,rounds
    stage bench-synthesis 60 1 "$PY" -m pytest -q -p no:cacheprovider benchmarks/bench_synthesis.py \
      --benchmark-json="$OUT/synthesis_gpu.json" --benchmark-columns=min,median,rounds
    stage torchrun 90 1 bash -c torchrun_check
    # Last and optional (what is left of the budget, no failure when nothing is), so that compilation cannot eat the
    # time of the stages above.
    OPTIONAL=1
    stage bench-compiled 120 1 env ZSKT_BENCH_VARIANTS=compiled ZSKT_BENCH_ITERATIONS="${ZSKT_BENCH_ITERATIONS:-20}" \
      "$PY" -m pytest -q -p no:cacheprovider benchmarks/bench_train.py --benchmark-json="$OUT/compiled_gpu.json" \
      --benchmark-columns=min,median,rounds
    stage gpu-compiled 120 1 "$PY" -m pytest -q -ra -m gpu -p no:cacheprovider tests/test_train_cuda.py \
      -k compiled_steps_train
    OPTIONAL=0
  fi
fi

say "total: $((SECONDS - START)) s of the $BUDGET s budget"
for json in "$OUT"/ops_gpu.json "$OUT"/train_gpu.json "$OUT"/mte_gpu.json "$OUT"/synthesis_gpu.json \
    "$OUT"/compiled_gpu.json; do
  if [ -s "$json" ]; then timeout 30 "$PY" benchmarks/report.py "$json" 2>&1 | tee -a "$SUMMARY"; fi
done
if [ "$DRY_RUN" = 0 ] && [ "$HAS_GPU" = 0 ]; then
  say "no GPU is visible: nothing was measured (use --dry-run to rehearse without one)"
  status=1
fi
exit $status

#!/usr/bin/env bash
# GPU check, for a machine with a CUDA GPU and no network: builds the extension, runs the GPU tests (ops and trainer),
# runs the kernel and trainer benchmarks, and prints short tables last. Exits non-zero when a GPU test fails. The full
# log goes to ${GPU_CHECK_LOG:-benchmarks/out/gpu_check.log}.
#
#   bash benchmarks/gpu_check.sh
set -uo pipefail
cd "$(dirname "$0")/.."
mkdir -p benchmarks/out
LOG=${GPU_CHECK_LOG:-benchmarks/out/gpu_check.log}
PY=${PYTHON:-python3}
: > "$LOG"
log() { echo "== $*" | tee -a "$LOG"; }
status=0

log "machine: $(nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>/dev/null)"
log "versions: $($PY -c 'import torch, triton; print("torch", torch.__version__, "cuda", torch.version.cuda, "triton", triton.__version__)' 2>&1 | tail -1); $(date -u +%Y-%m-%dT%H:%MZ)"

log "build (TORCH_CUDA_ARCH_LIST=${TORCH_CUDA_ARCH_LIST:=9.0})"
export TORCH_CUDA_ARCH_LIST
if ! ZSKT_CUDA=1 $PY -m pip install --no-build-isolation --no-deps --no-index -e . >>"$LOG" 2>&1; then
  log "BUILD FAILED (see $LOG)"; tail -30 "$LOG"; exit 1
fi

log "GPU tests (cuda and triton backends, CUDA graphs)"
if ! $PY -m pytest -q -ra -m gpu tests >>"$LOG" 2>&1; then status=1; log "GPU TESTS FAILED"; fi
grep -E "passed|failed" "$LOG" | tail -1

if command -v compute-sanitizer >/dev/null 2>&1; then
  log "compute-sanitizer memcheck over one forward+backward of the CUDA kernels"
  if ! compute-sanitizer --tool memcheck --error-exitcode 1 $PY - >>"$LOG" 2>&1 <<'PYEOF'
import torch, zskt_fast
g = lambda *s: torch.randn(*s, device="cuda", requires_grad=True)
for dtype in (torch.float32, torch.bfloat16):
    s_l, t_l = g(7, 10).to(dtype), g(7, 10).to(dtype)
    s_f = [g(7, 3, 5, 7).to(dtype), g(7, 16, 17, 3).to(dtype).contiguous(memory_format=torch.channels_last)]
    t_f = [g(7, 6, 5, 7).to(dtype), g(7, 4, 17, 3).to(dtype)]
    loss = zskt_fast.zskt_student_loss(s_l, t_l, s_f, t_f, backend="cuda")
    torch.autograd.grad(loss, [s_l, t_l, *s_f, *t_f])
torch.cuda.synchronize()
print("memcheck run finished")
PYEOF
  then status=1; log "COMPUTE-SANITIZER REPORTED ERRORS"; else log "memcheck: no errors"; fi
else
  log "compute-sanitizer not installed: memcheck skipped"
fi

log "benchmarks"
$PY -m pytest -q benchmarks/bench_losses.py --benchmark-json=benchmarks/out/losses_gpu.json \
    --benchmark-columns=min,median,rounds >>"$LOG" 2>&1 || { status=1; log "BENCHMARKS FAILED"; }
log "trainer benchmark: authors' eager loop against this trainer (AMP, CUDA graphs on and off)"
ZSKT_BENCH_ITERATIONS=${ZSKT_BENCH_ITERATIONS:-20} $PY -m pytest -q benchmarks/bench_train.py \
    --benchmark-json=benchmarks/out/train_gpu.json --benchmark-columns=min,median,rounds >>"$LOG" 2>&1 \
    || { status=1; log "TRAINER BENCHMARK FAILED"; }
log "transition-curve benchmark: batched against the per-image loop"
$PY -m pytest -q benchmarks/bench_mte.py -k gpu --benchmark-json=benchmarks/out/mte_gpu.json \
    --benchmark-columns=min,median,rounds >>"$LOG" 2>&1 || { status=1; log "MTE BENCHMARK FAILED"; }
$PY benchmarks/report.py benchmarks/out/losses_gpu.json 2>&1 | tee -a "$LOG"
$PY benchmarks/report.py benchmarks/out/train_gpu.json 2>&1 | tee -a "$LOG"
$PY benchmarks/report.py benchmarks/out/mte_gpu.json 2>&1 | tee -a "$LOG"
exit $status

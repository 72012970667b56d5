#!/usr/bin/env bash
# The package as a user installs it: builds the sdist and the wheel (python -m build --no-isolation, against the torch
# of this environment), checks their metadata (twine check --strict) and that the sdist carries what a build needs,
# then installs the wheel into a clean environment outside the source tree and runs a smoke there: the core install
# (torch alone) imports and its three loss ops equal the reference; with the [train] extra, `zskt-train --iterations 2`
# runs to a complete run folder.
#
#   tools/check_wheel.sh [PYTHON]     PYTHON: the interpreter that builds (default .venv/bin/python)
# ZSKT_CUDA (default 0 here: the CPU kernels; the CUDA ones are compiled by the test build) is passed to the build.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd)
PY=${1:-.venv/bin/python}
DIST=$ROOT/dist
WORK=$(mktemp -d "${TMPDIR:-/tmp}/zskt-wheel.XXXXXX")
trap 'rm -rf "$WORK"' EXIT
step() { printf '\n== %s\n' "$*"; }

step "build the sdist and the wheel"
rm -rf "$DIST"
ZSKT_CUDA=${ZSKT_CUDA:-0} "$PY" -m build --no-isolation --outdir "$DIST" . > "$WORK/build.log" 2>&1 ||
    { tail -40 "$WORK/build.log"; exit 1; }
ls -l "$DIST"
"$PY" -m twine check --strict "$DIST"/*

step "the sdist carries the build description and every source"
tar tzf "$DIST"/*.tar.gz > "$WORK/sdist.txt"
for f in CMakeLists.txt setup.py pyproject.toml LICENSE csrc/ops.cpp csrc/kl_state.h csrc/cpu/kl_divergence.cpp \
         csrc/cuda/kl_divergence.cu zskt_fast/kernels/triton/kl_divergence.py; do
    grep -q "/$f\$" "$WORK/sdist.txt" || { echo "the sdist lacks $f"; exit 1; }
done
echo "ok: $(wc -l < "$WORK/sdist.txt") files"

step "a clean environment with torch alone (the CUDA runtime wheels shared from this one)"
"$PY" -m venv "$WORK/venv"
grep -E '^torch==' requirements.txt > "$WORK/torch.txt"
grep -E '^(torch|torchvision)==' requirements.txt > "$WORK/pins.txt"  # the extra's torchvision must not move torch
"$WORK/venv/bin/python" tools/install_sharing_cuda.py "$WORK/torch.txt" --cuda-from "$(dirname "$(dirname "$PY")")" \
    > "$WORK/torch.log" 2>&1 || { tail -20 "$WORK/torch.log"; exit 1; }
tail -1 "$WORK/torch.log"
WHEEL=$(ls "$DIST"/*.whl)
"$WORK/venv/bin/pip" install --no-cache-dir "$WHEEL" > "$WORK/install.log" 2>&1 || { tail -20 "$WORK/install.log"; exit 1; }

step "the core install: import and the three ops against the reference"
(cd "$WORK" && "$WORK/venv/bin/python" "$ROOT/tools/wheel_smoke.py" core)

step "with the [train] extra: zskt-train --iterations 2"
"$WORK/venv/bin/pip" install --no-cache-dir -c "$WORK/pins.txt" "$WHEEL[train]" > "$WORK/extra.log" 2>&1 || { tail -20 "$WORK/extra.log"; exit 1; }
(cd "$WORK" && ZSKT_FAST_CACHE="$WORK/cache" "$WORK/venv/bin/zskt-train" --iterations 2 --out "$WORK/run" \
    --no-progress --no-tensorboard)
(cd "$WORK" && "$WORK/venv/bin/python" "$ROOT/tools/wheel_smoke.py" train "$WORK/run/seed0")
for program in pretrain fewshot reproduce mte toy; do
    "$WORK/venv/bin/zskt-$program" --help > /dev/null
done
echo "ok: zskt-train, zskt-pretrain, zskt-fewshot, zskt-reproduce, zskt-mte, zskt-toy"

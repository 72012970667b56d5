# Front for the README's commands. Every target sets itself up: it uses the active virtual environment, or creates
# .venv when none is active, installs requirements.txt once (again when it changes), and (re)builds the extension.
PYTHON ?= python3
ifdef VIRTUAL_ENV
ENV_DIR := $(VIRTUAL_ENV)
else
ENV_DIR := $(CURDIR)/.venv
endif
PY := $(ENV_DIR)/bin/python
DEPS_STAMP := $(ENV_DIR)/.zskt_fast-deps
# The pins of the stack to install: requirements.txt (newest supported) or requirements-oldest.txt.
REQUIREMENTS ?= requirements.txt
# The oldest supported stack gets a copy of the sources, its own environment and its own build of the extension.
OLDEST := $(CURDIR)/build/oldest

.PHONY: setup build train reproduce test test-oldest wheel-check bench clean

$(PY):
	$(PYTHON) -m venv $(ENV_DIR)

# With CUDA_FROM=ENV, the CUDA runtime wheels (3 GB) are not installed again but shared from that environment.
$(DEPS_STAMP): $(REQUIREMENTS) requirements-common.txt | $(PY)
ifdef CUDA_FROM
	$(PY) tools/install_sharing_cuda.py $(REQUIREMENTS) --cuda-from $(CUDA_FROM)
else
	$(PY) -m pip install --upgrade pip
	$(PY) -m pip install -r $(REQUIREMENTS)
endif
	touch $@

setup: $(DEPS_STAMP)

# Incremental: CMake and ninja rebuild only what changed (ccache, when installed, keeps objects across clean clones).
build: setup
	$(PY) -m pip install --no-build-isolation --no-deps -e .

# The main job with its offline default (digits); pass options through ARGS="--iterations 2000 --seeds 0 1 2".
train: build
	$(PY) -m zskt_fast.train $(ARGS)

# The paper's comparison on the digits (teacher, scratch, zero-shot, few-shot KD+AT, MTE) into reports/; about 15
# minutes on 2 CPU cores. A second run keeps the finished runs; ARGS="--force" makes them again.
reproduce: build
	$(PY) -m zskt_fast.reproduce $(ARGS)

test: build
	$(PY) -m pytest -q -ra tests

# The same suite on the oldest supported stack (requirements-oldest.txt: the GPU machine's torch, torchvision and
# triton), in build/oldest: a copy of the working tree's files (its CMake build is kept between runs) and a venv that
# shares the CUDA runtime wheels of the main environment (both stacks are CUDA 13 builds; CPU tests never call them).
test-oldest: setup
	mkdir -p $(OLDEST)/src
	find $(OLDEST)/src -mindepth 1 -maxdepth 1 ! -name build -exec rm -rf {} +
	git ls-files -z --cached --others --exclude-standard | \
	    xargs -0 sh -c 'for f; do [ -e "$$f" ] && cp -p --parents "$$f" $(OLDEST)/src; done' sh
	$(MAKE) -C $(OLDEST)/src test VIRTUAL_ENV=$(OLDEST)/venv REQUIREMENTS=requirements-oldest.txt \
	    CUDA_FROM=$(ENV_DIR)

# The package as a user installs it: sdist and wheel built, their metadata checked, the wheel installed into a clean
# environment outside the tree and tried there (tools/check_wheel.sh).
wheel-check: setup
	bash tools/check_wheel.sh $(PY)

# The CPU benchmarks: every op in three modes over its sweeps (ops.json), training (train.json), transition curves
# (mte.json); the tables are printed and the plots drawn into $(BENCH_OUT)/plots. pytest's own tables go to the logs.
BENCH_OUT ?= benchmarks/out
BENCH_OPS := benchmarks/bench_memory_bandwidth.py benchmarks/bench_kl_divergence.py \
    benchmarks/bench_attention_transfer.py benchmarks/bench_zskt_losses.py benchmarks/bench_bn_statistics_prior.py
bench: build
	mkdir -p $(BENCH_OUT)
	$(PY) -m pytest -q -p no:cacheprovider $(BENCH_OPS) --benchmark-json=$(BENCH_OUT)/ops.json \
	    > $(BENCH_OUT)/ops.log 2>&1 || (tail -30 $(BENCH_OUT)/ops.log; exit 1)
	$(PY) -m pytest -q -p no:cacheprovider benchmarks/bench_train.py --benchmark-json=$(BENCH_OUT)/train.json \
	    > $(BENCH_OUT)/train.log 2>&1 || (tail -30 $(BENCH_OUT)/train.log; exit 1)
	$(PY) -m pytest -q -p no:cacheprovider benchmarks/bench_mte.py --benchmark-json=$(BENCH_OUT)/mte.json \
	    > $(BENCH_OUT)/mte.log 2>&1 || (tail -30 $(BENCH_OUT)/mte.log; exit 1)
	$(PY) benchmarks/report.py $(BENCH_OUT)/ops.json $(BENCH_OUT)/train.json $(BENCH_OUT)/mte.json \
	    --plots $(BENCH_OUT)/plots

clean:
	rm -rf build dist zskt_fast/_C*.so *.egg-info

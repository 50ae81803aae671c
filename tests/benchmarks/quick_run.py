"""Running a benchmark script as its users do and reading the one `RESULT {json}` line it ends with, or
importing it with benchmarks/ first on sys.path, as a script run from there sees its neighbours."""

from __future__ import annotations

import importlib
import json
import os
import subprocess
import sys
from pathlib import Path
from types import ModuleType

REPO = Path(__file__).resolve().parents[2]
BENCHMARKS = REPO / "benchmarks"


def run_benchmark(script: str, *args: str, timeout: float) -> subprocess.CompletedProcess[str]:
    """`python benchmarks/<script> <args>` from the repository root, offline, its output captured."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    return subprocess.run(
        [sys.executable, str(BENCHMARKS / script), *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=REPO,
        env=env,
    )


def result_of(done: subprocess.CompletedProcess[str]) -> dict:
    """The report of a run that exited 0 and printed exactly one RESULT line."""
    assert done.returncode == 0, done.stderr[-3000:] + done.stdout[-3000:]
    lines = [line for line in done.stdout.splitlines() if line.startswith("RESULT ")]
    assert len(lines) == 1, done.stdout[-3000:]
    return json.loads(lines[0].removeprefix("RESULT "))


def run_quick(script: str, *args: str, timeout: float = 900) -> dict:
    """The report of `python benchmarks/<script> --quick <args>`."""
    return result_of(run_benchmark(script, "--quick", *args, timeout=timeout))


def import_benchmark(name: str) -> ModuleType:
    """benchmarks/<name>.py as the module `name`; it imports `harness` as it does when run as a script."""
    sys.path.insert(0, str(BENCHMARKS))
    try:
        return importlib.import_module(name)
    finally:
        sys.path.remove(str(BENCHMARKS))

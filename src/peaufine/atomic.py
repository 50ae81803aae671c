"""Writes that land whole or not at all: a text file replaced atomically, a folder published by rename,
each flushed to disk first, so a crash at any instant leaves the old content or the new, never a mix."""

# crash_point, a test-only hook, kills the process at named points so the tests can check that.

from __future__ import annotations

import os
import shutil
import signal
from pathlib import Path

FAULT = "PEAUFINE_FAULT"  # test only: see crash_point


def crash_point(phase: str, step: int | None = None) -> None:
    """TEST ONLY: SIGKILL this process here when the environment variable PEAUFINE_FAULT names this
    point ("PHASE", or "PHASE:STEP" for a point passed at every step), so that the kill tests of resume
    (tests/stages/test_kill_resume.py) land where they should every time, not by timing. The points:
    "prepare" (the run prepared in staging, not yet in place), "checkpoint-write:N" (checkpoint N half
    written), "step:N" (after step N and its checkpoint, if any), "finish" (after the final checkpoint,
    before the final evaluation), "report" (eval.json written, report.html not). Unset, as it always is
    outside those tests, it does nothing."""
    wanted = os.environ.get(FAULT)
    if wanted and wanted in (phase, f"{phase}:{step}"):
        os.kill(os.getpid(), signal.SIGKILL)


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_tree(path: Path) -> None:
    for item in path.iterdir():
        if item.is_file():
            with open(item, "rb") as f:
                os.fsync(f.fileno())
    _fsync_dir(path)


def write_text_atomic(path: Path, text: str) -> None:
    """Replace `path` with `text` so that readers see the old or the new content, never a mix."""
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    _fsync_dir(path.parent)


def publish_dir(staging: Path, final: Path) -> None:
    """Move a fully written folder into place (replacing an older one of the same name)."""
    _fsync_tree(staging)
    if final.exists():
        shutil.rmtree(final)
    os.rename(staging, final)
    _fsync_dir(final.parent)

"""Writes that land whole or not at all: a text file replaced atomically, a folder published by rename,
each flushed to disk first, so a crash at any instant leaves the old content or the new, never a mix."""

from __future__ import annotations

import os
import shutil
from pathlib import Path


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

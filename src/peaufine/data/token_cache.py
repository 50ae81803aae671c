"""Tokenized data kept on disk (data.cache_dir) under a hash of everything that decides it, so a later
run with the same inputs copies the files instead of training a tokenizer or tokenizing again."""

# A key hashes the texts themselves (not file names or times: a split, a seed, an anomaly policy or the
# synthetic world change the texts, and so the key), the tokenizer's saved files, the settings that
# shape the output, and CACHE_FORMAT. An entry is written in a private folder and renamed into place,
# so a crash or a concurrent run never leaves a partial entry that a later run would trust.

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
import uuid
from collections.abc import Callable, Iterable
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING, Any

from peaufine.data.batching import Example
from peaufine.data.tokenize import TokenizeReport

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

    from peaufine.data.records import ChatRecord

CACHE_FORMAT = 1  # bump when what a cache entry holds, or the code that makes it, changes meaning


def digest(*parts: Any) -> str:
    """SHA-256 of JSON-serialisable parts (plus the cache format)."""
    text = json.dumps([CACHE_FORMAT, *parts], sort_keys=True, ensure_ascii=False, default=str)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def texts_digest(*splits: Iterable[list[str]]) -> str:
    """SHA-256 of the texts of each split, in order; lengths go in too, so no two splits collide."""
    h = hashlib.sha256()
    for split in splits:
        h.update(b"\x00split")
        for batch in split:
            for text in batch:
                data = text.encode("utf-8")
                h.update(len(data).to_bytes(8, "little"))
                h.update(data)
    return h.hexdigest()


def tokenizer_digest(tokenizer: PreTrainedTokenizerBase) -> str:
    """SHA-256 of the files the tokenizer saves (vocabulary, merges, special tokens, chat template)."""
    h = hashlib.sha256()
    with tempfile.TemporaryDirectory() as tmp:
        tokenizer.save_pretrained(tmp)
        for path in sorted(Path(tmp).rglob("*")):
            if path.is_file():
                h.update(str(path.relative_to(tmp)).encode("utf-8") + b"\x00")
                h.update(path.read_bytes())
    return h.hexdigest()


class TokenCache:
    """A folder of cache entries, one folder each; `directory` None turns caching off."""

    def __init__(self, directory: str | Path | None) -> None:
        self.directory = Path(directory).expanduser() if directory is not None else None

    @property
    def enabled(self) -> bool:
        return self.directory is not None

    def files(self, kind: str, key: str, make: Callable[[Path], None], into: Path) -> bool:
        """Put in `into` the files `make(folder)` writes: the cached ones when the cache has this key
        (returns True), else made now, and kept for next time when the cache is on."""
        into.mkdir(parents=True, exist_ok=True)
        if self.directory is None:
            make(into)
            return False
        entry = self.directory / f"{kind}-{key[:32]}"
        reused = entry.is_dir()
        if not reused:
            self._make_entry(entry, make)
        for path in sorted(entry.iterdir()):
            # copies, not links: a run may rewrite its files in place (save_pretrained does)
            shutil.copyfile(path, into / path.name)
        return reused

    def _make_entry(self, entry: Path, make: Callable[[Path], None]) -> None:
        assert self.directory is not None
        self.directory.mkdir(parents=True, exist_ok=True)
        staging = self.directory / f".{entry.name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        staging.mkdir()
        try:
            make(staging)
            os.rename(staging, entry)  # atomic; fails when a concurrent run published it first
        except OSError:
            shutil.rmtree(staging, ignore_errors=True)
            if not entry.is_dir():
                raise
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise


def cached_records(
    cache: TokenCache,
    key: str,
    records: list[ChatRecord],
    tokenize: Callable[[], tuple[list[Example], TokenizeReport]],
) -> tuple[list[Example], TokenizeReport, bool]:
    """Fine-tuning examples and their report, from the cache when `key` (settings and tokenizer)
    and the records' messages match an entry; returns (examples, report, reused)."""

    if not cache.enabled:
        examples, report = tokenize()
        return examples, report, False

    def make(folder: Path) -> None:
        examples, report = tokenize()
        (folder / "report.json").write_text(json.dumps(asdict(report)), encoding="utf-8")
        (folder / "examples.jsonl").write_text(
            "".join(
                json.dumps({"input_ids": e.input_ids, "target_mask": e.target_mask}) + "\n" for e in examples
            ),
            encoding="utf-8",
        )

    with tempfile.TemporaryDirectory() as tmp:
        reused = cache.files("sft", digest(key, [r.messages for r in records]), make, Path(tmp))
        report = TokenizeReport(**json.loads((Path(tmp) / "report.json").read_text(encoding="utf-8")))
        rows = (Path(tmp) / "examples.jsonl").read_text(encoding="utf-8").splitlines()
    examples = [Example(**json.loads(line)) for line in rows if line]
    return examples, report, reused

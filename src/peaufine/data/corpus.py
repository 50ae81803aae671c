"""Text corpora: every document of the named files, one Arrow-backed row each (the files themselves are
read by data/read.py), the by-document train/validation split, and corpora as EOS-separated token streams."""

from __future__ import annotations

import contextlib
import hashlib
import json
import shutil
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from peaufine.data.anomalies import Anomaly, AnomalyPolicy, AnomalyReport, Where, anomaly_policy
from peaufine.data.batching import write_token_stream
from peaufine.data.folds import check_validation_fraction, held_out
from peaufine.data.read import (
    DOCUMENT_UNITS,
    TEXT_SUFFIXES,
    find_files,
    read_file_records,
    read_text_documents,
)
from peaufine.data.token_cache import digest, texts_digest, tokenizer_digest
from peaufine.errors import DataError, RecipeError

if TYPE_CHECKING:
    import datasets
    from transformers import PreTrainedTokenizerBase

    from peaufine.data.token_cache import TokenCache
    from peaufine.engine.track import Tracker

ANOMALY_KINDS = ("not_utf8", "bad_json", "missing_field", "empty_text")
# a corpus names its text by data.text_field, not by data.fields
_HINTS = {"missing_field": "fix the record or data.text_field, or set data.anomalies.missing_field: skip"}

# Bumped whenever parsing changes what a file yields, so stale Arrow caches are not reused.
_PARSER_VERSION = 2


# ---------------------------------------------------------------------------------------------
# Loading


def load_documents(
    source: str | Path | Iterable[str | Path],
    *,
    text_field: str = "text",
    document_unit: str = "paragraph",
    policy: dict[str, str] | None = None,
    cache_dir: Path | None = None,
) -> tuple[datasets.Dataset, AnomalyReport]:
    """Read every document of `source` into a Dataset with one column, "text".

    The rows are written to Arrow files under `cache_dir` and memory-mapped, so a corpus larger than
    RAM works; a later call on unchanged files with the same options reuses them. Bad input raises
    one DataError naming file, line and field, unless `policy` says to skip that kind of anomaly,
    in which case the record is dropped and counted in the returned AnomalyReport.
    """
    import datasets
    from datasets.exceptions import DatasetGenerationError

    resolved_policy = anomaly_policy(policy, dict.fromkeys(ANOMALY_KINDS, "error"), hints=_HINTS)
    if document_unit not in DOCUMENT_UNITS:
        raise DataError(
            f"unknown document_unit {document_unit!r}",
            hint=f"use one of: {', '.join(DOCUMENT_UNITS)}",
        )
    if not isinstance(text_field, str) or not text_field:
        raise DataError(f"text_field must be a non-empty string, not {text_field!r}")
    files = find_files(source)
    fingerprint = _fingerprint(files, text_field, document_unit, dict(resolved_policy.actions))

    report = resolved_policy.report()
    generated = False

    def generate() -> Iterator[dict[str, str]]:
        nonlocal generated
        generated = True
        for text in _documents(files, text_field, document_unit, resolved_policy, report):
            yield {"text": text}

    cache_root = Path(cache_dir) if cache_dir is not None else Path(datasets.config.HF_DATASETS_CACHE)
    try:
        dataset = datasets.Dataset.from_generator(
            generate,
            # large_string: 64-bit offsets, so whole files as documents cannot overflow a batch.
            features=datasets.Features({"text": datasets.Value("large_string")}),
            cache_dir=str(cache_root),
            fingerprint=fingerprint,
        )
    except DatasetGenerationError as exc:
        # datasets wraps whatever the generator raised; surface our own message, not its wrapper.
        cause = _find_data_error(exc)
        if cause is not None:
            raise cause from None
        raise DataError(f"could not build the corpus dataset: {exc.__cause__ or exc}") from exc
    except OSError as exc:
        raise DataError(f"cannot write the dataset cache: {exc}", path=cache_root) from exc

    report_path = cache_root / "peaufine_sources" / f"{fingerprint}.json"
    if generated:
        _save_report(report, report_path)
    else:
        cached = _load_report(report_path)
        if cached is None:
            # The Arrow cache outlived its report: count again with a read-only pass.
            for _ in _documents(files, text_field, document_unit, resolved_policy, report):
                pass
            _save_report(report, report_path)
        else:
            report = cached
    return dataset, report


def _fingerprint(files: list[Path], text_field: str, document_unit: str, policy: dict[str, str]) -> str:
    # Size and modification time stand in for the content, so an edited file invalidates the
    # cache without hashing a corpus that may be larger than RAM.
    stats = []
    for path in files:
        st = path.stat()
        stats.append([str(path.resolve()), st.st_size, st.st_mtime_ns])
    key = json.dumps(
        {
            "version": _PARSER_VERSION,
            "files": stats,
            "text_field": text_field,
            "document_unit": document_unit,
            "policy": policy,
        },
        sort_keys=True,
    )
    return "peaufine-" + hashlib.sha256(key.encode()).hexdigest()[:32]


def _find_data_error(exc: BaseException) -> DataError | None:
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        if isinstance(current, DataError):
            return current
        seen.add(id(current))
        current = current.__cause__ or current.__context__
    return None


def _save_report(report: AnomalyReport, path: Path) -> None:
    with contextlib.suppress(OSError):
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps({"counts": report.counts, "examples": report.examples}))


def _load_report(path: Path) -> AnomalyReport | None:
    try:
        saved = json.loads(path.read_text())
        return AnomalyReport(counts=dict(saved["counts"]), examples=dict(saved["examples"]))
    except (OSError, ValueError, KeyError, TypeError):
        return None


def _documents(
    files: list[Path],
    text_field: str,
    document_unit: str,
    policy: AnomalyPolicy,
    report: AnomalyReport,
) -> Iterator[str]:
    """Yield document texts in file order, applying the policy to every anomaly in one place."""
    produced = 0
    for path in files:
        records = 0
        for item in _file_documents(path, text_field, document_unit):
            records += 1
            if isinstance(item, Anomaly):
                policy.handle(item, report)
            else:
                produced += 1
                yield item
        if records == 0:
            policy.handle(Anomaly("empty_text", path, "the file holds no documents"), report)
    if produced == 0:
        skipped = ", ".join(f"{k}={n}" for k, n in report.counts.items() if n)
        names = ", ".join(str(p) for p in files[:3]) + (" ..." if len(files) > 3 else "")
        raise DataError(
            f"empty corpus: no documents in {names}" + (f" after skipping {skipped}" if skipped else ""),
            hint="check text_field and the data policy, or add files with text",
        )


def _file_documents(path: Path, text_field: str, document_unit: str) -> Iterator[str | Anomaly]:
    """A text file's documents by `document_unit`; a record file's `text_field`, one per record."""
    if path.suffix.lower() in TEXT_SUFFIXES:
        yield from read_text_documents(path, document_unit)
        return
    for item in read_file_records(path, column=text_field):
        yield item if isinstance(item, Anomaly) else _text_value(item[1], text_field, item[0])


def _text_value(record: dict[str, Any], text_field: str, where: Where) -> str | Anomaly:
    """The text field of one structured record, or the anomaly that keeps it from being used."""
    # a table's records have no line: they are located by row
    prefix = f"row {where.record}: " if where.line is None and where.record is not None else ""

    def anomaly(kind: str, message: str) -> Anomaly:
        return Anomaly(kind, where.path, prefix + message, line=where.line, field=text_field)

    if text_field not in record:
        present = ", ".join(repr(str(k)) for k in record) or "none"
        return anomaly("missing_field", f"record has no field {text_field!r} (fields present: {present})")
    value = record[text_field]
    if not isinstance(value, str):
        return anomaly(
            "missing_field", f"value is {'null' if value is None else type(value).__name__}, not a string"
        )
    if not value.strip():
        return anomaly("empty_text", "text is empty")
    return value


# ---------------------------------------------------------------------------------------------
# Splitting


def split_documents(
    dataset: datasets.Dataset,
    validation_fraction: float,
    seed: int,
    *,
    source: object = None,
    document_unit: str | None = None,
) -> tuple[datasets.Dataset, datasets.Dataset]:
    """Split by document into (train, validation), the same way for the same seed.

    Splitting documents rather than packed token blocks keeps any text out of both sides. The
    permutation comes from PCG64's raw bit stream, which numpy keeps stable across versions, so a
    recipe's validation set does not move when the environment is upgraded. Each side keeps the
    corpus order, which keeps reads of the memory-mapped Arrow file sequential. `source` and
    `document_unit` (the recipe's) make the advice of a corpus too small to split fit the case.
    """
    check_validation_fraction(validation_fraction)
    n = len(dataset)
    if validation_fraction == 0.0:
        return dataset, dataset.select([])
    if n < 2:
        finer = {"file": "paragraph or line", "paragraph": "line", "line": ""}.get(
            str(document_unit), "paragraph or line"
        )
        now = f"; data.document_unit is {document_unit}" if document_unit else ""
        ways = [f"a finer data.document_unit ({finer}{now})"] if finer else []
        ways += ["more text", "data.validation_fraction: 0 (no validation)"]
        raise DataError(
            f"cannot hold out validation documents: the corpus has {n} document" + ("" if n == 1 else "s"),
            path=None if source is None else str(source),
            hint="use " + ", ".join(ways[:-1]) + " or " + ways[-1],
        )
    validation = set(held_out(n, validation_fraction, seed))
    train = [i for i in range(n) if i not in validation]
    return dataset.select(train), dataset.select(sorted(validation))


def iter_texts(dataset: Any, batch_size: int = 1000) -> Iterator[list[str]]:
    """The "text" column of a corpus dataset, a batch of documents at a time."""
    for batch in dataset.iter(batch_size=batch_size):
        yield batch["text"]


def tokenize_stream(tokenizer: PreTrainedTokenizerBase, batches: Iterable[list[str]], path: Path) -> int:
    """Every document of `batches` tokenized into one stream in `path`, each followed by EOS; returns
    the number of tokens written."""

    def documents() -> Iterator[list[int]]:
        for texts in batches:
            yield from tokenizer(texts, add_special_tokens=False)["input_ids"]

    if tokenizer.eos_token_id is None:
        raise RecipeError("model.tokenizer: the tokenizer has no EOS token to separate packed documents")
    return write_token_stream(documents(), tokenizer.eos_token_id, path)


def tokenize_general(
    tokenizer: PreTrainedTokenizerBase,
    path: str,
    out: Path,
    *,
    cache: TokenCache | None = None,
    tracker: Tracker | None = None,
) -> Path:
    """The documents of `path` as one token stream (each followed by EOS) in `out`. With a cache on,
    the stream is kept under the tokenizer's files and the texts themselves (not the file's name or
    time), and a later call with both unchanged copies it instead of tokenizing."""

    dataset, _ = load_documents(path)

    def tokenize(target: Path) -> None:
        tokenize_stream(tokenizer, iter_texts(dataset), target)

    if cache is None or not cache.enabled:
        tokenize(out)
        return out
    key = digest(tokenizer_digest(tokenizer), tokenizer.eos_token_id, texts_digest(iter_texts(dataset)))
    with tempfile.TemporaryDirectory() as tmp:
        # the entry holds general.bin whatever `out` is called (general.bin, replay.bin, ...)
        reused = cache.files("general", key, lambda folder: tokenize(folder / "general.bin"), Path(tmp))
        shutil.copyfile(Path(tmp) / "general.bin", out)
    if reused and tracker is not None:
        tracker.say(f"tokens: general text {path} reused from the cache in {cache.directory}")
    return out

"""Text corpora for pretraining read from local files, one Arrow-backed row per document.

Owns file discovery, per-format parsing, the bad-input policy (error or skip, per anomaly kind) and
the by-document train/validation split.
"""

from __future__ import annotations

import codecs
import contextlib
import csv
import hashlib
import json
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from peaufine.errors import DataError

if TYPE_CHECKING:
    import datasets

ANOMALY_KINDS = ("not_utf8", "bad_json", "missing_field", "empty_text")
POLICY_VALUES = ("error", "skip")
DOCUMENT_UNITS = ("paragraph", "line", "file")

TEXT_SUFFIXES = (".txt", ".md", ".text")
SUPPORTED_SUFFIXES = (*TEXT_SUFFIXES, ".jsonl", ".json", ".csv", ".tsv", ".parquet")

# Bumped whenever parsing changes what a file yields, so stale Arrow caches are not reused.
_PARSER_VERSION = 2
_JSON_WHITESPACE = re.compile(r"[ \t\n\r]*")
_UTF8_BOM = codecs.BOM_UTF8

_POLICY_HINTS = {
    "not_utf8": "re-encode the file as UTF-8, or set data.anomalies.not_utf8: skip",
    "bad_json": "fix the line, or set data.anomalies.bad_json: skip",
    "missing_field": "fix the record or data.text_field, or set data.anomalies.missing_field: skip",
    "empty_text": "remove the empty record, or set data.anomalies.empty_text: skip",
}


@dataclass
class AnomalyReport:
    """What the skip policy dropped, so the run log can say how much input was discarded and why."""

    counts: dict[str, int] = field(default_factory=lambda: dict.fromkeys(ANOMALY_KINDS, 0))
    examples: dict[str, str] = field(default_factory=dict)

    def total(self) -> int:
        """Number of records skipped, all kinds together."""
        return sum(self.counts.values())

    def _add(self, anomaly: _Anomaly) -> None:
        self.counts[anomaly.kind] = self.counts.get(anomaly.kind, 0) + 1
        self.examples.setdefault(anomaly.kind, anomaly.describe())


@dataclass(frozen=True)
class _Anomaly:
    """One bad record, located; turned into a DataError or counted depending on the policy."""

    kind: str
    path: Path
    message: str
    line: int | None = None
    field: str | None = None

    def describe(self) -> str:
        return str(DataError(self.message, path=self.path, line=self.line, field=self.field))

    def error(self) -> DataError:
        return DataError(
            self.message,
            path=self.path,
            line=self.line,
            field=self.field,
            hint=_POLICY_HINTS[self.kind],
        )


# ---------------------------------------------------------------------------------------------
# Discovery


def find_files(source: str | Path | Iterable[str | Path]) -> list[Path]:
    """The corpus files named by `source`: a file, a folder (searched recursively), or a list.

    Folders contribute their supported files in sorted order, so the document order (and with it the
    seeded split) does not depend on the file system's listing order. Hidden files and folders
    (`.git`, `.ipynb_checkpoints`) are left out: they are never corpus text.
    """
    entries = [source] if isinstance(source, (str, Path)) else list(source)
    if not entries:
        raise DataError("no corpus source given", hint="name a file, a folder, or a list of them")
    files: list[Path] = []
    seen: set[Path] = set()
    for entry in entries:
        path = Path(entry)
        if not path.exists():
            raise DataError("no such file or folder", path=path)
        if path.is_dir():
            found = sorted(
                p
                for p in path.rglob("*")
                if p.is_file()
                and p.suffix.lower() in SUPPORTED_SUFFIXES
                and not any(part.startswith(".") for part in p.relative_to(path).parts)
            )
            if not found:
                raise DataError(
                    "the folder holds no corpus file",
                    path=path,
                    hint=f"supported extensions: {' '.join(SUPPORTED_SUFFIXES)}",
                )
        elif path.suffix.lower() in SUPPORTED_SUFFIXES:
            found = [path]
        else:
            raise DataError(
                f"unsupported file extension {path.suffix!r}",
                path=path,
                hint=f"supported extensions: {' '.join(SUPPORTED_SUFFIXES)}",
            )
        for p in found:
            # The same file listed twice would silently double its weight in training.
            key = p.resolve()
            if key not in seen:
                seen.add(key)
                files.append(p)
    return files


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

    resolved_policy = _resolve_policy(policy)
    if document_unit not in DOCUMENT_UNITS:
        raise DataError(
            f"unknown document_unit {document_unit!r}",
            hint=f"use one of: {', '.join(DOCUMENT_UNITS)}",
        )
    if not isinstance(text_field, str) or not text_field:
        raise DataError(f"text_field must be a non-empty string, not {text_field!r}")
    files = find_files(source)
    fingerprint = _fingerprint(files, text_field, document_unit, resolved_policy)

    report = AnomalyReport()
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


def _resolve_policy(policy: dict[str, str] | None) -> dict[str, str]:
    resolved = dict.fromkeys(ANOMALY_KINDS, "error")
    for kind, value in (policy or {}).items():
        if kind not in ANOMALY_KINDS:
            raise DataError(
                f"unknown anomaly kind {kind!r} in the data policy",
                hint=f"valid kinds: {', '.join(ANOMALY_KINDS)}",
            )
        if value not in POLICY_VALUES:
            raise DataError(
                f"data policy for {kind!r} is {value!r}",
                hint=f"valid values: {', '.join(POLICY_VALUES)}",
            )
        resolved[kind] = value
    return resolved


def _fingerprint(files: list[Path], text_field: str, document_unit: str, policy: dict) -> str:
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
    policy: dict[str, str],
    report: AnomalyReport,
) -> Iterator[str]:
    """Yield document texts in file order, applying the policy to every anomaly in one place."""
    produced = 0
    for path in files:
        records = 0
        for item in _read_file(path, text_field, document_unit):
            records += 1
            if isinstance(item, _Anomaly):
                if policy[item.kind] == "error":
                    raise item.error()
                report._add(item)
            else:
                produced += 1
                yield item
        if records == 0:
            anomaly = _Anomaly("empty_text", path, "the file holds no documents")
            if policy["empty_text"] == "error":
                raise anomaly.error()
            report._add(anomaly)
    if produced == 0:
        skipped = ", ".join(f"{k}={n}" for k, n in report.counts.items() if n)
        names = ", ".join(str(p) for p in files[:3]) + (" ..." if len(files) > 3 else "")
        raise DataError(
            f"empty corpus: no documents in {names}" + (f" after skipping {skipped}" if skipped else ""),
            hint="check text_field and the data policy, or add files with text",
        )


def _read_file(path: Path, text_field: str, document_unit: str) -> Iterator[str | _Anomaly]:
    suffix = path.suffix.lower()
    try:
        if suffix in TEXT_SUFFIXES:
            yield from _read_text(path, document_unit)
        elif suffix == ".jsonl":
            yield from _read_json_lines(path, text_field, hint_json=False)
        elif suffix == ".json":
            yield from _read_json(path, text_field)
        elif suffix in (".csv", ".tsv"):
            yield from _read_csv(path, text_field, delimiter="\t" if suffix == ".tsv" else ",")
        elif suffix == ".parquet":
            yield from _read_parquet(path, text_field)
        else:  # find_files only lets supported suffixes through
            raise DataError(f"unsupported file extension {suffix!r}", path=path)
    except OSError as exc:
        raise DataError(f"cannot read the file: {exc.strerror or exc}", path=path) from exc


# ---------------------------------------------------------------------------------------------
# Formats


def _byte_lines(path: Path) -> Iterator[tuple[int, int, bytes]]:
    """(1-based line number, byte offset of the line, raw line with its ending) for a file."""
    offset = 0
    with path.open("rb") as handle:
        for number, raw in enumerate(handle, start=1):
            yield number, offset, raw
            offset += len(raw)


def _decode_line(raw: bytes, number: int, offset: int, path: Path) -> str | _Anomaly:
    # Decoding line by line is exact: "\n" never occurs inside a multi-byte UTF-8 sequence.
    if number == 1 and raw.startswith(_UTF8_BOM):
        raw = raw[len(_UTF8_BOM) :]
        offset += len(_UTF8_BOM)
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        return _not_utf8(path, number, offset + exc.start, raw[exc.start : exc.end])


def _not_utf8(path: Path, line: int, byte_offset: int, bad: bytes) -> _Anomaly:
    return _Anomaly(
        "not_utf8",
        path,
        f"bytes not valid UTF-8 ({bad.hex(' ')} at byte offset {byte_offset})",
        line=line,
    )


def _strip_ending(text: str) -> str:
    return text.rstrip("\r\n")


def _read_text(path: Path, document_unit: str) -> Iterator[str | _Anomaly]:
    if document_unit == "file":
        raw = path.read_bytes()
        body = raw[len(_UTF8_BOM) :] if raw.startswith(_UTF8_BOM) else raw
        skipped = len(raw) - len(body)
        try:
            text = body.decode("utf-8")
        except UnicodeDecodeError as exc:
            line = body.count(b"\n", 0, exc.start) + 1
            yield _not_utf8(path, line, skipped + exc.start, body[exc.start : exc.end])
            return
        text = text.replace("\r\n", "\n")
        if not text.strip():
            yield _Anomaly("empty_text", path, "the file holds only whitespace")
            return
        yield text
        return

    paragraph: list[str] = []
    bad: _Anomaly | None = None
    for number, offset, raw in _byte_lines(path):
        decoded = _decode_line(raw, number, offset, path)
        if isinstance(decoded, _Anomaly):
            if document_unit == "line":
                yield decoded
                continue
            # The whole paragraph is the record, so it is dropped (or reported) as one.
            bad = bad or decoded
            paragraph.append("")
            continue
        line = _strip_ending(decoded)
        if document_unit == "line":
            if line.strip():
                yield line
            continue
        if line.strip():
            paragraph.append(line)
        elif paragraph:
            yield bad or "\n".join(paragraph)
            paragraph, bad = [], None
    if paragraph:
        yield bad or "\n".join(paragraph)


def _text_value(record: dict, text_field: str, path: Path, line: int) -> str | _Anomaly:
    """The text field of one structured record, or the anomaly that keeps it from being used."""
    if text_field not in record:
        present = ", ".join(repr(str(k)) for k in record) or "none"
        return _Anomaly(
            "missing_field",
            path,
            f"record has no field {text_field!r} (fields present: {present})",
            line=line,
            field=text_field,
        )
    value = record[text_field]
    if not isinstance(value, str):
        kind = "null" if value is None else type(value).__name__
        return _Anomaly(
            "missing_field",
            path,
            f"value is {kind}, not a string",
            line=line,
            field=text_field,
        )
    if not value.strip():
        return _Anomaly("empty_text", path, "text is empty", line=line, field=text_field)
    return value


def _read_json_lines(path: Path, text_field: str, *, hint_json: bool) -> Iterator[str | _Anomaly]:
    expected = "one JSON object per line"
    if hint_json:
        expected += ", or one JSON array of objects"
    for number, offset, raw in _byte_lines(path):
        decoded = _decode_line(raw, number, offset, path)
        if isinstance(decoded, _Anomaly):
            yield decoded
            continue
        stripped = decoded.strip()
        if not stripped:
            continue
        try:
            record = json.loads(stripped)
        except (json.JSONDecodeError, RecursionError) as exc:
            where = f" at column {exc.colno}" if isinstance(exc, json.JSONDecodeError) else ""
            reason = exc.msg if isinstance(exc, json.JSONDecodeError) else "nested too deeply"
            yield _Anomaly(
                "bad_json",
                path,
                f"not valid JSON: {reason}{where} (expected {expected})",
                line=number,
            )
            continue
        if not isinstance(record, dict):
            yield _Anomaly(
                "bad_json",
                path,
                f"expected a JSON object, got {_json_type(record)} (expected {expected})",
                line=number,
            )
            continue
        yield _text_value(record, text_field, path, number)


def _json_type(value: object) -> str:
    names = {dict: "an object", list: "an array", str: "a string", bool: "a boolean"}
    if value is None:
        return "null"
    return names.get(type(value), "a number")


def _first_significant_byte(path: Path) -> bytes:
    """The first byte that is neither a BOM nor whitespace; b"" for a blank file."""
    with path.open("rb") as handle:
        chunk = handle.read(65536)
        if chunk.startswith(_UTF8_BOM):
            chunk = chunk[len(_UTF8_BOM) :]
        while chunk:
            stripped = chunk.lstrip(b" \t\r\n")
            if stripped:
                return stripped[:1]
            chunk = handle.read(65536)
    return b""


def _read_json(path: Path, text_field: str) -> Iterator[str | _Anomaly]:
    """A .json file: one JSON array of objects, or JSON lines under a .json name."""
    if _first_significant_byte(path) != b"[":
        yield from _read_json_lines(path, text_field, hint_json=True)
        return

    # An array has to be parsed as a whole; use JSON lines for corpora that do not fit in RAM.
    raw = path.read_bytes()
    body = raw[len(_UTF8_BOM) :] if raw.startswith(_UTF8_BOM) else raw
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = body.count(b"\n", 0, exc.start) + 1
        offset = len(raw) - len(body) + exc.start
        yield _not_utf8(path, line, offset, body[exc.start : exc.end])
        return

    decoder = json.JSONDecoder()
    line, counted_to = 1, 0

    def line_at(pos: int) -> int:
        nonlocal line, counted_to
        line += text.count("\n", counted_to, pos)
        counted_to = pos
        return line

    def syntax_error(message: str, pos: int) -> DataError:
        # No way to resume after a syntax error inside an array, so no policy can skip it.
        return DataError(
            f"not valid JSON: {message}",
            path=path,
            line=line_at(pos),
            hint="fix the file; JSON lines (.jsonl) let a bad record be skipped",
        )

    pos = _JSON_WHITESPACE.match(text, 0).end() + 1  # past "["
    pos = _JSON_WHITESPACE.match(text, pos).end()
    if text.startswith("]", pos):
        pos = _JSON_WHITESPACE.match(text, pos + 1).end()
        if pos != len(text):
            raise syntax_error("extra data after the array", pos)
        return
    while True:
        try:
            record, end = decoder.raw_decode(text, pos)
        except json.JSONDecodeError as exc:
            raise syntax_error(exc.msg, exc.pos) from None
        except RecursionError:
            raise syntax_error("nested too deeply", pos) from None
        number = line_at(pos)
        if isinstance(record, dict):
            yield _text_value(record, text_field, path, number)
        else:
            yield _Anomaly(
                "bad_json",
                path,
                f"array element is {_json_type(record)}, expected an object",
                line=number,
            )
        pos = _JSON_WHITESPACE.match(text, end).end()
        if text.startswith(",", pos):
            pos = _JSON_WHITESPACE.match(text, pos + 1).end()
        elif text.startswith("]", pos):
            pos = _JSON_WHITESPACE.match(text, pos + 1).end()
            if pos != len(text):
                raise syntax_error("extra data after the array", pos)
            return
        else:
            raise syntax_error("expected ',' or ']' after an array element", pos)


@contextlib.contextmanager
def _csv_field_limit(limit: int) -> Iterator[None]:
    # csv's default 128 KiB field limit would reject long documents; the limit is process-wide,
    # so it is restored on the way out.
    previous = csv.field_size_limit()
    csv.field_size_limit(max(previous, limit))
    try:
        yield
    finally:
        csv.field_size_limit(previous)


def _read_csv(path: Path, text_field: str, *, delimiter: str) -> Iterator[str | _Anomaly]:
    """A CSV or TSV file with a header row; line numbers are physical lines of the file."""
    kind = "TSV" if delimiter == "\t" else "CSV"
    bad_lines: list[_Anomaly] = []

    def decoded_lines() -> Iterator[str]:
        # csv pulls lines itself, so undecodable ones are noted here and charged to the row
        # that spans them once the reader hands that row back.
        for number, offset, raw in _byte_lines(path):
            decoded = _decode_line(raw, number, offset, path)
            if isinstance(decoded, _Anomaly):
                bad_lines.append(decoded)
                decoded = raw.decode("utf-8", errors="replace")
            yield decoded

    def undecodable_up_to(end: int) -> list[_Anomaly]:
        found = []
        while bad_lines and bad_lines[0].line is not None and bad_lines[0].line <= end:
            found.append(bad_lines.pop(0))
        return found

    with _csv_field_limit(2**31 - 1):
        # strict: an unbalanced quote raises instead of swallowing the rest of the file.
        reader = csv.reader(decoded_lines(), delimiter=delimiter, strict=True)

        def next_row(start: int) -> list[str] | None:
            try:
                return next(reader)
            except StopIteration:
                return None
            except csv.Error as exc:
                # The reader is out of step with the records after a quoting error: no skipping.
                end = reader.line_num
                span = f" (the record runs from line {start} to line {end})" if end > start else ""
                raise DataError(
                    f"not valid {kind}: {exc}{span}",
                    path=path,
                    line=start,
                    hint="check the quoting of this record",
                ) from None

        header = next_row(1)
        bad_header = undecodable_up_to(reader.line_num)
        if bad_header:
            raise bad_header[0].error()
        if not header:
            raise DataError(
                "no header row",
                path=path,
                line=1,
                hint=f"the first line must name the columns, {text_field!r} among them",
            )
        if text_field not in header:
            present = ", ".join(repr(name) for name in header)
            raise DataError(
                f"the header has no column {text_field!r} (columns present: {present})",
                path=path,
                line=1,
                field=text_field,
                hint="set text_field to the column that holds the text",
            )
        column = header.index(text_field)
        while True:
            start = reader.line_num + 1
            row = next_row(start)
            if row is None:
                return
            bad = undecodable_up_to(reader.line_num)
            if bad:
                yield bad[0]
            elif not row:  # a blank line, not a record
                continue
            elif len(row) > len(header):
                # more fields than columns: the row is out of step with the header
                yield _Anomaly(
                    "missing_field",
                    path,
                    f"the row has {len(row)} fields, the header {len(header)}",
                    line=start,
                )
            elif column >= len(row):
                yield _Anomaly(
                    "missing_field",
                    path,
                    f"the row has {len(row)} fields, the header {len(header)}",
                    line=start,
                    field=text_field,
                )
            elif not row[column].strip():
                yield _Anomaly("empty_text", path, "text is empty", line=start, field=text_field)
            else:
                yield row[column]


def _read_parquet(path: Path, text_field: str) -> Iterator[str | _Anomaly]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        parquet = pq.ParquetFile(path)
        schema = parquet.schema_arrow
    except (pa.ArrowException, ValueError) as exc:
        raise DataError(f"not a readable Parquet file: {exc}", path=path) from None
    if text_field not in schema.names:
        present = ", ".join(repr(name) for name in schema.names)
        raise DataError(
            f"no column {text_field!r} (columns present: {present})",
            path=path,
            field=text_field,
            hint="set text_field to the column that holds the text",
        )
    column_type = schema.field(text_field).type
    if pa.types.is_dictionary(column_type):
        column_type = column_type.value_type
    if not (
        pa.types.is_string(column_type)
        or pa.types.is_large_string(column_type)
        or (hasattr(pa.types, "is_string_view") and pa.types.is_string_view(column_type))
    ):
        raise DataError(
            f"the column holds {column_type}, not strings",
            path=path,
            field=text_field,
            hint="set text_field to the column that holds the text",
        )
    row = 0
    try:
        for batch in parquet.iter_batches(columns=[text_field], batch_size=1024):
            for value in batch.column(0).to_pylist():
                row += 1
                if value is None:
                    yield _Anomaly("missing_field", path, f"row {row}: value is null", field=text_field)
                elif not value.strip():
                    yield _Anomaly("empty_text", path, f"row {row}: text is empty", field=text_field)
                else:
                    yield value
    except (pa.ArrowException, ValueError) as exc:
        raise DataError(f"cannot read row {row + 1}: {exc}", path=path, field=text_field) from None


# ---------------------------------------------------------------------------------------------
# Splitting


def split_documents(
    dataset: datasets.Dataset, validation_fraction: float, seed: int
) -> tuple[datasets.Dataset, datasets.Dataset]:
    """Split by document into (train, validation), the same way for the same seed.

    Splitting documents rather than packed token blocks keeps any text out of both sides. The
    permutation comes from PCG64's raw bit stream, which numpy keeps stable across versions, so a
    recipe's validation set does not move when the environment is upgraded. Each side keeps the
    corpus order, which keeps reads of the memory-mapped Arrow file sequential.
    """
    import numpy as np

    if not 0.0 <= validation_fraction < 1.0:
        raise DataError(
            f"validation_fraction is {validation_fraction!r}",
            hint="use a number from 0 (no validation) up to, not including, 1",
        )
    n = len(dataset)
    if validation_fraction == 0.0:
        return dataset, dataset.select([])
    if n < 2:
        raise DataError(
            f"cannot hold out validation documents: the corpus has {n} document" + ("" if n == 1 else "s"),
            hint='use document_unit "paragraph" or "line", add files, or set validation_fraction 0',
        )
    n_validation = min(max(1, round(n * validation_fraction)), n - 1)
    keys = np.random.PCG64(seed).random_raw(n)
    order = np.argsort(keys, kind="stable")
    validation = np.sort(order[:n_validation])
    train = np.sort(order[n_validation:])
    return dataset.select(train.tolist()), dataset.select(validation.tolist())

"""Every data file peaufine reads is opened here: one reader per file kind, yielding records or located
anomalies (data/anomalies.py), and the discovery of the files a data source names."""

# The loaders (corpus, chat and classification records, preference pairs, prompts) read through these and
# only say what a record must hold; a file therefore fails, or is skipped, the same way whoever reads it.

from __future__ import annotations

import codecs
import contextlib
import csv
import json
import re
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from peaufine.data.anomalies import Anomaly, Where
from peaufine.errors import DataError

TEXT_SUFFIXES = (".txt", ".md", ".text")
RECORD_SUFFIXES = (".jsonl", ".json", ".csv", ".tsv", ".parquet")
SUPPORTED_SUFFIXES = (*TEXT_SUFFIXES, *RECORD_SUFFIXES)
DOCUMENT_UNITS = ("paragraph", "line", "file")

_JSON_WHITESPACE = re.compile(r"[ \t\n\r]*")
_UTF8_BOM = codecs.BOM_UTF8


Item = tuple[Where, dict[str, Any]] | Anomaly


# ---------------------------------------------------------------------------------------------
# Discovery


def find_files(source: str | Path | Iterable[str | Path]) -> list[Path]:
    """The data files named by `source`: a file, a folder (searched recursively), or a list.

    Folders contribute their supported files in sorted order, so the document order (and with it the
    seeded split) does not depend on the file system's listing order. Hidden files and folders
    (`.git`, `.ipynb_checkpoints`) are left out: they are never data.
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


def record_paths(source: str | Path | Iterable[str | Path]) -> list[Path]:
    """Record files and saved-dataset folders named by `source`, each once, in a stable order.

    A folder written by `Dataset.save_to_disk` is one source; any other folder is searched like a
    pretraining corpus, minus plain-text files, which hold no records.
    """
    entries = [source] if isinstance(source, (str, Path)) else list(source)
    if not entries:
        raise DataError("no data source given", hint="set data.source to a file, a folder, or a list")
    paths: list[Path] = []
    seen: set[Path] = set()
    for entry in entries:
        path = Path(entry)
        if path.is_dir() and is_saved_dataset(path):
            found = [path]
        elif path.is_file() and path.suffix.lower() in TEXT_SUFFIXES:
            raise DataError(
                "plain text holds no fine-tuning records",
                path=path,
                hint="use JSON lines, JSON, CSV, TSV, Parquet, or a saved dataset",
            )
        else:
            found = [p for p in find_files(path) if p.suffix.lower() not in TEXT_SUFFIXES]
            if not found:
                raise DataError(
                    "the folder holds no record file",
                    path=path,
                    hint="supported: .jsonl .json .csv .tsv .parquet, or a Dataset.save_to_disk folder",
                )
        for p in found:
            key = p.resolve()
            if key not in seen:
                seen.add(key)
                paths.append(p)
    return paths


def is_saved_dataset(path: Path) -> bool:
    return (path / "state.json").is_file() or (path / "dataset_dict.json").is_file()


# ---------------------------------------------------------------------------------------------
# Readers


def read_records(paths: Iterable[Path]) -> Iterator[Item]:
    """(where, record) for every record of `paths` in order, or the anomaly that stands in its place."""
    for path in paths:
        yield from read_file_records(path)


def read_file_records(path: Path, column: str | None = None) -> Iterator[Item]:
    """The records of one file or saved dataset. With `column`, the file must have that column where
    a file has a header (CSV, TSV) or a schema (Parquet, which is then read for that column alone)."""
    try:
        if path.is_dir():
            yield from _saved_dataset_records(path)
            return
        suffix = path.suffix.lower()
        if suffix == ".jsonl":
            yield from _json_lines_records(path)
        elif suffix == ".json":
            yield from _json_records(path)
        elif suffix in (".csv", ".tsv"):
            yield from _csv_records(path, "\t" if suffix == ".tsv" else ",", column)
        elif suffix == ".parquet":
            yield from _parquet_records(path, column)
        else:  # find_files and record_paths only let supported suffixes through
            raise DataError(f"unsupported file extension {suffix!r}", path=path)
    except OSError as exc:
        raise DataError(f"cannot read the file: {exc.strerror or exc}", path=path) from exc


def read_text_documents(path: Path, document_unit: str) -> Iterator[str | Anomaly]:
    """The documents of a plain-text file: the whole file, each paragraph, or each non-blank line."""
    try:
        yield from _text_documents(path, document_unit)
    except OSError as exc:
        raise DataError(f"cannot read the file: {exc.strerror or exc}", path=path) from exc


def json_type(value: object) -> str:
    """How a JSON value's type reads in a message: "an object", "an array", "null", ..."""
    names = {dict: "an object", list: "an array", str: "a string", bool: "a boolean"}
    if value is None:
        return "null"
    return names.get(type(value), "a number")


def _byte_lines(path: Path) -> Iterator[tuple[int, int, bytes]]:
    """(1-based line number, byte offset of the line, raw line with its ending) for a file."""
    offset = 0
    with path.open("rb") as handle:
        for number, raw in enumerate(handle, start=1):
            yield number, offset, raw
            offset += len(raw)


def _decode_line(raw: bytes, number: int, offset: int, path: Path) -> str | Anomaly:
    # Decoding line by line is exact: "\n" never occurs inside a multi-byte UTF-8 sequence.
    if number == 1 and raw.startswith(_UTF8_BOM):
        raw = raw[len(_UTF8_BOM) :]
        offset += len(_UTF8_BOM)
    nul = raw.find(b"\x00")
    if nul >= 0:
        return _nul_byte(path, number, offset + nul)
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        return _not_utf8(path, number, offset + exc.start, raw[exc.start : exc.end])


def _not_utf8(path: Path, line: int, byte_offset: int, bad: bytes) -> Anomaly:
    return Anomaly(
        "not_utf8",
        path,
        f"bytes not valid UTF-8 ({bad.hex(' ')} at byte offset {byte_offset})",
        line=line,
    )


def _nul_byte(path: Path, line: int, byte_offset: int) -> Anomaly:
    """A NUL byte is valid UTF-8 but never in text: the file is binary, or UTF-16 / UTF-32 text."""
    return Anomaly(
        "not_utf8",
        path,
        f"a NUL byte (00) at byte offset {byte_offset}: binary data or UTF-16 text, not UTF-8 text",
        line=line,
    )


def _decode_whole(path: Path) -> str | Anomaly:
    """A whole file as text (its BOM dropped, if any), or the anomaly at its first undecodable byte."""
    raw = path.read_bytes()
    body = raw[len(_UTF8_BOM) :] if raw.startswith(_UTF8_BOM) else raw
    nul = body.find(b"\x00")
    if nul >= 0:
        return _nul_byte(path, body.count(b"\n", 0, nul) + 1, len(raw) - len(body) + nul)
    try:
        return body.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = body.count(b"\n", 0, exc.start) + 1
        return _not_utf8(path, line, len(raw) - len(body) + exc.start, body[exc.start : exc.end])


def _text_documents(path: Path, document_unit: str) -> Iterator[str | Anomaly]:
    if document_unit == "file":
        text = _decode_whole(path)
        if isinstance(text, Anomaly):
            yield text
            return
        text = text.replace("\r\n", "\n")
        if not text.strip():
            yield Anomaly("empty_text", path, "the file holds only whitespace")
            return
        yield text
        return

    paragraph: list[str] = []
    bad: Anomaly | None = None
    for number, offset, raw in _byte_lines(path):
        decoded = _decode_line(raw, number, offset, path)
        if isinstance(decoded, Anomaly):
            if document_unit == "line":
                yield decoded
                continue
            # The whole paragraph is the record, so it is dropped (or reported) as one.
            bad = bad or decoded
            paragraph.append("")
            continue
        line = decoded.rstrip("\r\n")
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


def _saved_dataset_records(path: Path) -> Iterator[Item]:
    import datasets

    if (path / "dataset_dict.json").is_file():
        splits = sorted(p.name for p in path.iterdir() if p.is_dir())
        raise DataError(
            f"a saved DatasetDict with splits {', '.join(splits)}",
            path=path,
            hint=f"name one split's folder, e.g. {path / (splits[0] if splits else 'train')}",
        )
    try:
        dataset = datasets.load_from_disk(str(path))
    except (OSError, ValueError) as exc:
        raise DataError(f"cannot load the saved dataset: {exc}", path=path) from None
    for number, row in enumerate(dataset, start=1):
        yield Where(path, record=number), row


def _json_lines_records(path: Path, expected: str = "one JSON object per line") -> Iterator[Item]:
    for number, offset, raw in _byte_lines(path):
        decoded = _decode_line(raw, number, offset, path)
        if isinstance(decoded, Anomaly):
            yield decoded
            continue
        if not decoded.strip():
            continue
        where = Where(path, line=number)
        try:
            record = json.loads(decoded)
        except (json.JSONDecodeError, RecursionError) as exc:
            column = f" at column {exc.colno}" if isinstance(exc, json.JSONDecodeError) else ""
            reason = exc.msg if isinstance(exc, json.JSONDecodeError) else "nested too deeply"
            yield where.anomaly("bad_json", f"not valid JSON: {reason}{column} (expected {expected})")
            continue
        if not isinstance(record, dict):
            yield where.anomaly(
                "bad_json", f"expected a JSON object, got {json_type(record)} (expected {expected})"
            )
            continue
        yield where, record


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


def _json_records(path: Path) -> Iterator[Item]:
    """A .json file: one array of objects (each located by line and position), or JSON lines."""
    if _first_significant_byte(path) != b"[":
        yield from _json_lines_records(path, "one JSON object per line, or one JSON array of objects")
        return
    # An array has to be parsed as a whole; use JSON lines for data that does not fit in RAM.
    text = _decode_whole(path)
    if isinstance(text, Anomaly):
        # the array cannot be read past the bad byte: the whole file is the one record it spoils
        yield text
        return

    def syntax_error(message: str, pos: int) -> DataError:
        # No way to resume after a syntax error inside an array, so no policy can skip it.
        return DataError(
            f"not valid JSON: {message}",
            path=path,
            line=text.count("\n", 0, pos) + 1,
            hint="fix the file; JSON lines (.jsonl) let a bad record be skipped",
        )

    decoder = json.JSONDecoder()
    line, counted_to = 1, 0
    pos = _JSON_WHITESPACE.match(text, _JSON_WHITESPACE.match(text, 0).end() + 1).end()
    number = 0
    while not text.startswith("]", pos):
        try:
            record, end = decoder.raw_decode(text, pos)
        except json.JSONDecodeError as exc:
            raise syntax_error(exc.msg, exc.pos) from None
        except RecursionError:
            raise syntax_error("nested too deeply", pos) from None
        number += 1
        line += text.count("\n", counted_to, pos)
        counted_to = pos
        where = Where(path, line=line, record=number)
        if isinstance(record, dict):
            yield where, record
        else:
            yield where.anomaly("bad_json", f"array element is {json_type(record)}, expected an object")
        pos = _JSON_WHITESPACE.match(text, end).end()
        if text.startswith(",", pos):
            pos = _JSON_WHITESPACE.match(text, pos + 1).end()
        elif not text.startswith("]", pos):
            raise syntax_error("expected ',' or ']' after an array element", pos)
    if _JSON_WHITESPACE.match(text, pos + 1).end() != len(text):
        raise syntax_error("extra data after the array", pos + 1)


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


def _csv_records(path: Path, delimiter: str, column: str | None) -> Iterator[Item]:
    """CSV or TSV with a header row; a record's line is the physical line where it starts."""
    kind = "TSV" if delimiter == "\t" else "CSV"
    undecodable: list[Anomaly] = []

    def decoded_lines() -> Iterator[str]:
        # csv pulls lines itself: bad bytes are noted here and charged to the row that spans them.
        for number, offset, raw in _byte_lines(path):
            decoded = _decode_line(raw, number, offset, path)
            if isinstance(decoded, Anomaly):
                undecodable.append(decoded)
                decoded = raw.decode("utf-8", errors="replace")
            yield decoded

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
        if undecodable:
            raise undecodable[0].error("re-encode the file as UTF-8")
        if not header:
            wanted = f", {column!r} among them" if column else ""
            raise DataError(
                "no header row", path=path, line=1, hint=f"the first line must name the columns{wanted}"
            )
        if column is not None and column not in header:
            present = ", ".join(repr(name) for name in header)
            raise DataError(
                f"the header has no column {column!r} (columns present: {present})",
                path=path,
                line=1,
                field=column,
                hint="set text_field to the column that holds the text",
            )
        while True:
            start = reader.line_num + 1
            row = next_row(start)
            if row is None:
                return
            where = Where(path, line=start)
            bad = [a for a in undecodable if a.line is not None and a.line <= reader.line_num]
            if bad:
                del undecodable[: len(bad)]
                yield bad[0]
            elif not row:  # a blank line, not a record
                continue
            elif len(row) > len(header):
                yield where.anomaly(
                    "missing_field", f"the row has {len(row)} fields, the header {len(header)}"
                )
            else:
                # A short row lacks its last columns: they surface as missing fields, by name.
                yield where, dict(zip(header, row, strict=False))


def _parquet_records(path: Path, column: str | None) -> Iterator[Item]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        parquet = pq.ParquetFile(path)
        schema = parquet.schema_arrow
    except (pa.ArrowException, ValueError) as exc:
        raise DataError(f"not a readable Parquet file: {exc}", path=path) from None
    if column is not None:
        _check_text_column(schema, column, path)
    number = 0
    try:
        for batch in parquet.iter_batches(columns=None if column is None else [column], batch_size=1024):
            for row in batch.to_pylist():
                number += 1
                yield Where(path, record=number), row
    except (pa.ArrowException, ValueError) as exc:
        raise DataError(f"cannot read record {number + 1}: {exc}", path=path, field=column) from None


def _check_text_column(schema: Any, column: str, path: Path) -> None:
    """A Parquet text column must be there and hold strings; any row of another type would fail."""
    import pyarrow as pa

    if column not in schema.names:
        present = ", ".join(repr(name) for name in schema.names)
        raise DataError(
            f"no column {column!r} (columns present: {present})",
            path=path,
            field=column,
            hint="set text_field to the column that holds the text",
        )
    column_type = schema.field(column).type
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
            field=column,
            hint="set text_field to the column that holds the text",
        )

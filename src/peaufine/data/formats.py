"""Fine-tuning records read from local files (prompt-completion, chat messages, Alpaca, classification),
normalised to one schema, with the per-kind policy for bad records and the by-record validation split."""

from __future__ import annotations

import csv
import json
import math
import re
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from peaufine.data.sources import (
    _JSON_WHITESPACE,
    _UTF8_BOM,
    TEXT_SUFFIXES,
    AnomalyReport,
    _Anomaly,
    _byte_lines,
    _csv_field_limit,
    _decode_line,
    _first_significant_byte,
    _json_type,
    _not_utf8,
    find_files,
)
from peaufine.data.world import World, qa_pairs
from peaufine.errors import DataError

if TYPE_CHECKING:
    from peaufine.recipe import FieldsBlock

FORMATS = ("auto", "prompt_completion", "messages", "alpaca", "classification")
ROLES = ("system", "user", "assistant")
ANOMALY_KINDS = ("not_utf8", "bad_json", "missing_field", "empty_text", "unknown_role", "empty_assistant")
# data.anomalies keys that belong to another step (tokenization) or to preference data (read by
# data/preferences.py), accepted here and left alone.
_LATER_POLICY_KEYS = ("too_long", "same_response", "short_ranking", "prompt_mismatch")

_HINTS = {
    "not_utf8": "re-encode the file as UTF-8, or set data.anomalies.not_utf8: skip",
    "bad_json": "fix the record, or set data.anomalies.bad_json: skip",
    "missing_field": "fix the record or name its fields under data.fields, "
    "or set data.anomalies.missing_field: skip",
    "empty_text": "remove the record, or set data.anomalies.empty_text: skip",
    "unknown_role": f"use the roles {', '.join(ROLES)}, or set data.anomalies.unknown_role: skip",
    "empty_assistant": "give the record an assistant answer, or set data.anomalies.empty_assistant: skip",
}
_INT_LABEL = re.compile(r"[+-]?\d+")


@dataclass
class ChatRecord:
    """One conversation, whatever file format it came from; `source` says where, for error messages."""

    messages: list[dict[str, str]]
    source: str


@dataclass
class ClassificationRecord:
    """One classification example: a text and its class id (or its target value, for regression)."""

    text: str
    label: int | float
    source: str


@dataclass(frozen=True)
class _Where:
    """Where a record starts: a line for text formats, a record number where lines cannot tell."""

    path: Path
    line: int | None = None
    record: int | None = None

    def __str__(self) -> str:
        parts = [str(self.path)]
        if self.line is not None:
            parts.append(f"line {self.line}")
        if self.record is not None:
            parts.append(f"record {self.record}")
        return ", ".join(parts)

    def anomaly(self, kind: str, message: str, field: str | None = None) -> _Anomaly:
        if self.record is not None:
            message = f"record {self.record}: {message}"
        return _Anomaly(kind, self.path, message, line=self.line, field=field)


_Item = tuple[_Where, dict[str, Any]] | _Anomaly


# ---------------------------------------------------------------------------------------------
# Loading


def load_chat_records(
    source: str | Path | Iterable[str | Path],
    *,
    format: str = "auto",
    fields: FieldsBlock | None = None,
    policy: dict[str, str] | None = None,
) -> tuple[list[ChatRecord], AnomalyReport]:
    """Every conversation in `source` (files, folders, saved datasets), in file order.

    `format: auto` decides from the first record's keys, once for all files, so a folder cannot mix
    formats unnoticed: a record of another kind then fails as a missing field. Bad records raise one
    DataError naming file, line and field, unless `policy` says to skip that kind; skipped records
    are counted in the returned AnomalyReport.
    """
    fields = _default_fields(fields)
    resolved = resolve_policy(policy)
    if format not in FORMATS:
        raise DataError(f"unknown data.format {format!r}", hint=f"use one of: {', '.join(FORMATS)}")
    if format == "classification":
        raise DataError(
            "data.format classification holds labelled texts, not conversations",
            hint="use the classify stage, or a conversation format for sft",
        )
    report = AnomalyReport(counts=dict.fromkeys(ANOMALY_KINDS, 0))
    chosen = None if format == "auto" else format
    paths = record_paths(source)
    records: list[ChatRecord] = []
    for item in _records(paths):
        if isinstance(item, _Anomaly):
            _handle(item, resolved, report)
            continue
        where, raw = item
        if chosen is None:
            chosen = detect_format(raw, fields, where)
        messages = _to_messages(raw, chosen, fields, where)
        if isinstance(messages, _Anomaly):
            _handle(messages, resolved, report)
            continue
        records.append(ChatRecord(messages, str(where)))
    if not records:
        _raise_empty(paths, report)
    return records, report


def load_classification_records(
    source: str | Path | Iterable[str | Path],
    *,
    fields: FieldsBlock | None = None,
    text_field: str = "text",
    regression: bool = False,
    policy: dict[str, str] | None = None,
) -> tuple[list[ClassificationRecord], list[str], AnomalyReport]:
    """Texts with class ids, and the class names (index = id) to record in the model config.

    Integer labels (or strings spelling integers: CSV has no types) are ids already, named by their
    digits. String labels are class names, numbered in sorted order so the ids do not depend on
    which class happens to come first in the file. With `regression`, labels are numbers, kept as
    floats, and there are no class names.
    """
    fields = _default_fields(fields)
    resolved = resolve_policy(policy)
    report = AnomalyReport(counts=dict.fromkeys(ANOMALY_KINDS, 0))
    paths = record_paths(source)
    found: list[tuple[str, int | float | str, _Where]] = []
    for item in _records(paths):
        if isinstance(item, _Anomaly):
            _handle(item, resolved, report)
            continue
        where, raw = item
        text = _string_field(raw, text_field, where)
        if isinstance(text, str) and not text.strip():
            text = where.anomaly("empty_text", "text is empty", field=text_field)
        label = _label_field(raw, fields.label, where, regression)
        bad = text if isinstance(text, _Anomaly) else label if isinstance(label, _Anomaly) else None
        if bad is not None:
            _handle(bad, resolved, report)
            continue
        found.append((text, label, where))
    if not found:
        _raise_empty(paths, report)
    if regression:
        return [ClassificationRecord(t, float(y), str(w)) for t, y, w in found], [], report

    names_given = [(label, where) for _, label, where in found if isinstance(label, str)]
    if names_given and len(names_given) < len(found):
        ids_where = next(where for _, label, where in found if isinstance(label, int))
        name, name_where = names_given[0]
        raise DataError(
            f"labels mix class ids and class names: {ids_where} has an id, {name_where} the name {name!r}",
            path=name_where.path,
            field=fields.label,
            hint="use one kind of label throughout",
        )
    if names_given:
        names = sorted({str(label) for _, label, _ in found})
        ids = {name: i for i, name in enumerate(names)}
        return [ClassificationRecord(t, ids[str(y)], str(w)) for t, y, w in found], names, report
    examples = [ClassificationRecord(t, int(y), str(w)) for t, y, w in found]
    return examples, [str(i) for i in range(max(int(e.label) for e in examples) + 1)], report


def resolve_policy(policy: dict[str, str] | None) -> dict[str, str]:
    """The action (error or skip) for each anomaly kind; `recipe.data.anomalies` can be passed whole."""
    return resolve_anomaly_policy(policy, dict.fromkeys(ANOMALY_KINDS, "error"), _LATER_POLICY_KEYS)


def resolve_anomaly_policy(
    policy: dict[str, str] | None, defaults: dict[str, str], ignored: tuple[str, ...]
) -> dict[str, str]:
    """`defaults` (kind -> action) overridden by `policy`; keys in `ignored` belong to another loader."""
    resolved = dict(defaults)
    for kind, value in (policy or {}).items():
        if kind in ignored:
            continue
        if kind not in defaults:
            raise DataError(
                f"unknown anomaly kind {kind!r} in data.anomalies",
                hint=f"valid kinds: {', '.join((*defaults, *ignored))}",
            )
        if value not in ("error", "skip"):
            raise DataError(f"data.anomalies.{kind} is {value!r}", hint="use error or skip")
        resolved[kind] = value
    return resolved


def detect_format(record: dict[str, Any], fields: FieldsBlock, where: _Where | None = None) -> str:
    """The conversation format a record's keys spell: messages, prompt_completion or alpaca.

    Raises a DataError listing the keys found (at `where`, the record's location) when none fits.
    """
    keys = set(record)
    if fields.messages in keys:
        return "messages"
    if {fields.prompt, fields.completion} <= keys:
        return "prompt_completion"
    if {fields.instruction, fields.output} <= keys:
        return "alpaca"
    present = ", ".join(repr(str(k)) for k in record) or "none"
    raise DataError(
        f"cannot tell the record format from the keys {present}: expected {fields.messages!r}, "
        f"or {fields.prompt!r} and {fields.completion!r}, or {fields.instruction!r} and {fields.output!r}",
        path=where.path if where else None,
        line=where.line if where else None,
        hint="set data.format, or map your field names under data.fields (e.g. data.fields.prompt: question)",
    )


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
        if path.is_dir() and _is_saved_dataset(path):
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


def world_qa_records(world: World, split: str) -> list[ChatRecord]:
    """The world's questions of `split` as one-turn conversations, answered by the fact's object."""
    return [
        ChatRecord(
            [{"role": "user", "content": pair.question}, {"role": "assistant", "content": pair.answer}],
            f"world seed {world.seed}, {split} split, fact {pair.fact_id}",
        )
        for pair in qa_pairs(world, split)
    ]


def split_records(
    records: list, validation_fraction: float, seed: int, fold: tuple[int, int] | None = None
) -> tuple[list, list]:
    """Split by record into (train, validation), the same way for the same seed.

    With `fold` = (k, i), the validation side is fold i of a k-fold split instead (cross-validation).

    Whole conversations go to one side, so no answer is trained on and validated on. The draw is the
    one `split_documents` uses (PCG64's raw stream, stable across numpy versions); each side keeps
    the file order.
    """
    import numpy as np

    if fold is not None:
        from peaufine.data.folds import fold_split

        return fold_split(records, range(len(records)), fold, seed)
    if not 0.0 <= validation_fraction < 1.0:
        raise DataError(
            f"data.validation_fraction is {validation_fraction!r}",
            hint="use a number from 0 (no validation) up to, not including, 1",
        )
    n = len(records)
    if validation_fraction == 0.0:
        return list(records), []
    if n < 2:
        raise DataError(
            f"cannot hold out validation records: there {'is' if n == 1 else 'are'} {n}",
            hint="add records, or set data.validation_fraction: 0",
        )
    n_validation = min(max(1, round(n * validation_fraction)), n - 1)
    order = np.argsort(np.random.PCG64(seed).random_raw(n), kind="stable")
    held_out = set(order[:n_validation].tolist())
    train = [r for i, r in enumerate(records) if i not in held_out]
    validation = [r for i, r in enumerate(records) if i in held_out]
    return train, validation


def _default_fields(fields: FieldsBlock | None) -> FieldsBlock:
    if fields is not None:
        return fields
    from peaufine.recipe import FieldsBlock

    return FieldsBlock()


def _handle(
    anomaly: _Anomaly,
    policy: dict[str, str],
    report: AnomalyReport,
    hints: Mapping[str, str] | None = None,
) -> None:
    """Raise the anomaly as a DataError with its kind's hint (`hints`, default the chat kinds'), or
    count it in `report` when the policy for its kind allows skipping."""
    if policy[anomaly.kind] == "error":
        raise DataError(
            anomaly.message,
            path=anomaly.path,
            line=anomaly.line,
            field=anomaly.field,
            hint=(hints or _HINTS)[anomaly.kind],
        )
    report._add(anomaly)


def _raise_empty(paths: list[Path], report: AnomalyReport) -> None:
    skipped = ", ".join(f"{k}={n}" for k, n in report.counts.items() if n)
    names = ", ".join(str(p) for p in paths[:3]) + (" ..." if len(paths) > 3 else "")
    raise DataError(
        f"no records in {names}" + (f" after skipping {skipped}" if skipped else ""),
        hint="check data.format, data.fields and data.anomalies",
    )


# ---------------------------------------------------------------------------------------------
# Normalising one record


def _to_messages(
    raw: dict[str, Any], format: str, fields: FieldsBlock, where: _Where
) -> list[dict[str, str]] | _Anomaly:
    if format == "messages":
        messages = _chat_turns(raw, fields.messages, where)
    elif format == "prompt_completion":
        messages = _single_turn(raw, fields.prompt, fields.completion, where)
    else:
        messages = _alpaca_turns(raw, fields, where)
    if isinstance(messages, _Anomaly):
        return messages
    if fields.system and messages[0]["role"] != "system":
        messages.insert(0, {"role": "system", "content": fields.system})
    return messages


def _missing(raw: dict[str, Any], name: str, where: _Where) -> _Anomaly:
    present = ", ".join(repr(str(k)) for k in raw) or "none"
    return where.anomaly("missing_field", f"record has no field {name!r} (fields present: {present})", name)


def _string_field(raw: dict[str, Any], name: str, where: _Where) -> str | _Anomaly:
    if name not in raw:
        return _missing(raw, name, where)
    value = raw[name]
    if not isinstance(value, str):
        kind = "null" if value is None else type(value).__name__
        return where.anomaly("missing_field", f"value is {kind}, not a string", name)
    return value


def _answer(raw: dict[str, Any], name: str, where: _Where) -> str | _Anomaly:
    answer = _string_field(raw, name, where)
    if isinstance(answer, str) and not answer.strip():
        return where.anomaly("empty_assistant", "the answer is empty", name)
    return answer


def _single_turn(raw: dict[str, Any], prompt_field: str, answer_field: str, where: _Where) -> list | _Anomaly:
    prompt = _string_field(raw, prompt_field, where)
    if isinstance(prompt, _Anomaly):
        return prompt
    answer = _answer(raw, answer_field, where)
    if isinstance(answer, _Anomaly):
        return answer
    return [{"role": "user", "content": prompt}, {"role": "assistant", "content": answer}]


def _alpaca_turns(raw: dict[str, Any], fields: FieldsBlock, where: _Where) -> list | _Anomaly:
    instruction = _string_field(raw, fields.instruction, where)
    if isinstance(instruction, _Anomaly):
        return instruction
    # The input is optional in Alpaca data: absent, null and "" all mean the instruction stands alone.
    extra = raw.get(fields.input)
    if extra is None:
        extra = ""
    if not isinstance(extra, str):
        return where.anomaly("missing_field", f"value is {type(extra).__name__}, not a string", fields.input)
    answer = _answer(raw, fields.output, where)
    if isinstance(answer, _Anomaly):
        return answer
    prompt = f"{instruction}\n\n{extra}" if extra.strip() else instruction
    return [{"role": "user", "content": prompt}, {"role": "assistant", "content": answer}]


def _chat_turns(raw: dict[str, Any], name: str, where: _Where) -> list | _Anomaly:
    if raw.get(name) is None:
        return _missing(raw, name, where)
    turns = raw[name]
    if isinstance(turns, str):
        # CSV and TSV cells can only hold the list as JSON text.
        try:
            turns = json.loads(turns)
        except json.JSONDecodeError as exc:
            return where.anomaly("bad_json", f"the messages are not valid JSON: {exc.msg}", name)
    if not isinstance(turns, list) or not turns:
        got = "an empty list" if turns == [] else _json_type(turns)
        message = f"expected a list of {{role, content}} objects, got {got}"
        return where.anomaly("missing_field", message, name)
    messages: list[dict[str, str]] = []
    for number, turn in enumerate(turns, start=1):
        if not isinstance(turn, dict) or "role" not in turn:
            return where.anomaly("missing_field", f"turn {number} is not a {{role, content}} object", name)
        role, content = turn["role"], turn.get("content")
        if role not in ROLES:
            message = f"turn {number} has the unknown role {role!r} (known roles: {', '.join(ROLES)})"
            return where.anomaly("unknown_role", message, name)
        if role == "assistant" and (content is None or (isinstance(content, str) and not content.strip())):
            return where.anomaly("empty_assistant", f"turn {number}, an assistant turn, is empty", name)
        if not isinstance(content, str):
            kind = "null" if content is None else type(content).__name__
            return where.anomaly("missing_field", f"turn {number}: content is {kind}, not a string", name)
        messages.append({"role": role, "content": content})
    if not any(m["role"] == "assistant" for m in messages):
        return where.anomaly("empty_assistant", "the conversation has no assistant turn", name)
    return messages


def _label_field(
    raw: dict[str, Any], name: str, where: _Where, regression: bool
) -> int | float | str | _Anomaly:
    value = raw.get(name)
    if value is None:
        return where.anomaly("missing_field", "the record has no label", name)
    if regression:
        # Numbers, or numbers spelt as text (CSV); NaN or infinity would poison a squared error.
        number = None if isinstance(value, bool) else _as_number(value)
        if number is None or not math.isfinite(number):
            return where.anomaly("missing_field", f"the label {value!r} is not a finite number", name)
        return number
    if isinstance(value, str) and _INT_LABEL.fullmatch(value.strip()):
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, (int, str)):
        return where.anomaly(
            "missing_field", f"the label is {type(value).__name__}: use a class id or a class name", name
        )
    if isinstance(value, int) and value < 0:
        return where.anomaly("missing_field", f"the class id {value} is negative", name)
    if isinstance(value, str) and not value.strip():
        return where.anomaly("missing_field", "the label is empty", name)
    return value


def _as_number(value: object) -> float | None:
    if isinstance(value, (int, float)):
        return float(value)
    if isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            return None
    return None


# ---------------------------------------------------------------------------------------------
# Readers: every file yields (where, record) pairs or located anomalies


def _records(paths: list[Path]) -> Iterator[_Item]:
    for path in paths:
        try:
            if path.is_dir():
                yield from _saved_dataset_records(path)
                continue
            suffix = path.suffix.lower()
            if suffix == ".jsonl":
                yield from _json_lines_records(path)
            elif suffix == ".json":
                yield from _json_records(path)
            elif suffix in (".csv", ".tsv"):
                yield from _csv_records(path, "\t" if suffix == ".tsv" else ",")
            else:
                yield from _parquet_records(path)
        except OSError as exc:
            raise DataError(f"cannot read the file: {exc.strerror or exc}", path=path) from exc


def _is_saved_dataset(path: Path) -> bool:
    return (path / "state.json").is_file() or (path / "dataset_dict.json").is_file()


def _saved_dataset_records(path: Path) -> Iterator[_Item]:
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
        yield _Where(path, record=number), row


def _json_lines_records(path: Path) -> Iterator[_Item]:
    for number, offset, raw in _byte_lines(path):
        decoded = _decode_line(raw, number, offset, path)
        if isinstance(decoded, _Anomaly):
            yield decoded
            continue
        if not decoded.strip():
            continue
        where = _Where(path, line=number)
        try:
            record = json.loads(decoded)
        except (json.JSONDecodeError, RecursionError) as exc:
            column = f" at column {exc.colno}" if isinstance(exc, json.JSONDecodeError) else ""
            reason = exc.msg if isinstance(exc, json.JSONDecodeError) else "nested too deeply"
            yield where.anomaly("bad_json", f"not valid JSON: {reason}{column} (expected one object a line)")
            continue
        if not isinstance(record, dict):
            yield where.anomaly("bad_json", f"expected a JSON object, got {_json_type(record)}")
            continue
        yield where, record


def _json_records(path: Path) -> Iterator[_Item]:
    """A .json file: one array of objects (each located by line and position), or JSON lines."""
    if _first_significant_byte(path) != b"[":
        yield from _json_lines_records(path)
        return
    raw = path.read_bytes()
    body = raw[len(_UTF8_BOM) :] if raw.startswith(_UTF8_BOM) else raw
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = body.count(b"\n", 0, exc.start) + 1
        # One bad byte makes the whole array unreadable: the file is the one record it spoils.
        yield _not_utf8(path, line, len(raw) - len(body) + exc.start, body[exc.start : exc.end])
        return

    def syntax_error(message: str, pos: int) -> DataError:
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
        where = _Where(path, line=line, record=number)
        if isinstance(record, dict):
            yield where, record
        else:
            yield where.anomaly("bad_json", f"array element is {_json_type(record)}, expected an object")
        pos = _JSON_WHITESPACE.match(text, end).end()
        if text.startswith(",", pos):
            pos = _JSON_WHITESPACE.match(text, pos + 1).end()
        elif not text.startswith("]", pos):
            raise syntax_error("expected ',' or ']' after an array element", pos)
    if _JSON_WHITESPACE.match(text, pos + 1).end() != len(text):
        raise syntax_error("extra data after the array", pos + 1)


def _csv_records(path: Path, delimiter: str) -> Iterator[_Item]:
    """CSV or TSV with a header row; a record's line is the physical line where it starts."""
    kind = "TSV" if delimiter == "\t" else "CSV"
    undecodable: list[_Anomaly] = []

    def decoded_lines() -> Iterator[str]:
        # csv pulls lines itself: bad bytes are noted here and charged to the row that spans them.
        for number, offset, raw in _byte_lines(path):
            decoded = _decode_line(raw, number, offset, path)
            if isinstance(decoded, _Anomaly):
                undecodable.append(decoded)
                decoded = raw.decode("utf-8", errors="replace")
            yield decoded

    with _csv_field_limit(2**31 - 1):
        reader = csv.reader(decoded_lines(), delimiter=delimiter, strict=True)

        def next_row(start: int) -> list[str] | None:
            try:
                return next(reader)
            except StopIteration:
                return None
            except csv.Error as exc:
                raise DataError(
                    f"not valid {kind}: {exc}", path=path, line=start, hint="check the quoting of this record"
                ) from None

        header = next_row(1)
        if undecodable:
            bad = undecodable[0]
            raise DataError(bad.message, path=path, line=bad.line, hint=_HINTS["not_utf8"])
        if not header:
            raise DataError("no header row", path=path, line=1, hint="the first line must name the columns")
        while True:
            start = reader.line_num + 1
            row = next_row(start)
            if row is None:
                return
            where = _Where(path, line=start)
            bad = [a for a in undecodable if a.line is not None and a.line <= reader.line_num]
            if bad:
                del undecodable[: len(bad)]
                yield bad[0]
            elif not row:  # a blank line, not a record
                continue
            elif len(row) > len(header):
                message = f"the row has {len(row)} fields, the header {len(header)}"
                yield where.anomaly("missing_field", message)
            else:
                # A short row lacks its last columns: they surface as missing fields, by name.
                yield where, dict(zip(header, row[: len(header)], strict=False))


def _parquet_records(path: Path) -> Iterator[_Item]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        parquet = pq.ParquetFile(path)
    except (pa.ArrowException, ValueError) as exc:
        raise DataError(f"not a readable Parquet file: {exc}", path=path) from None
    number = 0
    try:
        for batch in parquet.iter_batches(batch_size=1024):
            for row in batch.to_pylist():
                number += 1
                yield _Where(path, record=number), row
    except (pa.ArrowException, ValueError) as exc:
        raise DataError(f"cannot read record {number + 1}: {exc}", path=path) from None

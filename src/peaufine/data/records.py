"""Fine-tuning records (prompt-completion, chat messages, Alpaca, classification) normalised to one
schema from whatever data/read.py reads, and the by-record validation split."""

from __future__ import annotations

import json
import math
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from peaufine.data.anomalies import Anomaly, AnomalyPolicy, AnomalyReport, Where, anomaly_policy
from peaufine.data.folds import check_validation_fraction, fold_split, held_out
from peaufine.data.read import json_type, read_records, record_paths
from peaufine.data.world import World, qa_pairs
from peaufine.errors import DataError
from peaufine.recipe import FieldsBlock

FORMATS = ("auto", "prompt_completion", "messages", "alpaca", "classification")
ROLES = ("system", "user", "assistant")
ANOMALY_KINDS = ("not_utf8", "bad_json", "missing_field", "empty_text", "unknown_role", "empty_assistant")
# data.anomalies keys that belong to another step (tokenization) or to preference data (read by
# data/preferences.py), accepted here and left alone.
_LATER_POLICY_KEYS = ("too_long", "same_response", "short_ranking", "prompt_mismatch")

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
    fields = default_fields(fields)
    resolved = resolve_policy(policy)
    if format not in FORMATS:
        raise DataError(f"unknown data.format {format!r}", hint=f"use one of: {', '.join(FORMATS)}")
    if format == "classification":
        raise DataError(
            "data.format classification holds labelled texts, not conversations",
            hint="use the classify stage, or a conversation format for sft",
        )
    report = resolved.report()
    chosen = None if format == "auto" else format
    paths = record_paths(source)
    records: list[ChatRecord] = []
    for item in read_records(paths):
        if isinstance(item, Anomaly):
            resolved.handle(item, report)
            continue
        where, raw = item
        if chosen is None:
            chosen = detect_format(raw, fields, where)
        messages = _to_messages(raw, chosen, fields, where)
        if isinstance(messages, Anomaly):
            resolved.handle(messages, report)
            continue
        records.append(ChatRecord(messages, str(where)))
    if not records:
        raise_no_records(paths, report)
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
    fields = default_fields(fields)
    resolved = resolve_policy(policy)
    report = resolved.report()
    paths = record_paths(source)
    found: list[tuple[str, int | float | str, Where]] = []
    for item in read_records(paths):
        if isinstance(item, Anomaly):
            resolved.handle(item, report)
            continue
        where, raw = item
        text = string_field(raw, text_field, where)
        if isinstance(text, str) and not text.strip():
            text = where.anomaly("empty_text", "text is empty", field=text_field)
        label = _label_field(raw, fields.label, where, regression)
        bad = text if isinstance(text, Anomaly) else label if isinstance(label, Anomaly) else None
        if bad is not None:
            resolved.handle(bad, report)
            continue
        found.append((text, label, where))
    if not found:
        raise_no_records(paths, report)
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


def resolve_policy(policy: Mapping[str, str] | None) -> AnomalyPolicy:
    """The action (error or skip) for each anomaly kind; `recipe.data.anomalies` can be passed whole."""
    return anomaly_policy(policy, dict.fromkeys(ANOMALY_KINDS, "error"), ignored=_LATER_POLICY_KEYS)


def detect_format(record: dict[str, Any], fields: FieldsBlock, where: Where | None = None) -> str:
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

    if fold is not None:
        return fold_split(records, range(len(records)), fold, seed)
    check_validation_fraction(validation_fraction)
    n = len(records)
    if validation_fraction == 0.0:
        return list(records), []
    if n < 2:
        raise DataError(
            f"cannot hold out validation records: there {'is' if n == 1 else 'are'} {n}",
            hint="add records, or set data.validation_fraction: 0",
        )
    validation_positions = set(held_out(n, validation_fraction, seed))
    train = [r for i, r in enumerate(records) if i not in validation_positions]
    validation = [r for i, r in enumerate(records) if i in validation_positions]
    return train, validation


def default_fields(fields: FieldsBlock | None) -> FieldsBlock:
    if fields is not None:
        return fields

    return FieldsBlock()


def raise_no_records(paths: list[Path], report: AnomalyReport) -> None:
    skipped = ", ".join(f"{k}={n}" for k, n in report.counts.items() if n)
    names = ", ".join(str(p) for p in paths[:3]) + (" ..." if len(paths) > 3 else "")
    raise DataError(
        f"no records in {names}" + (f" after skipping {skipped}" if skipped else ""),
        hint="check data.format, data.fields and data.anomalies",
    )


# ---------------------------------------------------------------------------------------------
# Normalising one record


def _to_messages(
    raw: dict[str, Any], format: str, fields: FieldsBlock, where: Where
) -> list[dict[str, str]] | Anomaly:
    if format == "messages":
        messages = _chat_turns(raw, fields.messages, where)
    elif format == "prompt_completion":
        messages = _single_turn(raw, fields.prompt, fields.completion, where)
    else:
        messages = _alpaca_turns(raw, fields, where)
    if isinstance(messages, Anomaly):
        return messages
    if fields.system and messages[0]["role"] != "system":
        messages.insert(0, {"role": "system", "content": fields.system})
    return messages


def missing_field(raw: dict[str, Any], name: str, where: Where) -> Anomaly:
    present = ", ".join(repr(str(k)) for k in raw) or "none"
    return where.anomaly("missing_field", f"record has no field {name!r} (fields present: {present})", name)


def string_field(raw: dict[str, Any], name: str, where: Where) -> str | Anomaly:
    if name not in raw:
        return missing_field(raw, name, where)
    value = raw[name]
    if not isinstance(value, str):
        kind = "null" if value is None else type(value).__name__
        return where.anomaly("missing_field", f"value is {kind}, not a string", name)
    return value


def _answer(raw: dict[str, Any], name: str, where: Where) -> str | Anomaly:
    answer = string_field(raw, name, where)
    if isinstance(answer, str) and not answer.strip():
        return where.anomaly("empty_assistant", "the answer is empty", name)
    return answer


def _single_turn(raw: dict[str, Any], prompt_field: str, answer_field: str, where: Where) -> list | Anomaly:
    prompt = string_field(raw, prompt_field, where)
    if isinstance(prompt, Anomaly):
        return prompt
    answer = _answer(raw, answer_field, where)
    if isinstance(answer, Anomaly):
        return answer
    return [{"role": "user", "content": prompt}, {"role": "assistant", "content": answer}]


def _alpaca_turns(raw: dict[str, Any], fields: FieldsBlock, where: Where) -> list | Anomaly:
    instruction = string_field(raw, fields.instruction, where)
    if isinstance(instruction, Anomaly):
        return instruction
    # The input is optional in Alpaca data: absent, null and "" all mean the instruction stands alone.
    extra = raw.get(fields.input)
    if extra is None:
        extra = ""
    if not isinstance(extra, str):
        return where.anomaly("missing_field", f"value is {type(extra).__name__}, not a string", fields.input)
    answer = _answer(raw, fields.output, where)
    if isinstance(answer, Anomaly):
        return answer
    prompt = f"{instruction}\n\n{extra}" if extra.strip() else instruction
    return [{"role": "user", "content": prompt}, {"role": "assistant", "content": answer}]


def _chat_turns(raw: dict[str, Any], name: str, where: Where) -> list | Anomaly:
    if raw.get(name) is None:
        return missing_field(raw, name, where)
    turns = raw[name]
    if isinstance(turns, str):
        # CSV and TSV cells can only hold the list as JSON text.
        try:
            turns = json.loads(turns)
        except json.JSONDecodeError as exc:
            return where.anomaly("bad_json", f"the messages are not valid JSON: {exc.msg}", name)
    if not isinstance(turns, list) or not turns:
        got = "an empty list" if turns == [] else json_type(turns)
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
    raw: dict[str, Any], name: str, where: Where, regression: bool
) -> int | float | str | Anomaly:
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


HELDOUT = "heldout"  # the world's questions about facts kept out of fine-tuning


def load_conversations(path: Path) -> list[list[dict[str, str]]]:
    return [json.loads(line)["messages"] for line in path.read_text(encoding="utf-8").splitlines() if line]

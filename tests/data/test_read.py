"""A bad file is bad the same way for every loader: the corpus, chat and classification records and
preference pairs each stop on it by default, and each skip and count it when the policy allows."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from peaufine.data.corpus import load_documents
from peaufine.data.preferences import load_preference_pairs
from peaufine.data.records import load_chat_records, load_classification_records
from peaufine.errors import DataError

# One good record per loader, as a JSON object; a CSV header and row of the same record.
GOOD: dict[str, tuple[str, str, str]] = {
    "corpus": ('{"text": "a document"}', "text", "a document"),
    "chat": ('{"prompt": "Q", "completion": "A"}', "prompt,completion", "Q,A"),
    "classification": ('{"text": "good", "label": 1}', "text,label", "good,1"),
    "pairs": ('{"prompt": "Q", "chosen": "A", "rejected": "B"}', "prompt,chosen,rejected", "Q,A,B"),
}


def load(
    loader: str, source: Path | list[Path], tmp_path: Path, policy: dict[str, str] | None
) -> tuple[int, Any]:
    """(records read, the loader's AnomalyReport)."""
    if loader == "corpus":
        dataset, report = load_documents(source, policy=policy, cache_dir=tmp_path / "cache")
        return len(dataset), report
    if loader == "chat":
        records, report = load_chat_records(source, policy=policy)
        return len(records), report
    if loader == "classification":
        records, _, report = load_classification_records(source, policy=policy)
        return len(records), report
    pairs, report = load_preference_pairs(source, policy=policy)
    return len(pairs), report


LOADERS = list(GOOD)
Writer = Callable[[Path, str], Path]


def json_array_with_a_bad_byte(folder: Path, loader: str) -> Path:
    record = GOOD[loader][0]
    path = folder / "bad.json"
    path.write_bytes(
        b"[\n  " + record.encode() + b",\n  " + record.encode().replace(b'"', b'"\xff', 1) + b"\n]\n"
    )
    return path


def csv_with_a_long_row(folder: Path, loader: str) -> Path:
    _, header, row = GOOD[loader]
    path = folder / "long.csv"
    path.write_text(f"{header}\n{row}\n{row},one field too many\n{row}\n", encoding="utf-8")
    return path


@pytest.mark.parametrize("loader", LOADERS)
def test_an_undecodable_json_array_is_a_not_utf8_anomaly_for_every_loader(
    tmp_path: Path, loader: str
) -> None:
    """The byte spoils the whole array (it cannot be parsed past it): by default an error naming the
    file and line; with not_utf8: skip the file is dropped, counted once, and the other files read."""
    bad = json_array_with_a_bad_byte(tmp_path, loader)
    with pytest.raises(DataError) as info:
        load(loader, bad, tmp_path, None)
    assert "bad.json, line 3" in str(info.value) and "UTF-8" in str(info.value)
    good = tmp_path / "good.jsonl"
    good.write_text(GOOD[loader][0] + "\n", encoding="utf-8")
    read, report = load(loader, [bad, good], tmp_path, {"not_utf8": "skip"})
    assert read == 1
    assert report.counts["not_utf8"] == 1 and report.total() == 1
    assert "bad.json, line 3" in report.examples["not_utf8"]


@pytest.mark.parametrize("loader", LOADERS)
def test_a_csv_row_longer_than_its_header_is_a_missing_field_anomaly_for_every_loader(
    tmp_path: Path, loader: str
) -> None:
    """A row with more fields than the header has lost its alignment with the columns: no loader may
    read it as if the extra field were not there."""
    path = csv_with_a_long_row(tmp_path, loader)
    with pytest.raises(DataError) as info:
        load(loader, path, tmp_path, None)
    assert "long.csv, line 3" in str(info.value) and "fields, the header" in str(info.value)
    read, report = load(loader, path, tmp_path, {"missing_field": "skip"})
    assert read == 2
    assert report.counts["missing_field"] == 1 and report.total() == 1

"""Every reader and loader of data/, fed random corruptions of valid files (truncation, random bytes,
invalid UTF-8, NUL, huge lines, wrong types, missing fields): it reads, or raises a peaufine error;
never anything else, and it writes nothing beside the input."""

from __future__ import annotations

import csv
import io
import json
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from peaufine.data.corpus import ANOMALY_KINDS, load_documents
from peaufine.data.preferences import load_preference_pairs
from peaufine.data.prompts import load_prompt_records, load_scoring_records
from peaufine.data.read import read_records, read_text_documents
from peaufine.data.records import load_chat_records, load_classification_records
from peaufine.errors import PeaufineError
from peaufine.recipe import AnomalyBlock

FUZZ = settings(
    max_examples=30,
    deadline=None,
    database=None,  # no .hypothesis folder: the test writes nothing either
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)

# Record shapes of each loader, and the loader as a stage calls it (policy "error" or all "skip").
TEXT = st.text(alphabet=st.characters(codec="utf-8", exclude_characters="\x00"), min_size=1, max_size=12)
WORDS = st.text(alphabet="abc de\u00e9\u4e2d", min_size=1, max_size=10).filter(str.strip)


def skip_all(kinds: Any = None) -> dict[str, str]:
    """The recipe's data.anomalies with every kind skipped (too_long aside: it is not a reader's)."""
    return {k: "skip" for k in AnomalyBlock.model_fields if k != "too_long" and (kinds is None or k in kinds)}


def corpus(path: Path, policy: dict[str, str] | None, out: Path) -> object:
    return load_documents(
        path, document_unit="line", policy=policy and skip_all(ANOMALY_KINDS), cache_dir=out
    )


def corpus_paragraphs(path: Path, policy: dict[str, str] | None, out: Path) -> object:
    return load_documents(
        path, document_unit="paragraph", policy=policy and skip_all(ANOMALY_KINDS), cache_dir=out
    )


def corpus_file(path: Path, policy: dict[str, str] | None, out: Path) -> object:
    return load_documents(
        path, document_unit="file", policy=policy and skip_all(ANOMALY_KINDS), cache_dir=out
    )


LOADERS: dict[str, tuple[Callable[[Path, dict[str, str] | None, Path], object], Any]] = {
    "corpus lines": (corpus, st.fixed_dictionaries({"text": WORDS})),
    "corpus paragraphs": (corpus_paragraphs, st.fixed_dictionaries({"text": WORDS})),
    "corpus files": (corpus_file, st.fixed_dictionaries({"text": WORDS})),
    "chat records": (
        lambda path, policy, out: load_chat_records(path, policy=policy),
        st.one_of(
            st.fixed_dictionaries({"prompt": WORDS, "completion": WORDS}),
            st.fixed_dictionaries(
                {
                    "messages": st.just(
                        [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}]
                    )
                }
            ),
        ),
    ),
    "classification records": (
        lambda path, policy, out: load_classification_records(path, policy=policy),
        st.fixed_dictionaries({"text": WORDS, "label": st.sampled_from(["pos", "neg", 0, 1])}),
    ),
    "preference pairs": (
        lambda path, policy, out: load_preference_pairs(path, policy=policy),
        st.one_of(
            st.fixed_dictionaries({"prompt": WORDS, "chosen": WORDS, "rejected": WORDS}),
            st.fixed_dictionaries({"prompt": WORDS, "responses": st.lists(WORDS, min_size=2, max_size=3)}),
        ),
    ),
    "prompts": (
        lambda path, policy, out: load_prompt_records(path, "prompt"),
        st.fixed_dictionaries({"prompt": WORDS, "answer": WORDS}),
    ),
    "scoring records": (
        lambda path, policy, out: load_scoring_records(path, "prompt", "response"),
        st.fixed_dictionaries({"prompt": WORDS, "response": WORDS}),
    ),
    "raw records": (lambda path, policy, out: list(read_records([path])), st.fixed_dictionaries({"a": TEXT})),
}


def encode(records: list[dict[str, Any]], suffix: str) -> bytes:
    """`records` as the bytes of a file of this kind."""
    if suffix == ".jsonl":
        return "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records).encode()
    if suffix == ".json":
        return json.dumps(records, ensure_ascii=False, indent=1).encode()
    if suffix in (".csv", ".tsv"):
        buffer = io.StringIO()
        names = list(dict.fromkeys(k for r in records for k in r))
        writer = csv.DictWriter(buffer, names, delimiter="\t" if suffix == ".tsv" else ",")
        writer.writeheader()
        writer.writerows(
            {k: v if isinstance(v, str) else json.dumps(v) for k, v in r.items()} for r in records
        )
        return buffer.getvalue().encode()
    if suffix == ".txt":
        return "\n\n".join(str(r.get("text", r)) for r in records).encode()
    import pyarrow as pa
    import pyarrow.parquet as pq

    def parquet(rows: list[dict[str, Any]]) -> bytes:
        sink = io.BytesIO()
        pq.write_table(pa.Table.from_pylist(rows), sink)
        return sink.getvalue()

    try:
        return parquet(records)
    except (pa.ArrowException, ValueError, TypeError, OverflowError):  # a column Parquet cannot type
        return parquet([{k: json.dumps(v) for k, v in r.items()} for r in records])


WRONG_VALUES = st.sampled_from([None, 1, 2.5, True, [], {}, ["a", 1], {"role": 3}, "", " ", "\x00", 10**30])


@st.composite
def record_damage(draw: st.DrawFn, records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Records with some fields dropped or given values of another type."""
    damaged = [dict(r) for r in records]
    for _ in range(draw(st.integers(0, 3))):
        record = draw(st.sampled_from(damaged))
        if not record:
            continue
        key = draw(st.sampled_from(sorted(record)))
        if draw(st.booleans()):
            del record[key]
        else:
            record[key] = draw(WRONG_VALUES)
    return damaged


@st.composite
def byte_damage(draw: st.DrawFn, data: bytes) -> bytes:
    """The file's bytes truncated, overwritten, or with invalid UTF-8, NUL or a huge line inserted."""
    for _ in range(draw(st.integers(0, 2))):
        at = draw(st.integers(0, len(data)))
        kind = draw(st.sampled_from(["truncate", "random", "invalid utf-8", "nul", "huge line", "quote"]))
        if kind == "truncate":
            data = data[:at]
        elif kind == "random":
            data = data[:at] + draw(st.binary(min_size=1, max_size=8)) + data[at + 1 :]
        elif kind == "invalid utf-8":
            data = (
                data[:at]
                + draw(st.sampled_from([b"\xff", b"\xc3", b"\xe4\xb8", b"\xed\xa0\x80"]))
                + data[at:]
            )
        elif kind == "nul":
            data = data[:at] + b"\x00" + data[at:]
        elif kind == "huge line":
            data = data[:at] + b"\n" + b'{"text": "' + b"x" * 300_000 + b'"}\n' + data[at:]
        else:
            data = data[:at] + draw(st.sampled_from([b'"', b"\n", b"[", b"]", b",", b"{"])) + data[at:]
    return data


def files_under(folder: Path) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*"))


SUFFIXES = [".jsonl", ".json", ".csv", ".tsv", ".parquet"]
CASES = [(name, suffix) for name in LOADERS for suffix in SUFFIXES if not name.startswith("corpus")]
CASES += [
    (name, suffix) for name in LOADERS if name.startswith("corpus") for suffix in (".txt", ".jsonl", ".csv")
]


@pytest.mark.parametrize(("loader", "suffix"), CASES)
@FUZZ
@given(data=st.data())
def test_a_damaged_file_is_read_or_refused_with_a_peaufine_error(loader, suffix, data):
    read, record = LOADERS[loader]
    records = data.draw(st.lists(record, min_size=1, max_size=6), label="records")
    records = data.draw(record_damage(records), label="damaged records")
    content = encode(records, suffix)
    if suffix != ".parquet" or data.draw(st.booleans(), label="damage parquet bytes"):
        content = data.draw(byte_damage(content), label="damaged bytes")
    policy = data.draw(st.sampled_from([None, "skip"]), label="policy")
    with tempfile.TemporaryDirectory() as folder:
        root = Path(folder)
        (root / "input").mkdir()
        path = root / "input" / f"data{suffix}"
        path.write_bytes(content)
        try:
            read(path, policy and skip_all(), root / "cache")
        except PeaufineError:
            # nothing written beside the input; a corpus's cache holds no dataset of it
            assert files_under(root / "input") == [path.name]
            assert not list((root / "cache").rglob("*.arrow")) if (root / "cache").exists() else True
        except Exception as exc:  # the property: no other exception gets out
            raise AssertionError(f"{loader} on {suffix}: {type(exc).__name__}: {exc}") from exc
        assert files_under(root / "input") == [path.name]


@pytest.mark.parametrize("unit", ["line", "paragraph", "file"])
@FUZZ
@given(data=st.data())
def test_the_text_reader_yields_text_or_anomalies_never_raises_anything_else(unit, data):
    content = data.draw(byte_damage(b"first line\n\nsecond paragraph\nof two lines\n"))
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "corpus.txt"
        path.write_bytes(content)
        try:
            items = list(read_text_documents(path, unit))
        except PeaufineError:
            return
        for item in items:  # a document is text that a tokenizer can take: never a NUL
            assert not isinstance(item, str) or "\x00" not in item

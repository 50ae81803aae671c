"""Tests for peaufine.data.records: every file format and record kind to the same conversations,
format detection, the bad-record policy with file and line, classification labels, the split.

Records are written into tmp_path here; one test reads the shared Alpaca subset when it is present.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest

from peaufine.data.records import (
    ANOMALY_KINDS,
    ChatRecord,
    load_chat_records,
    load_classification_records,
    split_records,
    world_qa_records,
)
from peaufine.errors import DataError
from peaufine.recipe import AnomalyBlock, FieldsBlock

ALPACA_5000 = Path(__file__).resolve().parents[3] / "shared" / "data" / "alpaca-5000" / "alpaca_5000.json"

CONVERSATIONS = [
    [
        {"role": "user", "content": "What is the capital of Veloria?"},
        {"role": "assistant", "content": "Tarsk"},
    ],
    [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Name a river,\nplease."},
        {"role": "assistant", "content": 'The "Ombe".'},
        {"role": "user", "content": "Another?"},
        {"role": "assistant", "content": "Lune, naïve ünïcode"},
    ],
]
PROMPTS = [("What is 7+5?", "12"), ('Quote "this", please', "this,\nthat")]
ALPACA = [
    {"instruction": "Add the numbers.", "input": "7 and 5", "output": "12"},
    {"instruction": "Name a colour.", "input": "", "output": "Blue"},
]
ALPACA_MESSAGES = [
    [{"role": "user", "content": "Add the numbers.\n\n7 and 5"}, {"role": "assistant", "content": "12"}],
    [{"role": "user", "content": "Name a colour."}, {"role": "assistant", "content": "Blue"}],
]


def rows_of(kind: str) -> list[dict]:
    if kind == "messages":
        return [{"messages": c, "id": i} for i, c in enumerate(CONVERSATIONS)]
    if kind == "prompt_completion":
        return [{"prompt": p, "completion": c} for p, c in PROMPTS]
    return [dict(r) for r in ALPACA]


def expected_messages(kind: str) -> list[list[dict[str, str]]]:
    if kind == "messages":
        return CONVERSATIONS
    if kind == "prompt_completion":
        return [[{"role": "user", "content": p}, {"role": "assistant", "content": c}] for p, c in PROMPTS]
    return ALPACA_MESSAGES


def write(rows: list[dict], path: Path) -> Path:
    """Write `rows` as the file kind that `path`'s suffix (or a folder name without one) names."""
    suffix = path.suffix
    if suffix == ".jsonl":
        path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    elif suffix == ".json":
        path.write_text(json.dumps(rows, indent=2, ensure_ascii=False), encoding="utf-8")
    elif suffix in (".csv", ".tsv"):
        columns = list(rows[0])
        with path.open("w", newline="", encoding="utf-8") as handle:
            writer = csv.writer(handle, delimiter="\t" if suffix == ".tsv" else ",")
            writer.writerow(columns)
            for r in rows:
                writer.writerow(
                    [
                        json.dumps(r[c], ensure_ascii=False) if isinstance(r[c], list) else r[c]
                        for c in columns
                    ]
                )
    elif suffix == ".parquet":
        import pyarrow as pa
        import pyarrow.parquet as pq

        pq.write_table(pa.Table.from_pylist(rows), path)
    else:
        import datasets

        datasets.Dataset.from_list(rows).save_to_disk(str(path))
    return path


def messages_of(records: list[ChatRecord]) -> list[list[dict[str, str]]]:
    return [r.messages for r in records]


def load_error(path: Path, **kwargs) -> DataError:
    with pytest.raises(Exception) as info:
        load_chat_records(path, **kwargs)
    assert type(info.value) is DataError, f"{type(info.value).__name__}: {info.value}"
    return info.value


# ---------------------------------------------------------------------------------------------
# Formats and file kinds


@pytest.mark.parametrize("kind", ["messages", "prompt_completion", "alpaca"])
@pytest.mark.parametrize("name", ["d.jsonl", "d.json", "d.csv", "d.tsv", "d.parquet", "saved"])
def test_every_file_kind_loads_to_the_same_conversations(tmp_path: Path, kind: str, name: str) -> None:
    path = write(rows_of(kind), tmp_path / name)
    for chosen in ("auto", kind):
        records, report = load_chat_records(path, format=chosen)
        assert messages_of(records) == expected_messages(kind)
        assert report.total() == 0


def test_sources_name_the_line_or_record(tmp_path: Path) -> None:
    jsonl = tmp_path / "a.jsonl"
    jsonl.write_text("\n" + "\n".join(json.dumps(r) for r in rows_of("alpaca")) + "\n")
    assert [r.source for r in load_chat_records(jsonl)[0]] == [f"{jsonl}, line 2", f"{jsonl}, line 3"]
    array = write(rows_of("alpaca"), tmp_path / "a.json")
    assert [r.source for r in load_chat_records(array)[0]] == [
        f"{array}, line 2, record 1",
        f"{array}, line 7, record 2",
    ]
    table = write(rows_of("prompt_completion"), tmp_path / "a.csv")  # the second record spans 2 lines
    assert [r.source for r in load_chat_records(table)[0]] == [f"{table}, line 2", f"{table}, line 3"]
    parquet = write(rows_of("alpaca"), tmp_path / "a.parquet")
    assert load_chat_records(parquet)[0][1].source == f"{parquet}, record 2"


def test_a_folder_is_read_in_sorted_order_and_text_files_are_left_out(tmp_path: Path) -> None:
    folder = tmp_path / "data"
    folder.mkdir()
    write(rows_of("alpaca")[1:], folder / "b.jsonl")
    write(rows_of("alpaca")[:1], folder / "a.csv")
    (folder / "README.md").write_text("Alpaca-style records.\n")
    records, _ = load_chat_records(folder)
    assert messages_of(records) == ALPACA_MESSAGES


def test_field_mapping_and_system_message(tmp_path: Path) -> None:
    path = write([{"question": "Q1", "answer": "A1"}], tmp_path / "d.jsonl")
    fields = FieldsBlock(prompt="question", completion="answer", system="Be brief.")
    records, _ = load_chat_records(path, fields=fields)
    assert records[0].messages == [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Q1"},
        {"role": "assistant", "content": "A1"},
    ]
    # A conversation with its own system message keeps it.
    chats = write(rows_of("messages"), tmp_path / "c.jsonl")
    records, _ = load_chat_records(chats, fields=FieldsBlock(system="Be verbose."))
    assert records[0].messages[0] == {"role": "system", "content": "Be verbose."}
    assert records[1].messages == CONVERSATIONS[1]


def test_alpaca_input_is_joined_only_when_present(tmp_path: Path) -> None:
    rows = [
        {"instruction": "Translate.", "input": "bonjour", "output": "hello"},
        {"instruction": "Greet.", "input": "  ", "output": "Hi"},
        {"instruction": "Count.", "output": "1 2 3"},
        {"instruction": "Wave.", "input": None, "output": "o/"},
    ]
    records, _ = load_chat_records(write(rows, tmp_path / "d.jsonl"), format="alpaca")
    assert [r.messages[0]["content"] for r in records] == [
        "Translate.\n\nbonjour",
        "Greet.",
        "Count.",
        "Wave.",
    ]
    assert [r.messages[1] for r in records] == [{"role": "assistant", "content": r["output"]} for r in rows]


def test_auto_detection_names_the_keys_it_found(tmp_path: Path) -> None:
    path = write([{"question": "Q", "reply": "A"}], tmp_path / "d.jsonl")
    error = load_error(path)
    message = str(error)
    assert (error.path, error.line) == (path, 1)
    assert "'question', 'reply'" in message
    assert "data.format" in message and "data.fields" in message


def test_classification_is_not_a_conversation_format(tmp_path: Path) -> None:
    path = write(rows_of("alpaca"), tmp_path / "d.jsonl")
    assert "classify" in str(load_error(path, format="classification"))


# ---------------------------------------------------------------------------------------------
# Bad records


def chats_file(tmp_path: Path, bad: dict, name: str = "chat.jsonl") -> Path:
    good = {"messages": CONVERSATIONS[0]}
    return write([good, bad, good], tmp_path / name)


def test_unknown_role_names_file_line_and_role_and_can_be_skipped(tmp_path: Path) -> None:
    bad = {"messages": [{"role": "human", "content": "Hi"}, {"role": "assistant", "content": "Hello"}]}
    path = chats_file(tmp_path, bad)
    error = load_error(path)
    assert (error.path, error.line, error.field) == (path, 2, "messages")
    assert "'human'" in str(error) and "data.anomalies.unknown_role: skip" in str(error)
    records, report = load_chat_records(path, policy={"unknown_role": "skip"})
    assert len(records) == 2 and report.counts["unknown_role"] == 1
    assert "line 2" in report.examples["unknown_role"]


@pytest.mark.parametrize(
    "bad",
    [
        {"messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": " "}]},
        {"messages": [{"role": "user", "content": "Hi"}]},
        {"messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": None}]},
    ],
    ids=["blank", "no-assistant-turn", "null"],
)
def test_empty_assistant_turns_are_an_anomaly(tmp_path: Path, bad: dict) -> None:
    path = chats_file(tmp_path, bad)
    error = load_error(path)
    assert error.line == 2 and "data.anomalies.empty_assistant: skip" in str(error)
    records, report = load_chat_records(path, policy={"empty_assistant": "skip"})
    assert len(records) == 2 and report.counts["empty_assistant"] == 1


def test_empty_completion_is_an_empty_assistant_turn(tmp_path: Path) -> None:
    path = write([{"prompt": "Q", "completion": ""}], tmp_path / "d.csv")
    error = load_error(path)
    assert (error.line, error.field) == (2, "completion")
    assert "empty_assistant" in str(error)


def test_missing_fields_bad_json_and_bad_bytes(tmp_path: Path) -> None:
    path = tmp_path / "d.jsonl"
    lines = [
        json.dumps({"prompt": "Q1", "completion": "A1"}).encode(),
        json.dumps({"prompt": "Q2"}).encode(),  # line 2: no completion
        b'{"prompt": "Q3", "completion": ',  # line 3: cut short
        '{"prompt": "caf\u00e9", "completion": "A4"}'.encode("latin-1"),  # line 4: not UTF-8
        json.dumps({"prompt": "Q5", "completion": 5}).encode(),  # line 5: not a string
        json.dumps({"prompt": "Q6", "completion": "A6"}).encode(),
    ]
    path.write_bytes(b"\n".join(lines) + b"\n")
    error = load_error(path)
    assert (error.line, error.field) == (2, "completion")
    assert "data.anomalies.missing_field: skip" in str(error)
    assert load_error(path, policy={"missing_field": "skip"}).line == 3
    assert "not valid JSON" in str(load_error(path, policy={"missing_field": "skip"}))
    error = load_error(path, policy={"missing_field": "skip", "bad_json": "skip"})
    assert error.line == 4 and "UTF-8" in str(error)
    everything = AnomalyBlock(missing_field="skip", bad_json="skip", not_utf8="skip").model_dump()
    records, report = load_chat_records(path, policy=everything)
    assert [r.messages[0]["content"] for r in records] == ["Q1", "Q6"]
    assert (report.counts["missing_field"], report.counts["bad_json"], report.counts["not_utf8"]) == (2, 1, 1)
    assert set(report.counts) == set(ANOMALY_KINDS)


def test_nothing_left_after_skipping_is_an_error(tmp_path: Path) -> None:
    path = write([{"prompt": "Q"}], tmp_path / "d.jsonl")
    error = load_error(path, format="prompt_completion", policy={"missing_field": "skip"})
    assert "no records" in str(error) and "missing_field=1" in str(error)


def test_unknown_policy_kinds_and_values_are_refused(tmp_path: Path) -> None:
    path = write(rows_of("alpaca"), tmp_path / "d.jsonl")
    assert "unknown anomaly kind" in str(load_error(path, policy={"unknwon_role": "skip"}))
    assert "error or skip" in str(load_error(path, policy={"unknown_role": "truncate"}))


def test_messages_in_a_csv_cell_must_be_json(tmp_path: Path) -> None:
    path = tmp_path / "d.csv"
    path.write_text('messages\n"[{""role"": ""user""}"\n')
    error = load_error(path)
    assert (error.line, error.field) == (2, "messages") and "not valid JSON" in str(error)


# ---------------------------------------------------------------------------------------------
# Classification


def test_class_names_become_sorted_ids(tmp_path: Path) -> None:
    rows = [
        {"text": "good", "label": "pos"},
        {"text": "bad", "label": "neg"},
        {"text": "meh", "label": "mid"},
    ]
    examples, names, _ = load_classification_records(write(rows, tmp_path / "d.jsonl"))
    assert names == ["mid", "neg", "pos"]
    assert [(e.text, e.label) for e in examples] == [("good", 2), ("bad", 1), ("meh", 0)]


def test_integer_labels_are_ids_in_any_file_kind(tmp_path: Path) -> None:
    rows = [{"review": "good", "stars": 2}, {"review": "bad", "stars": 0}, {"review": "ok", "stars": 10}]
    fields = FieldsBlock(label="stars")
    for name in ("d.jsonl", "d.csv"):
        examples, names, _ = load_classification_records(
            write(rows, tmp_path / name), fields=fields, text_field="review"
        )
        assert [e.label for e in examples] == [2, 0, 10]
        assert names == [str(i) for i in range(11)]


def test_classification_anomalies(tmp_path: Path) -> None:
    rows = [{"text": "a", "label": 1}, {"text": "", "label": 0}, {"text": "c"}, {"text": "d", "label": 0.5}]
    path = write(rows, tmp_path / "d.jsonl")
    with pytest.raises(DataError) as info:
        load_classification_records(path)
    assert info.value.line == 2 and "empty_text" in str(info.value)
    examples, _, report = load_classification_records(
        path, policy={"empty_text": "skip", "missing_field": "skip"}
    )
    assert [e.text for e in examples] == ["a"]
    assert (report.counts["empty_text"], report.counts["missing_field"]) == (1, 2)
    mixed = write([{"text": "a", "label": 1}, {"text": "b", "label": "pos"}], tmp_path / "m.jsonl")
    with pytest.raises(DataError, match="mix class ids and class names"):
        load_classification_records(mixed)


def test_regression_labels_are_finite_numbers(tmp_path: Path) -> None:
    rows = [{"text": "a", "label": 0.5}, {"text": "b", "label": "2"}, {"text": "c", "label": "NaN"}]
    for name, bad_line in (("d.jsonl", 3), ("d.csv", 4)):
        path = write(rows, tmp_path / name)
        with pytest.raises(DataError) as info:
            load_classification_records(path, regression=True)
        assert info.value.line == bad_line and "not a finite number" in str(info.value)
        examples, names, report = load_classification_records(
            path, regression=True, policy={"missing_field": "skip"}
        )
        assert [e.label for e in examples] == [0.5, 2.0] and names == [] and report.total() == 1


# ---------------------------------------------------------------------------------------------
# The world, the split, the real Alpaca subset


def test_world_qa_records_are_one_question_one_answer() -> None:
    from peaufine.data.world import generate_world, qa_pairs

    world = generate_world(seed=0, size="smoke")
    split = next(iter(world.splits))
    records = world_qa_records(world, split)
    pairs = qa_pairs(world, split)
    assert len(records) == len(pairs) > 0
    for record, pair in zip(records, pairs, strict=True):
        assert record.messages == [
            {"role": "user", "content": pair.question},
            {"role": "assistant", "content": pair.answer},
        ]
        assert pair.fact_id in record.source


def test_split_records_is_deterministic_disjoint_and_in_order() -> None:
    records = [ChatRecord([{"role": "user", "content": str(i)}], f"line {i}") for i in range(100)]
    train, validation = split_records(records, 0.1, seed=3)
    assert len(validation) == 10 and len(train) == 90
    assert sorted([*train, *validation], key=lambda r: int(r.source.split()[1])) == records
    assert train == sorted(train, key=lambda r: int(r.source.split()[1]))
    assert split_records(records, 0.1, seed=3) == (train, validation)
    assert split_records(records, 0.1, seed=4)[1] != validation
    assert split_records(records, 0.0, seed=3) == (records, [])
    with pytest.raises(DataError, match="validation_fraction"):
        split_records(records[:1], 0.1, seed=0)


@pytest.mark.skipif(not ALPACA_5000.is_file(), reason=f"the shared Alpaca subset is absent ({ALPACA_5000})")
def test_the_alpaca_subset_loads_by_auto_detection() -> None:
    raw = json.loads(ALPACA_5000.read_text(encoding="utf-8"))
    assert len(raw) == 5000
    # The subset holds two records with an empty output (2336 and 4659): the default policy stops
    # at the first, naming it, and skipping drops exactly those.
    with pytest.raises(DataError) as info:
        load_chat_records(ALPACA_5000)
    assert "record 2336" in str(info.value) and info.value.field == "output"
    records, report = load_chat_records(ALPACA_5000, policy={"empty_assistant": "skip"})
    kept = [r for r in raw if r["output"].strip()]
    assert len(records) == len(kept) == 4998 and report.total() == report.counts["empty_assistant"] == 2
    without_input = sum(1 for r in kept if not r["input"].strip())
    # About 60% of Alpaca's instructions stand alone.
    assert 0.4 * len(kept) < without_input < 0.8 * len(kept)
    for record, row in zip(records, kept, strict=True):
        user = row["instruction"] + ("\n\n" + row["input"] if row["input"].strip() else "")
        assert record.messages == [
            {"role": "user", "content": user},
            {"role": "assistant", "content": row["output"]},
        ]
    assert records[0].source == f"{ALPACA_5000}, line 1, record 1"

"""Tests for peaufine.data.corpus: each format, document units, the bad-input policy, the split.

Every corpus is a few lines written into tmp_path; the datasets cache lives there too.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from peaufine.data.anomalies import AnomalyReport
from peaufine.data.corpus import ANOMALY_KINDS, load_documents, split_documents
from peaufine.data.read import find_files
from peaufine.errors import DataError


@pytest.fixture
def cache(tmp_path: Path) -> Path:
    return tmp_path / "hf-cache"


def texts(dataset) -> list[str]:
    return list(dataset["text"])


def load_error(source, cache: Path, **kwargs) -> DataError:
    """The error load_documents raises; anything other than exactly DataError fails the test."""
    with pytest.raises(Exception) as info:
        load_documents(source, cache_dir=cache, **kwargs)
    assert type(info.value) is DataError, f"{type(info.value).__name__}: {info.value}"
    return info.value


# ---------------------------------------------------------------------------------------------
# find_files


def test_find_files_walks_folders_sorted_and_keeps_supported_files(tmp_path: Path) -> None:
    corpus = tmp_path / "corpus"
    (corpus / "sub").mkdir(parents=True)
    (corpus / ".git").mkdir()
    for name in ("b.txt", "a.jsonl", "sub/c.md", "notes.pdf", "image.png", ".git/x.txt", "d.CSV"):
        (corpus / name).write_text("x\n")
    assert find_files(corpus) == [
        corpus / "a.jsonl",
        corpus / "b.txt",
        corpus / "d.CSV",
        corpus / "sub" / "c.md",
    ]
    # A list keeps its order, and the same file twice counts once.
    assert find_files([corpus / "b.txt", str(corpus / "a.jsonl"), corpus / "b.txt"]) == [
        corpus / "b.txt",
        corpus / "a.jsonl",
    ]


def test_find_files_errors_name_the_path(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="nowhere"):
        find_files(tmp_path / "nowhere")
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "slides.pdf").write_text("x")
    with pytest.raises(DataError, match=r"empty.*no corpus file.*\.jsonl"):
        find_files(tmp_path / "empty")
    (tmp_path / "doc.pdf").write_text("x")
    with pytest.raises(DataError, match=r"doc\.pdf.*unsupported file extension '\.pdf'"):
        find_files(tmp_path / "doc.pdf")


# ---------------------------------------------------------------------------------------------
# Formats, in order


def test_every_format_loads_its_documents_in_file_order(tmp_path: Path, cache: Path) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    corpus = tmp_path / "corpus"
    corpus.mkdir()
    (corpus / "1.txt").write_text("first paragraph\nstill first\n\nsecond\n")
    (corpus / "2.md").write_text("# Title\n\nBody.\n")
    (corpus / "3.jsonl").write_text('{"text": "j1", "id": 1}\n\n{"id": 2, "text": "j2"}\n')
    (corpus / "4.json").write_text('[\n  {"text": "a1"},\n  {"text": "a2"}\n]\n')
    (corpus / "5.json").write_text('{"text": "l1"}\n{"text": "l2"}\n')
    (corpus / "6.csv").write_text('id,text\n1,"has, comma\nand newline"\n\n2,plain\n')
    (corpus / "7.tsv").write_text("text\tid\ntab one\t1\ntab two\t2\n")
    pq.write_table(pa.table({"id": [1, 2], "text": ["q1", "q2"]}), corpus / "8.parquet")
    (corpus / "9.text").write_text("last\n")

    dataset, report = load_documents(corpus, cache_dir=cache)

    assert texts(dataset) == [
        "first paragraph\nstill first",
        "second",
        "# Title",
        "Body.",
        "j1",
        "j2",
        "a1",
        "a2",
        "l1",
        "l2",
        "has, comma\nand newline",
        "plain",
        "tab one",
        "tab two",
        "q1",
        "q2",
        "last",
    ]
    assert dataset.column_names == ["text"]
    assert report.total() == 0
    assert report.counts == dict.fromkeys(ANOMALY_KINDS, 0)
    # Backed by an Arrow file in the cache folder, not held in memory.
    assert dataset.cache_files
    assert all(Path(f["filename"]).is_relative_to(cache) for f in dataset.cache_files)


def test_text_field_selects_the_column(tmp_path: Path, cache: Path) -> None:
    path = tmp_path / "c.jsonl"
    path.write_text('{"body": "b1", "text": "t1"}\n{"body": "b2", "text": "t2"}\n')
    dataset, _ = load_documents(path, text_field="body", cache_dir=cache)
    assert texts(dataset) == ["b1", "b2"]


@pytest.mark.parametrize(
    ("unit", "expected"),
    [
        ("paragraph", ["one\ntwo", "three", "four\nfive"]),
        ("line", ["one", "two", "three", "four", "five"]),
        ("file", ["one\ntwo\n\nthree\n\n\n  \nfour\nfive\n"]),
    ],
)
def test_document_units_of_plain_text(tmp_path: Path, cache: Path, unit, expected) -> None:
    path = tmp_path / "book.txt"
    # Windows line endings and a whitespace-only separator line must not leak into documents.
    path.write_bytes(b"one\r\ntwo\r\n\r\nthree\n\n\n  \nfour\nfive\n")
    dataset, _ = load_documents(path, document_unit=unit, cache_dir=cache)
    assert texts(dataset) == expected


def test_utf8_bom_is_not_part_of_the_text_or_the_header(tmp_path: Path, cache: Path) -> None:
    (tmp_path / "a.txt").write_bytes(b"\xef\xbb\xbfhello\n")
    (tmp_path / "b.csv").write_bytes(b"\xef\xbb\xbftext\nrow\n")
    dataset, _ = load_documents(tmp_path, cache_dir=cache)
    assert texts(dataset) == ["hello", "row"]


# ---------------------------------------------------------------------------------------------
# Errors name file, line and field


@pytest.mark.parametrize("unit", ["paragraph", "line", "file"])
def test_non_utf8_text_names_file_line_and_offset(tmp_path: Path, cache: Path, unit) -> None:
    path = tmp_path / "latin1.txt"
    path.write_bytes(b"fine\nalso fine\ncaf\xe9 au lait\n")
    error = load_error(path, cache, document_unit=unit)
    assert "latin1.txt, line 3" in str(error)
    assert "byte offset 18" in str(error)  # 5 + 10 bytes of earlier lines, then "caf"
    assert error.line == 3


def test_non_utf8_in_jsonl_and_csv_names_the_line(tmp_path: Path, cache: Path) -> None:
    jsonl = tmp_path / "a.jsonl"
    jsonl.write_bytes(b'{"text": "ok"}\n{"text": "\xff"}\n')
    assert "a.jsonl, line 2" in str(load_error(jsonl, cache))
    csv_path = tmp_path / "b.csv"
    # The quoted record spans lines 2-3, so the bad row is on physical line 4.
    csv_path.write_bytes(b'id,text\n1,"two\nlines"\n2,bad \xc3(\n')
    assert "b.csv, line 4" in str(load_error(csv_path, cache))


def test_broken_json_line_names_line_3(tmp_path: Path, cache: Path) -> None:
    path = tmp_path / "corpus.jsonl"
    path.write_text('{"text": "a"}\n{"text": "b"}\n{"text": "c",\n{"text": "d"}\n')
    error = load_error(path, cache)
    assert "corpus.jsonl, line 3" in str(error)
    assert "not valid JSON" in str(error)


def test_json_line_that_is_not_an_object_is_bad_json(tmp_path: Path, cache: Path) -> None:
    path = tmp_path / "corpus.jsonl"
    path.write_text('{"text": "a"}\n["text", "b"]\n')
    error = load_error(path, cache)
    assert "line 2" in str(error)
    assert "an array" in str(error)


def test_missing_text_field_names_field_line_and_fields_present(tmp_path: Path, cache: Path) -> None:
    path = tmp_path / "corpus.jsonl"
    path.write_text('{"text": "a"}\n{"content": "b", "id": 7}\n')
    error = load_error(path, cache)
    message = str(error)
    assert "corpus.jsonl, line 2, field 'text'" in message
    assert "'content', 'id'" in message
    assert (error.line, error.field) == (2, "text")


@pytest.mark.parametrize(("value", "kind"), [("5", "int"), ("null", "null"), ('["a"]', "list")])
def test_text_value_that_is_not_a_string(tmp_path: Path, cache: Path, value, kind) -> None:
    path = tmp_path / "corpus.jsonl"
    path.write_text(f'{{"text": {value}}}\n')
    message = str(load_error(path, cache))
    assert "line 1, field 'text'" in message
    assert f"{kind}, not a string" in message


def test_json_array_errors_name_the_element_line(tmp_path: Path, cache: Path) -> None:
    path = tmp_path / "corpus.json"
    path.write_text('[\n  {"text": "a"},\n  {"txt": "b"}\n]\n')
    assert "corpus.json, line 3, field 'text'" in str(load_error(path, cache))
    # A syntax error cannot be skipped inside an array: no resynchronisation is possible.
    path.write_text('[\n  {"text": "a"},\n  {"text": "b"}\n  {"text": "c"}\n]\n')
    error = load_error(path, cache, policy={"bad_json": "skip"})
    assert "corpus.json, line 4" in str(error)


def test_csv_without_the_text_column_names_it_and_the_columns_present(tmp_path: Path, cache: Path) -> None:
    path = tmp_path / "table.csv"
    path.write_text("id,body,label\n1,hello,0\n")
    message = str(load_error(path, cache))
    assert "table.csv" in message
    assert "'text'" in message
    assert "'id', 'body', 'label'" in message


def test_csv_short_row_and_unbalanced_quote(tmp_path: Path, cache: Path) -> None:
    path = tmp_path / "table.csv"
    path.write_text("id,text\n1,ok\n2\n")
    error = load_error(path, cache)
    assert (error.line, error.field) == (3, "text")
    path.write_text('text\nok\n"never closed\nmore\n')
    assert "table.csv, line 3" in str(load_error(path, cache))


def test_parquet_errors_name_the_row(tmp_path: Path, cache: Path) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    path = tmp_path / "t.parquet"
    pq.write_table(pa.table({"text": ["a", None, "c"]}), path)
    message = str(load_error(path, cache))
    assert "t.parquet" in message
    assert "row 2" in message
    pq.write_table(pa.table({"body": ["a"]}), path)
    assert "'body'" in str(load_error(path, cache))
    pq.write_table(pa.table({"text": [1, 2]}), path)
    assert "not strings" in str(load_error(path, cache))
    path.write_bytes(b"not a parquet file at all")
    assert "t.parquet: not a readable Parquet file" in str(load_error(path, cache))


def test_empty_text_is_an_anomaly(tmp_path: Path, cache: Path) -> None:
    path = tmp_path / "c.jsonl"
    path.write_text('{"text": "a"}\n{"text": "   "}\n')
    error = load_error(path, cache)
    assert "line 2" in str(error)
    assert "empty" in str(error)


def test_empty_corpus(tmp_path: Path, cache: Path) -> None:
    path = tmp_path / "blank.txt"
    path.write_text("\n   \n\n")
    # By default the empty file itself is the error...
    assert "blank.txt" in str(load_error(path, cache))
    # ...and when such files may be skipped, nothing is left.
    message = str(load_error(path, cache, policy={"empty_text": "skip"}))
    assert "empty corpus" in message
    assert "blank.txt" in message
    assert "empty_text=1" in message
    jsonl = tmp_path / "all_bad.jsonl"
    jsonl.write_text("not json\n{oops\n")
    message = str(load_error(jsonl, cache, policy={"bad_json": "skip"}))
    assert "empty corpus" in message
    assert "bad_json=2" in message


def test_invalid_options_list_the_valid_ones(tmp_path: Path, cache: Path) -> None:
    path = tmp_path / "a.txt"
    path.write_text("x\n")
    message = str(load_error(path, cache, policy={"bad_utf8": "skip"}))
    assert "'bad_utf8'" in message
    assert all(kind in message for kind in ANOMALY_KINDS)
    message = str(load_error(path, cache, policy={"bad_json": "ignore"}))
    assert "'ignore'" in message
    assert "error, skip" in message
    assert "paragraph, line, file" in str(load_error(path, cache, document_unit="sentence"))
    assert "no such file" in str(load_error(tmp_path / "gone.txt", cache))


# ---------------------------------------------------------------------------------------------
# Skip policy


def test_skip_policy_drops_and_counts_each_bad_record_exactly(tmp_path: Path, cache: Path) -> None:
    path = tmp_path / "mixed.jsonl"
    lines = [
        b'{"text": "keep 1"}',
        b'{"text": broken',  # bad_json, line 2
        b'{"body": "no text"}',  # missing_field, line 3
        b'{"text": 42}',  # missing_field, line 4
        b'{"text": "  "}',  # empty_text, line 5
        b'{"text": "caf\xe9"}',  # not_utf8, line 6
        b"",
        b'{"text": "keep 2"}',
        b"[1, 2]",  # bad_json, line 9
    ]
    path.write_bytes(b"\n".join(lines) + b"\n")
    policy = dict.fromkeys(ANOMALY_KINDS, "skip")

    dataset, report = load_documents(path, policy=policy, cache_dir=cache)

    assert texts(dataset) == ["keep 1", "keep 2"]
    assert report.counts == {"not_utf8": 1, "bad_json": 2, "missing_field": 2, "empty_text": 1}
    assert report.total() == 6
    assert "mixed.jsonl, line 2" in report.examples["bad_json"]
    assert "line 3, field 'text'" in report.examples["missing_field"]
    assert "line 5" in report.examples["empty_text"]
    assert "line 6" in report.examples["not_utf8"]

    # Skipping one kind does not skip the others.
    error = load_error(path, cache, policy={"bad_json": "skip"})
    assert "line 3, field 'text'" in str(error)


def test_skip_policy_in_text_csv_and_parquet(tmp_path: Path, cache: Path) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    (tmp_path / "a.txt").write_bytes(b"good para\n\nbad \xff para\nsecond line\n\nlast\n")
    (tmp_path / "b.csv").write_text('id,text\n1,x\n2\n3,"  "\n4,y\n')
    pq.write_table(pa.table({"text": ["p", None, "", "q"]}), tmp_path / "c.parquet")
    (tmp_path / "d.txt").write_text("")
    policy = dict.fromkeys(ANOMALY_KINDS, "skip")

    dataset, report = load_documents(tmp_path, policy=policy, cache_dir=cache)

    # The undecodable paragraph goes as one record; the empty file counts as one empty text.
    assert texts(dataset) == ["good para", "last", "x", "y", "p", "q"]
    assert report.counts == {"not_utf8": 1, "bad_json": 0, "missing_field": 2, "empty_text": 3}


def test_report_survives_a_cache_hit_and_edits_invalidate_the_cache(tmp_path: Path, cache: Path) -> None:
    path = tmp_path / "c.jsonl"
    path.write_text('{"text": "a"}\n{"oops": 1}\n')
    policy = {"missing_field": "skip"}
    first, report1 = load_documents(path, policy=policy, cache_dir=cache)
    second, report2 = load_documents(path, policy=policy, cache_dir=cache)
    assert texts(second) == ["a"]
    assert second.cache_files == first.cache_files  # reused, not rebuilt
    assert report2 == report1
    assert report2.counts["missing_field"] == 1

    path.write_text('{"text": "a"}\n{"text": "changed"}\n')
    third, report3 = load_documents(path, policy=policy, cache_dir=cache)
    assert texts(third) == ["a", "changed"]
    assert report3.total() == 0


def test_anomaly_report_total() -> None:
    report = AnomalyReport(counts={"not_utf8": 2, "bad_json": 0, "empty_text": 3}, examples={})
    assert report.total() == 5


# ---------------------------------------------------------------------------------------------
# Split


def numbered(n: int):
    import datasets

    return datasets.Dataset.from_dict({"text": [f"doc {i}" for i in range(n)]})


def test_split_is_deterministic_disjoint_and_complete() -> None:
    dataset = numbered(50)
    train, validation = split_documents(dataset, 0.2, seed=7)
    again_train, again_validation = split_documents(dataset, 0.2, seed=7)
    assert texts(train) == texts(again_train)
    assert texts(validation) == texts(again_validation)
    assert len(validation) == 10
    assert set(texts(train)).isdisjoint(texts(validation))
    assert sorted(texts(train) + texts(validation)) == sorted(texts(dataset))
    # Both sides keep corpus order.
    assert texts(train) == sorted(texts(train), key=lambda t: int(t.split()[1]))

    _, other_validation = split_documents(dataset, 0.2, seed=8)
    assert texts(other_validation) != texts(validation)


def test_split_sizes_at_the_edges() -> None:
    train, validation = split_documents(numbered(5), 0.0, seed=0)
    assert (len(train), len(validation)) == (5, 0)
    assert validation.column_names == ["text"]
    train, validation = split_documents(numbered(3), 0.1, seed=0)  # round(0.3) = 0, raised to 1
    assert (len(train), len(validation)) == (2, 1)
    train, validation = split_documents(numbered(2), 0.9, seed=0)  # train keeps one
    assert (len(train), len(validation)) == (1, 1)


def test_split_of_a_single_document_says_how_to_get_more() -> None:
    with pytest.raises(Exception) as info:
        split_documents(numbered(1), 0.1, seed=0)
    assert type(info.value) is DataError
    assert "paragraph" in str(info.value)
    assert "line" in str(info.value)
    with pytest.raises(DataError, match="validation_fraction"):
        split_documents(numbered(10), 1.0, seed=0)


def test_split_of_a_loaded_corpus(tmp_path: Path, cache: Path) -> None:
    path = tmp_path / "lines.txt"
    path.write_text("".join(f"line {i}\n" for i in range(20)))
    dataset, _ = load_documents(path, document_unit="line", cache_dir=cache)
    train, validation = split_documents(dataset, 0.25, seed=1)
    assert len(validation) == 5
    assert sorted(texts(train) + texts(validation)) == sorted(f"line {i}" for i in range(20))


def test_jsonl_records_are_read_as_written(tmp_path: Path, cache: Path) -> None:
    # Unicode, escapes and embedded newlines come through unchanged.
    records = ["naïve café ☕", "two\nlines", 'quote " and \\ backslash']
    path = tmp_path / "u.jsonl"
    path.write_text("".join(json.dumps({"text": r}) + "\n" for r in records), encoding="utf-8")
    dataset, _ = load_documents(path, cache_dir=cache)
    assert texts(dataset) == records


# ---------------------------------------------------------------------------------------------
# NUL bytes: binary data or UTF-16 text, never UTF-8 text

NUL_FILES = {
    "a binary blob in the middle": b"first line of text\n\nsecond \x00\x01\x02\x00 paragraph\n\nthird line\n",
    "UTF-16 text": "first line\n\nsecond line\n".encode("utf-16-le"),
}


@pytest.mark.parametrize("unit", ["line", "paragraph", "file"])
@pytest.mark.parametrize("case", list(NUL_FILES))
def test_nul_bytes_are_an_anomaly_in_every_document_unit(tmp_path: Path, cache: Path, unit, case) -> None:
    path = tmp_path / "corpus.txt"
    path.write_bytes(NUL_FILES[case])
    error = load_error(path, cache, document_unit=unit)
    assert "NUL" in str(error) and "corpus.txt" in str(error) and "data.anomalies.not_utf8" in str(error)
    if unit != "file":
        assert "line " in str(error)
    # skipped under the not_utf8 policy, and counted; no NUL reaches a document
    (tmp_path / "good.txt").write_text("a good line\n", encoding="utf-8")
    both = [path, tmp_path / "good.txt"]
    dataset, report = load_documents(both, cache_dir=cache, document_unit=unit, policy={"not_utf8": "skip"})
    assert report.counts["not_utf8"] >= 1
    assert not any("\x00" in text for text in texts(dataset))


def test_a_text_file_without_nul_bytes_is_read_whole(tmp_path: Path, cache: Path) -> None:
    """The negative control: tabs, form feeds and other control characters are text."""
    path = tmp_path / "corpus.txt"
    path.write_text("col\tumn one\n\fsecond\x1b[0m line\n", encoding="utf-8")
    dataset, report = load_documents(path, cache_dir=cache, document_unit="line")
    assert texts(dataset) == ["col\tumn one", "\fsecond\x1b[0m line"] and report.total() == 0

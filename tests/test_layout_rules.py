"""Two rules of the layout, read off the source: only rundir.py spells a run folder's file names, and only
data/read.py uses the parsers of data files (csv, pyarrow, saved datasets). Each has a negative control."""

from __future__ import annotations

import ast
from pathlib import Path

from peaufine.rundir import RUN_FILES

SRC = Path(__file__).resolve().parents[1] / "src" / "peaufine"
FILE_PARSERS = ("csv", "pyarrow", "pyarrow.parquet")


def spelled_run_files(source: str) -> list[str]:
    """String constants of `source` that are a run folder's file names."""
    return [
        node.value
        for node in ast.walk(ast.parse(source))
        if isinstance(node, ast.Constant) and isinstance(node.value, str) and node.value in RUN_FILES
    ]


def file_parsers(source: str) -> list[str]:
    """The data-file parsers `source` imports, and its calls of datasets' load_from_disk."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found += [a.name for a in node.names if a.name in FILE_PARSERS]
        elif isinstance(node, ast.ImportFrom) and node.module in FILE_PARSERS:
            found.append(node.module)
        elif isinstance(node, ast.Attribute) and node.attr == "load_from_disk":
            found.append("load_from_disk")
    return found


def offenders(rule, allowed: str) -> dict[str, list[str]]:
    found = {}
    for path in sorted(SRC.rglob("*.py")):
        name = str(path.relative_to(SRC))
        if name != allowed and (hits := rule(path.read_text(encoding="utf-8"))):
            found[name] = hits
    return found


def test_only_rundir_spells_the_run_folder_files() -> None:
    assert offenders(spelled_run_files, "rundir.py") == {}
    # negative controls: the rule sees a spelled name, and rundir.py itself spells them all
    assert spelled_run_files('path = run / "eval.json"\nprint("metrics.jsonl")') == [
        "eval.json",
        "metrics.jsonl",
    ]
    assert set(spelled_run_files((SRC / "rundir.py").read_text(encoding="utf-8"))) == set(RUN_FILES)


def test_only_data_read_parses_data_files() -> None:
    assert offenders(file_parsers, "data/read.py") == {}
    assert file_parsers("import csv\nimport pyarrow.parquet as pq\nds = datasets.load_from_disk(p)") == [
        "csv",
        "pyarrow.parquet",
        "load_from_disk",
    ]
    assert set(file_parsers((SRC / "data" / "read.py").read_text(encoding="utf-8"))) >= {
        "csv",
        "pyarrow.parquet",
        "load_from_disk",
    }

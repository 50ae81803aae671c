"""Which report a folder gets: the marker files decide, pipeline first; a folder with nothing to report
on is refused by name and left without a page."""

from __future__ import annotations

import re

import pytest

from peaufine.errors import RunDirError
from peaufine.report.pages.write import report_kind, write_report
from peaufine.report.toolkit import REPORT_NAME


def test_the_kind_of_report_follows_the_marker_files_pipeline_first(tmp_path):
    for marker in ("recipe.yaml", "cv.json", "study.json", "pipeline.json"):
        (tmp_path / marker).write_text("{}", encoding="utf-8")
    kinds = []
    for marker in ("pipeline.json", "study.json", "cv.json", "recipe.yaml"):
        kinds.append(report_kind(tmp_path))
        (tmp_path / marker).unlink()
    assert kinds == ["pipeline", "search", "cv", "run"]


def test_a_folder_with_nothing_to_report_on_is_refused_by_name(tmp_path):
    (tmp_path / "notes.txt").write_text("hello", encoding="utf-8")
    with pytest.raises(RunDirError, match=re.escape(str(tmp_path))):
        write_report(tmp_path)
    with pytest.raises(RunDirError, match="not a folder"):
        write_report(tmp_path / "missing")
    assert not (tmp_path / REPORT_NAME).exists()

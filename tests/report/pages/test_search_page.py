"""A search's page, from a hand-made search folder: trials ranked best first against the unchanged
recipe, links only to the trial runs that have a report, the plots that exist."""

from __future__ import annotations

from pathlib import Path

import pytest
from page_checks import (
    assert_images_relative_and_present,
    image_sources,
    link_targets,
    table_rows,
    table_rows_without_caption,
    write_json,
    write_jsonl,
    write_png,
)

from peaufine.report.pages.write import write_report
from peaufine.report.toolkit import REPORT_NAME


def make_search(directory: Path, direction: str = "minimize") -> None:
    trials = [
        {"trial": 0, "state": "COMPLETE", "params": {"train.lr": 0.001}, "value": 2.0, "seconds": 12.5},
        {"trial": 1, "state": "COMPLETE", "params": {"train.lr": 0.003}, "value": 1.5, "seconds": 11.0},
        {"trial": 2, "state": "PRUNED", "params": {"train.lr": 0.1}, "value": None, "seconds": 3.0},
        {"trial": 3, "state": "COMPLETE", "params": {"train.lr": 0.0005}, "value": 1.8, "seconds": 130.0},
        {"trial": 4, "state": "FAIL", "params": {"train.lr": 0.5}, "value": None, "seconds": None},
    ]
    for t in trials:
        t["run"] = f"trials/trial-{t['trial']:04d}"
    directory.mkdir(parents=True, exist_ok=True)
    write_jsonl(directory / "trials.jsonl", trials)
    complete = [t for t in trials if t["value"] is not None]
    best = (min if direction == "minimize" else max)(complete, key=lambda t: t["value"])
    write_json(
        directory / "study.json",
        {
            "metric": "val_loss",
            "direction": direction,
            "sampler": "tpe",
            "trials": 5,
            "best": {"trial": best["trial"], "value": best["value"], "params": best["params"]},
            "baseline": {"trial": 0, "value": 2.0},
        },
    )
    (directory / "best-recipe.yaml").write_text("train:\n  lr: 0.003  # <best>\n", encoding="utf-8")
    write_png(directory / "history.png")
    (directory / "trials" / "trial-0001").mkdir(parents=True)
    (directory / "trials" / "trial-0001" / REPORT_NAME).write_text("<html></html>", encoding="utf-8")


@pytest.mark.parametrize(
    ("direction", "order"), [("minimize", ["1", "3", "0"]), ("maximize", ["0", "3", "1"])]
)
def test_a_search_report_ranks_trials_best_first_against_the_unchanged_recipe(tmp_path, direction, order):
    make_search(tmp_path, direction)
    page = write_report(tmp_path).read_text(encoding="utf-8")
    rows = table_rows(page, f"Best first ({direction} val_loss)")
    assert [r[1].split()[0] for r in rows] == [*order, "2", "4"]
    assert [r[0] for r in rows] == ["1", "2", "3", "–", "–"]
    assert [r[2] for r in rows][3:] == ["PRUNED", "FAIL"]
    assert "trials/trial-0001/report.html" in link_targets(page)
    assert "trials/trial-0003/report.html" not in link_targets(page)  # it has no report
    overview = dict(r[:2] for r in table_rows_without_caption(page, 0))
    if direction == "minimize":
        assert overview["best val_loss"] == "1.5"
        assert overview["better than the unchanged recipe by"] == "0.5 (+25.0% of trial 0)"
    else:
        assert overview["best trial"] == "0" and overview["better than the unchanged recipe by"].startswith(
            "0 "
        )
    assert image_sources(page) == ["history.png"]  # params.png is not there, so not shown
    assert "&lt;best&gt;" in page and "best-recipe.yaml" in link_targets(page)
    assert_images_relative_and_present(page, tmp_path)

"""A cross-validation's page, from a hand-made cv.json: losses and accuracies first, every fold's value,
and a link to each fold that has a report."""

from __future__ import annotations

import re

from page_checks import link_targets, table_rows, write_json, write_png

from peaufine.report.pages.write import write_report
from peaufine.report.toolkit import REPORT_NAME


def test_a_cross_validation_report_puts_loss_and_accuracy_first_with_every_fold(tmp_path):
    write_json(
        tmp_path / "cv.json",
        {
            "stage": "classify",
            "folds": 3,
            "runs": ["fold-0", "fold-1", "fold-2"],
            "metrics": {
                "steps": {"mean": 40.0, "std": 0.0, "values": [40.0, 40.0, 40.0]},
                "val_accuracy": {"mean": 0.82, "std": 0.01, "values": [0.81, 0.82, 0.83]},
                "val_loss": {"mean": 0.4512, "std": 0.0211, "values": [0.43, 0.45, 0.4736]},
                "note": {"mean": None},
            },
        },
    )
    write_png(tmp_path / "fold-1" / "loss.png")
    (tmp_path / "fold-1" / REPORT_NAME).write_text("<html></html>", encoding="utf-8")
    page = write_report(tmp_path).read_text(encoding="utf-8")
    rows = table_rows(page, "Losses and accuracies")
    assert rows == [
        ["val_loss", "0.4512 ± 0.0211", "0.43", "0.45", "0.4736"],
        ["val_accuracy", "82.0% ± 1.0%", "81.0%", "82.0%", "83.0%"],
    ]
    everything = re.search(r"<details><summary>all 3 metrics</summary>(.*?)</details>", page)
    assert everything and ">steps<" in everything.group(1)
    assert link_targets(page) == ["fold-1/report.html"]
    assert "fold-0 (no report)" in page

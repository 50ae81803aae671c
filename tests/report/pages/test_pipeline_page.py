"""A pipeline's page, from a hand-made pipeline folder: each stage linked with its headline and plots,
shown relatively; and every stage's headline of a rate reads as a percentage."""

from __future__ import annotations

from page_checks import (
    assert_images_relative_and_present,
    image_sources,
    link_targets,
    table_rows_without_caption,
    write_json,
    write_png,
)

from peaufine.report.pages.write import write_report
from peaufine.report.toolkit import REPORT_NAME, fmt_metric


def test_every_pipeline_headline_of_a_rate_reads_as_a_percentage():
    from peaufine.results import HEADLINES

    rates = {"fact_recall.accuracy", "heldout.accuracy", "validation.accuracy", "after.exact_match_greedy"}
    rates |= {
        key for pairs in HEADLINES.values() for _, key in pairs if "accuracy" in key or "exact_match" in key
    }
    for pairs in HEADLINES.values():
        for label, key in pairs:
            if key in rates:
                assert fmt_metric(label, 0.75) == "75.0%", f"{label!r} ({key}) would not read as a percentage"


def test_a_pipeline_report_links_each_stage_and_shows_its_plots_relatively(tmp_path):
    write_json(
        tmp_path / "pipeline.json",
        {
            "name": "world <demo>",
            "seconds": 185.0,
            "stages": [
                {
                    "name": "sft",
                    "stage": "sft",
                    "run": "sft",
                    "status": "ran",
                    "seconds": 42.25,
                    "headline": {"exact match": 0.375, "val_loss": 1.93863},
                },
                {"name": "rl", "stage": "rl", "run": "grpo", "status": "ran", "seconds": 9.0, "headline": {}},
                {
                    "name": "dpo",
                    "stage": "dpo",
                    "run": "dpo",
                    "status": "failed",
                    "seconds": None,
                    "headline": {},
                },
                {"name": "reward", "stage": "reward", "run": None, "status": "skipped", "seconds": None},
            ],
        },
    )
    write_png(tmp_path / "sft" / "loss.png")
    write_png(tmp_path / "sft" / "report-loss.png")
    (tmp_path / "sft" / REPORT_NAME).write_text("<html></html>", encoding="utf-8")
    write_json(tmp_path / "sft" / "eval.json", {"forgetting": {"verdict": "no forgetting beyond 10%"}})
    write_png(tmp_path / "grpo" / "rl.png")
    page = write_report(tmp_path).read_text(encoding="utf-8")
    rows = table_rows_without_caption(page, 0)
    assert rows[1] == ["sft", "sft", "ran", "42.2 s", "exact match 37.5%; val_loss 1.939", "sft"]
    assert rows[3][2] == "failed" and rows[4][5] == "–"
    assert '<span class="status-failed">failed</span>' in page
    assert image_sources(page) == ["sft/report-loss.png", "grpo/rl.png"]  # the report's own plot first
    assert link_targets(page) == ["sft/report.html", "sft/report.html"]
    assert "no forgetting beyond 10%" in page and "world &lt;demo&gt;" in page
    assert "3 min 05 s" in page
    assert_images_relative_and_present(page, tmp_path)


def test_a_pipeline_headline_rate_shows_its_interval_and_n_from_the_runs_eval(tmp_path):
    after = {"exact_match": 0.375, "exact_match_ci": [0.137, 0.694], "n": 8, "f1": 0.4}
    write_json(tmp_path / "sft" / "eval.json", {"stage": "sft", "answers": {"heldout": {"after": after}}})
    write_json(
        tmp_path / "pipeline.json",
        {
            "name": "p",
            "stages": [
                {
                    "name": "sft",
                    "stage": "sft",
                    "run": "sft",
                    "status": "ran",
                    "seconds": 1.0,
                    "headline": {"exact match (held-out facts)": 0.375, "validation loss": 1.5},
                }
            ],
        },
    )
    page = write_report(tmp_path).read_text(encoding="utf-8")
    rows = table_rows_without_caption(page, 0)
    assert rows[1][4] == "exact match (held-out facts) 37.5% [13.7, 69.4] (n=8); validation loss 1.5"

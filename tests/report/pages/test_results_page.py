"""A stage run's results and samples, for each stage of the smoke pipeline: the numbers of its eval.json
and what it sampled, as the page shows them."""

from __future__ import annotations

import html
import json
from pathlib import Path

import pytest
from page_checks import (
    BUDGET,
    assert_images_relative_and_present,
    image_sources,
    key_values,
    read_page,
    report_stage_runs,
    table_rows,
)

from peaufine.evaluate.stats import rate_text
from peaufine.report.toolkit import fmt_number


@pytest.fixture(scope="module")
def stage_reports(smoke_demo, tmp_path_factory) -> dict[str, Path]:
    """Each smoke stage run, copied without weights and checkpoints (the report reads neither), reported."""
    return report_stage_runs(smoke_demo, tmp_path_factory)


@pytest.mark.slow
def test_every_stage_report_shows_its_stage_results(stage_reports):
    pretrain = json.loads((stage_reports["pretrain"] / "eval.json").read_text())
    page = read_page(stage_reports["pretrain"])
    recall = pretrain["fact_recall"]
    # issue 14: each rate with its 95% interval
    shown = rate_text(recall["accuracy"], recall["accuracy_ci"])
    assert f"{shown} ({recall['correct']} of {recall['total']})" in page
    assert html.escape(pretrain["samples"][0]["prompt"]) in page
    budget = key_values(page, BUDGET)
    assert budget["trainable share"] == "100.0%"  # full pretraining trains everything

    reward = json.loads((stage_reports["reward"] / "eval.json").read_text())
    rows = table_rows(read_page(stage_reports["reward"]), "Pairwise accuracy")
    assert [
        "heldout",
        str(reward["heldout"]["pairs"]),
        rate_text(reward["heldout"]["accuracy"], reward["heldout"]["accuracy_ci"]),
        fmt_number(reward["heldout"]["mean_margin"]),
    ] in rows

    dpo = json.loads((stage_reports["dpo"] / "eval.json").read_text())
    rows = table_rows(
        read_page(stage_reports["dpo"]),
        "The policy gives the chosen answer the higher likelihood (likelihood accuracy)",
    )
    key = "likelihood_accuracy_heldout"
    assert [
        "heldout",
        rate_text(dpo["before"][key], dpo["before"][f"{key}_ci"]),
        rate_text(dpo["after"][key], dpo["after"][f"{key}_ci"]),
    ] == rows[0][:3]

    grpo_run = stage_reports["grpo"]
    grpo, page = json.loads((grpo_run / "eval.json").read_text()), read_page(grpo_run)
    assert f"final KL to the reference: {fmt_number(grpo['final_kl'])} nats per answer" in page
    first = json.loads((grpo_run / "samples.jsonl").read_text().splitlines()[0])
    assert f"<h3>Sampled in training, step {first['step']}</h3>" in page
    assert html.escape(first["completion"]) in page
    assert {"rl.png", "report-rl-diagnostics.png"} <= set(image_sources(page))
    assert "report-loss.png" not in image_sources(page)  # RL's train_loss is no loss curve
    for run in stage_reports.values():
        assert_images_relative_and_present(read_page(run), run)

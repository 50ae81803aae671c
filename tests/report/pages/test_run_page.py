"""A stage run's page: each section a run has data for, showing the numbers in its files, for a hand-made
sft run (finished and not) and for the smoke pipeline's sft run."""

from __future__ import annotations

import html
import json
import math
from pathlib import Path

import pytest
from page_checks import (
    BUDGET,
    INJECTED,
    assert_images_relative_and_present,
    image_sources,
    key_values,
    make_tiny_run,
    read_page,
    report_stage_runs,
    table_rows,
)

from peaufine.evaluate.answers import answer_changes, score_answers
from peaufine.evaluate.leakage import leakage
from peaufine.report.pages.write import write_report
from peaufine.report.toolkit import REPORT_NAME, fmt_number


@pytest.fixture
def tiny_run(tmp_path: Path) -> Path:
    """A hand-made sft run that stopped early at step 60 after overfitting from step 30."""
    return make_tiny_run(tmp_path)


@pytest.fixture(scope="module")
def stage_reports(smoke_demo, tmp_path_factory) -> dict[str, Path]:
    """Each smoke stage run, copied without weights and checkpoints (the report reads neither), reported."""
    return report_stage_runs(smoke_demo, tmp_path_factory)


def test_a_stage_run_report_marks_early_stop_and_overfitting_and_escapes_text(tiny_run):
    path = write_report(tiny_run)
    page = path.read_text(encoding="utf-8")
    assert path == tiny_run / REPORT_NAME
    assert [p.name for p in tiny_run.iterdir() if ".tmp" in p.name] == []
    for title in (
        "Environment and recipe",
        "Training",
        "Learning-rate schedule",
        "Data",
        "Forgetting and transfer",
        "Results (sft)",
        "Samples",
    ):
        assert f"<h2>{title}</h2>" in page, title
    # the loss plot with its markers, the learning-rate plot: written next to the page, referred to relatively
    assert set(image_sources(page)) == {"report-loss.png", "report-lr.png"}
    assert_images_relative_and_present(page, tiny_run)
    assert "marked: best validation step, overfitting onset, early stop" in page
    summary = key_values(page, "Overfitting")
    assert summary["best step"] == "30" and summary["overfitting onset step"] == "30"
    verdicts = {r[0]: r[1] for r in table_rows(page, "Verdicts")}
    assert verdicts["early stopping"] == "stopped at step 60 of 100"
    assert verdicts["overfitting"].startswith("overfitting from step 30")
    assert verdicts["forgetting"].startswith("FORGETTING")
    forgetting = key_values(page, "Forgetting: loss on general text")
    assert forgetting["loss before fine-tuning"] == "0.5126" and forgetting["relative change"] == "+25.5%"
    transfer = table_rows(page, "Transfer: task validation loss, lower is better")
    assert transfer[1] == ["base model, zero-shot", "4.25", "+2.64"]
    assert ["validation: exact match (n=1)", "0.0%", "100.0%", "+100.0 pt"] in table_rows(
        page, "Greedy answers to the task's questions, before and after fine-tuning"
    )
    assert "torch 9.9.9" in page and "2 &amp; 3" in page
    # the sample's markup is shown as text: the page's only script is its own
    assert html.escape(INJECTED) in page
    assert page.count("<script") == 1


def test_a_stage_run_with_no_eval_yet_gets_the_sections_its_files_allow(tiny_run):
    (tiny_run / "eval.json").unlink()
    page = write_report(tiny_run).read_text(encoding="utf-8")
    assert "not finished" in page
    assert "<h2>Training</h2>" in page and "<h2>Forgetting and transfer</h2>" not in page
    # the overfitting verdict is worked out from metrics.jsonl when the run has not recorded one
    assert [
        "overfitting",
        "overfitting from step 30: validation loss rose from 1.6100 to 1.9000 while "
        "training loss kept falling",
        "metrics.jsonl, by this report",
    ] in table_rows(page, "Verdicts")
    assert "stopped early" not in page  # an unfinished run did not stop early, it has not finished


def tensor_parameters(path: Path) -> int:
    from safetensors import safe_open

    with safe_open(str(path), "pt") as tensors:
        return sum(math.prod(tensors.get_slice(k).get_shape()) for k in tensors.keys())  # noqa: SIM118 (no __iter__)


@pytest.mark.slow
def test_the_sft_report_shows_the_runs_own_numbers(stage_reports, smoke_demo):
    run = stage_reports["sft"]
    page = read_page(run)
    evaluation = json.loads((run / "eval.json").read_text())
    for title in (
        "Environment and recipe",
        "Training",
        "Learning-rate schedule",
        "Parameter budget",
        "Data",
        "Forgetting and transfer",
        "Results (sft)",
        "Samples",
    ):
        assert f"<h2>{title}</h2>" in page, title
    forgetting = key_values(page, "Forgetting: loss on general text")
    assert forgetting["loss before fine-tuning"] == fmt_number(evaluation["forgetting"]["loss_before"])
    assert forgetting["loss after fine-tuning"] == fmt_number(evaluation["forgetting"]["loss_after"])
    transfer = {r[0]: r[1] for r in table_rows(page, "Transfer: task validation loss, lower is better")}
    assert transfer["base model, zero-shot"] == fmt_number(
        evaluation["transfer"]["task_val_loss"]["base_zero_shot"]
    )
    assert html.escape(evaluation["overfitting"]["verdict"]) in page
    heldout = evaluation["answers"]["heldout"]
    assert f"heldout: exact match (n={heldout['after']['n']})" in page
    assert html.escape(heldout["after"]["samples"][0]["question"]) in page
    env = json.loads((run / "env.json").read_text())
    assert f"torch {env['packages']['torch']}" in page
    # the budget, counted by the stage on the model it trained (budget.json), is what the run saved: the
    # adapter's tensors are the trainable parameters, the merged model's the frozen base
    budget = key_values(page, BUDGET)
    source = smoke_demo.out / "sft"
    assert budget["trainable parameters"] == fmt_number(
        tensor_parameters(source / "adapter" / "adapter_model.safetensors")
    )
    assert budget["frozen parameters"] == fmt_number(
        tensor_parameters(source / "model" / "model.safetensors")
    )
    assert "<h3>heldout questions</h3>" in page
    assert_images_relative_and_present(page, run)
    assert set(image_sources(page)) == {"report-loss.png", "report-lr.png"}


# -- the validation loss reported is that of the weights the run saved ------------------------------------
def labelled_values(page: str) -> dict[str, str]:
    """Every two-cell row of the page's tables: label -> value."""
    import re

    cells = [
        [html.unescape(re.sub(r"<[^>]+>", "", c)) for c in re.findall(r"<t[hd][^>]*>(.*?)</t[hd]>", row)]
        for row in re.findall(r"<tr>(.*?)</tr>", page)
    ]
    return {row[0]: row[1] for row in cells if len(row) == 2}


def test_a_run_that_restored_its_best_weights_reports_their_validation_loss(tiny_run):
    # the tiny run restored step 30 (1.61) after evaluating 1.9 at step 60: 1.9 is not what it saved
    values = labelled_values(write_report(tiny_run).read_text(encoding="utf-8"))
    assert values["validation loss of the saved weights (best, step 30, restored)"] == "1.61"
    assert values["validation loss at the last evaluation (step 60)"] == "1.9"
    assert not [label for label in values if label.startswith("final validation loss")]


def test_a_run_that_kept_its_last_weights_reports_the_last_validation_loss(tiny_run):
    # the negative control: without restoring, the last evaluation is the saved weights'
    evaluation = json.loads((tiny_run / "eval.json").read_text(encoding="utf-8"))
    evaluation["overfitting"]["restored_best"] = False
    (tiny_run / "eval.json").write_text(json.dumps(evaluation), encoding="utf-8")
    values = labelled_values(write_report(tiny_run).read_text(encoding="utf-8"))
    assert not [label for label in values if "restored" in label and "1.61" in values[label]]
    saved = [v for label, v in values.items() if "saved weights" in label or label == "final validation loss"]
    assert saved and set(saved) == {"1.9"}


def test_a_stage_run_report_shows_intervals_paired_wording_and_leakage(tiny_run):
    golds, questions = [f"a{i}" for i in range(15)], [f"q{i}" for i in range(15)]
    before = score_answers(["no"] * 15, golds, questions)
    after = score_answers([*golds[:13], "no", "no"], golds, questions)
    evaluation = json.loads((tiny_run / "eval.json").read_text(encoding="utf-8"))
    evaluation["answers"] = {
        "validation": {
            "before": before.as_dict(),
            "after": after.as_dict(),
            "change": answer_changes(before, after, "validation, after vs before"),
        }
    }
    evaluation["leakage"] = {"validation": leakage(["x y z"], ["x y z", "a b c"])}
    evaluation["forgetting"]["change"] = {"wording": "general-text loss, after vs before: worse"}
    evaluation["transfer"]["paired"] = {"base_zero_shot": {"wording": "fine-tuned vs the base model: tie"}}
    (tiny_run / "eval.json").write_text(json.dumps(evaluation), encoding="utf-8")
    page = write_report(tiny_run).read_text(encoding="utf-8")
    rows = table_rows(page, "Greedy answers to the task's questions, before and after fine-tuning")
    assert ["validation: exact match (n=15)", "0.0% [0.0, 20.4]", "86.7% [62.1, 96.3]", "+86.7 pt"] in rows
    assert "exact match (validation, after vs before): better by 86.7 points (95% CI +" in page
    assert "general-text loss, after vs before: worse" in page
    assert "fine-tuned vs the base model: tie" in page
    verdicts = {r[0]: r[1] for r in table_rows(page, "Verdicts")}
    assert verdicts["leakage"].startswith("leakage: 1 of 2 validation examples (50.0%)")

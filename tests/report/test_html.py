"""The run report: each section a stage run has data for, showing the numbers in its files; the search,
cross-validation and pipeline pages from hand-made folders; and the page as headless Chromium shows it."""

from __future__ import annotations

import html
import json
import math
import re
import shutil
import struct
from pathlib import Path

import pytest

from peaufine.errors import RunDirError
from peaufine.report.html import (
    REPORT_NAME,
    fmt_metric,
    fmt_number,
    fmt_percent,
    report_kind,
    write_report,
)

# --------------------------------------------------------------------------------------------------
# Helpers


def image_sources(page: str) -> list[str]:
    return re.findall(r'<img[^>]*\bsrc="([^"]*)"', page)


def link_targets(page: str) -> list[str]:
    return re.findall(r'<a[^>]*\bhref="([^"#][^"]*)"', page)


def assert_images_relative_and_present(page: str, directory: Path) -> None:
    sources = image_sources(page)
    assert sources, "the page shows no image"
    for source in sources + link_targets(page):
        assert not source.startswith(("/", "file:", "http:", "https:")), source
        assert ":" not in source, source
    for source in sources:
        assert (directory / html.unescape(source)).is_file(), source


def table_rows(page: str, caption: str) -> list[list[str]]:
    """The body rows of the table with this caption, each as its cells' text."""
    start = page.index(f"<caption>{html.escape(caption)}</caption>")
    body = page[start : page.index("</table>", start)]
    body = body[body.index("<tbody>") :]
    rows = re.findall(r"<tr>(.*?)</tr>", body)
    return [
        [html.unescape(re.sub(r"<[^>]+>", "", c)) for c in re.findall(r"<t[hd][^>]*>(.*?)</t[hd]>", r)]
        for r in rows
    ]


def key_values(page: str, caption: str) -> dict[str, str]:
    return {row[0]: row[1] for row in table_rows(page, caption)}


def write_png(path: Path) -> None:
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (8, 8), (30, 120, 200)).save(path)


def png_size(path: Path) -> tuple[int, int]:
    width, height = struct.unpack(">II", path.read_bytes()[16:24])
    return width, height


def write_json(path: Path, data: object) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data), encoding="utf-8")


def write_jsonl(path: Path, rows: list[dict]) -> None:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")


BUDGET = "Parameters: model/config.json with the recipe's adapter and freezing, counted on the meta device"
INJECTED = "<script>alert('injected')</script>"

TINY_RECIPE = """stage: sft
model:
  source: /somewhere/base
train:
  max_steps: 100
  lr: 0.001
  min_lr: 0.0001
  schedule: cosine
  warmup_steps: 10
"""


@pytest.fixture
def tiny_run(tmp_path: Path) -> Path:
    """A hand-made sft run that stopped early at step 60 after overfitting from step 30."""
    run = tmp_path / "sft"
    run.mkdir()
    (run / "recipe.yaml").write_text(TINY_RECIPE, encoding="utf-8")
    rows = []
    for step, train, val in [
        (10, 2.0, 2.2),
        (20, 1.5, 1.8),
        (30, 1.2, 1.61),
        (40, 1.0, 1.7),
        (50, 0.8, 1.8),
        (60, 0.7, 1.9),
    ]:
        rows.append({"step": step, "lr": 0.001 * min(1.0, step / 10), "train_loss": train, "val_loss": val})
    write_jsonl(run / "metrics.jsonl", rows)
    write_json(
        run / "env.json",
        {"device": "cpu", "precision": "fp32", "world_size": 1, "threads": 3, "packages": {"torch": "9.9.9"}},
    )
    write_json(run / "prepared.json", {"examples": {"train": {"examples": 17, "truncated": 2}}})
    sample = {"question": "What is 2 & 3?", "answer": "5", "prediction": INJECTED}
    write_json(
        run / "eval.json",
        {
            "stage": "sft",
            "steps": 60,
            "overfitting": {
                "best_step": 30,
                "best_val_loss": 1.61,
                "onset_step": 30,
                "final_step": 60,
                "overfit": True,
                "final_val_loss": 1.9,
                "final_train_loss": 0.7,
                "generalisation_gap": 1.2,
                "restored_best": True,
                "verdict": "overfitting from step 30: validation loss rose from 1.6100 to 1.9000",
            },
            "forgetting": {
                "source": "general.txt",
                "loss_before": 0.5125808,
                "loss_after": 0.6431,
                "relative_change": 0.2547,
                "threshold": 0.1,
                "forgot": True,
                "verdict": "FORGETTING: general loss 0.5126 -> 0.6431 (+25.5%)",
            },
            "transfer": {
                "task_val_loss": {"fine_tuned": 1.61, "base_zero_shot": 4.25},
                "verdict": "fine-tuning improved on the base model zero-shot (4.2500)",
            },
            "answers": {
                "validation": {
                    "before": {"exact_match": 0.0, "f1": 0.1, "n": 1, "samples": [sample]},
                    "after": {
                        "exact_match": 1.0,
                        "f1": 1.0,
                        "n": 1,
                        "samples": [{**sample, "prediction": "5"}],
                    },
                }
            },
        },
    )
    return run


# --------------------------------------------------------------------------------------------------
# Numbers, kinds, errors


def test_numbers_are_shown_to_four_significant_digits_and_rates_as_percentages():
    assert fmt_number(1.9386351108551025) == "1.939"
    assert fmt_number(0.0003) == "0.0003"
    assert fmt_number(307200.0) == "307,200"
    assert fmt_number(81920) == "81,920"
    assert fmt_number(None) == "–"
    assert fmt_number(math.nan) == "nan"
    assert fmt_percent(0.8222222) == "82.2%"
    assert fmt_metric("val_accuracy", 0.5) == "50.0%"
    assert fmt_metric("exact_match", 0.375) == "37.5%"
    assert fmt_metric("val_loss", 0.5) == "0.5"  # a loss is never a percentage
    assert fmt_metric("forgetting (relative)", 0.03061) == "+3.1%"
    assert fmt_metric("forgetting.relative_change", -0.2) == "-20.0%"
    assert fmt_metric("forgetting (relative)", math.nan) == "nan"


def test_every_pipeline_headline_of_a_rate_reads_as_a_percentage():
    from peaufine.stages.dispatch import HEADLINES

    rates = {"fact_recall.accuracy", "heldout.accuracy", "validation.accuracy", "after.exact_match_greedy"}
    rates |= {
        key for pairs in HEADLINES.values() for _, key in pairs if "accuracy" in key or "exact_match" in key
    }
    for pairs in HEADLINES.values():
        for label, key in pairs:
            if key in rates:
                assert fmt_metric(label, 0.75) == "75.0%", f"{label!r} ({key}) would not read as a percentage"


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


# --------------------------------------------------------------------------------------------------
# A stage run, hand-made


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


# --------------------------------------------------------------------------------------------------
# Search, cross-validation, pipeline, hand-made


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


def table_rows_without_caption(page: str, index: int) -> list[list[str]]:
    body = re.findall(r"<table[^>]*>(.*?)</table>", page)[index]
    return [
        [html.unescape(re.sub(r"<[^>]+>", "", c)) for c in re.findall(r"<t[hd][^>]*>(.*?)</t[hd]>", r)]
        for r in re.findall(r"<tr>(.*?)</tr>", body)
    ]


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


# --------------------------------------------------------------------------------------------------
# The smoke pipeline's stage runs


@pytest.fixture(scope="module")
def stage_reports(smoke_demo, tmp_path_factory) -> dict[str, Path]:
    """Each smoke stage run, copied without weights and checkpoints (the report reads neither), reported."""
    out = tmp_path_factory.mktemp("reports")
    skip = shutil.ignore_patterns("checkpoints", "data", "world", "adapter", "*.safetensors")
    runs = {}
    for stage in ("pretrain", "sft", "reward", "dpo", "grpo"):
        runs[stage] = out / stage
        shutil.copytree(smoke_demo.out / stage, runs[stage], ignore=skip)
        write_report(runs[stage])
    return runs


def read_page(run: Path) -> str:
    return (run / REPORT_NAME).read_text(encoding="utf-8")


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
    # the budget, counted on the meta device from the config and recipe, is what the run saved: the
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


@pytest.mark.slow
def test_every_stage_report_shows_its_stage_results(stage_reports):
    pretrain = json.loads((stage_reports["pretrain"] / "eval.json").read_text())
    page = read_page(stage_reports["pretrain"])
    recall = pretrain["fact_recall"]
    assert f"{fmt_percent(recall['accuracy'])} ({recall['correct']} of {recall['total']})" in page
    assert html.escape(pretrain["samples"][0]["prompt"]) in page
    budget = key_values(page, BUDGET)
    assert budget["trainable share"] == "100.0%"  # full pretraining trains everything

    reward = json.loads((stage_reports["reward"] / "eval.json").read_text())
    rows = table_rows(read_page(stage_reports["reward"]), "Pairwise accuracy")
    assert [
        "heldout",
        str(reward["heldout"]["pairs"]),
        fmt_percent(reward["heldout"]["accuracy"]),
        fmt_number(reward["heldout"]["mean_margin"]),
    ] in rows

    dpo = json.loads((stage_reports["dpo"] / "eval.json").read_text())
    rows = table_rows(
        read_page(stage_reports["dpo"]),
        "The policy gives the chosen answer the higher likelihood (likelihood accuracy)",
    )
    key = "likelihood_accuracy_heldout"
    assert ["heldout", fmt_percent(dpo["before"][key]), fmt_percent(dpo["after"][key])] == rows[0][:3]

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


# --------------------------------------------------------------------------------------------------
# In a browser


def require_chromium() -> None:
    from peaufine.report.browser import find_chromium

    if find_chromium() is None:
        pytest.skip("chromium not installed: apt-get install chromium (Debian) to run the browser checks")


@pytest.mark.slow
def test_the_browser_check_sees_script_errors_and_broken_images(tiny_run, tmp_path):
    from peaufine.report.browser import check_in_browser

    require_chromium()
    broken_page = tmp_path / "broken.html"
    broken_page.write_text(
        '<!DOCTYPE html><html><body><img src="missing.png">'
        "<script>window.addEventListener('load', function () { deliberateMistake(); });</script>"
        "</body></html>",
        encoding="utf-8",
    )
    check = check_in_browser(broken_page)
    assert check.images_loaded is None  # a page without the report's load script
    assert any("deliberateMistake is not defined" in line for line in check.console_errors), check

    page = write_report(tiny_run)
    (tiny_run / "report-lr.png").unlink()
    check = check_in_browser(page)
    assert (check.images_loaded, check.images_broken, check.console_errors) == (1, 1, [])


@pytest.mark.slow
def test_the_sft_report_loads_in_a_browser_with_every_image_and_no_console_error(stage_reports, tmp_path):
    from peaufine.report.browser import check_in_browser, screenshot_report

    require_chromium()
    page = stage_reports["sft"] / REPORT_NAME
    check = check_in_browser(page)
    assert check.images_broken == 0
    assert check.images_loaded == len(image_sources(page.read_text(encoding="utf-8"))) > 0
    assert check.console_errors == []
    shot = tmp_path / "sft.png"
    screenshot_report(page, shot)
    assert png_size(shot) == (1280, 6000)
    assert shot.stat().st_size > 50_000  # a blank page of this size compresses to a few kB

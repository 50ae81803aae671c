"""An arm's numbers read from run folders built here: intervals are Wilson's on the run's n, k folds pool
their examples, per-question records pair up, and a stage without a task metric is n/a, not a crash."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from peaufine.drivers.compare.measure import (
    NA,
    headline,
    per_example,
    pooled_summary,
    run_summary,
    spread,
)
from peaufine.evaluate.stats import wilson_interval


def sft_run(folder: Path, exact: list[bool], before: float = 0.0, forgetting: float = 0.05) -> Path:
    folder.mkdir(parents=True)
    n = len(exact)
    after = {"exact_match": sum(exact) / n, "f1": sum(exact) / n, "n": n}
    evaluation = {
        "stage": "sft",
        "steps": 4,
        "tokens_seen": 800,
        "train_seconds": 2.0,
        "answers": {"validation": {"before": {"exact_match": before, "f1": before, "n": n}, "after": after}},
        "overfitting": {"best_step": 4, "onset_step": None, "generalisation_gap": 0.2, "overfit": False},
        "forgetting": {
            "loss_before": 2.0,
            "loss_after": 2.0 * (1 + forgetting),
            "relative_change": forgetting,
        },
    }
    (folder / "eval.json").write_text(json.dumps(evaluation), encoding="utf-8")
    (folder / "budget.json").write_text(json.dumps({"parameters": {"trainable": 10, "total": 100}}))
    (folder / "metrics.jsonl").write_text('{"step": 4, "val_loss": 1.5}\n', encoding="utf-8")
    lines = [
        {
            "split": "validation",
            "when": "after",
            "question": f"{folder.name}-q{i}",
            "answer": "a",
            "prediction": "a" if e else "b",
            "exact": e,
            "f1": float(e),
        }
        for i, e in enumerate(exact)
    ]
    (folder / "answers.jsonl").write_text("".join(json.dumps(line) + "\n" for line in lines))
    return folder


def test_a_runs_rate_has_wilsons_interval_on_its_n_and_its_costs(tmp_path):
    run = sft_run(tmp_path / "run", [True] * 12 + [False] * 8)
    summary = run_summary(run, "sft", "lora", {"peak_rss_mb": 512.0, "seconds": 9.0})
    after = summary["task"]["validation.after"]["exact_match"]
    expected = wilson_interval(12, 20)
    assert (after["value"], after["n"], after["low"], after["high"]) == (0.6, 20, expected.low, expected.high)
    f1 = summary["task"]["validation.after"]["f1"]
    assert f1["method"] == "bootstrap" and f1["low"] <= 0.6 <= f1["high"]
    assert summary["cost"] == {
        "trainable_parameters": 10,
        "total_parameters": 100,
        "peak_rss_mb": 512.0,
        "process_seconds": 9.0,
        "train_seconds": 2.0,
        "tokens_per_second": 400.0,
    }
    assert summary["forgetting"]["relative_change"] == 0.05 and summary["val_loss"] == 1.5
    assert run_summary(run, "sft", "scratch", None)["forgetting"]["relative_change"] == NA
    assert headline(summary) == 0.6


def test_folds_pool_their_examples(tmp_path):
    first = sft_run(tmp_path / "fold-0", [True] * 9 + [False])  # 0.9 on 10
    second = sft_run(tmp_path / "fold-1", [True] * 10 + [False] * 20)  # 1/3 on 30
    pooled = pooled_summary([first, second], "sft", "full", None)
    after = pooled["task"]["validation.after"]["exact_match"]
    assert after["n"] == 40 and after["value"] == pytest.approx(19 / 40)  # not the mean of 0.9 and 1/3
    assert (after["low"], after["high"]) == pytest.approx(
        (wilson_interval(19, 40).low, wilson_interval(19, 40).high)
    )
    assert pooled["folds"] == 2 and pooled["cost"]["trainable_parameters"] == 10
    assert len(per_example(first, "sft").primary) == 10


def test_a_stage_without_a_task_metric_is_na(tmp_path):
    run = tmp_path / "dpo"
    run.mkdir()
    (run / "eval.json").write_text(json.dumps({"stage": "dpo", "steps": 3}), encoding="utf-8")
    summary = run_summary(run, "dpo", "lora", None)
    assert summary["task"]["metric"] is None and headline(summary) is None
    assert summary["forgetting"]["relative_change"] == NA


def test_spread_needs_two_values():
    assert spread([0.5, None, 0.2, 0.4]) == pytest.approx(0.3)
    assert spread([0.5, None]) == NA


def test_an_arm_that_trained_every_parameter_under_a_partial_strategy_is_flagged():
    from peaufine.drivers.compare.run import ignored_strategy

    def entry(strategy, trainable, total=100):
        return {"strategy": strategy, "cost": {"trainable_parameters": trainable, "total_parameters": total}}

    assert "lora strategy's settings" in ignored_strategy(entry("lora", 100))
    assert ignored_strategy(entry("lora", 10)) is None
    assert ignored_strategy(entry("full", 100)) is None
    assert ignored_strategy(entry("scratch", 100)) is None
    assert ignored_strategy(entry("freeze", NA)) is None


def test_an_adapter_of_another_kind_than_the_strategy_is_flagged(tmp_path):
    from peaufine.drivers.compare.run import adapter_mismatch

    def run(name, peft_type):
        folder = tmp_path / name
        (folder / "adapter").mkdir(parents=True)
        (folder / "adapter" / "adapter_config.json").write_text(json.dumps({"peft_type": peft_type}))
        return folder

    assert "saved a LORA adapter, not ia3" in adapter_mismatch(run("a", "LORA"), "ia3")
    assert "not bottleneck" in adapter_mismatch(run("b", "LORA"), "bottleneck")
    assert adapter_mismatch(run("c", "IA3"), "ia3") is None
    assert adapter_mismatch(run("d", "LORA"), "dora") is None
    assert adapter_mismatch(tmp_path / "no-adapter", "lora") is None


def test_a_half_done_run_resumes_only_from_a_complete_checkpoint(tmp_path):
    """A run killed before its first checkpoint leaves checkpoints/ with at most a staging folder: it
    restarts (--overwrite), as --resume would fail; with a step-N checkpoint it resumes."""
    from peaufine.drivers.compare.runner import start_flag
    from peaufine.rundir import RunDir, RunMarker

    folder = tmp_path / "run"
    assert start_flag(folder, "stage: sft\n") is None
    folder.mkdir()
    RunMarker.new("sft", ["recipe.yaml", "checkpoints"]).write(folder)
    run = RunDir(folder)
    run.recipe.write_text("stage: sft\n", encoding="utf-8")
    (run.checkpoints / ".tmp-step-150").mkdir(parents=True)  # killed while writing its first one
    assert start_flag(folder, "stage: sft\n") == "--overwrite"
    (run.checkpoints / "step-100").mkdir()
    assert start_flag(folder, "stage: sft\n") == "--resume"
    assert start_flag(folder, "stage: dpo\n") == "--overwrite"  # another recipe: start again

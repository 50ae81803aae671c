"""A finished stage's results: eval.json written by one function and read back by one, the numbers a run
reports by name (what a search optimises and cross-validation averages), and each stage's headlines."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from peaufine.errors import RunDirError
from peaufine.nested import flatten_numbers
from peaufine.rundir import RunDir, read_metrics, write_json


def write_evaluation(run: RunDir, evaluation: dict[str, Any]) -> None:
    """The stage's results into eval.json, atomically; eval.json is what marks a run as finished."""
    write_json(run.eval, evaluation)


def read_evaluation(run_dir: Path) -> dict[str, Any] | None:
    """What a finished run's eval.json holds; None while the run has not finished."""
    path = RunDir(Path(run_dir)).eval
    if not path.is_file():
        return None
    return json.loads(path.read_text(encoding="utf-8"))


# the numbers each stage's results lead with, as (label, run_metrics name), in order: pipeline.json
# and the cross-validation table show these, cv.json and the reports have all the others
HEADLINES: dict[str, tuple[tuple[str, str], ...]] = {
    "pretrain": (("validation loss", "val_loss"), ("fact recall", "fact_recall.accuracy")),
    "sft": (
        ("validation loss", "val_loss"),
        ("exact match (validation)", "answers.validation.after.exact_match"),
        ("exact match (held-out facts)", "answers.heldout.after.exact_match"),
        ("forgetting (relative)", "forgetting.relative_change"),
    ),
    "classify": (
        ("validation loss", "val_loss"),
        ("accuracy", "validation.accuracy"),
        ("macro F1", "validation.macro_f1"),
        ("Pearson r", "validation.pearson_r"),
    ),
    "reward": (
        ("validation loss", "val_loss"),
        ("pairwise accuracy (validation)", "validation.accuracy"),
        ("pairwise accuracy (held-out)", "heldout.accuracy"),
        ("mean margin (validation)", "validation.mean_margin"),
    ),
    "dpo": (
        ("preference accuracy (validation), before", "before.likelihood_accuracy_validation"),
        ("preference accuracy (validation), after", "after.likelihood_accuracy_validation"),
    ),
    "rl": (
        ("sampled reward, before", "before.reward_sampled"),
        ("sampled reward, after", "after.reward_sampled"),
        ("exact match (greedy)", "after.exact_match_greedy"),
        ("KL to reference", "final_kl"),
    ),
}


def run_metrics(run_dir: Path) -> dict[str, float]:
    """The numbers a finished run reports, by name: what a search optimises and CV averages.

    From metrics.jsonl: `val_loss` (the best validation loss, the weights a run keeps by default),
    `final_val_loss`, `train_loss` (the last logged), `steps`; plus the last value of every other
    logged metric under its own name (`val_accuracy`, `reward_mean`, ...). From eval.json: every
    number under its dotted path (`forgetting.relative_change`, ...).
    """
    run_dir = Path(run_dir)
    metrics_file = RunDir(run_dir).metrics
    evaluation = read_evaluation(run_dir)
    if evaluation is None:
        raise RunDirError(f"{run_dir}: no eval.json; the run did not finish")
    found: dict[str, float] = {}
    if metrics_file.is_file():
        rows = read_metrics(metrics_file)
        for row in rows:
            for key, value in row.items():
                if isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value):
                    found[key] = float(value)
        val = [r["val_loss"] for r in rows if isinstance(r.get("val_loss"), int | float)]
        if val:
            found["final_val_loss"] = float(val[-1])
            found["val_loss"] = float(min(val))
        found["steps"] = float(max((r.get("step", 0) for r in rows), default=0))
    found.update(flatten_numbers(evaluation))
    return found

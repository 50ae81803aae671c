"""Run any stage from its recipe, and read back the numbers a finished run reports.

Search, cross-validation and pipelines drive stages without knowing which one they run: they go
through `run_stage`, and compare runs through `run_metrics`.
"""

from __future__ import annotations

import importlib
import json
import math
from pathlib import Path
from typing import TYPE_CHECKING, Any

from peaufine.errors import RunDirError
from peaufine.nested import dotted_items

if TYPE_CHECKING:
    from peaufine.engine.track import Tracker
    from peaufine.recipe import Recipe

# stage -> (module, function); imported only when that stage runs
STAGE_RUNNERS: dict[str, tuple[str, str]] = {
    "pretrain": ("peaufine.stages.pretrain", "run_pretrain"),
    "sft": ("peaufine.stages.sft", "run_sft"),
    "classify": ("peaufine.stages.classify", "run_classify"),
    "reward": ("peaufine.stages.reward", "run_reward"),
    "dpo": ("peaufine.stages.dpo", "run_dpo"),
    "rl": ("peaufine.stages.rl", "run_rl"),
}


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


def run_stage(
    recipe: Recipe,
    out: Path,
    *,
    overwrite: bool = False,
    resume: bool = False,
    tracker: Tracker | None = None,
) -> dict[str, Any]:
    """Run `recipe` (whatever its stage) into `out`; returns the run's evaluation (eval.json)."""
    module, function = STAGE_RUNNERS[recipe.stage]
    runner = getattr(importlib.import_module(module), function)
    result = runner(recipe, Path(out), overwrite=overwrite, resume=resume, tracker=tracker)
    return result.evaluation


def flatten_numbers(data: dict[str, Any]) -> dict[str, float]:
    """Every finite number in a nested mapping, under its dotted key path (lists by index)."""
    return {
        key: float(value)
        for key, value in dotted_items(data, into_lists=True)
        if isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)
    }


def run_metrics(run_dir: Path) -> dict[str, float]:
    """The numbers a finished run reports, by name: what a search optimises and CV averages.

    From metrics.jsonl: `val_loss` (the best validation loss, the weights a run keeps by default),
    `final_val_loss`, `train_loss` (the last logged), `steps`; plus the last value of every other
    logged metric under its own name (`val_accuracy`, `reward_mean`, ...). From eval.json: every
    number under its dotted path (`forgetting.relative_change`, ...).
    """
    from peaufine.engine.track import read_metrics

    run_dir = Path(run_dir)
    metrics_file = run_dir / "metrics.jsonl"
    eval_file = run_dir / "eval.json"
    if not eval_file.is_file():
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
    found.update(flatten_numbers(json.loads(eval_file.read_text(encoding="utf-8"))))
    return found

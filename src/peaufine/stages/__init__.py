"""Stages: each turns a recipe into a run folder (pretrain, sft, classify, reward, dpo, rl). The registry
here runs any of them by the recipe's stage, so drivers never need to know which one they run."""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import TYPE_CHECKING, Any

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


def check_stage(recipe: Recipe) -> None:
    """What `recipe`'s stage refuses before any folder exists (StageSpec.refuse), for the drivers that
    make a folder of their own (cross-validation, search) before the stage runs."""
    module, _ = STAGE_RUNNERS[recipe.stage]
    importlib.import_module(module).STAGE.refuse(recipe)


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

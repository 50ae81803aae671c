"""k-fold cross-validation of a stage: one run per fold, each metric's mean ± std across folds."""

# On small data one validation split is one draw; k folds say how much of a result is the split.
# Folds split by example (by prompt for preference data), see `peaufine.data.folds`. Each fold is a
# complete run in <out>/fold-<i>, kept; a fold that already finished with the same recipe is reused,
# so an interrupted cross-validation continues where it stopped.

from __future__ import annotations

import math
import statistics
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from peaufine.engine.track import Tracker
from peaufine.errors import RecipeError, RunDirError
from peaufine.report.pages.write import write_report
from peaufine.results import HEADLINES, run_metrics
from peaufine.rundir import RunDir, finished_with, refuse_strangers, write_json
from peaufine.stages import check_stage, run_stage

if TYPE_CHECKING:
    from peaufine.recipe import Recipe

CV_STAGES = ("sft", "classify", "reward")
CV_FILES = {"cv.json", "report.html"}


@dataclass
class CvResult:
    out: Path
    stage: str
    folds: int
    metrics: dict[str, dict[str, Any]]
    reused: list[int] = field(default_factory=list)
    seconds: float = 0.0


def fold_recipe(recipe: Recipe, folds: int, fold: int) -> Recipe:
    folded = recipe.model_copy(deep=True)
    folded.data.cross_validation.folds = folds
    folded.data.cross_validation.fold = fold
    return folded


def summarise(per_fold: list[dict[str, float]]) -> dict[str, dict[str, Any]]:
    """mean, sample std (0 for one fold) and per-fold values of every metric all folds report."""
    common = set(per_fold[0]).intersection(*per_fold[1:])
    summary = {}
    for name in sorted(common):
        values = [fold[name] for fold in per_fold]
        std = statistics.stdev(values) if len(values) > 1 else 0.0
        summary[name] = {"mean": statistics.fmean(values), "std": std, "values": values}
    return summary


def check_out(out: Path, overwrite: bool) -> None:

    if RunDir(out).recipe.is_file():
        raise RunDirError(f"{out} holds a single run, not a cross-validation; choose another --out")
    # --overwrite re-runs the folds and leaves whatever else is there alone
    refuse_strangers(
        out,
        "a cross-validation's",
        lambda name: overwrite or name.startswith("fold-") or name in CV_FILES,
    )


def run_crossval(
    recipe: Recipe,
    out: Path,
    folds: int,
    *,
    overwrite: bool = False,
    tracker: Tracker | None = None,
) -> CvResult:
    """Run `recipe` once per fold into <out>/fold-<i>; write cv.json and report.html in <out>."""

    if recipe.stage not in CV_STAGES:
        raise RecipeError(
            f"--folds: cross-validation runs stages {', '.join(CV_STAGES)}; this recipe is '{recipe.stage}'"
        )
    if folds < 2:
        raise RecipeError(f"--folds {folds}: cross-validation needs at least 2 folds")
    out = Path(out)
    check_out(out, overwrite)
    check_stage(fold_recipe(recipe, folds, 0))  # a bad model or recipe is refused before the folder
    out.mkdir(parents=True, exist_ok=True)
    tracker = tracker or Tracker()
    start = time.perf_counter()
    per_fold: list[dict[str, float]] = []
    reused: list[int] = []
    for fold in range(folds):
        spec = fold_recipe(recipe, folds, fold)
        run_dir = out / f"fold-{fold}"
        if not overwrite and finished_with(run_dir, spec.to_yaml()):
            tracker.say(f"fold {fold + 1}/{folds}: finished earlier with this recipe, reused ({run_dir})")
            reused.append(fold)
        else:
            tracker.say(f"-> {run_dir}", heading=f"fold {fold + 1}/{folds}")
            run_stage(spec, run_dir, overwrite=run_dir.exists(), tracker=tracker)
        per_fold.append(run_metrics(run_dir))
    metrics = summarise(per_fold)
    result = CvResult(out, recipe.stage, folds, metrics, reused, time.perf_counter() - start)
    write_json(
        out / "cv.json",
        {
            "stage": recipe.stage,
            "folds": folds,
            "seed": recipe.train.seed,
            "headline": [name for _, name in HEADLINES[recipe.stage] if name in metrics],
            "metrics": metrics,
            "runs": [f"fold-{i}" for i in range(folds)],
            "reused": reused,
            "seconds": result.seconds,
        },
    )

    write_report(out)
    return result


def cv_table(result: CvResult) -> Any:
    """The headline metrics as a rich table: mean ± std, then each fold's value."""
    from rich.table import Table

    table = Table(title=f"{result.stage}: {result.folds}-fold cross-validation ({result.out})")
    table.add_column("metric")
    table.add_column("mean ± std", justify="right")
    for i in range(result.folds):
        table.add_column(f"fold {i}", justify="right")
    names = [name for _, name in HEADLINES[result.stage] if name in result.metrics]
    for name in names:
        entry = result.metrics[name]
        table.add_row(
            name,
            f"{entry['mean']:.4f} ± {entry['std']:.4f}",
            *(f"{v:.4f}" if math.isfinite(v) else "-" for v in entry["values"]),
        )
    return table

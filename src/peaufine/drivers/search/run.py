"""`peaufine search`: each trial a run of the user's recipe with the trial's values set, in
<out>/trials/trial-NNNN; the study opened or joined, the trials run, the outputs written."""

from __future__ import annotations

import copy
import gc
import math
import os
import random
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import peaufine.results
import peaufine.stages
from peaufine.drivers.search.loop import PruningSink, TrialFailed, optimize
from peaufine.drivers.search.metric import metric_direction, parse_metric
from peaufine.drivers.search.outputs import (
    baseline_row,
    best_row,
    plot_history,
    plot_params,
    short_value,
    trial_rows,
    trials_table,
    write_outputs,
)
from peaufine.drivers.search.space import Space, baseline_params, check_space_keys, load_space, recipe_with
from peaufine.drivers.search.study import (
    METRICS_ATTR,
    PRUNERS,
    SAMPLERS,
    finished_trials,
    make_pruner,
    make_sampler,
    open_storage,
    open_study,
    quiet_optuna,
)
from peaufine.engine.track import Tracker, add_sink, detach_sinks
from peaufine.errors import RecipeError, RunDirError
from peaufine.recipe import apply_overrides, read_yaml, validate_recipe
from peaufine.report.pages.write import write_report
from peaufine.rundir import RunDir

if TYPE_CHECKING:
    import optuna


@dataclass
class SearchResult:
    out: Path
    best_trial: int | None
    best_value: float | None
    best_params: dict[str, Any]
    baseline_value: float | None
    trials: list[dict[str, Any]]
    seconds: float


def resolve_trials(trials: int | None, sampler: str, space: Space) -> int:
    if sampler == "grid":
        size = math.prod(len(d.grid_values()) for d in space.values())
        if trials is None:
            return size
        if trials > size:
            raise RecipeError(f"--trials {trials}: the grid has only {size} points")
    if trials is None:
        raise RecipeError(f"--trials is needed with --sampler {sampler}")
    if trials < 1:
        raise RecipeError(f"--trials {trials}: at least 1")
    return trials


def run_search(
    recipe_path: Path,
    space_path: Path,
    out: Path,
    *,
    trials: int | None = None,
    sampler: str = "tpe",
    metric: str = "val_loss",
    direction: str | None = None,
    prune: str = "none",
    storage: str | None = None,
    seed: int = 0,
    startup_trials: int | None = None,
    overrides: Sequence[str] = (),
    tracker: Tracker | None = None,
    heartbeat: float = 10.0,
    grace: float | None = None,
) -> SearchResult:
    """Search the space for the recipe values that optimise `metric`; each trial is a run of the
    recipe in <out>/trials/trial-NNNN. Running it again continues the search in <out>; several
    processes started with the same arguments work on it together.

    `trials` is the number of finished trials wanted (completed, pruned, or failed because of their
    values); for the grid sampler it defaults to the grid's size. Trial 0 (tpe, random) runs the
    recipe's own values: the baseline a search must beat.
    """

    start = time.perf_counter()
    tracker = tracker or Tracker()
    out, recipe_path, space_path = Path(out), Path(recipe_path), Path(space_path)

    base = apply_overrides(read_yaml(recipe_path), list(overrides))
    recipe = validate_recipe(copy.deepcopy(base), str(recipe_path))
    space = load_space(space_path)
    check_space_keys(space, base, str(space_path))
    expression = parse_metric(metric)
    direction = metric_direction(expression, direction)
    if sampler not in SAMPLERS:
        raise RecipeError(f"--sampler {sampler!r}: use one of {', '.join(SAMPLERS)}")
    if prune not in PRUNERS:
        raise RecipeError(f"--prune {prune!r}: use one of {', '.join(PRUNERS)}")
    if prune != "none" and direction == "maximize":
        raise RecipeError(
            f"--prune {prune}: pruning compares validation losses, which are minimised, but "
            f"{expression.text!r} is maximised; use --prune none"
        )
    n_trials = resolve_trials(trials, sampler, space)
    baseline, notes = baseline_params(space, recipe) if sampler != "grid" else ({}, [])
    grace = grace if grace is not None else 2 * heartbeat
    if storage is None and out.is_dir() and any(out.iterdir()) and not (out / "study.journal").exists():
        raise RunDirError(f"{out} is not empty and holds no search (no study.journal); choose another --out")
    peaufine.stages.check_stage(recipe)  # a bad model or recipe is refused before the folder exists
    out.mkdir(parents=True, exist_ok=True)

    config = {
        "recipe": recipe.to_yaml(),
        "space": {key: dim.spec() for key, dim in space.items()},
        "metric": expression.text,
        "direction": direction,
        "sampler": sampler,
    }
    with quiet_optuna():
        study_storage = open_storage(out, storage, heartbeat=heartbeat, grace=grace)
        study, created = open_study(study_storage, config, direction=direction, baseline=baseline, out=out)
        # A worker joining a study, or a rerun, must not replay the sampler's first draws: the
        # trials they made are in the study already. The grid is shuffled the same in every worker.
        joined = len(study.get_trials(deepcopy=False))
        worker_seed = seed
        if not created and sampler != "grid":
            worker_seed = random.Random(f"{seed}:{joined}:{os.getpid()}").randrange(2**31)
        study.sampler = make_sampler(
            sampler, space, seed=worker_seed, trials=n_trials, startup_trials=startup_trials
        )
        # judged from a quarter of the run on, and never during the learning-rate warm-up
        study.pruner = make_pruner(prune, max(recipe.train.warmup_steps, recipe.train.max_steps // 4))
    for note in notes:
        tracker.warn(f"trial 0 (the recipe as it is): {note}")
    done = len(finished_trials(study))
    tracker.say(
        f"search: {n_trials} trials of {recipe_path} over {', '.join(space)} by {sampler}, "
        f"{direction} {expression.text}" + (f"; {done} finished before" if done else "")
    )

    def objective(params: dict[str, Any], trial: optuna.Trial) -> float:
        run_dir = out / "trials" / f"trial-{trial.number:04d}"
        try:
            trial_recipe = recipe_with(base, params, f"{recipe_path} (trial {trial.number})")
        except RecipeError as exc:
            raise TrialFailed(f"these values make an invalid recipe: {exc}") from None
        metrics_path = RunDir(run_dir).metrics
        if prune != "none":
            add_sink(metrics_path, PruningSink(trial))
        try:
            peaufine.stages.run_stage(trial_recipe, run_dir, overwrite=True, tracker=tracker)
        finally:
            detach_sinks(metrics_path)
            gc.collect()  # the trial's model and data: free them before the next trial builds its own
        metrics = peaufine.results.run_metrics(run_dir)
        value = expression.value(metrics, where=f"trial {trial.number} ({run_dir})")
        trial.set_user_attr(METRICS_ATTR, {name: metrics[name] for name in expression.names})
        return value

    def summary(rows: list[dict[str, Any]]) -> tuple[dict[str, Any], str | None]:
        best = best_row(rows, direction)
        base_row = baseline_row(rows) if sampler != "grid" else None
        data = {
            "metric": expression.text,
            "direction": direction,
            "sampler": sampler,
            "prune": prune,
            "recipe": str(recipe_path),
            "overrides": list(overrides),
            "space": config["space"],
            "target": n_trials,
            "trials": sum(r["state"] in ("COMPLETE", "PRUNED") or bool(r["error"]) for r in rows),
            "best": None if best is None else {k: best[k] for k in ("trial", "value", "params", "run")},
            "baseline": None
            if base_row is None
            else {"trial": base_row["trial"], "value": base_row["value"]},
            "baseline_notes": notes,
            "seconds": round(time.perf_counter() - start, 3),
        }
        text = None
        if best is not None:
            header = (
                f"# peaufine search: the best of {data['trials']} trials, {direction} {expression.text}\n"
                f"# = {best['value']:.6g} (trial {best['trial']}, {best['run']})\n"
                + "".join(f"#   {k}: {short_value(v)}\n" for k, v in best["params"].items())
            )
            text = header + recipe_with(base, best["params"], str(recipe_path)).to_yaml()
        return data, text

    def record(study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
        rows = trial_rows(study)
        data, text = summary(rows)
        write_outputs(out, rows, data, text)
        shown = "" if trial.value is None else f" {expression.text} = {trial.value:.4f}"
        best = data["best"]
        best_text = f"; best {best['value']:.4f} (trial {best['trial']})" if best else ""
        tracker.say(f"trial {trial.number}: {trial.state.name.lower()}{shown}{best_text}")

    try:
        optimize(
            study,
            space,
            objective,
            n_trials,
            heartbeat=heartbeat,
            grace=grace,
            tracker=tracker,
            on_trial_end=record,
        )
    finally:
        rows = trial_rows(study)
        data, text = summary(rows)
        write_outputs(out, rows, data, text)

    if any(r["value"] is not None for r in rows):
        plot_history(rows, out / "history.png", expression.text, direction, data["baseline"])
        plot_params(rows, space, out / "params.png", expression.text)
    if tracker.enabled:
        tracker.console.print(trials_table(rows, list(space), expression.text, direction))

    write_report(out)
    best = data["best"]
    return SearchResult(
        out=out,
        best_trial=None if best is None else best["trial"],
        best_value=None if best is None else best["value"],
        best_params={} if best is None else dict(best["params"]),
        baseline_value=None if data["baseline"] is None else data["baseline"]["value"],
        trials=rows,
        seconds=time.perf_counter() - start,
    )

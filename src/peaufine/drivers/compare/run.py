"""`peaufine compare`: validate the study, make its base model once, search each arm's learning rate
when asked, run every arm x fraction x seed, and measure them into compare.json."""

# Order: everything is validated (the study, the base and every arm's recipe) before OUT exists; then
# the base run (OUT/base), the LR search (at the search fraction, the first seed), the arms' runs, each
# a child process. A finished run is never re-run: an interrupted study continues where it stopped.

from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from peaufine.drivers.compare.arms import (
    LABELS,
    ArmRun,
    arm_lr,
    arm_recipe,
    layer_count,
    lr_grid,
    run_folder,
)
from peaufine.drivers.compare.measure import (
    NA,
    TASK_METRICS,
    headline,
    mean_interval,
    paired,
    per_example_of,
    pooled_summary,
    rank_arms,
    spread,
)
from peaufine.drivers.compare.runner import ProcessRecord, records_json, run_all
from peaufine.drivers.compare.study import Search
from peaufine.drivers.compare.verdict import VerdictRow, transfer_verdict, verdict
from peaufine.drivers.crossval import fold_recipe
from peaufine.engine.track import Tracker
from peaufine.errors import PeaufineError, RecipeError
from peaufine.models.build import minilm_path, resolve_source
from peaufine.recipe import validate_recipe
from peaufine.report.pages.write import write_report
from peaufine.rundir import RunDir, refuse_strangers, write_json
from peaufine.stages import check_stage

if TYPE_CHECKING:
    from peaufine.drivers.compare.study import Arm, LoadedStudy
    from peaufine.recipe import Recipe

OUTPUT_NAMES = {"arms", "base", "recipes", "logs", "processes", "compare.json", "report.html", "plots"}


@dataclass
class CompareResult:
    out: Path
    data: dict[str, Any]  # compare.json's contents
    seconds: float


def _model_folder(source: str) -> Path | None:
    """The model folder of a task's model.source (minilm: the packaged MiniLM), None when absent."""
    try:
        if source == "minilm":
            return minilm_path()
        return resolve_source(source).model_dir
    except PeaufineError:
        return None


def _check_data(recipe: Recipe, source: str) -> None:
    """The task's data files exist (checked here: a study of absent data must not make a folder)."""
    given = recipe.data.source
    if given == "world":
        return
    paths = [given] if isinstance(given, str) else given
    missing = [p for p in paths if not Path(p).exists()]
    if missing:
        raise RecipeError(
            f"{source}: task data.source: {', '.join(missing)} not found (relative paths start from the "
            f"current folder, {Path.cwd()}); fetch the data or point data.source at it"
        )


@dataclass
class Plan:
    """The study resolved: the base recipe, the model source of every arm, its layers, and the LR each
    arm trains with when it does not search."""

    base: Recipe | None
    model_source: str | None
    searching: bool


def check_study(loaded: LoadedStudy, out: Path, search: bool | None) -> Plan:
    """Everything a study can get wrong, refused before OUT exists: the base and every arm's recipe
    (at every fraction, seed and LR it will run with), the task's data, and what OUT holds."""
    study, source = loaded.study, loaded.source
    searching = (study.search is not None and study.search.enabled) if search is None else search
    if searching and study.search is None:
        study.search = Search()
    base = None
    model_source = None if loaded.base_run is None else str(loaded.base_run)
    if loaded.base is not None:
        base = validate_recipe(loaded.base, source=f"{source}: base")
        check_stage(base)
        model_source = str(Path(out).resolve() / "base")
    layers = _layers(loaded, model_source)
    for arm in study.arms:
        lrs: list[float | None] = [arm_lr(arm)]
        if searching and arm.strategy != "few_shot":
            lrs = list(lr_grid(arm, study.search.lrs_per_arm))  # type: ignore[union-attr]
        for fraction in study.fractions:
            for seed in study.seeds:
                for lr in lrs:
                    recipe = arm_recipe(
                        loaded,
                        arm,
                        fraction=fraction,
                        seed=seed,
                        lr=lr,
                        model_source=model_source,
                        layers=layers,
                    )
        if base is None:
            check_stage(recipe if study.folds is None else fold_recipe(recipe, study.folds, 0))
        _check_data(recipe, source)
    refuse_strangers(Path(out), "a comparison's", lambda name: name in OUTPUT_NAMES or name.startswith("."))
    return Plan(base, model_source, searching)


def _base_run(plan: Plan, out: Path) -> ArmRun:
    assert plan.base is not None
    return ArmRun("base", "base", 1.0, plan.base.train.seed, None, Path(out) / "base", plan.base)


def _layers(loaded: LoadedStudy, model_source: str | None) -> int | None:
    """The layer count of the arms' model (the freeze strategy freezes the lower half of them)."""
    return layer_count(_model_folder(model_source or str(loaded.task.get("model", {}).get("source", ""))))


def _arm_run(
    loaded: LoadedStudy,
    plan: Plan,
    out: Path,
    arm: Arm,
    *,
    fraction: float,
    seed: int,
    lr: float | None,
    searching: bool,
) -> ArmRun:
    """One run of `arm`: its folder (under lr-<lr> when it is a search's run) and its recipe."""
    recipe = arm_recipe(
        loaded,
        arm,
        fraction=fraction,
        seed=seed,
        lr=lr,
        model_source=plan.model_source,
        layers=_layers(loaded, plan.model_source),
    )
    folder = run_folder(out, arm.name, fraction, seed, lr, searching=searching)
    return ArmRun(
        arm.name,
        arm.strategy,
        fraction,
        seed,
        lr,
        folder,
        recipe,
        searching=searching,
        folds=loaded.study.folds,
    )


def _runs_of(loaded: LoadedStudy, plan: Plan, out: Path, best: dict[str, float]) -> list[ArmRun]:
    """Every arm x fraction, each seed at the largest fraction and the first elsewhere; with a search,
    the search fraction's first seed is the search's run at the arm's best LR (no second run of it)."""
    study = loaded.study
    runs = []
    for arm in study.arms:
        lr = best.get(arm.name, arm_lr(arm))
        for fraction in study.fractions:
            # the seeds measure the spread of the headline (all the data); the learning curve's
            # smaller fractions need one seed each, which keeps a 3-seed study affordable
            for seed in study.seeds if fraction == max(study.fractions) else study.seeds[:1]:
                searched = arm.name in best and study.search is not None
                reuse = searched and fraction == study.search.fraction and seed == study.seeds[0]  # type: ignore[union-attr]
                runs.append(
                    _arm_run(loaded, plan, out, arm, fraction=fraction, seed=seed, lr=lr, searching=reuse)
                )
    return runs


def _search_runs(loaded: LoadedStudy, plan: Plan, out: Path) -> dict[str, list[ArmRun]]:
    """Each arm's LR grid at the search fraction and the first seed (the few-shot arm trains nothing)."""
    study = loaded.study
    assert study.search is not None
    seed, fraction, points = study.seeds[0], study.search.fraction, study.search.lrs_per_arm
    return {
        arm.name: [
            _arm_run(loaded, plan, out, arm, fraction=fraction, seed=seed, lr=lr, searching=True)
            for lr in lr_grid(arm, points)
        ]
        for arm in study.arms
        if arm.strategy != "few_shot"
    }


def run_compare(
    loaded: LoadedStudy, out: Path, *, search: bool | None = None, tracker: Tracker | None = None
) -> CompareResult:
    """Run the study into `out` (resuming what is there) and write compare.json; see the module."""
    out = Path(out)
    plan = check_study(loaded, out, search)
    tracker = tracker or Tracker()
    start = time.perf_counter()
    out.mkdir(parents=True, exist_ok=True)
    records: dict[str, ProcessRecord] = {}
    if plan.base is not None:
        base = _base_run(plan, out)
        tracker.say(f"pretrain -> {base.folder} (once; every arm starts from it)", heading="base:")
        records.update(run_all([base], out, 1, tracker))
        if records[base.key].status == "failed":
            raise RecipeError(
                f"{loaded.source}: base: the base model's run failed: {records[base.key].error}"
            )
    best: dict[str, float] = {}
    grid_metrics: dict[str, dict[str, Any]] = {}
    if plan.searching:
        grid = _search_runs(loaded, plan, out)
        tracker.say(f"{sum(len(g) for g in grid.values())} runs", heading="LR search:")
        records.update(run_all([r for g in grid.values() for r in g], out, loaded.study.parallel, tracker))
        for name, runs in grid.items():
            losses, metrics = {}, {}
            for run in runs:
                if records[run.key].status == "failed":
                    continue
                summary = pooled_summary(run.fold_folders, run.recipe.stage, run.strategy, None)
                metrics[f"{run.lr:g}"] = headline(summary)
                if summary["val_loss"] != NA:
                    losses[run.lr] = summary["val_loss"]
            grid_metrics[name] = metrics
            if losses:
                best[name] = min(losses, key=lambda lr: losses[lr])
    runs = _runs_of(loaded, plan, out, best)
    tracker.say(f"{len(runs)} runs, {loaded.study.parallel} at a time", heading="arms:")
    records.update(run_all(runs, out, loaded.study.parallel, tracker))
    data = measure_study(loaded, plan, out, runs, records, best, grid_metrics)
    data["seconds"] = time.perf_counter() - start
    write_json(out / "compare.json", data)
    write_report(out)
    return CompareResult(out, data, data["seconds"])


def _finite_or_none(value: Any) -> float | None:
    if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
        return float(value)
    return None


def measure_study(
    loaded: LoadedStudy,
    plan: Plan,
    out: Path,
    runs: list[ArmRun],
    records: dict[str, ProcessRecord],
    best: dict[str, float],
    grid_metrics: dict[str, dict[str, Any]],
) -> dict[str, Any]:
    """compare.json: each arm's columns, the paired comparisons, the ranking and the verdicts."""
    study = loaded.study
    stage = str(loaded.task["stage"])  # the task's: an arm may override its own (a preference study)
    metric, secondary = TASK_METRICS[stage]
    main = max(study.fractions)
    seed0 = study.seeds[0]
    by_arm: dict[str, list[ArmRun]] = {}
    for run in runs:
        by_arm.setdefault(run.arm, []).append(run)
    arms: dict[str, dict[str, Any]] = {}
    main_runs: dict[str, ArmRun] = {}
    for arm in study.arms:
        mine = by_arm[arm.name]
        finished = [r for r in mine if records[r.key].status != "failed"]
        failed = [r for r in mine if records[r.key].status == "failed"]
        summaries = {
            r.key: pooled_summary(
                r.fold_folders, r.recipe.stage, arm.strategy, records_json(records).get(r.key)
            )
            for r in finished
        }
        first = next((r for r in finished if r.fraction == main and r.seed == seed0), None)
        entry: dict[str, Any] = {
            "strategy": arm.strategy,
            "label": LABELS[arm.strategy],
            "lr": _or_na(best.get(arm.name, arm_lr(arm))),
            "lr_chosen_by": "lowest validation loss over the LR grid" if arm.name in best else "packaged",
            "status": "finished" if not failed else "failed",
            "errors": {r.key: records[r.key].error for r in failed},
            "runs": {r.key: str(r.folder.relative_to(out)) for r in mine},
        }
        if first is not None:
            main_runs[arm.name] = first
            summary = summaries[first.key]
            entry.update({k: summary[k] for k in ("task", "overfitting", "forgetting", "cost")})
        else:
            entry.update(_missing_columns())
        seed_values = [
            headline(summaries[r.key])
            for r in finished
            if r.fraction == main and headline(summaries[r.key]) is not None
        ]
        entry["task"]["mean_over_seeds"] = mean_interval(seed_values) if seed_values else NA  # type: ignore[arg-type]
        entry["data"] = {
            f"{fraction:g}": _mean_or_na(
                [headline(summaries[r.key]) for r in finished if r.fraction == fraction]
            )
            for fraction in study.fractions
        }
        if arm.name in grid_metrics:
            values = list(grid_metrics[arm.name].values())
            entry["hp_sensitivity"] = {
                "value": spread(values),
                "over": "learning rates",
                "grid": grid_metrics[arm.name],
            }
        elif len(study.seeds) > 1:
            entry["hp_sensitivity"] = {"value": spread(seed_values), "over": "seeds"}
        else:
            entry["hp_sensitivity"] = {
                "value": NA,
                "over": "nothing varied (run with --search or several seeds)",
            }
        arms[arm.name] = entry
    comparisons, per = _comparisons(main_runs, stage)
    values = {name: v for name in main_runs if (v := _main_value(arms[name])) is not None}
    tiers = rank_arms(values, {(c["a"], c["b"]): c for c in comparisons})
    _transfer(arms, study.arms, main_runs, per, stage, metric)
    reference = next((a.name for a in study.arms if a.strategy == "full" and a.name in values), None)
    rows = {name: verdict_row(name, entry, comparisons, reference) for name, entry in arms.items()}
    for name, entry in arms.items():
        entry["verdict"] = verdict(rows[name], rows.get(reference) if reference else None)
        folder = main_runs[name].fold_folders[0] if name in main_runs else None
        ignored = ignored_strategy(entry) or (adapter_mismatch(folder, entry["strategy"]) if folder else None)
        if ignored:
            entry["warning"] = ignored
            entry["verdict"] += f" (WARNING: {ignored})"
    return {
        "study": study.name,
        "source": loaded.source,
        "stage": stage,
        "metric": metric,
        "secondary": secondary,
        "split": "validation",
        "budget": study.budget.model_dump(),
        "fractions": study.fractions,
        "main_fraction": main,
        "seeds": study.seeds,
        "folds": study.folds,
        "search": study.search.model_dump() if plan.searching and study.search else None,
        "reference": reference,
        "arms": arms,
        # arm-vs-arm differences pair the runs at the largest fraction and the first seed (a seed
        # draws its own validation split, so runs of two seeds share no questions)
        "paired_on": {"fraction": main, "seed": seed0, "split": "validation"},
        "comparisons": comparisons,
        "ranking": tiers,
        "ties": [tier for tier in tiers if len(tier) > 1],
        "processes": records_json(records),
    }


def _or_na(value: Any) -> Any:
    return NA if value is None else value


def _mean_or_na(values: list[float | None]) -> Any:
    found = [v for v in values if v is not None]
    return sum(found) / len(found) if found else NA


def _missing_columns() -> dict[str, Any]:
    na = {"value": NA, "n": NA, "low": NA, "high": NA}
    return {
        "task": {"validation.after": {"value": na}},
        "overfitting": {"best_step": NA, "onset_step": NA, "generalisation_gap": NA, "overfit": NA},
        "forgetting": {"relative_change": NA, "reason": "the run failed"},
        "cost": {
            "trainable_parameters": NA,
            "total_parameters": NA,
            "peak_rss_mb": NA,
            "process_seconds": NA,
            "train_seconds": NA,
            "tokens_per_second": NA,
        },
    }


def _main_value(entry: dict[str, Any]) -> float | None:
    task = entry["task"]
    metric = task.get("metric")
    if metric is None:
        return None
    return _finite_or_none(task["validation.after"][metric]["value"])


def _comparisons(main_runs: dict[str, ArmRun], stage: str) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Every pair of arms, b minus a, paired question by question (None where they cannot be paired)."""
    per = {name: per_example_of(run.fold_folders, stage) for name, run in main_runs.items()}
    names = list(main_runs)
    found = []
    for i, a in enumerate(names):
        for b in names[i + 1 :]:
            for first, second in ((a, b), (b, a)):
                comparison = paired(per[first], per[second])
                found.append(
                    {"a": first, "b": second, **(comparison or {"measurable": False, "paired": False})}
                )
    return found, per


def _transfer(
    arms: dict[str, dict[str, Any]],
    specs: list[Arm],
    main_runs: dict[str, ArmRun],
    per: dict[str, Any],
    stage: str,
    metric: str,
) -> None:
    """Each arm against the base model zero-shot, the few-shot arm and the from-scratch arm."""
    zero_name = next((a.name for a in specs if a.name in main_runs and a.strategy not in ("scratch",)), None)
    baselines: dict[str, float | None] = {}
    baseline_examples: dict[str, Any] = {}
    if stage == "sft" and zero_name is not None:
        before = arms[zero_name]["task"].get("validation.before", {}).get(metric, {}).get("value")
        baselines["base zero-shot"] = _finite_or_none(before)
        baseline_examples["base zero-shot"] = per_example_of(
            main_runs[zero_name].fold_folders, stage, when="before"
        )
    for strategy, label in (("few_shot", "few-shot"), ("scratch", "from scratch")):
        name = next((a.name for a in specs if a.strategy == strategy and a.name in main_runs), None)
        if name is not None:
            baselines[label] = _main_value(arms[name])
            baseline_examples[label] = per[name]
    for arm in specs:
        entry = arms[arm.name]
        value = _main_value(entry)
        own = {k: v for k, v in baselines.items() if not (k == "few-shot" and arm.strategy == "few_shot")}
        own = {k: v for k, v in own.items() if not (k == "from scratch" and arm.strategy == "scratch")}
        comparisons = {
            k: paired(baseline_examples[k], per[arm.name]) if arm.name in per else None for k in own
        }
        entry["transfer"] = {
            "baselines": {k: _or_na(v) for k, v in own.items()},
            "versus": {k: _or_na(v) for k, v in comparisons.items()},
            "verdict": transfer_verdict(value, own, comparisons),
        }


def verdict_row(
    name: str, entry: dict[str, Any], comparisons: list[dict[str, Any]], reference: str | None
) -> VerdictRow:
    """The numbers of `entry` (compare.json's arm) a verdict is worded from."""
    metric = entry["task"].get("metric", "metric")
    after = entry["task"]["validation.after"].get(metric, {}) if "metric" in entry["task"] else {}
    versus = next((c for c in comparisons if c["a"] == reference and c["b"] == name), None)
    if versus is not None and not versus.get("paired", True):
        versus = None
    n = after.get("n")
    trainable = entry["cost"]["trainable_parameters"]
    return VerdictRow(
        name=name,
        label=f"{name} ({entry['label']})" if name != entry["strategy"] else entry["label"],
        metric_name=metric,
        metric=_main_value(entry),
        n=n if isinstance(n, int) else None,
        trainable=trainable if isinstance(trainable, int) else None,
        forgetting=_finite_or_none(entry["forgetting"].get("relative_change")),
        versus_reference=versus,
        failed=_failure(entry),
    )


def _failure(entry: dict[str, Any]) -> str | None:
    """The errors of an arm whose main run failed (its verdict says so instead of numbers)."""
    if entry["status"] != "failed" or _main_value(entry) is not None:
        return None
    return "; ".join(f"{key}: {error}" for key, error in entry["errors"].items()) or "failed"


# The strategies that train only part of the model: a run of one that trained every parameter did not
# apply the strategy (a stage that ignores model.adapter or model.freeze), and its numbers are full
# fine-tuning's under another name.
PARTIAL = ("freeze", "lora", "dora", "bottleneck", "ia3", "prompt_tuning")


def ignored_strategy(entry: dict[str, Any]) -> str | None:
    """What is wrong when an arm of a partial strategy trained every parameter; None otherwise."""
    cost = entry["cost"]
    trainable, total = cost["trainable_parameters"], cost["total_parameters"]
    if entry["strategy"] not in PARTIAL or not isinstance(trainable, int) or not isinstance(total, int):
        return None
    if trainable == 0 or trainable < total:
        return None
    return (
        f"every parameter trained ({trainable:,}): the stage did not apply the {entry['strategy']} "
        "strategy's settings, so this arm is full fine-tuning"
    )


# The PEFT type a strategy's run saves in adapter/adapter_config.json (bottleneck adapters are
# peaufine's own: any type but LoRA's).
PEFT_TYPES = {"lora": "LORA", "dora": "LORA", "ia3": "IA3", "prompt_tuning": "PROMPT_TUNING"}


def adapter_mismatch(folder: Path, strategy: str) -> str | None:
    """What is wrong when the run's saved adapter is of another kind than its strategy (a peaufine
    whose stage trains LoRA for a kind it does not know yet); None when it matches or is not PEFT's."""
    config = RunDir(folder).adapter / "adapter_config.json"
    if strategy not in (*PEFT_TYPES, "bottleneck") or not config.is_file():
        return None
    saved = json.loads(config.read_text(encoding="utf-8")).get("peft_type")
    expected = PEFT_TYPES.get(strategy)
    if saved is None or saved == expected or (strategy == "bottleneck" and saved != "LORA"):
        return None
    return f"the run saved a {saved} adapter, not {strategy}: the stage did not apply this strategy"

"""Each arm's numbers read from its finished runs (task metric with n and 95% interval, overfitting,
forgetting, cost), and arm-vs-arm paired differences, which alone decide a ranking."""

# Everything here reads files (eval.json, budget.json, metrics.jsonl, answers.jsonl / predictions.jsonl
# and the runner's process records) and returns plain dicts: compare.json is their union. A number the
# runs did not measure is "n/a" with the reason, never a made-up 0.

from __future__ import annotations

import json
import math
import statistics
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from peaufine.evaluate.stats import bootstrap_interval, mcnemar_exact, paired_bootstrap, wilson_interval
from peaufine.report.pages.compare import NA
from peaufine.results import run_metrics
from peaufine.rundir import RunDir

# Two-sided 95% Student t quantiles by degrees of freedom: a mean over a few seeds has a wide interval.
T95 = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571, 6: 2.447, 7: 2.365, 8: 2.306, 9: 2.262}

# The task metrics of each stage: (primary, secondary), both in [0, 1], higher is better.
TASK_METRICS = {"sft": ("exact_match", "f1"), "classify": ("accuracy", "macro_f1")}


def _json(path: Path) -> Any:
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else None


def _number(value: Any) -> float | None:
    if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
        return float(value)
    return None


def _or_na(value: Any) -> Any:
    return NA if value is None else value


@dataclass
class PerExample:
    """A run's per-example outcome on the validation split, keyed so two runs pair up: exact (0/1) and
    F1 per question for sft, correct (0/1) per sentence for classify."""

    primary: dict[str, float] = field(default_factory=dict)
    secondary: dict[str, float] = field(default_factory=dict)


def per_example(folder: Path, stage: str, when: str = "after") -> PerExample:
    """answers.jsonl (sft) or predictions.jsonl (classify) of the run's validation split; empty when
    the run wrote none."""
    found = PerExample()
    name = "answers.jsonl" if stage == "sft" else "predictions.jsonl"
    path = Path(folder) / name
    if not path.is_file():
        return found
    for line in path.read_text(encoding="utf-8").splitlines():
        if not line.strip():
            continue
        row = json.loads(line)
        if row.get("split", "validation") != "validation":
            continue
        if stage == "sft":
            if row.get("when", "after") != when:
                continue
            found.primary[row["question"]] = float(bool(row["exact"]))
            found.secondary[row["question"]] = float(row["f1"])
        else:
            found.primary[str(row["index"])] = float(bool(row["correct"]))
    return found


def interval(
    value: float | None,
    n: int | None,
    examples: list[float] | None,
    rate: bool,
    given: Any = None,
) -> dict[str, Any]:
    """A metric with its n and 95% interval: the run's own (`given`, eval.json's `<metric>_ci`), else
    Wilson for a rate, a bootstrap over examples for a mean (F1); "n/a" for the interval when it cannot
    be computed (no n, or no per-example values)."""
    if value is None:
        return {"value": NA, "n": _or_na(n), "low": NA, "high": NA}
    if isinstance(given, list) and len(given) == 2 and all(_number(b) is not None for b in given):
        return {"value": value, "n": _or_na(n), "low": given[0], "high": given[1], "method": "the run's"}
    if rate and n:
        estimate = wilson_interval(round(value * n), n)
        return {"value": value, "n": n, "low": estimate.low, "high": estimate.high, "method": "wilson"}
    if examples:
        estimate = bootstrap_interval(examples)
        return {
            "value": value,
            "n": n or len(examples),
            "low": estimate.low,
            "high": estimate.high,
            "method": "bootstrap",
        }
    return {"value": value, "n": _or_na(n), "low": NA, "high": NA}


def task_numbers(evaluation: dict[str, Any], stage: str, folder: Path) -> dict[str, Any]:
    """The task metric (both of the stage's) before and after, with n and 95% intervals; an arm that
    overrides its stage to one without a task metric here (dpo, reward) has none: n/a."""
    if stage not in TASK_METRICS:
        return {"metric": None, "reason": f"stage {stage} has no task metric here", "validation.after": {}}
    primary, secondary = TASK_METRICS[stage]
    after = per_example(folder, stage)
    out: dict[str, Any] = {"metric": primary, "secondary": secondary}
    if stage == "sft":
        splits = evaluation.get("answers") or {}
        for split in ("validation", "heldout"):
            block = splits.get(split) or {}
            for when in ("before", "after"):
                measured = block.get(when) or {}
                n = measured.get("n")
                values = after if when == "after" and split == "validation" else PerExample()
                out[f"{split}.{when}"] = {
                    primary: interval(_number(measured.get(primary)), n, None, rate=True),
                    secondary: interval(
                        _number(measured.get(secondary)), n, list(values.secondary.values()), rate=False
                    ),
                }
        return out
    validation = evaluation.get("validation") or {}
    n = validation.get("examples")
    out["validation.before"] = {
        primary: interval(None, n, None, True),
        secondary: interval(None, n, None, False),
    }
    out["validation.after"] = {
        primary: interval(_number(validation.get(primary)), n, None, True, validation.get(f"{primary}_ci")),
        secondary: interval(
            _number(validation.get(secondary)), n, None, False, validation.get(f"{secondary}_ci")
        ),
    }
    return out


def overfitting_numbers(evaluation: dict[str, Any]) -> dict[str, Any]:
    block = evaluation.get("overfitting") or {}
    if not block:
        return {"best_step": NA, "onset_step": NA, "generalisation_gap": NA, "overfit": NA}
    return {
        "best_step": _or_na(block.get("best_step")),
        "onset_step": _or_na(block.get("onset_step")),
        "generalisation_gap": _or_na(_number(block.get("generalisation_gap"))),
        "overfit": _or_na(block.get("overfit")),
    }


def forgetting_numbers(evaluation: dict[str, Any], stage: str, strategy: str) -> dict[str, Any]:
    """General-text loss before vs after. n/a for a classifier (its encoder has no LM head to score
    text with) and for from scratch (it had no pretrained knowledge to forget)."""
    if stage == "classify":
        return {"relative_change": NA, "reason": "a classifier has no LM head: no general-text loss"}
    if strategy == "scratch":
        return {"relative_change": NA, "reason": "from scratch: no pretrained knowledge to forget"}
    block = evaluation.get("forgetting") or {}
    change = _number(block.get("relative_change"))
    if change is None:
        return {"relative_change": NA, "reason": block.get("verdict") or "not measured"}
    return {
        "loss_before": _or_na(_number(block.get("loss_before"))),
        "loss_after": _or_na(_number(block.get("loss_after"))),
        "relative_change": change,
    }


def cost_numbers(folder: Path, evaluation: dict[str, Any], process: dict[str, Any] | None) -> dict[str, Any]:
    budget = _json(RunDir(Path(folder)).budget) or {}
    parameters = budget.get("parameters") or {}
    seconds = _number(evaluation.get("train_seconds"))
    if seconds is None:
        metrics = run_metrics(folder)
        seconds = _number(metrics.get("elapsed")) or _number(metrics.get("time"))
    tokens = _number(evaluation.get("tokens_seen"))
    return {
        "trainable_parameters": _or_na(parameters.get("trainable")),
        "total_parameters": _or_na(parameters.get("total")),
        "peak_rss_mb": _or_na(_number((process or {}).get("peak_rss_mb"))),
        "process_seconds": _or_na(_number((process or {}).get("seconds"))),
        "train_seconds": _or_na(seconds),
        "tokens_per_second": tokens / seconds if tokens is not None and seconds else NA,
    }


def run_summary(folder: Path, stage: str, strategy: str, process: dict[str, Any] | None) -> dict[str, Any]:
    """Everything one finished run contributes to its arm's row."""
    run = RunDir(Path(folder))
    evaluation = _json(run.eval) or {}
    metrics = run_metrics(folder) if run.eval.is_file() else {}
    return {
        "task": task_numbers(evaluation, stage, folder),
        "val_loss": _or_na(_number(metrics.get("val_loss"))),
        "overfitting": overfitting_numbers(evaluation),
        "forgetting": forgetting_numbers(evaluation, stage, strategy),
        "cost": cost_numbers(folder, evaluation, process),
    }


def per_example_of(folders: list[Path], stage: str, when: str = "after") -> PerExample:
    """per_example over several runs whose validation sets are disjoint (the folds of a k-fold run):
    every example of the data set, each validated once."""
    found = PerExample()
    for folder in folders:
        part = per_example(folder, stage, when)
        found.primary.update(part.primary)
        found.secondary.update(part.secondary)
    return found


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _pool(values: list[Any], key: str = "") -> Any:
    """The folds' values as one: counts (n) summed, a rate with its n weighted by n, other numbers
    averaged; anything else (n/a, a method's name) the first fold's."""
    if all(isinstance(v, dict) for v in values):
        if all(_is_number(v.get("value")) and _is_number(v.get("n")) for v in values):
            total = sum(v["n"] for v in values)
            weighted = sum(v["value"] * v["n"] for v in values) / total if total else values[0]["value"]
            return {**values[0], "value": weighted, "n": total}
        return {k: _pool([v[k] for v in values if k in v], k) for k in values[0]}
    if all(_is_number(v) for v in values):
        return sum(values) if key == "n" else statistics.fmean(values)
    return values[0]


def pooled_summary(
    folders: list[Path], stage: str, strategy: str, process: dict[str, Any] | None
) -> dict[str, Any]:
    """run_summary of a run, or of a k-fold run's folds pooled: each rate over every fold's
    validation examples (n summed) with its interval recomputed, the other numbers averaged."""
    if len(folders) == 1:
        return run_summary(folders[0], stage, strategy, process)
    pooled = _pool([run_summary(f, stage, strategy, process) for f in folders])
    primary = TASK_METRICS[stage][0]
    values = per_example_of(folders, stage)
    for where, block in pooled["task"].items():
        if not isinstance(block, dict) or "." not in where:
            continue
        for name, entry in block.items():
            value, n = _number(entry.get("value")), entry.get("n")
            examples = list(values.secondary.values()) if where == "validation.after" else None
            block[name] = interval(value, n if _is_number(n) else None, examples, rate=name == primary)
    pooled["folds"] = len(folders)
    return pooled


def headline(summary: dict[str, Any]) -> float | None:
    """The run's primary task metric after adaptation, on the validation split."""
    task = summary["task"]
    if task["metric"] is None:
        return None
    value = task["validation.after"][task["metric"]]["value"]
    return None if value == NA else float(value)


def mean_interval(values: list[float]) -> dict[str, Any]:
    """The mean over seeds with a 95% Student t interval (n/a for one seed)."""
    mean = statistics.fmean(values)
    if len(values) < 2:
        return {"value": mean, "seeds": len(values), "low": NA, "high": NA}
    half = T95.get(len(values) - 1, 1.96) * statistics.stdev(values) / math.sqrt(len(values))
    return {"value": mean, "seeds": len(values), "low": mean - half, "high": mean + half}


def spread(values: list[float | None]) -> Any:
    """HP sensitivity: max - min of the task metric (n/a with fewer than two measured values)."""
    found = [v for v in values if v is not None]
    return max(found) - min(found) if len(found) >= 2 else NA


def paired(a: PerExample, b: PerExample) -> dict[str, Any] | None:
    """b minus a on the questions both answered: McNemar's exact test on the primary 0/1 outcome (a
    paired bootstrap when it is not 0/1); None when the runs share no per-example record."""
    keys = sorted(set(a.primary) & set(b.primary))
    if not keys:
        return None
    first, second = [a.primary[k] for k in keys], [b.primary[k] for k in keys]
    if all(v in (0.0, 1.0) for v in first + second):
        comparison = mcnemar_exact([v == 1.0 for v in first], [v == 1.0 for v in second])
    else:
        comparison = paired_bootstrap(first, second)
    return comparison.as_dict()


def rank_arms(
    values: dict[str, float], comparisons: dict[tuple[str, str], dict[str, Any] | None]
) -> list[list[str]]:
    """Arms in tiers, best first: an arm joins the tier above unless it is measurably worse than that
    tier's best arm (a paired difference whose 95% interval excludes 0); arms in one tier are ties.
    Without a paired comparison nothing is measurable: the arms tie."""
    order = sorted(values, key=lambda name: -values[name])
    tiers: list[list[str]] = []
    for name in order:
        if tiers:
            leader = tiers[-1][0]
            found = comparisons.get((leader, name))
            if not (found and found["measurable"] and found["difference"] < 0):
                tiers[-1].append(name)
                continue
        tiers.append([name])
    return tiers

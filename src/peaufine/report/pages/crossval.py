"""A cross-validation's page, from cv.json: each metric's mean and spread across the folds, losses and
accuracies first, and a link to each fold's report."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from peaufine.report.toolkit import (
    RATE_WORDS,
    Num,
    Section,
    details,
    fmt_metric,
    is_number,
    modified_stamp,
    now_stamp,
    read_json,
    render_page,
    run_cell,
    table,
)


def _metric_rank(name: str) -> int:
    """The metrics a reader looks for first: validation loss, other losses, then accuracies."""
    key = name.lower()
    if key == "val_loss":
        return 0
    if "loss" in key:
        return 1
    return 2 if any(word in key for word in RATE_WORDS) else 3


def cv_page(directory: Path) -> str:
    cv = read_json(directory / "cv.json") or {}
    metrics = {
        name: figures
        for name, figures in (cv.get("metrics") or {}).items()
        if isinstance(figures, dict) and is_number(figures.get("mean"))
    }
    runs = [str(run) for run in cv.get("runs") or []]
    folds = max([len(runs), *(len(m.get("values") or []) for m in metrics.values())])
    fold_names = runs + [f"fold {i}" for i in range(len(runs), folds)]

    def row(name: str) -> tuple[Any, ...]:
        figures, values = metrics[name], metrics[name].get("values") or []
        spread = Num(f"{fmt_metric(name, figures['mean'])} ± {fmt_metric(name, figures.get('std'))}")
        return name, spread, *(fmt_metric(name, values[i]) if i < len(values) else "–" for i in range(folds))

    ordered = sorted(metrics, key=lambda name: (_metric_rank(name), name))
    first = [name for name in ordered if _metric_rank(name) < 3]
    header = ["metric", "mean ± std", *fold_names]
    summary = Section("Cross-validation")
    summary.parts.append(table(None, [("stage", cv.get("stage", "–")), ("folds", cv.get("folds", folds))]))
    results = Section("Metrics across folds")
    if first:
        results.parts.append(table(header, [row(name) for name in first], caption="Losses and accuracies"))
    if ordered:
        results.parts.append(
            details(f"all {len(ordered)} metrics", table(header, [row(name) for name in ordered]))
        )
    reports = Section("Folds")
    if runs:
        reports.parts.append(table(["fold", "report"], [(run, run_cell(run, directory)) for run in runs]))
    meta = [
        "cross-validation",
        str(directory),
        f"cv.json of {modified_stamp(directory / 'cv.json')}",
        f"report written {now_stamp()}",
    ]
    return render_page(f"cross-validation: {directory.name}", meta, [summary, results, reports])

"""What a search leaves in its folder and shows: trials.jsonl, study.json, best-recipe.yaml, the history
and parameter plots, and the table of trials, best first."""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from peaufine.atomic import write_text_atomic
from peaufine.drivers.search.space import Space
from peaufine.drivers.search.study import ERROR_ATTR, METRICS_ATTR, RETRY_ATTR
from peaufine.report.plots import pyplot, save_figure

if TYPE_CHECKING:
    import optuna


def trial_rows(study: optuna.Study) -> list[dict[str, Any]]:
    """One row per trial, in trial order: what trials.jsonl holds."""
    rows = []
    for t in study.get_trials(deepcopy=False):
        seconds = None
        if t.datetime_start is not None and t.datetime_complete is not None:
            seconds = round((t.datetime_complete - t.datetime_start).total_seconds(), 3)
        rows.append(
            {
                "trial": t.number,
                "state": t.state.name,
                "params": dict(t.params),
                "value": t.value,
                "seconds": seconds,
                "run": f"trials/trial-{t.number:04d}",
                "retry_of": t.user_attrs.get(RETRY_ATTR),
                "error": t.user_attrs.get(ERROR_ATTR),
                "metrics": t.user_attrs.get(METRICS_ATTR),
            }
        )
    return rows


def best_row(rows: Sequence[dict[str, Any]], direction: str) -> dict[str, Any] | None:
    complete = [r for r in rows if r["state"] == "COMPLETE" and r["value"] is not None]
    if not complete:
        return None
    sign = 1.0 if direction == "minimize" else -1.0
    return min(complete, key=lambda r: (sign * r["value"], r["trial"]))  # ties: the earlier trial


def baseline_row(rows: Sequence[dict[str, Any]]) -> dict[str, Any] | None:
    """Trial 0 (the recipe's own values), or the trial that ran its values again."""
    root = 0
    for row in rows:
        if row["trial"] == root:
            return row if row["state"] in ("COMPLETE", "PRUNED") else None
        if row["retry_of"] == root:
            root = row["trial"]
    return None


def _rank(rows: Sequence[dict[str, Any]], direction: str) -> list[dict[str, Any]]:
    order = {"COMPLETE": 0, "PRUNED": 1, "FAIL": 2, "RUNNING": 3, "WAITING": 4}
    sign = 1.0 if direction == "minimize" else -1.0

    def key(row: dict[str, Any]) -> tuple[int, float, int]:
        value = row["value"] if row["value"] is not None else math.inf * sign
        return order.get(row["state"], 5), sign * value, row["trial"]

    return sorted(rows, key=key)


def write_outputs(
    out: Path,
    rows: list[dict[str, Any]],
    summary: dict[str, Any],
    best_recipe: str | None,
) -> None:

    write_text_atomic(out / "trials.jsonl", "".join(json.dumps(row) + "\n" for row in rows))
    write_text_atomic(out / "study.json", json.dumps(summary, indent=2) + "\n")
    if best_recipe is not None:
        write_text_atomic(out / "best-recipe.yaml", best_recipe)


def plot_history(
    rows: Sequence[dict[str, Any]],
    path: Path,
    metric: str,
    direction: str,
    baseline: dict[str, Any] | None = None,
) -> None:
    """The objective of each trial, the best so far as a step line, pruned trials and the baseline
    (the recipe's own values) marked."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(7, 4))
    done = [r for r in rows if r["state"] == "COMPLETE" and r["value"] is not None]
    pruned = [r for r in rows if r["state"] == "PRUNED" and r["value"] is not None]
    ax.scatter([r["trial"] for r in done], [r["value"] for r in done], color="tab:blue", label="complete")
    if pruned:
        ax.scatter(
            [r["trial"] for r in pruned],
            [r["value"] for r in pruned],
            marker="x",
            color="tab:gray",
            label="pruned (last val_loss)",
        )
    best, xs, ys = None, [], []
    for row in done:
        if best is None or (row["value"] < best if direction == "minimize" else row["value"] > best):
            best = row["value"]
        xs.append(row["trial"])
        ys.append(best)
    if xs:
        ax.step(xs, ys, where="post", color="tab:orange", label="best so far")
    if baseline is not None and baseline.get("value") is not None:
        ax.scatter(
            [baseline["trial"]],
            [baseline["value"]],
            s=160,
            facecolors="none",
            edgecolors="tab:red",
            label=f"trial {baseline['trial']}: the recipe as it is",
        )
    ax.set_xlabel("trial")
    ax.set_ylabel(metric)
    ax.set_title(f"{metric} ({direction})")
    ax.legend()
    fig.tight_layout()
    save_figure(fig, path)


def plot_params(rows: Sequence[dict[str, Any]], space: Space, path: Path, metric: str) -> None:
    """The objective against each parameter, one panel per parameter; log axes for log ranges."""
    plt = pyplot()
    keys = list(space)
    fig, axes = plt.subplots(1, len(keys), figsize=(4 * len(keys), 3.5), squeeze=False)
    for ax, key in zip(axes[0], keys, strict=True):
        dim = space[key]
        for state, style in (
            ("COMPLETE", {"color": "tab:blue"}),
            ("PRUNED", {"color": "tab:gray", "marker": "x"}),
        ):
            points = [
                r for r in rows if r["state"] == state and r["value"] is not None and key in r["params"]
            ]
            xs = [r["params"][key] for r in points]
            if dim.kind == "categorical":
                labels = [str(c) for c in dim.choices]
                xs = [labels.index(str(x)) if str(x) in labels else -1 for x in xs]
            ax.scatter(xs, [r["value"] for r in points], **style)
        if dim.kind == "categorical":
            ax.set_xticks(range(len(dim.choices)), [str(c) for c in dim.choices])
        elif dim.log:
            from matplotlib.ticker import NullFormatter

            ax.set_xscale("log")
            ax.xaxis.set_minor_formatter(NullFormatter())  # minor labels collide on a short decade
        ax.set_xlabel(key)
        ax.set_ylabel(metric)
    fig.tight_layout()
    save_figure(fig, path)


def trials_table(rows: Sequence[dict[str, Any]], keys: Sequence[str], metric: str, direction: str) -> Any:
    from rich.table import Table

    table = Table(title=f"search: {metric} ({direction}), best first")
    table.add_column("trial", justify="right")
    for key in keys:
        table.add_column(key, justify="right")
    table.add_column(metric, justify="right")
    table.add_column("state")
    table.add_column("seconds", justify="right")
    for row in _rank(rows, direction):
        value = "" if row["value"] is None else f"{row['value']:.4f}"
        seconds = "" if row["seconds"] is None else f"{row['seconds']:.1f}"
        params = [short_value(row["params"][k]) if k in row["params"] else "" for k in keys]
        table.add_row(str(row["trial"]), *params, value, row["state"], seconds)
    return table


def short_value(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)

"""A comparison's page, from compare.json: the arms' table, the ranking and verdicts, a Pareto plot, the
learning curves and forgetting vs gain (PNG files in plots/, next to report.html)."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from peaufine.report.plots import pyplot, save_figure
from peaufine.report.toolkit import Section, figure, paragraph, read_json, render_page, table

NA = "n/a"  # what compare.json says of a number it could not measure

PLOTS = {
    "pareto": "pareto.png",
    "curves": "learning-curves.png",
    "forgetting": "forgetting-vs-gain.png",
}


def _num(value: Any) -> float | None:
    if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
        return float(value)
    return None


def _rate(block: Any) -> str:
    """ "84.0% [62.1, 94.3] n=15", or n/a."""
    if not isinstance(block, dict) or _num(block.get("value")) is None:
        return NA
    value = 100 * block["value"]
    low, high = _num(block.get("low")), _num(block.get("high"))
    bounds = f" [{100 * low:.1f}, {100 * high:.1f}]" if low is not None and high is not None else ""
    return f"{value:.1f}%{bounds} n={block.get('n', NA)}"


def _plain(value: Any, spec: str = ".3g") -> str:
    number = _num(value)
    if number is None:
        return NA if value in (None, NA) else str(value)
    if isinstance(value, int):
        return f"{value:,}"
    return format(number, spec)


def table_rows(data: dict[str, Any], transfer: bool = True) -> tuple[list[str], list[list[str]]]:
    """The table's header and one row per arm, as text; `transfer`: with the transfer verdict (the
    page's table; the terminal prints it below the table, where a long line has room)."""
    metric = data["metric"]
    fractions = [f"{f:g}" for f in data["fractions"]]
    header = [
        "arm",
        "before",
        "after [95% CI]",
        "best step",
        "gap",
        "forgetting",
        *(["transfer"] if transfer else []),
        "trainable",
        "peak MB",
        "train s",
        "tok/s",
        "HP spread",
        *[f"@{f}" for f in fractions],
    ]
    rows = []
    for name, arm in data["arms"].items():
        task = arm["task"]
        before = task.get("validation.before", {}).get(metric)
        after = task.get("validation.after", {}).get(metric)
        forgetting = arm["forgetting"].get("relative_change")
        cost = arm["cost"]
        rows.append(
            [
                f"{name} ({arm['strategy']})",
                _rate(before),
                _rate(after),
                _plain(arm["overfitting"]["best_step"]),
                _plain(arm["overfitting"]["generalisation_gap"]),
                f"{100 * forgetting:+.1f}%" if _num(forgetting) is not None else NA,
                *([arm.get("transfer", {}).get("verdict", NA)] if transfer else []),
                _plain(cost["trainable_parameters"]),
                _plain(cost["peak_rss_mb"], ".0f"),
                _plain(cost["train_seconds"], ".3g"),
                _plain(cost["tokens_per_second"], ".0f"),
                _plain(arm["hp_sensitivity"]["value"]),
                *[
                    f"{100 * v:.1f}%" if (v := _num(arm["data"].get(f))) is not None else NA
                    for f in fractions
                ],
            ]
        )
    return header, rows


def ranking_text(data: dict[str, Any]) -> str:
    tiers = data["ranking"]
    if not tiers:
        return "no arm measured"
    said = " > ".join(" = ".join(tier) for tier in tiers)
    if any(len(tier) > 1 for tier in tiers):
        said += " (= : a tie, no measurable difference on the paired questions)"
    return said


def plot_pareto(data: dict[str, Any], path: Path) -> bool:
    """Task metric vs trainable parameters (log x), marker area by peak memory."""
    points = []
    for name, arm in data["arms"].items():
        value = _num(arm["task"].get("validation.after", {}).get(data["metric"], {}).get("value"))
        params = _num(arm["cost"]["trainable_parameters"])
        memory = _num(arm["cost"]["peak_rss_mb"]) or 100.0
        if value is not None and params is not None:
            points.append((name, max(params, 1.0), value, memory))
    if not points:
        return False
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(6.5, 4.5))
    largest = max(p[3] for p in points)
    for name, params, value, memory in points:
        ax.scatter(params, value, s=40 + 400 * memory / largest, alpha=0.6)
        ax.annotate(name, (params, value), textcoords="offset points", xytext=(5, 5), fontsize=8)
    ax.set_xscale("log")
    ax.set_xlabel("trainable parameters (log; 1 = none)")
    ax.set_ylabel(f"{data['metric']} (validation)")
    ax.set_title("task metric vs trainable parameters (marker size: peak memory)")
    save_figure(fig, path)
    return True


def plot_curves(data: dict[str, Any], path: Path) -> bool:
    """The metric at each data fraction, one line per arm."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(6.5, 4.5))
    drawn = False
    for name, arm in data["arms"].items():
        pairs = [(float(f), v) for f, raw in arm["data"].items() if (v := _num(raw)) is not None]
        if pairs:
            pairs.sort()
            ax.plot([p[0] for p in pairs], [p[1] for p in pairs], marker="o", label=name)
            drawn = True
    if not drawn:
        plt.close(fig)
        return False
    ax.set_xlabel("fraction of the training set")
    ax.set_ylabel(f"{data['metric']} (validation)")
    ax.set_title("learning curves")
    ax.legend(fontsize=8)
    save_figure(fig, path)
    return True


def plot_forgetting(data: dict[str, Any], path: Path) -> bool:
    """Forgetting (relative general-loss change) against the gain in the task metric over before."""
    points = []
    for name, arm in data["arms"].items():
        task = arm["task"]
        before = _num(task.get("validation.before", {}).get(data["metric"], {}).get("value"))
        after = _num(task.get("validation.after", {}).get(data["metric"], {}).get("value"))
        forgetting = _num(arm["forgetting"].get("relative_change"))
        if before is not None and after is not None and forgetting is not None:
            points.append((name, after - before, forgetting))
    if not points:
        return False
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(6.5, 4.5))
    for name, gain, forgetting in points:
        ax.scatter(gain, forgetting)
        ax.annotate(name, (gain, forgetting), textcoords="offset points", xytext=(5, 5), fontsize=8)
    ax.axhline(0.0, color="grey", linewidth=0.8)
    ax.set_xlabel(f"gain in {data['metric']} (after - before)")
    ax.set_ylabel("forgetting (relative general-loss change)")
    ax.set_title("forgetting vs gain")
    save_figure(fig, path)
    return True


def compare_page(directory: Path) -> str:
    """The page of the comparison in `directory`; its plots are (re)drawn into directory/plots."""
    out = Path(directory)
    data = read_json(out / "compare.json") or {}
    plots = out / "plots"
    plots.mkdir(exist_ok=True)
    header, rows = table_rows(data)
    sections = [
        Section("Arms", [table(header, rows)]),
        Section(
            "Ranking and verdicts",
            [paragraph(f"ranking: {ranking_text(data)}")]
            + [paragraph(arm["verdict"]) for arm in data["arms"].values()],
        ),
    ]
    drawers = {"pareto": plot_pareto, "curves": plot_curves, "forgetting": plot_forgetting}
    captions = {
        "pareto": "task metric vs trainable parameters; marker size: peak memory",
        "curves": "task metric at each fraction of the training set",
        "forgetting": "forgetting vs gain in the task metric",
    }
    figures = [
        figure(plots / PLOTS[name], out, captions[name])
        for name, draw in drawers.items()
        if draw(data, plots / PLOTS[name])
    ]
    sections.append(Section("Plots", list(figures)))
    meta = [f"stage {data['stage']}", f"budget {data['budget']}", f"{data.get('seconds', 0):.0f} s"]
    return render_page(f"compare: {data['study']}", meta, sections)

"""A search's page, from study.json and trials.jsonl: the best trial against the unchanged recipe, every
trial ranked best first with a link to its run's report, the search's plots and the best recipe."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from peaufine.report.toolkit import (
    Html,
    Num,
    Section,
    details,
    figure,
    fmt_number,
    fmt_seconds,
    is_number,
    link,
    modified_stamp,
    now_stamp,
    paragraph,
    preformatted,
    read_json,
    read_jsonl,
    render_page,
    run_cell,
    table,
)


def search_page(directory: Path) -> str:
    study = read_json(directory / "study.json") or {}
    trials = read_jsonl(directory / "trials.jsonl")
    metric, direction = str(study.get("metric", "value")), study.get("direction", "minimize")
    best, baseline = study.get("best"), study.get("baseline") or {}
    baseline_trial = baseline.get("trial", 0)

    overview = Section("Best trial")
    states: dict[str, int] = {}
    for trial in trials:
        states[str(trial.get("state"))] = states.get(str(trial.get("state")), 0) + 1
    rows: list[tuple[str, Any]] = [
        ("objective", f"{direction} {metric}"),
        ("sampler", study.get("sampler", "–")),
        ("trials", study.get("trials", len(trials))),
        ("by state", ", ".join(f"{n} {state.lower()}" for state, n in states.items()) or "–"),
    ]
    if isinstance(best, dict):
        best_value, base_value = best.get("value"), baseline.get("value")
        rows += [
            ("best trial", best.get("trial")),
            (f"best {metric}", best_value),
            (f"trial {baseline_trial}, the recipe unchanged", base_value),
        ]
        if is_number(base_value) and is_number(best_value):
            gain = base_value - best_value if direction == "minimize" else best_value - base_value
            relative = f" ({gain / abs(base_value):+.1%} of trial {baseline_trial})" if base_value else ""
            rows.append(("better than the unchanged recipe by", Num(f"{fmt_number(gain)}{relative}")))
        overview.parts.append(table(None, rows))
        params = best.get("params") or {}
        if params:
            overview.parts.append(
                table(["parameter", "best value"], list(params.items()), caption="Best parameters")
            )
    else:
        overview.parts += [table(None, rows), paragraph("No trial completed: there is no best trial yet.")]

    sign = 1 if direction == "minimize" else -1
    complete = [t for t in trials if t.get("state") == "COMPLETE" and is_number(t.get("value"))]
    ranked = sorted(complete, key=lambda t: sign * t["value"])
    others = sorted((t for t in trials if t not in complete), key=lambda t: t.get("trial", 0))
    names = list(dict.fromkeys(name for t in trials for name in t.get("params") or {}))
    ranking = Section("Trials")
    rows = []
    for rank, trial in enumerate(ranked + others, start=1):
        number = trial.get("trial")
        rows.append(
            (
                rank if rank <= len(ranked) else "–",
                f"{number} (recipe unchanged)" if number == baseline_trial else str(number),
                trial.get("state", "–"),
                trial.get("value"),
                fmt_seconds(trial.get("seconds")),
                *((trial.get("params") or {}).get(name, "–") for name in names),
                run_cell(trial.get("run"), directory),
            )
        )
    if rows:
        header = ["rank", "trial", "state", metric, "time", *names, "run"]
        ranking.parts.append(table(header, rows, caption=f"Best first ({direction} {metric})"))

    plots = Section("Plots")
    for name, caption in (("history.png", f"{metric} per trial"), ("params.png", "the parameters' effect")):
        if (directory / name).is_file():
            plots.parts.append(figure(directory / name, directory, caption))
    recipe = Section("Best recipe")
    if (directory / "best-recipe.yaml").is_file():
        recipe.parts += [
            Html(f"<p>{link(directory / 'best-recipe.yaml', directory, 'best-recipe.yaml')}</p>"),
            details("show it", preformatted((directory / "best-recipe.yaml").read_text(encoding="utf-8"))),
        ]
    meta = [
        "search",
        str(directory),
        f"study.json of {modified_stamp(directory / 'study.json')}",
        f"report written {now_stamp()}",
    ]
    return render_page(f"search: {directory.name}", meta, [overview, ranking, plots, recipe])

"""A pipeline's page, from pipeline.json: each stage's status, time and headline numbers, its verdicts and
key plots, and a link to its run's report."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from peaufine.evaluate.leakage import leakage_lines
from peaufine.evaluate.stats import rate_text
from peaufine.report.pages.run import LOSS_PLOT, RL_PLOT
from peaufine.report.toolkit import (
    REPORT_NAME,
    Html,
    Section,
    escape,
    figure,
    fmt_metric,
    fmt_seconds,
    is_number,
    link,
    now_stamp,
    paragraph,
    read_json,
    render_page,
    run_cell,
    run_folder,
    table,
)
from peaufine.results import HEADLINES, read_results
from peaufine.rundir import LOSS_PLOT as RUN_LOSS_PLOT


def _headline(values: dict[str, Any] | None, stage: str = "", run_dir: Path | None = None) -> str:
    """'exact match 37.5% [13.7, 69.4] (n=8); val_loss 1.939': each headline number, a rate with its
    interval and n where the stage's eval.json (in `run_dir`) holds them beside it."""
    results = read_results(run_dir) if run_dir is not None and run_dir.is_dir() else None
    numbers = results.numbers() if results is not None else {}
    names = dict(HEADLINES.get(stage, ()))
    shown = []
    for label, value in (values or {}).items():
        name = names.get(label, "")
        low, high = numbers.get(f"{name}_ci.0"), numbers.get(f"{name}_ci.1")
        if name and low is not None and high is not None and is_number(value):
            parent = name.rpartition(".")[0]
            n = next(
                (
                    numbers[f"{parent}.{key}"]
                    for key in ("n", "examples", "pairs")
                    if f"{parent}.{key}" in numbers
                ),
                None,
            )
            shown.append(f"{label} {rate_text(value, [low, high], None if n is None else int(n))}")
        else:
            shown.append(f"{label} {fmt_metric(label, value)}")
    return "; ".join(shown) or "–"


def stage_plots(run_dir: Path) -> list[tuple[Path, str]]:
    """A stage run's key plots: the report's own (with its markers) before the stage's."""
    found = []
    for names, caption in (
        ((LOSS_PLOT, RUN_LOSS_PLOT), "loss curves"),
        (("rl.png", RL_PLOT), "reward and KL"),
    ):
        path = next((run_dir / name for name in names if (run_dir / name).is_file()), None)
        if path is not None:
            found.append((path, caption))
    return found


def pipeline_page(directory: Path) -> str:
    pipeline = read_json(directory / "pipeline.json") or {}
    name = str(pipeline.get("name", directory.name))
    stages = pipeline.get("stages") or []
    overview = Section("Stages")
    rows = []
    for stage in stages:
        status = escape(stage.get("status", "–"))
        rows.append(
            (
                stage.get("name", "–"),
                stage.get("stage", "–"),
                Html(f'<span class="status-{status}">{status}</span>'),
                fmt_seconds(stage.get("seconds")),
                _headline(
                    stage.get("headline"),
                    str(stage.get("stage", "")),
                    run_folder(stage.get("run"), directory),
                ),
                run_cell(stage.get("run"), directory),
            )
        )
    if rows:
        overview.parts.append(table(["stage", "kind", "status", "time", "headline", "report"], rows))
    sections = [overview]
    for stage in stages:
        label = str(stage.get("name", "stage"))
        section = Section(f"{label} ({stage.get('stage', '–')}, {stage.get('status', '–')})")
        sections.append(section)
        run_dir = run_folder(stage.get("run"), directory)
        if run_dir is None or not run_dir.is_dir():
            section.parts.append(paragraph("No run folder: the stage left none."))
            continue
        if (run_dir / REPORT_NAME).is_file():
            section.parts.append(
                Html(f"<p>{link(run_dir / REPORT_NAME, directory, f'the full report of {label}')}</p>")
            )
        section.parts.append(
            paragraph(f"headline: {_headline(stage.get('headline'), str(stage.get('stage', '')), run_dir)}")
        )
        results = read_results(run_dir)
        evaluation = results.to_json() if results is not None else {}
        verdicts = [
            (key, evaluation[key]["verdict"])
            for key in ("overfitting", "forgetting", "transfer")
            if isinstance(evaluation.get(key), dict) and evaluation[key].get("verdict")
        ]
        verdicts += [("leakage", line) for line in leakage_lines(evaluation.get("leakage"))]
        if verdicts:
            section.parts.append(table(["check", "verdict"], verdicts))
        section.parts += [
            figure(path, directory, f"{label}: {caption}") for path, caption in stage_plots(run_dir)
        ]
    meta = [
        f"pipeline {name}",
        str(directory),
        f"took {fmt_seconds(pipeline.get('seconds'))}",
        f"report written {now_stamp()}",
    ]
    return render_page(f"pipeline: {name}", meta, sections)

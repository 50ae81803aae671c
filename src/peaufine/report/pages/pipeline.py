"""A pipeline's page, from pipeline.json: each stage's status, time and headline numbers, its verdicts and
key plots, and a link to its run's report."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from peaufine.report.pages.run import LOSS_PLOT, RL_PLOT
from peaufine.report.toolkit import (
    REPORT_NAME,
    Html,
    Section,
    escape,
    figure,
    fmt_metric,
    fmt_seconds,
    link,
    now_stamp,
    paragraph,
    read_json,
    render_page,
    run_cell,
    run_folder,
    table,
)
from peaufine.results import read_results
from peaufine.rundir import LOSS_PLOT as RUN_LOSS_PLOT


def _headline(values: dict[str, Any] | None) -> str:
    return "; ".join(f"{label} {fmt_metric(label, value)}" for label, value in (values or {}).items()) or "–"


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
                _headline(stage.get("headline")),
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
        section.parts.append(paragraph(f"headline: {_headline(stage.get('headline'))}"))
        results = read_results(run_dir)
        evaluation = results.to_json() if results is not None else {}
        verdicts = [
            (key, evaluation[key]["verdict"])
            for key in ("overfitting", "forgetting", "transfer")
            if isinstance(evaluation.get(key), dict) and evaluation[key].get("verdict")
        ]
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

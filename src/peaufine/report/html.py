"""The run report: one self-contained page, report.html, for a stage run, a search, a cross-validation
or a pipeline directory, with the PNG plots it shows written next to it.

The page has inline CSS and one small inline script (it counts images that failed to load), and it
refers to its images by relative path, so the folder can be copied or served anywhere as it is.
"""

from __future__ import annotations

import datetime
import html
import json
import math
import os
import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote

from peaufine.errors import RunDirError

REPORT_NAME = "report.html"

# The file that makes a folder each kind of report; the first found wins: a pipeline folder holds stage
# runs and a search folder trial runs, and a folder could hold a stray recipe.yaml beside its own marker.
MARKERS = (
    ("pipeline.json", "pipeline"),
    ("study.json", "search"),
    ("cv.json", "cv"),
    ("recipe.yaml", "run"),
)

# Plots the report draws itself, named apart from the stage's own loss.png and rl.png.
LOSS_PLOT = "report-loss.png"
LR_PLOT = "report-lr.png"
RL_PLOT = "report-rl.png"
RL_DIAGNOSTICS_PLOT = "report-rl-diagnostics.png"


def report_kind(directory: Path) -> str:
    """ "pipeline", "search", "cv" or "run", from the marker file the folder holds (see MARKERS)."""
    directory = Path(directory)
    if not directory.is_dir():
        raise RunDirError(f"{directory} is not a folder; give the output folder of a run to report on")
    for marker, kind in MARKERS:
        if (directory / marker).is_file():
            return kind
    names = ", ".join(marker for marker, _ in MARKERS)
    raise RunDirError(
        f"{directory} holds nothing peaufine can report on (none of {names}); give the folder of a "
        "stage run, a search, a cross-validation or a pipeline"
    )


def write_report(directory: Path) -> Path:
    """Write <directory>/report.html (atomically: temp file + os.replace) and the PNG plots it shows,
    next to it; return the html path."""
    from peaufine.engine.checkpoint import write_text_atomic

    directory = Path(directory)
    pages: dict[str, Callable[[Path], str]] = {
        "pipeline": pipeline_page,
        "search": search_page,
        "cv": cv_page,
        "run": run_page,
    }
    page = pages[report_kind(directory)](directory)
    path = directory / REPORT_NAME
    write_text_atomic(path, page)
    return path


# ---------------------------------------------------------------------------------------------------
# Text and numbers.


class Html(str):
    """Markup that is already safe; every other value put on the page is escaped."""


class Num(str):
    """The text of a number (formatted already): a table right-aligns it."""


def _escape(value: Any) -> Html:
    return value if isinstance(value, Html) else Html(html.escape(str(value)))


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def fmt_number(value: Any) -> Num:
    """Integers exactly; floats to 4 significant digits (whole from 10,000 up); '–' when missing."""
    if value is None:
        return Num("–")
    if isinstance(value, bool):
        return Num("yes" if value else "no")
    if isinstance(value, int):
        return Num(f"{value:,}")
    if isinstance(value, float):
        if not math.isfinite(value):
            return Num(str(value))
        return Num(f"{value:,.0f}" if abs(value) >= 1e4 else f"{value:.4g}")
    return Num(str(value))


def fmt_percent(value: Any) -> Num:
    if _is_number(value) and math.isfinite(value):
        return Num(f"{value:.1%}")
    return fmt_number(value)


def fmt_seconds(value: Any) -> Num:
    if not _is_number(value):
        return Num("–")
    if value < 100:
        return Num(f"{value:.1f} s")
    minutes, seconds = divmod(round(value), 60)
    if minutes < 60:
        return Num(f"{minutes} min {seconds:02d} s")
    return Num(f"{minutes // 60} h {minutes % 60:02d} min")


# Metric names whose values in [0, 1] are shown as percentages ("learning rate" is not one of them).
_RATE_WORDS = (
    "accuracy",
    "exact_match",
    "exact match",
    "f1",
    "precision",
    "recall",
    "pass_rate",
    "pass rate",
    "fraction",
)


def fmt_metric(name: str, value: Any) -> Num:
    """A metric by its name: accuracy, exact match, F1 and fractions in [0, 1] as percentages, a
    relative change as a signed percentage."""
    if "relative" in name.lower() and _is_number(value) and math.isfinite(value):
        return Num(f"{value * 100:+.1f}%")
    rate = any(word in name.lower() for word in _RATE_WORDS)
    if rate and isinstance(value, float) and 0.0 <= value <= 1.0:
        return fmt_percent(value)
    return fmt_number(value)


def change(before: Any, after: Any, percent: bool = False) -> Num:
    """after - before, signed; in percentage points when the figures are fractions."""
    if not (_is_number(before) and _is_number(after)):
        return Num("–")
    delta = after - before
    if percent:
        return Num(f"{delta * 100:+.1f} pt")
    return Num(("+" if delta >= 0 else "") + fmt_number(delta))


def before_after(label: str, before: Any, after: Any, percent: bool = False) -> tuple[Any, ...]:
    """A table row: label, before, after, change."""
    shown = fmt_percent if percent else fmt_number
    return label, shown(before), shown(after), change(before, after, percent)


def both(first: Any, second: Any, separator: str = " / ") -> str:
    return f"{fmt_number(first)}{separator}{fmt_number(second)}"


# ---------------------------------------------------------------------------------------------------
# Markup: tables, figures, the page.


def _cell(value: Any, tag: str = "td") -> str:
    if isinstance(value, Html):
        return f"<{tag}>{value}</{tag}>"
    if isinstance(value, Num) or _is_number(value) or value is None:
        return f'<{tag} class="num">{html.escape(fmt_number(value))}</{tag}>'
    return f"<{tag}>{html.escape(fmt_number(value) if isinstance(value, bool) else str(value))}</{tag}>"


def table(
    header: Sequence[str] | None,
    rows: Iterable[Sequence[Any]],
    caption: str | None = None,
    css: str = "",
) -> Html:
    """A table; cells are escaped unless `Html`, numbers formatted and right-aligned. Without a
    header the first column is a row header (a key / value table)."""
    parts = [f'<table class="{css or ("kv" if header is None else "grid")}">']
    if caption:
        parts.append(f"<caption>{_escape(caption)}</caption>")
    if header:
        parts.append("<thead><tr>" + "".join(f"<th>{_escape(h)}</th>" for h in header) + "</tr></thead>")
    parts.append("<tbody>")
    for row in rows:
        first = _cell(_escape(row[0]), "th") if header is None else _cell(row[0])
        parts.append("<tr>" + first + "".join(_cell(c) for c in row[1:]) + "</tr>")
    parts.append("</tbody></table>")
    return Html("".join(parts))


def samples_table(header: Sequence[str], rows: Iterable[Sequence[Any]]) -> Html:
    """Generated text side by side: wrapped, and a model's "18" stays text, left-aligned."""
    return table(header, ([_text(c) for c in row] for row in rows), css="samples")


def _text(value: Any) -> Any:
    return value if _is_number(value) else str(value if value is not None else "–")


def href(target: Path, base: Path) -> str:
    """`target` as a URL relative to the folder `base`: never absolute, so the folder can move."""
    relative = os.path.relpath(Path(target).resolve(), Path(base).resolve())
    return "/".join(quote(part) for part in Path(relative).parts)


def link(target: Path, base: Path, text: str) -> Html:
    return Html(f'<a href="{html.escape(href(target, base))}">{_escape(text)}</a>')


def figure(image: Path, base: Path, caption: str) -> Html:
    return Html(
        f'<figure><img src="{html.escape(href(image, base))}" alt="{_escape(caption)}">'
        f"<figcaption>{_escape(caption)}</figcaption></figure>"
    )


def paragraph(text: str) -> Html:
    return Html(f"<p>{_escape(text)}</p>")


def heading(text: str) -> Html:
    return Html(f"<h3>{_escape(text)}</h3>")


def details(summary: str, body: str) -> Html:
    return Html(f"<details><summary>{_escape(summary)}</summary>{body}</details>")


def preformatted(text: str) -> Html:
    return Html(f"<pre>{_escape(text)}</pre>")


@dataclass
class Section:
    """One titled part of the page; a section with no parts is left out (its data does not exist)."""

    title: str
    parts: list[str] = field(default_factory=list)


_CSS = """
body { font-family: system-ui, -apple-system, "Segoe UI", sans-serif; margin: 0 auto; max-width: 1100px;
  padding: 1rem 1.5rem 4rem; color: #1d1d1f; line-height: 1.45; }
h1 { font-size: 1.6rem; margin-bottom: .2rem; } h2 { border-bottom: 1px solid #ddd; margin-top: 2.2rem; }
h3 { margin: 1.4rem 0 .4rem; } .meta { color: #555; margin-top: 0; }
nav { background: #f5f5f7; padding: .5rem .8rem; border-radius: 6px; font-size: .9rem; }
nav a { margin-right: 1rem; white-space: nowrap; }
table { border-collapse: collapse; margin: .6rem 0 1rem; font-size: .9rem; }
th, td { border: 1px solid #d6d6d6; padding: .25rem .55rem; text-align: left; vertical-align: top; }
thead th { background: #f0f0f3; } tbody tr:nth-child(even) { background: #fafafa; }
tbody th { background: #f7f7f9; font-weight: 600; }
td.num { text-align: right; white-space: nowrap; font-variant-numeric: tabular-nums; }
table.kv td.num { text-align: left; }
table.samples td { max-width: 28rem; white-space: pre-wrap; word-break: break-word; }
caption { text-align: left; font-weight: 600; padding-bottom: .25rem; white-space: nowrap; }
figure { margin: .8rem 0; } img { max-width: 100%; height: auto; border: 1px solid #eee; }
figcaption { color: #555; font-size: .85rem; }
pre { background: #f5f5f7; padding: .6rem; overflow-x: auto; font-size: .8rem; }
details { margin: .6rem 0; } summary { cursor: pointer; color: #0a58ca; }
.status-ran { color: #146c2e; } .status-failed { color: #b3261e; font-weight: 600; }
.status-skipped { color: #777; }
.warning { background: #fff4e5; border: 1px solid #f0a500; padding: .6rem .8rem; border-radius: 6px; }
"""

# Counts the images that failed to load once the page has loaded: a warning for the reader, and the
# body's data-images-* attributes for a headless check (see report/browser.py).
_SCRIPT = """
window.addEventListener("load", function () {
  var images = document.images, loaded = 0, broken = 0;
  for (var i = 0; i < images.length; i++) {
    if (images[i].complete && images[i].naturalWidth === 0) { broken++; }
    else if (images[i].complete) { loaded++; }
  }
  document.body.setAttribute("data-images-loaded", String(loaded));
  document.body.setAttribute("data-images-broken", String(broken));
  if (broken > 0) {
    var warning = document.getElementById("broken-images");
    warning.textContent = broken + " of " + images.length +
      " images did not load: keep the PNG files where they are, next to report.html.";
    warning.hidden = false;
  }
});
"""


def render_page(title: str, meta: Sequence[str], sections: Sequence[Section]) -> str:
    """The whole document: title, a line of facts, a table of contents, then the sections with parts."""
    shown = [s for s in sections if s.parts]
    anchors = [f"s{i}-" + re.sub(r"[^a-z0-9]+", "-", s.title.lower()).strip("-") for i, s in enumerate(shown)]
    nav = "".join(f'<a href="#{a}">{_escape(s.title)}</a>' for a, s in zip(anchors, shown, strict=True))
    body = "".join(
        f'<section id="{a}"><h2>{_escape(s.title)}</h2>{"".join(s.parts)}</section>\n'
        for a, s in zip(anchors, shown, strict=True)
    )
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>{_escape(title)}</title><style>{_CSS}</style></head>\n"
        f'<body><h1>{_escape(title)}</h1><p class="meta">{" · ".join(_escape(m) for m in meta)}</p>'
        '<p id="broken-images" class="warning" hidden></p>'
        f"<nav>{nav}</nav>\n{body}<script>{_SCRIPT}</script></body></html>\n"
    )


def _now() -> str:
    return datetime.datetime.now().strftime("%Y-%m-%d %H:%M")


def _modified(path: Path) -> str:
    return datetime.datetime.fromtimestamp(path.stat().st_mtime).strftime("%Y-%m-%d %H:%M")


def read_json(path: Path) -> Any:
    """The JSON in `path`, or None when there is no such file."""
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise RunDirError(
            f"{path}, line {exc.lineno}: not valid JSON ({exc.msg}); the file is damaged or still being "
            "written"
        ) from None


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    """The rows of a JSON-lines file; [] when there is none."""
    if not path.is_file():
        return []
    rows = []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if line.strip():
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError as exc:
                raise RunDirError(f"{path}, line {number}: not valid JSON ({exc.msg})") from None
    return rows


def _run_dir(run: str | None, base: Path) -> Path | None:
    if not run:
        return None
    return Path(run) if Path(run).is_absolute() else base / run


def run_cell(run: str | None, base: Path) -> Any:
    """A link to a run's report.html when it has one, else the run's name."""
    folder = _run_dir(run, base)
    if folder is not None and (folder / REPORT_NAME).is_file():
        return link(folder / REPORT_NAME, base, run or REPORT_NAME)
    return f"{run} (no report)" if run else "–"


# ---------------------------------------------------------------------------------------------------
# A stage run.


@dataclass
class StageRun:
    """What a stage run left that the report reads; any file may be missing (an unfinished run)."""

    path: Path
    recipe: dict[str, Any]
    recipe_text: str
    env: dict[str, Any]
    prepared: dict[str, Any]
    evaluation: dict[str, Any]
    rows: list[dict[str, Any]]

    @property
    def stage(self) -> str:
        return str(self.recipe.get("stage") or self.evaluation.get("stage") or "run")

    @property
    def finished(self) -> bool:
        return bool(self.evaluation)

    def setting(self, block: str, key: str) -> Any:
        return (self.recipe.get(block) or {}).get(key)

    def series(self, key: str) -> list[float]:
        """The logged values of one metric, in step order (non-finite ones are logged as text: skipped)."""
        return [r[key] for r in self.rows if _is_number(r.get(key))]

    def last_step(self) -> int | None:
        if isinstance(self.evaluation.get("steps"), int):
            return self.evaluation["steps"]
        steps = [r["step"] for r in self.rows if isinstance(r.get("step"), int)]
        return max(steps) if steps else None


def load_stage_run(directory: Path) -> StageRun:
    import yaml

    recipe_text = (directory / "recipe.yaml").read_text(encoding="utf-8")
    try:
        recipe = yaml.safe_load(recipe_text)
    except yaml.YAMLError as exc:
        raise RunDirError(f"{directory / 'recipe.yaml'}: not valid YAML ({exc})") from None
    return StageRun(
        path=directory,
        recipe=recipe if isinstance(recipe, dict) else {},
        recipe_text=recipe_text,
        env=read_json(directory / "env.json") or {},
        prepared=read_json(directory / "prepared.json") or {},
        evaluation=read_json(directory / "eval.json") or {},
        rows=read_jsonl(directory / "metrics.jsonl"),
    )


def run_page(directory: Path) -> str:
    run = load_stage_run(directory)
    sections = [
        environment_section(run),
        training_section(run),
        lr_section(run),
        budget_section(run),
        data_section(run),
        forgetting_transfer_section(run),
        results_section(run),
        samples_section(run),
    ]
    finished = f"finished {_modified(directory / 'eval.json')}" if run.finished else "not finished"
    meta = [f"stage {run.stage}", str(directory), finished, f"report written {_now()}"]
    return render_page(f"{run.stage} run: {directory.name}", meta, sections)


_ENVIRONMENT = (
    ("device", "device"),
    ("precision", "precision"),
    ("processes (world size)", "world_size"),
    ("CPU threads", "threads"),
    ("seed", "seed"),
    ("CUDA", "cuda"),
    ("Python", "python"),
    ("platform", "platform"),
)


def environment_section(run: StageRun) -> Section:
    section = Section("Environment and recipe")
    env = run.env
    if env:
        rows: list[tuple[str, Any]] = [(label, env[key]) for label, key in _ENVIRONMENT if key in env]
        packages = env.get("packages") or {}
        if packages:
            rows.append(("packages", ", ".join(f"{name} {v or '–'}" for name, v in packages.items())))
        section.parts.append(table(None, rows))
    if run.recipe_text:
        section.parts.append(details("the resolved recipe (recipe.yaml)", preformatted(run.recipe_text)))
    return section


def overfitting_figures(run: StageRun) -> tuple[dict[str, Any] | None, str]:
    """The run's overfitting report and where it is from: eval.json, or worked out here from
    metrics.jsonl for the stages that do not record one."""
    recorded = run.evaluation.get("overfitting")
    if isinstance(recorded, dict):
        return recorded, "eval.json"
    if not run.series("val_loss"):
        return None, ""
    from peaufine.evaluate.overfitting import overfitting_report

    report = overfitting_report(run.rows, bool(run.evaluation.get("restored_best")))
    return {**report.as_dict(), "verdict": report.verdict()}, "metrics.jsonl, by this report"


def early_stop_step(run: StageRun) -> int | None:
    """The step a finished run stopped at, when that is before train.max_steps (early stopping)."""
    if not run.finished:
        return None
    last, max_steps = run.last_step(), run.setting("train", "max_steps")
    short = isinstance(last, int) and isinstance(max_steps, int) and last < max_steps
    return last if run.evaluation.get("stopped_early") or short else None


def training_section(run: StageRun) -> Section:
    from peaufine.report import plots

    section = Section("Training")
    evaluation = run.evaluation
    if not run.rows and not evaluation:
        return section
    overfitting, overfitting_source = overfitting_figures(run)
    overfitting = overfitting or {}
    stopped_at = early_stop_step(run)
    max_steps = run.setting("train", "max_steps")
    summary: list[tuple[str, Any]] = [
        ("status", "finished" if run.finished else "not finished: no eval.json yet"),
        ("steps", f"{fmt_number(run.last_step())} of {fmt_number(max_steps)} (train.max_steps)"),
    ]
    if stopped_at is not None:
        summary.append(("stopped early", f"at step {stopped_at:,}"))
    if _is_number(evaluation.get("tokens_seen")):
        summary.append(("tokens seen", evaluation["tokens_seen"]))
    seconds = evaluation.get("train_seconds")
    if not _is_number(seconds) and run.series("seconds"):  # RL logs each step's time
        seconds = sum(run.series("seconds"))
    if _is_number(seconds):
        summary.append(("training time", fmt_seconds(seconds)))
    throughput = run.series("tokens_per_s")
    if throughput:
        summary.append(("mean throughput (tokens/s)", sum(throughput) / len(throughput)))
    train_losses, val_losses = run.series("train_loss"), run.series("val_loss")
    if train_losses and run.stage != "rl":  # RL's train_loss is the policy objective, not a loss curve
        summary.append(("final train loss", train_losses[-1]))
    if val_losses:
        summary.append(("final validation loss", val_losses[-1]))
    if _is_number(evaluation.get("val_perplexity")):
        summary.append(("validation perplexity", evaluation["val_perplexity"]))
    best = overfitting.get("best_step")
    if best is not None:
        summary.append(
            ("best validation loss", f"{fmt_number(overfitting.get('best_val_loss'))} at step {best:,}")
        )
    if "restored_best" in evaluation or "restored_best" in overfitting:
        summary.append(
            ("best weights restored", evaluation.get("restored_best", overfitting.get("restored_best")))
        )
    grad_norms = run.series("grad_norm")
    if grad_norms:
        summary.append(("gradient norm, last / largest", both(grad_norms[-1], max(grad_norms))))
    section.parts.append(table(None, summary))

    if run.stage == "rl":
        section.parts += rl_plots(run)
    elif train_losses or val_losses:
        onset = overfitting.get("onset_step")
        plots.plot_losses(run.rows, run.path / LOSS_PLOT, best, early_stop_step=stopped_at, onset_step=onset)
        marks = ["best validation step"] if best is not None else []
        marks += ["overfitting onset"] if onset is not None else []
        marks += ["early stop"] if stopped_at is not None else []
        caption = "Training and validation loss" + (f"; marked: {', '.join(marks)}" if marks else "")
        section.parts.append(figure(run.path / LOSS_PLOT, run.path, caption))

    verdicts: list[tuple[str, str, str]] = []
    if overfitting:
        verdicts.append(("overfitting", str(overfitting.get("verdict", "–")), overfitting_source))
    if stopped_at is not None:
        verdicts.append(
            ("early stopping", f"stopped at step {stopped_at:,} of {fmt_number(max_steps)}", "eval.json")
        )
    for key in ("forgetting", "transfer"):
        verdict = (evaluation.get(key) or {}).get("verdict")
        if verdict:
            verdicts.append((key, str(verdict), "eval.json"))
    if verdicts:
        section.parts.append(table(["check", "verdict", "from"], verdicts, caption="Verdicts"))
    if best is not None:
        rows = [
            ("best step", best),
            ("best validation loss", overfitting.get("best_val_loss")),
            ("overfitting onset step", overfitting.get("onset_step")),
            ("final step", overfitting.get("final_step")),
            ("final train loss", overfitting.get("final_train_loss")),
            ("final validation loss", overfitting.get("final_val_loss")),
            ("generalisation gap (validation - train)", overfitting.get("generalisation_gap")),
        ]
        section.parts.append(table(None, rows, caption="Overfitting"))
    return section


def rl_plots(run: StageRun) -> list[str]:
    """The stage's reward / KL plot (drawn here when the run has none) and the policy diagnostics."""
    from peaufine.report import plots

    parts: list[str] = []
    curves = run.path / "rl.png"
    if not curves.is_file() and run.series("reward_mean"):
        curves = run.path / RL_PLOT
        plots.plot_rl(run.rows, curves)
    if curves.is_file():
        caption = "Reward per step (mean and min-max over the samples) and KL to the reference"
        parts.append(figure(curves, run.path, caption))
    if plots.plot_rl_diagnostics(run.rows, run.path / RL_DIAGNOSTICS_PLOT):
        parts.append(figure(run.path / RL_DIAGNOSTICS_PLOT, run.path, "Policy diagnostics per step"))
    return parts


def lr_section(run: StageRun) -> Section:
    from peaufine.report import plots

    section = Section("Learning-rate schedule")
    lrs = run.series("lr")
    if not lrs:
        return section
    plots.plot_lr(run.rows, run.path / LR_PLOT)
    rows = [
        ("schedule", run.setting("train", "schedule") or "–"),
        ("warmup steps", run.setting("train", "warmup_steps")),
        ("peak / floor lr (recipe)", both(run.setting("train", "lr"), run.setting("train", "min_lr"))),
        (
            "lr at the first / highest / last logged step",
            " / ".join(fmt_number(v) for v in (lrs[0], max(lrs), lrs[-1])),
        ),
    ]
    section.parts += [
        table(None, rows),
        figure(run.path / LR_PLOT, run.path, "Learning rate per optimiser step"),
    ]
    return section


def estimate_budget(run: StageRun) -> tuple[Any, Any, str] | None:
    """Parameters and training memory of the run's model, on the meta device (no weight allocated):
    model/config.json with the recipe's freezing and adapter applied as the stage applies them."""
    if not (run.path / "model" / "config.json").is_file():
        return None
    import torch
    from transformers import AutoConfig, AutoModelForSequenceClassification

    from peaufine.models.adapters import apply_adapter, apply_freeze
    from peaufine.models.budget import count_parameters, estimate_memory, meta_model
    from peaufine.models.build import special_token_ids
    from peaufine.recipe import validate_recipe

    recipe = validate_recipe(run.recipe, source=str(run.path / "recipe.yaml"))
    config = AutoConfig.from_pretrained(run.path / "model", trust_remote_code=recipe.model.trust_remote_code)
    special: list[int] | None = None
    if any(name.endswith("ForSequenceClassification") for name in config.architectures or []):
        with torch.device("meta"):  # a reward model or classifier: a score head instead of the LM head
            model = AutoModelForSequenceClassification.from_config(config)
    else:
        model = meta_model(config)
        special = special_token_ids(run.path / "model")
    apply_freeze(model, recipe.model.freeze)
    model = apply_adapter(model, recipe.model.adapter, special)
    budget = count_parameters(model)

    train = recipe.train
    sequences = train.micro_batch_size or train.batch_size
    length = recipe.data.block_size if run.stage == "pretrain" else recipe.data.max_length
    note = f"{sequences} sequences x {length} tokens per micro-batch"
    if run.stage == "dpo":  # each pair is a chosen and a rejected sequence
        note = f"{sequences} pairs = {2 * sequences} sequences x up to {length} tokens per micro-batch"
        sequences *= 2
    elif run.stage == "rl":
        rl = recipe.method.rl
        sequences = max(1, rl.prompts_per_step * rl.group_size // rl.mini_batches)
        note = f"{sequences} sampled answers x up to {length} tokens per mini-batch; the policy alone"
    elif run.stage != "pretrain":
        note = f"{sequences} sequences x up to {length} tokens (data.max_length) per micro-batch"
    autocast = run.env.get("precision") in ("bf16", "fp16")
    memory = estimate_memory(
        config, budget, batch_size=sequences, seq_len=length, activation_bytes=2 if autocast else 4
    )
    return budget, memory, note


def budget_section(run: StageRun) -> Section:
    from peaufine.models.budget import format_bytes

    section = Section("Parameter budget")
    # what a stage records, when it does: {"parameters": {"total": n, "trainable": n}} in eval.json
    # or prepared.json; otherwise the report counts on the meta device
    for source in (run.evaluation, run.prepared):
        counts = source.get("parameters")
        if isinstance(counts, dict) and _is_number(counts.get("total")):
            total, trainable = counts["total"], counts.get("trainable")
            share = fmt_percent(trainable / total) if _is_number(trainable) and total else "–"
            rows = [
                ("total parameters", total),
                ("trainable parameters", trainable),
                ("trainable share", share),
            ]
            section.parts.append(table(None, rows, caption="Parameters, as the run recorded them"))
            return section
    estimate = estimate_budget(run)
    if estimate is None:
        return section
    budget, memory, note = estimate
    rows = [
        ("total parameters", budget.total),
        ("trainable parameters", budget.trainable),
        ("trainable share", fmt_percent(budget.trainable / budget.total) if budget.total else "–"),
        ("frozen parameters", budget.frozen),
        ("embedding parameters", budget.embedding),
    ]
    if budget.active_per_token is not None:
        rows.append(("active per token (MoE)", budget.active_per_token))
    caption = (
        "Parameters: model/config.json with the recipe's adapter and freezing, counted on the meta device"
    )
    section.parts.append(table(None, rows, caption=caption))
    optimizer = f"AdamW, {memory.optimizer_state_bytes} B per trainable parameter"
    memory_rows = [
        ("weights", Num(format_bytes(memory.weights)), f"{memory.param_bytes} B per parameter"),
        ("gradients", Num(format_bytes(memory.gradients)), f"{memory.grad_bytes} B per trainable parameter"),
        ("optimizer state", Num(format_bytes(memory.optimizer)), optimizer),
        (
            "activations",
            Num(format_bytes(memory.activations)),
            f"{memory.activation_bytes} B per value, fp32 logits",
        ),
        ("total", Num(format_bytes(memory.total)), note),
    ]
    section.parts.append(
        table(
            ["part", "estimate", "assuming"], memory_rows, caption="Training memory, estimated (not measured)"
        )
    )
    return section


def data_section(run: StageRun) -> Section:
    """prepared.json: its counts per split as one table each, its other facts in one key / value table."""
    section = Section("Data")
    facts: list[tuple[str, Any]] = []
    for key, value in run.prepared.items():
        if isinstance(value, dict) and value and all(isinstance(v, dict) for v in value.values()):
            columns = list(dict.fromkeys(k for v in value.values() for k in v))
            rows = [(split, *(counts.get(c) for c in columns)) for split, counts in value.items()]
            section.parts.append(table(["split", *columns], rows, caption=key))
        elif isinstance(value, dict):
            facts += [(f"{key}: {k}", v) for k, v in value.items() if not isinstance(v, (dict, list))]
        elif not isinstance(value, list):
            facts.append((key, value))
    if facts:
        section.parts.append(table(None, facts, caption="prepared.json"))
    return section


_TRANSFER_LABELS = {
    "fine_tuned": "fine-tuned (this run)",
    "base_zero_shot": "base model, zero-shot",
    "base_few_shot": "base model, few-shot (in-context examples)",
    "from_scratch": "same architecture, trained from scratch",
}


def forgetting_transfer_section(run: StageRun) -> Section:
    section = Section("Forgetting and transfer")
    forgetting = run.evaluation.get("forgetting")
    if isinstance(forgetting, dict) and "loss_before" in forgetting:
        relative = forgetting.get("relative_change")
        rows = [
            ("general text", forgetting.get("source", "–")),
            ("loss before fine-tuning", forgetting.get("loss_before")),
            ("loss after fine-tuning", forgetting.get("loss_after")),
            ("relative change", Num(f"{relative:+.1%}") if _is_number(relative) else "–"),
            (
                "perplexity before / after",
                both(forgetting.get("perplexity_before"), forgetting.get("perplexity_after")),
            ),
            ("threshold", fmt_percent(forgetting.get("threshold"))),
            ("forgot", forgetting.get("forgot")),
            ("verdict", forgetting.get("verdict", "–")),
        ]
        section.parts.append(table(None, rows, caption="Forgetting: loss on general text"))
    elif isinstance(forgetting, dict):
        section.parts.append(paragraph(f"Forgetting: {forgetting.get('verdict', 'not measured')}"))
    transfer = run.evaluation.get("transfer")
    if isinstance(transfer, dict):
        figures = transfer.get("task_val_loss") or {}
        tuned = figures.get("fine_tuned")
        rows = [
            (_TRANSFER_LABELS.get(key, key), value, change(tuned, value) if key != "fine_tuned" else "–")
            for key, value in figures.items()
        ]
        if rows:
            header = ["model", "task validation loss", "minus fine-tuned"]
            section.parts.append(
                table(header, rows, caption="Transfer: task validation loss, lower is better")
            )
        if transfer.get("verdict"):
            section.parts.append(paragraph(f"Transfer: {transfer['verdict']}"))
    return section


def results_section(run: StageRun) -> Section:
    section = Section(f"Results ({run.stage})")
    results: dict[str, Callable[[dict[str, Any]], list[str]]] = {
        "pretrain": pretrain_results,
        "sft": sft_results,
        "reward": reward_results,
        "dpo": dpo_results,
        "rl": rl_results,
        "classify": classify_results,
    }
    if run.evaluation and run.stage in results:
        section.parts += results[run.stage](run.evaluation)
    return section


def pretrain_results(evaluation: dict[str, Any]) -> list[str]:
    recall = evaluation.get("fact_recall")
    if not isinstance(recall, dict):
        return []
    correct = both(recall.get("correct"), recall.get("total"), " of ")
    parts = [
        table(
            None, [("fact recall (cloze, greedy)", Num(f"{fmt_percent(recall.get('accuracy'))} ({correct})"))]
        )
    ]
    by_relation = recall.get("by_relation") or {}
    if by_relation:
        rows = [
            (
                name,
                c.get("correct"),
                c.get("total"),
                fmt_percent(c["correct"] / c["total"]) if c.get("total") else "–",
            )
            for name, c in by_relation.items()
        ]
        parts.append(
            table(["relation", "correct", "of", "accuracy"], rows, caption="Fact recall by relation")
        )
    misses = recall.get("misses") or []
    if misses:
        rows = [(m.get("prompt"), m.get("answer"), m.get("completion")) for m in misses]
        parts.append(
            details(
                f"the {len(misses)} facts missed", samples_table(["prompt", "expected", "completion"], rows)
            )
        )
    return parts


def sft_results(evaluation: dict[str, Any]) -> list[str]:
    parts: list[str] = []
    losses = evaluation.get("task_val_loss") or {}
    if losses:
        rows = [before_after("task validation loss", losses.get("before"), losses.get("after"))]
        parts.append(table(["", "before", "after", "change"], rows))
    answers = evaluation.get("answers") or {}
    rows = []
    for split, figures in answers.items():
        before, after = figures.get("before") or {}, figures.get("after") or {}
        n = after.get("n", before.get("n"))
        rows.append(
            before_after(
                f"{split}: exact match (n={n})", before.get("exact_match"), after.get("exact_match"), True
            )
        )
        rows.append(before_after(f"{split}: F1", before.get("f1"), after.get("f1"), True))
        scratch = figures.get("from_scratch")
        if isinstance(scratch, dict):
            rows.append(
                (
                    f"{split}: exact match, the model trained from scratch",
                    "–",
                    fmt_percent(scratch.get("exact_match")),
                    "–",
                )
            )
    if rows:
        caption = "Greedy answers to the task's questions, before and after fine-tuning"
        parts.append(table(["answers", "before", "after", "change"], rows, caption=caption))
    return parts


def reward_results(evaluation: dict[str, Any]) -> list[str]:
    def row(label: str, figures: dict[str, Any]) -> tuple[Any, ...]:
        return label, figures.get("pairs"), fmt_percent(figures.get("accuracy")), figures.get("mean_margin")

    parts: list[str] = []
    splits = {"validation, before training": (evaluation.get("before") or {}).get("validation")}
    splits |= {split: evaluation.get(split) for split in ("validation", "heldout")}
    splits = {label: figures for label, figures in splits.items() if isinstance(figures, dict)}
    if splits:
        header = ["pairs", "n", "accuracy (chosen scored higher)", "mean margin"]
        parts.append(
            table(header, [row(label, f) for label, f in splits.items()], caption="Pairwise accuracy")
        )
    kinds: dict[str, dict[str, str]] = {}
    for label, figures in splits.items():
        for kind, counts in (figures.get("by_kind") or {}).items():
            kinds.setdefault(kind, {})[label] = (
                f"{fmt_percent(counts.get('accuracy'))} (n={counts.get('pairs')})"
            )
    if kinds:
        rows = [(kind, *(Num(shown.get(label, "–")) for label in splits)) for kind, shown in kinds.items()]
        parts.append(table(["kind of pair", *splits], rows, caption="Accuracy by kind of pair"))
    return parts


def dpo_results(evaluation: dict[str, Any]) -> list[str]:
    parts = [paragraph(f"loss {evaluation.get('loss', '–')}, beta {fmt_number(evaluation.get('beta'))}")]
    before, after = evaluation.get("before") or {}, evaluation.get("after") or {}
    rows = [
        before_after(key.removeprefix("likelihood_accuracy_"), before.get(key), after.get(key), True)
        for key in sorted(k for k in after if k.startswith("likelihood_accuracy_"))
    ]
    if rows:
        caption = "The policy gives the chosen answer the higher likelihood (likelihood accuracy)"
        parts.append(table(["pairs", "before", "after", "change"], rows, caption=caption))
    final = evaluation.get("final") or {}
    if final:
        rows = [
            (
                split,
                fmt_percent(f.get("accuracy")),
                f.get("reward_margin"),
                f.get("implicit_kl"),
                f.get("loss"),
            )
            for split, f in final.items()
        ]
        header = ["pairs", "implicit-reward accuracy", "reward margin", "log-ratio to reference", "loss"]
        parts.append(table(header, rows, caption="Implicit reward after training"))
    rows = []
    for split in ("validation", "heldout"):
        b, a = before.get(f"answers_{split}"), after.get(f"answers_{split}")
        if isinstance(b, dict) and isinstance(a, dict):
            rows += [
                before_after(
                    f"{split}: annotator score (0-3), greedy",
                    b.get("annotator_score"),
                    a.get("annotator_score"),
                ),
                before_after(
                    f"{split}: annotator score (0-3), sampled",
                    b.get("annotator_score_sampled"),
                    a.get("annotator_score_sampled"),
                ),
                before_after(
                    f"{split}: exact match (n={a.get('n')})", b.get("exact_match"), a.get("exact_match"), True
                ),
            ]
    if rows:
        parts.append(
            table(["answers", "before", "after", "change"], rows, caption="Answers to the questions")
        )
    return parts


_RL_FIGURES = (
    ("mean reward, sampled", "reward_sampled", False),
    ("mean reward, greedy", "reward_greedy", False),
    ("exact match, greedy", "exact_match_greedy", True),
    ("KL to the reference (nats per answer)", "kl_to_reference", False),
    ("response length (tokens)", "response_length", False),
)


def rl_results(evaluation: dict[str, Any]) -> list[str]:
    parts = [paragraph(f"algorithm {evaluation.get('algorithm', '–')}")]
    kept = evaluation.get("pass_rate_filter")
    if isinstance(kept, dict):
        low, high = kept.get("range") or (None, None)
        rows = [
            (
                f"prompts with a pass rate in [{low}, {high}]",
                both(kept.get("prompts_kept"), kept.get("prompts_before"), " of "),
            ),
            (
                "mean pass rate, all / kept",
                both(kept.get("mean_pass_rate_before"), kept.get("mean_pass_rate_kept")),
            ),
        ]
        parts.append(table(None, rows, caption="Prompts kept for training"))
    before, after = evaluation.get("before") or {}, evaluation.get("after") or {}
    rows = [
        before_after(label, before.get(key), after.get(key), percent)
        for label, key, percent in _RL_FIGURES
        if key in before or key in after
    ]
    sources_before, sources_after = before.get("by_source_greedy") or {}, after.get("by_source_greedy") or {}
    for source in dict.fromkeys([*sources_before, *sources_after]):
        rows.append(
            before_after(f"reward {source}, greedy", sources_before.get(source), sources_after.get(source))
        )
    if rows:
        caption = "On the evaluation prompts, before and after RL"
        parts.append(table(["", "before", "after", "change"], rows, caption=caption))
    if _is_number(evaluation.get("final_kl")):
        parts.append(
            paragraph(f"final KL to the reference: {fmt_number(evaluation['final_kl'])} nats per answer")
        )
    return parts


def classify_results(evaluation: dict[str, Any]) -> list[str]:
    parts: list[str] = []
    tuned, scratch = evaluation.get("validation") or {}, evaluation.get("from_scratch") or {}
    names = [name for name, value in tuned.items() if _is_number(value)]
    if names:
        header = ["metric", "fine-tuned", *(["from scratch"] if scratch else [])]
        rows = [
            (name, fmt_metric(name, tuned[name]), *([fmt_metric(name, scratch.get(name))] if scratch else []))
            for name in names
        ]
        parts.append(table(header, rows, caption="Validation"))
    per_class = tuned.get("per_class") or {}
    if per_class:
        rows = [
            (label, *(fmt_percent(c.get(k)) for k in ("precision", "recall", "f1")), c.get("support"))
            for label, c in per_class.items()
        ]
        parts.append(
            table(["class", "precision", "recall", "F1", "support"], rows, caption="Per class, validation")
        )
    return parts


def answers_side_by_side(columns: dict[str, Any]) -> Html | None:
    """Question, reference, and each model's prediction (before, after, ...) side by side, by position
    (every evaluation answers the same questions in the same order)."""
    samples = {name: (figures or {}).get("samples") or [] for name, figures in columns.items()}
    samples = {name: s for name, s in samples.items() if s}
    if not samples:
        return None
    rows = []
    for i in range(max(len(s) for s in samples.values())):
        first = next(s[i] for s in samples.values() if i < len(s))
        predictions = [s[i].get("prediction") if i < len(s) else "–" for s in samples.values()]
        rows.append((first.get("question"), first.get("answer"), *predictions))
    return samples_table(["question", "reference", *samples], rows)


def samples_section(run: StageRun) -> Section:
    section = Section("Samples")
    evaluation = run.evaluation
    for split, figures in (evaluation.get("answers") or {}).items():
        shown = answers_side_by_side(
            {
                "before": figures.get("before"),
                "after": figures.get("after"),
                "from scratch": figures.get("from_scratch"),
            }
        )
        if shown:
            section.parts += [heading(f"{split} questions"), shown]
    if run.stage == "dpo":
        before, after = evaluation.get("before") or {}, evaluation.get("after") or {}
        for split in ("validation", "heldout"):
            shown = answers_side_by_side(
                {"before": before.get(f"answers_{split}"), "after": after.get(f"answers_{split}")}
            )
            if shown:
                section.parts += [heading(f"{split} questions"), shown]
    continuations = evaluation.get("samples")
    if isinstance(continuations, list) and continuations:
        rows = [(s.get("prompt"), s.get("text")) for s in continuations]
        section.parts += [heading("Generated continuations"), samples_table(["prompt", "continuation"], rows)]
    if run.stage == "rl":
        section.parts += rl_samples(run)
    return section


def rl_samples(run: StageRun) -> list[str]:
    """Greedy answers before and after RL, and the answers sampled at the first and last sampled step."""
    parts: list[str] = []
    before = (run.evaluation.get("before") or {}).get("samples") or []
    after = (run.evaluation.get("after") or {}).get("samples") or []
    if before or after:
        rows = [
            (
                (before[i] if i < len(before) else after[i]).get("prompt"),
                before[i].get("greedy") if i < len(before) else "–",
                after[i].get("greedy") if i < len(after) else "–",
            )
            for i in range(max(len(before), len(after)))
        ]
        parts += [
            heading("Greedy answers to evaluation prompts"),
            samples_table(["prompt", "before", "after"], rows),
        ]
    sampled = read_jsonl(run.path / "samples.jsonl")
    steps = sorted({s["step"] for s in sampled if isinstance(s.get("step"), int)})
    for step in dict.fromkeys(steps[:1] + steps[-1:]):
        rows = [
            (s.get("prompt"), s.get("completion"), s.get("reward")) for s in sampled if s.get("step") == step
        ]
        parts += [
            heading(f"Sampled in training, step {step:,}"),
            samples_table(["prompt", "completion", "reward"], rows),
        ]
    return parts


# ---------------------------------------------------------------------------------------------------
# A search: study.json and trials.jsonl.


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
        if _is_number(base_value) and _is_number(best_value):
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
    complete = [t for t in trials if t.get("state") == "COMPLETE" and _is_number(t.get("value"))]
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
        f"study.json of {_modified(directory / 'study.json')}",
        f"report written {_now()}",
    ]
    return render_page(f"search: {directory.name}", meta, [overview, ranking, plots, recipe])


# ---------------------------------------------------------------------------------------------------
# A cross-validation: cv.json.


def _metric_rank(name: str) -> int:
    """The metrics a reader looks for first: validation loss, other losses, then accuracies."""
    key = name.lower()
    if key == "val_loss":
        return 0
    if "loss" in key:
        return 1
    return 2 if any(word in key for word in _RATE_WORDS) else 3


def cv_page(directory: Path) -> str:
    cv = read_json(directory / "cv.json") or {}
    metrics = {
        name: figures
        for name, figures in (cv.get("metrics") or {}).items()
        if isinstance(figures, dict) and _is_number(figures.get("mean"))
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
        f"cv.json of {_modified(directory / 'cv.json')}",
        f"report written {_now()}",
    ]
    return render_page(f"cross-validation: {directory.name}", meta, [summary, results, reports])


# ---------------------------------------------------------------------------------------------------
# A pipeline: pipeline.json.


def _headline(values: dict[str, Any] | None) -> str:
    return "; ".join(f"{label} {fmt_metric(label, value)}" for label, value in (values or {}).items()) or "–"


def stage_plots(run_dir: Path) -> list[tuple[Path, str]]:
    """A stage run's key plots: the report's own (with its markers) before the stage's."""
    found = []
    for names, caption in (((LOSS_PLOT, "loss.png"), "loss curves"), (("rl.png", RL_PLOT), "reward and KL")):
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
        status = _escape(stage.get("status", "–"))
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
        run_dir = _run_dir(stage.get("run"), directory)
        if run_dir is None or not run_dir.is_dir():
            section.parts.append(paragraph("No run folder: the stage left none."))
            continue
        if (run_dir / REPORT_NAME).is_file():
            section.parts.append(
                Html(f"<p>{link(run_dir / REPORT_NAME, directory, f'the full report of {label}')}</p>")
            )
        section.parts.append(paragraph(f"headline: {_headline(stage.get('headline'))}"))
        evaluation = read_json(run_dir / "eval.json") or {}
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
        f"report written {_now()}",
    ]
    return render_page(f"pipeline: {name}", meta, sections)

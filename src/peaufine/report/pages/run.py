"""A stage run's page: its sections in the order it shows them, and its own environment and recipe,
training (loss curves, verdicts, overfitting), learning-rate schedule, data, forgetting and transfer."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from peaufine.evaluate.leakage import leakage_lines
from peaufine.evaluate.overfitting import overfitting_report
from peaufine.report import plots
from peaufine.report.pages.budget import budget_section
from peaufine.report.pages.results import results_section
from peaufine.report.pages.samples import samples_section
from peaufine.report.pages.stage_run import StageRun, load_stage_run
from peaufine.report.toolkit import (
    Num,
    Section,
    both,
    change,
    details,
    figure,
    fmt_number,
    fmt_percent,
    fmt_seconds,
    is_number,
    modified_stamp,
    now_stamp,
    paragraph,
    preformatted,
    render_page,
    table,
)
from peaufine.rundir import EVAL, PREPARED, RunDir

# Plots the report draws itself, named apart from the stage's own loss.png and rl.png.
LOSS_PLOT = "report-loss.png"
LR_PLOT = "report-lr.png"
RL_PLOT = "report-rl.png"
RL_DIAGNOSTICS_PLOT = "report-rl-diagnostics.png"


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
    finished = f"finished {modified_stamp(RunDir(directory).eval)}" if run.finished else "not finished"
    meta = [f"stage {run.stage}", str(directory), finished, f"report written {now_stamp()}"]
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
        return recorded, EVAL
    if not run.series("val_loss"):
        return None, ""

    restored = bool(run.evaluation.get("restored_best"))
    report = overfitting_report(run.rows, restored, examples=validation_examples(run))
    return {**report.as_dict(), "verdict": report.verdict()}, "metrics.jsonl, by this report"


def saved_validation(run: StageRun, overfitting: dict[str, Any]) -> list[tuple[str, Any]]:
    """The validation loss of the weights the run saved, saying which: the best, when the run restored
    them (the last evaluation's is then shown apart, as such), else the last evaluation's."""
    evals = [(r["step"], r["val_loss"]) for r in run.rows if is_number(r.get("val_loss"))]
    if not evals and is_number(overfitting.get("final_val_loss")):  # no metrics.jsonl: eval.json's
        evals = [(overfitting.get("final_step"), overfitting["final_val_loss"])]
    if not evals:
        return []
    last_step, last_val = evals[-1]
    restored = bool(run.evaluation.get("restored_best", overfitting.get("restored_best")))
    best_step, best_val = overfitting.get("best_step"), overfitting.get("best_val_loss")
    if not restored or best_step is None or best_step == last_step:
        return [("final validation loss", last_val)]
    return [
        (f"validation loss of the saved weights (best, step {fmt_number(best_step)}, restored)", best_val),
        (f"validation loss at the last evaluation (step {fmt_number(last_step)})", last_val),
    ]


def validation_examples(run: StageRun) -> int | None:
    """What a stage's validation loss rests on, from its files: the validation pairs of a preference
    stage, the validation blocks of pretraining (val_tokens in block_size rows); None when unknown."""
    pairs = (run.evaluation.get("pairs") or {}).get("validation")
    if isinstance(pairs, dict) and isinstance(pairs.get("pairs"), int):
        return pairs["pairs"]
    tokens, block = run.evaluation.get("val_tokens"), run.setting("data", "block_size")
    if isinstance(tokens, int) and isinstance(block, int) and block > 0:
        return max(0, (tokens - 1 - block) // block + 1)  # PackedBlocks' rows
    return None


def early_stop_step(run: StageRun) -> int | None:
    """The step a finished run stopped at, when that is before train.max_steps (early stopping)."""
    if not run.finished:
        return None
    last, max_steps = run.last_step(), run.setting("train", "max_steps")
    short = isinstance(last, int) and isinstance(max_steps, int) and last < max_steps
    return last if run.evaluation.get("stopped_early") or short else None


def training_section(run: StageRun) -> Section:

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
    if is_number(evaluation.get("tokens_seen")):
        summary.append(("tokens seen", evaluation["tokens_seen"]))
    seconds = evaluation.get("train_seconds")
    if not is_number(seconds) and run.series("seconds"):  # RL logs each step's time
        seconds = sum(run.series("seconds"))
    if is_number(seconds):
        summary.append(("training time", fmt_seconds(seconds)))
    throughput = run.series("tokens_per_s")
    if throughput:
        summary.append(("mean throughput (tokens/s)", sum(throughput) / len(throughput)))
    train_losses, val_losses = run.series("train_loss"), run.series("val_loss")
    if train_losses and run.stage != "rl":  # RL's train_loss is the policy objective, not a loss curve
        summary.append(("final train loss", train_losses[-1]))
    summary += saved_validation(run, overfitting)
    if is_number(evaluation.get("val_perplexity")):
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
            ("early stopping", f"stopped at step {stopped_at:,} of {fmt_number(max_steps)}", EVAL)
        )
    for key in ("forgetting", "transfer"):
        verdict = (evaluation.get(key) or {}).get("verdict")
        if verdict:
            verdicts.append((key, str(verdict), EVAL))
    verdicts += [("leakage", line, EVAL) for line in leakage_lines(evaluation.get("leakage"))]
    if verdicts:
        section.parts.append(table(["check", "verdict", "from"], verdicts, caption="Verdicts"))
    if best is not None:
        rows = [
            ("best step", best),
            ("best validation loss", overfitting.get("best_val_loss")),
            ("overfitting onset step", overfitting.get("onset_step")),
            ("final step", overfitting.get("final_step")),
            ("final train loss", overfitting.get("final_train_loss")),
            *saved_validation(run, overfitting),
            ("generalisation gap (validation - train)", overfitting.get("generalisation_gap")),
        ]
        section.parts.append(table(None, rows, caption="Overfitting"))
    return section


def rl_plots(run: StageRun) -> list[str]:
    """The stage's reward / KL plot (drawn here when the run has none) and the policy diagnostics."""

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
        section.parts.append(table(None, facts, caption=PREPARED))
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
            ("relative change", Num(f"{relative:+.1%}") if is_number(relative) else "–"),
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

"""The terminal tables printed after a run: a finished stage's or the demo's numbers as rich tables,
rendered from the stage's results object, so what is printed is exactly what was written to the run."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from rich.console import Group
from rich.table import Table
from rich.text import Text

from peaufine.evaluate.answers import change_wordings
from peaufine.evaluate.leakage import leakage_lines
from peaufine.evaluate.stats import rate_text
from peaufine.results import (
    ABSENT,
    ClassifyResults,
    DpoResults,
    PretrainResults,
    RewardResults,
    RlResults,
    SftResults,
    stage_results,
)

if TYPE_CHECKING:
    from peaufine.drivers.demo import DemoResult


def _fmt(value: Any, spec: str = ".4f") -> str:
    return "-" if value is None or value is ABSENT else format(value, spec)


def pretrain_summary(results: PretrainResults, run_dir: Path) -> Group:
    table = Table(title=f"pretrain: {run_dir}", show_header=False)
    table.add_row("steps", f"{results.steps:,}")
    table.add_row("tokens seen", f"{results.tokens_seen:,}")
    table.add_row("training time", f"{results.train_seconds:.0f} s")
    table.add_row("final train loss", _fmt(results.final_train_loss))
    restored = results.restored_best is True and isinstance(results.best_step, int)
    # the weights the run saved: the best ones when it restored them, not the last evaluated
    label = (
        f"validation loss (best weights, step {results.best_step:,}, restored)"
        if restored
        else "validation loss"
    )
    table.add_row(label, _fmt(results.val_loss))
    table.add_row("validation perplexity", _fmt(results.val_perplexity, ".2f"))
    table.add_row("best step", str(None if results.best_step is ABSENT else results.best_step))
    recall = results.fact_recall
    if recall:
        table.add_row(
            "fact recall (cloze, greedy)",
            f"{rate_text(recall['accuracy'], recall.get('accuracy_ci'))} "
            f"({recall['correct']}/{recall['total']})",
        )
        for relation, counts in recall["by_relation"].items():
            table.add_row(f"  {relation}", f"{counts['correct']}/{counts['total']}")
    parts: list[Any] = [table]
    for sample in results.samples or []:
        line = Text()
        line.append(sample["prompt"], style="bold")
        line.append(" " + sample["text"])
        parts.append(line)
    return Group(*parts)


def demo_summary(result: DemoResult) -> Group:
    parts: list[Any] = []
    for name, summary in (
        ("pretrain", pretrain_summary),
        ("sft", sft_summary),
        ("reward", reward_summary),
        ("dpo", dpo_summary),
        ("grpo", rl_summary),
    ):
        if result.stages.get(name):
            parts.append(summary(stage_results(result.stages[name]), result.out / name))
    size = "smoke" if result.smoke else "default"
    parts.append(Text(f"demo ({size} size) finished in {result.seconds:.0f} s; runs in {result.out}"))
    return Group(*parts)


def _loss(value: Any, interval: Any, spec: str = ".4f") -> str:
    """A loss with its bootstrap interval when the run recorded one: '2.3140 [2.2010, 2.4300]'."""
    shown = _fmt(value, spec)
    if isinstance(interval, list) and len(interval) == 2:
        shown += f" [{interval[0]:{spec}}, {interval[1]:{spec}}]"
    return shown


def _mean(value: Any, interval: Any) -> str:
    """A mean reward with its bootstrap interval when recorded: '1.045 [0.912, 1.170]'."""
    return _loss(value, interval, ".3f")


def _pct(value: Any) -> str:
    return "-" if value is None else f"{value:.1%}"


def sft_summary(results: SftResults, run_dir: Path) -> Group:
    table = Table(title=f"sft: {run_dir}", show_header=False)
    table.add_row("steps", f"{results.steps:,}")
    losses = results.task_val_loss or {}
    table.add_row(
        "task validation loss",
        f"{_loss(losses.get('before'), losses.get('before_ci'))} -> "
        f"{_loss(losses.get('after'), losses.get('after_ci'))}"
        + (f" (n={losses['n']})" if "n" in losses else ""),
    )
    changes: list[str] = []
    for split, figures in (results.answers or {}).items():
        before, after = figures.get("before") or {}, figures.get("after") or {}
        for label, key in (("exact match", "exact_match"), ("F1", "f1")):
            table.add_row(f"{label} ({split})", rate_change(before, after, key))
        changes += change_wordings(figures)
    for block in (losses, results.forgetting or {}):
        wording = (block.get("change") or {}).get("wording")
        if wording:
            changes.append(wording)
    parts: list[Any] = [table, *(Text(line) for line in changes)]
    for key, block in (
        ("overfitting", results.overfitting),
        ("forgetting", results.forgetting),
        ("transfer", results.transfer),
    ):
        verdict = (block or {}).get("verdict")
        if verdict:
            parts.append(Text(f"{key}: {verdict}"))
    parts += [Text(line) for line in leakage_lines(results.leakage)]
    return Group(*parts)


def rate_change(before: dict[str, Any], after: dict[str, Any], key: str) -> str:
    """'0.0% [0.0, 20.4] -> 86.7% [62.1, 96.3] (n=15)': a rate before and after, each with its interval
    (eval.json's `KEY_ci`), and the n of the questions both rest on."""
    return (
        f"{rate_text(before.get(key), before.get(f'{key}_ci'))} -> "
        f"{rate_text(after.get(key), after.get(f'{key}_ci'), after.get('n'))}"
    )


def classify_summary(results: ClassifyResults, run_dir: Path) -> Group:
    """Accuracy and macro-F1 (or MSE) with their intervals and n, the paired transfer verdict, leakage."""
    table = Table(title=f"classify: {run_dir}", show_header=False)
    table.add_row("steps", f"{results.steps:,}")
    for label, figures in (("fine-tuned", results.validation), ("from scratch", results.from_scratch)):
        if not figures:
            continue
        n = figures.get("examples")
        if "accuracy" in figures:
            table.add_row(f"accuracy, {label}", rate_text(figures["accuracy"], figures.get("accuracy_ci"), n))
            table.add_row(
                f"macro F1, {label}", rate_text(figures.get("macro_f1"), figures.get("macro_f1_ci"), n)
            )
        else:
            low_high = figures.get("mse_ci") or []
            interval = f" [{low_high[0]:.4f}, {low_high[1]:.4f}]" if len(low_high) == 2 else ""
            table.add_row(f"MSE, {label}", f"{_fmt(figures.get('mse'))}{interval} (n={n})")
            table.add_row(f"Pearson r, {label}", _fmt(figures.get("pearson_r"), ".3f"))
    parts: list[Any] = [table]
    verdict = (results.transfer or {}).get("verdict")
    if verdict:
        parts.append(Text(f"transfer: {verdict}"))
    parts += [Text(line) for line in leakage_lines(results.leakage)]
    return Group(*parts)


def _accuracy_line(figures: dict[str, Any] | None) -> str:
    if not figures or figures.get("accuracy") is None:
        return "-"
    accuracy = rate_text(figures["accuracy"], figures.get("accuracy_ci"))
    return f"{accuracy} (n={figures['pairs']}, mean margin {figures['mean_margin']:.2f})"


def reward_summary(results: RewardResults, run_dir: Path) -> Group:
    table = Table(title=f"reward: {run_dir}", show_header=False)
    table.add_row("steps", f"{results.steps:,}")
    before = (results.before or {}).get("validation")
    table.add_row("pairwise accuracy, validation, before", _accuracy_line(before))
    for split, figures in (("validation", results.validation), ("heldout", results.heldout)):
        if not figures:
            continue
        table.add_row(f"pairwise accuracy, {split}", _accuracy_line(figures))
        for kind, counts in figures.get("by_kind", {}).items():
            table.add_row(f"  {kind}", f"{counts['accuracy']:.1%} (n={counts['pairs']})")
    return Group(table)


def dpo_summary(results: DpoResults, run_dir: Path) -> Group:
    table = Table(title=f"dpo ({results.loss}, beta {results.beta}): {run_dir}", show_header=False)
    table.add_row("steps", f"{results.steps:,}")
    before, after = results.before or {}, results.after or {}
    for key in sorted(k for k in after if k.startswith("likelihood_accuracy_") and not k.endswith("_ci")):
        split = key.removeprefix("likelihood_accuracy_")
        pairs = ((results.pairs or {}).get(split) or {}).get("pairs")
        table.add_row(
            f"policy prefers chosen ({split})",
            f"{rate_text(before.get(key), before.get(f'{key}_ci'))} -> "
            f"{rate_text(after.get(key), after.get(f'{key}_ci'), pairs)}",
        )
    for split, figures in (results.final or {}).items():
        if figures.get("accuracy") is not None:
            table.add_row(f"implicit-reward accuracy ({split})", _pct(figures["accuracy"]))
        if figures.get("mean_log_ratio") is not None:
            table.add_row(f"mean log-ratio to reference ({split})", _fmt(figures["mean_log_ratio"], ".3f"))
    for split in ("validation", "heldout"):
        answers_before, answers_after = before.get(f"answers_{split}"), after.get(f"answers_{split}")
        if not (answers_before and answers_after):
            continue
        table.add_row(
            f"annotator score (0-3), {split} questions, greedy",
            f"{_fmt(answers_before['annotator_score'], '.3f')} -> "
            f"{_fmt(answers_after['annotator_score'], '.3f')}",
        )
        table.add_row(
            f"annotator score (0-3), {split} questions, sampled",
            f"{_fmt(answers_before['annotator_score_sampled'], '.3f')} -> "
            f"{_fmt(answers_after['annotator_score_sampled'], '.3f')}",
        )
        table.add_row(
            f"exact match, {split} questions", rate_change(answers_before, answers_after, "exact_match")
        )
    return Group(table)


def rl_summary(results: RlResults, run_dir: Path) -> Group:
    table = Table(title=f"rl ({results.algorithm}): {run_dir}", show_header=False)
    table.add_row("steps", f"{results.steps:,}")
    kept = results.pass_rate_filter
    if kept:
        low, high = kept["range"]
        table.add_row(
            f"prompts with pass rate in [{low:g}, {high:g}]",
            f"{kept['prompts_kept']} of {kept['prompts_before']} "
            f"(mean pass rate {kept['mean_pass_rate_before']:.2f})",
        )
    before, after = results.before or {}, results.after or {}
    table.add_row(
        "mean reward, sampled",
        f"{_fmt(before.get('reward_sampled'), '.3f')} -> {_fmt(after.get('reward_sampled'), '.3f')}",
    )
    prompts = after.get("prompts")
    table.add_row(
        "mean reward, greedy",
        f"{_mean(before.get('reward_greedy'), before.get('reward_greedy_ci'))} -> "
        f"{_mean(after.get('reward_greedy'), after.get('reward_greedy_ci'))}"
        + (f" (n={prompts})" if prompts is not None else ""),
    )
    if "exact_match_greedy" in after:
        table.add_row(
            "exact answer, greedy",
            f"{rate_text(before.get('exact_match_greedy'), before.get('exact_match_greedy_ci'))} -> "
            f"{rate_text(after.get('exact_match_greedy'), after.get('exact_match_greedy_ci'), prompts)}",
        )
    table.add_row("KL to reference (nats per answer)", _fmt(results.final_kl, ".3f"))
    return Group(table)

"""A stage run's results section, rendered from its results object: pretrain's fact recall, sft's answers,
reward's pairwise accuracy, dpo's likelihoods and implicit reward, rl's rewards, classify's metrics."""

from __future__ import annotations

from typing import Any

from peaufine.evaluate.answers import change_wordings
from peaufine.evaluate.stats import rate_text
from peaufine.report.pages.stage_run import StageRun
from peaufine.report.toolkit import (
    Num,
    Section,
    before_after,
    both,
    change,
    details,
    fmt_metric,
    fmt_number,
    fmt_percent,
    is_number,
    paragraph,
    samples_table,
    table,
)
from peaufine.results import (
    ABSENT,
    ClassifyResults,
    DpoResults,
    PretrainResults,
    RewardResults,
    RlResults,
    SftResults,
)


def results_section(run: StageRun) -> Section:
    section = Section(f"Results ({run.stage})")
    results = run.results
    if isinstance(results, PretrainResults):
        section.parts += pretrain_results(results)
    elif isinstance(results, SftResults):
        section.parts += sft_results(results)
    elif isinstance(results, RewardResults):
        section.parts += reward_results(results)
    elif isinstance(results, DpoResults):
        section.parts += dpo_results(results)
    elif isinstance(results, RlResults):
        section.parts += rl_results(results)
    elif isinstance(results, ClassifyResults):
        section.parts += classify_results(results)
    return section


def pretrain_results(results: PretrainResults) -> list[str]:
    recall = results.fact_recall
    if not isinstance(recall, dict):
        return []
    correct = both(recall.get("correct"), recall.get("total"), " of ")
    parts = [
        table(None, [("fact recall (cloze, greedy)", Num(f"{rate_cell(recall, 'accuracy')} ({correct})"))])
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


def sft_results(results: SftResults) -> list[str]:
    parts: list[str] = []
    losses = results.task_val_loss or {}
    if losses:
        rows = [before_after("task validation loss", losses.get("before"), losses.get("after"))]
        parts.append(table(["", "before", "after", "change"], rows))
    answers = results.answers or {}
    rows = []
    wordings: list[str] = []
    for split, figures in answers.items():
        before, after = figures.get("before") or {}, figures.get("after") or {}
        n = after.get("n", before.get("n"))
        rows.append(rate_row(f"{split}: exact match (n={n})", before, after, "exact_match"))
        rows.append(rate_row(f"{split}: F1", before, after, "f1"))
        scratch = figures.get("from_scratch")
        if isinstance(scratch, dict):
            rows.append(
                (
                    f"{split}: exact match, the model trained from scratch",
                    "–",
                    rate_cell(scratch, "exact_match"),
                    "–",
                )
            )
        wordings += change_wordings(figures)
    if rows:
        caption = "Greedy answers to the task's questions, before and after fine-tuning"
        parts.append(table(["answers", "before", "after", "change"], rows, caption=caption))
    parts += [paragraph(line) for line in wordings]
    parts += [paragraph(line) for line in loss_wordings(results)]
    return parts


def loss_wordings(results: SftResults) -> list[str]:
    """The paired changes of the losses, in their wording: task loss after vs before, general-text loss
    (forgetting), and the fine-tuned model against each transfer baseline."""
    blocks = [(results.task_val_loss or {}).get("change"), (results.forgetting or {}).get("change")]
    blocks += list(((results.transfer or {}).get("paired") or {}).values())
    return [block["wording"] for block in blocks if isinstance(block, dict) and block.get("wording")]


def rate_cell(figures: dict[str, Any], key: str) -> Num:
    """A rate with its 95% interval when the run recorded one (eval.json's `KEY_ci`)."""
    interval = figures.get(f"{key}_ci")
    if is_number(figures.get(key)) and isinstance(interval, list):
        return Num(rate_text(figures[key], interval))
    return fmt_percent(figures.get(key))


def rate_row(label: str, before: dict[str, Any], after: dict[str, Any], key: str) -> tuple[Any, ...]:
    """A before / after / change row of a rate, each side with its interval."""
    return label, rate_cell(before, key), rate_cell(after, key), change(before.get(key), after.get(key), True)


def reward_results(results: RewardResults) -> list[str]:
    def row(label: str, figures: dict[str, Any]) -> tuple[Any, ...]:
        return label, figures.get("pairs"), rate_cell(figures, "accuracy"), figures.get("mean_margin")

    parts: list[str] = []
    splits = {
        "validation, before training": (results.before or {}).get("validation"),
        "validation": results.validation,
        "heldout": results.heldout,
    }
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


def dpo_results(results: DpoResults) -> list[str]:
    loss = "–" if results.loss is ABSENT else results.loss
    parts = [paragraph(f"loss {loss}, beta {fmt_number(None if results.beta is ABSENT else results.beta)}")]
    before, after = results.before or {}, results.after or {}
    rows = [
        rate_row(key.removeprefix("likelihood_accuracy_"), before, after, key)
        for key in sorted(k for k in after if k.startswith("likelihood_accuracy_") and not k.endswith("_ci"))
    ]
    if rows:
        caption = "The policy gives the chosen answer the higher likelihood (likelihood accuracy)"
        parts.append(table(["pairs", "before", "after", "change"], rows, caption=caption))
    final = results.final or {}
    if final:
        rows = [
            (
                split,
                fmt_percent(f.get("accuracy")),
                f.get("reward_margin"),
                f.get("mean_log_ratio"),
                f.get("loss"),
            )
            for split, f in final.items()
        ]
        header = ["pairs", "implicit-reward accuracy", "reward margin", "mean log-ratio to reference", "loss"]
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
                rate_row(f"{split}: exact match (n={a.get('n')})", b, a, "exact_match"),
            ]
    if rows:
        parts.append(
            table(["answers", "before", "after", "change"], rows, caption="Answers to the questions")
        )
    return parts


_RL_FIGURES = (
    ("mean reward, sampled", "reward_sampled", False),
    ("mean reward, greedy", "reward_greedy", False),
    ("exact answer, greedy", "exact_match_greedy", True),
    ("KL to the reference (nats per answer)", "kl_to_reference", False),
    ("response length (tokens)", "response_length", False),
)


def rl_results(results: RlResults) -> list[str]:
    parts = [paragraph(f"algorithm {'–' if results.algorithm is ABSENT else results.algorithm}")]
    kept = results.pass_rate_filter
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
    before, after = results.before or {}, results.after or {}
    rows = [
        rate_row(label, before, after, key)
        if percent
        else before_after(label, before.get(key), after.get(key))
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
    if is_number(results.final_kl):
        parts.append(paragraph(f"final KL to the reference: {fmt_number(results.final_kl)} nats per answer"))
    return parts


def metric_cell(figures: dict[str, Any], name: str) -> Any:
    """A classifier's metric by name; accuracy and macro-F1 with their interval when recorded."""
    if isinstance(figures.get(f"{name}_ci"), list) and name in ("accuracy", "macro_f1"):
        return rate_cell(figures, name)
    return fmt_metric(name, figures.get(name))


def classify_results(results: ClassifyResults) -> list[str]:
    parts: list[str] = []
    tuned, scratch = results.validation or {}, results.from_scratch or {}
    names = [name for name, value in tuned.items() if is_number(value)]
    if names:
        header = ["metric", "fine-tuned", *(["from scratch"] if scratch else [])]
        rows = [
            (name, metric_cell(tuned, name), *([metric_cell(scratch, name)] if scratch else []))
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

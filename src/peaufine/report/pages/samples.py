"""A stage run's samples section: what the models wrote, side by side (answers before and after, generated
continuations, RL's greedy answers and the completions sampled in training)."""

from __future__ import annotations

from typing import Any

from peaufine.report.pages.stage_run import StageRun
from peaufine.report.toolkit import Html, Section, heading, read_jsonl, samples_table


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

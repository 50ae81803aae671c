"""What a fine-tuning run reports without being asked, measured before and after training: overfitting,
forgetting, task loss and answers, and transfer (fine-tuned vs base zero-shot / few-shot / from scratch)."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import TYPE_CHECKING, Any

from peaufine.data.batching import Example, PackedBlocks, PaddedExamples, load_examples, make_dataset
from peaufine.data.records import HELDOUT, ChatRecord, load_conversations
from peaufine.data.tokenize import tokenize_chat
from peaufine.engine.fit import evaluate_loss, fit
from peaufine.evaluate.answers import AnswerMetrics, answer_changes, answer_questions
from peaufine.evaluate.evidence import is_meaningful, qualified
from peaufine.evaluate.example_losses import ExampleLosses, example_losses, loss_block
from peaufine.evaluate.forgetting import forgetting_report, general_blocks, general_loss
from peaufine.evaluate.leakage import leakage, leakage_warning
from peaufine.evaluate.overfitting import overfitting_report
from peaufine.evaluate.stats import PairedComparison, describe_change
from peaufine.methods.lm import NextTokenLoss
from peaufine.models.build import random_like, resolve_source, source_model_dir
from peaufine.rundir import write_jsonl

if TYPE_CHECKING:
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

    from peaufine.engine.fit import FitResult
    from peaufine.engine.runtime import Runtime
    from peaufine.engine.track import Tracker
    from peaufine.recipe import Recipe
    from peaufine.rundir import RunDir


def few_shot_examples(
    tokenizer: PreTrainedTokenizerBase,
    shots: list[list[dict[str, str]]],
    conversations: list[list[dict[str, str]]],
    max_length: int,
) -> list[Any]:
    """Each validation conversation preceded by `shots` as earlier turns; only its own answer is a target.

    This is in-context learning: the alternative to fine-tuning that changes no parameter.
    """

    prefix = [m for shot in shots for m in shot if m["role"] != "system"]
    examples = []
    for conversation in conversations:
        full = tokenize_chat(
            tokenizer,
            ChatRecord(prefix + conversation, "few-shot"),
            max_length=max_length * (len(shots) + 1),
            loss_on="completion",
            too_long="skip",
        )
        head = tokenize_chat(
            tokenizer,
            ChatRecord(prefix, "few-shot"),
            max_length=max_length * (len(shots) + 1),
            loss_on="completion",
            too_long="skip",
        )
        if full is None or head is None:
            continue
        mask = [m and i >= len(head.input_ids) for i, m in enumerate(full.target_mask)]
        examples.append(Example(full.input_ids, mask))
    return examples


def few_shot_answers(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    shots: list[list[dict[str, str]]],
    conversations: list[list[dict[str, str]]],
) -> AnswerMetrics:
    """Greedy answers to `conversations` with `shots` as earlier turns of each (after its system
    message), scored as answer_questions scores zero-shot answers: in-context learning's exact match."""
    prefix = [m for shot in shots for m in shot if m["role"] != "system"]
    prompted = [
        [m for m in c if m["role"] == "system"] + prefix + [m for m in c if m["role"] != "system"]
        for c in conversations
    ]
    return answer_questions(model, tokenizer, prompted)


def train_from_scratch(
    recipe: Recipe,
    model_dir: Path,
    train_examples: list[Any],
    val_examples: list[Any],
    runtime: Runtime,
    pad_id: int,
) -> PreTrainedModel:
    """The same architecture, randomly initialised, trained on the task with the same budget."""
    model = random_like(model_dir, recipe.model.trust_remote_code, recipe.train.seed).to(runtime.device)
    # from scratch there is no pretrained knowledge to protect: a pretraining-sized step is the fair budget
    train = recipe.train.model_copy(update={"lr": max(recipe.train.lr, 1e-3)})
    fit(
        model,
        NextTokenLoss(),
        make_dataset(train_examples, recipe, pad_id),
        make_dataset(val_examples, recipe, pad_id) if val_examples else None,
        train,
        recipe.eval,
        runtime,
    )
    return model


def _interval(comparison: PairedComparison) -> str:
    return f"95% CI of the difference {comparison.low:+.4f} to {comparison.high:+.4f}"


def transfer_verdict(
    figures: dict[str, float | None], paired: dict[str, PairedComparison] | None = None
) -> str:
    """The comparisons of the fine-tuned model's task loss with each other model's. `paired` (fine-tuned
    minus the other, on the same validation examples): where its interval includes 0, that comparison
    says "no measurable difference" instead of better or worse."""
    paired = paired or {}
    tuned, scratch = figures.get("fine_tuned"), figures.get("from_scratch")
    zero, few = figures.get("base_zero_shot"), figures.get("base_few_shot")

    def tie(key: str) -> PairedComparison | None:
        comparison = paired.get(key)
        return comparison if comparison is not None and not comparison.measurable else None

    parts = []
    if tuned is not None and scratch is not None:
        if (same := tie("from_scratch")) is not None:
            parts.append(
                f"no measurable transfer: fine-tuned {tuned:.4f} vs from scratch {scratch:.4f} "
                f"({_interval(same)})"
            )
        elif tuned < scratch:
            parts.append(f"positive transfer: fine-tuned {tuned:.4f} < from scratch {scratch:.4f}")
        else:
            parts.append(f"NEGATIVE transfer: from scratch {scratch:.4f} <= fine-tuned {tuned:.4f}")
    if tuned is not None and zero is not None:
        if (same := tie("base_zero_shot")) is not None:
            parts.append(
                f"no measurable difference from the base model zero-shot ({zero:.4f}; {_interval(same)})"
            )
        else:
            parts.append(
                f"fine-tuning {'improved' if tuned < zero else 'did not improve'} on the base "
                f"model zero-shot ({zero:.4f})"
            )
    if tuned is not None and few is not None:
        if (same := tie("base_few_shot")) is not None:
            parts.append(
                f"no measurable difference from {few:.4f} with in-context examples ({_interval(same)})"
            )
        else:
            parts.append(f"{'beats' if tuned < few else 'does not beat'} {few:.4f} with in-context examples")
    return "; ".join(parts) if parts else "not measured"


_TRANSFER_NAMES = {
    "from_scratch": "from scratch",
    "base_zero_shot": "the base model zero-shot",
    "base_few_shot": "the base model with in-context examples",
}


def transfer_report(
    figures: dict[str, float | None],
    examples: int | None = None,
    paired: dict[str, PairedComparison] | None = None,
) -> dict[str, Any]:
    """eval.json's transfer block: the task validation loss of each model, and the verdict with the
    validation examples it rests on (`examples`); with `paired` (fine-tuned minus each other model on
    the same examples), each comparison's interval and wording under "paired"."""
    verdict = transfer_verdict(figures, paired)
    if verdict != "not measured":
        verdict = qualified(verdict, examples, "validation example", "validation examples")
    block: dict[str, Any] = {
        "task_val_loss": figures,
        "verdict": verdict,
        "examples": examples,
        "meaningful": is_meaningful(examples),
    }
    if paired:
        block["paired"] = {
            key: {
                **comparison.as_dict(),
                "wording": describe_change(
                    comparison,
                    what=f"task validation loss, fine-tuned vs {_TRANSFER_NAMES.get(key, key)}",
                    unit="nats",
                    higher_is_better=False,
                ),
            }
            for key, comparison in paired.items()
        }
    return block


def evaluate_sft(
    recipe: Recipe,
    run: RunDir,
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    result: FitResult,
    prepared: dict[str, Any],
    before: dict[str, Any],
    general: Any,
    runtime: Runtime,
    pad_id: int,
    tracker: Tracker,
) -> dict[str, Any]:

    # rank 0 alone evaluates after training: its measurements must not wait for the other processes
    runtime = dataclasses.replace(runtime, rank=0, world_size=1)
    evaluation: dict[str, Any] = {
        "stage": "sft",
        "steps": result.steps,
        "tokens_seen": result.tokens_seen,
        "train_seconds": result.elapsed,
        **prepared,
    }
    val_examples = load_examples(run.data / "validation.tokens.jsonl")
    overfit = overfitting_report(result.history, result.restored_best, examples=len(val_examples))
    evaluation["overfitting"] = {**overfit.as_dict(), "verdict": overfit.verdict()}
    after_val = task_loss(model, val_examples, runtime, pad_id) if val_examples else None
    tuned_losses = (
        example_losses(model, PaddedExamples(val_examples, pad_id), runtime) if val_examples else None
    )
    evaluation["task_val_loss"] = {
        "before": before.get("task_val_loss"),
        "after": after_val,
        **loss_change(before.get("task_val_losses"), tuned_losses, "task validation loss, after vs before"),
    }
    if general is not None and "general_loss" in before:
        after_general = general_loss(
            model, general, runtime, recipe.data.max_length, recipe.eval.forgetting.max_blocks
        )
        blocks = general_blocks(general, recipe.data.max_length, recipe.eval.forgetting.max_blocks)
        report = forgetting_report(
            prepared.get("general_source") or "general",
            before["general_loss"],
            after_general,
            recipe.eval.forgetting.threshold,
            blocks=blocks,
        )
        evaluation["forgetting"] = {
            **report.as_dict(),
            "verdict": report.verdict(),
            **loss_change(
                before.get("general_losses"),
                example_losses(model, PackedBlocks(general, recipe.data.max_length), runtime, rows=blocks),
                "general-text loss, after vs before",
                names=("loss_before_ci", "loss_after_ci"),
            ),
        }
        if report.forgot:
            tracker.warn(report.verdict())
    else:
        evaluation["forgetting"] = {"verdict": "not measured: no general text (set eval.forgetting.general)"}
    answers: dict[str, Any] = {}
    outcomes: list[dict[str, Any]] = []
    tuned: dict[str, AnswerMetrics] = {}
    for split in ("validation", HELDOUT):
        conversations = load_conversations(run.data / f"{split}.jsonl")[: recipe.eval.answers or 0]
        if conversations:
            earlier: AnswerMetrics | None = before.get(f"answers_{split}")
            tuned[split] = answer_questions(model, tokenizer, conversations)
            answers[split] = {
                "before": earlier.as_dict() if earlier is not None else None,
                "after": tuned[split].as_dict(),
            }
            if earlier is not None:
                outcomes += earlier.outcome_rows(split, "before")
                change = answer_changes(earlier, tuned[split], f"{split}, after vs before")
                if change is not None:
                    answers[split]["change"] = change
            outcomes += tuned[split].outcome_rows(split, "after")
    evaluation["answers"] = answers
    evaluation["leakage"] = sft_leakage(run)
    for split, block in evaluation["leakage"].items():
        line = leakage_warning(block, split)
        if line is not None:
            tracker.warn(line)
    figures: dict[str, float | None] = {
        "fine_tuned": after_val,
        "base_zero_shot": before.get("task_val_loss"),
        "base_few_shot": before.get("task_val_loss_few_shot"),
    }
    others: dict[str, ExampleLosses | None] = {
        "base_zero_shot": before.get("task_val_losses"),
        "base_few_shot": before.get("task_val_losses_few_shot"),
    }
    if recipe.eval.transfer.from_scratch and val_examples:
        model_dir = source_model_dir(resolve_source(recipe.model.source))
        scratch = train_from_scratch(
            recipe, model_dir, load_examples(run.data / "train.tokens.jsonl"), val_examples, runtime, pad_id
        )
        figures["from_scratch"] = task_loss(scratch, val_examples, runtime, pad_id)
        others["from_scratch"] = example_losses(scratch, PaddedExamples(val_examples, pad_id), runtime)
        conversations = load_conversations(run.data / "validation.jsonl")[: recipe.eval.answers or 0]
        if conversations:
            scratch_answers = answer_questions(scratch, tokenizer, conversations)
            answers.setdefault("validation", {})["from_scratch"] = scratch_answers.as_dict()
            outcomes += scratch_answers.outcome_rows("validation", "from_scratch")
            change = (
                answer_changes(scratch_answers, tuned["validation"], "validation, fine-tuned vs from scratch")
                if "validation" in tuned
                else None
            )
            if change is not None:
                answers["validation"]["vs_from_scratch"] = change
    paired = {
        key: tuned_losses.minus(other)
        for key, other in others.items()
        if tuned_losses is not None
        and other is not None
        and tuned_losses.has_targets
        and other.has_targets
        and len(other.sums) == len(tuned_losses.sums)
    }
    evaluation["transfer"] = transfer_report(figures, len(val_examples), paired)
    if outcomes:
        write_jsonl(run.answers, outcomes)
    return evaluation


def loss_change(
    before: ExampleLosses | None,
    after: ExampleLosses | None,
    what: str,
    names: tuple[str, str] = ("before_ci", "after_ci"),
) -> dict[str, Any]:
    """The intervals of a loss before and after (bootstrap over examples or blocks) and, on the same
    rows, the paired change with its wording ("change"); only what the per-row losses allow."""
    block: dict[str, Any] = {}
    for name, losses in zip(names, (before, after), strict=True):
        interval = loss_block(losses)
        if interval:
            block[name], block["n"] = interval["ci"], interval["n"]
    if before is None or after is None or len(before.sums) != len(after.sums):
        return block
    if before.has_targets and after.has_targets:
        comparison = after.minus(before)
        wording = describe_change(comparison, what=what, unit="nats", higher_is_better=False)
        block["change"] = {**comparison.as_dict(), "wording": wording}
    return block


def conversation_text(conversation: list[dict[str, str]]) -> str:
    """What the leakage check compares: every turn of a conversation (prompt and completion)."""
    return "\n".join(message["content"] for message in conversation)


def sft_leakage(run: RunDir) -> dict[str, Any]:
    """eval.json's leakage block: per evaluation split that has examples, how much of it the training
    conversations already contain (exact copies and shared 8-grams)."""
    train = [conversation_text(c) for c in load_conversations(run.data / "train.jsonl")]
    found = {}
    for split in ("validation", HELDOUT):
        texts = [conversation_text(c) for c in load_conversations(run.data / f"{split}.jsonl")]
        if texts:
            found[split] = leakage(train, texts)
    return found


def task_loss(model: PreTrainedModel, examples: list[Any], runtime: Runtime, pad_id: int) -> float:

    return evaluate_loss(model, NextTokenLoss(), PaddedExamples(examples, pad_id), runtime, batch_size=16)


def evaluate_before(
    recipe: Recipe,
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    run: RunDir,
    general: Any,
    runtime: Runtime,
    pad_id: int,
    val_examples: list[Any],
) -> dict[str, Any]:
    """The base model's numbers, taken before the first update (the adapter starts as a no-op)."""

    before: dict[str, Any] = {}
    # per-example losses (for intervals and paired changes) on rank 0, which alone measures after training
    per_example = runtime.is_main
    if general is not None:
        before["general_loss"] = general_loss(
            model, general, runtime, recipe.data.max_length, recipe.eval.forgetting.max_blocks
        )
        if per_example:
            blocks = general_blocks(general, recipe.data.max_length, recipe.eval.forgetting.max_blocks)
            before["general_losses"] = example_losses(
                model, PackedBlocks(general, recipe.data.max_length), runtime, rows=blocks
            )
    if val_examples:
        before["task_val_loss"] = task_loss(model, val_examples, runtime, pad_id)
        if per_example:
            before["task_val_losses"] = example_losses(model, PaddedExamples(val_examples, pad_id), runtime)
    if val_examples and recipe.eval.transfer.few_shot:
        shots = load_conversations(run.data / "train.jsonl")[: recipe.eval.transfer.few_shot]
        few = few_shot_examples(
            tokenizer, shots, load_conversations(run.data / "validation.jsonl"), recipe.data.max_length
        )
        if few:
            before["task_val_loss_few_shot"] = task_loss(model, few, runtime, pad_id)
            if per_example:
                before["task_val_losses_few_shot"] = example_losses(
                    model, PaddedExamples(few, pad_id), runtime
                )
    if recipe.eval.answers and runtime.is_main:
        for split in ("validation", HELDOUT):
            conversations = load_conversations(run.data / f"{split}.jsonl")[: recipe.eval.answers]
            if conversations:
                before[f"answers_{split}"] = answer_questions(model, tokenizer, conversations)
    return before

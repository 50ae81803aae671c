"""The dpo stage: a policy (an SFT model, full or LoRA) aligned directly on preference pairs with DPO,
IPO, conservative DPO or SimPO; no reward model, no sampling."""

# The reference is the policy as it starts: its log-probs are computed once before training (no second
# model resident), or, with an adapter and `method.dpo.reference: adapter`, by switching the adapter off.
# Before and after training the stage measures how often the policy itself prefers the chosen response
# (mean log-prob per token, so length does not decide), and on the world the annotator's score and
# exact match of greedy answers to held-out questions.

from __future__ import annotations

import dataclasses
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any

from peaufine.data.batching import batch_to
from peaufine.data.preference_data import pair_dataset, prepare_pairs, read_texts, skipped_summary
from peaufine.data.tokenize import ensure_chat_template
from peaufine.data.world import source_world
from peaufine.engine.fit import StepHook, evaluate
from peaufine.engine.track import Tracker
from peaufine.errors import RecipeError
from peaufine.evaluate.alignment import answer_quality, world_answer_quality
from peaufine.evaluate.stats import ratio_bootstrap
from peaufine.methods.preference import DpoLoss, disable_dropout, precompute_reference, sequence_logps
from peaufine.models.adapters import as_base
from peaufine.models.build import load_for_training, resolve_source, save_outputs, source_model_dir
from peaufine.models.tokenizer import load_tokenizer
from peaufine.results import DpoResults
from peaufine.rundir import RunDir
from peaufine.stages.lifecycle import (
    OpenedRun,
    StageOutcome,
    StageSpec,
    finish_run,
    fit_in_run,
    plot_training,
    record_budget,
    require_stage,
)

if TYPE_CHECKING:
    import torch

    from peaufine.data.pairs import PairBatches
    from peaufine.engine.runtime import Runtime
    from peaufine.recipe import Recipe

EVAL_SPLITS = ("validation", "heldout")


def prepare(recipe: Recipe, staging: Path, tracker: Tracker) -> dict[str, Any]:

    source = resolve_source(recipe.model.source)
    tokenizer = load_tokenizer(str(source_model_dir(source)), recipe.model.trust_remote_code)
    ensure_chat_template(tokenizer)
    if recipe.method.dpo.reference == "adapter" and recipe.model.adapter.kind == "none":
        raise RecipeError(
            "method.dpo.reference: adapter switches the adapter off to get the reference, and "
            "model.adapter.kind is none; set an adapter kind (lora, ia3, ...) or method.dpo.reference: "
            "precomputed"
        )
    prepared = prepare_pairs(
        recipe, source, tokenizer, staging, skip_ties=True, scored=False, tracker=tracker
    )
    tokenizer.save_pretrained(staging / "tokenizer")
    counts = prepared["pairs"]
    tracker.say(
        f"preferences: {counts['train']['pairs']:,} training pairs ({counts['train']['prompts']:,} prompts, "
        f"{skipped_summary(prepared, ties=True)}), {counts['validation']['pairs']:,} validation"
    )
    return prepared


def likelihood_preference(
    model: torch.nn.Module,
    dataset: PairBatches,
    runtime: Runtime,
    batch_size: int = 32,
    chunk_tokens: int | None = None,
) -> float:
    """How often the policy gives the chosen response a higher mean log-prob per token than the
    rejected one: its own preference, comparable before and after training (no reference needed)."""
    return likelihood_preference_outcomes(model, dataset, runtime, batch_size, chunk_tokens)[0]


def likelihood_preference_outcomes(
    model: torch.nn.Module,
    dataset: PairBatches,
    runtime: Runtime,
    batch_size: int = 32,
    chunk_tokens: int | None = None,
) -> tuple[float, list[float] | None]:
    """likelihood_preference, and its bootstrap interval over pairs (pairs weighted as in the loss);
    None without pairs."""
    import torch

    was_training = model.training
    model.eval()
    wins = 0.0
    total = 0.0
    won: list[float] = []
    weighed: list[float] = []
    with torch.no_grad():
        for start in range(0, len(dataset), batch_size):
            indices = list(range(start, min(len(dataset), start + batch_size)))
            batch = batch_to(dataset.collate(indices), runtime.device)
            with runtime.autocast():
                logps, lengths = sequence_logps(model, batch, chunk_tokens)
            mean = (logps / lengths.clamp(min=1)).float()
            n = len(indices)
            weights = batch["weights"].float()
            wins += float((weights * (mean[:n] > mean[n:])).sum())
            total += float(weights.sum())
            won += (weights * (mean[:n] > mean[n:])).tolist()
            weighed += weights.tolist()
    model.train(was_training)
    if not total:
        return float("nan"), None
    interval = ratio_bootstrap(won, weighed)
    return wins / total, [interval.low, interval.high]


def preference_figures(
    model: torch.nn.Module,
    tokenizer: Any,
    recipe: Recipe,
    sets: dict[str, PairBatches],
    world: Any,
    runtime: Runtime,
    validation_questions: list[tuple[str, str]],
) -> dict[str, Any]:
    """The policy's own preference accuracy per split, and (on the world) its answers' quality on the
    held-out facts and on the validation prompts."""

    numbers: dict[str, Any] = {}
    for name, dataset in sets.items():
        accuracy, interval = likelihood_preference_outcomes(
            model, dataset, runtime, chunk_tokens=recipe.train.loss_chunk_tokens
        )
        numbers[f"likelihood_accuracy_{name}"] = accuracy
        if interval is not None:
            numbers[f"likelihood_accuracy_{name}_ci"] = interval
    if world is not None and recipe.eval.answers:
        numbers["answers_heldout"] = world_answer_quality(
            model, tokenizer, world, "qa_heldout", recipe.eval.answers
        )
        if validation_questions:
            numbers["answers_validation"] = answer_quality(
                model, tokenizer, world, validation_questions[: recipe.eval.answers]
            )
    return numbers


def held_out_questions(run: RunDir) -> list[tuple[str, str]]:
    """The validation prompts of world preference data (never trained on) with their right answers:
    the chosen response of each concise-answer pair."""

    found: dict[str, str] = {}
    for row in read_texts(run.data / "validation.texts.jsonl"):
        if row["kind"].startswith("concise>") and isinstance(row["prompt"], list):
            found.setdefault(row["prompt"][-1]["content"], row["chosen"])
    return list(found.items())


def train_and_measure(opened: OpenedRun, resume: bool, hooks: list[StepHook] | None) -> StageOutcome:
    """The stage in its opened run folder: load, train, measure, save and finish (rank 0 measures)."""
    recipe = opened.recipe
    run, runtime, tracker, prepared = opened.run, opened.runtime, opened.tracker, opened.prepared
    source = resolve_source(recipe.model.source)
    tokenizer = load_tokenizer(str(run.tokenizer))
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    model = load_for_training(recipe, source_model_dir(source), runtime)
    record_budget(run, runtime, recipe, model)
    disable_dropout(model)
    sets = {name: pair_dataset(run.data, name, pad_id) for name in ("train", *EVAL_SPLITS)}
    train_set = sets["train"]
    if train_set is None:
        raise RecipeError("data.source: no training pairs left (all ties or too long)")
    present = {name: d for name, d in sets.items() if d is not None and name != "train"}
    config = recipe.method.dpo
    adapter_reference = config.reference == "adapter"
    if config.loss != "simpo" and not adapter_reference:
        tracker.say("computing the reference log-probs once (the policy before training)")
        with as_base(model):  # a soft prompt's reference is its base, as with reference: adapter
            precompute_reference(
                model,
                [train_set, *present.values()],
                runtime,
                recipe.eval.batch_size or 32,
                recipe.train.loss_chunk_tokens,
            )
    world = source_world(source)
    questions = held_out_questions(run) if world is not None else []
    before: dict[str, Any] = {}
    if runtime.is_main:
        with as_base(model):
            before = preference_figures(model, tokenizer, recipe, present, world, runtime, questions)
    objective = DpoLoss(config, adapter_reference, recipe.train.loss_chunk_tokens)
    result = fit_in_run(
        opened,
        model,
        objective,
        train_set,
        present.get("validation"),
        resume=resume,
        hooks=hooks,
    )
    evaluation: dict[str, Any] = {}
    if runtime.is_main:
        save_outputs(recipe, run, model, tokenizer)
        plot_training(run, result)
        after = preference_figures(model, tokenizer, recipe, present, world, runtime, questions)
        # rank 0 alone evaluates after training: its losses must not wait for the other processes
        alone = dataclasses.replace(runtime, rank=0, world_size=1)
        final = {
            name: evaluate(model, objective, dataset, alone, recipe.eval.batch_size or 32)
            for name, dataset in present.items()
        }
        evaluation = {
            "stage": "dpo",
            "loss": config.loss,
            "beta": config.simpo_beta if config.loss == "simpo" else config.beta,
            "steps": result.steps,
            "best_step": result.best_step,
            "pairs": prepared["pairs"],
            "anomalies": prepared["anomalies"],
            "before": before,
            "after": after,
            "final": {name: {"loss": loss, **metrics} for name, (loss, metrics) in final.items()},
        }
        finish_run(run, DpoResults.from_json(evaluation))
    runtime.barrier()
    return StageOutcome(run=run, fit=result, evaluation=evaluation)


STAGE = StageSpec("dpo", prepare, train_and_measure, check=partial(require_stage, stage="dpo"))
run_dpo = STAGE.run

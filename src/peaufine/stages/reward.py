"""The reward stage: a scalar head on a causal LM or an encoder, trained with Bradley-Terry on preference
pairs, validated on held-out prompts, and reported per pair type; saved in Hugging Face's format."""

# Saved in Hugging Face sequence-classification format (AutoModelForSequenceClassification, num_labels = 1).

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from peaufine.data.batching import batch_to
from peaufine.data.pairs import encoder_style
from peaufine.data.preference_data import pair_dataset, prepare_pairs, skipped_summary
from peaufine.data.tokenize import ensure_chat_template
from peaufine.engine.fit import StepHook
from peaufine.engine.track import Tracker
from peaufine.errors import RecipeError
from peaufine.evaluate.stats import ratio_bootstrap
from peaufine.methods.classify import classifier_logits, refuse_chunked_loss
from peaufine.methods.reward import BradleyTerryLoss
from peaufine.models.adapters import apply_adapter, apply_freeze
from peaufine.models.build import (
    build_classifier,
    classifier_attention,
    prepare_for_training,
    resolve_source,
    save_outputs,
)
from peaufine.models.tokenizer import load_tokenizer
from peaufine.results import RewardResults
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


def backbone_path(recipe: Recipe) -> Path:
    """method.reward.backbone, else model.source's model folder (an SFT run's model by default)."""
    if recipe.method.reward.backbone is not None:
        source = resolve_source(recipe.method.reward.backbone)
    else:
        source = resolve_source(recipe.model.source)
    if source.model_dir is None:
        raise RecipeError(
            f"model.source: '{source.name}' is a preset; a reward model starts from a trained model "
            "(a run folder or a Hugging Face model folder)"
        )
    return source.model_dir


def prepare(recipe: Recipe, staging: Path, tracker: Tracker) -> dict[str, Any]:

    backbone = backbone_path(recipe)
    tokenizer = load_tokenizer(str(backbone), recipe.model.trust_remote_code)
    if not encoder_style(tokenizer):
        ensure_chat_template(tokenizer)
    prepared = prepare_pairs(
        recipe,
        resolve_source(recipe.model.source),
        tokenizer,
        staging,
        skip_ties=False,
        scored=True,
        tracker=tracker,
    )
    tokenizer.save_pretrained(staging / "tokenizer")
    counts = prepared["pairs"]
    skipped = skipped_summary(prepared, ties=False)
    tracker.say(
        f"preferences: {counts['train']['pairs']:,} training pairs "
        f"({counts['train']['prompts']:,} prompts{', ' + skipped if skipped else ''}), "
        f"{counts['validation']['pairs']:,} validation"
        + (f", {counts['heldout']['pairs']:,} held-out" if "heldout" in counts else "")
    )
    return {**prepared, "backbone": str(backbone)}


def pair_accuracy(
    model: torch.nn.Module, dataset: PairBatches, runtime: Runtime, batch_size: int = 32
) -> dict[str, Any]:
    """Pairwise accuracy (chosen scored above rejected) overall and per pair kind, with pair counts.

    Pairs weigh what they weigh in the loss (a ranking's pairs share one unit), so the accuracy and
    mean margin are those of the objective trained, and agree with the logged training accuracy.
    """
    import torch

    model.eval()
    right: dict[str, float] = {}
    weight: dict[str, float] = {}
    pairs: dict[str, int] = {}
    margin = correct = total = 0.0
    outcomes: list[tuple[float, float, float]] = []  # (weight, won, gap) per decided pair
    with torch.no_grad():
        for start in range(0, len(dataset), batch_size):
            indices = list(range(start, min(len(dataset), start + batch_size)))
            batch = batch_to(dataset.collate(indices), runtime.device)
            with runtime.autocast():
                rewards = classifier_logits(model, batch).squeeze(-1).tolist()
            n = len(indices)
            for k, i in enumerate(indices):
                pair = dataset.pairs[i]
                if pair.tie:
                    continue
                gap, w = rewards[k] - rewards[n + k], pair.weight
                margin, correct, total = margin + w * gap, correct + w * (gap > 0), total + w
                weight[pair.kind] = weight.get(pair.kind, 0.0) + w
                right[pair.kind] = right.get(pair.kind, 0.0) + w * (gap > 0)
                pairs[pair.kind] = pairs.get(pair.kind, 0) + 1
                outcomes.append((w, float(gap > 0), gap))
    decided = sum(pairs.values())
    return {
        "pairs": decided,
        "accuracy": correct / total if total > 0 else None,
        "mean_margin": margin / total if total > 0 else None,
        **weighted_intervals(outcomes),
        "by_kind": {
            kind: {"accuracy": right[kind] / weight[kind] if weight[kind] > 0 else None, "pairs": pairs[kind]}
            for kind in sorted(pairs)
            if kind
        },
    }


def weighted_intervals(outcomes: list[tuple[float, float, float]]) -> dict[str, Any]:
    """Bootstrap intervals over pairs of the weighted accuracy and mean margin (a ranking's pairs share
    one unit of weight, so these are ratios of weighted sums, not plain proportions); none without pairs."""
    weights = [w for w, _, _ in outcomes]
    if not outcomes or sum(weights) <= 0:
        return {}
    accuracy = ratio_bootstrap([w * won for w, won, _ in outcomes], weights)
    margin = ratio_bootstrap([w * gap for w, _, gap in outcomes], weights)
    return {"accuracy_ci": [accuracy.low, accuracy.high], "mean_margin_ci": [margin.low, margin.high]}


def check_recipe(recipe: Recipe) -> None:
    """What the stage refuses before any run folder exists."""
    require_stage(recipe, "reward")
    refuse_chunked_loss(recipe)


def train_and_measure(opened: OpenedRun, resume: bool, hooks: list[StepHook] | None) -> StageOutcome:
    """The stage in its opened run folder: load, train, measure, save and finish (rank 0 measures)."""
    recipe = opened.recipe
    run, runtime, prepared = opened.run, opened.runtime, opened.prepared
    tokenizer = load_tokenizer(str(run.tokenizer))
    attention = classifier_attention(recipe, runtime.device.type, runtime.precision)
    model = build_classifier(prepared["backbone"], 1, seed=recipe.train.seed, attention=attention)
    pad_id = model.config.pad_token_id
    apply_freeze(model, recipe.model.freeze)
    model = apply_adapter(model, recipe.model.adapter, tokenizer_path=str(run.tokenizer))
    model = prepare_for_training(model, recipe.train).to(runtime.device)
    record_budget(run, runtime, recipe, model)
    train_set = pair_dataset(run.data, "train", pad_id)
    val_set = pair_dataset(run.data, "validation", pad_id)
    heldout_set = pair_dataset(run.data, "heldout", pad_id)
    assert train_set is not None
    before: dict[str, Any] = {}
    if val_set is not None and runtime.is_main:  # only rank 0 reports
        before["validation"] = pair_accuracy(model, val_set, runtime)
    settings = recipe.method.reward
    result = fit_in_run(
        opened,
        model,
        BradleyTerryLoss(margin=settings.margin, center=settings.center),
        train_set,
        val_set,
        resume=resume,
        hooks=hooks,
    )
    evaluation: dict[str, Any] = {}
    if runtime.is_main:
        save_outputs(recipe, run, model, tokenizer)
        plot_training(run, result)
        evaluation = {
            "stage": "reward",
            "steps": result.steps,
            "best_step": result.best_step,
            "best_val_loss": result.best_val_loss,
            "backbone": prepared["backbone"],
            "pairs": prepared["pairs"],
            "anomalies": prepared["anomalies"],
            "before": before,
            "validation": pair_accuracy(model, val_set, runtime) if val_set is not None else None,
            "heldout": pair_accuracy(model, heldout_set, runtime) if heldout_set is not None else None,
        }
        finish_run(run, RewardResults.from_json(evaluation))
    runtime.barrier()
    return StageOutcome(run=run, fit=result, evaluation=evaluation)


STAGE = StageSpec("reward", prepare, train_and_measure, check=check_recipe)
run_reward = STAGE.run

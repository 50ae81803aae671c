"""The sft stage: a pretrained causal LM fine-tuned on a small task set (full, frozen layers or LoRA),
with the verdict on the three risks of fine-tuning: overfitting, forgetting, and transfer."""

# Everything that can fail on bad input (records, template, lengths, adapter targets) fails while the run
# is prepared in staging, before the run folder exists.

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any

from peaufine.data.batching import Example, load_examples, make_dataset, read_token_stream
from peaufine.data.corpus import tokenize_general
from peaufine.data.folds import recipe_fold, training_subset
from peaufine.data.records import HELDOUT, load_chat_records, split_records, world_qa_records
from peaufine.data.token_cache import TokenCache, cached_records, digest, tokenizer_digest
from peaufine.data.tokenize import ensure_chat_template, tokenize_records
from peaufine.data.world import copy_world, load_world
from peaufine.engine.fit import StepHook
from peaufine.engine.track import Tracker
from peaufine.errors import DataError, RecipeError
from peaufine.evaluate.sft import evaluate_before, evaluate_sft
from peaufine.methods.lm import next_token_loss
from peaufine.models.adapters import as_base
from peaufine.models.build import (
    ModelSource,
    load_for_training,
    resolve_source,
    save_outputs,
    source_model_dir,
)
from peaufine.models.tokenizer import load_tokenizer
from peaufine.results import SftResults
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
    from transformers import PreTrainedTokenizerBase

    from peaufine.data.records import ChatRecord
    from peaufine.recipe import Recipe


@dataclass
class TaskData:
    train: list[ChatRecord]
    validation: list[ChatRecord]
    heldout: list[ChatRecord] = field(default_factory=list)
    anomalies: dict[str, int] = field(default_factory=dict)


def gather_records(recipe: Recipe, source: ModelSource) -> TaskData:
    """The task's conversations: the world's Q&A (when model.source is a world run) or the user's files."""

    data = recipe.data
    if data.source == "world":
        if source.kind != "run_dir" or not (source.path / "world").is_dir():
            raise RecipeError(
                "data.source: 'world' fine-tunes on the synthetic world's questions, which needs "
                "model.source to be a run pretrained on the world (it has a world/ folder)"
            )

        world = load_world(source.path / "world")
        train, validation = split_records(
            world_qa_records(world, "qa_train"),
            data.validation_fraction,
            recipe.train.seed,
            recipe_fold(data),
        )
        return TaskData(train, validation, heldout=world_qa_records(world, "qa_heldout"))
    policy = data.anomalies.model_dump(exclude={"too_long"})
    records, report = load_chat_records(data.source, format=data.format, fields=data.fields, policy=policy)
    train, validation = split_records(records, data.validation_fraction, recipe.train.seed, recipe_fold(data))
    return TaskData(train, validation, anomalies=dict(report.counts))


def general_stream_path(recipe: Recipe, source: ModelSource) -> tuple[Path | None, str]:
    """The general text for forgetting: the user's file, or the pretraining validation split we made."""
    if recipe.eval.forgetting.general is not None:
        return None, recipe.eval.forgetting.general
    if source.kind == "run_dir" and (source.path / "data" / "val.bin").is_file():
        return source.path / "data" / "val.bin", f"{source.path}/data/val.bin (pretraining validation split)"
    return None, ""


def short_of_a_block(path: Path, block: int) -> str | None:
    """What is wrong with the token stream in `path` when it holds no block of `block` tokens plus the
    one the last predicts (forgetting's loss and replay's windows need one); None when it does."""
    tokens = path.stat().st_size // 4  # int32 tokens
    if tokens > block:
        return None
    return f"{tokens} tokens, fewer than one block of data.max_length={block} (plus the token it predicts)"


def usable_general_text(recipe: Recipe, path: Path, name: str, tracker: Tracker) -> str:
    """`name` when the general text tokenized into `path` holds one block of data.max_length (+1 for the
    token it predicts), which the forgetting loss needs (else it is NaN). A shorter text the user named
    is refused; a short pretraining split (a run without validation) leaves forgetting unmeasured."""
    if not path.exists():
        return name
    problem = short_of_a_block(path, recipe.data.max_length)
    if problem is None:
        return name
    if recipe.eval.forgetting.general is not None:
        raise DataError(
            f"eval.forgetting.general: the general text has {problem}",
            path=name,
            hint="give more text, or lower data.max_length",
        )
    path.unlink()
    tracker.warn(f"forgetting: not measured: {name} has {problem}")
    return ""


def prepare_replay(
    recipe: Recipe,
    source: ModelSource,
    tokenizer: PreTrainedTokenizerBase,
    out: Path,
    tracker: Tracker | None = None,
) -> None:
    """Replay text: data.replay.source (tokenized through data.cache_dir when set), else the training
    split of model.source's pretraining.

    Never the validation split: forgetting is measured there, and replaying it would hide forgetting.
    """
    if recipe.data.replay.source is not None:
        cache = TokenCache(recipe.data.cache_dir)
        tokenize_general(tokenizer, recipe.data.replay.source, out, cache=cache, tracker=tracker)
        key, name = "data.replay.source", recipe.data.replay.source
    elif source.kind == "run_dir" and (source.path / "data" / "train.bin").is_file():
        shutil.copyfile(source.path / "data" / "train.bin", out)
        key, name = "data.replay.ratio", f"{source.path}/data/train.bin (the pretraining corpus replayed)"
    else:
        raise RecipeError(
            "data.replay.ratio: replay needs general text: set data.replay.source, or fine-tune a "
            "model pretrained by peaufine (its pretraining corpus is replayed)"
        )
    # replay draws windows of data.max_length tokens: a shorter text would give none, and the run would
    # train without the replay its recipe asks for
    problem = short_of_a_block(out, recipe.data.max_length)
    if problem is not None:
        raise DataError(
            f"{key}: the replay text has {problem}",
            path=name,
            hint="give more text, or lower data.max_length",
        )


def prepare(recipe: Recipe, staging: Path, tracker: Tracker) -> dict[str, Any]:
    """Validate and tokenize the task into staging; returns facts for eval.json."""

    source = resolve_source(recipe.model.source)
    model_dir = source_model_dir(source)
    tokenizer = load_tokenizer(str(model_dir), recipe.model.trust_remote_code)
    template, was_default = ensure_chat_template(tokenizer)
    if was_default:
        tracker.warn(
            f"{model_dir}: the tokenizer has no chat template; using peaufine's default "
            "(written to chat_template.jinja in the run folder)"
        )
    task = gather_records(recipe, source)
    task.train = training_subset(task.train, recipe.data.train_fraction, recipe.train.seed)
    if not task.train:
        raise RecipeError("data.source: no training examples")
    reports = {}
    data_dir = staging / "data"
    data_dir.mkdir()
    cache = TokenCache(recipe.data.cache_dir)
    data = recipe.data
    settings = (data.max_length, data.loss_on, data.anomalies.too_long)
    key = digest(tokenizer_digest(tokenizer), *settings) if cache.enabled else ""
    for name in ("train", "validation", HELDOUT):
        records = getattr(task, name if name != HELDOUT else "heldout")
        examples, report, reused = cached_records(
            cache,
            key,
            records,
            lambda records=records: tokenize_records(
                tokenizer,
                records,
                max_length=data.max_length,
                loss_on=data.loss_on,
                too_long=data.anomalies.too_long,
            ),
        )
        if reused:
            tracker.say(f"tokens: {name} examples reused from the cache in {data.cache_dir}")
        reports[name] = report
        (data_dir / f"{name}.jsonl").write_text(
            "".join(json.dumps({"messages": r.messages}) + "\n" for r in records), encoding="utf-8"
        )
        (data_dir / f"{name}.tokens.jsonl").write_text(
            "".join(
                json.dumps({"input_ids": e.input_ids, "target_mask": e.target_mask}) + "\n" for e in examples
            ),
            encoding="utf-8",
        )
    (staging / "chat_template.jinja").write_text(template, encoding="utf-8")
    if recipe.data.source == "world":
        copy_world(source, staging)  # later stages (reward, dpo, rl) find the world here
    (staging / "first_example.txt").write_text(reports["train"].first_text or "", encoding="utf-8")
    tokenizer.save_pretrained(staging / "tokenizer")
    general_bin, general_name = general_stream_path(recipe, source)
    if general_bin is None and general_name:
        tokenize_general(tokenizer, general_name, data_dir / "general.bin", cache=cache, tracker=tracker)
    elif general_bin is not None:
        shutil.copyfile(general_bin, data_dir / "general.bin")
    general_name = usable_general_text(recipe, data_dir / "general.bin", general_name, tracker)
    if recipe.data.replay.ratio > 0:
        prepare_replay(recipe, source, tokenizer, data_dir / "replay.bin", tracker)
    counts = {
        name: {
            "examples": r.examples,
            "truncated": r.truncated,
            "skipped_too_long": r.skipped_too_long,
            "target_tokens": r.target_tokens,
        }
        for name, r in reports.items()
    }
    tracker.say(
        f"task: {counts['train']['examples']:,} training, {counts['validation']['examples']:,} validation"
        + (f", {counts[HELDOUT]['examples']:,} held-out" if counts[HELDOUT]["examples"] else "")
        + " examples"
    )
    truncated = sum(c["truncated"] for c in counts.values())
    if truncated:
        tracker.warn(f"{truncated} examples were longer than data.max_length and were truncated")
    return {
        "anomalies": task.anomalies,
        "examples": counts,
        "default_chat_template": was_default,
        "general_source": general_name or None,
    }


def replay_examples(stream: Any, count: int, length: int, seed: int) -> list[Any]:
    """`count` windows of replay text, every token a target, appended to the task's examples; marked as
    replay, so the run logs the task's loss apart from theirs and judges overfitting on the task's."""
    import numpy as np

    if count <= 0 or len(stream) <= length:
        return []
    starts = np.random.default_rng([seed, 7]).integers(0, len(stream) - length, size=count)
    return [Example([int(t) for t in stream[s : s + length]], None, replay=True) for s in starts]


def train_and_measure(opened: OpenedRun, resume: bool, hooks: list[StepHook] | None) -> StageOutcome:
    """The stage in its opened run folder: load, train, measure, save and finish (rank 0 measures)."""
    recipe = opened.recipe
    run, runtime, tracker, prepared = opened.run, opened.runtime, opened.tracker, opened.prepared
    source = resolve_source(recipe.model.source)
    model_dir = source_model_dir(source)
    tokenizer = load_tokenizer(str(run.tokenizer))
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    train_examples = load_examples(run.data / "train.tokens.jsonl")
    val_examples = load_examples(run.data / "validation.tokens.jsonl")
    general = read_token_stream(run.data / "general.bin") if (run.data / "general.bin").exists() else None
    ratio = recipe.data.replay.ratio
    if ratio > 0:
        extra = round(len(train_examples) * ratio / (1 - ratio))
        train_examples = train_examples + replay_examples(
            read_token_stream(run.data / "replay.bin"), extra, recipe.data.max_length, recipe.train.seed
        )
    model = load_for_training(recipe, model_dir, runtime)
    record_budget(run, runtime, recipe, model)
    with as_base(model):  # the base's numbers, a soft prompt switched off
        before = evaluate_before(recipe, model, tokenizer, run, general, runtime, pad_id, val_examples)
    result = fit_in_run(
        opened,
        model,
        next_token_loss(recipe.train),
        make_dataset(train_examples, recipe, pad_id),
        make_dataset(val_examples, recipe, pad_id) if val_examples else None,
        resume=resume,
        hooks=hooks,
    )
    evaluation: dict[str, Any] = {}
    if runtime.is_main:
        save_outputs(recipe, run, model, tokenizer)
        plot_training(run, result)
        evaluation = evaluate_sft(
            recipe, run, model, tokenizer, result, prepared, before, general, runtime, pad_id, tracker
        )
        finish_run(run, SftResults.from_json(evaluation))
    runtime.barrier()
    return StageOutcome(run=run, fit=result, evaluation=evaluation)


STAGE = StageSpec("sft", prepare, train_and_measure, check=partial(require_stage, stage="sft"))
run_sft = STAGE.run

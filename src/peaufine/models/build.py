"""Where a stage's model comes from (`model.source`) and how models are built, loaded and saved.

A source is a preset name (built from scratch), a Hugging Face model folder, or a previous run folder
(its `model/`). Everything we save loads with plain `AutoModelForCausalLM.from_pretrained`.
"""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from peaufine.errors import ModelError

if TYPE_CHECKING:
    import torch
    from transformers import PretrainedConfig, PreTrainedModel, PreTrainedTokenizerBase


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


def build_from_preset(
    name: str,
    overrides: dict[str, Any],
    tokenizer: PreTrainedTokenizerBase,
    seed: int,
) -> PreTrainedModel:
    """A freshly initialised model of a preset's shape, its vocabulary sized to the tokenizer."""
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
    model = AutoModelForCausalLM.from_config(config, attn_implementation="sdpa")
    configure_special_ids(model, tokenizer)
    return model


def load_pretrained(
    directory: Path, trust_remote_code: bool = False, dtype: torch.dtype | None = None
) -> PreTrainedModel:
    """Load a local Hugging Face causal LM from safetensors only (never a pickle)."""
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

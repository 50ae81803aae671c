"""Named shapes for models built from scratch, and their transformers configs."""

# A preset is a model type plus config fields; every field can be overridden from a recipe.

from __future__ import annotations

import dataclasses
import difflib
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from peaufine.errors import ModelError

if TYPE_CHECKING:
    from transformers import PreTrainedConfig

# Keys a config accepts at construction that are not dataclass fields: transformers pops them
# in `PreTrainedConfig.__post_init__` (attention backend) or folds them into `rope_parameters`.
_INIT_ONLY_KEYS = ("attn_implementation", "experts_implementation")
_LEGACY_ROPE_KEYS = ("rope_theta", "rope_scaling")

# Token ids belong to the tokenizer we train with, not to the shape: a preset leaves them unset
# (GPT-2's default 50256 would point past the end of a 1k vocabulary) unless a recipe sets them.
_NO_TOKEN_IDS: dict[str, Any] = {"bos_token_id": None, "eos_token_id": None}

_GPT2_NO_DROPOUT: dict[str, Any] = {
    "resid_pdrop": 0.0,
    "embd_pdrop": 0.0,
    "attn_pdrop": 0.0,
    "summary_first_dropout": 0.0,
}


@dataclass(frozen=True)
class Preset:
    """A named model shape: the transformers `model_type` and the config fields that define it.

    `shape_only` presets mirror published models whose weights we never build for real; they
    exist so `peaufine params` can report parameter and memory budgets for them, on the meta device.
    """

    name: str
    model_type: str
    fields: dict[str, Any]
    description: str
    shape_only: bool = False


def _preset_list() -> list[Preset]:
    return [
        Preset(
            name="llama-tiny",
            model_type="llama",
            fields={
                "vocab_size": 1024,
                "hidden_size": 128,
                "intermediate_size": 512,
                "num_hidden_layers": 4,
                "num_attention_heads": 4,
                "num_key_value_heads": 4,
                "max_position_embeddings": 256,
                "tie_word_embeddings": True,
                "attention_dropout": 0.0,
                **_NO_TOKEN_IDS,
            },
            description="Llama-style, ~1.2M parameters (1k vocabulary); for tests and smoke runs.",
        ),
        Preset(
            name="llama-small",
            model_type="llama",
            fields={
                "vocab_size": 8192,
                "hidden_size": 256,
                "intermediate_size": 1024,
                "num_hidden_layers": 8,
                "num_attention_heads": 8,
                "num_key_value_heads": 4,
                "max_position_embeddings": 1024,
                "tie_word_embeddings": True,
                **_NO_TOKEN_IDS,
            },
            description="Llama-style with grouped-query attention, ~10M parameters (8k vocab).",
        ),
        Preset(
            name="llama-base",
            model_type="llama",
            fields={
                "vocab_size": 16384,
                "hidden_size": 768,
                "intermediate_size": 2048,
                "num_hidden_layers": 12,
                "num_attention_heads": 12,
                "num_key_value_heads": 4,
                "max_position_embeddings": 2048,
                "tie_word_embeddings": True,
                **_NO_TOKEN_IDS,
            },
            description="Llama-style at GPT-2-small width, ~88M parameters with a 16k vocabulary.",
        ),
        Preset(
            name="gpt2-tiny",
            model_type="gpt2",
            fields={
                "vocab_size": 1024,
                "n_positions": 256,
                "n_embd": 128,
                "n_layer": 4,
                "n_head": 4,
                "tie_word_embeddings": True,
                **_GPT2_NO_DROPOUT,
                **_NO_TOKEN_IDS,
            },
            description="GPT-2-style, ~1M parameters (1k vocabulary); for tests and smoke runs.",
        ),
        Preset(
            name="gpt2-small",
            model_type="gpt2",
            fields={
                "vocab_size": 8192,
                "n_positions": 1024,
                "n_embd": 256,
                "n_layer": 8,
                "n_head": 8,
                "tie_word_embeddings": True,
                **_NO_TOKEN_IDS,
            },
            description="GPT-2-style, ~9M parameters with an 8k vocabulary.",
        ),
        Preset(
            name="gpt2",
            model_type="gpt2",
            fields={
                "vocab_size": 50257,
                "n_positions": 1024,
                "n_embd": 768,
                "n_layer": 12,
                "n_head": 12,
                "tie_word_embeddings": True,
                **_NO_TOKEN_IDS,
            },
            description="The GPT-2 124M shape (Radford et al. 2019): 124,439,808 parameters.",
        ),
        Preset(
            name="llama-2-7b",
            model_type="llama",
            fields={
                "vocab_size": 32000,
                "hidden_size": 4096,
                "intermediate_size": 11008,
                "num_hidden_layers": 32,
                "num_attention_heads": 32,
                "num_key_value_heads": 32,
                "max_position_embeddings": 4096,
                "rms_norm_eps": 1e-5,
                "rope_theta": 10000.0,
                "tie_word_embeddings": False,
            },
            description="Llama 2 7B shape (Touvron et al. 2023): 6,738,415,616 parameters.",
            shape_only=True,
        ),
        Preset(
            name="mixtral-8x7b",
            model_type="mixtral",
            fields={
                "vocab_size": 32000,
                "hidden_size": 4096,
                "intermediate_size": 14336,
                "num_hidden_layers": 32,
                "num_attention_heads": 32,
                "num_key_value_heads": 8,
                "max_position_embeddings": 32768,
                "rms_norm_eps": 1e-5,
                "rope_theta": 1e6,
                "num_local_experts": 8,
                "num_experts_per_tok": 2,
                "tie_word_embeddings": False,
            },
            description="Mixtral 8x7B shape (Jiang et al. 2024): 46.7B total, 12.9B active/token.",
            shape_only=True,
        ),
        Preset(
            name="qwen1.5-moe-a2.7b",
            model_type="qwen2_moe",
            # From Qwen/Qwen1.5-MoE-A2.7B config.json.
            fields={
                "vocab_size": 151936,
                "hidden_size": 2048,
                "intermediate_size": 5632,
                "num_hidden_layers": 24,
                "num_attention_heads": 16,
                "num_key_value_heads": 16,
                "max_position_embeddings": 8192,
                "rms_norm_eps": 1e-6,
                "rope_theta": 1e6,
                "num_experts": 60,
                "num_experts_per_tok": 4,
                "moe_intermediate_size": 1408,
                "shared_expert_intermediate_size": 5632,
                "decoder_sparse_step": 1,
                "norm_topk_prob": False,
                "use_sliding_window": False,
                "max_window_layers": 21,
                "tie_word_embeddings": False,
            },
            description="Qwen1.5-MoE-A2.7B shape: 60 routed experts (4 per token) plus a shared "
            "expert; 14.3B total, 2.7B active per token.",
            shape_only=True,
        ),
    ]


PRESETS: dict[str, Preset] = {p.name: p for p in _preset_list()}


def preset_names() -> list[str]:
    """Preset names in definition order (small to large, trainable before shape-only)."""
    return list(PRESETS)


def get_preset(name: str) -> Preset:
    """Look a preset up by name; a typo gets the closest names, since recipes are hand-written."""
    try:
        return PRESETS[name]
    except KeyError:
        close = difflib.get_close_matches(name, PRESETS, n=3, cutoff=0.4)
        hint = f"did you mean {', '.join(repr(c) for c in close)}? " if close else ""
        raise ModelError(
            f"unknown model preset {name!r}; {hint}known presets: {', '.join(PRESETS)}"
        ) from None


def _config_class(model_type: str) -> type[PreTrainedConfig]:
    from transformers import CONFIG_MAPPING

    try:
        return CONFIG_MAPPING[model_type]
    except KeyError:
        raise ModelError(f"transformers has no config for model_type {model_type!r}") from None


def config_field_names(config_class: type[PreTrainedConfig]) -> set[str]:
    """Every key `config_class(**kwargs)` treats as a real setting.

    transformers 5 configs are dataclasses that silently keep unknown kwargs as attributes, so a
    misspelled override (`hidden_sze`) would build the default model; we check keys against this.
    """
    names = {f.name for f in dataclasses.fields(config_class)}
    names |= set(config_class.attribute_map)
    names |= set(_INIT_ONLY_KEYS)
    if "rope_parameters" in names:
        names |= set(_LEGACY_ROPE_KEYS)
    return names


def _canonical_keys(
    values: dict[str, Any], config_class: type[PreTrainedConfig], preset: Preset
) -> dict[str, Any]:
    """Check keys against the config class and map aliases (GPT-2 `hidden_size` -> `n_embd`).

    Aliases are mapped so an override replaces the preset's value instead of racing it: given both
    `n_embd` and `hidden_size`, transformers keeps whichever it happens to set last.
    """
    known = config_field_names(config_class)
    out: dict[str, Any] = {}
    for key, value in values.items():
        if key not in known:
            closest = difflib.get_close_matches(key, sorted(known), n=1, cutoff=0.0)
            raise ModelError(
                f"model override {key!r} is not a field of {config_class.__name__} "
                f"(preset {preset.name!r}); closest field: {closest[0]!r}"
            )
        out[config_class.attribute_map.get(key, key)] = value
    return out


def build_config(
    preset_or_name: Preset | str,
    overrides: dict[str, Any] | None = None,
    *,
    vocab_size: int | None = None,
) -> PreTrainedConfig:
    """The transformers config for a preset, with recipe overrides and our tokenizer's vocabulary.

    Precedence: preset fields < `vocab_size` (the tokenizer's) < explicit overrides. An override of
    `vocab_size` may pad the embedding above the tokenizer's size but never below it, where token
    ids would index past the table. Attention uses PyTorch SDPA unless overridden.
    """
    preset = get_preset(preset_or_name) if isinstance(preset_or_name, str) else preset_or_name
    config_class = _config_class(preset.model_type)
    overrides = _canonical_keys(dict(overrides or {}), config_class, preset)
    fields = _canonical_keys(dict(preset.fields), config_class, preset)

    if vocab_size is not None:
        asked = overrides.get("vocab_size")
        if asked is not None and asked < vocab_size:
            raise ModelError(
                f"model override vocab_size={asked} is smaller than the tokenizer's vocabulary "
                f"({vocab_size}); remove the override or set it to at least {vocab_size}"
            )
        fields["vocab_size"] = vocab_size
    kwargs: dict[str, Any] = {"attn_implementation": "sdpa", **fields, **overrides}

    from huggingface_hub.errors import StrictDataclassError

    try:
        return config_class(**kwargs)
    except (StrictDataclassError, ValueError, TypeError) as err:
        raise ModelError(
            f"preset {preset.name!r} with overrides {overrides} is not a valid {config_class.__name__}: {err}"
        ) from err

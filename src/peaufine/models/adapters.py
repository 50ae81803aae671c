"""PEFT adapters (LoRA / DoRA, (IA)3, prompt tuning) and layer freezing: what trains, and how an adapter
is saved (in PEFT's own format) or folded into a copy of its base."""

from __future__ import annotations

import contextlib
import copy
import difflib
import os
import shutil
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

from peaufine.atomic import publish_dir
from peaufine.errors import ModelError
from peaufine.models.bottleneck import apply_bottleneck

if TYPE_CHECKING:
    import torch
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

    from peaufine.recipe import AdapterBlock, FreezeBlock

# PEFT warnings that say nothing the user can act on: GPT-2's Conv1D stores its weight transposed
# and PEFT switches `fan_in_fan_out` on by itself; the deprecation is transformers' API inside PEFT.
_EXPECTED_PEFT_WARNINGS = (
    r"fan_in_fan_out is set to False",
    r"`is_gradient_checkpointing` is deprecated",
    # With "all-linear" on an MoE model PEFT remaps targets onto fused expert tensors and warns
    # about its own internal rank/alpha patterns, which no recipe sets.
    r"The following (rank|alpha)_pattern keys did not match",
)


@contextlib.contextmanager
def quiet_peft() -> Iterator[None]:
    with warnings.catch_warnings():
        for message in _EXPECTED_PEFT_WARNINGS:
            warnings.filterwarnings("ignore", message=message)
        yield


def peft_base(model: torch.nn.Module) -> torch.nn.Module:
    """The transformers model inside a PeftModel (LoRA layers included), or the model itself."""
    get_base = getattr(model, "get_base_model", None)
    return get_base() if callable(get_base) else model


def _is_linear_like(module: torch.nn.Module) -> bool:
    import torch
    from transformers.pytorch_utils import Conv1D

    # GPT-2 family layers are Conv1D: a Linear with its weight stored transposed.
    return isinstance(module, (torch.nn.Linear, Conv1D))


def _linear_modules(model: torch.nn.Module) -> dict[str, torch.nn.Module]:
    """Dotted path -> Linear-like module, without the output head and without LoRA's own A/B layers."""
    from peft.tuners.tuners_utils import BaseTunerLayer

    base = peft_base(model)
    get_output = getattr(base, "get_output_embeddings", None)
    head = get_output() if callable(get_output) else None
    found: dict[str, torch.nn.Module] = {}
    inside_adapter: list[str] = []
    for path, module in base.named_modules():
        if any(path.startswith(prefix + ".") for prefix in inside_adapter):
            continue
        if module is head:
            continue
        if isinstance(module, BaseTunerLayer):
            # A LoRA-wrapped layer stands for the linear layer it wraps; its lora_A/lora_B are not targets.
            inside_adapter.append(path)
            found[path] = module
        elif _is_linear_like(module):
            found[path] = module
    return found


def linear_layer_names(model: torch.nn.Module) -> list[str]:
    """The distinct leaf names of the Linear-like layers (q_proj, c_attn, ...), output head excluded.

    These are the names `model.adapter.target_modules` accepts, and what an error lists as the choices.
    """
    return sorted({path.rsplit(".", 1)[-1] for path in _linear_modules(model)})


def _matches(module_path: str, target: str) -> bool:
    # PEFT's rule for a list of names: the whole path, or its trailing dotted components.
    return module_path == target or module_path.endswith("." + target)


def _check_targets(model: torch.nn.Module, targets: list[str]) -> None:
    """Every name must match some module: PEFT itself only complains when *all* of them match nothing,
    so a misspelt name next to a right one would silently adapt fewer layers than asked."""
    import torch

    if not targets:
        raise ModelError(
            "model.adapter.target_modules is empty; name linear layers (e.g. [q_proj, v_proj]) "
            'or use "all-linear"'
        )
    linear = linear_layer_names(model)
    choices = ", ".join(linear) or "(none)"
    modules = dict(model.named_modules())
    for target in targets:
        matched = [module for path, module in modules.items() if path and _matches(path, target)]
        if not matched:
            close = difflib.get_close_matches(target, linear, n=1)
            hint = f"; did you mean '{close[0]}'?" if close else ""
            raise ModelError(
                f"model.adapter.target_modules: '{target}' matches no layer of {type(model).__name__}{hint} "
                f'Its linear layers are: {choices} (or use "all-linear")'
            )
        if not any(_is_linear_like(m) or isinstance(m, torch.nn.Embedding) for m in matched):
            kinds = sorted({type(m).__name__ for m in matched})
            raise ModelError(
                f"model.adapter.target_modules: '{target}' names {', '.join(kinds)} modules, which an "
                f"adapter cannot adapt; name linear layers instead: {choices}"
            )


# The kinds whose adapter folds into the base weights (W + BA, W * l): a run of them saves one plain
# model. A soft prompt is an input, not a weight, and bottleneck adapters are non-linear: both stay apart.
MERGEABLE_KINDS = ("lora", "ia3")


def can_merge(kind: str) -> bool:
    """Whether a run with `model.adapter.kind` `kind` can be saved as one plain transformers model:
    the mergeable kinds, and `none` (nothing to merge)."""
    return kind == "none" or kind in MERGEABLE_KINDS


def is_classifier(model: torch.nn.Module) -> bool:
    """A transformers sequence classifier (classify, reward): PEFT's SEQ_CLS task, its head trainable."""
    return type(peft_base(model)).__name__.endswith("ForSequenceClassification")


def prompt_length(model: torch.nn.Module) -> int:
    """How many learnt positions PEFT puts before each input (prompt tuning's num_virtual_tokens); 0 for
    every other model, and for a prompt-learning model inside `disable_adapter()`."""
    config = getattr(model, "active_peft_config", None)
    if config is None or not config.is_prompt_learning or getattr(model, "_adapters_disabled", False):
        return 0
    return int(config.num_virtual_tokens)


@contextlib.contextmanager
def as_base(model: torch.nn.Module) -> Iterator[None]:
    """`model` computing as the base it adapts, for what a run measures before training (the base's
    numbers, DPO's reference). A soft prompt is switched off (PEFT's disable_adapter): unlike LoRA's
    zero B and (IA)3's unit vectors, a random or text-initialised prompt does not start as the
    identity. Every other model is left as it is, so its numbers stay bit-identical."""
    if prompt_length(model):
        with model.disable_adapter():
            yield
    else:
        yield


def input_positions(per_position: torch.Tensor, input_ids: torch.Tensor) -> torch.Tensor:
    """The rows of a causal LM's per-position output (logits, hidden states) that belong to the input.

    With prompt learning PEFT prepends num_virtual_tokens positions, so a model returns more positions
    than it was given: the input's are the last `input_ids.shape[1]`. Without a prefix the tensor is
    returned as it is (the same object, so LoRA and full fine-tuning compute exactly as before).
    """
    length = input_ids.shape[-1]
    if per_position.shape[1] == length:
        return per_position
    return per_position[:, -length:]


def _ia3_targets(model: torch.nn.Module, adapter: AdapterBlock) -> tuple[list[str], list[str]]:
    """(target_modules, feedforward_modules) for (IA)3, checked before PEFT sees them.

    "all-linear" is PEFT's default set for the architecture (keys, values and the MLP's output for
    Llama); an architecture PEFT has none for must name its layers. feedforward_modules not given: the
    architecture's default ones among the targets (none where PEFT has no default).
    """
    from peft.utils.constants import (
        TRANSFORMERS_MODELS_TO_IA3_FEEDFORWARD_MODULES_MAPPING,
        TRANSFORMERS_MODELS_TO_IA3_TARGET_MODULES_MAPPING,
    )

    model_type = getattr(getattr(peft_base(model), "config", None), "model_type", None)
    if adapter.target_modules == "all-linear":
        if model_type not in TRANSFORMERS_MODELS_TO_IA3_TARGET_MODULES_MAPPING:
            raise ModelError(
                f"model.adapter.target_modules: PEFT has no default (IA)3 layers for {model_type} models "
                f"({type(model).__name__}); name them, e.g. [k_proj, v_proj, down_proj], among its linear "
                f"layers: {', '.join(linear_layer_names(model))}"
            )
        targets = list(TRANSFORMERS_MODELS_TO_IA3_TARGET_MODULES_MAPPING[model_type])
    else:
        targets = list(adapter.target_modules)
        _check_targets(model, targets)
    if adapter.feedforward_modules is None:
        defaults = TRANSFORMERS_MODELS_TO_IA3_FEEDFORWARD_MODULES_MAPPING.get(model_type, [])
        return targets, [name for name in defaults if name in targets]
    outside = [name for name in adapter.feedforward_modules if name not in targets]
    if outside:
        raise ModelError(
            f"model.adapter.feedforward_modules: {', '.join(outside)} not among the target modules "
            f"({', '.join(targets)}); a feed-forward module is one of the targets whose input is rescaled: "
            "add it to target_modules or remove it"
        )
    return targets, list(adapter.feedforward_modules)


def _peft_config(
    model: torch.nn.Module,
    adapter: AdapterBlock,
    special_token_ids: list[int] | None,
    tokenizer_path: str | None,
) -> object:
    """PEFT's config for `adapter` on `model`: SEQ_CLS for a sequence classifier (PEFT keeps its new
    head trainable, in modules_to_save), CAUSAL_LM otherwise."""
    from peft import IA3Config, LoraConfig, PromptTuningConfig

    classifier = is_classifier(model)
    task_type = "SEQ_CLS" if classifier else "CAUSAL_LM"
    if adapter.kind == "lora":
        targets: list[str] | str = adapter.target_modules
        if targets != "all-linear":
            targets = list(targets)
            _check_targets(model, targets)
        return LoraConfig(
            task_type=task_type,
            r=adapter.r,
            lora_alpha=adapter.alpha,
            lora_dropout=adapter.dropout,
            target_modules=targets,
            use_rslora=adapter.rslora,
            use_dora=adapter.dora,
            trainable_token_indices=sorted(set(special_token_ids))
            if adapter.train_special_tokens and special_token_ids and not classifier
            else None,
        )
    if adapter.kind == "ia3":
        targets, feedforward = _ia3_targets(model, adapter)
        return IA3Config(task_type=task_type, target_modules=targets, feedforward_modules=feedforward)
    if adapter.kind == "prompt_tuning":
        text = adapter.prompt_init == "text"
        if text and tokenizer_path is None:
            raise ModelError(
                "model.adapter.prompt_init: text needs the model's tokenizer to embed prompt_init_text, "
                "and none was given here; use prompt_init: random"
            )
        return PromptTuningConfig(
            task_type=task_type,
            num_virtual_tokens=adapter.num_virtual_tokens,
            prompt_tuning_init="TEXT" if text else "RANDOM",
            prompt_tuning_init_text=adapter.prompt_init_text if text else None,
            tokenizer_name_or_path=tokenizer_path if text else None,
        )
    raise ModelError(
        f"model.adapter.kind: {adapter.kind} has no PEFT form; use lora, ia3 or prompt_tuning "
        "(or none to train every weight)"
    )


_KIND_NAMES = {"lora": "LoRA", "ia3": "(IA)3", "prompt_tuning": "prompt tuning"}


def apply_adapter(
    model: PreTrainedModel,
    adapter: AdapterBlock,
    special_token_ids: list[int] | None = None,
    tokenizer_path: str | None = None,
) -> torch.nn.Module:
    """Wrap `model` in PEFT for `adapter.kind` (lora, ia3, prompt_tuning), or return it unchanged (none).

    PEFT freezes every base weight and adds the kind's trainable part, which starts as the identity:
    LoRA's A (r x in) and B (out x r) per targeted layer with B zero; (IA)3's scaling vectors, ones,
    on the targeted layers' outputs (feed-forward ones: inputs); prompt tuning's num_virtual_tokens
    learnt input embeddings before each example (random, or the embeddings of prompt_init_text read
    with the tokenizer at `tokenizer_path`). The base modules are replaced in place.
    With LoRA's `adapter.train_special_tokens`, the embedding rows of `special_token_ids` train too
    (PEFT's trainable tokens; tied output rows follow): a chat token such as <|end|> that pretraining
    never showed has an embedding every softmax pushed down, and LoRA alone barely lifts it, so the
    model would never learn to end its turn.
    """
    if adapter.kind == "none":
        return model
    if adapter.kind == "bottleneck":
        return apply_bottleneck(model, adapter)
    from peft import get_peft_model

    config = _peft_config(model, adapter, special_token_ids, tokenizer_path)
    try:
        with quiet_peft():
            return get_peft_model(model, config)
    except ValueError as exc:  # NoMatchingPeftModuleError and unsupported layer types are ValueErrors
        first_line = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        fix = f"name target_modules among its linear layers ({', '.join(linear_layer_names(model))})"
        if adapter.kind == "prompt_tuning":
            fix = "use another model.adapter.kind (lora or ia3)"
        if adapter.dora:
            fix += ", or set dora: false"
        raise ModelError(
            f"model.adapter: PEFT cannot apply {_KIND_NAMES[adapter.kind]} to {type(model).__name__} with "
            f"these settings ({first_line}); {fix}"
        ) from None


def decoder_layers(model: torch.nn.Module) -> torch.nn.ModuleList:
    """The stack of transformer blocks (Llama's `model.layers`, GPT-2's `transformer.h`, ...).

    Found generically: the ModuleList of `num_hidden_layers` blocks under `get_decoder()`.
    """
    import torch

    base = peft_base(model)
    get_decoder = getattr(base, "get_decoder", None)
    decoder = get_decoder() if callable(get_decoder) else base
    count = getattr(getattr(base, "config", None), "num_hidden_layers", None)
    for root in (decoder, base):
        lists = [m for m in root.modules() if isinstance(m, torch.nn.ModuleList) and len(m) > 0]
        exact = [m for m in lists if len(m) == count]
        if exact:
            return exact[0]
    raise ModelError(
        f"model.freeze.layers: cannot find the decoder layers of {type(base).__name__} "
        f"(no ModuleList of num_hidden_layers={count} blocks); freeze embeddings or all_but_head instead"
    )


def apply_freeze(model: torch.nn.Module, freeze: FreezeBlock) -> None:
    """Switch `requires_grad` off for the chosen parts; it never switches a parameter on.

    So it composes with LoRA: freezing layer 0 of a LoRA model freezes that layer's A and B too.
    With tied input/output embeddings the head *is* the token table: `embeddings` freezes the head as
    well, `all_but_head` keeps the table trainable, and asking for both is refused.
    """
    import torch

    base = peft_base(model)
    if freeze.layers:
        layers = decoder_layers(base)
        n = len(layers)
        bad = [i for i in freeze.layers if not 0 <= i < n]
        if bad:
            raise ModelError(
                f"model.freeze.layers: {bad} out of range; the model has {n} decoder layers, "
                f"numbered 0 to {n - 1}"
            )
        for i in freeze.layers:
            layers[i].requires_grad_(False)

    head = base.get_output_embeddings() if hasattr(base, "get_output_embeddings") else None
    head_params = {id(p) for p in head.parameters()} if head is not None else set()
    embedding_params = {
        id(p) for m in base.modules() if isinstance(m, torch.nn.Embedding) for p in m.parameters()
    }
    if freeze.all_but_head:
        if head is None:
            raise ModelError(
                f"model.freeze.all_but_head: {type(base).__name__} has no output head to keep trainable"
            )
        if freeze.embeddings and head_params & embedding_params:
            raise ModelError(
                "model.freeze: embeddings and all_but_head contradict each other on a model with tied "
                "embeddings (the head is the token table); drop one, or untie with "
                "model.config.tie_word_embeddings: false"
            )
        for param in base.parameters():
            if id(param) not in head_params:
                param.requires_grad_(False)
    if freeze.embeddings:
        for param in base.parameters():
            if id(param) in embedding_params:
                param.requires_grad_(False)

    if not any(p.requires_grad for p in model.parameters()):  # a bottleneck wrapper's adapters count
        raise ModelError(
            "model.freeze leaves no parameter trainable (with a LoRA adapter the head is already frozen, "
            "so all_but_head freezes everything); freeze fewer parts"
        )


def _staging_for(directory: Path) -> Path:
    staging = directory.with_name(f".{directory.name}.tmp-{os.getpid()}")
    if staging.exists():
        shutil.rmtree(staging)
    return staging


def save_adapter(model: torch.nn.Module, tokenizer: PreTrainedTokenizerBase | None, directory: Path) -> None:
    """Write the adapter in PEFT's format (adapter_config.json, adapter_model.safetensors), atomically.

    Only A, B (and DoRA's magnitudes) are written, megabytes instead of the base's gigabytes; the
    folder loads with `PeftModel.from_pretrained(base, directory)` or `peaufine merge`.
    """
    from peft import PeftModel

    if not isinstance(model, PeftModel):
        raise ModelError(
            "save_adapter: this model has no adapter (model.adapter.kind is none); save the full model"
        )
    directory = Path(directory)
    directory.parent.mkdir(parents=True, exist_ok=True)
    staging = _staging_for(directory)
    # save_embedding_layers="auto" would look the base up (on the Hub for a non-local name) to see if
    # the vocabulary was resized; peaufine never resizes, so the full embedding table is never needed.
    model.save_pretrained(staging, safe_serialization=True, save_embedding_layers=False)
    if tokenizer is not None:
        tokenizer.save_pretrained(staging)
    publish_dir(staging, directory)


def merged_copy(model: torch.nn.Module) -> torch.nn.Module:
    """A plain transformers model with the adapter folded in (LoRA's W + scale * B @ A, (IA)3's W
    scaled by its vectors), the input untouched.

    `merge_and_unload` rewrites the modules it is given, so it runs on a deep copy: the training
    model keeps its adapter and can go on training. Costs one more copy of the weights in memory.
    A model without an adapter is returned as it is; a soft prompt cannot be merged (it is an input,
    not a weight), so a prompt-tuning model is refused (see can_merge).
    """
    from peft import PeftModel

    if not isinstance(model, PeftModel):
        return model
    if model.active_peft_config.is_prompt_learning:
        raise ModelError(
            "model.adapter.kind prompt_tuning: a learnt prompt is an input, not a weight, and cannot be "
            "merged into the model; keep the base model and its adapter/ folder (PeftModel.from_pretrained)"
        )
    return copy.deepcopy(model).merge_and_unload()

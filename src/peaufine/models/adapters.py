"""LoRA adapters (PEFT) and layer freezing: what trains, how adapters are saved, merged and counted.

An adapter is saved in PEFT's own format; `merge_adapter` folds it into its base, giving a plain model.
"""

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

from peaufine.errors import ModelError

if TYPE_CHECKING:
    import torch
    from transformers import PretrainedConfig, PreTrainedModel, PreTrainedTokenizerBase

    from peaufine.models.budget import ParamBudget
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
def _quiet_peft() -> Iterator[None]:
    with warnings.catch_warnings():
        for message in _EXPECTED_PEFT_WARNINGS:
            warnings.filterwarnings("ignore", message=message)
        yield


def _unwrap(model: torch.nn.Module) -> torch.nn.Module:
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

    base = _unwrap(model)
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
                f"model.adapter.target_modules: '{target}' names {', '.join(kinds)} modules, which LoRA "
                f"cannot adapt; name linear layers instead: {choices}"
            )


def apply_adapter(
    model: PreTrainedModel, adapter: AdapterBlock, special_token_ids: list[int] | None = None
) -> torch.nn.Module:
    """Wrap `model` for LoRA training (kind `lora`), or return it unchanged (kind `none`).

    PEFT freezes every base weight and adds trainable A (r x in) and B (out x r) per targeted layer,
    B zero so the wrapped model starts equal to the base. The base modules are replaced in place.
    With `adapter.train_special_tokens`, the embedding rows of `special_token_ids` train too (PEFT's
    trainable tokens; tied output rows follow): a chat token such as <|end|> that pretraining never
    showed has an embedding every softmax pushed down, and LoRA alone barely lifts it, so the model
    would never learn to end its turn.
    """
    if adapter.kind == "none":
        return model
    from peft import LoraConfig, get_peft_model

    targets: list[str] | str = adapter.target_modules
    if targets != "all-linear":
        targets = list(targets)
        _check_targets(model, targets)
    # a sequence classifier (a reward model) keeps its new score head trainable: PEFT's SEQ_CLS task
    # puts the head in modules_to_save
    classifier = type(model).__name__.endswith("ForSequenceClassification")
    config = LoraConfig(
        task_type="SEQ_CLS" if classifier else "CAUSAL_LM",
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
    try:
        with _quiet_peft():
            return get_peft_model(model, config)
    except ValueError as exc:  # NoMatchingPeftModuleError and unsupported layer types are ValueErrors
        first_line = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        fix = f"name target_modules among its linear layers ({', '.join(linear_layer_names(model))})"
        if adapter.dora:
            fix += ", or set dora: false"
        raise ModelError(
            f"model.adapter: PEFT cannot apply LoRA to {type(model).__name__} with these settings "
            f"({first_line}); {fix}"
        ) from None


def decoder_layers(model: torch.nn.Module) -> torch.nn.ModuleList:
    """The stack of transformer blocks (Llama's `model.layers`, GPT-2's `transformer.h`, ...).

    Found generically: the ModuleList of `num_hidden_layers` blocks under `get_decoder()`.
    """
    import torch

    base = _unwrap(model)
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

    base = _unwrap(model)
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

    if not any(p.requires_grad for p in base.parameters()):
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

    from peaufine.engine.checkpoint import publish_dir

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
    """A plain transformers model with the adapter folded in (W + scale * B @ A), the input untouched.

    `merge_and_unload` rewrites the modules it is given, so it runs on a deep copy: the training
    model keeps its adapter and can go on training. Costs one more copy of the weights in memory.
    A model without an adapter is returned as it is.
    """
    from peft import PeftModel

    if not isinstance(model, PeftModel):
        return model
    return copy.deepcopy(model).merge_and_unload()


def _has_tokenizer(directory: Path) -> bool:
    return (directory / "tokenizer_config.json").is_file() or (directory / "tokenizer.json").is_file()


def _adapter_mismatch(model: torch.nn.Module, adapter_file: Path) -> str | None:
    """Why the loaded adapter does not fit `model`, or None.

    PEFT only warns about adapter weights the model lacks, and drops silently those with no place in it
    (an adapter from a deeper model): both mean the adapter was trained on another model.
    """
    from peft import get_peft_model_state_dict
    from safetensors import safe_open

    with safe_open(str(adapter_file), framework="pt") as handle:
        saved = set(handle.keys())
    expected = set(get_peft_model_state_dict(model).keys())
    extra, missing = sorted(saved - expected), sorted(expected - saved)
    if not extra and not missing:
        return None
    parts = []
    if extra:
        parts.append(f"{len(extra)} adapter tensors have no place in the base (e.g. {extra[0]})")
    if missing:
        parts.append(f"{len(missing)} adapted layers get no weights (e.g. {missing[0]})")
    return "; ".join(parts)


def merge_adapter(base_dir: Path, adapter_dir: Path, out_dir: Path, overwrite: bool = False) -> None:
    """`peaufine merge`: base + LoRA adapter -> one plain model folder, written atomically.

    The result loads with `AutoModelForCausalLM.from_pretrained`, without PEFT. The tokenizer comes
    from the adapter folder when it has one (the one trained with), else from the base.
    """
    from peft import PeftModel

    from peaufine.models.build import load_pretrained, save_model
    from peaufine.models.tokenizer import load_tokenizer

    base_dir, adapter_dir, out_dir = Path(base_dir), Path(adapter_dir), Path(out_dir)
    if not base_dir.is_dir():
        raise ModelError(
            f"merge: base model folder {base_dir} does not exist; give the model the adapter was trained on"
        )
    # A peaufine run folder keeps its model in model/; a Hugging Face folder is the model itself.
    model_dir = base_dir / "model" if (base_dir / "model" / "config.json").is_file() else base_dir
    if not (model_dir / "config.json").is_file():
        raise ModelError(
            f"merge: {base_dir} holds neither config.json (a Hugging Face model) nor model/config.json "
            "(a peaufine run); give the base model the adapter was trained on"
        )
    if not (adapter_dir / "adapter_config.json").is_file():
        raise ModelError(
            f"merge: {adapter_dir} holds no adapter_config.json; give the folder that a LoRA run "
            "saved its adapter to"
        )
    adapter_file = adapter_dir / "adapter_model.safetensors"
    if not adapter_file.is_file():
        raise ModelError(
            f"merge: {adapter_dir} has no adapter_model.safetensors; peaufine loads safetensors only "
            "(re-save the adapter with PEFT's save_pretrained(safe_serialization=True))"
        )
    resolved = {p.resolve() for p in (base_dir, model_dir, adapter_dir)}
    if out_dir.resolve() in resolved:
        raise ModelError(f"merge: the output folder {out_dir} is an input; choose another folder")
    if out_dir.exists() and any(out_dir.iterdir()) and not overwrite:
        raise ModelError(f"merge: {out_dir} exists and is not empty; remove it or choose another folder")

    base = load_pretrained(model_dir)
    tokenizer_dir = adapter_dir if _has_tokenizer(adapter_dir) else model_dir
    if not _has_tokenizer(tokenizer_dir):
        raise ModelError(
            f"merge: neither {adapter_dir} nor {model_dir} holds a tokenizer; save one next to the model"
        )
    tokenizer = load_tokenizer(str(tokenizer_dir))
    how_to_fix = f"merge the adapter into the base model it was trained on, not {model_dir}"
    try:
        with _quiet_peft(), warnings.catch_warnings():
            # Missing adapter keys are checked below, with a message that names the folders.
            warnings.filterwarnings("ignore", message=r"Found missing adapter keys")
            model = PeftModel.from_pretrained(base, adapter_dir)
    except (ValueError, RuntimeError, KeyError) as exc:
        first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ModelError(
            f"merge: the adapter in {adapter_dir} does not fit {model_dir} ({first_line}); {how_to_fix}"
        ) from None
    mismatch = _adapter_mismatch(model, adapter_file)
    if mismatch:
        raise ModelError(
            f"merge: the adapter in {adapter_dir} does not fit {model_dir}: {mismatch}; {how_to_fix}"
        )
    save_model(model.merge_and_unload(), tokenizer, out_dir)


def lora_budget(
    config: PretrainedConfig, r: int, targets: list[str] | str, dora: bool = False
) -> ParamBudget:
    """Parameters of a model with LoRA on top, counted on the meta device (no memory, no download).

    PEFT itself builds the adapter, so its count is PEFT's own: r*(in+out) per targeted layer, plus
    `out` magnitudes with DoRA. Trainable = the adapter, frozen = the whole base, total = base + adapter.
    """
    from peaufine.models.budget import ParamBudget, count_parameters, meta_model
    from peaufine.recipe import AdapterBlock

    model = meta_model(config)
    base = count_parameters(model)
    adapter = AdapterBlock(kind="lora", r=r, target_modules=targets, dora=dora)
    wrapped_model = apply_adapter(model, adapter)
    wrapped = count_parameters(wrapped_model)
    added = wrapped.total - base.total
    by_type: dict[str, dict[str, int]] = {
        name: {"total": row["total"], "trainable": 0} for name, row in base.by_module_type.items()
    }
    by_type["LoRA adapter"] = {"total": added, "trainable": wrapped.trainable}
    return ParamBudget(
        total=wrapped.total,
        trainable=wrapped.trainable,
        by_module_type=by_type,
        active_per_token=_active_with_adapter(wrapped_model, base.active_per_token, added),
        embedding=base.embedding,
    )


def _active_with_adapter(wrapped: torch.nn.Module, base_active: int | None, added: int) -> int | None:
    """Active parameters per token once an adapter is added to an MoE model (None if dense).

    With "all-linear", PEFT also adapts the fused routed experts, one low-rank pair per expert, so a
    token goes through k/E of those; adapter weights elsewhere (attention, router) see every token.
    """
    from peaufine.models.budget import _NUM_EXPERTS_KEYS, _is_routed_experts

    if base_active is None:
        return None
    config = _unwrap(wrapped).config
    top_k = config.num_experts_per_tok
    num_experts = next(getattr(config, k) for k in _NUM_EXPERTS_KEYS if getattr(config, k, None))
    routed: dict[int, int] = {}
    for name, module in wrapped.named_modules():
        if _is_routed_experts(name, module):
            routed.update({id(p): p.numel() for p in module.parameters() if p.requires_grad})
    routed_adapter = sum(routed.values())
    return base_active + added - routed_adapter + routed_adapter // num_experts * top_k


def lora_trainable_parameters(
    config: PretrainedConfig, r: int, targets: list[str] | str, dora: bool = False
) -> int:
    """How many parameters LoRA of rank `r` on `targets` trains (`peaufine params --lora r=8`)."""
    return lora_budget(config, r, targets, dora).trainable

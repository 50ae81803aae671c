"""`peaufine merge`: a LoRA or (IA)3 adapter folded into its base model, giving one plain Hugging Face model
folder that loads without PEFT; an adapter trained on another model, or one that cannot merge, is refused."""

from __future__ import annotations

import json
import warnings
from pathlib import Path
from typing import TYPE_CHECKING

from peaufine.errors import ModelError
from peaufine.models.adapters import MERGEABLE_KINDS, quiet_peft
from peaufine.models.bottleneck import is_bottleneck_dir
from peaufine.models.build import load_pretrained, save_model
from peaufine.models.folders import check_model_folder, safetensors_problem
from peaufine.models.tokenizer import load_tokenizer

if TYPE_CHECKING:
    import torch

# adapter_config.json's peft_type of the kinds that fold into the weights: PEFT names them in capitals
MERGEABLE_PEFT_TYPES = tuple(kind.upper() for kind in MERGEABLE_KINDS)


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


def _check_adapter_files(adapter_dir: Path, adapter_file: Path) -> None:
    """Refuse an adapter whose config is not a JSON object, whose kind does not merge (a soft prompt is
    an input, not a weight), or whose weights are damaged (truncated, a broken header), naming the
    file, before the base model is loaded."""
    config_file = adapter_dir / "adapter_config.json"
    try:
        config = json.loads(config_file.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ModelError(f"merge: {config_file} is not valid JSON ({exc}); save the adapter again") from None
    if not isinstance(config, dict):
        raise ModelError(f"merge: {config_file} is not a JSON object; save the adapter again")
    peft_type = str(config.get("peft_type", "")).upper()
    if peft_type not in MERGEABLE_PEFT_TYPES:
        raise ModelError(
            f"merge: the adapter in {adapter_dir} is {peft_type or 'of an unknown kind'}, which cannot be "
            "merged into the base weights (only LoRA and (IA)3 can); load it on its base model instead: "
            "PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(BASE), ADAPTER)"
        )
    problem = safetensors_problem(adapter_file)
    if problem:
        raise ModelError(
            f"merge: the adapter weights {adapter_file} are damaged: {problem}; save the adapter again"
        )


def merge_adapter(base_dir: Path, adapter_dir: Path, out_dir: Path, overwrite: bool = False) -> None:
    """`peaufine merge`: base + LoRA or (IA)3 adapter -> one plain model folder, written atomically.

    The result loads with `AutoModelForCausalLM.from_pretrained`, without PEFT. The tokenizer comes
    from the adapter folder when it has one (the one trained with), else from the base.
    """
    from peft import PeftModel

    base_dir, adapter_dir, out_dir = Path(base_dir), Path(adapter_dir), Path(out_dir)
    for folder, what, fix in (
        (base_dir, "base model", "give the model the adapter was trained on"),
        (adapter_dir, "adapter", "give the adapter/ folder of a LoRA or (IA)3 run"),
    ):
        if not folder.is_dir():
            state = "is a file, not a folder" if folder.exists() else "does not exist"
            raise ModelError(f"merge: the {what} folder {folder} {state}; {fix}")
    # A peaufine run folder keeps its model in model/; a Hugging Face folder is the model itself.
    model_dir = base_dir / "model" if (base_dir / "model" / "config.json").is_file() else base_dir
    if not (model_dir / "config.json").is_file():
        raise ModelError(
            f"merge: {base_dir} holds neither config.json (a Hugging Face model) nor model/config.json "
            "(a peaufine run); give the base model the adapter was trained on"
        )
    if is_bottleneck_dir(adapter_dir):
        raise ModelError(
            f"merge: {adapter_dir} holds a bottleneck adapter, a non-linear network between the layers "
            "that cannot be folded into the weights; its run's model/ (base/ + adapter/) loads as one "
            "model in every peaufine command"
        )
    if not (adapter_dir / "adapter_config.json").is_file():
        raise ModelError(
            f"merge: {adapter_dir} holds no adapter_config.json; give the folder that a LoRA or (IA)3 "
            "run saved its adapter to"
        )
    adapter_file = adapter_dir / "adapter_model.safetensors"
    if not adapter_file.is_file():
        raise ModelError(
            f"merge: {adapter_dir} has no adapter_model.safetensors; peaufine loads safetensors only "
            "(re-save the adapter with PEFT's save_pretrained(safe_serialization=True))"
        )
    check_model_folder(model_dir, key="merge", kind="causal_lm")  # the base first, as given first
    _check_adapter_files(adapter_dir, adapter_file)
    resolved = {p.resolve() for p in (base_dir, model_dir, adapter_dir)}
    if out_dir.resolve() in resolved:
        raise ModelError(f"merge: the output folder {out_dir} is an input; choose another folder")
    if out_dir.exists() and any(out_dir.iterdir()) and not overwrite:
        raise ModelError(f"merge: {out_dir} exists and is not empty; remove it or choose another folder")

    base = load_pretrained(model_dir, key="merge")
    tokenizer_dir = adapter_dir if _has_tokenizer(adapter_dir) else model_dir
    if not _has_tokenizer(tokenizer_dir):
        raise ModelError(
            f"merge: neither {adapter_dir} nor {model_dir} holds a tokenizer; save one next to the model"
        )
    tokenizer = load_tokenizer(str(tokenizer_dir))
    how_to_fix = f"merge the adapter into the base model it was trained on, not {model_dir}"
    try:
        with quiet_peft(), warnings.catch_warnings():
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

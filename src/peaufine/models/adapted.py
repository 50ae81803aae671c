"""Models whose adapter cannot be folded into their weights (bottleneck adapters, soft prompts): saved as
base/ + adapter/ + README.md + adapted_model.json, and loaded back as the base with its adapter on."""

# A LoRA or (IA)3 update is linear and merges into W; a bottleneck adapter (a non-linear network between
# layers) or a learnt prompt does not, so the run's model/ keeps the two halves side by side.

from __future__ import annotations

import copy
import json
import os
import shutil
from pathlib import Path
from typing import TYPE_CHECKING, Any

from peaufine.atomic import publish_dir
from peaufine.errors import ModelError
from peaufine.models.adapters import peft_base, save_adapter
from peaufine.models.bottleneck import is_bottleneck_dir, load_bottleneck, save_bottleneck
from peaufine.models.folders import ADAPTED_MODEL, adapted_parts

if TYPE_CHECKING:
    import torch
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

BASE_FOLDER = "base"
ADAPTER_FOLDER = "adapter"
FORMAT_VERSION = 1

_README = """# An adapted model: a base model and a {kind} adapter that cannot be merged into it

A {what} is not a linear update of the base's weights, so it cannot be folded into them as LoRA or
(IA)3 can. This folder keeps the two halves side by side:

- `base/`: the base model, a plain Hugging Face folder (config.json, safetensors, tokenizer);
- `adapter/`: the {kind} adapter ({format});
- `adapted_model.json`: which folder is which.

There is deliberately no config.json at the top: plain transformers would otherwise load the bare base
in the adapted model's place, silently without the adapter.

peaufine loads the folder as one model wherever it takes a model (generate, eval, score, serve, and as
`model.source` of a later stage):

    peaufine generate {example} --prompt "..."

In Python:

{python}
"""

_PYTHON = {
    "peft": """    from transformers import AutoModelForCausalLM
    from peft import PeftModel

    base = AutoModelForCausalLM.from_pretrained("base")
    model = PeftModel.from_pretrained(base, "adapter")""",
    "bottleneck": """    from pathlib import Path
    from peaufine.models.build import load_pretrained

    model = load_pretrained(Path("path/to/this/folder"))  # the base with its adapter on""",
}


def _what(kind: str) -> str:
    return {
        "bottleneck": "bottleneck adapter (a small non-linear network after each sub-layer)",
        "prompt_tuning": "soft prompt (learnt vectors put before every input)",
    }.get(kind, f"{kind} adapter")


def unwrapped_base(model: torch.nn.Module) -> torch.nn.Module:
    """The transformers model under an adapter, with PEFT's trained copies of `modules_to_save` (a
    classifier's head) put in place of the wrappers that hold them: what base/ saves."""
    from peft.utils import ModulesToSaveWrapper

    base = peft_base(model)
    wrappers = [(n, m) for n, m in base.named_modules() if isinstance(m, ModulesToSaveWrapper)]
    if not wrappers:
        return base
    base = copy.deepcopy(base)
    for name, module in [(n, m) for n, m in base.named_modules() if isinstance(m, ModulesToSaveWrapper)]:
        parent_name, _, child = name.rpartition(".")
        parent = base.get_submodule(parent_name) if parent_name else base
        setattr(parent, child, module.modules_to_save[module.active_adapter])
    return base


def save_adapted(
    model: torch.nn.Module,
    tokenizer: PreTrainedTokenizerBase,
    kind: str,
    directory: Path,
    example: str = "RUN",
) -> None:
    """Write `model` (a base with an adapter of `kind` that cannot merge) as an adapted-model folder,
    atomically: a crash leaves the old folder or none."""
    directory = Path(directory)
    staging = directory.with_name(f".{directory.name}.tmp-{os.getpid()}")
    if staging.exists():
        shutil.rmtree(staging)
    staging.mkdir(parents=True)
    base = unwrapped_base(model)
    base.save_pretrained(staging / BASE_FOLDER, safe_serialization=True)
    tokenizer.save_pretrained(staging / BASE_FOLDER)
    if kind == "bottleneck":
        save_bottleneck(model, tokenizer, staging / ADAPTER_FOLDER)
        fmt, python = "peaufine's bottleneck format: bottleneck_config.json + safetensors", "bottleneck"
    else:
        save_adapter(model, tokenizer, staging / ADAPTER_FOLDER)
        fmt, python = "PEFT's format: adapter_config.json + adapter_model.safetensors", "peft"
    spec = {
        "format_version": FORMAT_VERSION,
        "base": BASE_FOLDER,
        "adapter": ADAPTER_FOLDER,
        "adapter_kind": kind,
        "base_architectures": list(getattr(base.config, "architectures", None) or []),
    }
    (staging / ADAPTED_MODEL).write_text(json.dumps(spec, indent=2) + "\n", encoding="utf-8")
    readme = _README.format(kind=kind, what=_what(kind), format=fmt, example=example, python=_PYTHON[python])
    (staging / "README.md").write_text(readme, encoding="utf-8")
    publish_dir(staging, directory)


def attach_adapter(
    base: PreTrainedModel, directory: Path, *, trainable: bool = False, key: str = "model.source"
) -> Any:
    """`base` with the adapter of the adapted-model folder `directory` on it (PEFT's or a bottleneck),
    frozen unless `trainable` (a later stage that continues training it)."""
    parts = adapted_parts(directory)
    if parts is None:
        raise ModelError(f"{key}: {directory} is not an adapted-model folder (no {ADAPTED_MODEL})")
    _, adapter, _ = parts
    if is_bottleneck_dir(adapter):
        model = load_bottleneck(base, adapter)
        if not trainable:
            model.requires_grad_(False)
        return model
    from peft import PeftModel

    try:
        return PeftModel.from_pretrained(base, adapter, is_trainable=trainable)
    except (OSError, ValueError, KeyError, RuntimeError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ModelError(f"{key}: cannot put the adapter of {directory} on its base: {first}") from None

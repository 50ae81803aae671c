"""Bottleneck adapter modules (Houlsby et al. 2019; Pfeiffer et al. 2020): small trainable networks where
each block's sub-layers write into the residual stream of a frozen model, and their own saved format."""

# No maintained library does this for transformers 5 (the `adapters` package pins transformers 4, PEFT has
# no bottleneck tuner), so it is done here, generically: the blocks and the modules that write into the
# residual stream are found from the module tree (no table of model names), and the adapters are forward
# hooks on those modules, owned by a wrapper that plays the part of PEFT's PeftModel.

from __future__ import annotations

import contextlib
import functools
import json
import os
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from peaufine.atomic import publish_dir
from peaufine.errors import ModelError
from peaufine.models.folders import safetensors_problem
from peaufine.recipe import AdapterBlock

if TYPE_CHECKING:
    import torch
    from transformers import PretrainedConfig, PreTrainedTokenizerBase

BOTTLENECK_CONFIG = "bottleneck_config.json"
BOTTLENECK_WEIGHTS = "adapter_model.safetensors"
FORMAT_VERSION = 1
# the down-projection's start: small (BERT's initializer_range), so the adapter's first updates are small
# too; the up-projection starts at zero, which alone makes the adapted model start equal to its base
DOWN_INIT_STD = 0.02
# prefix of a sequence classifier's head parameters in the saved weights, beside the adapters'
HEAD_PREFIX = "head."
_FIX = "use model.adapter.kind: lora (or ia3) for this model, which adapts linear layers wherever they are"


def _refuse(model: torch.nn.Module, reason: str) -> ModelError:
    return ModelError(
        f"model.adapter.kind: bottleneck cannot place adapters in {type(model).__name__}: {reason}; {_FIX}"
    )


def adapter_size(hidden_size: int, settings: AdapterBlock) -> int:
    """The adapter's inner width: `size` when set, else hidden / reduction_factor rounded, at least 1."""
    if settings.size is not None:
        return settings.size
    return max(1, round(hidden_size / settings.reduction_factor))


def adapters_per_layer(settings: AdapterBlock) -> int:
    """Houlsby: after the attention and after the MLP; Pfeiffer: after the MLP only."""
    return 2 if settings.placement == "houlsby" else 1


def bottleneck_parameter_count(config: PretrainedConfig, settings: AdapterBlock) -> int:
    """Trainable parameters of the adapters, by formula: per adapter hidden*size + size (down),
    size*hidden + hidden (up), and 2*hidden with the layer norm; times adapters per layer, times layers.
    A sequence classifier's head, which trains too, is not counted here."""
    hidden = config.hidden_size
    size = adapter_size(hidden, settings)
    per_adapter = hidden * size + size + size * hidden + hidden + (2 * hidden if settings.layer_norm else 0)
    return per_adapter * adapters_per_layer(settings) * config.num_hidden_layers


# -- where the sub-layers write into the residual stream ---------------------------------------------------
def _out_width(module: torch.nn.Module) -> int | None:
    """The output width of a Linear-like module (torch Linear, or transformers' transposed Conv1D)."""
    import torch
    from transformers.pytorch_utils import Conv1D

    if isinstance(module, torch.nn.Linear):
        return module.out_features
    if isinstance(module, Conv1D):
        return module.nf
    return None


def _block_list(model: torch.nn.Module) -> tuple[str, torch.nn.ModuleList]:
    """The dotted path and the ModuleList of the model's `num_hidden_layers` transformer blocks."""
    import torch

    count = getattr(getattr(model, "config", None), "num_hidden_layers", None)
    if not count:
        raise _refuse(model, "its config gives no num_hidden_layers")
    for path, module in model.named_modules():
        if isinstance(module, torch.nn.ModuleList) and len(module) == count:
            return path, module
    raise _refuse(model, f"it has no ModuleList of num_hidden_layers={count} blocks")


def _block_writers(model: torch.nn.Module, block: torch.nn.Module, hidden: int) -> list[str]:
    """Paths (inside `block`) of the modules where its sub-layers write into the residual stream.

    Each top-level child of the block is a sub-layer or a norm; the last Linear-like leaf of a sub-layer
    whose output is hidden wide is where it writes (Llama's o_proj and down_proj, GPT-2's c_proj, BERT's
    attention.output.dense and output.dense; BERT's intermediate.dense writes intermediate_size, so its
    child has none). Registration order is execution order in every transformers block of this shape.
    A matrix outside a Linear-like layer (an MoE router, fused expert tensors) means some of the block's
    computation is not a linear layer: the last one found might not be where the sub-layer writes.
    """
    for path, module in block.named_modules():
        if _out_width(module) is None:
            for name, param in module.named_parameters(recurse=False):
                if param.dim() >= 2:
                    where = f"{path}.{name}" if path else name
                    raise _refuse(
                        model,
                        f"its block holds the {tuple(param.shape)} tensor {where} of a "
                        f"{type(module).__name__}, not a linear layer (mixture-of-experts layers are not "
                        "supported)",
                    )
    writers = []
    for child_name, child in block.named_children():
        last = None
        for path, module in child.named_modules():
            if _out_width(module) == hidden:
                last = f"{child_name}.{path}" if path else child_name
        if last is not None:
            writers.append(last)
    if len(writers) != 2:
        found = ", ".join(writers) or "none"
        raise _refuse(
            model,
            f"each block must have two sub-layers writing into the residual stream (attention, then MLP); "
            f"its {type(block).__name__} has {len(writers)} ({found})",
        )
    return writers


def residual_writers(model: torch.nn.Module, placement: str = "houlsby") -> list[str]:
    """Dotted paths of the modules the adapters follow, block by block: the attention's and the MLP's
    output projections (houlsby), or the MLP's only (pfeiffer). A ModelError naming model.adapter.kind for
    a model whose blocks are not an attention and an MLP writing into the residual stream."""
    hidden = getattr(getattr(model, "config", None), "hidden_size", None)
    if not hidden:
        raise _refuse(model, "its config gives no hidden_size")
    list_path, blocks = _block_list(model)
    paths = []
    for index, block in enumerate(blocks):
        attention, mlp = _block_writers(model, block, hidden)
        chosen = [attention, mlp] if placement == "houlsby" else [mlp]
        paths += [f"{list_path}.{index}.{path}" for path in chosen]
    return paths


def classifier_head_names(model: torch.nn.Module) -> list[str]:
    """Names of a sequence classifier's head parameters (BERT's classifier, Llama's score): those outside
    its pretrained backbone (`base_model_prefix`), new at load, so they train beside the adapters.
    Empty for any other model: a causal LM's output head is pretrained and stays frozen."""
    if not type(model).__name__.endswith("ForSequenceClassification"):
        return []
    prefix = getattr(model, "base_model_prefix", "")
    if not prefix or not hasattr(model, prefix):
        raise _refuse(model, "its pretrained backbone cannot be told from its classification head")
    return [name for name, _ in model.named_parameters() if not name.startswith(prefix + ".")]


# -- the modules ----------------------------------------------------------------------------------------
@dataclass(frozen=True)
class BottleneckSettings:
    """What shapes the adapters (saved in bottleneck_config.json)."""

    size: int
    placement: str
    non_linearity: str
    layer_norm: bool


@functools.cache
def _module_classes() -> tuple[type, type]:
    """The two nn.Module classes, defined on first use so importing this module does not import torch."""
    import torch

    activations = {
        "relu": torch.nn.functional.relu,
        "gelu": torch.nn.functional.gelu,
        "swish": torch.nn.functional.silu,
        "tanh": torch.tanh,
    }

    class BottleneckAdapter(torch.nn.Module):
        """h -> h + up(act(down(LN(h)))), its up-projection zero at the start, so it starts as identity.

        It works in its own dtype (float32 beside a bf16 base, as PEFT keeps adapters) and gives back the
        writer's dtype; `active` off, it passes the writer's output through untouched.
        """

        def __init__(
            self, hidden: int, settings: BottleneckSettings, device: Any = None, dtype: Any = None
        ) -> None:
            super().__init__()
            self.non_linearity = settings.non_linearity
            self.norm = (
                torch.nn.LayerNorm(hidden, device=device, dtype=dtype) if settings.layer_norm else None
            )
            self.down = torch.nn.Linear(hidden, settings.size, device=device, dtype=dtype)
            self.up = torch.nn.Linear(settings.size, hidden, device=device, dtype=dtype)
            torch.nn.init.normal_(self.down.weight, std=DOWN_INIT_STD)
            torch.nn.init.zeros_(self.down.bias)
            torch.nn.init.zeros_(self.up.weight)
            torch.nn.init.zeros_(self.up.bias)
            self.active = True

        def forward(self, hidden: torch.Tensor) -> torch.Tensor:
            x = hidden.to(self.down.weight.dtype)
            if self.norm is not None:
                x = self.norm(x)
            delta = self.up(activations[self.non_linearity](self.down(x)))
            return hidden + delta.to(hidden.dtype)

        def hook(self, module: torch.nn.Module, args: Any, output: torch.Tensor) -> torch.Tensor | None:
            # a bound method (not a closure), so a deep copy of the model hooks the copy's adapters
            return self(output) if self.active else None

    class BottleneckModel(torch.nn.Module):
        """A transformers model with bottleneck adapters, as PEFT's PeftModel is one with LoRA: it holds
        the base (`get_base_model()`; any attribute it lacks is the base's: config, generate, ...), owns
        the adapters (its parameters and state_dict include them; the base's save_pretrained does not),
        and calling it calls the base, whose writer modules run the adapters through forward hooks."""

        def __init__(
            self,
            base: torch.nn.Module,
            settings: BottleneckSettings,
            writers: list[str],
            head: list[str],
        ) -> None:
            super().__init__()
            self.base = base
            self.settings = settings
            self.writer_paths = list(writers)
            self.head_names = list(head)
            hidden = base.config.hidden_size
            modules = dict(base.named_modules())
            adapters = []
            for path in writers:
                weight = modules[path].weight
                # float32 beside a half-precision base (autocast brings it down where it runs)
                dtype = weight.dtype if weight.dtype.itemsize >= 4 else torch.float32
                adapters.append(BottleneckAdapter(hidden, settings, device=weight.device, dtype=dtype))
            self.adapters = torch.nn.ModuleList(adapters)
            for path, adapter in zip(writers, self.adapters, strict=True):
                modules[path].register_forward_hook(adapter.hook)

        def __getattr__(self, name: str) -> Any:
            try:
                return super().__getattr__(name)
            except AttributeError:
                if name == "base":
                    raise
                return getattr(self.base, name)

        def forward(self, *args: Any, **kwargs: Any) -> Any:
            return self.base(*args, **kwargs)

        def get_base_model(self) -> torch.nn.Module:
            """The transformers model (its writer modules still hooked, as PEFT's base keeps its LoRA
            layers): use `disable_adapter()` for the base's own outputs."""
            return self.base

        @contextlib.contextmanager
        def disable_adapter(self) -> Iterator[None]:
            """Every adapter passes its writer's output through: the model is its base (DPO's reference)."""
            before = [adapter.active for adapter in self.adapters]
            for adapter in self.adapters:
                adapter.active = False
            try:
                yield
            finally:
                for adapter, active in zip(self.adapters, before, strict=True):
                    adapter.active = active

        def save_pretrained(self, directory: str | Path, **_: Any) -> None:
            """As PeftModel does: the adapter only (save_bottleneck), never the base under its name."""
            save_bottleneck(self, None, Path(directory))

    for cls in (BottleneckAdapter, BottleneckModel):
        # reachable by name through the module's __getattr__, so a pickle of the model finds its classes
        cls.__module__ = __name__
        cls.__qualname__ = cls.__name__
    return BottleneckAdapter, BottleneckModel


def __getattr__(name: str) -> type:
    """`BottleneckAdapter` and `BottleneckModel`, built (and torch imported) on first access."""
    names = ("BottleneckAdapter", "BottleneckModel")
    if name not in names:  # importlib asks for __path__ and the like: no torch for those
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return _module_classes()[names.index(name)]


def is_bottleneck_model(model: Any) -> bool:
    """Whether `model` is a BottleneckModel (without importing torch when nothing built one)."""
    return _module_classes.cache_info().currsize > 0 and isinstance(model, _module_classes()[1])


def _refuse_adapted(model: torch.nn.Module) -> None:
    """A wrapper, or the base of one, gets no second set of adapters: they would run on top of the first."""
    adapter_class = _module_classes()[0]
    hooked = any(
        isinstance(getattr(hook, "__self__", None), adapter_class)
        for module in model.modules()
        for hook in module._forward_hooks.values()
    )
    if hooked:
        raise ModelError(
            "model.adapter.kind: bottleneck: this model already has bottleneck adapters; start from its "
            "base model"
        )


def _wrap(model: torch.nn.Module, settings: BottleneckSettings) -> Any:
    _refuse_adapted(model)
    writers = residual_writers(model, settings.placement)
    head = classifier_head_names(model)
    for name, param in model.named_parameters():
        param.requires_grad_(name in head)
    return _module_classes()[1](model, settings, writers, head)


def apply_bottleneck(model: torch.nn.Module, adapter: AdapterBlock) -> Any:
    """Wrap `model` (a transformers model, on any device, the meta device included) in a BottleneckModel
    with fresh adapters: down-projections drawn from torch's RNG (the caller seeds it), up-projections
    zero. Every base parameter is frozen except a sequence classifier's new head."""
    hidden = getattr(getattr(model, "config", None), "hidden_size", None)
    if not hidden:
        raise _refuse(model, "its config gives no hidden_size")
    settings = BottleneckSettings(
        size=adapter_size(hidden, adapter),
        placement=adapter.placement,
        non_linearity=adapter.non_linearity,
        layer_norm=adapter.layer_norm,
    )
    return _wrap(model, settings)


# -- saving and loading ---------------------------------------------------------------------------------
def is_bottleneck_dir(path: Path) -> bool:
    """Whether `path` is a folder save_bottleneck wrote (it holds bottleneck_config.json)."""
    return (Path(path) / BOTTLENECK_CONFIG).is_file()


def save_bottleneck(model: Any, tokenizer: PreTrainedTokenizerBase | None, directory: Path) -> None:
    """Write `directory`: adapter_model.safetensors (the adapters, and a sequence classifier's head), and
    bottleneck_config.json (their settings, where they sit, what base they fit), with the tokenizer when
    given; atomically, so a crash leaves the old folder or the new, never a mix."""
    from safetensors.torch import save_file

    if not is_bottleneck_model(model):
        raise ModelError("save_bottleneck: this model has no bottleneck adapters (model.adapter.kind)")
    base = model.get_base_model()
    tensors = {
        f"adapters.{name}": tensor.detach().cpu().contiguous()
        for name, tensor in model.adapters.state_dict().items()
    }
    params = dict(base.named_parameters())
    for name in model.head_names:
        tensors[HEAD_PREFIX + name] = params[name].detach().cpu().contiguous()
    config = {
        "peaufine_format": FORMAT_VERSION,
        "kind": "bottleneck",
        "size": model.settings.size,
        "placement": model.settings.placement,
        "non_linearity": model.settings.non_linearity,
        "layer_norm": model.settings.layer_norm,
        "writers": model.writer_paths,
        "head": model.head_names,
        "hidden_size": base.config.hidden_size,
        "num_hidden_layers": base.config.num_hidden_layers,
        "base_model_class": type(base).__name__,
    }
    directory = Path(directory)
    directory.parent.mkdir(parents=True, exist_ok=True)
    staging = directory.with_name(f".{directory.name}.tmp-{os.getpid()}")
    shutil.rmtree(staging, ignore_errors=True)  # a crashed save's leftover of this process id
    staging.mkdir()
    try:
        save_file(tensors, str(staging / BOTTLENECK_WEIGHTS), metadata={"format": "pt"})
        (staging / BOTTLENECK_CONFIG).write_text(json.dumps(config, indent=2) + "\n", encoding="utf-8")
        if tokenizer is not None:
            tokenizer.save_pretrained(staging)
        publish_dir(staging, directory)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _read_config(directory: Path) -> dict[str, Any]:
    path = directory / BOTTLENECK_CONFIG
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ModelError(
            f"{directory} holds no {BOTTLENECK_CONFIG}: not a bottleneck adapter folder"
        ) from None
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ModelError(f"{path} is not valid JSON ({exc}); save the adapter again") from None
    keys = ("peaufine_format", "size", "placement", "non_linearity", "layer_norm", "writers", "hidden_size")
    missing = [key for key in keys if not isinstance(config, dict) or key not in config]
    if missing:
        raise ModelError(f"{path} misses {', '.join(missing)}; save the adapter again")
    if config["peaufine_format"] != FORMAT_VERSION:
        raise ModelError(
            f"{path} is format {config['peaufine_format']}; this peaufine reads format {FORMAT_VERSION}"
        )
    return config


def load_bottleneck(base_model: torch.nn.Module, directory: Path) -> Any:
    """`base_model` wrapped with the adapters saved in `directory` (and its classifier head, if saved).

    The folder must fit the base: the same hidden size, layer count and writer modules, else a ModelError
    naming the folder. The weights are read from safetensors only (checked first), never a pickle.
    """
    from safetensors.torch import load_file

    directory = Path(directory)
    _refuse_adapted(base_model)
    config = _read_config(directory)
    fits = f"{directory} was saved for a {config.get('base_model_class', 'model')}"
    base_config = getattr(base_model, "config", None)
    hidden = getattr(base_config, "hidden_size", None)
    if hidden != config["hidden_size"]:
        raise ModelError(f"{fits} of hidden size {config['hidden_size']}, not {hidden}; load it on its base")
    layers = config.get("num_hidden_layers")
    if layers is not None and getattr(base_config, "num_hidden_layers", None) != layers:
        raise ModelError(
            f"{fits} of {layers} layers, not {base_config.num_hidden_layers}; load it on its base"
        )
    settings = BottleneckSettings(
        size=int(config["size"]),
        placement=str(config["placement"]),
        non_linearity=str(config["non_linearity"]),
        layer_norm=bool(config["layer_norm"]),
    )
    writers = residual_writers(base_model, settings.placement)
    if writers != list(config["writers"]):
        raise ModelError(
            f"{fits} whose adapters follow {len(config['writers'])} modules ({config['writers'][0]}, ...), "
            f"which this {type(base_model).__name__} does not have in that order; load it on its base"
        )
    weights = directory / BOTTLENECK_WEIGHTS
    if not weights.is_file():
        raise ModelError(f"{directory} misses {BOTTLENECK_WEIGHTS}; save the adapter again")
    problem = safetensors_problem(weights)
    if problem:
        raise ModelError(f"{weights} is damaged: {problem}; save the adapter again")
    tensors = load_file(str(weights))
    _check_tensors(base_model, config, settings, tensors, fits)
    model = _wrap(base_model, settings)
    adapter_state = {
        name[len("adapters.") :]: tensor for name, tensor in tensors.items() if name.startswith("adapters.")
    }
    model.adapters.load_state_dict(adapter_state, strict=True)
    import torch

    params = dict(base_model.named_parameters())
    with torch.no_grad():
        for name in model.head_names:
            params[name].copy_(tensors[HEAD_PREFIX + name])
    return model


def _check_tensors(
    base_model: torch.nn.Module,
    config: dict[str, Any],
    settings: BottleneckSettings,
    tensors: dict[str, torch.Tensor],
    fits: str,
) -> None:
    """Every tensor the adapters and the head need, of its shape, and nothing else: checked before the
    base is touched (hooked, frozen), so a folder that does not fit leaves the base as it was."""
    hidden, size = int(config["hidden_size"]), settings.size
    one = {
        "down.weight": (size, hidden),
        "down.bias": (size,),
        "up.weight": (hidden, size),
        "up.bias": (hidden,),
    }
    if settings.layer_norm:
        one |= {"norm.weight": (hidden,), "norm.bias": (hidden,)}
    expected = {
        f"adapters.{i}.{name}": shape for i in range(len(config["writers"])) for name, shape in one.items()
    }
    params = dict(base_model.named_parameters())
    expected |= {HEAD_PREFIX + name: tuple(params[name].shape) for name in classifier_head_names(base_model)}
    found = {name: tuple(tensor.shape) for name, tensor in tensors.items()}
    if found != expected:
        wrong = sorted(set(found) ^ set(expected)) or sorted(
            name for name in found if found[name] != expected[name]
        )
        what = ", ".join(
            f"{name} {found.get(name, 'missing')} (needs {expected.get(name, 'none')})" for name in wrong[:3]
        )
        raise ModelError(
            f"{fits}, but its {BOTTLENECK_WEIGHTS} does not fit this one: {what}; load it on its base, "
            "or save the adapter again"
        )

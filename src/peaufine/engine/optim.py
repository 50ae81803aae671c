"""AdamW with weight decay on matrices only, and the learning-rate schedules."""

# Decay shrinks weights toward zero; on biases, norm gains and embeddings that is a bias, not a
# regulariser, so by default they are excluded (nanoGPT excludes biases and norms but decays its
# embeddings). Each exclusion is configurable.

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

from peaufine.errors import RecipeError, TrainingError

if TYPE_CHECKING:
    import torch

    from peaufine.recipe import TrainBlock


@dataclass(frozen=True)
class DecayGroups:
    decay: list[str]
    no_decay: list[str]


def _is_norm(module: torch.nn.Module) -> bool:
    import torch

    norm_types = (torch.nn.LayerNorm, torch.nn.GroupNorm, torch.nn.BatchNorm1d)
    return isinstance(module, norm_types) or "norm" in type(module).__name__.lower()


def decay_groups(model: torch.nn.Module, train: TrainBlock) -> DecayGroups:
    """Split trainable parameter names into decayed and not decayed, by the module that owns them."""
    import torch

    decay: list[str] = []
    no_decay: list[str] = []
    seen: set[int] = set()
    for module_name, module in model.named_modules():
        for param_name, param in module.named_parameters(recurse=False):
            if not param.requires_grad or id(param) in seen:
                continue
            seen.add(id(param))  # a tied weight belongs to the first module that owns it
            name = f"{module_name}.{param_name}" if module_name else param_name
            if isinstance(module, torch.nn.Embedding):
                wanted = train.decay_embeddings
            elif _is_norm(module):
                wanted = train.decay_norms
            elif param.ndim < 2:
                wanted = train.decay_biases
            else:
                wanted = True
            (decay if wanted else no_decay).append(name)
    return DecayGroups(decay=decay, no_decay=no_decay)


def build_optimizer(model: torch.nn.Module, train: TrainBlock) -> torch.optim.AdamW:
    import torch

    groups = decay_groups(model, train)
    params = dict(model.named_parameters(remove_duplicate=True))
    param_groups = [
        {"params": [params[n] for n in groups.decay], "weight_decay": train.weight_decay},
        {"params": [params[n] for n in groups.no_decay], "weight_decay": 0.0},
    ]
    param_groups = [g for g in param_groups if g["params"]]
    if not param_groups:
        raise TrainingError("the model has no trainable parameters")
    return torch.optim.AdamW(
        param_groups,
        lr=train.lr,
        betas=train.betas,
        eps=train.eps,
        **adamw_implementation(param_groups, train.fused_adamw),
    )


def adamw_implementation(param_groups: list[dict], fused_adamw: str) -> dict[str, bool | None]:
    """AdamW's kernel for train.fused_adamw: one fused kernel for all parameters, or PyTorch's default
    (foreach on CUDA, a loop over parameters on CPU).

    auto: fused when every parameter is on CUDA; on: fused wherever PyTorch has the kernel (CUDA, CPU,
    MPS, ... in torch 2.13), else a RecipeError; off: the default.
    """
    try:
        from torch.optim.optimizer import _get_fused_kernels_supported_devices

        supported = set(_get_fused_kernels_supported_devices())
    except ImportError:  # a private helper: if it moves, assume the kernels of torch 2.x
        supported = {"cuda", "cpu", "mps", "xpu"}
    devices = {p.device.type for g in param_groups for p in g["params"]}
    if fused_adamw == "off":
        return {"fused": False}
    if fused_adamw == "auto":
        return {"fused": True} if devices == {"cuda"} else {}
    unsupported = devices - supported
    if unsupported:
        raise RecipeError(
            f"train.fused_adamw: on, but this PyTorch has no fused AdamW kernel for "
            f"{', '.join(sorted(unsupported))}; set train.fused_adamw: auto or off"
        )
    return {"fused": True}


def lr_at(step: int, train: TrainBlock) -> float:
    """The learning rate for optimiser step `step` (0-based).

    Linear warmup from lr/warmup to lr over `warmup_steps`, then constant, linear or cosine decay
    to the floor `min_lr` at `max_steps`.
    """
    peak, floor = train.lr, train.floor_lr
    if step < train.warmup_steps:
        return peak * (step + 1) / train.warmup_steps
    if train.schedule == "constant":
        return peak
    decay_steps = max(1, train.max_steps - train.warmup_steps)
    progress = min(1.0, (step - train.warmup_steps) / decay_steps)
    if train.schedule == "linear":
        return peak - (peak - floor) * progress
    return floor + 0.5 * (peak - floor) * (1.0 + math.cos(math.pi * progress))


def build_scheduler(optimizer: torch.optim.Optimizer, train: TrainBlock) -> torch.optim.lr_scheduler.LambdaLR:
    import torch

    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: lr_at(step, train) / train.lr)

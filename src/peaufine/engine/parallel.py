"""How the trained model is spread over processes (one copy, DDP replicas or FSDP2 shards), and the
full, unsharded weights and optimiser state that keep checkpoints independent of the world size."""

# Under FSDP the stage's own model (the *host*) is not sharded: a replica that shares its tensors is,
# and the host's parameters are emptied while training runs. The host is filled with the full weights
# for a checkpoint (on rank 0) and for good when fit() ends (on every rank), so a stage's evaluation,
# generation and saving after training see a plain model whatever the strategy.

from __future__ import annotations

import contextlib
import copy
import itertools
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from peaufine.errors import RecipeError

if TYPE_CHECKING:
    import torch

    from peaufine.engine.runtime import Runtime
    from peaufine.recipe import TrainBlock


@dataclass
class Placement:
    """The modules one fit() trains through; `strategy` is "single", "ddp" or "fsdp"."""

    host: torch.nn.Module  # the stage's model: after fit() it holds the trained weights on every rank
    trained: torch.nn.Module  # whose parameters the optimiser steps: the host, or its FSDP replica
    forward: torch.nn.Module  # what the loss is computed through: DDP wrapper, replica, compiled
    strategy: str
    ddp: Any = None
    # FSDP: each host parameter's name -> shape, dtype, device
    layout: dict[str, tuple[Any, Any, Any]] = field(default_factory=dict)

    @property
    def sharded(self) -> bool:
        return self.strategy == "fsdp"

    def gradient_sync(self, sync: bool) -> contextlib.AbstractContextManager[Any]:
        """DDP: skip the all-reduce on all but the last micro-batch. FSDP reduce-scatters after every
        micro-batch: holding unsharded gradients until the last one would cost the memory FSDP saves."""
        if self.ddp is not None and not sync:
            return self.ddp.no_sync()
        return contextlib.nullcontext()

    # -- full state, for checkpoints ------------------------------------------------------------
    def fill_host(self, everywhere: bool) -> None:
        """FSDP: gather the full weights into the host, on every rank or (on the CPU) on rank 0 only.
        Every rank must call it: it is a collective. A no-op for the other strategies."""
        if not self.sharded:
            return
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

        full = get_model_state_dict(
            self.trained, options=StateDictOptions(full_state_dict=True, cpu_offload=not everywhere)
        )
        if not full:  # the ranks other than 0, with cpu_offload
            return
        for name, param in self.host.named_parameters():
            tensor = full[name].to(self.layout[name][2]) if everywhere else full[name]
            if tensor.untyped_storage().nbytes() != tensor.numel() * tensor.element_size():
                tensor = tensor.clone()  # a view into a gathered buffer: safetensors refuses tied views
            # rebinding, never an in-place copy: the replica's shards may still be views of old storage
            param.data = tensor

    def empty_host(self) -> None:
        """FSDP: drop the host's copy of the weights while the shards train (no-op otherwise)."""
        if not self.sharded:
            return
        import torch

        for name, param in self.host.named_parameters():
            _, dtype, device = self.layout[name]
            param.data = torch.empty(0, dtype=dtype, device=device)

    def ready_host_for_loading(self) -> None:
        """FSDP: give the emptied host parameters their shapes back, so a checkpoint can be loaded."""
        if not self.sharded:
            return
        import torch

        for name, param in self.host.named_parameters():
            shape, dtype, device = self.layout[name]
            param.data = torch.empty(shape, dtype=dtype, device=device)

    def push_host(self) -> None:
        """FSDP: shard the host's (just loaded) full weights into the replica, on every rank."""
        if not self.sharded:
            return
        from torch.distributed.checkpoint.state_dict import StateDictOptions, set_model_state_dict

        set_model_state_dict(
            self.trained, self.host.state_dict(), options=StateDictOptions(full_state_dict=True)
        )

    def optimizer_state(self, optimizer: torch.optim.Optimizer) -> dict[str, Any]:
        """The full optimiser state keyed by parameter name, on rank 0 ({} elsewhere); a collective."""
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_optimizer_state_dict

        return get_optimizer_state_dict(
            self.trained, optimizer, options=StateDictOptions(full_state_dict=True, cpu_offload=True)
        )

    def load_optimizer_state(self, optimizer: torch.optim.Optimizer, saved: dict[str, Any]) -> None:
        """Load a full optimiser state (saved by any world size and strategy) on every rank."""
        from torch.distributed.checkpoint.state_dict import StateDictOptions, set_optimizer_state_dict

        if any(isinstance(key, int) for key in saved.get("state", {})) or any(
            isinstance(p, int) for g in saved.get("param_groups", []) for p in g["params"]
        ):
            saved = _keyed_by_name(saved, optimizer, self.trained)
        set_optimizer_state_dict(
            self.trained, optimizer, saved, options=StateDictOptions(full_state_dict=True)
        )


def _keyed_by_name(saved: dict[str, Any], optimizer: Any, model: Any) -> dict[str, Any]:
    """An optimiser state dict keyed by position (torch's own format) re-keyed by parameter name."""
    names = {id(p): n for n, p in model.named_parameters()}
    order = [names[id(p)] for group in optimizer.param_groups for p in group["params"]]
    return {
        "state": {order[i]: v for i, v in saved["state"].items()},
        "param_groups": [{**g, "params": [order[i] for i in g["params"]]} for g in saved["param_groups"]],
    }


def check_strategy(train: TrainBlock, runtime: Runtime) -> None:
    """Refuse what FSDP cannot do here, naming the recipe key and the fix."""
    if not runtime.distributed or train.distributed != "fsdp":
        return
    if runtime.precision == "fp16":
        raise RecipeError(
            "train.precision: fp16 with train.distributed: fsdp is not supported (its loss scaler "
            "would decide to skip a step on each rank alone); use bf16, or train.distributed: ddp"
        )


def sharded_blocks(model: torch.nn.Module) -> list[torch.nn.Module]:
    """The repeated blocks to shard one by one: the classes a Hugging Face model names in
    `_no_split_modules` (its decoder or encoder layers), wherever they sit (PEFT, a value head)."""
    names: set[str] = set()
    for module in model.modules():
        names.update(getattr(module, "_no_split_modules", None) or [])
    return [m for m in model.modules() if type(m).__name__ in names]


def fsdp_replica(model: torch.nn.Module, train: TrainBlock, runtime: Runtime) -> torch.nn.Module:
    """A copy of `model` that shares its tensors, fully sharded: each block, then the rest (root)."""
    import torch
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import CPUOffloadPolicy, MixedPrecisionPolicy, fully_shard

    options: dict[str, Any] = {"mesh": init_device_mesh(runtime.device.type, (runtime.world_size,))}
    if runtime.device.type == "cuda" and runtime.autocast_dtype == torch.bfloat16:
        # compute in bf16, but add gradients across processes in fp32
        options["mp_policy"] = MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32)
    if train.fsdp_cpu_offload:
        options["offload_policy"] = CPUOffloadPolicy(pin_memory=runtime.device.type == "cuda")
    import torch.distributed as dist

    tensors = list(itertools.chain(model.parameters(), model.buffers()))
    with torch.no_grad():
        for tensor in tensors:
            # every rank shards rank 0's weights, as DDP starts every replica from them: a part
            # initialised at random (a LoRA adapter's A) may differ between processes
            dist.broadcast(tensor, src=0)
    # the memo makes the copy share every parameter and buffer: no second copy of the weights
    memo = {id(t): t for t in tensors}
    replica = copy.deepcopy(model, memo)
    for block in sharded_blocks(replica):
        fully_shard(block, **options)
    fully_shard(replica, **options)
    return replica


def place(model: torch.nn.Module, train: TrainBlock, runtime: Runtime) -> Placement:
    """Wrap `model` for this run's processes: as is, in DDP, or sharded with FSDP2 (train.distributed)."""
    import torch

    check_strategy(train, runtime)
    if not runtime.distributed:
        placement = Placement(model, model, model, "single")
    elif train.distributed == "ddp":
        from torch.nn.parallel import DistributedDataParallel

        ddp = DistributedDataParallel(model)
        placement = Placement(model, model, ddp, "ddp", ddp=ddp)
    else:
        layout = {n: (p.shape, p.dtype, p.device) for n, p in model.named_parameters()}
        replica = fsdp_replica(model, train, runtime)
        placement = Placement(model, replica, replica, "fsdp", layout=layout)
        placement.empty_host()
    if train.compile:
        placement.forward = torch.compile(placement.forward)
    return placement


def lockstep(module: torch.nn.Module) -> bool:
    """Whether every rank must run the same number of forward passes (FSDP gathers in each one)."""
    from torch.distributed.fsdp import FSDPModule

    return isinstance(module, FSDPModule)


def unwrap(model: torch.nn.Module) -> torch.nn.Module:
    """The module under DistributedDataParallel and torch.compile (a PEFT model is kept: it is the model):
    the one way to reach the model the engine was given."""
    from torch.nn.parallel import DistributedDataParallel

    while True:
        if isinstance(model, DistributedDataParallel):
            model = model.module
        elif hasattr(model, "_orig_mod"):  # torch.compile's OptimizedModule
            model = model._orig_mod
        else:
            return model

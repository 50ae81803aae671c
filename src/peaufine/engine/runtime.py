"""Where the run executes: device, process rank and world size, and numeric precision."""

# Device and process discovery go through accelerate (CPU, CUDA, MPS; torchrun / accelerate launch
# environments), so the engine itself never branches on how it was started.

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from peaufine.errors import RecipeError

if TYPE_CHECKING:
    import torch

    from peaufine.recipe import TrainBlock


@dataclass
class Runtime:
    device: torch.device
    rank: int
    world_size: int
    autocast_dtype: torch.dtype | None
    precision: str

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    def autocast(self) -> contextlib.AbstractContextManager[Any]:
        import torch

        if self.autocast_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device.type, dtype=self.autocast_dtype)

    def sum_across(self, tensor: torch.Tensor) -> torch.Tensor:
        """Sum a tensor over processes (a no-op on one process)."""
        if self.distributed:
            import torch.distributed as dist

            dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
        return tensor

    def gather_objects(self, obj: Any) -> list[Any]:
        """Every process's `obj` (picklable), by rank, on every process."""
        if not self.distributed:
            return [obj]
        import torch.distributed as dist

        gathered: list[Any] = [None] * self.world_size
        dist.all_gather_object(gathered, obj)
        return gathered

    def barrier(self) -> None:
        if self.distributed:
            import torch.distributed as dist

            dist.barrier()


def _resolve_precision(precision: str, device: torch.device) -> tuple[str, torch.dtype | None]:
    import torch

    if precision == "auto":
        if device.type == "cuda" and torch.cuda.is_bf16_supported():
            return "bf16", torch.bfloat16
        return "fp32", None
    if precision == "fp32":
        return "fp32", None
    if precision == "fp16":
        if device.type != "cuda":
            raise RecipeError(
                f"train.precision: fp16 needs a CUDA device (this run is on {device.type}); use bf16 or fp32"
            )
        return "fp16", torch.float16
    return "bf16", torch.bfloat16


def make_runtime(train: TrainBlock) -> Runtime:
    """Discover the process group (started by torchrun / accelerate launch, if any) and the device."""
    import torch
    from accelerate import PartialState

    if train.device == "cuda" and not torch.cuda.is_available():
        raise RecipeError("train.device: cuda was asked for but no CUDA device is visible")
    if train.device == "mps" and not torch.backends.mps.is_available():
        raise RecipeError("train.device: mps was asked for but MPS is not available")
    state = PartialState(cpu=train.device == "cpu")
    device = state.device
    precision, dtype = _resolve_precision(train.precision, device)
    return Runtime(
        device=device,
        rank=state.process_index,
        world_size=state.num_processes,
        autocast_dtype=dtype,
        precision=precision,
    )

"""Atomic checkpoints and exact resume: weights, optimiser, scheduler, RNG states and data position."""

# A checkpoint is written into a temporary folder, flushed to disk, renamed into place, and only then
# named by the `latest` (or `best`) pointer file, itself replaced atomically. A kill at any instant leaves
# the pointer naming a complete checkpoint. What it holds does not depend on the number of processes:
# full weights, the full optimiser state keyed by parameter name, and the data position in examples, so
# a run checkpointed by N processes resumes with M.

from __future__ import annotations

import json
import random
import shutil
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from peaufine.atomic import crash_point, publish_dir, write_text_atomic
from peaufine.rundir import owned_name, remove_stale

if TYPE_CHECKING:
    import torch

WEIGHTS = "model.safetensors"
OPTIMIZER = "optimizer.pt"
RNG = "rng.pt"
STATE = "trainer_state.json"


class DamagedCheckpoint(Exception):
    """A checkpoint folder with a file that cannot be read whole; the message says which and why."""


def damage(exc: Exception) -> str:
    """What a reader of a damaged file raised, in one line for a message."""
    return f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"


@dataclass
class TrainerState:
    """Everything about the loop's progress that is not a tensor."""

    step: int = 0
    examples_seen: int = 0  # the data position: the next batch starts here (see global_batch)
    tokens_seen: int = 0
    elapsed: float = 0.0
    best_val_loss: float | None = None
    best_step: int | None = None
    evals_without_improvement: int = 0
    stopped_early: bool = False  # a resume of an early-stopped run runs no step more
    scheduler: dict[str, Any] = field(default_factory=dict)
    # the log window open at the checkpoint (see Window.partial) and the objective's tally over it
    # (MetricTally.partial), summed over processes: a resume logs the row that spans it in full
    window: dict[str, Any] | None = None
    tally: dict[str, list[float]] = field(default_factory=dict)
    python_rng: Any = None
    numpy_rng: Any = None


def torch_rng_state() -> dict[str, Any]:
    """This process's torch (and CUDA) generator states: what a checkpoint keeps for each rank."""
    import torch

    tensors = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        tensors["cuda"] = torch.stack(torch.cuda.get_rng_state_all())
    return tensors


def _capture_rng(ranks: list[dict[str, Any]] | None = None) -> tuple[dict[str, Any], Any, Any]:
    """Rank 0's states under "torch"/"cuda", the other ranks' (when given) under "other_ranks"."""
    tensors = dict(ranks[0]) if ranks else torch_rng_state()
    if ranks and len(ranks) > 1:
        tensors["other_ranks"] = list(ranks[1:])
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    numpy_state = [kind, keys.tolist(), pos, has_gauss, cached]
    return tensors, random.getstate(), numpy_state


def _restore_rng(tensors: dict[str, Any], python_state: Any, numpy_state: Any, rank: int = 0) -> None:
    """Restore this rank's saved generators. A rank the checkpoint has none for (the run has more
    processes now) keeps the state it was seeded with; Python's and NumPy's are rank 0's everywhere."""
    import torch

    if rank > 0:
        others = tensors.get("other_ranks") or []
        tensors = others[rank - 1] if rank - 1 < len(others) else {}
    if "torch" in tensors:
        torch.set_rng_state(tensors["torch"])
    if "cuda" in tensors and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(list(tensors["cuda"]))
    if python_state is not None:
        version, internal, gauss = python_state
        random.setstate((version, tuple(internal), gauss))
    if numpy_state is not None:
        kind, keys, pos, has_gauss, cached = numpy_state
        np.random.set_state((kind, np.asarray(keys, dtype=np.uint32), pos, has_gauss, cached))


class CheckpointStore:
    """The `checkpoints/` folder of a run: numbered full checkpoints and best-weights snapshots."""

    def __init__(self, directory: Path, keep: int = 2) -> None:
        self.directory = Path(directory)
        self.keep = keep

    def _pointer(self, name: str) -> Path | None:
        pointer = self.directory / name
        if not pointer.exists():
            return None
        target = self.directory / pointer.read_text(encoding="utf-8").strip()
        return target if target.is_dir() else None

    def latest(self) -> Path | None:
        return self._pointer("latest")

    def best(self) -> Path | None:
        return self._pointer("best")

    def _staging(self, name: str) -> Path:
        staging = self.directory / owned_name(f".tmp-{name}")
        if staging.exists():
            shutil.rmtree(staging)
        staging.mkdir(parents=True)
        return staging

    def save(
        self,
        model: torch.nn.Module,
        optimizer_state: dict[str, Any],
        state: TrainerState,
        rank_rng: list[dict[str, Any]] | None = None,
    ) -> Path:
        """Write a checkpoint of the full `model`, the full `optimizer_state` (see
        Placement.optimizer_state) and `state`, with each rank's generator states (`rank_rng`, by
        rank; default: this process's)."""
        import torch
        from safetensors.torch import save_model

        name = f"step-{state.step:08d}"
        staging = self._staging(name)
        save_model(model, str(staging / WEIGHTS))
        torch.save(optimizer_state, staging / OPTIMIZER)
        crash_point("checkpoint-write", state.step)
        rng_tensors, state.python_rng, state.numpy_rng = _capture_rng(rank_rng)
        torch.save(rng_tensors, staging / RNG)
        (staging / STATE).write_text(json.dumps(asdict(state), indent=1), encoding="utf-8")
        final = self.directory / name
        publish_dir(staging, final)
        write_text_atomic(self.directory / "latest", name)
        self._prune("step-", keep=self.keep, protect=final)
        return final

    def save_best(self, model: torch.nn.Module, step: int, val_loss: float) -> Path:
        from safetensors.torch import save_model

        name = f"best-{step:08d}"
        staging = self._staging(name)
        save_model(model, str(staging / WEIGHTS))
        info = {"step": step, "val_loss": val_loss}
        (staging / "best.json").write_text(json.dumps(info), encoding="utf-8")
        final = self.directory / name
        publish_dir(staging, final)
        write_text_atomic(self.directory / "best", name)
        self._prune("best-", keep=1, protect=final)
        return final

    def _prune(self, prefix: str, keep: int, protect: Path) -> None:
        found = sorted(p for p in self.directory.glob(f"{prefix}*") if p.is_dir())
        for old in found[:-keep]:
            if old != protect:
                shutil.rmtree(old, ignore_errors=True)

    def remove_stale(self) -> list[Path]:
        """Remove the partial checkpoints that processes of this host killed while writing left."""
        return remove_stale(self.directory, r"\.tmp-(?:step|best)-\d+") if self.directory.is_dir() else []

    def checkpoints(self) -> list[Path]:
        """The numbered checkpoints, newest first (a folder named step-N is complete once it exists:
        it is renamed into place whole, see `save`)."""
        return sorted((p for p in self.directory.glob("step-*") if p.is_dir()), reverse=True)

    def read(self, checkpoint: Path) -> tuple[TrainerState, dict[str, Any]]:
        """The trainer state and the optimiser state of `checkpoint`, every file of it read or checked
        whole before any model is touched; a file that is not (truncated, say) raises
        DamagedCheckpoint."""
        import torch
        from safetensors import safe_open

        try:
            state = TrainerState(**json.loads((checkpoint / STATE).read_text(encoding="utf-8")))
            torch.load(checkpoint / RNG, weights_only=True)
            optimizer_state = torch.load(checkpoint / OPTIMIZER, weights_only=True)
            # the header's offsets must cover the file exactly: a truncated file fails here
            with safe_open(str(checkpoint / WEIGHTS), framework="pt") as weights:
                weights.keys()
        except Exception as exc:  # whatever the reader of a damaged file raises
            raise DamagedCheckpoint(damage(exc)) from exc
        return state, optimizer_state

    def restore_rng(self, checkpoint: Path, state: TrainerState, rank: int = 0) -> None:
        import torch

        rng = torch.load(checkpoint / RNG, weights_only=True)
        _restore_rng(rng, state.python_rng, state.numpy_rng, rank)


def load_weights(model: torch.nn.Module, checkpoint: Path) -> None:
    from safetensors.torch import load_model

    load_model(model, str(checkpoint / WEIGHTS))

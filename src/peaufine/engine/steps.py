"""Where the training loop's steps come from: a step source hands the loop each step's optimiser updates
and says what a log row of its steps shows. The default source feeds one global batch per step."""

# A step is what train.max_steps counts, and what evaluation, checkpoints and hooks are timed by. It is
# one or more optimiser updates: the learning-rate schedule is sized by max_steps x `updates_per_step`.
# A source draws its work lazily, update by update, so random numbers it draws between updates (a
# shuffle of the next pass) come in the order they would without the loop in between.

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

from peaufine.data.batching import Batch, BatchPlan, Dataset, MicroBatchFeed

if TYPE_CHECKING:
    import torch

    from peaufine.engine.checkpoint import TrainerState
    from peaufine.engine.runtime import Runtime
    from peaufine.recipe import TrainBlock


# An objective that trains on the task mixed with other text (data.replay) tallies the task's own loss
# under TASK_LOSS: a row's train_loss is then the task's, and train_loss_all the mix's that the optimiser
# minimised, and REPLAY_LOSS the replay's; each None in a window that drew no target of its part.
TASK_LOSS, REPLAY_LOSS = "task_loss", "replay_loss"


@dataclass
class Step:
    """One step's work: this process's micro-batches of each optimiser update, in order, and how far
    the step moves the data position (TrainerState.examples_seen)."""

    updates: Iterable[list[Batch]]
    examples: int


@dataclass
class Window:
    """What the loop measured over the optimiser updates since the last log row."""

    loss: torch.Tensor  # this process's summed loss over the window
    units: torch.Tensor  # the units of the window's global batches (all processes)
    updates: list[tuple[torch.Tensor, torch.Tensor]] = field(default_factory=list)  # (loss, units) of each
    tokens: int = 0  # input tokens, all processes
    seconds: float = 0.0  # training time: evaluation is left out
    grad_norm: Any = None  # after the window's last update

    def partial(self, runtime: Runtime) -> dict[str, Any]:
        """What a checkpoint keeps of the window (all processes' losses summed), for `resumed`."""
        import torch

        losses = torch.stack([self.loss.detach(), *(loss.detach() for loss, _ in self.updates)]).double()
        total, *update_losses = runtime.sum_across(losses.clone()).tolist()
        return {
            "loss": total,
            "units": float(self.units),
            "updates": [
                [loss, float(units)] for loss, (_, units) in zip(update_losses, self.updates, strict=True)
            ],
            "tokens": self.tokens,
            "seconds": self.seconds,
            "grad_norm": None if self.grad_norm is None else float(self.grad_norm),
        }

    @classmethod
    def resumed(cls, saved: dict[str, Any], runtime: Runtime) -> Window:
        """The window a checkpoint kept: rank 0 holds the summed losses, the others none, so that the
        sum across processes at the next row is the uninterrupted one."""
        import torch

        def tensor(value: float) -> torch.Tensor:
            return torch.tensor(value, dtype=torch.float64, device=runtime.device)

        own = 1.0 if runtime.rank == 0 else 0.0
        return cls(
            loss=tensor(saved["loss"] * own),
            units=tensor(saved["units"]),
            updates=[(tensor(loss * own), tensor(units)) for loss, units in saved["updates"]],
            tokens=saved["tokens"],
            seconds=saved["seconds"],
            grad_norm=saved["grad_norm"],
        )

    def add(self, loss: torch.Tensor, units: torch.Tensor, tokens: int, grad_norm: Any) -> None:
        self.loss += loss
        self.units += units
        self.updates.append((loss, units))
        self.tokens += tokens
        self.grad_norm = grad_norm


@runtime_checkable
class StepSource(Protocol):
    """What the loop trains on, step by step. The loop runs the updates, keeps the state, writes the
    rows, evaluates and checkpoints; the source only says what to train on and what a row shows."""

    name: str  # what the progress bar calls the run
    updates_per_step: int  # optimiser updates in each step
    log_every: int  # a row after every this many steps (and after the first and the last)

    def start(self, state: TrainerState) -> None:
        """Once, before the first step (after a resume, so `state` says where the run is)."""

    def next_step(self, state: TrainerState) -> Step:
        """The work of the step after `state.step`."""

    def row(self, window: Window, state: TrainerState, means: dict[str, float]) -> dict[str, Any]:
        """A log row's training metrics (it has "train_loss"), after its "step" and "lr", from what the
        loop measured since the last row and the objective's tallied means over that window."""

    def status(self, row: dict[str, Any]) -> str:
        """The progress bar's line after a row."""

    def evaluate(self, step: int) -> dict[str, Any]:
        """The source's own measurements at an evaluation step, added to that step's row ({}: none)."""

    def close(self) -> None:
        """The run is over, or failed."""


class BatchSteps:
    """The default source: each step is one optimiser update on the micro-batches of one global batch,
    drawn from a data set by a MicroBatchFeed; a row's loss is per unit over all the window's units."""

    name = "training"
    updates_per_step = 1

    def __init__(self, dataset: Dataset, plan: BatchPlan, train: TrainBlock, runtime: Runtime) -> None:
        self.plan, self.runtime, self.log_every = plan, runtime, train.log_every
        self.feed = MicroBatchFeed(
            dataset, plan, train.seed, runtime.rank, runtime.device, train.prefetch_batches
        )

    def start(self, state: TrainerState) -> None:
        pass

    def next_step(self, state: TrainerState) -> Step:
        return Step([self.feed.take(state.examples_seen)], self.plan.batch_size)

    def row(self, window: Window, state: TrainerState, means: dict[str, float]) -> dict[str, Any]:
        self.runtime.sum_across(window.loss)
        loss = float(window.loss / window.units.clamp(min=1.0))
        losses: dict[str, Any] = {"train_loss": loss}
        if TASK_LOSS in means:  # mixed with replay: train_loss is the task's, the mix's beside it
            task, replay = means.pop(TASK_LOSS), means.pop(REPLAY_LOSS, math.nan)
            losses = {
                "train_loss": task if math.isfinite(task) else None,
                "train_loss_all": loss,
                REPLAY_LOSS: replay if math.isfinite(replay) else None,
            }
        return {
            **losses,
            "grad_norm": float(window.grad_norm),
            "tokens_per_s": window.tokens / window.seconds if window.seconds > 0 else None,
            "tokens_seen": state.tokens_seen,
            "elapsed": state.elapsed,
            **means,
        }

    def status(self, row: dict[str, Any]) -> str:
        loss = row["train_loss"]
        shown = "-" if loss is None else f"{loss:.3f}"
        return f"loss {shown}  {row['tokens_per_s'] or 0:,.0f} tok/s"

    def evaluate(self, step: int) -> dict[str, Any]:
        return {}

    def close(self) -> None:
        self.feed.close()

"""Overfitting read off a run's curves: the best validation step, whether training loss kept falling
after it while validation rose (the onset), and the generalisation gap at the end."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

from peaufine.evaluate.evidence import is_meaningful, qualified


@dataclass
class OverfittingReport:
    best_step: int | None
    best_val_loss: float | None
    final_step: int | None
    final_train_loss: float | None
    final_val_loss: float | None
    generalisation_gap: float | None  # final validation loss minus final training loss
    onset_step: int | None  # validation stopped improving here while training loss kept falling
    overfit: bool
    restored_best: bool
    examples: int | None = None  # validation examples the curves rest on; None: not known here
    # the validation loss of the weights the run ended with (and saved): the best when restored
    saved_step: int | None = None
    saved_val_loss: float | None = None

    meaningful: bool | None = None  # whether `examples` is enough for a verdict: set from it

    def __post_init__(self) -> None:
        self.meaningful = is_meaningful(self.examples)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    def verdict(self) -> str:
        if self.best_step is None:
            return "not measured: no validation set"
        if not self.overfit:
            found = "no overfitting seen: validation loss was still at its best at the end"
        else:
            restored = "; the best weights were restored" if self.restored_best else ""
            found = (
                f"overfitting from step {self.onset_step}: validation loss rose from "
                f"{self.best_val_loss:.4f} to {self.final_val_loss:.4f} while training loss kept falling"
                f"{restored}"
            )
        return qualified(found, self.examples, "validation example", "validation examples")


def _last(rows: Sequence[dict[str, Any]], key: str) -> tuple[int | None, float | None]:
    for row in reversed(rows):
        if isinstance(row.get(key), float):
            return row["step"], row[key]
    return None, None


def overfitting_report(
    history: Sequence[dict[str, Any]],
    restored_best: bool = False,
    tolerance: float = 1e-3,
    examples: int | None = None,
) -> OverfittingReport:
    """Find the onset: the best validation step, when a later evaluation is worse by more than
    `tolerance` (relative) while the training loss at that later step is lower than at the best.
    `examples`: the validation examples behind the curves, which the verdict states."""
    # an evaluation row may carry no training loss (logged on another cadence): use the latest one
    evals: list[tuple[int, float, float | None]] = []
    train_so_far: float | None = None
    for row in history:
        if isinstance(row.get("train_loss"), float):
            train_so_far = row["train_loss"]
        if isinstance(row.get("val_loss"), float):
            evals.append((row["step"], row["val_loss"], train_so_far))
    final_step, final_train = _last(history, "train_loss")
    if not evals:
        return OverfittingReport(
            None, None, final_step, final_train, None, None, None, False, restored_best, examples
        )
    best_step, best_val, best_train = min(evals, key=lambda e: e[1])
    last_step, last_val, _ = evals[-1]
    onset = None
    for step, val, train in evals:
        if step <= best_step or val <= best_val * (1 + tolerance):
            continue
        if train is not None and best_train is not None and train < best_train:
            onset = best_step
            break
    gap = last_val - final_train if final_train is not None else None
    return OverfittingReport(
        best_step=best_step,
        best_val_loss=best_val,
        final_step=last_step,
        final_train_loss=final_train,
        final_val_loss=last_val,
        generalisation_gap=gap,
        onset_step=onset,
        overfit=onset is not None,
        restored_best=restored_best,
        examples=examples,
        saved_step=best_step if restored_best else last_step,
        saved_val_loss=best_val if restored_best else last_val,
    )

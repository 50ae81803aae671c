"""Plots made from a run's metrics: the loss curves (train and validation) with the best step marked.

matplotlib runs headless (Agg), and a plot is written to a temporary name then renamed.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any


def plot_losses(rows: Sequence[dict[str, Any]], path: Path, best_step: int | None = None) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    train = [(r["step"], r["train_loss"]) for r in rows if isinstance(r.get("train_loss"), float)]
    val = [(r["step"], r["val_loss"]) for r in rows if isinstance(r.get("val_loss"), float)]
    fig, ax = plt.subplots(figsize=(7, 4), dpi=100)
    if train:
        ax.plot(*zip(*train, strict=True), label="train", linewidth=1.2)
    if val:
        ax.plot(*zip(*val, strict=True), label="validation", marker="o", markersize=3)
    if best_step is not None:
        ax.axvline(best_step, color="grey", linestyle="--", linewidth=1, label=f"best (step {best_step})")
    ax.set_xlabel("optimiser step")
    ax.set_ylabel("loss per target token")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    tmp = path.with_name(f".{path.stem}.tmp-{os.getpid()}{path.suffix}")
    fig.savefig(tmp)
    plt.close(fig)
    os.replace(tmp, path)

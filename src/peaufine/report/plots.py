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


def plot_rl(rows: list[dict[str, Any]], path: Path) -> None:
    """Reward (mean, min-max band) and KL to the reference per RL step, side by side."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    steps = [r["step"] for r in rows if "reward_mean" in r]
    if not steps:
        return
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 3.8))
    mean = [r["reward_mean"] for r in rows if "reward_mean" in r]
    left.fill_between(
        steps,
        [r["reward_min"] for r in rows if "reward_mean" in r],
        [r["reward_max"] for r in rows if "reward_mean" in r],
        alpha=0.2,
        label="min-max",
    )
    left.plot(steps, mean, label="mean reward (samples)")
    val = [(r["step"], r["val_reward_sampled"]) for r in rows if "val_reward_sampled" in r]
    if val:
        left.plot(*zip(*val, strict=True), "o-", label="evaluation prompts")
    left.set_xlabel("step")
    left.set_ylabel("reward")
    left.legend()
    right.plot(steps, [r["kl"] for r in rows if "reward_mean" in r], label="KL to reference (nats/answer)")
    right.set_xlabel("step")
    right.legend()
    fig.tight_layout()
    tmp = path.with_name(f".{path.name}.tmp.png")
    fig.savefig(tmp, dpi=100)
    plt.close(fig)
    tmp.replace(path)

"""Plots made from a run's metrics: loss curves with the best, early-stop and overfitting steps marked,
the learning-rate schedule, and RL's reward, KL and policy diagnostics."""

# matplotlib runs headless (Agg), and a plot is written to a temporary name then renamed.

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

# The RL diagnostics worth a panel each, with their axis labels, in the order they are drawn.
RL_DIAGNOSTICS = {
    "entropy": "policy entropy (nats/token)",
    "clip_fraction": "fraction of ratios clipped",
    "response_length": "response length (tokens)",
    "kl_coef": "KL coefficient",
}


def pyplot() -> Any:
    """matplotlib's pyplot on the headless Agg backend (no display here or in CI)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save_figure(fig: Any, path: Path) -> None:
    """Write `fig` to `path` through a temporary file, so a reader never sees half a PNG."""
    tmp = path.with_name(f".{path.stem}.tmp-{os.getpid()}{path.suffix}")
    fig.savefig(tmp, dpi=100)
    pyplot().close(fig)
    os.replace(tmp, path)


def _series(rows: Sequence[dict[str, Any]], key: str) -> list[tuple[int, float]]:
    # a non-finite value is logged as a string ("nan"), so only floats and ints are points
    return [
        (r["step"], r[key])
        for r in rows
        if isinstance(r.get(key), (int, float)) and not isinstance(r.get(key), bool)
    ]


def plot_losses(
    rows: Sequence[dict[str, Any]],
    path: Path,
    best_step: int | None = None,
    *,
    early_stop_step: int | None = None,
    onset_step: int | None = None,
) -> None:
    """Training and validation loss per step; vertical lines at the best validation step, the step
    training stopped early at, and the step overfitting began (each only when given).

    A run that replays general text (data.replay) logs the task's train loss and the replay's apart:
    both are drawn, so the task's curve is the one set against validation.
    """
    plt = pyplot()
    train = _series(rows, "train_loss")
    replay = _series(rows, "replay_loss")
    val = _series(rows, "val_loss")
    fig, ax = plt.subplots(figsize=(7, 4))
    if train:
        ax.plot(*zip(*train, strict=True), label="train (task)" if replay else "train", linewidth=1.2)
    if replay:
        ax.plot(*zip(*replay, strict=True), label="replay", linewidth=1.0, alpha=0.7)
    if val:
        ax.plot(*zip(*val, strict=True), label="validation", marker="o", markersize=3)
    if best_step is not None:
        ax.axvline(best_step, color="grey", linestyle="--", linewidth=1, label=f"best (step {best_step})")
    if onset_step is not None:
        ax.axvline(
            onset_step,
            color="tab:red",
            linestyle=":",
            linewidth=1.5,
            label=f"overfitting onset ({onset_step})",
        )
    if early_stop_step is not None:
        ax.axvline(
            early_stop_step,
            color="black",
            linestyle="-.",
            linewidth=1,
            label=f"stopped early (step {early_stop_step})",
        )
    ax.set_xlabel("optimiser step")
    ax.set_ylabel("loss per target token")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    save_figure(fig, path)


def plot_lr(rows: Sequence[dict[str, Any]], path: Path) -> None:
    """The learning rate the optimiser used at each logged step (warmup, decay and floor show as drawn)."""
    plt = pyplot()
    lr = _series(rows, "lr")
    fig, ax = plt.subplots(figsize=(7, 3))
    if lr:
        ax.plot(*zip(*lr, strict=True), marker=".", linewidth=1.2)
    ax.set_xlabel("optimiser step")
    ax.set_ylabel("learning rate")
    ax.ticklabel_format(axis="y", style="sci", scilimits=(-3, 3))
    ax.grid(alpha=0.3)
    fig.tight_layout()
    save_figure(fig, path)


def plot_rl(rows: list[dict[str, Any]], path: Path) -> None:
    """Reward (mean, min-max band) and KL to the reference per RL step, side by side."""
    plt = pyplot()
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
    save_figure(fig, path)


def plot_rl_diagnostics(rows: Sequence[dict[str, Any]], path: Path) -> bool:
    """One small panel per RL diagnostic the metrics hold (`RL_DIAGNOSTICS`); False, and no file, if none."""
    present = {key: _series(rows, key) for key in RL_DIAGNOSTICS}
    present = {key: points for key, points in present.items() if points}
    if not present:
        return False
    plt = pyplot()
    fig, axes = plt.subplots(1, len(present), figsize=(3.2 * len(present), 3), squeeze=False)
    for ax, (key, points) in zip(axes[0], present.items(), strict=True):
        ax.plot(*zip(*points, strict=True), marker=".", linewidth=1.2)
        ax.set_title(RL_DIAGNOSTICS[key], fontsize=9)
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
    fig.tight_layout()
    save_figure(fig, path)
    return True

"""The loss plot: with replay, the task's train loss and the replay's are drawn apart."""

from __future__ import annotations

import pytest

from peaufine.report import plots


def drawn_lines(rows, monkeypatch, tmp_path) -> dict[str, list[float]]:
    figures = []
    monkeypatch.setattr(plots, "save_figure", lambda fig, path: figures.append(fig))
    plots.plot_losses(rows, tmp_path / "loss.png")
    (ax,) = figures[0].axes
    return {line.get_label(): list(line.get_ydata()) for line in ax.get_lines()}


def test_a_run_with_replay_draws_the_task_and_the_replay_losses(monkeypatch, tmp_path):
    rows = [
        {"step": s, "train_loss": 3.0 - s / 10, "replay_loss": 2.0 - s / 20, "train_loss_all": 2.5}
        for s in (1, 2, 3)
    ]
    lines = drawn_lines(rows, monkeypatch, tmp_path)
    assert lines["train (task)"] == [2.9, 2.8, 2.7]
    assert lines["replay"] == pytest.approx([1.95, 1.9, 1.85])


def test_a_run_without_replay_draws_one_train_loss(monkeypatch, tmp_path):
    rows = [{"step": s, "train_loss": 3.0 - s / 10} for s in (1, 2, 3)]
    lines = drawn_lines(rows, monkeypatch, tmp_path)
    assert lines == {"train": [2.9, 2.8, 2.7]}

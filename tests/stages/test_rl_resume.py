"""An rl run stopped after a checkpoint and resumed with --resume: the rows before the stop are kept,
each later step is logged once, and the resumed steps sample from the checkpoint's policy (its weights,
data position, sampling seeds and KL coefficient), as the uninterrupted run does.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from conftest import tiny_rl_recipe
from peaufine.recipe import validate_recipe
from peaufine.rundir import read_metrics

TIMING = {"seconds"}
# what a step's rollouts say: sampled and scored before the step's updates, from the policy as it was
ROLLOUT_KEYS = ("reward_mean", "reward_min", "reward_max", "response_length", "kl", "entropy", "kl_coef")


class Stopped(Exception):
    pass


def stop_after(step: int):
    def hook(done: int) -> None:
        if done == step:  # the loop calls hooks after the step's checkpoint
            raise Stopped

    return hook


RECIPES = {
    "grpo": ({"kind": "lora", "r": 4, "alpha": 8, "target_modules": "all-linear"}, {"passes": 2}),
    "ppo": ({"kind": "none"}, {"mini_batches": 2, "kl_control": "adaptive", "target_kl": 0.5}),
}


def without_timing(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [{k: v for k, v in row.items() if k not in TIMING} for row in rows]


def straight_and_resumed(world_run: Path, tmp_path: Path, algorithm: str) -> tuple[list, list]:
    from peaufine.stages.rl import run_rl

    adapter, rl = RECIPES[algorithm]
    train = {"checkpoint_every": 1, "keep_checkpoints": 5}
    recipe = validate_recipe(tiny_rl_recipe(world_run, algorithm, adapter, train, **rl))
    run_rl(recipe, tmp_path / "straight")
    with pytest.raises(Stopped):
        run_rl(recipe, tmp_path / "resumed", hooks=[stop_after(2)])
    assert (tmp_path / "resumed" / "checkpoints" / "latest").read_text().strip() == "step-00000002"
    assert not (tmp_path / "resumed" / "eval.json").exists()
    run_rl(recipe, tmp_path / "resumed", resume=True)
    assert json.loads((tmp_path / "resumed" / "eval.json").read_text())["steps"] == 3
    straight = without_timing(read_metrics(tmp_path / "straight" / "metrics.jsonl"))
    resumed = without_timing(read_metrics(tmp_path / "resumed" / "metrics.jsonl"))
    return straight, resumed


@pytest.mark.parametrize("algorithm", ["grpo", "ppo"])
def test_a_resumed_rl_run_samples_on_from_the_checkpoint(world_run, tmp_path, algorithm):
    straight, resumed = straight_and_resumed(world_run, tmp_path, algorithm)
    assert [row["step"] for row in resumed] == [row["step"] for row in straight] == [1, 2, 3]
    assert resumed[:2] == straight[:2], "the rows logged before the stop"
    # step 3, the first after the resume, samples from the policy the checkpoint holds
    for key in ROLLOUT_KEYS:
        assert resumed[2][key] == straight[2][key], key


@pytest.mark.parametrize("algorithm", ["grpo", "ppo"])
def test_a_resumed_rl_run_trains_as_the_straight_run(world_run, tmp_path, algorithm):
    """Every row, the updates' too: measuring the policy before the first step (which generates) leaves
    the random stream that shuffles the mini-batches where the checkpoint put it."""
    straight, resumed = straight_and_resumed(world_run, tmp_path, algorithm)
    assert resumed == straight

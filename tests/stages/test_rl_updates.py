"""What the rl stage's optimiser updates see: the first update of a step compares the policy with
itself (ratio 1, no KL to the reference at the first step) in every precision."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pytest

from conftest import tiny_rl_recipe
from peaufine.recipe import validate_recipe
from peaufine.rundir import read_metrics

LORA = {"kind": "lora", "r": 4, "alpha": 8, "target_modules": "all-linear"}
FULL = {"kind": "none"}


def rl_recipe(source: Path, algorithm: str, adapter: dict[str, Any], train: dict[str, Any], **rl: Any):
    """One step of `tiny_rl_recipe`, validated."""
    return validate_recipe(
        tiny_rl_recipe(
            source, algorithm, adapter, {"max_steps": 1, **train}, {"every": 100}, eval_prompts=2, **rl
        )
    )


class FirstCalls:
    """The first call's inputs of the per-token losses (the first update's forward), as the methods
    module sees them."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        import peaufine.methods.rl as rl

        self.ratio: float | None = None  # max |pi / pi_old - 1| over the first update's tokens
        # max |log pi - log pi_ref| there (GRPO): the log-ratio of which k3 is second order
        self.kl: float | None = None
        policy_loss, kl_per_token = rl.clipped_policy_loss, rl.kl_per_token

        def spy_policy(logps, old_logps, *args, **kwargs):
            if self.ratio is None:
                self.ratio = float((logps.detach() - old_logps).exp().sub(1).abs().max())
            return policy_loss(logps, old_logps, *args, **kwargs)

        def spy_kl(logps, ref_logps, *args, **kwargs):
            if self.kl is None:
                self.kl = float((logps.detach() - ref_logps).abs().max())
            return kl_per_token(logps, ref_logps, *args, **kwargs)

        monkeypatch.setattr(rl, "clipped_policy_loss", spy_policy)
        monkeypatch.setattr(rl, "kl_per_token", spy_kl)


# GRPO with two passes (old log-probs from their own forward), PPO (old log-probs and values from the
# rollouts' forward, mini-batches or passes), each with LoRA (the reference: the adapter off) and full
# fine-tuning (the reference: a frozen copy)
SETTINGS = {
    "grpo-lora-passes": ("grpo", LORA, {"passes": 2}),
    "grpo-full-passes": ("grpo", FULL, {"passes": 2, "mini_batches": 2}),
    "ppo-full-mini-batches": ("ppo", FULL, {"mini_batches": 2}),
    "ppo-lora-passes": ("ppo", LORA, {"passes": 2}),
}


@pytest.mark.parametrize("precision", ["bf16", "fp32"])
@pytest.mark.parametrize("setting", list(SETTINGS))
def test_the_first_update_compares_the_policy_with_itself(
    world_run, tmp_path, monkeypatch, setting, precision
):
    from peaufine.stages.rl import run_rl

    algorithm, adapter, rl = SETTINGS[setting]
    seen = FirstCalls(monkeypatch)
    run_rl(rl_recipe(world_run, algorithm, adapter, {"precision": precision}, **rl), tmp_path / "run")
    first = read_metrics(tmp_path / "run" / "metrics.jsonl")[0]
    off = {
        "max |ratio - 1| at the first update": seen.ratio,
        # GRPO's loss: the per-token KL to the reference, at step 1 (the policy is its reference)
        "max |log-ratio to the reference| at the first update": seen.kl if algorithm == "grpo" else 0.0,
        # the rollouts' KL to the reference, which the adaptive controller reads
        "|logged kl| at step 1": abs(first["kl"]),
    }
    assert all(v is not None and v <= 1e-6 for v in off.values()), off


class Updates:
    """The rows and the learning rate of each optimiser update, by the rl step it belongs to (0-based)."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        from peaufine.engine.fit import TrainingLoop

        self.rows: dict[int, list[int]] = {}
        self.lr: dict[int, list[float]] = {}
        gradients_on = TrainingLoop.gradients_on

        def spy(loop, batches):
            step = loop.state.step
            self.rows.setdefault(step, []).append(sum(int(b["input_ids"].shape[0]) for b in batches))
            self.lr.setdefault(step, []).append(loop.optimizer.param_groups[0]["lr"])
            return gradients_on(loop, batches)

        monkeypatch.setattr(TrainingLoop, "gradients_on", spy)


def equal_split(rows: int, parts: int) -> list[int]:
    """`parts` sizes that differ by at most one and sum to `rows`, largest first."""
    return [rows // parts + (1 if i < rows % parts else 0) for i in range(parts)]


# (prompts per step, group size, mini-batches): rows that do not divide (16 into 5, 6 into 4, 9 into 4),
# and a control that does (8 into 4)
SPLITS = [(4, 4, 5), (2, 3, 4), (3, 3, 4), (2, 4, 4)]


@pytest.mark.parametrize("schedule", ["cosine", "linear"])
@pytest.mark.parametrize(("prompts", "group", "mini_batches"), SPLITS)
def test_every_rl_step_makes_passes_times_mini_batches_updates_and_the_schedule_ends_at_its_floor(
    world_run, tmp_path, monkeypatch, prompts, group, mini_batches, schedule
):
    from peaufine.stages.rl import run_rl

    updates = Updates(monkeypatch)
    train = {"max_steps": 2, "warmup_steps": 0, "schedule": schedule, "lr": 1e-3, "min_lr": 1e-4}
    rl = {"prompts_per_step": prompts, "group_size": group, "mini_batches": mini_batches, "passes": 2}
    run_rl(rl_recipe(world_run, "grpo", LORA, train, **rl), tmp_path / "run")
    # every pass cuts the step's rows into `mini_batches` equal parts (sizes within one of each other)
    per_pass = equal_split(prompts * group, mini_batches)
    assert {step: sorted(rows, reverse=True) for step, rows in updates.rows.items()} == {
        0: sorted(per_pass * 2, reverse=True),
        1: sorted(per_pass * 2, reverse=True),
    }
    last = read_metrics(tmp_path / "run" / "metrics.jsonl")[-1]
    assert last["lr"] == pytest.approx(1e-4, rel=1e-9), "the schedule reaches its floor at the last update"


def test_rollouts_too_few_for_the_mini_batches_are_refused_before_the_run_exists(world_run, tmp_path):
    from peaufine.errors import RecipeError
    from peaufine.stages.rl import run_rl

    recipe = rl_recipe(world_run, "grpo", LORA, {}, prompts_per_step=2, group_size=2, mini_batches=5)
    with pytest.raises(RecipeError, match=r"method\.rl\.mini_batches"):
        run_rl(recipe, tmp_path / "run")
    assert not (tmp_path / "run").exists()
    # the control: as many rollouts as mini-batches runs
    run_rl(
        rl_recipe(world_run, "grpo", LORA, {}, prompts_per_step=2, group_size=2, mini_batches=4),
        tmp_path / "ok",
    )
    assert (tmp_path / "ok" / "eval.json").exists()


@pytest.mark.parametrize(("passes", "mini_batches"), [(2, 2), (1, 3), (1, 1)])
def test_rl_warmup_counts_rl_steps(world_run, tmp_path, monkeypatch, passes, mini_batches):
    from peaufine.stages.rl import run_rl

    updates = Updates(monkeypatch)
    train = {"max_steps": 4, "warmup_steps": 2, "schedule": "cosine", "lr": 1e-3, "min_lr": 1e-4}
    rl = {"passes": passes, "mini_batches": mini_batches}
    run_rl(rl_recipe(world_run, "grpo", LORA, train, **rl), tmp_path / "run")
    k = passes * mini_batches
    # warmup over 2 rl steps of k updates each: linear to the peak at the last update of rl step 2,
    # then a cosine over the other 2 rl steps, reaching the floor after the last update
    warmup, total = 2 * k, 4 * k

    def expected(u: int) -> float:
        if u < warmup:
            return 1e-3 * (u + 1) / warmup
        return 1e-4 + 0.5 * (1e-3 - 1e-4) * (1 + math.cos(math.pi * (u - warmup) / (total - warmup)))

    used = [lr for step in range(4) for lr in updates.lr[step]]
    assert used == pytest.approx([expected(u) for u in range(total)], rel=1e-9)
    last = read_metrics(tmp_path / "run" / "metrics.jsonl")[-1]
    assert last["lr"] == pytest.approx(1e-4, rel=1e-9)


class Checkpointed:
    """How many times a layer's activations were checkpointed during the loop's training forwards (the
    layers' checkpointing function, as train.activation_checkpointing installs it)."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        import peaufine.models.build as build
        from peaufine.engine.fit import TrainingLoop

        self.in_training = 0
        self.outside = 0
        self.training_forward = False
        enable, gradients_on = build.enable_activation_checkpointing, TrainingLoop.gradients_on

        def counting(function):
            def checkpoint(*args, **kwargs):
                if self.training_forward:
                    self.in_training += 1
                else:
                    self.outside += 1
                return function(*args, **kwargs)

            return checkpoint

        def spy_enable(model):
            enable(model)
            for module in model.modules():
                if getattr(module, "gradient_checkpointing", False):
                    module._gradient_checkpointing_func = counting(module._gradient_checkpointing_func)

        def spy_gradients(loop, batches):
            self.training_forward = True
            try:
                return gradients_on(loop, batches)
            finally:
                self.training_forward = False

        monkeypatch.setattr(build, "enable_activation_checkpointing", spy_enable)
        monkeypatch.setattr(TrainingLoop, "gradients_on", spy_gradients)


@pytest.mark.parametrize("algorithm", ["grpo", "ppo"])
@pytest.mark.parametrize("adapter", [LORA, FULL], ids=["lora", "full"])
def test_activation_checkpointing_runs_in_the_rl_training_forward(
    world_run, tmp_path, monkeypatch, algorithm, adapter
):
    from peaufine.stages.rl import run_rl

    seen = Checkpointed(monkeypatch)
    train = {"activation_checkpointing": True}
    run_rl(rl_recipe(world_run, algorithm, adapter, train, mini_batches=2), tmp_path / "run")
    # one decoder layer, 2 updates of one micro-batch each: the layer is checkpointed in each
    assert seen.in_training == 2
    assert seen.outside == 0, "forwards without gradients (sampling, old log-probs) keep no activations"


def with_dropout(source: Path, tmp_path: Path) -> Path:
    """A copy of the run `source` whose model config asks for attention dropout."""
    import json
    import shutil

    copy = tmp_path / "dropout"
    shutil.copytree(source, copy)
    config_file = copy / "model" / "config.json"
    config = json.loads(config_file.read_text(encoding="utf-8"))
    config["attention_dropout"] = 0.3
    config_file.write_text(json.dumps(config), encoding="utf-8")
    return copy


@pytest.mark.parametrize("checkpointing", [True, False])
@pytest.mark.parametrize("setting", ["grpo-lora-passes", "ppo-full-mini-batches"])
def test_dropout_in_the_model_config_stays_off_in_rl(
    world_run, tmp_path, monkeypatch, setting, checkpointing
):
    from peaufine.stages.rl import run_rl

    algorithm, adapter, rl = SETTINGS[setting]
    seen = FirstCalls(monkeypatch)
    source = with_dropout(world_run, tmp_path)
    train = {"activation_checkpointing": checkpointing}
    run_rl(rl_recipe(source, algorithm, adapter, train, **rl), tmp_path / "run")
    assert seen.ratio is not None and seen.ratio <= 1e-6, f"max |ratio - 1| at the first update: {seen.ratio}"
    if algorithm == "grpo":
        assert seen.kl is not None and seen.kl <= 1e-6, f"max |log-ratio to the reference|: {seen.kl}"

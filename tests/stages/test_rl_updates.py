"""What the rl stage's optimiser updates see: the first update of a step compares the policy with
itself (ratio 1, no KL to the reference at the first step) in every precision."""

from __future__ import annotations

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

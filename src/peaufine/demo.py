"""The default pipeline, offline on a laptop CPU: the synthetic world, pretrained and probed.

Each stage is a packaged recipe run by the same code a user runs; the demo only chains them and
collects the numbers that show each stage's effect.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

from peaufine.recipe import Recipe, read_yaml, validate_recipe


def packaged_recipe(name: str) -> Recipe:
    """A recipe shipped inside the package (`peaufine/recipes/NAME.yaml`)."""
    resource = resources.files("peaufine") / "recipes" / f"{name}.yaml"
    with resources.as_file(resource) as path:
        return validate_recipe(read_yaml(Path(path)), source=f"peaufine/recipes/{name}.yaml")


@dataclass
class DemoResult:
    out: Path
    smoke: bool
    seconds: float
    stages: dict[str, dict[str, Any]] = field(default_factory=dict)


def run_demo(out: Path, *, smoke: bool = False, overwrite: bool = True) -> DemoResult:
    from peaufine.stages.pretrain import run_pretrain

    out = Path(out)
    start = time.perf_counter()
    suffix = "-smoke" if smoke else ""
    result = DemoResult(out=out, smoke=smoke, seconds=0.0)
    pretrain = run_pretrain(
        packaged_recipe(f"world-pretrain{suffix}"),
        out / "pretrain",
        overwrite=overwrite and (out / "pretrain").exists(),
    )
    result.stages["pretrain"] = pretrain.evaluation

    from peaufine.stages.sft import run_sft

    sft_recipe = packaged_recipe(f"world-sft{suffix}")
    sft_recipe.model.source = str(out / "pretrain")
    sft = run_sft(sft_recipe, out / "sft", overwrite=overwrite and (out / "sft").exists())
    result.stages["sft"] = sft.evaluation

    from peaufine.stages.reward import run_reward

    reward_recipe = packaged_recipe(f"world-reward{suffix}")
    reward_recipe.model.source = str(out / "sft")
    reward = run_reward(reward_recipe, out / "reward", overwrite=overwrite and (out / "reward").exists())
    result.stages["reward"] = reward.evaluation

    from peaufine.stages.dpo import run_dpo

    dpo_recipe = packaged_recipe(f"world-dpo{suffix}")
    dpo_recipe.model.source = str(out / "sft")
    dpo = run_dpo(dpo_recipe, out / "dpo", overwrite=overwrite and (out / "dpo").exists())
    result.stages["dpo"] = dpo.evaluation

    from peaufine.stages.rl import run_rl

    rl_recipe = packaged_recipe(f"world-grpo{suffix}")
    rl_recipe.model.source = str(out / "sft")
    for source in rl_recipe.method.rl.rewards:
        if source.source == "reward-model":  # the packaged recipe's placeholder for this demo's reward run
            source.source = str(out / "reward")
    rl = run_rl(rl_recipe, out / "grpo", overwrite=overwrite and (out / "grpo").exists())
    result.stages["grpo"] = rl.evaluation
    result.seconds = time.perf_counter() - start
    return result

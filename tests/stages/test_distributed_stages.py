"""Every stage under torchrun with 2 processes (gloo, CPU), and resume across a change of world size.

A tiny world model is pretrained here in one process; sft (DDP, and FSDP2 against it), reward, dpo and
rl (grpo) then run in two processes each from it, through stage_worker.py, which runs a stage as the
CLI does and writes a digest of each rank's trained parameters. Resuming: a pretrain run stopped by
2 processes goes on with 1 (DDP), and one goes 2 -> 1 -> 2 processes (FSDP); each ends where a
straight 1-process run ends, loss for loss.
"""

from __future__ import annotations

import json
import math
import sys
import textwrap
from importlib import resources
from pathlib import Path
from typing import Any

import pytest

from conftest import TORCHRUN_2, need_gloo, run_launched

pytestmark = [pytest.mark.distributed, pytest.mark.slow]

WORKER = Path(__file__).with_name("stage_worker.py")
TIMEOUT_S = 300
LOSS_RTOL = 1e-5
PARAM_ATOL = 1e-5
ONE = [sys.executable]
CPU = ("train.device=cpu", "train.log_every=1")


def launch(launcher: list[str], program: list[str], what: str) -> None:
    """Run `program` (the worker or `-m peaufine.cli`) under `launcher`; fail with its output if it fails."""
    run_launched([*launcher, *program], what, TIMEOUT_S)


def stage(launcher: list[str], name: str, recipe: Path, out: Path, *sets: str, digests: bool = True) -> Path:
    program = [str(WORKER), name, str(recipe), "--out", str(out)]
    for item in (*CPU, *sets):
        program += ["--set", item]
    if digests:
        program += ["--digests", str(out.with_name(out.name + "-digests"))]
    launch(launcher, program, f"{name} into {out.name}")
    return out


def packaged(name: str) -> Path:
    return Path(str(resources.files("peaufine") / "recipes" / f"{name}.yaml"))


def metrics(run: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text(encoding="utf-8").splitlines()]


def column(rows: list[dict[str, Any]], key: str) -> list[float]:
    return [row[key] for row in rows if key in row]


def relative_gap(a: list[float], b: list[float]) -> float:
    return max(abs(x - y) / max(abs(x), abs(y), 1e-12) for x, y in zip(a, b, strict=True))


def check_two_process_run(run: Path, steps: int) -> list[dict[str, Any]]:
    """What every 2-process run must show: it knew its world size, it finished, rank 0 alone wrote,
    its losses are finite, and the ranks ended with the very same weights."""
    assert json.loads((run / "env.json").read_text())["world_size"] == 2
    assert (run / "eval.json").is_file(), "the run did not finish"
    rows = metrics(run)
    assert [r["step"] for r in rows] == list(range(1, steps + 1)), "metrics from more than one writer"
    assert all(math.isfinite(r["train_loss"]) for r in rows)
    leftovers = [p.name for p in run.parent.glob(f".{run.name}.staging-*")]
    leftovers += (
        [p.name for p in (run / "checkpoints").glob(".tmp-*")] if (run / "checkpoints").exists() else []
    )
    assert not leftovers, f"a second writer left {leftovers}"
    records = [
        json.loads(p.read_text()) for p in sorted(run.with_name(run.name + "-digests").glob("rank*.json"))
    ]
    assert [(r["rank"], r["world_size"]) for r in records] == [(0, 2), (1, 2)]
    assert records[0]["sha256"] == records[1]["sha256"], "the two ranks ended with different weights"
    return rows


# -- a tiny world model to start from ------------------------------------------------------------------
@pytest.fixture(scope="module")
def root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    need_gloo()
    return tmp_path_factory.mktemp("stages2")


@pytest.fixture(scope="module")
def base(root: Path) -> Path:
    """The world pretrained for a few steps in one process: enough for later stages to start from."""
    sets = (
        "train.max_steps=20",
        "train.warmup_steps=2",
        "train.log_every=10",
        "eval.every=20",
        "eval.samples=0",
    )
    return stage(ONE, "pretrain", packaged("world-pretrain-smoke"), root / "base", *sets, digests=False)


SFT_SETS = (
    "train.max_steps=6",
    "train.warmup_steps=0",
    "train.lr=2.0e-3",
    "train.checkpoint_every=6",
    "eval.every=3",
    "eval.answers=2",
    "eval.transfer.few_shot=0",
    "eval.forgetting.max_blocks=16",
)


@pytest.fixture(scope="module")
def sft(root: Path, base: Path) -> Path:
    recipe = packaged("world-sft-smoke")
    return stage(TORCHRUN_2, "sft", recipe, root / "sft", f"model.source={base}", *SFT_SETS)


def test_sft_in_two_processes(sft: Path) -> None:
    rows = check_two_process_run(sft, 6)
    assert len(column(rows, "val_loss")) == 2
    before_after = json.loads((sft / "eval.json").read_text())
    text = json.dumps(before_after)
    assert "NaN" not in text and "Infinity" not in text
    losses = column(rows, "val_loss")
    assert losses[-1] < losses[0], f"validation loss did not go down: {losses}"


def test_sft_with_fsdp_matches_ddp(root: Path, base: Path, sft: Path) -> None:
    """LoRA + trainable special tokens, sharded with FSDP2: the same trajectory and adapter as DDP."""
    from safetensors.torch import load_file

    recipe = packaged("world-sft-smoke")
    fsdp = stage(
        TORCHRUN_2,
        "sft",
        recipe,
        root / "sft-fsdp",
        f"model.source={base}",
        *SFT_SETS,
        "train.distributed=fsdp",
    )
    rows = check_two_process_run(fsdp, 6)
    records = [json.loads(p.read_text()) for p in sorted((root / "sft-fsdp-digests").glob("rank*.json"))]
    assert {r["strategy"] for r in records} == {"fsdp"}
    expected = metrics(sft)
    for key in ("train_loss", "grad_norm", "val_loss"):
        gap = relative_gap(column(expected, key), column(rows, key))
        assert gap < 1e-4, f"{key}: FSDP and DDP differ by {gap:.2e}"
    ddp_adapter = load_file(sft / "adapter" / "adapter_model.safetensors")
    fsdp_adapter = load_file(fsdp / "adapter" / "adapter_model.safetensors")
    assert ddp_adapter.keys() == fsdp_adapter.keys()
    for key, tensor in ddp_adapter.items():
        assert (fsdp_adapter[key] - tensor).abs().max() < 1e-4, key
    # the evaluations after training ran on the whole model (rank 0), as with DDP
    a, b = (json.loads((run / "eval.json").read_text()) for run in (sft, fsdp))
    assert b["steps"] == a["steps"] == 6


@pytest.fixture(scope="module")
def reward(root: Path, sft: Path) -> Path:
    sets = (
        "train.max_steps=6",
        "train.warmup_steps=0",
        "train.checkpoint_every=6",
        "eval.every=3",
        "data.rankings=adjacent",
    )
    return stage(
        TORCHRUN_2, "reward", packaged("world-reward-smoke"), root / "reward", f"model.source={sft}", *sets
    )


def test_reward_in_two_processes(reward: Path) -> None:
    rows = check_two_process_run(reward, 6)
    # a fresh scalar head scores both answers near 0: the Bradley-Terry loss starts near log 2
    assert abs(rows[0]["train_loss"] - math.log(2)) < 0.1
    evaluation = json.loads((reward / "eval.json").read_text())
    assert 0.0 <= evaluation["validation"]["accuracy"] <= 1.0
    assert evaluation["validation"]["pairs"] == evaluation["before"]["validation"]["pairs"] > 0


def test_dpo_in_two_processes(root: Path, sft: Path) -> None:
    sets = (
        "train.max_steps=6",
        "train.warmup_steps=0",
        "train.lr=2.0e-3",
        "train.checkpoint_every=6",
        "eval.every=3",
        "eval.answers=2",
        "data.rankings=adjacent",
    )
    run = stage(TORCHRUN_2, "dpo", packaged("world-dpo-smoke"), root / "dpo", f"model.source={sft}", *sets)
    rows = check_two_process_run(run, 6)
    # at step 1 the policy is its reference: every pair's DPO loss is exactly log 2
    assert rows[0]["train_loss"] == pytest.approx(math.log(2), abs=1e-4)
    final = json.loads((run / "eval.json").read_text())["final"]
    assert final["validation"]["loss"] < math.log(2), "DPO did not learn the validation preferences"


def test_grpo_in_two_processes(root: Path, sft: Path, reward: Path) -> None:
    recipe = root / "grpo.yaml"
    recipe.write_text(
        textwrap.dedent(f"""
        stage: rl
        model:
          source: {sft}
          adapter: {{kind: lora, r: 8, alpha: 16, target_modules: all-linear}}
        data: {{source: world}}
        method:
          rl:
            algorithm: grpo
            rewards:
              - {{source: exact_answer, weight: 1.0}}
              - {{source: {reward}, weight: 1.0}}
            prompts_per_step: 4
            group_size: 4
            max_new_tokens: 6
            eval_prompts: 4
        train: {{max_steps: 2, lr: 1.0e-3, warmup_steps: 0, checkpoint_every: 2}}
        eval: {{every: 2}}
        """),
        encoding="utf-8",
    )
    run = stage(TORCHRUN_2, "rl", recipe, root / "grpo")
    rows = check_two_process_run(run, 2)
    for row in rows:
        assert row["reward_min"] <= row["reward_mean"] <= row["reward_max"]
        # the rollouts' KL per answer is a sampled estimate (it may dip below 0); the loss's k3 may not
        assert math.isfinite(row["kl"]) and row["kl_per_token"] > -1e-6
        assert math.isfinite(row["entropy"]) and row["entropy"] > 0
    evaluation = json.loads((run / "eval.json").read_text())
    assert evaluation["steps"] == 2 and evaluation["after"]["prompts"] == 4


# -- resume across a change of world size ------------------------------------------------------------
STEPS = 8  # each run's length; checkpoints every 3 steps, so a run can stop after step 3 or 6
BATCH = 8


def write_corpus(path: Path) -> Path:
    import random

    rng = random.Random(0)
    words = ["alpha", "beta", "gamma", "delta", "river", "stone", "north", "light", "seven"]
    paragraphs = [" ".join(rng.choice(words) for _ in range(rng.randint(20, 60))) for _ in range(60)]
    path.write_text("\n\n".join(paragraphs), encoding="utf-8")
    return path


def resume_recipe(root: Path, strategy: str, log_every: int = 1) -> Path:
    corpus = root / "corpus.txt"
    if not corpus.exists():
        write_corpus(corpus)
    recipe = root / f"resume-{strategy}-log-{log_every}.yaml"
    recipe.write_text(
        textwrap.dedent(f"""
        model:
          source: llama-tiny
          config: {{hidden_size: 32, intermediate_size: 64, num_hidden_layers: 2,
                    num_attention_heads: 2, num_key_value_heads: 2}}
          tokenizer: {{kind: char}}
        data: {{source: {corpus}, block_size: 16, validation_fraction: 0.1}}
        train: {{max_steps: {STEPS}, batch_size: {BATCH}, lr: 1.0e-2, warmup_steps: 2, checkpoint_every: 3,
                 log_every: {log_every}, device: cpu, distributed: {strategy}}}
        eval: {{every: 4, samples: 0}}
        """),
        encoding="utf-8",
    )
    return recipe


def cli(launcher: list[str], recipe: Path, out: Path, *flags: str) -> Path:
    launch(launcher, ["-m", "peaufine.cli", "pretrain", str(recipe), "--out", str(out), *flags], out.name)
    return out


@pytest.fixture(scope="module")
def straight(root: Path) -> Path:
    """The whole run in one process, without a stop: where every resumed run must end."""
    return cli(ONE, resume_recipe(root, "ddp"), root / "straight")


def in_legs(
    root: Path, name: str, strategy: str, legs: list[tuple[list[str], int | None]], log_every: int = 1
) -> Path:
    """One run in legs: each launcher goes on from the last checkpoint and stops after its step (None:
    to the end, through the CLI)."""
    recipe, out = resume_recipe(root, strategy, log_every), root / name
    for k, (launcher, stop_after) in enumerate(legs):
        resume = ["--resume"] if k else []
        if stop_after is None:
            cli(launcher, recipe, out, *resume)
            continue
        worker = [str(WORKER), "pretrain", str(recipe), "--out", str(out), "--stop-after", str(stop_after)]
        launch(launcher, worker + resume, f"{name}, leg {k + 1}")
        assert (out / "checkpoints" / "latest").read_text().strip() == f"step-{stop_after:08d}"
        assert not (out / "eval.json").exists()
    return out


def same_run(resumed: Path, straight: Path) -> None:
    from safetensors.torch import load_file

    a, b = metrics(straight), metrics(resumed)
    assert [r["step"] for r in b] == [r["step"] for r in a] == list(range(1, STEPS + 1))
    for key in ("train_loss", "val_loss", "grad_norm", "lr", "tokens_seen"):
        gap = relative_gap(column(a, key), column(b, key))
        assert gap < LOSS_RTOL, f"{key} differs from the straight run by {gap:.2e}"
    wa = load_file(straight / "model" / "model.safetensors")
    wb = load_file(resumed / "model" / "model.safetensors")
    assert wa.keys() == wb.keys()
    for key in wa:
        assert (wa[key] - wb[key]).abs().max() < PARAM_ATOL, key


def test_ddp_run_of_two_processes_resumes_in_one(root: Path, straight: Path) -> None:
    resumed = in_legs(root, "ddp-2-then-1", "ddp", [(TORCHRUN_2, 3), (ONE, None)])
    same_run(resumed, straight)


def test_fsdp_run_goes_from_two_processes_to_one_and_back(root: Path, straight: Path) -> None:
    # with one process train.distributed is ignored: the straight run is this recipe's run too
    resumed = in_legs(root, "fsdp-2-1-2", "fsdp", [(TORCHRUN_2, 3), (ONE, 6), (TORCHRUN_2, None)])
    same_run(resumed, straight)


def test_a_two_process_run_resumed_inside_a_log_window_logs_the_window_whole(root: Path) -> None:
    """log_every 4: the checkpoint after step 3 falls inside the window of steps 2-4, whose losses two
    processes summed apart; resumed in one process, the row at step 4 is the straight run's."""
    straight = cli(ONE, resume_recipe(root, "ddp", log_every=4), root / "straight-log-4")
    resumed = in_legs(root, "ddp-2-then-1-log-4", "ddp", [(TORCHRUN_2, 3), (ONE, None)], log_every=4)
    a, b = metrics(straight), metrics(resumed)
    assert [r["step"] for r in b] == [r["step"] for r in a] == [1, 4, 8]
    for key in ("train_loss", "grad_norm", "tokens_seen"):
        gap = relative_gap(column(a, key), column(b, key))
        assert gap < LOSS_RTOL, f"{key} differs from the straight run by {gap:.2e}"

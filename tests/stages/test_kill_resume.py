"""Killed at any phase and resumed, a run ends as if never killed: each stage's run is SIGKILLed at every
named point in turn (the test-only PEAUFINE_FAULT hook, atomic.crash_point), then resumed."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from conftest import launch_environment, llama_tiny_block
from peaufine.rundir import read_metrics

pytestmark = pytest.mark.slow

TRAIN = {
    "device": "cpu",
    "precision": "fp32",
    "seed": 0,
    "max_steps": 5,
    "batch_size": 4,
    "lr": 3e-3,
    "warmup_steps": 1,
    "checkpoint_every": 2,
    "log_every": 2,  # rows at 1, 2, 4, 5: the kill after step 3 falls inside a log window
}
LORA = {"kind": "lora", "r": 4, "alpha": 8, "target_modules": "all-linear"}
# timing is not reproducible; everything else must be
TIMING = {"train_seconds", "seconds", "elapsed", "tokens_per_s"}


def pretrain_recipe(root: Path) -> dict[str, Any]:
    return {
        "stage": "pretrain",
        "model": llama_tiny_block(16, {"kind": "bpe", "vocab_size": 300}),
        "data": {
            "source": "world",
            "world": {"seed": 0, "size": "smoke", "documents": 40, "faq_documents": 8},
            "block_size": 32,
            "validation_fraction": 0.1,
        },
        "train": TRAIN,
        "eval": {"every": 3, "samples": 1, "sample_tokens": 4},
    }


def lora_recipe(stage: str, source: Path, data: dict[str, Any], **blocks: Any) -> dict[str, Any]:
    """A `stage` recipe training a LoRA on `source` (the previous stage's uninterrupted run) on the
    world's data, too-long examples truncated, `data` laid over it; `blocks` are its other blocks."""
    return {
        "stage": stage,
        "model": {"source": str(source), "adapter": LORA},
        "data": {"source": "world", **data, "anomalies": {"too_long": "truncate"}},
        "train": TRAIN,
        **blocks,
    }


def sft_recipe(root: Path) -> dict[str, Any]:
    return lora_recipe(
        "sft",
        root / "pretrain" / "straight",
        {"validation_fraction": 0.2, "max_length": 64},
        eval={"every": 3, "answers": 2, "transfer": {"few_shot": 1}},
    )


def dpo_recipe(root: Path) -> dict[str, Any]:
    return lora_recipe(
        "dpo",
        root / "sft" / "straight",
        {"validation_fraction": 0.15, "max_length": 96, "rankings": "adjacent"},
        method={"dpo": {"loss": "sigmoid", "beta": 0.1}},
        eval={"every": 3, "answers": 2},
    )


RECIPES = {"pretrain": pretrain_recipe, "sft": sft_recipe, "dpo": dpo_recipe}


def cli(stage: str, recipe: Path, out: Path, *flags: str, fault: str | None = None) -> int:
    env = launch_environment()
    env.pop("PEAUFINE_FAULT", None)
    if fault is not None:
        env["PEAUFINE_FAULT"] = fault
    done = subprocess.run(
        [sys.executable, "-m", "peaufine.cli", stage, str(recipe), "--out", str(out), *flags],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    if done.returncode not in (0, -signal.SIGKILL):
        pytest.fail(f"{stage} {flags} (fault {fault}) exited with {done.returncode}:\n{done.stderr[-6000:]}")
    return done.returncode


@pytest.fixture(scope="module")
def root(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("kills")


def straight(root: Path, stage: str) -> tuple[Path, Path]:
    """The stage's recipe and its uninterrupted run (made once; the next stage starts from it)."""
    folder = root / stage
    recipe, out = folder / "recipe.yaml", folder / "straight"
    if not out.exists():
        folder.mkdir(exist_ok=True)
        recipe.write_text(yaml.safe_dump(RECIPES[stage](root)), encoding="utf-8")
        assert cli(stage, recipe, out) == 0
    return recipe, out


def without_timing(data: Any) -> Any:
    if isinstance(data, dict):
        return {k: without_timing(v) for k, v in data.items() if k not in TIMING}
    if isinstance(data, list):
        return [without_timing(v) for v in data]
    return data


def weights(run: Path) -> dict[str, bytes]:
    """Every safetensors file of the run's outputs (model/, adapter/), by path, as bytes."""
    return {
        str(p.relative_to(run)): p.read_bytes()
        for folder in ("model", "adapter")
        for p in sorted((run / folder).glob("*.safetensors"))
    }


def leftovers(run: Path) -> list[str]:
    """What a killed process may leave: staging beside the run, partial checkpoints and writes in it."""
    found = [p.name for p in run.parent.glob(f".{run.name}.staging-*")]
    return found + [p.name for p in (*run.glob(".*.tmp-*"), *(run / "checkpoints").glob(".tmp-*"))]


@pytest.mark.parametrize("stage", ["pretrain", "sft", "dpo"])
def test_a_run_killed_at_every_phase_and_resumed_ends_as_the_uninterrupted_run(root, stage):
    recipe, reference = straight(root, stage)
    out = root / stage / "killed"

    # preparation: nothing in place, the staging left beside
    assert cli(stage, recipe, out, fault="prepare") == -signal.SIGKILL
    assert not out.exists() and leftovers(out)
    # mid-checkpoint-write (a fresh start: the killed preparation left no run): step 2 is the latest
    assert cli(stage, recipe, out, fault="checkpoint-write:4") == -signal.SIGKILL
    assert (out / "checkpoints" / "latest").read_text().strip() == "step-00000002"
    assert [name for name in leftovers(out) if name.startswith(".tmp-step-00000004")]
    # between checkpoints (after step 3; 4 was never written whole)
    assert cli(stage, recipe, out, "--resume", fault="step:3") == -signal.SIGKILL
    assert leftovers(out) == []  # the next start removed what the dead processes left
    # after the final checkpoint, before the final evaluation
    assert cli(stage, recipe, out, "--resume", fault="finish") == -signal.SIGKILL
    assert (out / "checkpoints" / "latest").read_text().strip() == "step-00000005"
    assert not (out / "eval.json").exists()
    # during the report: eval.json is written, report.html is not
    assert cli(stage, recipe, out, "--resume", fault="report") == -signal.SIGKILL
    assert (out / "eval.json").exists() and not (out / "report.html").exists()
    assert json.loads((out / ".peaufine-run.json").read_text())["status"] == "running"
    # and the last resume finishes it
    assert cli(stage, recipe, out, "--resume") == 0

    rows, expected = read_metrics(out / "metrics.jsonl"), read_metrics(reference / "metrics.jsonl")
    steps = [row["step"] for row in rows]
    assert len(steps) == len(set(steps)), "a step logged twice"
    assert without_timing(rows) == without_timing(expected)
    evaluation = json.loads((out / "eval.json").read_text(encoding="utf-8"))
    assert without_timing(evaluation) == without_timing(json.loads((reference / "eval.json").read_text()))
    assert weights(out) == weights(reference) and weights(out)
    assert (out / "report.html").is_file()
    assert json.loads((out / ".peaufine-run.json").read_text())["status"] == "finished"
    assert leftovers(out) == []

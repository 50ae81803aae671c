"""Resume equals uninterrupted: a run killed after N steps and resumed matches a straight 2N-step run."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from peaufine.rundir import read_metrics

N = 6


def write_corpus(path: Path) -> Path:
    import random

    rng = random.Random(0)
    words = ["alpha", "beta", "gamma", "delta", "river", "stone", "north", "light", "seven"]
    paragraphs = [" ".join(rng.choice(words) for _ in range(rng.randint(20, 60))) for _ in range(60)]
    path.write_text("\n\n".join(paragraphs), encoding="utf-8")
    return path


def recipe_file(tmp_path: Path, corpus: Path) -> Path:
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(
        textwrap.dedent(f"""
        model:
          source: llama-tiny
          # dropout on, so resuming must restore the random-number state to match
          config: {{hidden_size: 32, intermediate_size: 64, num_hidden_layers: 1,
                    num_attention_heads: 2, num_key_value_heads: 2, attention_dropout: 0.1}}
          tokenizer: {{kind: char}}
        data: {{source: {corpus}, block_size: 16, validation_fraction: 0.1}}
        train: {{max_steps: {2 * N}, batch_size: 4, micro_batch_size: 2, lr: 1.0e-2,
                 warmup_steps: 2, checkpoint_every: {N}, log_every: 1, device: cpu}}
        eval: {{every: 4, samples: 0}}
    """),
        encoding="utf-8",
    )
    return recipe


KILL_AFTER = """
import os, sys
from pathlib import Path
from peaufine.recipe import load_recipe
from peaufine.stages.pretrain import run_pretrain

def die(step):
    if step == {n}:
        os._exit(137)  # like a SIGKILL: no cleanup, no finally blocks

run_pretrain(load_recipe(Path(sys.argv[1])), Path(sys.argv[2]), hooks=[die])
"""


def cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "peaufine.cli", *args], capture_output=True, text=True, timeout=300
    )


@pytest.fixture(scope="module")
def straight(tmp_path_factory) -> tuple[Path, Path]:
    """The recipe, and a run of it straight through 2N steps."""
    root = tmp_path_factory.mktemp("resume")
    recipe = recipe_file(root, write_corpus(root / "corpus.txt"))
    done = cli("pretrain", str(recipe), "--out", str(root / "straight"))
    assert done.returncode == 0, done.stderr
    return recipe, root / "straight"


def killed_after_n_steps(recipe: Path, out: Path) -> None:
    killed = subprocess.run(
        [sys.executable, "-c", KILL_AFTER.format(n=N), str(recipe), str(out)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert killed.returncode == 137, killed.stderr
    assert not (out / "model").exists()
    assert (out / "checkpoints" / "latest").read_text().strip() == f"step-{N:08d}"


@pytest.mark.slow
def test_resume_after_kill_equals_uninterrupted(straight, tmp_path):
    from safetensors.torch import load_file

    recipe, straight_run = straight
    killed_after_n_steps(recipe, tmp_path / "resumed")
    resumed = cli("pretrain", str(recipe), "--out", str(tmp_path / "resumed"), "--resume")
    assert resumed.returncode == 0, resumed.stderr

    a = read_metrics(straight_run / "metrics.jsonl")
    b = read_metrics(tmp_path / "resumed" / "metrics.jsonl")
    assert [r["step"] for r in a] == [r["step"] for r in b]
    for ra, rb in zip(a, b, strict=True):
        assert rb["train_loss"] == pytest.approx(ra["train_loss"], abs=1e-6), ra["step"]
        if "val_loss" in ra:
            assert rb["val_loss"] == pytest.approx(ra["val_loss"], abs=1e-6)
    wa = load_file(straight_run / "model" / "model.safetensors")
    wb = load_file(tmp_path / "resumed" / "model" / "model.safetensors")
    assert wa.keys() == wb.keys()
    for key in wa:
        assert (wa[key] - wb[key]).abs().max() <= 1e-6, key


@pytest.mark.slow
def test_resuming_without_the_saved_rng_state_would_differ(straight, tmp_path):
    """The control: with another RNG state the dropout masks differ, and so do the losses."""
    import torch

    from peaufine.engine import checkpoint

    recipe, straight_run = straight
    killed_after_n_steps(recipe, tmp_path / "resumed")
    rng_file = tmp_path / "resumed" / "checkpoints" / f"step-{N:08d}" / checkpoint.RNG
    state = torch.load(rng_file, weights_only=True)
    torch.manual_seed(12345)
    state["torch"] = torch.get_rng_state()
    torch.save(state, rng_file)
    resumed = cli("pretrain", str(recipe), "--out", str(tmp_path / "resumed"), "--resume")
    assert resumed.returncode == 0, resumed.stderr
    last_a = read_metrics(straight_run / "metrics.jsonl")[-1]["train_loss"]
    last_b = read_metrics(tmp_path / "resumed" / "metrics.jsonl")[-1]["train_loss"]
    assert abs(last_a - last_b) > 1e-6
    assert json.loads((tmp_path / "resumed" / "eval.json").read_text())["steps"] == 2 * N

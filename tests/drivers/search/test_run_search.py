"""run_search: trial 0 is the recipe as it is, the outputs and the best recipe, refusals, with the
training replaced by a formula; and a real search, killed and resumed, and pruned."""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from search_files import write

from peaufine.drivers.search.run import run_search
from peaufine.drivers.search.space import baseline_params, load_space
from peaufine.errors import RecipeError, RunDirError
from peaufine.recipe import load_recipe

# -- run_search, with the training replaced by a formula ---------------------------------------------


@pytest.fixture
def fake_training(monkeypatch):
    """run_stage writes a finished run whose val_loss is a bowl in log10(lr), minimum at lr = 1e-3."""
    import peaufine.results
    import peaufine.stages

    recipes = {}

    def run_stage(recipe, out, *, overwrite=False, resume=False, tracker=None):
        out.mkdir(parents=True, exist_ok=True)
        (out / "eval.json").write_text("{}", encoding="utf-8")
        recipes[out.name] = recipe
        return {}

    def run_metrics(run_dir):
        recipe = recipes[Path(run_dir).name]
        return {"val_loss": 1.0 + (math.log10(recipe.train.lr) + 3) ** 2, "steps": 10.0}

    monkeypatch.setattr(peaufine.stages, "run_stage", run_stage)
    monkeypatch.setattr(peaufine.stages, "check_stage", lambda recipe: None)  # no model to check
    monkeypatch.setattr(peaufine.results, "run_metrics", run_metrics)
    return recipes


def sft_files(tmp_path: Path) -> tuple[Path, Path]:
    recipe = write(
        tmp_path / "recipe.yaml",
        """
        stage: sft
        model: {source: somewhere, adapter: {kind: lora, r: 8}}
        train: {lr: 5.0e-4, min_lr: 1.0e-5, max_steps: 10}
        """,
    )
    space = write(
        tmp_path / "space.yaml",
        """
        train.lr: {type: float, low: 1.0e-4, high: 3.0e-3, log: true}
        model.adapter.r: {type: categorical, choices: [4, 8, 16]}
        """,
    )
    return recipe, space


def quiet():
    from peaufine.engine.track import Tracker

    return Tracker(enabled=False)


@pytest.mark.parametrize("sampler", ["tpe", "random"])
def test_trial_0_is_the_recipe_unmodified(tmp_path, fake_training, sampler):
    recipe_file, space_file = sft_files(tmp_path)
    result = run_search(recipe_file, space_file, tmp_path / "out", trials=6, sampler=sampler, tracker=quiet())
    assert result.trials[0]["params"] == {"train.lr": 5e-4, "model.adapter.r": 8}
    assert fake_training["trial-0000"] == load_recipe(recipe_file)
    assert result.baseline_value == pytest.approx(1.0 + (math.log10(5e-4) + 3) ** 2)
    assert len({json.dumps(r["params"]) for r in result.trials}) == 6  # the others are sampled


def test_run_search_writes_its_outputs_and_the_best_recipe(tmp_path, fake_training):
    recipe_file, space_file = sft_files(tmp_path)
    out = tmp_path / "out"
    result = run_search(recipe_file, space_file, out, trials=8, seed=1, tracker=quiet())
    rows = [json.loads(line) for line in (out / "trials.jsonl").read_text().splitlines()]
    assert rows == json.loads(json.dumps(result.trials))
    assert [r["trial"] for r in rows] == list(range(8)) and {r["state"] for r in rows} == {"COMPLETE"}
    best = min(rows, key=lambda r: r["value"])
    assert (result.best_trial, result.best_value) == (best["trial"], best["value"])
    summary = json.loads((out / "study.json").read_text())
    assert summary["best"]["trial"] == best["trial"] and summary["trials"] == 8
    assert summary["baseline"] == {"trial": 0, "value": rows[0]["value"]}
    best_recipe = load_recipe(out / "best-recipe.yaml")
    assert best_recipe.train.lr == best["params"]["train.lr"]
    assert best_recipe.model.adapter.r == best["params"]["model.adapter.r"]
    assert best_recipe.train.min_lr == 1e-5  # everything else is the user's recipe
    assert (out / "best-recipe.yaml").read_text().startswith("# peaufine search: the best of 8 trials")
    assert (out / "history.png").stat().st_size > 0 and (out / "params.png").stat().st_size > 0

    again = run_search(recipe_file, space_file, out, trials=10, seed=1, tracker=quiet())
    assert again.trials[:8] == result.trials  # resumed: the first 8 kept, 2 more run
    assert len(again.trials) == 10


def test_a_search_refuses_an_out_folder_holding_another_search(tmp_path, fake_training):
    recipe_file, space_file = sft_files(tmp_path)
    out = tmp_path / "out"
    run_search(recipe_file, space_file, out, trials=2, tracker=quiet())
    with pytest.raises(RunDirError, match=r"holds a search over another metric.*use another --out"):
        run_search(recipe_file, space_file, out, trials=2, metric="final_val_loss", tracker=quiet())
    # the default warmup is a tenth of the run, so it moves with max_steps: both are named
    with pytest.raises(RunDirError, match=r"another recipe \(train.max_steps, train.warmup_steps\)"):
        run_search(recipe_file, space_file, out, trials=2, overrides=["train.max_steps=20"], tracker=quiet())


def test_a_metric_the_runs_do_not_report_stops_the_search_at_trial_0(tmp_path, fake_training):
    recipe_file, space_file = sft_files(tmp_path)
    out = tmp_path / "out"
    with pytest.raises(RecipeError, match=r"reports no 'val_losss'\. did you mean 'val_loss'"):
        run_search(recipe_file, space_file, out, trials=3, metric="val_losss", tracker=quiet())
    assert len(fake_training) == 1
    # nothing finished, so the corrected command starts the search afresh in the same folder
    result = run_search(recipe_file, space_file, out, trials=3, tracker=quiet())
    assert [r["state"] for r in result.trials] == ["COMPLETE"] * 3
    assert result.trials[0]["params"] == {"train.lr": 5e-4, "model.adapter.r": 8}


def test_pruning_a_maximised_metric_is_refused(tmp_path, fake_training):
    recipe_file, space_file = sft_files(tmp_path)
    with pytest.raises(RecipeError, match="--prune median: pruning compares validation losses"):
        run_search(recipe_file, space_file, tmp_path / "out", trials=3, metric="val_accuracy", prune="median")
    assert not fake_training


def test_a_recipe_value_outside_the_space_is_noted(tmp_path):
    recipe_file, space_file = sft_files(tmp_path)
    space = load_space(space_file)
    recipe = load_recipe(recipe_file, ["train.lr=1.0e-2", "model.adapter.r=32"])
    params, notes = baseline_params(space, recipe)
    assert params == {"train.lr": 1e-2}  # a choice not in the list cannot be enqueued; it is sampled
    assert any("train.lr" in n and "outside the space" in n for n in notes)
    assert any("model.adapter.r" in n and "not among the choices" in n for n in notes)


# -- a real search, killed and resumed ----------------------------------------------------------------


def tiny_pretrain(tmp_path: Path) -> tuple[Path, Path]:
    import random

    rng = random.Random(0)
    words = ["alpha", "beta", "gamma", "delta", "river", "stone", "north", "light", "seven"]
    paragraphs = [" ".join(rng.choice(words) for _ in range(rng.randint(20, 60))) for _ in range(40)]
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("\n\n".join(paragraphs), encoding="utf-8")
    recipe = write(
        tmp_path / "recipe.yaml",
        f"""
        model:
          source: llama-tiny
          config: {{hidden_size: 32, intermediate_size: 64, num_hidden_layers: 1,
                    num_attention_heads: 2, num_key_value_heads: 2}}
          tokenizer: {{kind: char}}
        data: {{source: {corpus}, block_size: 16, validation_fraction: 0.1}}
        train: {{max_steps: 10, batch_size: 4, lr: 1.0e-2, warmup_steps: 2, log_every: 5, device: cpu}}
        eval: {{every: 5, samples: 0}}
        """,
    )
    space = write(
        tmp_path / "space.yaml",
        """
        train.lr: {type: float, low: 1.0e-3, high: 3.0e-2, log: true}
        train.weight_decay: {type: float, low: 0.0, high: 0.1}
        """,
    )
    return recipe, space


# The first worker: real trials, except that trial 2 hangs (as a run would that the machine kills).
KILLED_WORKER = """
import sys, time
from pathlib import Path
from peaufine.drivers.search.run import run_search
from peaufine.engine.track import Tracker
import peaufine.stages

real_run_stage = peaufine.stages.run_stage

def run_stage(recipe, out, **kwargs):
    if out.name == "trial-0002":
        (out.parent / "hanging").write_text("trial 2")
        time.sleep(600)
    return real_run_stage(recipe, out, **kwargs)

peaufine.stages.run_stage = run_stage
run_search(Path(sys.argv[1]), Path(sys.argv[2]), Path(sys.argv[3]), trials=4, sampler="random",
                  heartbeat=1.0, grace=3.0, tracker=Tracker(enabled=False))
"""


@pytest.mark.slow
def test_a_killed_search_resumes_without_repeating_finished_trials(tmp_path):
    from peaufine.engine.track import Tracker

    recipe, space = tiny_pretrain(tmp_path)
    out = tmp_path / "search"
    worker = subprocess.Popen(
        [sys.executable, "-c", KILLED_WORKER, str(recipe), str(space), str(out)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    deadline = time.monotonic() + 180
    while not (out / "trials" / "hanging").exists():
        assert worker.poll() is None, worker.stderr.read().decode()
        assert time.monotonic() < deadline, "the first worker never reached trial 2"
        time.sleep(0.1)
    os.kill(worker.pid, signal.SIGKILL)
    worker.wait()  # reaped: its pid no longer answers

    before = [json.loads(line) for line in (out / "trials.jsonl").read_text().splitlines()]
    assert [(r["trial"], r["state"]) for r in before] == [(0, "COMPLETE"), (1, "COMPLETE")]
    evals = {n: (out / "trials" / f"trial-{n:04d}" / "eval.json").stat().st_mtime_ns for n in (0, 1)}

    result = run_search(
        recipe,
        space,
        out,
        trials=4,
        sampler="random",
        heartbeat=1.0,
        grace=3.0,
        tracker=Tracker(enabled=False),
    )
    rows = result.trials
    assert rows[:2] == before  # the finished trials, as they were
    for n, mtime in evals.items():  # and not run again
        assert (out / "trials" / f"trial-{n:04d}" / "eval.json").stat().st_mtime_ns == mtime
    assert rows[2]["state"] == "FAIL" and rows[2]["error"] is None  # left running by the killed worker
    retries = [r for r in rows if r["retry_of"] == 2]
    assert len(retries) == 1 and retries[0]["state"] == "COMPLETE"
    assert retries[0]["params"] == rows[2]["params"]  # its values, run again
    assert sum(r["state"] == "COMPLETE" for r in rows) == 4 and len(rows) == 5
    assert json.loads((out / "study.json").read_text())["trials"] == 4
    assert rows[0]["params"] == {"train.lr": 1e-2, "train.weight_decay": 0.1}  # trial 0: the recipe


@pytest.mark.slow
def test_real_runs_are_pruned_by_their_validation_loss(tmp_path):
    from peaufine.engine.track import Tracker

    recipe, _ = tiny_pretrain(tmp_path)
    space = write(tmp_path / "lr.yaml", "train.lr: {type: categorical, choices: [1.0e-2, 1.0e-6]}")
    out = tmp_path / "out"
    result = run_search(
        recipe,
        space,
        out,
        trials=4,
        sampler="random",
        prune="median",
        overrides=["train.max_steps=20"],
        tracker=Tracker(enabled=False),
    )
    # lr 1e-6 barely moves from the initial loss: once two trials have finished, it is pruned at its
    # first validation (step 5 of 20); lr 1e-2 never is
    late = result.trials[2:]
    assert any(row["params"]["train.lr"] == 1.0e-6 for row in late)  # seed 0 draws one
    for row in late:
        slow = row["params"]["train.lr"] == 1.0e-6
        assert row["state"] == ("PRUNED" if slow else "COMPLETE"), row
        if slow:
            steps = [json.loads(line)["step"] for line in (out / row["run"] / "metrics.jsonl").open()]
            assert max(steps) == 5

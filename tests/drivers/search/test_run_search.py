"""Search: the space file, the objective expression, the study loop (grid coverage, TPE vs random,
pruning, retry of trials whose worker died) and a real search killed and resumed."""

from __future__ import annotations

import itertools
import json
import math
import os
import signal
import statistics
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import optuna
import pytest
import yaml

from peaufine.drivers.search import run as search
from peaufine.engine.track import MetricsLog, add_sink, detach_sinks
from peaufine.errors import RecipeError, RunDirError
from peaufine.recipe import load_recipe


def write(path: Path, text: str) -> Path:
    path.write_text(textwrap.dedent(text), encoding="utf-8")
    return path


def journal_study(path: Path, sampler: optuna.samplers.BaseSampler, **kwargs) -> optuna.Study:
    storage = search.open_storage(path.parent, str(path), heartbeat=1.0, grace=2.0)
    return optuna.create_study(storage=storage, study_name="t", sampler=sampler, **kwargs)


# -- the space file ---------------------------------------------------------------------------------


BAD_SPACES = [
    ("train.lr: {type: floats, low: 1, high: 2}", "train.lr", "unknown type 'floats'"),
    ("train.lr: {type: float, low: 0.1, high: 0.01}", "train.lr", "must be below `high`"),
    ("train.lr: {type: float, low: 0, high: 0.01, log: true}", "train.lr", "needs `low` > 0"),
    ("model.adapter.r: {type: categorical, choices: []}", "model.adapter.r", "non-empty list"),
    ("train.lr: {type: float, lo: 0.1, high: 1}", "train.lr", "unknown field 'lo'"),
    ("train.lr: {type: float, low: 1.0e-4, high: 1.0e-2, log: true, step: 1.0e-4}", "train.lr", "cannot be"),
    ("train.max_steps: {type: int, low: 1.5, high: 8}", "train.max_steps", "whole-number"),
    ("train.lr: 0.001", "train.lr", "expected a mapping"),
]


@pytest.mark.parametrize(("text", "key", "problem"), BAD_SPACES)
def test_a_bad_space_file_names_the_file_and_key(tmp_path, text, key, problem):
    space_file = write(tmp_path / "space.yaml", text)
    with pytest.raises(RecipeError) as error:
        search.load_space(space_file)
    message = str(error.value)
    assert str(space_file) in message and f"'{key}'" in message and problem in message
    assert "\n" not in message


def test_a_space_key_the_recipe_refuses_fails_before_any_trial(tmp_path):
    space_file = write(tmp_path / "space.yaml", "model.adapter.rr: {type: categorical, choices: [4, 8]}")
    space = search.load_space(space_file)
    with pytest.raises(RecipeError) as error:
        search.check_space_keys(space, {"stage": "sft"}, str(space_file))
    message = str(error.value)
    assert str(space_file) in message and "model.adapter.rr" in message
    assert "did you mean 'model.adapter.r'" in message

    # a learning rate below the recipe's fixed floor is refused at the range's low end
    space_file = write(tmp_path / "lr.yaml", "train.lr: {type: float, low: 1.0e-5, high: 1.0e-3, log: true}")
    with pytest.raises(RecipeError, match=r"min_lr \(5e-05\) must not exceed lr \(1e-05\)"):
        search.check_space_keys(search.load_space(space_file), {"train": {"min_lr": 5e-5}}, str(space_file))


def test_the_example_sft_space_is_valid_for_the_packaged_sft_recipe():
    from importlib import resources

    space = search.load_space(Path(__file__).parents[3] / "recipes" / "search-sft-space.yaml")
    assert set(space) == {"train.lr", "model.adapter.r", "train.weight_decay"}
    recipe_file = resources.files("peaufine") / "recipes" / "world-sft.yaml"
    with resources.as_file(recipe_file) as path:
        base = yaml.safe_load(Path(path).read_text(encoding="utf-8"))
        recipe = load_recipe(Path(path))
    search.check_space_keys(space, base, "search-sft-space.yaml")
    params, notes = search.baseline_params(space, recipe)
    assert params == {"train.lr": 5e-4, "model.adapter.r": 16, "train.weight_decay": 0.0} and notes == []


# -- the objective expression -----------------------------------------------------------------------


def test_metric_expressions_evaluate_like_arithmetic():
    metrics = {"val_loss": 2.0, "forgetting.relative_change": 0.3, "a": 5.0, "b": 3.0, "c": 1.0, "x-y": 7.0}
    cases = {
        "val_loss": 2.0,
        "val_loss + 0.5 * forgetting.relative_change": 2.15,
        "a - b - c": 1.0,  # left to right, not a - (b - c)
        "a / b / c": 5.0 / 3.0,
        "-(a + b) * 2": -16.0,
        "a - -b": 8.0,
        "2e-1 * a + .5": 1.5,
        "(a + b) / (a - b)": 4.0,
        "`x-y` * 2": 14.0,
    }
    for text, expected in cases.items():
        assert search.parse_metric(text).value(metrics) == pytest.approx(expected), text
    assert math.isnan(search.parse_metric("a / (b - 3)").value(metrics))
    assert search.parse_metric("val_loss + 0.5 * val_loss").names == ("val_loss",)


@pytest.mark.parametrize("text", ["", "val_loss +", "(val_loss", "val_loss $ 2", "val_loss 2", "* a"])
def test_a_malformed_metric_is_one_clear_error(text):
    with pytest.raises(RecipeError, match="--metric"):
        search.parse_metric(text)


def test_an_unknown_metric_name_lists_close_matches():
    expression = search.parse_metric("val_los + 0.1 * answers.heldout.after.exact_match")
    with pytest.raises(RecipeError) as error:
        expression.value({"val_loss": 1.0, "train_loss": 2.0, "answers.heldout.after.exact_match": 0.5})
    assert "no 'val_los'" in str(error.value) and "did you mean 'val_loss'" in str(error.value)


def test_the_direction_follows_the_metric_unless_given():
    direction = search.metric_direction
    parse = search.parse_metric
    assert direction(parse("val_loss")) == "minimize"
    assert direction(parse("final_val_loss")) == "minimize"
    assert direction(parse("answers.heldout.after.exact_match")) == "maximize"
    assert direction(parse("val_accuracy")) == "maximize"
    assert direction(parse("reward_mean")) == "maximize"
    assert direction(parse("val_loss + 0.5 * forgetting.relative_change")) == "minimize"
    assert direction(parse("val_loss"), "maximize") == "maximize"
    with pytest.raises(RecipeError, match="--direction"):
        direction(parse("steps"))
    with pytest.raises(RecipeError, match="--direction"):
        direction(parse("val_loss"), "down")


# -- the loop ---------------------------------------------------------------------------------------


def test_grid_search_visits_each_point_exactly_once(tmp_path):
    space = search.load_space(
        write(
            tmp_path / "space.yaml",
            """
            a: {type: categorical, choices: [x, y, z]}
            b: {type: int, low: 1, high: 4, step: 3}
            c: {type: float, low: 0.0, high: 1.0, step: 0.5}
            """,
        )
    )
    n = search.resolve_trials(None, "grid", space)
    assert n == 3 * 2 * 3
    with pytest.raises(RecipeError, match="only 18 points"):
        search.resolve_trials(19, "grid", space)
    visited = []

    def objective(params, trial):
        visited.append((params["a"], params["b"], params["c"]))
        if len(visited) == 5:  # a failed trial still uses up its grid point
            raise search.TrialFailed("diverged")
        return 0.0

    study = journal_study(tmp_path / "grid.journal", search.make_sampler("grid", space, seed=3, trials=n))
    search.optimize(study, space, objective, n)
    expected = list(itertools.product(["x", "y", "z"], [1, 4], [0.0, 0.5, 1.0]))
    assert sorted(visited) == sorted(expected)
    assert len(study.trials) == n
    search.optimize(study, space, objective, n)  # finished: running it again adds nothing
    assert len(visited) == n

    continuous = search.load_space(write(tmp_path / "c.yaml", "lr: {type: float, low: 0.1, high: 1}"))
    with pytest.raises(RecipeError, match="needs its `step` or an explicit `grid"):
        search.resolve_trials(None, "grid", continuous)


def bowl(params: dict, trial) -> float:
    """A quadratic bowl in log10(lr), x and y; minimum 0 at lr=1e-3, x=0.3, y=-0.5."""
    return (math.log10(params["lr"]) + 3) ** 2 / 4 + (params["x"] - 0.3) ** 2 + (params["y"] + 0.5) ** 2


def test_tpe_finds_the_bottom_of_a_bowl_faster_than_random(tmp_path):
    space = search.load_space(
        write(
            tmp_path / "space.yaml",
            """
            lr: {type: float, low: 1.0e-5, high: 1.0e-1, log: true}
            x: {type: float, low: -1, high: 1}
            y: {type: float, low: -1, high: 1}
            """,
        )
    )
    best_after_20 = {}
    for name in ("tpe", "random"):
        bests = []
        for seed in range(8):
            study = optuna.create_study(sampler=search.make_sampler(name, space, seed=seed, trials=30))
            search.optimize(study, space, bowl, 30)
            values = [t.value for t in study.trials]
            assert len(values) == 30
            bests.append(min(values[:20]))
        best_after_20[name] = statistics.mean(bests)
    # measured: tpe 0.076, random 0.180 (mean over 8 seeds of the best of the first 20 trials)
    assert best_after_20["tpe"] < 0.6 * best_after_20["random"], best_after_20


def test_a_clearly_bad_trial_is_pruned_through_a_metric_sink(tmp_path):
    space = search.load_space(write(tmp_path / "space.yaml", "x: {type: float, low: 0.0, high: 1.0}"))
    study = journal_study(
        tmp_path / "prune.journal", optuna.samplers.RandomSampler(seed=0), pruner=search.make_pruner("median")
    )
    for x in (0.3, 0.1, 0.12, 0.95):  # trial 2 stays below the median of 0 and 1
        study.enqueue_trial({"x": x})
    logged = {}

    def objective(params, trial):
        # the engine's path: metrics.jsonl rows go to the sinks attached to that file
        path = tmp_path / f"trial-{trial.number}" / "metrics.jsonl"
        path.parent.mkdir()
        add_sink(path, search.PruningSink(trial))
        try:
            log = MetricsLog(path)
            for step in range(1, 11):
                logged[trial.number] = step
                log.write({"step": step, "train_loss": 5.0, "val_loss": params["x"] + 1 / step})
        finally:
            detach_sinks(path)
        return params["x"] + 0.1

    search.optimize(study, space, objective, 4)
    states = [t.state.name for t in study.trials]
    assert states == ["COMPLETE", "COMPLETE", "COMPLETE", "PRUNED"]
    bad = study.trials[3]
    assert logged[3] == 1  # stopped at its first validation, not after ten
    assert bad.value == pytest.approx(0.95 + 1.0)  # a pruned trial's value: its last validation loss
    assert all(logged[n] == 10 for n in (0, 1, 2))
    rows = search.trial_rows(study)
    assert rows[3]["state"] == "PRUNED" and rows[3]["value"] == pytest.approx(1.95)


def optimize_within(seconds: float, *args, **kwargs) -> None:
    """`search.optimize`, failing the test if it is still waiting after `seconds`."""
    errors = []

    def target():
        try:
            search.optimize(*args, **kwargs)
        except BaseException as exc:
            errors.append(exc)

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    thread.join(seconds)
    assert not thread.is_alive(), f"optimize still waiting after {seconds} s"
    if errors:
        raise errors[0]


def running_trial_elsewhere(path: Path, space: search.Space, **attrs) -> optuna.trial.FrozenTrial:
    """A trial another worker (its own storage handle on the same journal) started and left running."""
    other = optuna.load_study(
        study_name="t", storage=search.open_storage(path.parent, str(path), heartbeat=1, grace=2)
    )
    trial = other.ask()
    for dim in space.values():
        dim.suggest(trial)
    for key, value in attrs.items():
        trial.set_user_attr(key, value)
    return next(t for t in other.get_trials() if t.number == trial.number)


def test_a_trial_whose_worker_stops_beating_is_retried_after_the_grace_period(tmp_path):
    space = search.load_space(write(tmp_path / "space.yaml", "x: {type: float, low: 0.0, high: 1.0}"))
    journal = tmp_path / "hb.journal"
    study = journal_study(journal, optuna.samplers.RandomSampler(seed=0))
    # a worker on another machine: no process to look up, only its heartbeat tells it is alive
    lost = running_trial_elsewhere(
        journal,
        space,
        **{search.HOST_ATTR: "elsewhere", search.PID_ATTR: 1, search.HEARTBEAT_ATTR: time.time()},
    )
    seen = []
    start = time.monotonic()
    optimize_within(
        20, study, space, lambda p, t: seen.append((t.number, p["x"])) or p["x"], 1, heartbeat=0.2, grace=1.0
    )
    waited = time.monotonic() - start
    assert waited >= 1.0  # it waited for the running trial until its heartbeat was stale
    trials = study.get_trials()
    assert trials[lost.number].state.name == "FAIL"
    retry = trials[-1]
    assert retry.user_attrs[search.RETRY_ATTR] == lost.number and retry.state.name == "COMPLETE"
    assert seen == [(retry.number, lost.params["x"])]  # the same values, run again
    assert search.ERROR_ATTR not in trials[lost.number].user_attrs  # it does not count as finished
    assert len(search.finished_trials(study)) == 1


def test_a_trial_of_a_dead_process_on_this_machine_is_retried_at_once(tmp_path):
    import socket

    space = search.load_space(write(tmp_path / "space.yaml", "x: {type: float, low: 0.0, high: 1.0}"))
    journal = tmp_path / "dead.journal"
    study = journal_study(journal, optuna.samplers.RandomSampler(seed=0))
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    lost = running_trial_elsewhere(
        journal,
        space,
        **{
            search.HOST_ATTR: socket.gethostname(),
            search.PID_ATTR: dead.pid,
            search.HEARTBEAT_ATTR: time.time(),
        },
    )
    start = time.monotonic()
    optimize_within(20, study, space, lambda p, t: p["x"], 1, heartbeat=5.0, grace=60.0)
    assert time.monotonic() - start < 5.0  # no waiting for the 60-second grace
    assert study.get_trials()[-1].params == lost.params


def test_an_rdb_storage_retries_a_stale_trial_through_optunas_own_heartbeat(tmp_path):
    space = search.load_space(write(tmp_path / "space.yaml", "x: {type: float, low: 0.0, high: 1.0}"))
    url = f"sqlite:///{tmp_path / 'study.db'}"
    storage = search.open_storage(tmp_path, url, heartbeat=1.0, grace=1.0)
    study = optuna.create_study(
        storage=storage, study_name="t", sampler=optuna.samplers.RandomSampler(seed=0)
    )
    # a worker elsewhere that beat once, through Optuna's heartbeat table, and then went silent
    other = optuna.load_study(
        study_name="t", storage=search.open_storage(tmp_path, url, heartbeat=1, grace=1)
    )
    with pytest.warns(UserWarning, match="Heartbeat of storage"):  # asked outside study.optimize
        lost = other.ask()
    x = space["x"].suggest(lost)
    lost.set_user_attr(search.HOST_ATTR, "elsewhere")
    lost.storage.record_heartbeat(lost._trial_id)
    seen = []
    optimize_within(20, study, space, lambda p, t: seen.append(p["x"]) or p["x"], 1, heartbeat=1.0, grace=1.0)
    trials = study.get_trials()
    assert trials[lost.number].state.name == "FAIL"
    assert seen == [x] and trials[-1].user_attrs[search.RETRY_ATTR] == lost.number


def test_an_interrupted_trial_runs_again_on_the_next_call(tmp_path):
    space = search.load_space(write(tmp_path / "space.yaml", "x: {type: float, low: 0.0, high: 1.0}"))
    study = journal_study(tmp_path / "int.journal", optuna.samplers.RandomSampler(seed=0))
    calls = []

    def interrupted(params, trial):
        calls.append(params["x"])
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        search.optimize(study, space, interrupted, 2)
    search.optimize(study, space, lambda p, t: calls.append(p["x"]) or p["x"], 2)
    assert calls[1] == calls[0] and len(calls) == 3
    assert [t.state.name for t in study.trials] == ["FAIL", "COMPLETE", "COMPLETE"]


WORKER = """
import os, sys, time
from pathlib import Path
import optuna
from peaufine.drivers.search import run as search
ready = Path(sys.argv[2]).parent / "ready"
ready.mkdir(exist_ok=True)
(ready / str(os.getpid())).touch()
while len(list(ready.iterdir())) < 2:  # start together, whatever each one's import time
    time.sleep(0.02)
space = search.load_space(Path(sys.argv[1]))
storage = search.open_storage(Path(sys.argv[2]).parent, sys.argv[2], heartbeat=1.0, grace=5.0)
study = optuna.load_study(study_name="t", storage=storage, sampler=optuna.samplers.RandomSampler())
search.optimize(study, space, lambda p, t: time.sleep(0.1) or p["x"], int(sys.argv[3]))
"""


def test_two_worker_processes_share_one_search(tmp_path):
    space_file = write(tmp_path / "space.yaml", "x: {type: float, low: 0.0, high: 1.0}")
    journal = tmp_path / "workers.journal"
    study = journal_study(journal, optuna.samplers.RandomSampler(seed=0))
    workers = [
        subprocess.Popen([sys.executable, "-c", WORKER, str(space_file), str(journal), "16"])
        for _ in range(2)
    ]
    assert [w.wait(timeout=120) for w in workers] == [0, 0]
    trials = study.get_trials()
    assert 16 <= len(search.finished_trials(study)) <= 17  # two workers may both start the last one
    assert all(t.state.name == "COMPLETE" for t in trials)
    assert len({t.user_attrs[search.PID_ATTR] for t in trials}) == 2  # both took a share


# -- run_search, with the training replaced by a formula ---------------------------------------------


@pytest.fixture
def fake_training(monkeypatch):
    """run_stage writes a finished run whose val_loss is a bowl in log10(lr), minimum at lr = 1e-3."""
    from peaufine.stages import dispatch

    recipes = {}

    def run_stage(recipe, out, *, overwrite=False, resume=False, tracker=None):
        out.mkdir(parents=True, exist_ok=True)
        (out / "eval.json").write_text("{}", encoding="utf-8")
        recipes[out.name] = recipe
        return {}

    def run_metrics(run_dir):
        recipe = recipes[Path(run_dir).name]
        return {"val_loss": 1.0 + (math.log10(recipe.train.lr) + 3) ** 2, "steps": 10.0}

    monkeypatch.setattr(dispatch, "run_stage", run_stage)
    monkeypatch.setattr(dispatch, "run_metrics", run_metrics)
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
    result = search.run_search(
        recipe_file, space_file, tmp_path / "out", trials=6, sampler=sampler, tracker=quiet()
    )
    assert result.trials[0]["params"] == {"train.lr": 5e-4, "model.adapter.r": 8}
    assert fake_training["trial-0000"] == load_recipe(recipe_file)
    assert result.baseline_value == pytest.approx(1.0 + (math.log10(5e-4) + 3) ** 2)
    assert len({json.dumps(r["params"]) for r in result.trials}) == 6  # the others are sampled


def test_run_search_writes_its_outputs_and_the_best_recipe(tmp_path, fake_training):
    recipe_file, space_file = sft_files(tmp_path)
    out = tmp_path / "out"
    result = search.run_search(recipe_file, space_file, out, trials=8, seed=1, tracker=quiet())
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

    again = search.run_search(recipe_file, space_file, out, trials=10, seed=1, tracker=quiet())
    assert again.trials[:8] == result.trials  # resumed: the first 8 kept, 2 more run
    assert len(again.trials) == 10


def test_a_search_refuses_an_out_folder_holding_another_search(tmp_path, fake_training):
    recipe_file, space_file = sft_files(tmp_path)
    out = tmp_path / "out"
    search.run_search(recipe_file, space_file, out, trials=2, tracker=quiet())
    with pytest.raises(RunDirError, match=r"holds a search over another metric.*use another --out"):
        search.run_search(recipe_file, space_file, out, trials=2, metric="final_val_loss", tracker=quiet())
    with pytest.raises(RunDirError, match=r"another recipe \(train.max_steps\)"):
        search.run_search(
            recipe_file, space_file, out, trials=2, overrides=["train.max_steps=20"], tracker=quiet()
        )


def test_a_metric_the_runs_do_not_report_stops_the_search_at_trial_0(tmp_path, fake_training):
    recipe_file, space_file = sft_files(tmp_path)
    out = tmp_path / "out"
    with pytest.raises(RecipeError, match=r"reports no 'val_losss'\. did you mean 'val_loss'"):
        search.run_search(recipe_file, space_file, out, trials=3, metric="val_losss", tracker=quiet())
    assert len(fake_training) == 1
    # nothing finished, so the corrected command starts the search afresh in the same folder
    result = search.run_search(recipe_file, space_file, out, trials=3, tracker=quiet())
    assert [r["state"] for r in result.trials] == ["COMPLETE"] * 3
    assert result.trials[0]["params"] == {"train.lr": 5e-4, "model.adapter.r": 8}


def test_pruning_a_maximised_metric_is_refused(tmp_path, fake_training):
    recipe_file, space_file = sft_files(tmp_path)
    with pytest.raises(RecipeError, match="--prune median: pruning compares validation losses"):
        search.run_search(
            recipe_file, space_file, tmp_path / "out", trials=3, metric="val_accuracy", prune="median"
        )
    assert not fake_training


def test_a_recipe_value_outside_the_space_is_noted(tmp_path):
    recipe_file, space_file = sft_files(tmp_path)
    space = search.load_space(space_file)
    recipe = load_recipe(recipe_file, ["train.lr=1.0e-2", "model.adapter.r=32"])
    params, notes = search.baseline_params(space, recipe)
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
from peaufine.drivers.search import run as search
from peaufine.engine.track import Tracker
from peaufine.stages import dispatch

real_run_stage = dispatch.run_stage

def run_stage(recipe, out, **kwargs):
    if out.name == "trial-0002":
        (out.parent / "hanging").write_text("trial 2")
        time.sleep(600)
    return real_run_stage(recipe, out, **kwargs)

dispatch.run_stage = run_stage
search.run_search(Path(sys.argv[1]), Path(sys.argv[2]), Path(sys.argv[3]), trials=4, sampler="random",
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

    result = search.run_search(
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
    result = search.run_search(
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

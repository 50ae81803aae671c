"""The Shakespeare benchmark's quick mode, end to end: it learns, and fit() does what the bare loop does.

Timings are printed by the benchmark, never asserted: this machine is shared and they swing 3-15x.
"""

from __future__ import annotations

import math

import pytest
from quick_run import REPO, run_quick

DATA = REPO / ".." / "shared" / "data" / "tinyshakespeare" / "input.txt"


@pytest.fixture(scope="module")
def quick_result() -> dict:
    if not DATA.is_file():
        pytest.skip(f"tiny Shakespeare is not at {DATA.resolve()}")
    # --quick, shortened further (150 iterations, 2 rounds of 10 steps) to stay well under 2 minutes.
    return run_quick(
        "pretrain_shakespeare.py", "--iters", "150", "--rounds", "2", "--round-steps", "10", timeout=600
    )


@pytest.mark.slow
def test_quick_run_learns_from_chance_level(quick_result: dict) -> None:
    r = quick_result
    # An untrained model predicts ~uniformly over the 65 characters + 8 special tokens: ln(73) = 4.29.
    assert r["vocab_size"] == 73
    assert abs(r["val_loss_initial"] - math.log(r["vocab_size"])) < 0.15
    # 150 steps of 768 characters get the validation loss far below chance (2.5 is typical).
    assert r["val_loss"] < 2.8
    assert r["final_train_loss"] < 2.8
    assert r["val_blocks"] == 512 < r["val_blocks_total"] == 1742


@pytest.mark.slow
def test_quick_run_measures_the_same_work_for_fit_and_the_bare_loop(quick_result: dict) -> None:
    r = quick_result
    # The peer optimises the same decay groups on the same schedule ...
    assert r["param_groups_match"] is True
    assert r["lr_schedule_max_abs_diff"] < 1e-12
    # ... and from the same weights on the same batches reaches the same losses, step by step:
    # only the reduction order differs (summed loss x 1/targets against a mean).
    assert r["overhead"]["eager"]["first_round_loss_max_abs_diff"] < 1e-4


@pytest.mark.slow
def test_quick_run_reports_usable_figures(quick_result: dict) -> None:
    r = quick_result
    assert r["threads"] == 1
    assert r["tokens_per_step"] == 12 * 64
    for value in (r["overhead_ratio"], r["tokens_per_s"], r["overhead"]["eager"]["bare_tokens_per_s"]):
        assert math.isfinite(value) and value > 0
    assert r["reference"]["tokens_per_s"] == 7300.0
    assert r["vs_reference_tokens_per_s"] == pytest.approx(r["tokens_per_s"] / 7300.0)

"""The DPO-against-TRL benchmark's quick mode, end to end: both sides train the same pairs in the same
batches from the same weights, so they reach the same policy; the comparison's bookkeeping holds.
Timings are printed by the benchmark, never asserted.
"""

from __future__ import annotations

import importlib.util
import math
from pathlib import Path

import pytest
from quick_run import REPO, run_benchmark, run_quick

DATA = REPO / ".." / "shared" / "data" / "hh-rlhf" / "harmless-base-test.jsonl.gz"


@pytest.fixture(scope="module")
def quick_result() -> dict:
    if importlib.util.find_spec("trl") is None:
        pytest.skip("trl is not installed (the benchmark's peer; pip install 'peaufine[bench]')")
    if not DATA.is_file():
        pytest.skip(f"HH pairs are not at {DATA.resolve()}")
    return run_quick("dpo_vs_trl.py")


def test_missing_data_skips_with_exit_0(tmp_path: Path) -> None:
    done = run_benchmark("dpo_vs_trl.py", "--quick", "--data", str(tmp_path / "hh.jsonl.gz"), timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("SKIP: HH pairs not found")
    assert "RESULT" not in done.stdout


@pytest.mark.slow
def test_both_sides_train_the_same_pairs_in_the_same_batches(quick_result: dict) -> None:
    r, checks = quick_result, quick_result["checks"]
    assert r["quick"] is True and r["settings"]["reps"] == 1
    steps = r["settings"]["steps"]
    assert checks["steps"] == {"trl": steps, "peaufine": steps}
    # the pairs of every step, token for token (ids and response targets), as this script, TRL and
    # peaufine tokenized them; nothing truncated (every kept pair fits in max_length)
    assert checks["same_stream"] is True
    n = r["data"]["train_pairs"]
    assert checks["pairs"] == {"parent": n, "trl": n, "peaufine": n}
    # both reference passes score every training pair, once
    assert checks["reference_pairs"] == {"trl": n, "peaufine": n}
    assert checks["tokens_per_step_ratio"] == 1.0
    # linear decay from the same peak, no warmup: the same rate at every step
    assert checks["lr_max_gap"] < 1e-12
    assert checks["same_decay_groups"] is True


@pytest.mark.slow
def test_same_batches_and_optimiser_give_the_same_policy(quick_result: dict) -> None:
    r = quick_result
    # before training the policy is its own reference: every margin is 0, the loss ln 2, all ties
    assert r["val_initial"]["loss"] == pytest.approx(math.log(2))
    assert r["val_initial"]["accuracy"] == 0.5
    for side in ("trl", "peaufine"):
        # 20 steps move the held-out loss below ln 2 (0.681 measured) and win most pairs (0.63)
        assert r[side]["val_loss"] < math.log(2) - 0.003, side
        assert r[side]["val_accuracy"] > 0.55, side
    # only floating-point reduction orders differ (TRL's tiled LM head, its fused AdamW): the logged
    # training losses and the held-out scores agree (3e-8 and 1e-8 measured)
    assert r["checks"]["train_loss_max_gap"] < 1e-4
    assert abs(r["val_loss_delta"]) < 1e-3
    assert abs(r["val_accuracy_delta"]) <= 0.02
    assert r["val_loss_delta"] == pytest.approx(r["peaufine"]["val_loss"] - r["trl"]["val_loss"])


@pytest.mark.slow
def test_reports_usable_figures(quick_result: dict) -> None:
    r = quick_result
    for side in ("trl", "peaufine"):
        figures = r[side]
        assert figures["threads"] == 1
        for key in ("tokens_per_s", "with_reference_tokens_per_s", "reference_s", "steps_per_s"):
            assert math.isfinite(figures[key]) and figures[key] > 0, (side, key)
        # the reference pass is paid before training, so counting it lowers the rate
        assert figures["with_reference_tokens_per_s"] < figures["tokens_per_s"]
        assert figures["rss_peak_mb"] >= figures["rss_before_train_mb"] > 0
    assert r["speedup"] == pytest.approx(r["peaufine"]["tokens_per_s"] / r["trl"]["tokens_per_s"])
    assert r["speedup_with_reference"] == pytest.approx(
        r["peaufine"]["with_reference_tokens_per_s"] / r["trl"]["with_reference_tokens_per_s"]
    )

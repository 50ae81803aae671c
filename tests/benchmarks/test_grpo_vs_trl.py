"""The GRPO-against-TRL benchmark's quick mode, end to end: both sides roll out the same prompts, score
them with one reward function and learn it; the comparison's bookkeeping holds. Timings are printed by
the benchmark, never asserted.
"""

from __future__ import annotations

import importlib.util
import math

import pytest
from quick_run import import_benchmark, run_quick


@pytest.fixture(scope="module")
def quick_result() -> dict:
    if importlib.util.find_spec("trl") is None:
        pytest.skip("trl is not installed (the benchmark's peer; pip install 'peaufine[bench]')")
    return run_quick("grpo_vs_trl.py")


@pytest.fixture
def digit_share():
    return import_benchmark("grpo_vs_trl").digit_share


def test_the_reward_reads_both_completion_conventions(digit_share) -> None:
    # peaufine passes completions as text, TRL (conversational prompts) as one assistant message
    prompts = ["What is 2 plus 2?"] * 4
    texts = [" 4", "four", " 12 ab", "   "]
    assert digit_share(prompts, texts) == [1.0, 0.0, 0.5, 0.0]
    messages = [[{"role": "assistant", "content": t}] for t in texts]
    assert digit_share(prompts, messages, answer=["4"] * 4) == [1.0, 0.0, 0.5, 0.0]


@pytest.mark.slow
def test_both_sides_roll_out_the_same_prompts_the_same_way(quick_result: dict) -> None:
    r, checks = quick_result, quick_result["checks"]
    assert r["quick"] is True and r["settings"]["reps"] == 1
    steps = r["settings"]["steps"]
    assert checks["steps"] == {"trl": steps, "peaufine": steps}
    # every step's rollouts were scored once: one generation round feeds `passes` optimiser steps
    assert checks["rounds_scored"] == {"trl": steps, "peaufine": steps}
    # the prompt tokens of every completion of every step, as this script, TRL and peaufine had them
    assert checks["same_prompts"] is True
    assert checks["lr_max_gap"] == 0.0
    assert checks["same_decay_groups"] is True
    # equal prompts; completions differ only by where sampling stopped
    assert 0.95 < checks["tokens_per_step_ratio"] < 1.05
    s = r["settings"]
    assert checks["completions_per_step"] == s["prompts_per_step"] * s["group_size"]


@pytest.mark.slow
def test_both_sides_learn_the_reward(quick_result: dict) -> None:
    r = quick_result
    # an untrained model writes few digits (~0.12 sampled); 12 steps at lr 1e-3 reach ~0.35
    initial = r["held_out_initial"]["reward_sampled"]
    assert initial < 0.25
    for side in ("trl", "peaufine"):
        figures = r[side]
        assert figures["reward_sampled"] > initial + 0.08, side
        assert figures["train_reward_last"] > figures["train_reward_first"] + 0.05, side
        assert 0.0 <= figures["reward_greedy"] <= 1.0
    assert r["reward_sampled_delta"] == pytest.approx(
        r["peaufine"]["reward_sampled"] - r["trl"]["reward_sampled"]
    )


@pytest.mark.slow
def test_reports_usable_figures(quick_result: dict) -> None:
    r = quick_result
    for side in ("trl", "peaufine"):
        figures = r[side]
        assert figures["threads"] == 1
        for key in ("steps_per_s", "tokens_per_s"):
            assert math.isfinite(figures[key]) and figures[key] > 0, (side, key)
        assert figures["tokens_per_step"] > figures["completion_tokens_per_step"] > 0
        assert figures["rss_peak_mb"] >= figures["rss_before_train_mb"] > 0
    assert r["speedup"] == pytest.approx(r["peaufine"]["steps_per_s"] / r["trl"]["steps_per_s"])

"""Per-example losses add up to the mean loss evaluate_loss reports (task examples and general-text
blocks); the ratio intervals and the paired change behave as their constructions demand."""

from __future__ import annotations

import numpy as np
import pytest

from conftest import tiny_llama, variable_examples
from peaufine.data.batching import PackedBlocks, PaddedExamples
from peaufine.engine.fit import evaluate_loss
from peaufine.evaluate.example_losses import ExampleLosses, example_losses, loss_block
from peaufine.evaluate.sft import loss_change
from peaufine.evaluate.stats import paired_ratio_bootstrap, ratio_bootstrap
from peaufine.methods.lm import NextTokenLoss


def test_per_example_losses_sum_to_the_reported_task_loss(cpu_runtime):
    model = tiny_llama()
    examples = variable_examples(21)
    dataset = PaddedExamples(examples, pad_id=0)
    losses = example_losses(model, dataset, cpu_runtime, batch_size=4)
    reported = evaluate_loss(model, NextTokenLoss(), dataset, cpu_runtime, batch_size=16)
    assert len(losses.sums) == 21
    # each example's targets: the masked positions after the first token
    assert losses.targets == [sum(e.target_mask[1:]) for e in examples]
    assert sum(losses.sums) / sum(losses.targets) == pytest.approx(reported, rel=1e-6)
    assert model.training  # the mode it came in with
    # each example alone gives its own row's loss: padding changes nothing
    alone = example_losses(model, PaddedExamples(examples[3:4], pad_id=0), cpu_runtime)
    assert alone.sums[0] == pytest.approx(losses.sums[3], rel=1e-5)


def test_block_losses_over_the_first_rows_match_the_general_loss(cpu_runtime):
    model = tiny_llama()
    stream = np.random.default_rng(0).integers(4, 50, size=16 * 8 * 3 + 1).astype(np.int32)
    blocks = PackedBlocks(stream, 8)
    # the general loss measures the first max_batches batches of 16 blocks
    reported = evaluate_loss(model, NextTokenLoss(), blocks, cpu_runtime, batch_size=16, max_batches=2)
    losses = example_losses(model, blocks, cpu_runtime, rows=32)
    assert losses.targets == [8] * 32
    assert sum(losses.sums) / sum(losses.targets) == pytest.approx(reported, rel=1e-6)


def test_ratio_bootstrap_of_a_constant_ratio_is_that_ratio():
    estimate = ratio_bootstrap([2.0, 6.0, 10.0], [1, 3, 5])
    assert (estimate.value, estimate.low, estimate.high) == pytest.approx((2.0, 2.0, 2.0))
    # a ratio of sums, not a mean of ratios: (1 + 9) / (1 + 3) = 2.5, the mean of ratios is 2
    assert ratio_bootstrap([1.0, 9.0], [1, 3]).value == pytest.approx(2.5)


def test_paired_ratio_bootstrap_a_shift_per_token_is_measurable_and_a_symmetric_one_is_not():
    rng = np.random.default_rng(1)
    tokens = rng.integers(1, 20, size=40).astype(float)
    before = tokens * rng.uniform(1.0, 3.0, size=40)
    shifted = paired_ratio_bootstrap(before, tokens, before - 0.5 * tokens, tokens)
    assert shifted.difference == pytest.approx(-0.5)
    assert shifted.low == pytest.approx(-0.5) and shifted.high == pytest.approx(-0.5)
    assert shifted.measurable
    signs = np.where(np.arange(40) % 2 == 0, 1.0, -1.0)
    tokens_even = np.full(40, 10.0)
    wobble = paired_ratio_bootstrap(
        tokens_even * 2, tokens_even, tokens_even * (2 + 0.3 * signs), tokens_even
    )
    assert wobble.difference == pytest.approx(0.0, abs=1e-12)
    assert not wobble.measurable


def test_example_losses_give_intervals_and_a_paired_change():
    before = ExampleLosses([20.0, 30.0, 40.0, 10.0] * 5, [10, 10, 10, 10] * 5)
    after = ExampleLosses([s - 5.0 for s in before.sums], before.targets)
    change = after.minus(before)
    assert change.difference == pytest.approx(-0.5) and change.measurable
    block = loss_block(before)
    assert block["n"] == 20 and block["ci"][0] <= 2.5 <= block["ci"][1]
    assert loss_block(None) == {} and loss_block(ExampleLosses([], [])) == {}


def test_losses_without_targets_give_no_interval_and_no_change():
    empty = ExampleLosses([0.0, 0.0], [0, 0])
    assert not empty.has_targets and loss_block(empty) == {}
    assert loss_change(empty, empty, "task loss") == {}
    some = ExampleLosses([2.0, 4.0], [1, 2])
    block = loss_change(some, some, "task loss")
    assert block["change"]["difference"] == 0.0 and block["change"]["measurable"] is False
    assert block["before_ci"] == block["after_ci"] and block["n"] == 2

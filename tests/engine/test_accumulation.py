"""Gradient accumulation is exact: batch 1 x 8 micro-steps == batch 8 x 1 on variable-length data."""

from __future__ import annotations

import pytest
import torch

from conftest import tiny_llama, variable_examples
from peaufine.data.batching import PaddedExamples, global_batch
from peaufine.engine.fit import make_loop
from peaufine.methods.lm import NextTokenLoss
from peaufine.recipe import EvalBlock, TrainBlock


def gradients_of_first_step(micro_batch_size: int, runtime) -> tuple[dict[str, torch.Tensor], float]:
    model = tiny_llama()
    data = PaddedExamples(variable_examples(16), pad_id=0)
    train = TrainBlock(max_steps=4, batch_size=8, micro_batch_size=micro_batch_size, device="cpu")
    loop = make_loop(model, NextTokenLoss(), data, None, train, EvalBlock(), runtime)
    loss_total, units, _ = loop.accumulate_gradients()
    grads = {n: p.grad.clone() for n, p in model.named_parameters()}
    return grads, float(loss_total / units)


def test_accumulation_gives_the_same_gradients_as_one_big_batch(cpu_runtime):
    big, big_loss = gradients_of_first_step(8, cpu_runtime)
    small, small_loss = gradients_of_first_step(1, cpu_runtime)
    assert small_loss == pytest.approx(big_loss, rel=1e-6)
    for name, grad in big.items():
        torch.testing.assert_close(small[name], grad, rtol=1e-5, atol=1e-7, msg=name)


def test_per_micro_batch_mean_would_differ(cpu_runtime):
    """The control: averaging each micro-batch's mean loss (the common bug) gives other gradients."""
    model = tiny_llama()
    data = PaddedExamples(variable_examples(16), pad_id=0)
    objective = NextTokenLoss()
    for i in global_batch(len(data), 8, TrainBlock().seed, start=0):
        batch = data.collate([i])
        (objective.loss_sum(model, batch) / objective.count(batch) / 8).backward()
    naive = {n: p.grad.clone() for n, p in model.named_parameters()}
    exact, _ = gradients_of_first_step(8, cpu_runtime)
    diffs = [float((naive[n] - g).abs().max()) for n, g in exact.items()]
    assert max(diffs) > 1e-4

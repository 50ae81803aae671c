"""Next-token loss on batches that mix the task with replayed general text: the task's loss and the
replay's are tallied apart from the same forward, and the logged train loss is the task's."""

from __future__ import annotations

import pytest
import torch

from conftest import tiny_llama
from peaufine.data.batching import Example, PackedExamples, PaddedExamples
from peaufine.engine.fit import evaluate_loss, fit
from peaufine.methods.lm import NextTokenLoss
from peaufine.recipe import EvalBlock, TrainBlock

EASY = 7  # the replayed text repeats this token, which the model is made to predict well


def task_examples() -> list[Example]:
    """Random tokens, a prompt hidden from the loss."""
    generator = torch.Generator().manual_seed(3)
    task = []
    for length in (9, 14, 6, 11, 17, 8):
        ids = torch.randint(8, 50, (length,), generator=generator).tolist()
        task.append(Example(ids, [i >= 3 for i in range(length)]))
    return task


def task_and_replay() -> tuple[list[Example], list[Example]]:
    """The task, and replay windows (every token a target) that the model finds far easier, so a
    loss over the mix is far from the task's."""
    return task_examples(), [Example([EASY] * n, None, replay=True) for n in (12, 16, 10)]


def model_that_knows_the_replay() -> torch.nn.Module:
    model = tiny_llama()
    with torch.no_grad():
        model.lm_head.weight[EASY] += 3.0 * model.model.norm.weight.sign()
    return model


def dataset(examples: list[Example], packed: bool):
    return PackedExamples(examples, 32, pad_id=0) if packed else PaddedExamples(examples, pad_id=0)


@pytest.mark.parametrize("packed", [False, True], ids=["padded", "packed"])
@pytest.mark.parametrize("chunk_tokens", [None, 5], ids=["whole", "chunked"])
def test_with_replay_the_logged_train_loss_is_the_task_examples_loss_alone(cpu_runtime, packed, chunk_tokens):
    task, replay = task_and_replay()
    mixed = dataset(task + replay, packed)
    train = TrainBlock(max_steps=1, batch_size=len(mixed), lr=1e-3, warmup_steps=0, log_every=1, device="cpu")
    # one step over every row once: the row's losses are those of the starting weights
    row = fit(
        model_that_knows_the_replay(),
        NextTokenLoss(chunk_tokens),
        mixed,
        None,
        train,
        EvalBlock(),
        cpu_runtime,
    ).history[0]

    def loss_over(examples: list[Example]) -> float:
        return evaluate_loss(
            model_that_knows_the_replay(), NextTokenLoss(), PaddedExamples(examples, 0), cpu_runtime, 4
        )

    assert row["train_loss"] == pytest.approx(loss_over(task), rel=1e-5)
    assert row["replay_loss"] == pytest.approx(loss_over(replay), rel=1e-5)
    assert row["train_loss_all"] == pytest.approx(loss_over(task + replay), rel=1e-5)
    # the negative control: the mix's loss is nowhere near the task's (what was logged before)
    assert row["train_loss"] - row["train_loss_all"] > 0.5


def test_without_replay_a_row_has_no_per_source_losses(cpu_runtime):
    task = task_examples()
    train = TrainBlock(max_steps=1, batch_size=6, lr=1e-3, warmup_steps=0, log_every=1, device="cpu")
    row = fit(
        tiny_llama(), NextTokenLoss(), PaddedExamples(task, 0), None, train, EvalBlock(), cpu_runtime
    ).history[0]
    assert "replay_loss" not in row and "train_loss_all" not in row
    assert "replay" not in PaddedExamples(task, 0).collate([0, 1])

"""train.prefetch_batches: the feed prepares later steps ahead in a thread, yet every step gets exactly the
batches it gets without it, after a resume too; the thread's errors reach the loop and the thread ends."""

from __future__ import annotations

import threading

import pytest
import torch

from conftest import tiny_llama, variable_examples
from peaufine.data.batching import BatchPlan, MicroBatchFeed, PackedExamples, step_micro_batches
from peaufine.engine.fit import fit
from peaufine.methods.lm import NextTokenLoss
from peaufine.recipe import EvalBlock, TrainBlock


class Recorded:
    """A dataset that notes which indices were collated, and can fail at a chosen call."""

    def __init__(self, n: int, fail_at: int | None = None) -> None:
        self.n, self.fail_at, self.calls = n, fail_at, []
        self.asked = threading.Event()
        self.release = threading.Event()

    def __len__(self) -> int:
        return self.n

    def collate(self, indices):
        self.calls.append(list(indices))
        if len(self.calls) >= 3:
            self.asked.set()
        if self.fail_at is not None and len(self.calls) > self.fail_at:
            self.release.wait(timeout=10)
            raise ValueError("a broken record")
        ids = torch.tensor([[i, i + 1, i + 2] for i in indices])
        return {"input_ids": ids, "labels": ids}


def feed(dataset, depth: int, batch: int = 4, micro: int = 2) -> MicroBatchFeed:
    return MicroBatchFeed(dataset, BatchPlan.make(batch, 1, micro), seed=7, rank=0, device="cpu", depth=depth)


def test_prefetched_steps_are_the_steps_prepared_in_the_loop():
    data = Recorded(10)
    plan = BatchPlan.make(4, 1, 2)
    ahead = feed(data, depth=2)
    positions = [0, 4, 8, 12, 16, 40, 44, 4]  # across epochs, then a jump (a resume) and a jump back
    for position in positions:
        got = ahead.take(position)
        want = step_micro_batches(data, plan, 7, 0, "cpu", position)
        assert len(got) == len(want) == 2
        for g, w in zip(got, want, strict=True):
            assert g.keys() == w.keys()
            assert all(torch.equal(g[k], w[k]) for k in g)
    ahead.close()


def test_the_thread_prepares_later_steps_while_the_current_one_runs():
    data = Recorded(100)
    ahead = feed(data, depth=2)
    ahead.take(0)  # two micro-batches collated for step 1 ...
    assert data.asked.wait(timeout=10)  # ... and the next step's without being asked
    ahead.close()


def ends(threads: set[threading.Thread]) -> bool:
    for thread in threads:
        thread.join(timeout=5)
    return not any(t.is_alive() for t in threads)


def test_an_error_in_the_thread_is_raised_by_take_and_the_thread_ends():
    before = set(threading.enumerate())
    data = Recorded(100, fail_at=2)
    ahead = feed(data, depth=2)
    ahead.take(0)
    started = set(threading.enumerate()) - before
    data.release.set()
    with pytest.raises(ValueError, match="broken record"):
        ahead.take(4)
    assert len(started) == 1 and ends(started)


def test_closing_stops_the_thread():
    before = set(threading.enumerate())
    ahead = feed(Recorded(100), depth=2)
    ahead.take(0)
    started = set(threading.enumerate()) - before
    assert len(started) == 1
    ahead.close()
    assert ends(started)


class Threads:
    """Wraps a dataset; notes which threads collate its batches."""

    def __init__(self, dataset) -> None:
        self.dataset, self.threads = dataset, set()

    def __len__(self) -> int:
        return len(self.dataset)

    def collate(self, indices):
        self.threads.add(threading.current_thread() is threading.main_thread())
        return self.dataset.collate(indices)


def test_training_with_and_without_prefetching_gives_identical_losses(cpu_runtime):
    data = PackedExamples(variable_examples(40, seed=5), max_length=40, pad_id=0)

    def losses(prefetch: int) -> tuple[list[float], set[bool]]:
        train = TrainBlock(
            max_steps=6,
            batch_size=4,
            micro_batch_size=2,
            lr=3e-3,
            warmup_steps=1,
            log_every=1,
            prefetch_batches=prefetch,
        )
        watched = Threads(data)
        result = fit(tiny_llama(), NextTokenLoss(), watched, None, train, EvalBlock(samples=0), cpu_runtime)
        return [row["train_loss"] for row in result.history], watched.threads

    (without, main_only), (with_prefetch, elsewhere) = losses(0), losses(2)
    assert (main_only, elsewhere) == ({True}, {False})  # the loop collated, then the thread did
    assert len(without) == 6
    assert with_prefetch == without  # bit for bit

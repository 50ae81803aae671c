"""Batches: packed blocks with EOS separators, padded variable-length rows with shifted labels, and a
data order that is a function of the step alone (resumable, and the same for any number of processes)."""

from __future__ import annotations

import numpy as np
import pytest

from peaufine.data.batching import (
    IGNORE_INDEX,
    BatchPlan,
    Example,
    PackedBlocks,
    PaddedExamples,
    global_batch,
    rank_micro_batches,
    read_token_stream,
    write_token_stream,
)
from peaufine.errors import RecipeError


def test_documents_are_packed_with_eos_separators(tmp_path):
    path = tmp_path / "s.bin"
    count = write_token_stream([[5, 6, 7], [8], [9, 10]], eos_id=2, path=path)
    stream = read_token_stream(path)
    assert count == 9
    assert stream.tolist() == [5, 6, 7, 2, 8, 2, 9, 10, 2]
    assert not list(tmp_path.glob("*.tmp"))


def test_blocks_predict_the_next_token_and_cover_the_stream_once():
    stream = np.arange(1, 42, dtype=np.int32)  # 41 tokens
    blocks = PackedBlocks(stream, block_size=8)
    assert len(blocks) == 5
    batch = blocks.collate(range(len(blocks)))
    assert batch["input_ids"].shape == (5, 8)
    assert (batch["labels"] == batch["input_ids"] + 1).all()
    targets = batch["labels"].flatten().tolist()
    assert targets == list(range(2, 42))  # every token but the first is a target exactly once


def test_a_stride_gives_overlapping_rows():
    stream = np.arange(20, dtype=np.int32)
    blocks = PackedBlocks(stream, block_size=4, stride=1)
    assert len(blocks) == 16
    assert blocks.collate([3])["input_ids"].tolist() == [[3, 4, 5, 6]]
    assert blocks.collate([15])["labels"].tolist() == [[16, 17, 18, 19]]


def test_padded_rows_shift_labels_and_mask_prompt_and_padding():
    data = PaddedExamples(
        [Example([10, 11, 12, 13], [False, False, True, True]), Example([20, 21])], pad_id=0
    )
    batch = data.collate([0, 1])
    assert batch["input_ids"].tolist() == [[10, 11, 12, 13], [20, 21, 0, 0]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1, 1], [1, 1, 0, 0]]
    # label t is token t+1; prompt tokens (11) are not targets; nothing follows the last token
    assert batch["labels"].tolist() == [
        [IGNORE_INDEX, 12, 13, IGNORE_INDEX],
        [21, IGNORE_INDEX, IGNORE_INDEX, IGNORE_INDEX],
    ]


def test_the_data_order_is_a_function_of_the_position():
    first = [global_batch(10, 4, seed=3, start=4 * s) for s in range(5)]
    again = [global_batch(10, 4, seed=3, start=4 * s) for s in reversed(range(5))][::-1]
    assert first == again
    # consecutive steps walk through whole epochs: each index once per epoch of 10
    flat = [i for b in first for i in b]
    assert sorted(flat[:10]) == list(range(10))
    assert sorted(flat[10:20]) == list(range(10))
    assert flat[:10] != flat[10:20]  # reshuffled each epoch
    assert global_batch(10, 4, seed=4, start=0) != first[0]


def test_processes_share_a_global_batch_without_overlap():
    indices = global_batch(64, 8, seed=0, start=16)
    plan = BatchPlan.make(8, world_size=2, micro_batch_size=2)
    assert plan.accumulation == 2
    parts = [rank_micro_batches(indices, plan, rank) for rank in range(2)]
    flat = [i for rank in parts for micro in rank for i in micro]
    assert sorted(flat) == sorted(indices)
    assert all(len(micro) == 2 for rank in parts for micro in rank)


@pytest.mark.parametrize(("batch", "world", "micro"), [(7, 2, None), (8, 1, 3), (8, 2, 3)])
def test_a_batch_that_cannot_be_shared_is_a_recipe_error(batch, world, micro):
    with pytest.raises(RecipeError, match="batch_size"):
        BatchPlan.make(batch, world, micro)

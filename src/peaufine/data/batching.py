"""Examples on disk or in memory, and the deterministic, rank-aware order in which batches visit them.

Batches carry labels already shifted (labels[t] is the token after input_ids[t], -100 where there is
nothing to predict), so every objective computes one cross-entropy without slicing the logits.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    import torch

IGNORE_INDEX = -100
Batch = dict[str, "torch.Tensor"]


def write_token_stream(documents: Iterable[Sequence[int]], eos_id: int, path: Path) -> int:
    """Concatenate tokenized documents, each followed by EOS, into a flat binary file.

    The file is memory-mapped for training, so a corpus larger than RAM works. Written to a temporary
    name and renamed, so a crash never leaves a truncated stream that looks complete.
    """
    tmp = path.with_suffix(path.suffix + ".tmp")
    count = 0
    with open(tmp, "wb") as out:
        for ids in documents:
            chunk = np.asarray([*ids, eos_id], dtype=np.int32)
            out.write(chunk.tobytes())
            count += len(chunk)
    tmp.replace(path)
    return count


def read_token_stream(path: Path) -> np.ndarray:
    return np.memmap(path, dtype=np.int32, mode="r")


@dataclass
class PackedBlocks:
    """A token stream cut into rows of `block_size` inputs, each predicting its next `block_size` tokens.

    Row i covers stream[i*S : i*S + T + 1] for stride S and block size T. With S = T (the default)
    consecutive rows share one token, so every token of the stream (but the first) is a target
    exactly once. A smaller stride gives overlapping rows: each token is seen in several contexts,
    and S = 1 samples every start offset, as nanoGPT's random crops do.
    """

    stream: np.ndarray
    block_size: int
    stride: int | None = None

    @property
    def step(self) -> int:
        return self.stride or self.block_size

    def __len__(self) -> int:
        return max(0, (len(self.stream) - 1 - self.block_size) // self.step + 1)

    def collate(self, indices: Sequence[int]) -> Batch:
        import torch

        size, step = self.block_size, self.step
        rows = np.stack([self.stream[i * step : i * step + size + 1] for i in indices])
        rows_t = torch.from_numpy(rows.astype(np.int64))
        return {"input_ids": rows_t[:, :-1], "labels": rows_t[:, 1:]}


@dataclass
class Example:
    """One variable-length sequence; `target_mask[t]` says whether token t is to be predicted."""

    input_ids: list[int]
    target_mask: list[bool] | None = None


@dataclass
class PaddedExamples:
    """Variable-length examples, right-padded to the longest in each micro-batch."""

    examples: list[Example]
    pad_id: int

    def __len__(self) -> int:
        return len(self.examples)

    def collate(self, indices: Sequence[int]) -> Batch:
        import torch

        chosen = [self.examples[i] for i in indices]
        width = max(len(e.input_ids) for e in chosen)
        input_ids = torch.full((len(chosen), width), self.pad_id, dtype=torch.long)
        labels = torch.full((len(chosen), width), IGNORE_INDEX, dtype=torch.long)
        attention = torch.zeros((len(chosen), width), dtype=torch.long)
        for row, ex in enumerate(chosen):
            ids = torch.tensor(ex.input_ids, dtype=torch.long)
            n = len(ids)
            input_ids[row, :n] = ids
            attention[row, :n] = 1
            nxt = ids[1:].clone()
            if ex.target_mask is not None:
                keep = torch.tensor(ex.target_mask[1:], dtype=torch.bool)
                nxt[~keep] = IGNORE_INDEX
            labels[row, : n - 1] = nxt
        return {"input_ids": input_ids, "labels": labels, "attention_mask": attention}


class Dataset:
    """What the engine needs of a training or validation set (a protocol, for readers)."""

    def __len__(self) -> int: ...
    def collate(self, indices: Sequence[int]) -> Batch: ...


@dataclass(frozen=True)
class BatchPlan:
    """How one global batch is shared: processes, then micro-batches within a process."""

    batch_size: int
    world_size: int
    micro_batch_size: int

    @classmethod
    def make(cls, batch_size: int, world_size: int, micro_batch_size: int | None) -> BatchPlan:
        from peaufine.errors import RecipeError

        if batch_size % world_size:
            raise RecipeError(
                f"train.batch_size ({batch_size}) must be a multiple of the number of "
                f"processes ({world_size})"
            )
        share = batch_size // world_size
        micro = micro_batch_size or share
        if share % micro:
            raise RecipeError(
                f"train.micro_batch_size ({micro}) must divide the per-process share of "
                f"train.batch_size ({share} = {batch_size} / {world_size} processes)"
            )
        return cls(batch_size, world_size, micro)

    @property
    def accumulation(self) -> int:
        return self.batch_size // (self.world_size * self.micro_batch_size)


@lru_cache(maxsize=4)
def epoch_order(n: int, seed: int, epoch: int) -> np.ndarray:
    """A permutation of range(n) that depends only on (seed, epoch): resumable and rank-independent."""
    return np.random.default_rng([seed, epoch]).permutation(n)


def global_batch(n: int, batch_size: int, seed: int, start: int) -> list[int]:
    """The example indices of the global batch that begins after `start` examples were consumed.

    Consecutive slices of seeded epoch orders: a function of the data position alone, so a
    checkpoint stores just that position, and resuming with another number of processes (or
    another batch size) continues the same stream of examples.
    """
    if n == 0:
        return []
    indices: list[int] = []
    while len(indices) < batch_size:
        epoch, offset = divmod(start + len(indices), n)
        order = epoch_order(n, seed, epoch)
        take = min(batch_size - len(indices), n - offset)
        indices.extend(int(i) for i in order[offset : offset + take])
    return indices


def rank_micro_batches(indices: Sequence[int], plan: BatchPlan, rank: int) -> list[list[int]]:
    mine = list(indices[rank :: plan.world_size])
    size = plan.micro_batch_size
    return [mine[i : i + size] for i in range(0, len(mine), size)]


def evaluation_batches(
    n: int, batch_size: int, rank: int, world_size: int, max_batches: int | None = None
) -> Iterator[list[int]]:
    """Fixed-order validation batches, shared round-robin among processes."""
    starts = range(0, n, batch_size)
    if max_batches is not None:
        starts = starts[:max_batches]
    for k, start in enumerate(starts):
        if k % world_size == rank:
            yield list(range(start, min(n, start + batch_size)))


def batch_to(batch: Batch, device: Any) -> Batch:
    return {k: v.to(device, non_blocking=True) for k, v in batch.items()}

"""Examples on disk or in memory, the deterministic, rank-aware order in which batches visit them, and
the feed that prepares the next steps' batches in a background thread (train.prefetch_batches)."""

# Batches carry labels already shifted (labels[t] is the token after input_ids[t], -100 where there is
# nothing to predict), so every objective computes one cross-entropy without slicing the logits.

from __future__ import annotations

import bisect
import json
import queue
import threading
import weakref
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from peaufine.errors import DataError, ModelError, RecipeError

if TYPE_CHECKING:
    import torch
    from transformers import PreTrainedTokenizerBase

    from peaufine.recipe import Recipe

IGNORE_INDEX = -100
Batch = dict[str, "torch.Tensor"]
# a batch of a set that mixes replayed general text into the task (data.replay) has this key: True at the
# label positions of replay examples, so the loss of the task and of the replay are tallied apart
REPLAY = "replay"


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
    """The int32 token stream in `path`, memory-mapped; an empty file (no validation split) is an
    empty stream, which numpy cannot map."""
    if Path(path).stat().st_size == 0:
        return np.zeros(0, dtype=np.int32)
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
    replay: bool = False  # replayed general text mixed into a task's examples, not the task


def mixes_replay(examples: Sequence[Example]) -> bool:
    """Whether a set mixes replay examples into the task: its batches then carry REPLAY."""
    return any(getattr(e, "replay", False) for e in examples)


@dataclass
class PaddedExamples:
    """Variable-length examples, right-padded to the longest in each micro-batch."""

    examples: list[Example]
    pad_id: int
    mixed: bool = field(init=False)  # some examples are replay: batches carry REPLAY

    def __post_init__(self) -> None:
        self.mixed = mixes_replay(self.examples)

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
        batch = {"input_ids": input_ids, "labels": labels, "attention_mask": attention}
        if self.mixed:
            batch[REPLAY] = torch.tensor([[e.replay] for e in chosen]).expand(-1, width).contiguous()
        return batch


def pack_examples(lengths: Sequence[int], max_length: int) -> list[list[int]]:
    """Bin-pack example lengths into as few rows of at most `max_length` tokens as it can.

    Best-fit decreasing: longest first, each into the open row it fills most tightly (ties: the
    earliest row), so it is deterministic and needs at most 11/9 of the optimal rows (+ 1). The free
    space of open rows is kept sorted and searched with bisect: O(n log n), quick on 10^5 examples,
    where a first-fit scan over the rows would be quadratic. Returns example indices per row,
    each row in ascending order.
    """
    if max_length < 1:
        raise ValueError(f"max_length must be at least 1, got {max_length}")
    for i, n in enumerate(lengths):
        if not 1 <= n <= max_length:
            raise ValueError(
                f"example {i} has {n} tokens; packing takes 1..{max_length} (max_length): truncate or "
                "drop examples before packing, where the choice of what to cut is made"
            )
    rows: list[list[int]] = []
    free: list[tuple[int, int]] = []  # (tokens still free, row number) of rows not yet full, sorted
    for i in sorted(range(len(lengths)), key=lambda i: (-lengths[i], i)):
        n = lengths[i]
        k = bisect.bisect_left(free, (n, -1))
        if k == len(free):
            rows.append([i])
            space, row = max_length - n, len(rows) - 1
        else:
            space, row = free.pop(k)
            rows[row].append(i)
            space -= n
        if space > 0:
            bisect.insort(free, (space, row))
    return [sorted(row) for row in rows]


@dataclass
class PackedExamples:
    """Variable-length examples packed into rows of at most `max_length` tokens: no compute on padding.

    The engine samples row indices, so rows are fixed at construction (`pack_examples`); one training
    "example" is then a row, and the number of target tokens per batch varies, which the engine's
    loss normalisation (by targets counted from labels) already absorbs.

    A batch is (rows, longest chosen row), padded only at row ends, with `position_ids` restarting at 0
    for every example and NO `attention_mask`. From restarting positions transformers (5.x,
    `masking_utils.find_packed_sequence_indices`) builds a block-diagonal causal mask for sdpa, eager
    and flex attention, so no token attends across examples, and rotary (Llama) or learned (GPT-2)
    positions are those of the example alone. Flash-attention-2 goes varlen from positions only for a
    ONE-row batch (`_is_packed_sequence`), so NextTokenLoss lays a packed batch out as one row under
    flash (methods/lm.py). Two conditions:
    - no `attention_mask` key: any 2-D mask, even all ones, turns that detection off;
    - the model is called with `use_cache=False` (as NextTokenLoss does): with a key/value cache,
      transformers skips the detection and attention silently crosses examples.
    The tail padding of a row is its own short sequence (positions from 0, labels -100), so it is
    never attended to by an example. Rows rather than one (1, total) sequence because sdpa computes
    every score of the mask it is given: rows x max_length^2, not (rows x max_length)^2.
    """

    examples: list[Example]
    max_length: int
    pad_id: int
    rows: list[list[int]] = field(init=False)
    mixed: bool = field(init=False)  # some examples are replay: batches carry REPLAY

    def __post_init__(self) -> None:
        self.rows = pack_examples([len(e.input_ids) for e in self.examples], self.max_length)
        self._row_tokens = [sum(len(self.examples[i].input_ids) for i in row) for row in self.rows]
        self.mixed = mixes_replay(self.examples)

    def __len__(self) -> int:
        return len(self.rows)

    @property
    def packing_efficiency(self) -> float:
        """Real tokens over the room of the rows (rows x max_length): 1 - the padding fraction."""
        room = len(self.rows) * self.max_length
        return sum(self._row_tokens) / room if room else 0.0

    def collate(self, indices: Sequence[int]) -> Batch:
        import torch

        width = max(self._row_tokens[r] for r in indices)
        input_ids = np.full((len(indices), width), self.pad_id, dtype=np.int64)
        labels = np.full((len(indices), width), IGNORE_INDEX, dtype=np.int64)
        positions = np.zeros((len(indices), width), dtype=np.int64)
        replay = np.zeros((len(indices), width), dtype=bool)
        for b, r in enumerate(indices):
            start = 0
            for i in self.rows[r]:
                ex = self.examples[i]
                ids = np.asarray(ex.input_ids, dtype=np.int64)
                n = len(ids)
                end = start + n
                input_ids[b, start:end] = ids
                replay[b, start:end] = ex.replay
                positions[b, start:end] = np.arange(n)
                # label t is token t+1 of the same example; its last token predicts nothing
                nxt = ids[1:].copy()
                if ex.target_mask is not None:
                    nxt[~np.asarray(ex.target_mask[1:], dtype=bool)] = IGNORE_INDEX
                labels[b, start : end - 1] = nxt
                start = end
            positions[b, start:] = np.arange(width - start)
        batch = {
            "input_ids": torch.from_numpy(input_ids),
            "labels": torch.from_numpy(labels),
            "position_ids": torch.from_numpy(positions),
        }
        if self.mixed:
            batch[REPLAY] = torch.from_numpy(replay)
        return batch


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


def step_micro_batches(
    dataset: Dataset, plan: BatchPlan, seed: int, rank: int, device: Any, examples_seen: int
) -> list[Batch]:
    """This process's micro-batches of the global batch that starts after `examples_seen` examples,
    collated and on `device` (pinned first on CUDA, so the copy can overlap the running step)."""
    indices = global_batch(len(dataset), plan.batch_size, seed, examples_seen)
    batches = [dataset.collate(m) for m in rank_micro_batches(indices, plan, rank)]
    if getattr(device, "type", device) == "cuda":
        batches = [{k: v.pin_memory() for k, v in b.items()} for b in batches]
    return [batch_to(b, device) for b in batches]


class MicroBatchFeed:
    """The micro-batches of consecutive optimiser steps, prepared ahead by a thread: up to `depth`
    steps wait in its queue (and one more is being prepared).

    What a step gets depends only on the data position (`examples_seen`), as without the feed, so
    prefetching never changes results. Asked for a position it did not prepare (the first step, a
    resume), it starts over from there. Errors in the thread are raised by `take`. The thread holds no
    reference to the feed: when the feed is closed, dropped or the interpreter exits, the thread is
    stopped and joined (a daemon thread killed inside a torch op at exit aborts the process).
    """

    def __init__(
        self, dataset: Dataset, plan: BatchPlan, seed: int, rank: int, device: Any, depth: int
    ) -> None:
        self.prepare = (dataset, plan, seed, rank, device)
        self.depth = depth
        self._next: int | None = None
        self._queue: queue.Queue[tuple[int, Any]] | None = None
        self._halt: weakref.finalize | None = None

    def take(self, examples_seen: int) -> list[Batch]:
        """The micro-batches of the step that starts after `examples_seen` examples."""
        if self.depth == 0:
            return step_micro_batches(*self.prepare, examples_seen)
        if self._next != examples_seen:
            self._start(examples_seen)
        assert self._queue is not None
        position, batches = self._queue.get()
        if isinstance(batches, BaseException):
            self.close()
            raise batches
        self._next = position + self.prepare[1].batch_size
        return batches

    def _start(self, examples_seen: int) -> None:
        self.close()
        self._queue = queue.Queue(maxsize=self.depth)
        stop = threading.Event()
        thread = threading.Thread(
            target=_prefetch,
            args=(self.prepare, examples_seen, self._queue, stop),
            daemon=True,
            name="peaufine-prefetch",
        )
        thread.start()
        self._halt = weakref.finalize(self, _halt, stop, thread)
        self._next = examples_seen

    def close(self) -> None:
        """Stop the thread and wait for it (at most the collation of one step)."""
        if self._halt is not None:
            self._halt()
        self._queue, self._halt, self._next = None, None, None


def _halt(stop: threading.Event, thread: threading.Thread) -> None:
    stop.set()
    if thread is not threading.current_thread():  # a finalizer may run in the thread itself
        thread.join(timeout=60)


def _prefetch(prepare: tuple[Any, ...], start: int, out: queue.Queue, stop: threading.Event) -> None:
    step = prepare[1].batch_size
    position = start
    while not stop.is_set():
        try:
            item: Any = step_micro_batches(*prepare, position)
        except BaseException as exc:  # handed to the training loop, which raises it
            item = exc
        while not stop.is_set():
            try:
                out.put((position, item), timeout=0.1)
                break
            except queue.Full:
                continue
        if isinstance(item, BaseException):
            return
        position += step


@dataclass
class LabelledTexts:
    """Tokenized texts and one label each, right-padded to the longest text of each micro-batch.

    `pad_id` must be the model's `config.pad_token_id`: decoders find the token they classify from
    as the rightmost one that is not padding.
    """

    input_ids: list[list[int]]
    labels: list[float] | list[int]
    pad_id: int
    regression: bool = False

    def __post_init__(self) -> None:
        if len(self.input_ids) != len(self.labels):
            raise DataError(f"{len(self.input_ids)} texts but {len(self.labels)} labels")
        if any(len(ids) == 0 for ids in self.input_ids):
            raise DataError("a text tokenized to no tokens at all; drop empty texts first")

    @classmethod
    def from_texts(
        cls,
        tokenizer: PreTrainedTokenizerBase,
        texts: Sequence[str],
        labels: Sequence[float] | Sequence[int],
        max_length: int,
        *,
        regression: bool = False,
        pad_id: int | None = None,
    ) -> LabelledTexts:
        """Tokenize with the tokenizer's own special tokens ([CLS] ... [SEP] for BERT), truncated to
        `max_length`; `pad_id` defaults to the tokenizer's pad token, else its EOS."""
        if pad_id is None:
            pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
        if pad_id is None:
            raise ModelError("the tokenizer has neither a pad nor an EOS token; pass pad_id explicitly")
        # an empty split (data.validation_fraction: 0) is an empty set: tokenizers fail on no texts
        encoded = tokenizer(list(texts), truncation=True, max_length=max_length)["input_ids"] if texts else []
        values = [float(y) for y in labels] if regression else [int(y) for y in labels]
        return cls(encoded, values, pad_id, regression)

    def __len__(self) -> int:
        return len(self.input_ids)

    def collate(self, indices: Sequence[int]) -> Batch:
        import torch

        rows = [self.input_ids[i] for i in indices]
        width = max(len(r) for r in rows)
        input_ids = torch.full((len(rows), width), self.pad_id, dtype=torch.long)
        attention = torch.zeros((len(rows), width), dtype=torch.long)
        for row, ids in enumerate(rows):
            input_ids[row, : len(ids)] = torch.tensor(ids, dtype=torch.long)
            attention[row, : len(ids)] = 1
        dtype = torch.float32 if self.regression else torch.long
        labels = torch.tensor([self.labels[i] for i in indices], dtype=dtype)
        return {"input_ids": input_ids, "attention_mask": attention, "labels": labels}


def load_examples(path: Path) -> list[Any]:

    rows = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line]
    return [Example(r["input_ids"], r["target_mask"]) for r in rows]


def make_dataset(examples: list[Any], recipe: Recipe, pad_id: int) -> Any:

    if recipe.data.packing:
        return PackedExamples(examples, recipe.data.max_length, pad_id)
    return PaddedExamples(examples, pad_id)

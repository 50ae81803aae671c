"""Next-token prediction: the objective of pretraining and of supervised fine-tuning."""

# Batches carry pre-shifted labels (-100 where nothing is predicted), so the loss is one cross-entropy
# over the logits as the model returns them, summed; the engine divides by the target count. With
# `chunk_tokens` (train.loss_chunk_tokens) the same sum is taken a chunk of targets at a time
# (methods/chunked_loss.py), never holding the whole batch's logits.

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from peaufine.data.batching import IGNORE_INDEX, REPLAY, Batch
from peaufine.engine.fit import MetricTally
from peaufine.engine.parallel import unwrap
from peaufine.engine.steps import REPLAY_LOSS, TASK_LOSS
from peaufine.methods.chunked_loss import target_logps
from peaufine.models.adapters import input_positions

if TYPE_CHECKING:
    import torch

    from peaufine.recipe import TrainBlock


def model_inputs(batch: Batch) -> dict[str, torch.Tensor]:
    """The keys of a batch that the model's forward takes (labels stay with the objective)."""
    return {k: v for k, v in batch.items() if k in ("input_ids", "attention_mask", "position_ids")}


def uses_flash_attention(model: torch.nn.Module) -> bool:

    config = getattr(unwrap(model), "config", None)
    return "flash" in str(getattr(config, "_attn_implementation", "") or "")


def packed_as_one_row(batch: Batch) -> Batch:
    """A packed batch (restarting position_ids, no attention_mask) laid end to end as one row.

    Flash attention finds packed examples from position_ids only when the batch has ONE row
    (transformers' `_is_packed_sequence`); with several rows it runs plain causal attention across
    the examples of a row. One row makes it run varlen, each example alone. The summed loss is the
    same: labels move with their tokens, and each row's tail padding is its own sequence.
    """
    if "position_ids" not in batch or "attention_mask" in batch or batch["input_ids"].shape[0] == 1:
        return batch
    return {k: v.reshape(1, -1) for k, v in batch.items()}


@dataclass
class NextTokenLoss:
    """Summed cross-entropy over target tokens; units are target tokens.

    `chunk_tokens`: compute it `chunk_tokens` targets at a time, from the final hidden states, with
    each chunk's logits recomputed in the backward pass (train.loss_chunk_tokens); None: in one piece.
    A batch that mixes replayed general text into the task (it has REPLAY) also adds the task's loss
    (TASK_LOSS) and the replay's (REPLAY_LOSS) to `tally`, from the same forward: the optimiser
    trains on the mix, and the task's own loss is what the run reports and judges overfitting by.
    """

    chunk_tokens: int | None = None
    tally: MetricTally = field(default_factory=MetricTally, compare=False, repr=False)

    def loss_sum(self, model: torch.nn.Module, batch: Batch) -> torch.Tensor:
        import torch.nn.functional as F

        if uses_flash_attention(model):
            batch = packed_as_one_row(batch)
        replay = batch.get(REPLAY)
        if self.chunk_tokens is not None:
            logps, _ = target_logps(model, model_inputs(batch), batch["labels"], self.chunk_tokens)
            if replay is None:
                return -logps.sum()
            losses = -logps
        else:
            # a soft prompt's positions (prompt tuning) predict nothing of the input: only its own do
            logits = input_positions(model(**model_inputs(batch), use_cache=False).logits, batch["input_ids"])
            flat = logits.reshape(-1, logits.shape[-1]).float()
            if replay is None:
                return F.cross_entropy(
                    flat, batch["labels"].reshape(-1), ignore_index=IGNORE_INDEX, reduction="sum"
                )
            losses = F.cross_entropy(
                flat, batch["labels"].reshape(-1), ignore_index=IGNORE_INDEX, reduction="none"
            ).view(batch["labels"].shape)
        self.tally_sources(losses, batch["labels"] != IGNORE_INDEX, replay)
        return losses.sum()

    def tally_sources(self, losses: torch.Tensor, targets: torch.Tensor, replay: torch.Tensor) -> None:
        """The task's and the replay's summed losses and target counts (0 at non-targets)."""
        import torch

        losses = losses.detach()
        for name, part in ((TASK_LOSS, targets & ~replay), (REPLAY_LOSS, targets & replay)):
            self.tally.add(name, torch.where(part, losses, 0.0).sum(), part.sum())

    def count(self, batch: Batch) -> torch.Tensor:
        return (batch["labels"] != IGNORE_INDEX).sum()


def next_token_loss(train: TrainBlock) -> NextTokenLoss:
    """The objective as the recipe's train block sets it up (train.loss_chunk_tokens)."""
    return NextTokenLoss(chunk_tokens=train.loss_chunk_tokens)

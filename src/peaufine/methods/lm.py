"""Next-token prediction: the objective of pretraining and of supervised fine-tuning.

Batches carry pre-shifted labels (-100 where nothing is predicted), so the loss is one cross-entropy
over the logits as the model returns them, summed; the engine divides by the target count.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from peaufine.data.batching import IGNORE_INDEX, Batch

if TYPE_CHECKING:
    import torch


def model_inputs(batch: Batch) -> dict[str, torch.Tensor]:
    """The keys of a batch that the model's forward takes (labels stay with the objective)."""
    return {k: v for k, v in batch.items() if k in ("input_ids", "attention_mask", "position_ids")}


@dataclass(frozen=True)
class NextTokenLoss:
    """Summed cross-entropy over target tokens; units are target tokens."""

    def loss_sum(self, model: torch.nn.Module, batch: Batch) -> torch.Tensor:
        import torch.nn.functional as F

        logits = model(**model_inputs(batch), use_cache=False).logits
        return F.cross_entropy(
            logits.reshape(-1, logits.shape[-1]).float(),
            batch["labels"].reshape(-1),
            ignore_index=IGNORE_INDEX,
            reduction="sum",
        )

    def count(self, batch: Batch) -> torch.Tensor:
        return (batch["labels"] != IGNORE_INDEX).sum()

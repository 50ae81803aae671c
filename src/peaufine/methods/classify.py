"""Sequence classification and regression: a head on any encoder or decoder, its loss and its data."""

# One label per text; cross-entropy for num_labels >= 2, squared error for num_labels = 1 (regression),
# both summed over examples so the engine divides by the examples of the whole global batch.

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from peaufine.data.batching import Batch
from peaufine.errors import ModelError, RecipeError

if TYPE_CHECKING:
    import torch

    from peaufine.recipe import Recipe


def classifier_logits(model: torch.nn.Module, batch: Batch) -> torch.Tensor:
    """The head's outputs, (examples, num_labels), in float32 whatever the autocast dtype: a bf16
    sum of losses over a batch loses digits."""
    return model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits.float()


@dataclass(frozen=True)
class ClassificationLoss:
    """Summed cross-entropy (classes) or summed squared error (regression); units are examples.

    The head's logits are taken as the model returns them: encoders pool their first token, decoders
    (transformers' `...ForSequenceClassification`) the last token that is not `config.pad_token_id`.
    """

    num_labels: int

    def __post_init__(self) -> None:
        if self.num_labels < 1:
            raise ModelError(f"method.num_labels must be >= 1 (1 means regression), got {self.num_labels}")

    @property
    def regression(self) -> bool:
        return self.num_labels == 1

    def loss_sum(self, model: torch.nn.Module, batch: Batch) -> torch.Tensor:
        import torch.nn.functional as F

        logits = classifier_logits(model, batch)
        if self.regression:
            return F.mse_loss(logits.squeeze(-1), batch["labels"].float(), reduction="sum")
        return F.cross_entropy(logits, batch["labels"], reduction="sum")

    def count(self, batch: Batch) -> torch.Tensor:
        import torch

        return torch.tensor(batch["labels"].shape[0], device=batch["labels"].device)


def refuse_chunked_loss(recipe: Recipe) -> None:
    """train.loss_chunk_tokens means nothing to a classifier: its head gives num_labels logits, not
    vocabulary-sized ones. Said before the run starts rather than ignored."""
    if recipe.train.loss_chunk_tokens is not None:
        raise RecipeError(
            f"train.loss_chunk_tokens: the {recipe.stage} stage trains a classification head "
            "(num_labels outputs, no vocabulary-sized logits), so there is nothing to chunk; set it to null"
        )

"""Sequence classification and regression: a head on any encoder or decoder, its loss and its data."""

# One label per text; cross-entropy for num_labels >= 2, squared error for num_labels = 1 (regression),
# both summed over examples so the engine divides by the examples of the whole global batch.

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from peaufine.data.batching import Batch
from peaufine.engine.parallel import unwrap
from peaufine.errors import ModelError, RecipeError
from peaufine.models.adapters import input_positions, peft_base, prompt_length

if TYPE_CHECKING:
    import torch

    from peaufine.recipe import Recipe


def classifier_logits(model: torch.nn.Module, batch: Batch) -> torch.Tensor:
    """The head's outputs, (examples, num_labels), in float32 whatever the autocast dtype: a bf16
    sum of losses over a batch loses digits."""
    inputs = {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"]}
    head = getattr(peft_base(unwrap(model)), "score", None)
    if head is None or not prompt_length(unwrap(model)):
        return model(**inputs).logits.float()
    return _last_token_logits(model, head, batch)


def _last_token_logits(model: torch.nn.Module, head: torch.nn.Module, batch: Batch) -> torch.Tensor:
    """A decoder classifier's logits at each row's last real token, under prompt tuning.

    A decoder (its head is `score`) pools the rightmost position whose id is not the pad id; behind a
    soft prompt PEFT passes embeddings, not ids, and transformers then pools the last position, a pad
    of a right-padded row. So the head's output at every position is taken as it is computed, the
    prompt's positions dropped, and the row's last real token picked by transformers' own rule.
    (Encoders pool their first position, which under a soft prompt is the prompt's: PEFT's design.)
    """
    import torch

    seen: list[torch.Tensor] = []
    handle = head.register_forward_hook(lambda _module, _args, output: seen.append(output))
    try:
        model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
    finally:
        handle.remove()
    ids = batch["input_ids"]
    per_position = input_positions(seen[-1], ids)
    pad = peft_base(unwrap(model)).config.pad_token_id
    real = (ids != pad).to(torch.int32) if pad is not None else torch.ones_like(ids, dtype=torch.int32)
    last = (torch.arange(ids.shape[-1], device=ids.device, dtype=torch.int32) * real).argmax(-1)
    return per_position[torch.arange(ids.shape[0], device=ids.device), last].float()


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

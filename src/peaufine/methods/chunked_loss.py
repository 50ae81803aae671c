"""Cross-entropy over the target tokens only, a chunk of them at a time (`train.loss_chunk_tokens`):
the [tokens x vocabulary] logits never exist whole, neither in the forward nor in the backward pass.

The model is called as the engine wraps it (DDP, torch.compile, PEFT), with `logits_to_keep=1` so its
own head computes one position per row; the final hidden states come back through
`output_hidden_states` (transformers ties the last one to the normed `last_hidden_state`). The target
rows of those states are gathered, and each chunk goes through the output head, to float, and into a
summed cross-entropy under `torch.utils.checkpoint`, so the backward pass recomputes one chunk's logits
at a time instead of keeping them all. Going through the wrapper's forward matters: calling the inner
decoder would skip DDP's gradient synchronisation and the compiled graph.
"""

from __future__ import annotations

import weakref
from typing import TYPE_CHECKING, Any

from peaufine.data.batching import IGNORE_INDEX
from peaufine.errors import TrainingError

if TYPE_CHECKING:
    import torch


def unwrapped(model: torch.nn.Module) -> torch.nn.Module:
    """The module under DistributedDataParallel and torch.compile (a PEFT model is kept: it is the model)."""
    from torch.nn.parallel import DistributedDataParallel

    while True:
        if isinstance(model, DistributedDataParallel):
            model = model.module
        elif hasattr(model, "_orig_mod"):  # torch.compile's OptimizedModule
            model = model._orig_mod
        else:
            return model


def output_head(model: torch.nn.Module) -> torch.nn.Module:
    """The module that maps final hidden states to logits (a PEFT wrapper of it included)."""
    head = unwrapped(model).get_output_embeddings()
    if head is None:
        raise TrainingError(
            "train.loss_chunk_tokens: the model has no output head (get_output_embeddings() is None); "
            "set train.loss_chunk_tokens: null"
        )
    return head


def final_hidden_states(model: torch.nn.Module, inputs: dict[str, Any]) -> tuple[torch.Tensor, torch.Tensor]:
    """(hidden states after the final norm [B, T, H], the model's logits of the last position [B, 1, V])."""
    try:
        out = model(**inputs, use_cache=False, output_hidden_states=True, logits_to_keep=1)
    except TypeError as exc:
        raise TrainingError(
            f"train.loss_chunk_tokens: this model's forward does not take logits_to_keep ({exc}); "
            "set train.loss_chunk_tokens: null"
        ) from None
    return out.hidden_states[-1], out.logits


def check_head_reproduces_logits(head: torch.nn.Module, hidden: torch.Tensor, logits: torch.Tensor) -> None:
    """Fail unless head(final hidden state) is the model's logits: models that scale or soft-cap their
    logits after the head (Gemma 2's final_logit_softcapping, Cohere's logit_scale) would otherwise
    train on a different loss without a word."""
    import torch

    with torch.no_grad():
        ours = head(hidden[:, -1:]).float()
        theirs = logits[:, -1:].float()
        scale = float(theirs.abs().max()) or 1.0
        gap = float((ours - theirs).abs().max())
    if gap > 1e-3 * scale:
        raise TrainingError(
            "train.loss_chunk_tokens: this model's logits are not its output head applied to the last "
            f"hidden state (largest difference {gap:.3g}; a logit scale or soft-cap?), so the chunked "
            "loss would differ from the model's; set train.loss_chunk_tokens: null"
        )


def _chunk_loss_sum(head: torch.nn.Module, hidden: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    import torch.nn.functional as F

    return F.cross_entropy(head(hidden).float(), targets, reduction="sum")


def chunked_cross_entropy(
    head: torch.nn.Module, hidden: torch.Tensor, labels: torch.Tensor, chunk_tokens: int
) -> torch.Tensor:
    """Summed cross-entropy of head(hidden) against labels (-100: none), `chunk_tokens` targets at a time.

    Only the rows with a target go through the head: with completion-only labels (SFT) that skips the
    prompt tokens' logits altogether.
    """
    import torch
    from torch.utils.checkpoint import checkpoint

    flat_labels = labels.reshape(-1)
    rows = (flat_labels != IGNORE_INDEX).nonzero().squeeze(1)
    hidden = hidden.reshape(-1, hidden.shape[-1]).index_select(0, rows)
    targets = flat_labels.index_select(0, rows)
    if len(rows) == 0:
        return hidden.float().sum()  # 0, still attached to the graph as a loss with no target is
    total = torch.zeros((), dtype=torch.float32, device=hidden.device)
    recompute = torch.is_grad_enabled()
    for start in range(0, len(rows), chunk_tokens):
        piece = hidden[start : start + chunk_tokens]
        wanted = targets[start : start + chunk_tokens]
        if recompute:
            total = total + checkpoint(_chunk_loss_sum, head, piece, wanted, use_reentrant=False)
        else:
            total = total + _chunk_loss_sum(head, piece, wanted)
    return total


class ChunkedNextTokenLoss:
    """The summed next-token loss through `chunked_cross_entropy`; checks the head once per model."""

    def __init__(self, chunk_tokens: int) -> None:
        if chunk_tokens < 1:
            raise ValueError(f"chunk_tokens must be at least 1, got {chunk_tokens}")
        self.chunk_tokens = chunk_tokens
        self._checked: weakref.WeakSet[torch.nn.Module] = weakref.WeakSet()

    def __call__(
        self, model: torch.nn.Module, inputs: dict[str, torch.Tensor], labels: torch.Tensor
    ) -> torch.Tensor:
        hidden, last_logits = final_hidden_states(model, inputs)
        head = output_head(model)
        if head not in self._checked:
            check_head_reproduces_logits(head, hidden, last_logits)
            self._checked.add(head)
        return chunked_cross_entropy(head, hidden, labels, self.chunk_tokens)

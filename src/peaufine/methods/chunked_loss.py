"""Log-probabilities of the target tokens only, a chunk of them at a time (`train.loss_chunk_tokens`):
the [tokens x vocabulary] logits never exist whole, neither in the forward nor in the backward pass."""

# Next-token prediction (pretrain, SFT), DPO's sequence log-probs and RL's per-token log-probs all read
# their targets' log-probs through `target_logps` when the recipe sets a chunk size.
#
# The model is called as the engine wraps it (DDP, FSDP, torch.compile, PEFT), with `logits_to_keep=1`
# so its own head computes one position per row; the final hidden states come back through
# `output_hidden_states` (transformers ties the last one to the normed `last_hidden_state`). The target
# rows of those states are gathered, and each chunk goes through the output head, to float, and into a
# cross-entropy under `torch.utils.checkpoint`, so the backward pass recomputes one chunk's logits at a
# time instead of keeping them all. Going through the wrapper's forward matters: calling the inner
# decoder would skip DDP's gradient synchronisation, FSDP's all-gather and the compiled graph.

from __future__ import annotations

import weakref
from typing import TYPE_CHECKING, Any

from peaufine.data.batching import IGNORE_INDEX
from peaufine.engine.parallel import unwrap
from peaufine.errors import TrainingError
from peaufine.models.adapters import input_positions

if TYPE_CHECKING:
    import torch


def output_head(model: torch.nn.Module) -> torch.nn.Module:
    """The module that maps final hidden states to logits (a PEFT wrapper of it included)."""
    head = unwrap(model).get_output_embeddings()
    if head is None:
        raise TrainingError(
            "train.loss_chunk_tokens: the model has no output head (get_output_embeddings() is None); "
            "set train.loss_chunk_tokens: null"
        )
    return head


def final_hidden_states(model: torch.nn.Module, inputs: dict[str, Any]) -> tuple[torch.Tensor, torch.Tensor]:
    """(hidden states after the final norm [B, T, H] at the input's T positions, the model's logits of
    the last position [B, 1, V])."""
    try:
        out = model(**inputs, use_cache=False, output_hidden_states=True, logits_to_keep=1)
    except TypeError as exc:
        raise TrainingError(
            f"train.loss_chunk_tokens: this model's forward does not take logits_to_keep ({exc}); "
            "set train.loss_chunk_tokens: null"
        ) from None
    # a soft prompt's positions (prompt tuning) come first and predict nothing of the input
    return input_positions(out.hidden_states[-1], inputs["input_ids"]), out.logits


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


def _chunk_logps(
    head: torch.nn.Module, hidden: torch.Tensor, targets: torch.Tensor, temperature: float
) -> torch.Tensor:
    import torch.nn.functional as F

    logits = head(hidden).float()
    if temperature != 1.0:
        logits = logits / temperature
    return -F.cross_entropy(logits, targets, reduction="none")


def chunked_target_logps(
    head: torch.nn.Module,
    hidden: torch.Tensor,
    labels: torch.Tensor,
    chunk_tokens: int,
    temperature: float = 1.0,
) -> torch.Tensor:
    """log softmax(head(hidden) / temperature)[label] at every position with a label (-100: none, 0
    there), float32, shaped like `labels`; `chunk_tokens` targets through the head at a time.

    Only the rows with a target go through the head: with completion-only labels (SFT, DPO's responses,
    RL's answers) the prompt tokens' logits are never computed. Under autograd each chunk is
    checkpointed, so the backward pass recomputes one chunk's logits at a time instead of keeping all.
    """
    import torch
    from torch.utils.checkpoint import checkpoint

    if chunk_tokens < 1:
        raise ValueError(f"chunk_tokens must be at least 1, got {chunk_tokens}")
    flat_labels = labels.reshape(-1)
    rows = (flat_labels != IGNORE_INDEX).nonzero().squeeze(1)
    hidden = hidden.reshape(-1, hidden.shape[-1]).index_select(0, rows)
    targets = flat_labels.index_select(0, rows)
    recompute = torch.is_grad_enabled()
    pieces = []
    for start in range(0, len(rows), chunk_tokens):
        piece = hidden[start : start + chunk_tokens]
        wanted = targets[start : start + chunk_tokens]
        if recompute:
            pieces.append(checkpoint(_chunk_logps, head, piece, wanted, temperature, use_reentrant=False))
        else:
            pieces.append(_chunk_logps(head, piece, wanted, temperature))
    # no target at all: an empty vector still attached to the graph, so a loss from it backpropagates
    values = torch.cat(pieces) if pieces else hidden.float().sum(-1)
    out = torch.zeros(flat_labels.shape, dtype=torch.float32, device=hidden.device)
    return out.index_copy(0, rows, values).view(labels.shape)


_VERIFIED_HEADS: weakref.WeakSet[torch.nn.Module] = weakref.WeakSet()


def target_logps(
    model: torch.nn.Module,
    inputs: dict[str, torch.Tensor],
    labels: torch.Tensor,
    chunk_tokens: int,
    temperature: float = 1.0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(the per-target log-probs of `chunked_target_logps`, the final hidden states [B, T, H]) from one
    forward of `model` on `inputs`, with `labels` aligned to the positions that predict them (a
    causal LM's logits at t predict token t + 1). Checks once per head that it reproduces the
    model's logits (`check_head_reproduces_logits`)."""
    hidden, last_logits = final_hidden_states(model, inputs)
    head = output_head(model)
    if head not in _VERIFIED_HEADS:
        check_head_reproduces_logits(head, hidden, last_logits)
        _VERIFIED_HEADS.add(head)
    return chunked_target_logps(head, hidden, labels, chunk_tokens, temperature), hidden

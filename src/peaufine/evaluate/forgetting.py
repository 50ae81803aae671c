"""Catastrophic forgetting: loss and perplexity on general held-out text before vs after fine-tuning,
with the relative change and a warning above a threshold."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

from peaufine.data.batching import PackedBlocks
from peaufine.engine.fit import evaluate_loss
from peaufine.evaluate.evidence import is_meaningful, qualified
from peaufine.methods.lm import NextTokenLoss

if TYPE_CHECKING:
    from transformers import PreTrainedModel

    from peaufine.engine.runtime import Runtime


@dataclass
class ForgettingReport:
    source: str
    loss_before: float
    loss_after: float
    relative_change: float  # (after - before) / before; positive means the model got worse
    perplexity_before: float
    perplexity_after: float
    threshold: float
    forgot: bool
    blocks: int | None = None  # blocks of general text the losses rest on; None: not known here

    meaningful: bool | None = None  # whether `blocks` is enough for a verdict: set from it

    def __post_init__(self) -> None:
        self.meaningful = is_meaningful(self.blocks)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    def verdict(self) -> str:
        change = f"{self.relative_change:+.1%}"
        if self.forgot:
            found = (
                f"forgetting: general loss {self.loss_before:.4f} -> {self.loss_after:.4f} "
                f"({change}, above the {self.threshold:.0%} threshold); consider LoRA, a lower "
                "learning rate, or replay (data.replay.ratio)"
            )
        else:
            found = (
                f"no forgetting beyond {self.threshold:.0%}: general loss {self.loss_before:.4f} -> "
                f"{self.loss_after:.4f} ({change})"
            )
        return qualified(found, self.blocks, "block of general text", "blocks of general text")


def forgetting_report(
    source: str, before: float, after: float, threshold: float, blocks: int | None = None
) -> ForgettingReport:
    """Before vs after on the general text; `blocks`: how many blocks of it the losses rest on."""
    change = (after - before) / before if before > 0 else math.inf
    return ForgettingReport(
        source=source,
        loss_before=before,
        loss_after=after,
        relative_change=change,
        perplexity_before=math.exp(before),
        perplexity_after=math.exp(after),
        threshold=threshold,
        forgot=change > threshold,
        blocks=blocks,
    )


GENERAL_BATCH = 16  # blocks per batch of general_loss


def general_blocks(general: Any, block: int, max_blocks: int | None) -> int:
    """How many blocks of `general` general_loss measures: all of them, or its batches' worth."""
    available = len(PackedBlocks(general, block))
    return available if max_blocks is None else min(available, _max_batches(max_blocks) * GENERAL_BATCH)


def _max_batches(max_blocks: int) -> int:
    return max(1, max_blocks // GENERAL_BATCH)


def general_loss(
    model: PreTrainedModel, general: Any, runtime: Runtime, block: int, max_blocks: int | None
) -> float:

    blocks = PackedBlocks(general, block)
    return evaluate_loss(
        model,
        NextTokenLoss(),
        blocks,
        runtime,
        batch_size=GENERAL_BATCH,
        max_batches=(None if max_blocks is None else _max_batches(max_blocks)),
    )

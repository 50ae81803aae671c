"""Each example's (or general-text block's) summed next-token loss and target count: the per-example
values that intervals and paired tests over examples resample, which a mean loss hides."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from peaufine.data.batching import batch_to
from peaufine.evaluate.stats import Estimate, PairedComparison, paired_ratio_bootstrap, ratio_bootstrap
from peaufine.methods.preference import sequence_logps

if TYPE_CHECKING:
    from transformers import PreTrainedModel

    from peaufine.data.batching import Dataset
    from peaufine.engine.runtime import Runtime


@dataclass(frozen=True)
class ExampleLosses:
    """Summed loss and target tokens per row, in dataset order: their ratio of sums is the mean loss
    per target token that evaluate_loss reports."""

    sums: list[float]
    targets: list[int]

    @property
    def has_targets(self) -> bool:
        """Some row has a target token: a mean loss, hence an interval, exists."""
        return sum(self.targets) > 0

    def estimate(self) -> Estimate:
        """The mean loss per target token with a bootstrap interval over rows."""
        return ratio_bootstrap(self.sums, self.targets)

    def minus(self, earlier: ExampleLosses) -> PairedComparison:
        """This loss minus `earlier`'s on the same rows, by a paired bootstrap over rows."""
        return paired_ratio_bootstrap(earlier.sums, earlier.targets, self.sums, self.targets)


def example_losses(
    model: PreTrainedModel, dataset: Dataset, runtime: Runtime, rows: int | None = None, batch_size: int = 16
) -> ExampleLosses:
    """The summed next-token loss and target count of each of the first `rows` rows of `dataset` (all
    by default), in order; eval mode and no autograd, the model's mode restored."""
    import torch

    count = len(dataset) if rows is None else min(rows, len(dataset))
    sums: list[float] = []
    targets: list[int] = []
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            for start in range(0, count, batch_size):
                batch = batch_to(
                    dataset.collate(list(range(start, min(start + batch_size, count)))), runtime.device
                )
                # blocks of general text have no padding, hence no mask: every position is attended
                batch.setdefault("attention_mask", torch.ones_like(batch["input_ids"]))
                with runtime.autocast():
                    logps, counts = sequence_logps(model, batch)
                sums += (-logps.double()).tolist()
                targets += counts.tolist()
    finally:
        model.train(was_training)
    return ExampleLosses(sums, targets)


def loss_block(losses: ExampleLosses | None) -> dict[str, Any]:
    """eval.json's interval of a loss: {"ci": [low, high], "n": rows}; empty without losses."""
    if losses is None or not losses.has_targets:
        return {}
    estimate = losses.estimate()
    return {"ci": [estimate.low, estimate.high], "n": estimate.n}

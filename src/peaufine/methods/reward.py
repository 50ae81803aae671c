"""The reward model's objective: Bradley-Terry on preference pairs."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from peaufine.data.batching import Batch, PaddedExamples
from peaufine.data.pairs import encode_scored, encoder_style
from peaufine.data.tokenize import ensure_chat_template
from peaufine.engine.fit import MetricTally
from peaufine.methods.classify import classifier_logits
from peaufine.models.build import build_classifier, reward_model_dir
from peaufine.models.tokenizer import load_tokenizer
from peaufine.recipe import read_yaml
from peaufine.rundir import RunDir

if TYPE_CHECKING:
    import torch

    from peaufine.data.preferences import Prompt


def bradley_terry_losses(
    chosen: torch.Tensor,
    rejected: torch.Tensor,
    ties: torch.Tensor,
    *,
    margin: float = 0.0,
    center: float = 0.0,
) -> torch.Tensor:
    """Per-pair losses from the two rewards; `ties` marks pairs ranked equal (no margin for them).

    P(chosen > rejected) = sigmoid(r_chosen - r_rejected), so the loss of a pair is
    -log sigmoid(r_chosen - r_rejected - margin). A tie (two responses ranked equal) is a label of 1/2:
    -(log s(d) + log s(-d)) / 2, which is least when the rewards are equal. Only differences of rewards are
    identified, so a small centring term, center * (r_chosen + r_rejected)^2, keeps them near zero and
    comparable across runs.
    """
    import torch
    import torch.nn.functional as F

    gap = chosen - rejected
    decided = -F.logsigmoid(gap - margin)
    tied = -(F.logsigmoid(gap) + F.logsigmoid(-gap)) / 2
    return torch.where(ties, tied, decided) + center * (chosen + rejected) ** 2


@dataclass
class BradleyTerryLoss:
    """Summed weighted pair losses; units are pairs. Batches are PairBatches' (chosen rows first)."""

    margin: float = 0.0
    center: float = 0.0
    tally: MetricTally = field(default_factory=MetricTally)

    def loss_sum(self, model: torch.nn.Module, batch: Batch) -> torch.Tensor:
        import torch

        rewards = classifier_logits(model, batch).squeeze(-1)
        n = rewards.shape[0] // 2
        chosen, rejected = rewards[:n], rewards[n:]
        ties = batch["ties"]
        losses = bradley_terry_losses(chosen, rejected, ties, margin=self.margin, center=self.center)
        weights = batch["weights"].to(losses.dtype)
        with torch.no_grad():
            decided = weights * (~ties)
            self.tally.add("accuracy", (decided * (chosen > rejected)).sum(), decided.sum())
            self.tally.add("reward_margin", (decided * (chosen - rejected)).sum(), decided.sum())
            self.tally.add("reward_mean", rewards.sum(), rewards.numel())
        return (weights * losses).sum()

    def count(self, batch: Batch) -> torch.Tensor:
        return batch["weights"].sum()


class RewardScorer:
    """A trained reward model that scores (prompt, response) texts.

    Texts are tokenized with the reward model's own tokenizer, so a policy with another tokenizer
    (or vocabulary) is scored correctly: ids are never passed from one model to the other.
    """

    def __init__(self, model: Any, tokenizer: Any, *, max_length: int = 512, batch_size: int = 32) -> None:
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.max_length = max_length
        self.batch_size = batch_size
        self.pad_id = model.config.pad_token_id if model.config.pad_token_id is not None else 0

    @classmethod
    def load(cls, path: str | Path, *, max_length: int | None = None, device: str = "cpu") -> RewardScorer:
        """A reward model folder (AutoModelForSequenceClassification, one label) or a reward run.

        `max_length` defaults to the run's data.max_length (texts are cut as in training), else 512.
        """

        directory = reward_model_dir(path)
        run = RunDir(directory.parent)
        if directory.name == "model" and max_length is None and run.recipe.is_file():
            max_length = read_yaml(run.recipe).get("data", {}).get("max_length")
        model = build_classifier(directory, 1)
        tokenizer = load_tokenizer(str(directory))
        if not encoder_style(tokenizer):
            ensure_chat_template(tokenizer)
        return cls(model.to(device), tokenizer, max_length=max_length or 512)

    def score(self, prompts: Sequence[Prompt], responses: Sequence[str]) -> list[float]:
        import torch

        device = next(self.model.parameters()).device
        examples = []
        for prompt, response in zip(prompts, responses, strict=True):
            encoded = encode_scored(
                self.tokenizer, prompt, response, max_length=self.max_length, too_long="truncate"
            )
            assert encoded is not None  # truncation never drops a text
            examples.append(encoded[0])
        rows = PaddedExamples(examples, self.pad_id)
        scores: list[float] = []
        with torch.no_grad():
            for start in range(0, len(examples), self.batch_size):
                batch = rows.collate(range(start, min(len(examples), start + self.batch_size)))
                batch = {k: v.to(device) for k, v in batch.items()}
                scores += classifier_logits(self.model, batch).squeeze(-1).tolist()
        return scores

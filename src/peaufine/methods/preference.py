"""Direct preference optimisation and its variants: the policy learns from pairs without a reward model."""

# All four losses are functions of the summed log-probabilities of the chosen and rejected responses
# under the policy (and, but for SimPO, under the frozen reference):
# - sigmoid (DPO, Rafailov et al. 2023): -log sigmoid(beta * h), h = (pi_c - ref_c) - (pi_r - ref_r);
# - cdpo (conservative DPO): labels flipped with probability eps: -(1-eps) log s(beta h) - eps log s(-beta h);
# - ipo (Azar et al. 2023, eq. 17): (h - 1/(2 beta))^2, a squared loss that stops pushing once the margin
#   is met; by default on per-token mean log-ratios (h = (pi_c - ref_c)/|y_c| - (pi_r - ref_r)/|y_r|), as
#   TRL does (trl/trainer/dpo_trainer.py, DPOTrainer.concatenated_forward: `if self.loss_type == "ipo":
#   all_logps = all_logps / loss_mask.sum(-1)`), so that beta's meaning and the loss do not depend on
#   answer length; method.dpo.ipo_log_ratio: sum keeps the summed form;
# - simpo (Meng et al. 2024): reference-free, length-normalised:
#   -log s(beta_s (pi_c/|y_c| - pi_r/|y_r|) - gamma).
# Any of them can add `sft_weight` times the chosen answer's mean negative log-likelihood (RPO).

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from peaufine.data.batching import IGNORE_INDEX, Batch, batch_to
from peaufine.engine.fit import MetricTally
from peaufine.engine.parallel import unwrap
from peaufine.errors import RecipeError
from peaufine.methods.chunked_loss import target_logps
from peaufine.models.adapters import input_positions

if TYPE_CHECKING:
    import torch

    from peaufine.data.pairs import PairBatches
    from peaufine.engine.runtime import Runtime
    from peaufine.recipe import DpoBlock

LOSSES = ("sigmoid", "ipo", "cdpo", "simpo")


def sequence_logps(
    model: torch.nn.Module, batch: Batch, chunk_tokens: int | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Summed log-probability of each row's target tokens, and the number of targets per row.

    One cross-entropy over the shifted labels (float32), so the full log-softmax is never kept; with
    `chunk_tokens` (train.loss_chunk_tokens) not even the logits are, but `chunk_tokens` targets' worth.
    """
    import torch.nn.functional as F

    labels = batch["labels"]
    inputs = {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"]}
    if chunk_tokens is not None:
        logps, _ = target_logps(model, inputs, labels, chunk_tokens)
        return logps.sum(-1), (labels != IGNORE_INDEX).sum(-1)
    logits = input_positions(model(**inputs, use_cache=False).logits, batch["input_ids"])
    nll = F.cross_entropy(
        logits.reshape(-1, logits.shape[-1]).float(),
        labels.reshape(-1),
        ignore_index=IGNORE_INDEX,
        reduction="none",
    ).view(labels.shape)
    return -nll.sum(-1), (labels != IGNORE_INDEX).sum(-1)


def preference_losses(
    loss: str,
    policy_chosen: torch.Tensor,
    policy_rejected: torch.Tensor,
    reference_chosen: torch.Tensor | None,
    reference_rejected: torch.Tensor | None,
    length_chosen: torch.Tensor,
    length_rejected: torch.Tensor,
    *,
    beta: float = 0.1,
    label_smoothing: float = 0.0,
    simpo_beta: float = 2.0,
    simpo_gamma: float = 0.5,
    ipo_log_ratio: str = "per_token",
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per-pair losses, and the implicit rewards of the chosen and rejected responses.

    The rewards are beta times the log-ratios the loss compares (per-token means for IPO's default),
    so that their margin and the accuracy read from them are those of the loss.
    """
    import torch.nn.functional as F

    if loss == "simpo":
        chosen = simpo_beta * policy_chosen / length_chosen.clamp(min=1)
        rejected = simpo_beta * policy_rejected / length_rejected.clamp(min=1)
        return -F.logsigmoid(chosen - rejected - simpo_gamma), chosen, rejected
    if reference_chosen is None or reference_rejected is None:
        raise RecipeError(f"method.dpo.loss {loss}: needs the reference model's log-probabilities")
    chosen_ratio = policy_chosen - reference_chosen
    rejected_ratio = policy_rejected - reference_rejected
    if loss == "ipo" and ipo_log_ratio == "per_token":
        chosen_ratio = chosen_ratio / length_chosen.clamp(min=1)
        rejected_ratio = rejected_ratio / length_rejected.clamp(min=1)
    elif loss == "ipo" and ipo_log_ratio != "sum":
        raise RecipeError(f"method.dpo.ipo_log_ratio: unknown form {ipo_log_ratio!r}; use per_token or sum")
    h = chosen_ratio - rejected_ratio
    if loss == "sigmoid":
        losses = -F.logsigmoid(beta * h)
    elif loss == "cdpo":
        losses = -(1 - label_smoothing) * F.logsigmoid(beta * h) - label_smoothing * F.logsigmoid(-beta * h)
    elif loss == "ipo":
        losses = (h - 1 / (2 * beta)) ** 2
    else:
        raise RecipeError(f"method.dpo.loss: unknown loss {loss!r}; use one of {', '.join(LOSSES)}")
    return losses, beta * chosen_ratio, beta * rejected_ratio


@dataclass
class DpoLoss:
    """The DPO family as an engine objective; units are pairs (weighted: a ranking's pairs share one).

    Reference log-probs come with the batch (`ref_logps`, computed once before training), or, with
    `adapter_reference`, from the same LoRA model with its adapter disabled, under no_grad.
    `chunk_tokens`: log-probs a chunk of targets at a time (train.loss_chunk_tokens).
    """

    config: DpoBlock
    adapter_reference: bool = False
    chunk_tokens: int | None = None
    tally: MetricTally = field(default_factory=MetricTally)

    def loss_sum(self, model: torch.nn.Module, batch: Batch) -> torch.Tensor:
        import torch

        logps, lengths = sequence_logps(model, batch, self.chunk_tokens)
        n = logps.shape[0] // 2
        reference = None
        if self.config.loss != "simpo":
            if "ref_logps" in batch:
                reference = batch["ref_logps"].to(logps.dtype)
            elif self.adapter_reference:
                reference = adapter_disabled_logps(model, batch, self.chunk_tokens)
            else:
                raise RecipeError("DPO needs reference log-probs: compute them before training")
        losses, chosen_rewards, rejected_rewards = preference_losses(
            self.config.loss,
            logps[:n],
            logps[n:],
            None if reference is None else reference[:n],
            None if reference is None else reference[n:],
            lengths[:n],
            lengths[n:],
            beta=self.config.beta,
            label_smoothing=self.config.label_smoothing if self.config.loss == "cdpo" else 0.0,
            simpo_beta=self.config.simpo_beta,
            simpo_gamma=self.config.simpo_gamma,
            ipo_log_ratio=self.config.ipo_log_ratio,
        )
        if self.config.sft_weight > 0:
            # RPO (Pang et al. 2024): the chosen answer's mean NLL per token, so DPO cannot win by
            # pushing both answers down (likelihood displacement)
            losses = losses + self.config.sft_weight * (-logps[:n] / lengths[:n].clamp(min=1))
        weights = batch["weights"].to(losses.dtype)
        with torch.no_grad():
            tally, total = self.tally, weights.sum()
            tally.add("accuracy", (weights * (chosen_rewards > rejected_rewards)).sum(), total)
            tally.add("reward_margin", (weights * (chosen_rewards - rejected_rewards)).sum(), total)
            tally.add("reward_chosen", (weights * chosen_rewards).sum(), total)
            tally.add("reward_rejected", (weights * rejected_rewards).sum(), total)
            tally.add("logp_chosen", (weights * logps[:n]).sum(), total)
            tally.add("logp_rejected", (weights * logps[n:]).sum(), total)
            if reference is not None:
                # policy-minus-reference summed log-prob, the mean of a pair's two answers: how far
                # training moved them; not a KL (which is over the policy's own samples, and >= 0):
                # it is negative when both answers lose probability, as DPO often makes them do
                drift = (logps - reference).view(2, n).mean(0)
                tally.add("mean_log_ratio", (weights * drift).sum(), total)
        return (weights * losses).sum()

    def count(self, batch: Batch) -> torch.Tensor:
        return batch["weights"].sum()


@contextmanager
def adapter_disabled(model: torch.nn.Module) -> Iterator[torch.nn.Module]:
    """The adapted model under `model` with its adapter off (PEFT's disable_adapter, which every PEFT
    kind has: LoRA, (IA)3, a soft prompt), without gradients: the model it started from, the reference
    of DPO and RL when no copy of it is kept."""
    import torch

    peft_model = unwrap(model)
    if not hasattr(peft_model, "disable_adapter"):
        raise RecipeError(
            "method.dpo.reference: adapter needs an adapter to switch off (model.adapter.kind other than "
            "none); set method.dpo.reference: precomputed"
        )
    with torch.no_grad(), peft_model.disable_adapter():
        yield peft_model


def adapter_disabled_logps(
    model: torch.nn.Module, batch: Batch, chunk_tokens: int | None = None
) -> torch.Tensor:
    """Summed log-probs under the adapted model with its adapter off: the base model, no copy kept."""
    with adapter_disabled(model) as base:
        return sequence_logps(base, batch, chunk_tokens)[0].detach()


def precompute_reference(
    model: torch.nn.Module,
    datasets: Sequence[PairBatches],
    runtime: Runtime,
    batch_size: int,
    chunk_tokens: int | None = None,
) -> None:
    """Store each pair's reference log-probs, computed once with `model` before it is trained.

    The policy starts as the reference, so no second model is ever resident; dropout is off (eval
    mode). Every process computes all pairs of its data: they are few next to training.
    """
    import torch

    was_training = model.training
    model.eval()
    with torch.no_grad():
        for dataset in datasets:
            # longest first, so each batch holds pairs of similar length: little padding is computed
            order = sorted(
                range(len(dataset)),
                key=lambda i: (
                    -max(len(dataset.pairs[i].chosen.input_ids), len(dataset.pairs[i].rejected.input_ids))
                ),
            )
            for start in range(0, len(order), batch_size):
                indices = order[start : start + batch_size]
                batch = batch_to(dataset.collate(indices), runtime.device)
                with runtime.autocast():
                    logps = sequence_logps(model, batch, chunk_tokens)[0].double().cpu().tolist()
                for k, i in enumerate(indices):
                    dataset.pairs[i].ref_chosen = logps[k]
                    dataset.pairs[i].ref_rejected = logps[len(indices) + k]
    model.train(was_training)


def disable_dropout(model: torch.nn.Module) -> int:
    """Set every dropout probability to 0 (DPO and RL compare log-probs of two forwards, in train mode
    for activation checkpointing: dropout would add noise to both sides); returns how many dropout
    probabilities there were.

    Those of dropout modules, and the plain float attributes attention layers keep and apply themselves
    in train mode (`attention_dropout` of Llama, Mistral, Qwen, Gemma, Phi-3: no module to find).
    The model's config keeps its values: the saved model is as it was given.
    """
    import torch

    count = 0
    for module in model.modules():
        if isinstance(module, torch.nn.Dropout):
            module.p = 0.0
            count += 1
            continue
        for name, value in list(vars(module).items()):
            if "dropout" in name and isinstance(value, float):
                setattr(module, name, 0.0)
                count += 1
    return count

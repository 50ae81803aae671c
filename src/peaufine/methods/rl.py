"""Reinforcement learning from rewards: the GRPO and PPO objectives, their advantages and the KL leash
to a reference policy, as functions on per-token tensors (plus the value head PPO needs)."""

# Alignment, everywhere here: a per-token tensor [N, L] lines up with `input_ids` [N, L], column t holding
# what concerns token t. `logps[:, t]` is log pi(input_ids[:, t] | input_ids[:, :t]), read from the logits
# at position t - 1. `values[:, t]` is the value of the state just before token t is generated (the return
# expected from generating token t onwards), read from the hidden state at position t - 1. Rewards and
# advantages at column t are those of emitting token t. Column 0 predicts nothing; it, and every column
# outside the response mask, holds 0.
#
# Imported only by the RL stage (itself imported inside its command), so torch is imported at the top.

from __future__ import annotations

import contextlib
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch

from peaufine.data.batching import IGNORE_INDEX, Batch
from peaufine.engine.fit import MetricTally
from peaufine.methods.chunked_loss import target_logps
from peaufine.methods.preference import adapter_disabled

if TYPE_CHECKING:
    from peaufine.methods.rollout import Rollouts
    from peaufine.recipe import RlBlock

KL_ESTIMATORS = ("k1", "k3")
# The training forward's precision (`runtime.autocast`): the old policy's and the reference's log-probs
# (and PPO's old values) are computed under it too, or the first importance ratio is the difference of
# two precisions rather than 1, and step 0 shows a KL to the reference that is not there.
Autocast = Callable[[], contextlib.AbstractContextManager[Any]]


# -- log-probs and values from one forward ---------------------------------------------------------
def position_ids_for(attention_mask: torch.Tensor) -> torch.Tensor:
    """Positions that ignore left padding: each row's first real token is position 0, as it was when
    `generate` sampled the row (padding gets 0 too; attention never looks at it)."""
    return (attention_mask.long().cumsum(-1) - 1).clamp(min=0)


def policy_forward(
    model: torch.nn.Module, input_ids: torch.Tensor, attention_mask: torch.Tensor, hidden_states: bool = False
) -> Any:
    """The model's output on left-padded rows, without a KV cache (nothing is generated here)."""
    return model(
        input_ids=input_ids,
        attention_mask=attention_mask,
        position_ids=position_ids_for(attention_mask),
        use_cache=False,
        output_hidden_states=hidden_states,
    )


def logprobs_of_tokens(
    logits: torch.Tensor, input_ids: torch.Tensor, response_mask: torch.Tensor, temperature: float = 1.0
) -> torch.Tensor:
    """[N, L] log-probs of the response tokens under softmax(logits / temperature), 0 elsewhere.

    `logits` are as a causal LM returns them: position t predicts token t + 1. Only the columns from the
    first response token on are used, and the log-softmax itself is never materialised: the chosen logit
    minus the logsumexp, in float32 (in bf16 the ratio of new to old policy would be mostly rounding).
    """
    n, length = input_ids.shape
    response_mask = response_mask.bool()
    columns = response_mask.any(0).nonzero()
    if columns.numel() == 0:
        return torch.zeros(n, length, dtype=torch.float32, device=input_ids.device)
    first = max(int(columns[0]), 1)
    scaled = logits[:, first - 1 : -1].float() / temperature
    chosen = scaled.gather(-1, input_ids[:, first:].unsqueeze(-1)).squeeze(-1)
    logps = torch.cat([chosen.new_zeros(n, first), chosen - torch.logsumexp(scaled, dim=-1)], dim=1)
    # where(), not a product with the mask: 0 * NaN from a padded position would still be NaN
    return torch.where(response_mask, logps, torch.zeros_like(logps))


def response_labels(input_ids: torch.Tensor, response_mask: torch.Tensor) -> torch.Tensor:
    """Labels aligned with the positions that predict them: column t - 1 holds token t where token t
    is a response token, -100 elsewhere (the layout of `chunked_target_logps`)."""

    labels = torch.full_like(input_ids, IGNORE_INDEX)
    labels[:, :-1] = torch.where(response_mask[:, 1:].bool(), input_ids[:, 1:], IGNORE_INDEX)
    return labels


def token_logprobs_and_hidden(
    model: torch.nn.Module,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    response_mask: torch.Tensor,
    temperature: float = 1.0,
    chunk_tokens: int | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(`token_logprobs`, the final hidden states [N, L, H]) from one forward: what PPO's policy and
    value head both read."""
    if chunk_tokens is None:
        out = policy_forward(model, input_ids, attention_mask, hidden_states=True)
        return logprobs_of_tokens(out.logits, input_ids, response_mask, temperature), out.hidden_states[-1]

    inputs = {
        "input_ids": input_ids,
        "attention_mask": attention_mask,
        "position_ids": position_ids_for(attention_mask),
    }
    labels = response_labels(input_ids, response_mask)
    shifted, hidden = target_logps(model, inputs, labels, chunk_tokens, temperature)
    logps = torch.cat([shifted.new_zeros(shifted.shape[0], 1), shifted[:, :-1]], dim=1)
    return logps, hidden


def token_logprobs(
    model: torch.nn.Module,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    response_mask: torch.Tensor,
    temperature: float = 1.0,
    chunk_tokens: int | None = None,
) -> torch.Tensor:
    """[N, L] log pi(token t | tokens before t) on response tokens, 0 elsewhere.

    `temperature` must be the one the rollouts were sampled at, so that the ratio of the policy to the
    sampling policy starts at exactly 1. Sampling's top-k truncation is not applied: the policy being
    optimised is the full softmax (as in TRL). `chunk_tokens` (train.loss_chunk_tokens): the response
    tokens go through the output head that many at a time, never the whole [N, L, vocabulary] logits.
    """
    if chunk_tokens is None:
        logits = policy_forward(model, input_ids, attention_mask).logits
        return logprobs_of_tokens(logits, input_ids, response_mask, temperature)
    return token_logprobs_and_hidden(
        model, input_ids, attention_mask, response_mask, temperature, chunk_tokens
    )[0]


class ValueHead(torch.nn.Module):
    """A linear map from the last hidden state to a scalar value, zero-initialised: every value starts at
    0, so the first advantages are the rewards themselves and the value loss sends no gradient into the
    shared trunk until the head has learnt something. Its parameters belong in the optimiser."""

    def __init__(self, hidden_size: int) -> None:
        super().__init__()
        self.linear = torch.nn.Linear(hidden_size, 1)
        torch.nn.init.zeros_(self.linear.weight)
        torch.nn.init.zeros_(self.linear.bias)

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        """[N, L, H] -> [N, L] float32: one value per position, from that position's hidden state."""
        return self.linear(hidden.to(self.linear.weight.dtype)).squeeze(-1).float()


class PolicyWithValue(torch.nn.Module):
    """PPO's trainable module: the policy and its value head under one optimiser. Called, it is the
    policy (the head reads the policy's hidden states inside PpoLoss); saved, only the policy is
    written in Hugging Face format, and the head beside it."""

    def __init__(self, policy: torch.nn.Module, head: ValueHead) -> None:
        super().__init__()
        self.policy = policy
        self.head = head

    def forward(self, **inputs: Any) -> Any:
        return self.policy(**inputs)

    def get_output_embeddings(self) -> torch.nn.Module | None:
        """The policy's output head (the chunked log-probs apply it themselves)."""
        return self.policy.get_output_embeddings()


def values_of_tokens(head: ValueHead, hidden: torch.Tensor) -> torch.Tensor:
    """[N, L] values aligned like log-probs: column t is the head on the hidden state at t - 1, the
    state from which token t is generated; column 0 is 0."""
    values = head(hidden)
    return torch.cat([values.new_zeros(values.shape[0], 1), values[:, :-1]], dim=1)


def token_values(
    model: torch.nn.Module, head: ValueHead, input_ids: torch.Tensor, attention_mask: torch.Tensor
) -> torch.Tensor:
    """[N, L] V(state before token t) at every column t >= 1 (0 at column 0), from the model's last
    hidden state; mask it with the response mask, as `gae` does."""
    out = policy_forward(model, input_ids, attention_mask, hidden_states=True)
    return values_of_tokens(head, out.hidden_states[-1])


# -- advantages ------------------------------------------------------------------------------------
def group_advantages(
    rewards: torch.Tensor, group_size: int, *, scale: bool = True, eps: float = 1e-4
) -> torch.Tensor:
    """GRPO's advantages (Shao et al. 2024, DeepSeekMath eq. 3): each reward minus its group's mean,
    divided by (the group's std + eps) when `scale` (Dr. GRPO, Liu et al. 2025, argues for scale=False).

    `rewards` [P * G] are ordered group by group. The std is the population one (unbiased=False), so a
    scaled group has unit std; TRL uses the sample std, which differs by sqrt(G / (G - 1)), the same for
    every group. A group whose rewards are all equal gets exactly 0: its mean may differ from the rewards
    by a rounding error, which dividing by eps would blow up into a spurious advantage.
    """
    if group_size < 1 or rewards.numel() % group_size:
        raise ValueError(f"{rewards.numel()} rewards do not split into groups of {group_size}")
    grouped = rewards.float().view(-1, group_size)
    centred = grouped - grouped.mean(dim=1, keepdim=True)
    if scale:
        centred = centred / (grouped.std(dim=1, unbiased=False, keepdim=True) + eps)
    constant = grouped.amax(dim=1, keepdim=True) == grouped.amin(dim=1, keepdim=True)
    return torch.where(constant, torch.zeros_like(centred), centred).view(-1)


def kl_penalised_rewards(
    scores: torch.Tensor,
    logps: torch.Tensor,
    ref_logps: torch.Tensor,
    mask: torch.Tensor,
    kl_coef: float,
) -> torch.Tensor:
    """Per-token rewards of Ziegler et al. 2019 and InstructGPT (Ouyang et al. 2022, eq. 2):
    -kl_coef * (logp - ref_logp) at every response token, plus the sequence's score [N] at its last
    response token. Rows without a response token get nothing."""
    mask = mask.bool()
    rewards = torch.where(mask, -kl_coef * (logps.float() - ref_logps.float()), 0.0)
    length = mask.shape[1]
    last = length - 1 - mask.flip(1).int().argmax(dim=1)
    score = torch.where(mask.any(dim=1), scores.float(), 0.0)
    return rewards.index_put((torch.arange(mask.shape[0], device=mask.device), last), score, accumulate=True)


def gae(
    rewards: torch.Tensor, values: torch.Tensor, mask: torch.Tensor, gamma: float, lam: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """Generalised advantage estimation (Schulman et al. 2016, eqs. 11-16) over each row's response.

    delta_t = r_t + gamma * V_{t+1} - V_t and A_t = delta_t + gamma * lam * A_{t+1}, where V_{t+1} is the
    value at the next response column and 0 after the last one (the episode ends there). `mask` marks
    response tokens, contiguous within each row. Returns (advantages, returns = advantages + values),
    both 0 outside the mask. Computed without gradients; the loop runs over columns, not rows.
    """
    with torch.no_grad():
        mask = mask.bool()
        rewards, values = rewards.float(), values.float()
        zeros = torch.zeros_like(rewards[:, 0])
        next_value, next_advantage = zeros, zeros
        columns = []
        for t in reversed(range(rewards.shape[1])):
            delta = rewards[:, t] + gamma * next_value - values[:, t]
            advantage = torch.where(mask[:, t], delta + gamma * lam * next_advantage, zeros)
            # a column outside the mask passes on 0: past the response, nothing more is earned
            next_value = torch.where(mask[:, t], values[:, t], zeros)
            next_advantage = advantage
            columns.append(advantage)
        advantages = torch.stack(columns[::-1], dim=1)
        returns = torch.where(mask, advantages + values, 0.0)
    return advantages, returns


def whiten(x: torch.Tensor, mask: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """(x - mean) / std over the masked entries (population std), 0 elsewhere: PPO's per-batch
    normalisation of advantages, which keeps the step size independent of the reward scale."""
    mask = mask.bool()
    chosen = x[mask].float()
    if chosen.numel() == 0:
        return torch.zeros_like(x, dtype=torch.float32)
    mean, var = chosen.mean(), chosen.var(unbiased=False)
    return torch.where(mask, (x.float() - mean) * torch.rsqrt(var + eps), 0.0)


def ppo_advantages(
    scores: torch.Tensor,
    logps: torch.Tensor,
    ref_logps: torch.Tensor,
    values: torch.Tensor,
    mask: torch.Tensor,
    kl_coef: float,
    gamma: float,
    lam: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    """PPO's per-token (advantages, returns) from the sequences' scores [N], the sampling policy's and
    the reference's log-probs and the old values [N, L]: the KL leash is in the rewards, the
    advantages are whitened over the rollouts' response tokens before any pass over them."""
    # r_t = -kl_coef * (logp_t - ref_t), plus the score at the last token (Ziegler et al. 2019;
    # InstructGPT, Ouyang et al. 2022, eq. 2)
    rewards = kl_penalised_rewards(scores, logps, ref_logps, mask, kl_coef)
    # A_t = sum_k (gamma lam)^k delta_{t+k}, delta_t = r_t + gamma V_{t+1} - V_t (Schulman et al. 2016)
    advantages, returns = gae(rewards, values, mask, gamma, lam)
    # (A - mean) / std over the rollouts' response tokens, as Ziegler et al. 2019's code does
    return whiten(advantages, mask), returns


# -- one step's rollouts as the objectives' batch ----------------------------------------------------
def reference_logps(
    policy: torch.nn.Module,
    reference: torch.nn.Module | None,
    rollouts: Rollouts,
    temperature: float,
    chunk_tokens: int | None = None,
    autocast: Autocast = contextlib.nullcontext,
) -> torch.Tensor:
    """[N, L] log-probs of the rollouts under the reference: the frozen copy of the starting policy
    when there is one (full fine-tuning), else the LoRA policy with its adapter off; computed under
    `autocast`, the training forward's precision."""

    args = (rollouts.input_ids, rollouts.attention_mask, rollouts.response_mask, temperature, chunk_tokens)
    if reference is not None:
        with torch.no_grad(), autocast():
            return token_logprobs(reference, *args)
    with adapter_disabled(policy) as base, autocast():
        return token_logprobs(base, *args)


def rollout_batch(
    rollouts: Rollouts,
    scores: list[float],
    policy: torch.nn.Module,
    reference: torch.nn.Module | None,
    config: RlBlock,
    kl_coef: float,
    head: ValueHead | None,
    chunk_tokens: int | None = None,
    autocast: Autocast = contextlib.nullcontext,
) -> tuple[Batch, dict[str, float]]:
    """The batch GrpoLoss (`head` None) or PpoLoss trains on: the rollouts with the sampling policy's
    ("old") and the reference's log-probs, the advantages (and PPO's old values and returns); plus
    what to log about the rollouts themselves (reward statistics, response length, KL and entropy).

    GRPO with one pass of one mini-batch optimises the very policy that sampled: its old log-probs are
    those of the training forward (GrpoLoss without old_logps), which then also tallies the rollouts'
    entropy and KL; no forward of the policy is spent on them here. Every forward here runs under
    `autocast`, the training forward's precision (`runtime.autocast`), so that the first update's
    ratio is exactly 1."""
    r = rollouts
    mask = r.response_mask
    rewards = torch.tensor(scores, dtype=torch.float32, device=r.input_ids.device)
    on_policy = head is None and config.passes == 1 and config.mini_batches == 1
    with torch.no_grad(), autocast():
        if on_policy:
            old = None
        elif head is None:
            old = token_logprobs(
                policy, r.input_ids, r.attention_mask, mask, config.temperature, chunk_tokens
            )
        else:
            old, hidden = token_logprobs_and_hidden(
                policy, r.input_ids, r.attention_mask, mask, config.temperature, chunk_tokens
            )
            old_values = torch.where(mask, values_of_tokens(head, hidden), 0.0)
    ref = reference_logps(policy, reference, r, config.temperature, chunk_tokens, autocast)
    batch = {"input_ids": r.input_ids, "attention_mask": r.attention_mask, "response_mask": mask}
    if head is None:
        batch["ref_logps"] = ref
        if old is not None:
            batch["old_logps"] = old
        # (r - mean of the group) / std of the group (DeepSeekMath, Shao et al. 2024, eq. 3)
        batch["advantages"] = group_advantages(rewards, config.group_size, scale=config.scale_rewards)
    else:  # PPO's leash is in the rewards: the loss needs no reference log-probs
        assert old is not None
        advantages, returns = ppo_advantages(
            rewards, old, ref, old_values, mask, kl_coef, config.gamma, config.lam
        )
        batch.update(old_logps=old, advantages=advantages, returns=returns, old_values=old_values)
    lengths = mask.sum(-1).float()
    logged = {
        "reward_mean": float(rewards.mean()),
        "reward_min": float(rewards.min()),
        "reward_max": float(rewards.max()),
        "response_length": float(lengths.mean()),
    }
    if old is not None:
        logged["kl"] = float(((old - ref) * mask).sum(-1).mean())
        logged["entropy"] = float(-(old * mask).sum() / mask.sum().clamp(min=1))
    return batch, logged


# -- per-token losses -----------------------------------------------------------------------------
def kl_per_token(logps: torch.Tensor, ref_logps: torch.Tensor, estimator: str = "k3") -> torch.Tensor:
    """A per-token estimate of KL(policy || reference) from tokens sampled by the policy (Schulman 2020,
    "Approximating KL divergence"). k1 = logp - ref is unbiased but can be negative; k3 =
    exp(ref - logp) - (ref - logp) - 1 is unbiased and never negative, and its gradient is 0 where the
    two policies agree. Both are 0 when logps == ref_logps."""
    if estimator == "k1":
        return logps - ref_logps
    if estimator == "k3":
        log_ratio = ref_logps - logps
        return torch.exp(log_ratio) - log_ratio - 1.0
    raise ValueError(f"kl estimator must be one of {', '.join(KL_ESTIMATORS)}, got {estimator!r}")


def clipped_policy_loss(
    logps: torch.Tensor, old_logps: torch.Tensor, advantages: torch.Tensor, clip: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """PPO's clipped surrogate (Schulman et al. 2017, eq. 7), negated to be minimised, per token.

    ratio = pi / pi_old; loss = -min(ratio * A, clip(ratio, 1 - clip, 1 + clip) * A). Where the clipped
    branch is the smaller, the loss is constant in the policy, so such a token sends no gradient: once
    a token's probability has moved by more than `clip` in the direction its advantage asks for, later
    passes over the same rollouts leave it alone. `advantages` are per sequence [N] or per token [N, L].
    Returns (loss [N, L], clipped [N, L] bool: the clipped branch was taken and differs).
    """
    if advantages.dim() == 1:
        advantages = advantages.unsqueeze(-1)
    ratio = torch.exp(logps - old_logps)
    unclipped = ratio * advantages
    clipped = ratio.clamp(1.0 - clip, 1.0 + clip) * advantages
    return -torch.minimum(unclipped, clipped), clipped < unclipped


@dataclass
class GrpoLoss:
    """GRPO (Shao et al. 2024): the clipped policy loss plus kl_coef * KL to the reference, summed over
    response tokens; units are response tokens, so every token of the global batch weighs the same
    (DAPO's token-level average, rather than DeepSeekMath's mean per sequence, which favours long
    wrong answers).

    Batch keys: input_ids, attention_mask, response_mask, old_logps, ref_logps (may be absent when
    kl_coef is 0) and advantages ([N] per sequence, or [N, L]). Without old_logps the batch is taken
    as on-policy (one pass, one mini-batch: the ratio is exactly 1), the old log-probs are this
    forward's, detached, and the rollouts' "entropy" and "kl" (nats per answer) go to the tally too,
    so the stage need not run the policy over its rollouts a second time. `tally` keeps the means, over
    response tokens, of "clip_fraction", "kl_per_token" (the loss's estimator: not the stage's "kl",
    which is nats per answer) and "ratio" until drained (`pop_stats` drains this process's).
    """

    clip: float
    kl_coef: float
    kl_estimator: str = "k3"
    temperature: float = 1.0
    chunk_tokens: int | None = None
    tally: MetricTally = field(default_factory=MetricTally, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if self.kl_estimator not in KL_ESTIMATORS:
            raise ValueError(
                f"kl_estimator must be one of {', '.join(KL_ESTIMATORS)}, got {self.kl_estimator!r}"
            )

    def loss_sum(self, model: torch.nn.Module, batch: Batch) -> torch.Tensor:
        mask = batch["response_mask"].bool()
        logps = token_logprobs(
            model, batch["input_ids"], batch["attention_mask"], mask, self.temperature, self.chunk_tokens
        )
        on_policy = "old_logps" not in batch
        if on_policy:  # one pass, one mini-batch: the sampling policy is this very model
            old = logps.detach()
            self.tally.add("entropy", -torch.where(mask, old, 0.0).sum(), mask.sum())
        else:
            old = torch.where(mask, batch["old_logps"].float(), 0.0)
        policy, clipped = clipped_policy_loss(logps, old, batch["advantages"].float(), self.clip)
        loss = policy
        ref = batch.get("ref_logps")
        if ref is not None:
            ref = torch.where(mask, ref.float(), 0.0)
            kl = kl_per_token(logps, ref, self.kl_estimator)
            loss = loss + self.kl_coef * kl
            self.tally.add("kl_per_token", torch.where(mask, kl, 0.0).sum(), mask.sum())
            if on_policy:  # the rollouts' KL to the reference, nats per answer
                self.tally.add("kl", torch.where(mask, old - ref, 0.0).sum(), mask.shape[0])
        elif self.kl_coef != 0:
            raise ValueError("GrpoLoss with kl_coef != 0 needs ref_logps in the batch")
        self.tally.add("clip_fraction", (clipped & mask).sum(), mask.sum())
        self.tally.add("ratio", torch.where(mask, torch.exp(logps - old), 0.0).sum(), mask.sum())
        return torch.where(mask, loss, 0.0).sum()

    def count(self, batch: Batch) -> torch.Tensor:
        return batch["response_mask"].bool().sum()

    def pop_stats(self) -> dict[str, float]:
        """Means over the response tokens seen since the last call (this process only)."""
        return self.tally.drain()


@dataclass
class PpoLoss:
    """PPO for language models (Ziegler et al. 2019; Ouyang et al. 2022): the clipped policy loss plus
    value_coef * the clipped value loss, 0.5 * max((V - R)^2, (V_clipped - R)^2) with V_clipped =
    V_old + clip(V - V_old, -value_clip, value_clip), summed over response tokens (the units).

    The KL leash is in the rewards (`kl_penalised_rewards`), not in this loss. Batch keys: input_ids,
    attention_mask, response_mask, old_logps, old_values, returns, and advantages [N, L] (whitened over
    the rollouts' response tokens before the passes begin). Policy and head share one forward.
    """

    clip: float
    value_clip: float
    value_coef: float
    head: ValueHead
    temperature: float = 1.0
    chunk_tokens: int | None = None
    tally: MetricTally = field(default_factory=MetricTally, init=False, repr=False, compare=False)

    def loss_sum(self, model: torch.nn.Module, batch: Batch) -> torch.Tensor:
        mask = batch["response_mask"].bool()
        logps, hidden = token_logprobs_and_hidden(
            model, batch["input_ids"], batch["attention_mask"], mask, self.temperature, self.chunk_tokens
        )
        values = values_of_tokens(self.head, hidden)
        old = torch.where(mask, batch["old_logps"].float(), 0.0)
        policy, clipped = clipped_policy_loss(logps, old, batch["advantages"].float(), self.clip)

        old_values, returns = batch["old_values"].float(), batch["returns"].float()
        values_clipped = old_values + (values - old_values).clamp(-self.value_clip, self.value_clip)
        error, error_clipped = (values - returns) ** 2, (values_clipped - returns) ** 2
        value_loss = 0.5 * torch.maximum(error, error_clipped)

        self.tally.add("clip_fraction", (clipped & mask).sum(), mask.sum())
        self.tally.add("ratio", torch.where(mask, torch.exp(logps - old), 0.0).sum(), mask.sum())
        self.tally.add("value_loss", torch.where(mask, value_loss, 0.0).sum(), mask.sum())
        self.tally.add("value_clip_fraction", ((error_clipped > error) & mask).sum(), mask.sum())
        return torch.where(mask, policy + self.value_coef * value_loss, 0.0).sum()

    def count(self, batch: Batch) -> torch.Tensor:
        return batch["response_mask"].bool().sum()

    def pop_stats(self) -> dict[str, float]:
        """Means over the response tokens seen since the last call (this process only)."""
        return self.tally.drain()


# -- the KL coefficient ----------------------------------------------------------------------------
class AdaptiveKLController:
    """Proportional control of the KL coefficient toward a target KL (Ziegler et al. 2019, section 2.2):
    error = clip(KL / target - 1, -0.2, 0.2), coef *= 1 + error * n_samples / horizon."""

    def __init__(self, init_coef: float, target: float, horizon: float) -> None:
        if target <= 0 or horizon <= 0:
            raise ValueError(f"adaptive KL control needs target > 0 and horizon > 0, got {target}, {horizon}")
        self.value, self.target, self.horizon = init_coef, target, horizon

    def update(self, current_kl: float, n_samples: int) -> None:
        error = min(max(current_kl / self.target - 1.0, -0.2), 0.2)
        self.value *= 1.0 + error * n_samples / self.horizon


class FixedKLController:
    """The same interface as AdaptiveKLController; the coefficient never changes."""

    def __init__(self, coef: float) -> None:
        self.value = coef

    def update(self, current_kl: float, n_samples: int) -> None:
        pass

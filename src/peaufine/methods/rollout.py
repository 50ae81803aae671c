"""Rollouts for RL: G sampled responses to each prompt, laid out as the objectives in `methods.rl` read
them, and scored by the reward sources."""

# The layout: prompt left-padded to one length, response right-padded after it, masks marking what
# was generated.

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from peaufine.errors import DataError, RecipeError
from peaufine.models.generate import seeded_rng

if TYPE_CHECKING:
    import torch
    from transformers import PreTrainedTokenizerBase

    from peaufine.methods.rewards import RewardSuite
    from peaufine.recipe import RlBlock


@dataclass
class PromptSet:
    """Prompts with the columns reward functions receive (the reference answer, say)."""

    prompts: list[Any]  # chat messages or raw text
    texts: list[str]  # rendered for generation (chat template + assistant header)
    columns: dict[str, list[Any]]

    def __len__(self) -> int:
        return len(self.prompts)

    def subset(self, indices: list[int]) -> PromptSet:
        return PromptSet(
            [self.prompts[i] for i in indices],
            [self.texts[i] for i in indices],
            {k: [v[i] for i in indices] for k, v in self.columns.items()},
        )


@dataclass
class Rollouts:
    """Sampled responses, `group_size` consecutive rows per prompt.

    input_ids [N, P + R]: the prompt left-padded to P = `prompt_length`, then the response right-padded
    to R. response_mask is True on the generated tokens up to and including the first stop token, and
    attention_mask is the prompt's mask followed by the response mask (what follows a stop is padding).
    """

    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    response_mask: torch.Tensor
    prompt_index: torch.Tensor
    completions: list[str]
    prompt_length: int

    def response_lengths(self) -> torch.Tensor:
        """Tokens generated per row, the stop token included."""
        return self.response_mask.sum(dim=1)


def left_padded(rows: Sequence[Sequence[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(ids, attention mask), each [len(rows), longest row], real tokens flush right."""
    import torch

    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, row in enumerate(rows):
        if row:
            ids[i, width - len(row) :] = torch.tensor(row, dtype=torch.long)
            mask[i, width - len(row) :] = 1
    return ids, mask


def through_first_stop(response: torch.Tensor, stop_ids: Sequence[int]) -> torch.Tensor:
    """[N, R] bool: True up to and including each row's first stop token (everywhere if none)."""
    import torch

    is_stop = torch.isin(response, torch.tensor(list(stop_ids), device=response.device)).long()
    stops_before = is_stop.cumsum(dim=1) - is_stop
    return stops_before == 0


def generate_rollouts(
    model: torch.nn.Module,
    tokenizer: PreTrainedTokenizerBase,
    prompts: list[str],
    *,
    group_size: int,
    max_new_tokens: int,
    temperature: float = 1.0,
    top_k: int | None = None,
    seed: int | None = None,
    stop_ids: list[int] | None = None,
) -> Rollouts:
    """Sample `group_size` responses to each prompt (already rendered with the chat template).

    Sampling is from softmax(logits / temperature), cut to the top k when `top_k` (None or 0: no cut);
    every other sampling option a loaded generation_config may carry (top_p, repetition penalty...)
    is set neutral, because the log-probs that RL recomputes assume exactly this distribution.
    With `seed`, sampling draws from a forked RNG seeded with it: the same seed gives the same rollouts,
    and the caller's RNG stream is left where it was. Generation stops at any of `stop_ids`
    (default: the tokenizer's EOS). The model runs in eval mode and is given its mode back.
    """
    import torch
    from transformers import GenerationConfig

    if group_size < 1:
        raise ValueError(f"group_size must be >= 1, got {group_size}")
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    stops = list(stop_ids) if stop_ids else [tokenizer.eos_token_id]
    if pad_id is None or None in stops:
        raise DataError("the tokenizer has no pad or EOS token to stop and pad generations with")
    encoded = tokenizer(list(prompts), add_special_tokens=False)["input_ids"]
    empty = [i for i, ids in enumerate(encoded) if not ids]
    if empty:
        raise DataError(f"prompt {empty[0]} tokenizes to no tokens; drop empty prompts first")

    device = next(model.parameters()).device
    prompt_ids, prompt_mask = left_padded(encoded, pad_id)
    prompt_ids = prompt_ids.repeat_interleave(group_size, dim=0).to(device)
    prompt_mask = prompt_mask.repeat_interleave(group_size, dim=0).to(device)
    config = GenerationConfig(
        do_sample=True,
        temperature=temperature,
        top_k=top_k or 0,
        top_p=1.0,
        typical_p=1.0,
        repetition_penalty=1.0,
        no_repeat_ngram_size=0,
        max_new_tokens=max_new_tokens,
        use_cache=True,
        eos_token_id=stops,
        pad_token_id=pad_id,
    )
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad(), seeded_rng(device, seed):
            out = model.generate(input_ids=prompt_ids, attention_mask=prompt_mask, generation_config=config)
    finally:
        model.train(was_training)

    prompt_length = prompt_ids.shape[1]
    response = out[:, prompt_length:]
    generated = through_first_stop(response, stops)
    completions = []
    for row, keep in zip(response.tolist(), generated.tolist(), strict=True):
        tokens = [t for t, k in zip(row, keep, strict=True) if k]
        if tokens and tokens[-1] in stops:
            tokens = tokens[:-1]
        completions.append(tokenizer.decode(tokens, skip_special_tokens=True))
    return Rollouts(
        input_ids=out,
        attention_mask=torch.cat([prompt_mask, generated.long()], dim=1),
        response_mask=torch.cat([torch.zeros_like(prompt_mask, dtype=torch.bool), generated], dim=1),
        prompt_index=torch.arange(len(prompts), device=device).repeat_interleave(group_size),
        completions=completions,
        prompt_length=prompt_length,
    )


# -- rollouts and their scores ---------------------------------------------------------------------------
@dataclass
class ScoredRollouts:
    rollouts: Rollouts
    prompts: PromptSet  # one entry per row (each prompt repeated group_size times)
    rewards: list[float]
    per_source: dict[str, list[float]]


def sample(
    policy: Any,
    tokenizer: Any,
    prompts: PromptSet,
    suite: RewardSuite,
    config: RlBlock,
    *,
    group_size: int,
    seed: int,
    stop_ids: list[int],
) -> ScoredRollouts:
    """`group_size` rollouts of each prompt (method.rl's sampling settings), scored by `suite`."""
    rollouts = generate_rollouts(
        policy,
        tokenizer,
        prompts.texts,
        group_size=group_size,
        max_new_tokens=config.max_new_tokens,
        temperature=config.temperature,
        top_k=config.top_k,
        seed=seed,
        stop_ids=stop_ids,
    )
    rows = prompts.subset([int(i) for i in rollouts.prompt_index])
    rewards, per_source = suite.score(rows.prompts, rollouts.completions, rows.columns)
    return ScoredRollouts(rollouts, rows, rewards, per_source)


def pass_scores(scored: ScoredRollouts, config: RlBlock) -> list[float]:
    if config.pass_source is None:
        return scored.rewards
    if config.pass_source not in scored.per_source:
        raise RecipeError(
            f"method.rl.pass_source: {config.pass_source!r} is none of the reward sources "
            f"({', '.join(scored.per_source)})"
        )
    return scored.per_source[config.pass_source]


def pass_rates(
    policy: Any, tokenizer: Any, prompts: PromptSet, suite: RewardSuite, config: RlBlock, stop_ids: list[int]
) -> list[float]:
    """Each prompt's pass rate over a group of samples from the policy as it starts."""
    rates = []
    for start in range(0, len(prompts), 16):
        chunk = prompts.subset(list(range(start, min(len(prompts), start + 16))))
        scored = sample(
            policy,
            tokenizer,
            chunk,
            suite,
            config,
            group_size=config.group_size,
            seed=start,
            stop_ids=stop_ids,
        )
        passed = [s >= config.pass_threshold for s in pass_scores(scored, config)]
        g = config.group_size
        rates += [sum(passed[i * g : (i + 1) * g]) / g for i in range(len(chunk))]
    return rates


def filter_by_pass_rate(
    policy: Any, tokenizer: Any, prompts: PromptSet, suite: RewardSuite, config: RlBlock, stop_ids: list[int]
) -> tuple[PromptSet, dict[str, Any]]:
    """The prompts whose pass rate before training is in [min_pass_rate, max_pass_rate], and what
    the filter did (for eval.json)."""
    rates = pass_rates(policy, tokenizer, prompts, suite, config, stop_ids)
    low = config.min_pass_rate or 0.0
    high = config.max_pass_rate if config.max_pass_rate is not None else 1.0
    keep = [i for i, rate in enumerate(rates) if low <= rate <= high]
    if not keep:
        raise RecipeError(
            f"method.rl: no prompt has a pass rate in [{low}, {high}] before training "
            f"(mean pass rate {sum(rates) / len(rates):.2f}); widen min_pass_rate / max_pass_rate"
        )
    return prompts.subset(keep), {
        "range": [low, high],
        "prompts_before": len(rates),
        "prompts_kept": len(keep),
        "mean_pass_rate_before": sum(rates) / len(rates),
        "mean_pass_rate_kept": sum(rates[i] for i in keep) / len(keep),
    }

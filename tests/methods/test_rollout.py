"""Rollouts: the layout the RL objectives read (left-padded prompts, groups consecutive), masks that stop
at the first stop token, seeded reproducibility, and log-probs that line up with what was sampled."""

from __future__ import annotations

import pytest
import torch

from conftest import tiny_llama
from peaufine.methods.rl import token_logprobs
from peaufine.methods.rollout import generate_rollouts
from peaufine.models.tokenizer import END_OF_TURN, train_char

PROMPTS = ["<|user|> abc<|end|>\n<|assistant|>", "<|user|> hello there, pal<|end|>\n<|assistant|>"]


@pytest.fixture(scope="module")
def tokenizer():
    return train_char(["abcdefghijklmnopqrstuvwxyz ,.\n"])


def uniform_llama(vocab_size: int):
    """A tiny Llama whose next token is uniform over the vocabulary, so stop tokens come up often."""
    model = tiny_llama(vocab_size)
    with torch.no_grad():
        model.lm_head.weight.zero_()
    return model


def test_rollouts_repeat_each_left_padded_prompt_in_consecutive_rows(tokenizer):
    model = tiny_llama(len(tokenizer)).train()
    rollouts = generate_rollouts(model, tokenizer, PROMPTS, group_size=3, max_new_tokens=5, seed=0)
    assert model.training  # its mode is given back
    encoded = [tokenizer(p, add_special_tokens=False).input_ids for p in PROMPTS]
    width = max(len(e) for e in encoded)
    assert rollouts.prompt_length == width
    assert rollouts.input_ids.shape == (6, width + 5) == rollouts.attention_mask.shape
    assert rollouts.response_mask.shape == (6, width + 5)
    assert rollouts.prompt_index.tolist() == [0, 0, 0, 1, 1, 1]
    assert len(rollouts.completions) == 6
    for row in range(6):
        ids = encoded[row // 3]
        pad = width - len(ids)
        assert rollouts.input_ids[row, :pad].tolist() == [tokenizer.pad_token_id] * pad
        assert rollouts.input_ids[row, pad:width].tolist() == ids
        assert rollouts.attention_mask[row, :width].tolist() == [0] * pad + [1] * len(ids)
    assert not rollouts.response_mask[:, :width].any()
    assert rollouts.response_mask[:, width].all()  # every row generated at least one token


def test_the_response_mask_stops_at_the_first_stop_token(tokenizer):
    model = uniform_llama(len(tokenizer))
    end = tokenizer.convert_tokens_to_ids(END_OF_TURN)
    # the two end tokens and eight letters: a third of the vocabulary stops a response
    stops = [end, tokenizer.eos_token_id, *tokenizer.convert_tokens_to_ids(list("abcdefgh"))]
    rollouts = generate_rollouts(
        model, tokenizer, PROMPTS, group_size=8, max_new_tokens=10, seed=0, stop_ids=stops
    )
    width = rollouts.prompt_length
    lengths = rollouts.response_lengths()
    for row in range(16):
        response = rollouts.input_ids[row, width:].tolist()
        first = next((i for i, t in enumerate(response) if t in stops), None)
        kept = len(response) if first is None else first + 1
        assert int(lengths[row]) == kept
        assert rollouts.response_mask[row, width:].tolist() == [True] * kept + [False] * (
            len(response) - kept
        )
        assert rollouts.attention_mask[row, width:].tolist() == [1] * kept + [0] * (len(response) - kept)
        assert response[kept:] == [tokenizer.pad_token_id] * (len(response) - kept)
        body = response[: kept - 1] if first is not None else response
        assert rollouts.completions[row] == tokenizer.decode(body, skip_special_tokens=True)
    # the draw exercises both cases: responses cut by a stop token, and ones that ran on
    assert (lengths < rollouts.input_ids.shape[1] - width).any() and (lengths > 1).any()
    assert {int(t) for t in rollouts.input_ids[:, width:][rollouts.response_mask[:, width:]]} & {end}


def test_the_same_seed_gives_the_same_rollouts_and_leaves_the_caller_rng_alone(tokenizer):
    model = tiny_llama(len(tokenizer))
    options = {"group_size": 4, "max_new_tokens": 8, "temperature": 1.5}
    torch.manual_seed(123)
    first = generate_rollouts(model, tokenizer, PROMPTS, seed=7, **options)
    after = torch.rand(3)
    torch.manual_seed(123)
    second = generate_rollouts(model, tokenizer, PROMPTS, seed=7, **options)
    assert torch.equal(first.input_ids, second.input_ids)
    assert first.completions == second.completions
    assert torch.equal(torch.rand(3), after)
    other = generate_rollouts(model, tokenizer, PROMPTS, seed=8, **options)
    assert not torch.equal(first.input_ids, other.input_ids)


def test_top_k_restricts_samples_to_the_k_likeliest_tokens(tokenizer):
    model = tiny_llama(len(tokenizer))
    rollouts = generate_rollouts(
        model, tokenizer, PROMPTS[:1], group_size=16, max_new_tokens=1, top_k=2, seed=0
    )
    with torch.no_grad():
        logits = model(rollouts.input_ids[:1, : rollouts.prompt_length]).logits[0, -1]
    assert set(rollouts.input_ids[:, -1].tolist()) <= set(logits.topk(2).indices.tolist())


def test_recomputed_logprobs_match_the_sampling_distribution(tokenizer):
    # one step from one prompt at temperature T: the empirical frequency of each token over many samples
    # must match exp(token_logprobs(..., temperature=T)), which is what the ratio to old_logps assumes
    model = tiny_llama(len(tokenizer))
    with torch.no_grad():
        model.lm_head.weight.mul_(20.0)  # a peaked distribution, so frequencies are measurable
    temperature = 2.0
    rollouts = generate_rollouts(
        model, tokenizer, PROMPTS[:1], group_size=4000, max_new_tokens=1, temperature=temperature, seed=0
    )
    with torch.no_grad():
        logps = token_logprobs(
            model, rollouts.input_ids, rollouts.attention_mask, rollouts.response_mask, temperature
        )
    sampled = rollouts.input_ids[:, -1]
    probs = logps[:, -1].exp()
    for token in sampled.unique():
        chosen = sampled == token
        assert float(chosen.float().mean()) == pytest.approx(float(probs[chosen][0]), abs=0.02)

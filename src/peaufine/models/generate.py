"""Text generation from any causal LM we made or load: sampling settings, KV cache, a seed."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch
    from transformers import PreTrainedModel, PreTrainedTokenizerBase


@contextlib.contextmanager
def seeded_rng(device: torch.device, seed: int | None) -> Iterator[None]:
    """Inside, torch's RNG is seeded with `seed`; after, the caller's random stream is where it was, so
    a training loop that generates (to measure its model, to sample rollouts) draws afterwards what it
    would have drawn anyway, and a resumed run what the straight run did. Forked: the CPU generator and,
    when generating on a GPU, that GPU's (other accelerators are seeded, not forked). `seed` None:
    neither seeded nor forked.
    """
    import torch

    if seed is None:
        yield
        return
    fork = [device.index or 0] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=fork, device_type="cuda"):
        torch.manual_seed(seed)
        yield


def generate_texts(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    prompts: Sequence[str],
    *,
    max_new_tokens: int = 50,
    temperature: float = 0.8,
    top_k: int | None = 50,
    top_p: float | None = None,
    seed: int = 0,
    use_cache: bool = True,
    chat: bool = False,
    batch_size: int = 64,
) -> list[str]:
    """Continuations of `prompts` (or assistant replies when `chat`); temperature 0 is greedy.

    Stops at every end-of-turn id the model's generation_config lists (EOS and the chat end-of-turn).
    `seed` decides the samples; the caller's random stream is left where it was (`seeded_rng`).
    """
    import torch

    if not prompts:
        return []
    if chat:
        prompts = [
            tokenizer.apply_chat_template(
                [{"role": "user", "content": p}], tokenize=False, add_generation_prompt=True
            )
            for p in prompts
        ]
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    side = tokenizer.padding_side
    tokenizer.padding_side = "left"
    sampling = temperature > 0
    options = {
        "max_new_tokens": max_new_tokens,
        "do_sample": sampling,
        "use_cache": use_cache,
        "pad_token_id": tokenizer.pad_token_id
        if tokenizer.pad_token_id is not None
        else tokenizer.eos_token_id,
    }
    if sampling:
        options.update(temperature=temperature, top_k=top_k or 0, top_p=top_p or 1.0)
    texts: list[str] = []
    try:
        with seeded_rng(device, seed), torch.no_grad():
            for start in range(0, len(prompts), batch_size):
                chunk = list(prompts[start : start + batch_size])
                enc = tokenizer(chunk, return_tensors="pt", padding=True, add_special_tokens=False).to(device)
                out = model.generate(**enc, **options)
                new = out[:, enc["input_ids"].shape[1] :]
                texts.extend(t.strip() for t in tokenizer.batch_decode(new, skip_special_tokens=True))
        return texts
    finally:
        tokenizer.padding_side = side
        model.train(was_training)

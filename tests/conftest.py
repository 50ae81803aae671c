"""Shared fixtures: tiny models built from configs and small data made here; nothing is downloaded."""

from __future__ import annotations

import os

import numpy as np
import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def tiny_llama(vocab_size: int = 50, seed: int = 0, layers: int = 2):
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(
        vocab_size=vocab_size,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=layers,
        num_attention_heads=2,
        num_key_value_heads=2,
        max_position_embeddings=128,
        tie_word_embeddings=False,
        attn_implementation="sdpa",
    )
    torch.manual_seed(seed)
    return LlamaForCausalLM(config)


def variable_examples(n: int = 16, vocab_size: int = 50, seed: int = 0, masked: bool = True):
    """Examples of lengths 3..20; with `masked`, each hides a prompt-like prefix from the loss."""
    from peaufine.data.batching import Example

    rng = np.random.default_rng(seed)
    examples = []
    for _ in range(n):
        length = int(rng.integers(3, 21))
        ids = rng.integers(4, vocab_size, size=length).tolist()
        mask = None
        if masked:
            prefix = int(rng.integers(0, length - 1))
            mask = [i >= prefix for i in range(length)]
        examples.append(Example(ids, mask))
    return examples


@pytest.fixture
def cpu_runtime():
    from peaufine.engine.runtime import make_runtime
    from peaufine.recipe import TrainBlock

    return make_runtime(TrainBlock(device="cpu"))


@pytest.fixture(scope="session")
def smoke_demo(tmp_path_factory):
    """The default pipeline at smoke size, run once per session: later stages' tests start from it."""
    from peaufine.demo import run_demo

    return run_demo(tmp_path_factory.mktemp("demo"), smoke=True)

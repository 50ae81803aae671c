"""Shared fixtures: tiny models built from configs and small data made here; nothing is downloaded."""

from __future__ import annotations

import os
import sys
from typing import TYPE_CHECKING

import numpy as np
import pytest

# under CI=true a skip fails the run (tests/ci_skips.py)
pytest_plugins = ["ci_skips"]

if TYPE_CHECKING:
    from peaufine.data.records import ChatRecord

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


def llama_tiny_block(hidden_size: int, tokenizer: dict) -> dict:
    """A recipe's model block for a 1-layer llama-tiny of `hidden_size`, its MLP twice as wide, 2 heads,
    with `tokenizer` (the recipe's model.tokenizer): the tiny model the stage tests' recipes train."""
    return {
        "source": "llama-tiny",
        "config": {
            "hidden_size": hidden_size,
            "intermediate_size": 2 * hidden_size,
            "num_hidden_layers": 1,
            "num_attention_heads": 2,
            "num_key_value_heads": 2,
        },
        "tokenizer": tokenizer,
    }


def byte_level_bpe(sentences: list[str], vocab_size: int, special_tokens: list[str]):
    """A bare byte-level BPE (tokenizers.Tokenizer) trained on `sentences` with `special_tokens`: the
    tokenizer tests wrap it themselves, with their own special tokens and template."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=special_tokens,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(sentences, trainer)
    return tok


def chat(*turns: tuple[str, str], source: str = "data.jsonl, line 1") -> ChatRecord:
    """A ChatRecord of (role, content) turns, as read from `source`."""
    from peaufine.data.records import ChatRecord

    return ChatRecord([{"role": role, "content": content} for role, content in turns], source)


@pytest.fixture
def cpu_runtime():
    from peaufine.engine.runtime import make_runtime
    from peaufine.recipe import TrainBlock

    return make_runtime(TrainBlock(device="cpu"))


@pytest.fixture(scope="session")
def smoke_demo(tmp_path_factory):
    """The default pipeline at smoke size, run once per session: later stages' tests start from it."""
    from peaufine.drivers.demo import run_demo

    return run_demo(tmp_path_factory.mktemp("demo"), smoke=True)


@pytest.fixture(scope="session")
def world_run(tmp_path_factory):
    """A 1-layer llama-tiny pretrained for 2 steps on the synthetic world: rl runs start from it (its
    arithmetic questions are their prompts)."""
    from peaufine.recipe import validate_recipe
    from peaufine.stages.pretrain import run_pretrain

    out = tmp_path_factory.mktemp("world") / "pretrain"
    recipe = {
        "stage": "pretrain",
        "model": llama_tiny_block(32, {"kind": "bpe", "vocab_size": 320}),
        "data": {
            "source": "world",
            "world": {"seed": 0, "size": "smoke", "documents": 40, "faq_documents": 10},
            "block_size": 32,
        },
        "train": {
            "device": "cpu",
            "precision": "fp32",
            "log_every": 1,
            "seed": 0,
            "max_steps": 8,
            "warmup_steps": 1,
            "batch_size": 8,
            "lr": 1e-2,
        },
        "eval": {"every": 8, "samples": 0},
    }
    run_pretrain(validate_recipe(recipe), out)
    return out


def tiny_rl_recipe(
    source, algorithm: str, adapter: dict, train: dict | None = None, evaluation: dict | None = None, **rl
) -> dict:
    """An rl recipe on the world's arithmetic questions (2 prompts x 4 samples of 6 tokens a step, exact
    answer and format rewards), fp32 on the CPU with one log row a step; `train`, `evaluation` and `rl`
    are laid over its train, eval and method.rl blocks."""
    return {
        "stage": "rl",
        "model": {"source": str(source), "adapter": adapter},
        "data": {"source": "world"},
        "method": {
            "rl": {
                "algorithm": algorithm,
                "rewards": [{"source": "exact_answer"}, {"source": "answer_format", "weight": 0.5}],
                "prompts_per_step": 2,
                "group_size": 4,
                "max_new_tokens": 6,
                "eval_prompts": 4,
                **rl,
            }
        },
        "train": {
            "device": "cpu",
            "precision": "fp32",
            "log_every": 1,
            "seed": 0,
            "max_steps": 3,
            "lr": 1e-3,
            **(train or {}),
        },
        "eval": {"every": 3, **(evaluation or {})},
    }


# -- launching torchrun ----------------------------------------------------------------------------------
# --standalone: the rendezvous takes a free port itself, so parallel test runs cannot collide
TORCHRUN_2 = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]
# A launcher's variables in our own environment would turn a one-process run into a rank of something.
LAUNCHER_VARIABLES = (
    "RANK",
    "WORLD_SIZE",
    "LOCAL_RANK",
    "LOCAL_WORLD_SIZE",
    "GROUP_RANK",
    "ROLE_RANK",
    "MASTER_ADDR",
    "MASTER_PORT",
)


def need_gloo() -> None:
    """Skip unless this torch can run torchrun with the gloo backend."""
    pytest.importorskip("torch.distributed.run", reason="torchrun (torch.distributed.run) is not available")
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_gloo_available()):
        pytest.skip("this torch build has no gloo backend for torch.distributed")


def launch_environment() -> dict[str, str]:
    """Ours, less any launcher's variables; one thread (steady on a shared CPU, the same in every run)."""
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in LAUNCHER_VARIABLES and not k.startswith(("TORCHELASTIC_", "ACCELERATE_"))
    }
    env.update(
        OMP_NUM_THREADS="1", CUDA_VISIBLE_DEVICES="", HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false"
    )
    return env


def run_launched(command: list[str], what: str, timeout_s: float) -> str:
    """Run `command` (torchrun or plain python) in its own session, so that a timeout stops torchrun's
    workers too; fail the test with its output if it fails or times out. Returns its stdout."""
    import signal
    import subprocess

    proc = subprocess.Popen(
        command,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=launch_environment(),
        start_new_session=True,
    )
    try:
        stdout, stderr = proc.communicate(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        stdout, stderr = proc.communicate()
        pytest.fail(
            f"{what} timed out after {timeout_s} s: {' '.join(command)}\n"
            f"--- stdout ---\n{stdout[-4000:]}\n--- stderr ---\n{stderr[-8000:]}"
        )
    if proc.returncode != 0:
        pytest.fail(
            f"{what} exited with {proc.returncode}: {' '.join(command)}\n"
            f"--- stdout ---\n{stdout[-4000:]}\n--- stderr ---\n{stderr[-8000:]}"
        )
    return stdout

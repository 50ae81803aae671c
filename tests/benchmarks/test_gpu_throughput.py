"""The GPU benchmark where there is no GPU: it answers --help, refuses to run, its FLOPs count is the
one nanoGPT uses for GPT-2 124M, and its CPU rehearsal runs every configuration that can run there."""

from __future__ import annotations

import importlib.util
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "benchmarks" / "gpu_throughput.py"


def load_script():
    spec = importlib.util.spec_from_file_location("gpu_throughput", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses resolve their annotations through sys.modules
    spec.loader.exec_module(module)
    return module


def test_help_answers_and_without_cuda_the_script_refuses():
    import torch

    shown = subprocess.run(
        [sys.executable, str(SCRIPT), "--help"], capture_output=True, text=True, timeout=60
    )
    assert shown.returncode == 0 and "--peak-tflops" in shown.stdout
    if torch.cuda.is_available():
        pytest.skip("a CUDA GPU is visible: the refusal cannot be seen here")
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    refused = subprocess.run(
        [sys.executable, str(SCRIPT)], capture_output=True, text=True, timeout=120, env=env
    )
    assert refused.returncode == 2
    assert "needs a CUDA GPU" in refused.stderr and "RESULT" not in refused.stdout


def test_flops_per_token_of_gpt2_small():
    from peaufine.models.presets import build_config

    config = build_config("gpt2")
    parameters = 124_439_808  # the preset's count (tests/models/test_presets.py)
    flops = load_script().palm_flops(parameters, config, 1024)
    assert flops["non_embedding_parameters"] == 85_056_000  # Kaplan et al.'s N for GPT-2 small
    assert flops["attention"] == 12 * 12 * 1024 * 768
    assert flops["per_token"] == 6 * 85_056_000 + 12 * 12 * 1024 * 768
    # nanoGPT's estimate_mfu: 6 x (all parameters but the position table) + 12 L T d
    assert flops["per_token_with_head"] == 6 * (parameters - 1024 * 768) + 12 * 12 * 1024 * 768


def lora_trainable(llama: dict, r: int) -> int:
    """LoRA's parameters on every linear layer of a Llama decoder: r x (inputs + outputs) each."""
    width, inner = llama["hidden_size"], llama["intermediate_size"]
    kv = width // llama["num_attention_heads"] * llama["num_key_value_heads"]
    per_layer = 2 * (width + width) + 2 * (width + kv) + 3 * (width + inner)  # q o, k v, gate up down
    return llama["num_hidden_layers"] * r * per_layer


def test_cpu_rehearsal_runs_every_code_path_and_its_variants_agree():
    script = load_script()
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    done = subprocess.run(
        [sys.executable, str(SCRIPT), "--rehearse"], capture_output=True, text=True, timeout=240, env=env
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.startswith("REHEARSAL on CPU: shapes shrunk, figures mean nothing")
    (line,) = [row for row in done.stdout.splitlines() if row.startswith("RESULT ")]
    result = json.loads(line.removeprefix("RESULT "))
    assert "REHEARSAL" in result["rehearsal"]

    # throughput: all but flash attention (CUDA only) and torch.compile (left out on the CPU)
    runnable = {
        name
        for name, options in script.THROUGHPUT.items()
        if options["attention"] != "flash_attention_2" and not options["compile"]
    }
    assert runnable and set(result["throughput"]) == runnable
    vocab = script.SCALES["rehearsal"].gpt2["vocab_size"]
    for name, run in result["throughput"].items():
        assert "error" not in run, (name, run)
        assert run["tokens_per_s"] > 0 and math.isfinite(run["mfu"]) and run["mfu"] > 0
        # 4 small steps from a random init on uniformly random tokens: still about ln V
        assert abs(run["final_loss"] - math.log(vocab)) < 0.3, (name, run["final_loss"])
    # the fused AdamW kernel computes the same update as the loop of foreach ops
    assert result["throughput"]["sdpa+fused"]["final_loss"] == pytest.approx(
        result["throughput"]["sdpa"]["final_loss"], rel=1e-4
    )

    memory = result["memory"]
    assert set(memory) == set(script.MEMORY)
    for name, run in memory.items():
        assert "error" not in run, (name, run)
        assert len(run["losses"]) == script.MEMORY_STEPS and all(map(math.isfinite, run["losses"]))
    scale = script.SCALES["rehearsal"]
    full, lora = memory["full"], memory["lora"]
    assert full["trainable"] == full["parameters"]
    assert lora["trainable"] == lora_trainable(scale.llama, scale.lora_r)
    assert lora["parameters"] == full["parameters"] + lora["trainable"]
    assert lora["trainable"] < 0.1 * full["trainable"]
    # the first loss is taken before any update, from the same seed and data: chunked cross-entropy and
    # activation checkpointing change how it is computed, not its value; LoRA's B starts at zero
    first = full["losses"][0]
    assert abs(first - math.log(scale.llama["vocab_size"])) < 0.3
    for name, run in memory.items():
        assert run["losses"][0] == pytest.approx(first, rel=1e-4), name
    for plain in ("full", "lora"):
        chunked = memory[f"{plain}+chunked-ce+act-ckpt"]["losses"]
        assert chunked == pytest.approx(memory[plain]["losses"], rel=1e-3), plain

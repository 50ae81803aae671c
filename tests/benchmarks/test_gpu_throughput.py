"""The GPU benchmark where there is no GPU: it answers --help, refuses to run, and its FLOPs count is
the one nanoGPT uses for GPT-2 124M."""

from __future__ import annotations

import importlib.util
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

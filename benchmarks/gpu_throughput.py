"""Training throughput and memory on one CUDA GPU (H100 / H200 class): what the speed options buy there.

1. GPT-2 124M (the `gpt2` preset), bf16 autocast, random tokens in rows of 1024: training tokens/s and
   model FLOPs utilisation of fit() with sdpa attention eager, + fused AdamW, + torch.compile, and
   flash_attention_2 (when the flash_attn package is installed). MFU = tokens/s x FLOPs per token /
   the GPU's peak (--peak-tflops, default 989: H100/H200 SXM dense bf16); FLOPs per token follow the
   PaLM appendix: 6 x non-embedding parameters + 12 x layers x sequence x width (attention scores and
   their use, forward and backward). The formula and its terms are printed; the figure with the
   output head's matmul counted too (as nanoGPT counts it) is printed beside it.
2. Peak memory (torch.cuda.max_memory_allocated) of full fine-tuning against LoRA (r 16, all linear
   layers) of a ~1.2B-parameter Llama (the Llama 3.2 1B shape, random weights), a few steps each,
   with and without the chunked cross-entropy and activation checkpointing.

Each configuration runs in its own process (its own compile caches and peak memory). Without CUDA the
script refuses with exit status 2. Whole run: about 5 minutes on one H100.

--rehearse runs the same parent and worker code on the CPU with every shape shrunk (2 layers, width 64),
4 steps, and peak memory read as the process's peak RSS: it finds the bugs before GPU time is spent on
them, and its figures mean nothing. flash_attention_2 (CUDA only) and torch.compile (slow to compile
on a CPU) are left out of it. tests/benchmarks/test_gpu_throughput.py runs it.

    python benchmarks/gpu_throughput.py
    python benchmarks/gpu_throughput.py --steps 60 --peak-tflops 989 --skip-memory
    python benchmarks/gpu_throughput.py --rehearse
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]

GPT2_ROWS, GPT2_LENGTH = 32, 1024  # 32k tokens per optimiser step
THROUGHPUT: dict[str, dict[str, Any]] = {
    "sdpa": {"attention": "sdpa", "fused_adamw": "off", "compile": False},
    "sdpa+fused": {"attention": "sdpa", "fused_adamw": "on", "compile": False},
    "sdpa+fused+compile": {"attention": "sdpa", "fused_adamw": "on", "compile": True},
    "flash+fused+compile": {"attention": "flash_attention_2", "fused_adamw": "on", "compile": True},
}

# Llama 3.2 1B's shape (tied embeddings): 1,235,814,400 parameters
LLAMA_1B = {
    "vocab_size": 128256,
    "hidden_size": 2048,
    "intermediate_size": 8192,
    "num_hidden_layers": 16,
    "num_attention_heads": 32,
    "num_key_value_heads": 8,
    "max_position_embeddings": 2048,
    "tie_word_embeddings": True,
}
MEMORY_ROWS, MEMORY_LENGTH, MEMORY_STEPS = 4, 1024, 3
MEMORY: dict[str, dict[str, Any]] = {
    "full": {"lora": False, "loss_chunk_tokens": None, "activation_checkpointing": False},
    "full+chunked-ce+act-ckpt": {"lora": False, "loss_chunk_tokens": 1024, "activation_checkpointing": True},
    "lora": {"lora": True, "loss_chunk_tokens": None, "activation_checkpointing": False},
    "lora+chunked-ce+act-ckpt": {"lora": True, "loss_chunk_tokens": 1024, "activation_checkpointing": True},
}


@dataclass(frozen=True)
class Scale:
    """The shapes a run uses and where it runs: the real benchmark, or its CPU rehearsal."""

    device: str  # "cuda" or "cpu"
    gpt2: dict[str, Any]  # build_config overrides of the gpt2 preset
    gpt2_rows: int
    gpt2_length: int
    llama: dict[str, Any]
    memory_rows: int
    memory_length: int
    lora_r: int  # LoRA's rank, alpha 2 x r
    compile: bool  # whether the torch.compile configurations run
    gpt2_label: str
    llama_label: str


SCALES = {
    "real": Scale(
        device="cuda",
        gpt2={},
        gpt2_rows=GPT2_ROWS,
        gpt2_length=GPT2_LENGTH,
        llama=LLAMA_1B,
        memory_rows=MEMORY_ROWS,
        memory_length=MEMORY_LENGTH,
        lora_r=16,
        compile=True,
        gpt2_label="gpt2",
        llama_label="llama-1b",
    ),
    "rehearsal": Scale(
        device="cpu",
        gpt2={"vocab_size": 1024, "n_positions": 64, "n_embd": 64, "n_layer": 2, "n_head": 2},
        gpt2_rows=4,
        gpt2_length=64,
        llama={
            **LLAMA_1B,
            "vocab_size": 1000,
            "hidden_size": 64,
            "intermediate_size": 256,
            "num_hidden_layers": 2,
            "num_attention_heads": 4,
            "num_key_value_heads": 1,
            "max_position_embeddings": MEMORY_LENGTH,
        },
        # rows of 1024 tokens: 2 of them are 2 chunks of the chunked cross-entropy (4 in the real run)
        memory_rows=2,
        memory_length=MEMORY_LENGTH,
        lora_r=4,  # r << width, as 16 is to 2048: at r 16 a width of 64 would train a quarter of the model
        compile=False,
        gpt2_label="rehearsal gpt2-tiny",
        llama_label="rehearsal llama-tiny",
    ),
}
REHEARSAL_NOTE = "REHEARSAL on CPU: shapes shrunk, figures mean nothing"


@dataclass(frozen=True)
class Device:
    """The calls that differ between CUDA and the CPU rehearsal; every other line of a worker is shared."""

    type: str  # "cuda" or "cpu"

    @property
    def peak_kind(self) -> str:
        return "allocated" if self.type == "cuda" else "process peak RSS"

    def name(self) -> str:
        import torch

        if self.type == "cuda":
            return torch.cuda.get_device_name()
        import platform

        return f"{platform.machine()} CPU, {os.cpu_count()} cores"

    def synchronize(self) -> None:
        import torch

        if self.type == "cuda":
            torch.cuda.synchronize()

    def reset_peak_memory(self) -> None:
        import torch

        if self.type == "cuda":
            torch.cuda.reset_peak_memory_stats()
        # a process's peak RSS cannot be reset: on the CPU it counts from the worker's start

    def allocated_gib(self) -> float | None:
        import torch

        return torch.cuda.memory_allocated() / 2**30 if self.type == "cuda" else None

    def peak_gib(self) -> float:
        import torch

        if self.type == "cuda":
            return torch.cuda.max_memory_allocated() / 2**30
        import resource

        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # KiB on Linux


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--steps", type=int, default=None, help="GPT-2 optimiser steps per configuration (40; rehearsal 4)"
    )
    parser.add_argument(
        "--skip",
        type=int,
        default=None,
        help="first steps left out of tokens/s (compilation) (10; rehearsal 1)",
    )
    parser.add_argument("--peak-tflops", type=float, default=989.0, help="the GPU's dense bf16 peak")
    parser.add_argument("--skip-memory", action="store_true", help="only the GPT-2 throughput part")
    parser.add_argument(
        "--rehearse",
        action="store_true",
        help="the same code on the CPU, shapes shrunk: finds bugs, measures nothing",
    )
    parser.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.steps is None:
        args.steps = 4 if args.rehearse else 40
    if args.skip is None:
        args.skip = 1 if args.rehearse else 10
    if args.skip < 1:
        parser.error(f"--skip ({args.skip}) must be at least 1: tokens/s is timed from the end of a step")
    if args.steps <= args.skip:
        parser.error(f"--steps ({args.steps}) must exceed --skip ({args.skip})")
    return args


def palm_flops(parameters: int, config: Any, sequence: int) -> dict[str, int]:
    """Model FLOPs per trained token (forward + backward) after PaLM's appendix B, and its terms.

    N, the non-embedding parameters: all but the token table (V x d) and a learned position table;
    attention: 12 x L x T x d (QK^T and AV: 2 FLOPs a multiply-add, x 3 for forward and backward).
    `per_token_with_head` adds the output head's 6 x V x d: a real matmul that N leaves out when the
    head is tied to the token table, as nanoGPT's estimate counts it.
    """
    width, layers, vocab = config.hidden_size, config.num_hidden_layers, config.vocab_size
    positions = getattr(config, "n_positions", 0) * width if config.model_type == "gpt2" else 0
    non_embedding = parameters - vocab * width - positions
    attention = 12 * layers * sequence * width
    head = 6 * vocab * width
    return {
        "layers": layers,
        "width": width,
        "non_embedding_parameters": non_embedding,
        "attention": attention,
        "head": head,
        "per_token": 6 * non_embedding + attention,
        "per_token_with_head": 6 * non_embedding + attention + head,
    }


# -- workers --------------------------------------------------------------------------------------------
def random_blocks(vocab: int, rows: int, length: int, steps: int) -> Any:
    import numpy as np

    from peaufine.data.batching import PackedBlocks

    stream = np.random.default_rng(0).integers(0, vocab, size=rows * length * steps + 1, dtype=np.int32)
    return PackedBlocks(stream, length)


def throughput_worker(job: dict[str, Any]) -> dict[str, Any]:
    import torch
    from transformers import AutoModelForCausalLM

    from peaufine.engine.fit import fit
    from peaufine.engine.runtime import make_runtime
    from peaufine.methods.lm import next_token_loss
    from peaufine.models.build import attention_kernel
    from peaufine.models.presets import build_config
    from peaufine.recipe import EvalBlock, TrainBlock

    options, steps = THROUGHPUT[job["name"]], job["steps"]
    scale = SCALES[job["scale"]]
    device = Device(scale.device)
    rows, length = scale.gpt2_rows, scale.gpt2_length
    train = TrainBlock(
        max_steps=steps,
        batch_size=rows,
        lr=6e-4,
        warmup_steps=5,
        precision="bf16",
        device=device.type,
        compile=options["compile"],
        fused_adamw=options["fused_adamw"],
        log_every=steps,
        checkpoint_every=steps,
    )
    runtime = make_runtime(train)
    attention = attention_kernel(options["attention"], device.type, runtime.precision)  # RecipeError if not
    # no dropout, as nanoGPT's throughput figures
    no_dropout = {"resid_pdrop": 0.0, "embd_pdrop": 0.0, "attn_pdrop": 0.0}
    config = build_config("gpt2", {"attn_implementation": attention, **no_dropout, **scale.gpt2})
    torch.manual_seed(0)
    with torch.device(device.type):
        model = AutoModelForCausalLM.from_config(config, attn_implementation=attention)
    parameters = sum(p.numel() for p in model.parameters())
    flops = palm_flops(parameters, config, length)
    device.reset_peak_memory()
    ends: list[float] = []

    def mark(step: int) -> None:
        device.synchronize()
        ends.append(time.perf_counter())

    start = time.perf_counter()
    result = fit(
        model,
        next_token_loss(train),
        random_blocks(config.vocab_size, rows, length, steps),
        None,
        train,
        EvalBlock(samples=0, answers=0, restore_best=False),
        runtime,
        hooks=[mark],
    )
    skip = job["skip"]
    tokens_per_s = rows * length * (steps - skip) / (ends[-1] - ends[skip - 1])
    return {
        "parameters": parameters,
        "flops": flops,
        "tokens_per_s": tokens_per_s,
        "first_steps_s": ends[skip - 1] - start,
        "peak_gib": device.peak_gib(),
        "final_loss": result.final_train_loss,
        "gpu": device.name(),
    }


def memory_worker(job: dict[str, Any]) -> dict[str, Any]:
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from peaufine.engine.fit import fit
    from peaufine.engine.runtime import make_runtime
    from peaufine.methods.lm import next_token_loss
    from peaufine.models.build import prepare_for_training
    from peaufine.recipe import AdapterBlock, EvalBlock, TrainBlock

    options = MEMORY[job["name"]]
    scale = SCALES[job["scale"]]
    device = Device(scale.device)
    train = TrainBlock(
        max_steps=MEMORY_STEPS,
        batch_size=scale.memory_rows,
        lr=1e-5,
        warmup_steps=1,
        precision="bf16",
        device=device.type,
        fused_adamw="on",
        activation_checkpointing=options["activation_checkpointing"],
        loss_chunk_tokens=options["loss_chunk_tokens"],
        log_every=1,
        checkpoint_every=MEMORY_STEPS,
    )
    runtime = make_runtime(train)
    config = LlamaConfig(**scale.llama, attn_implementation="sdpa")
    torch.manual_seed(0)
    with torch.device(device.type):
        model = LlamaForCausalLM(config)  # fp32 weights, bf16 compute: as peaufine trains
    if options["lora"]:
        from peaufine.models.adapters import apply_adapter

        model = apply_adapter(
            model,
            AdapterBlock(kind="lora", r=scale.lora_r, alpha=2 * scale.lora_r, train_special_tokens=False),
        )
    model = prepare_for_training(model, train)
    parameters = sum(p.numel() for p in model.parameters())
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    weights_gib = device.allocated_gib()
    device.reset_peak_memory()
    start = time.perf_counter()
    result = fit(
        model,
        next_token_loss(train),
        random_blocks(config.vocab_size, scale.memory_rows, scale.memory_length, MEMORY_STEPS),
        None,
        train,
        EvalBlock(samples=0, answers=0, restore_best=False),
        runtime,
    )
    device.synchronize()
    return {
        "parameters": parameters,
        "trainable": trainable,
        "weights_gib": weights_gib,
        "peak_gib": device.peak_gib(),
        "seconds": time.perf_counter() - start,
        "losses": [row["train_loss"] for row in result.history],
    }


# -- the parent -----------------------------------------------------------------------------------------
def gib(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.1f} GiB"


def run_worker(kind: str, name: str, args: argparse.Namespace, workdir: Path) -> dict[str, Any]:
    folder = workdir / f"{kind}-{name.replace('+', '_')}"
    folder.mkdir()
    job = {
        "kind": kind,
        "name": name,
        "steps": args.steps,
        "skip": args.skip,
        "scale": "rehearsal" if args.rehearse else "real",
        "result": str(folder / "r.json"),
    }
    (folder / "job.json").write_text(json.dumps(job), encoding="utf-8")
    env = {**os.environ, "TOKENIZERS_PARALLELISM": "false", "HF_HUB_OFFLINE": "1"}
    log = folder / "log.txt"
    with log.open("w") as out:
        done = subprocess.run(
            [sys.executable, str(Path(__file__).resolve()), "--worker", str(folder / "job.json")],
            stdout=out,
            stderr=subprocess.STDOUT,
            env=env,
            cwd=REPO,
        )
    if done.returncode != 0:
        tail = log.read_text(encoding="utf-8", errors="replace")[-3000:]
        return {"error": f"exit {done.returncode}: {tail.strip().splitlines()[-1] if tail.strip() else ''}"}
    return json.loads(Path(job["result"]).read_text(encoding="utf-8"))


def cuda_available() -> bool:
    import torch

    return torch.cuda.is_available()


def flash_attention_available() -> bool:
    from transformers.utils import is_flash_attn_2_available

    return is_flash_attn_2_available()


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.worker is not None:
        job = json.loads(Path(args.worker).read_text(encoding="utf-8"))
        worker = throughput_worker if job["kind"] == "throughput" else memory_worker
        Path(job["result"]).write_text(json.dumps(worker(job)), encoding="utf-8")
        return 0
    if not args.rehearse and not cuda_available():
        print(
            "REFUSED: benchmarks/gpu_throughput.py measures CUDA throughput and needs a CUDA GPU; none is "
            "visible here. On a CPU machine run benchmarks/speed_options.py instead "
            "(or --rehearse to check this script's code on the CPU).",
            file=sys.stderr,
        )
        return 2
    scale = SCALES["rehearsal" if args.rehearse else "real"]
    device = Device(scale.device)
    started = time.perf_counter()
    if args.rehearse:
        print(
            f"{REHEARSAL_NOTE} ({device.name()}). MFU below is the real run's formula against "
            f"--peak-tflops {args.peak_tflops:g}, meaningless here; peak memory is the worker's "
            f"{device.peak_kind}."
        )
    else:
        print(f"GPU: {device.name()}; peak {args.peak_tflops:g} TFLOP/s dense bf16 (--peak-tflops)")
    results: dict[str, Any] = {"throughput": {}, "memory": {}}
    with tempfile.TemporaryDirectory(prefix="gpu-throughput-") as tmp:
        for name, options in THROUGHPUT.items():
            if options["attention"] == "flash_attention_2" and device.type != "cuda":
                print(f"{scale.gpt2_label} {name}: skipped (flash_attention_2 runs on CUDA only)")
                continue
            if options["attention"] == "flash_attention_2" and not flash_attention_available():
                print(f"{scale.gpt2_label} {name}: skipped (the flash_attn package is not installed)")
                continue
            if options["compile"] and not scale.compile:
                print(f"{scale.gpt2_label} {name}: skipped (torch.compile is left out of the CPU rehearsal)")
                continue
            run = run_worker("throughput", name, args, Path(tmp))
            results["throughput"][name] = run
            if "error" in run:
                print(f"{name}: FAILED {run['error']}")
                continue
            f = run["flops"]
            mfu = run["tokens_per_s"] * f["per_token"] / (args.peak_tflops * 1e12)
            mfu_head = run["tokens_per_s"] * f["per_token_with_head"] / (args.peak_tflops * 1e12)
            run["mfu"], run["mfu_with_head"] = mfu, mfu_head
            print(
                f"{scale.gpt2_label} {name}: {run['tokens_per_s']:,.0f} tokens/s, MFU {mfu:.1%} "
                f"({mfu_head:.1%} with the head), peak {gib(run['peak_gib'])} {device.peak_kind}, "
                f"first {args.skip} steps {run['first_steps_s']:.1f} s, loss {run['final_loss']:.3f}",
                flush=True,
            )
        first = next((r for r in results["throughput"].values() if "error" not in r), None)
        if first is not None:
            f = first["flops"]
            print(
                f"FLOPs per token = 6 x N + 12 x L x T x d = 6 x {f['non_embedding_parameters']:,} + "
                f"12 x {f['layers']} x {scale.gpt2_length} x {f['width']} = "
                f"{f['per_token'] / 1e6:,.1f} MFLOP "
                f"(N: parameters less the token and position tables; + head 6 x V x d = "
                f"{f['head'] / 1e6:,.1f} MFLOP gives {f['per_token_with_head'] / 1e6:,.1f}); "
                f"MFU = tokens/s x FLOPs per token / ({args.peak_tflops:g} x 10^12)"
            )
        if not args.skip_memory:
            for name in MEMORY:
                run = run_worker("memory", name, args, Path(tmp))
                results["memory"][name] = run
                if "error" in run:
                    print(f"{scale.llama_label} {name}: FAILED {run['error']}")
                    continue
                print(
                    f"{scale.llama_label} {name}: peak {gib(run['peak_gib'])} {device.peak_kind} "
                    f"(weights {gib(run['weights_gib'])}), {run['trainable']:,} of "
                    f"{run['parameters']:,} parameters trained, {scale.memory_rows} x {scale.memory_length} "
                    f"tokens per step, {run['seconds']:.0f} s for {MEMORY_STEPS} steps",
                    flush=True,
                )
    results["seconds"] = time.perf_counter() - started
    results["peak_tflops"] = args.peak_tflops
    if args.rehearse:
        results["rehearsal"] = f"{REHEARSAL_NOTE}; peak_gib is the {device.peak_kind}"
    print("RESULT " + json.dumps(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())

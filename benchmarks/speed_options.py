"""Speed options, measured on this machine: tokens/s and peak memory of pretraining and of LoRA
fine-tuning with each option of the recipe on, against the same run with every option off.

Options: train.compile, train.precision bf16 (autocast), train.activation_checkpointing,
train.loss_chunk_tokens (on a 64k vocabulary, where the logits dominate memory), train.prefetch_batches,
train.fused_adamw on, and model.attention eager against sdpa. Each configuration trains in its own
process through fit() (so its peak memory is its own: ru_maxrss, or torch.cuda.max_memory_allocated on
a GPU), the configurations alternating in order and reverse order over repetitions. Prints, per
configuration, the median steady tokens/s, its ratio to the baseline of its group (the median of the
per-repetition ratios), the first step's seconds (compilation included), peak memory and the final
loss against the baseline's (options that must not change results change it by rounding only); ends
with one `RESULT {json}` line.

    python benchmarks/speed_options.py            # every configuration, 3 repetitions, one thread (~20 min)
    python benchmarks/speed_options.py --quick    # a tiny model, three configurations, under a minute
    python benchmarks/speed_options.py --only pretrain:baseline,pretrain:bf16 --reps 5
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]

# A Llama of the llama-small preset's width and half its depth (~5M parameters with an 8k vocabulary).
SHAPE = {
    "hidden_size": 256,
    "intermediate_size": 688,
    "num_hidden_layers": 4,
    "num_attention_heads": 4,
    "num_key_value_heads": 4,
    "tie_word_embeddings": True,
}
QUICK_SHAPE = {**SHAPE, "hidden_size": 64, "intermediate_size": 172, "num_hidden_layers": 2}

# group -> what it trains: the task, the vocabulary, rows x tokens per step
GROUPS: dict[str, dict[str, Any]] = {
    "pretrain": {"task": "pretrain", "vocab": 8192, "rows": 8, "length": 128},
    "pretrain-64k": {"task": "pretrain", "vocab": 65536, "rows": 4, "length": 128},
    "sft-lora": {"task": "sft", "vocab": 8192, "rows": 4, "length": 256},
    # rows = pairs per step: 8 sequences of up to 128 tokens through a 64k vocabulary
    "dpo-64k": {"task": "dpo", "vocab": 65536, "rows": 4, "length": 128},
}
QUICK_GROUPS: dict[str, dict[str, Any]] = {
    "pretrain": {"task": "pretrain", "vocab": 2048, "rows": 4, "length": 64},
    "pretrain-64k": {"task": "pretrain", "vocab": 16384, "rows": 4, "length": 64},
    "sft-lora": {"task": "sft", "vocab": 2048, "rows": 2, "length": 128},
    "dpo-64k": {"task": "dpo", "vocab": 16384, "rows": 2, "length": 64},
}

# Every option off: the baseline each option is compared with.
BASELINE: dict[str, Any] = {
    "compile": False,
    "precision": "fp32",
    "activation_checkpointing": False,
    "loss_chunk_tokens": None,
    "prefetch_batches": 0,
    "fused_adamw": "off",
    "attention": "sdpa",
}
OPTIONS: dict[str, dict[str, Any]] = {
    "baseline": {},
    "compile": {"compile": True},
    "bf16": {"precision": "bf16"},
    "act-ckpt": {"activation_checkpointing": True},
    "chunked-ce": {"loss_chunk_tokens": 128},
    "prefetch": {"prefetch_batches": 2},
    "fused-adamw": {"fused_adamw": "on"},
    "eager-attn": {"attention": "eager"},
}
CONFIGURATIONS = [
    *(
        f"pretrain:{o}"
        for o in ("baseline", "compile", "bf16", "act-ckpt", "prefetch", "fused-adamw", "eager-attn")
    ),
    "pretrain-64k:baseline",
    "pretrain-64k:chunked-ce",
    *(f"sft-lora:{o}" for o in ("baseline", "bf16", "act-ckpt", "chunked-ce", "prefetch")),
    "dpo-64k:baseline",
    "dpo-64k:chunked-ce",
]
QUICK_CONFIGURATIONS = ["pretrain-64k:baseline", "pretrain-64k:chunked-ce", "sft-lora:baseline"]


@dataclass
class Settings:
    configurations: list[str]
    reps: int
    steps: int
    skip: int
    threads: int
    quick: bool


def parse_args(argv: list[str] | None = None) -> tuple[Settings, bool, str | None]:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="tiny model, 3 configurations, 1 repetition")
    parser.add_argument("--only", default=None, help="comma-separated group:option names (see --list)")
    parser.add_argument("--list", action="store_true", help="print the configuration names and exit")
    parser.add_argument("--reps", type=int, default=None, help="repetitions (default 3; --quick 1)")
    parser.add_argument("--steps", type=int, default=None, help="optimiser steps per run (default 14)")
    parser.add_argument("--skip", type=int, default=None, help="first steps left out of tokens/s (default 4)")
    # two OpenMP threads stall whenever another process runs on a 2-core machine
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.only:
        configurations = [c.strip() for c in args.only.split(",") if c.strip()]
    else:
        configurations = list(QUICK_CONFIGURATIONS if args.quick else CONFIGURATIONS)
    for name in configurations:
        group, _, option = name.partition(":")
        if group not in GROUPS or option not in OPTIONS:
            parser.error(f"unknown configuration {name!r}; --list shows them")
    settings = Settings(
        configurations=configurations,
        reps=args.reps or (1 if args.quick else 3),
        steps=args.steps or (4 if args.quick else 14),
        skip=args.skip if args.skip is not None else (1 if args.quick else 4),
        threads=args.threads,
        quick=args.quick,
    )
    if settings.steps <= settings.skip:
        parser.error(f"--steps ({settings.steps}) must exceed --skip ({settings.skip})")
    return settings, args.list, args.worker


# -- one configuration, in its own process ------------------------------------------------------------
def peak_memory_mb(device: Any) -> float:
    import resource

    import torch

    if getattr(device, "type", "cpu") == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def chat_like_examples(n: int, vocab: int, length: int, seed: int) -> list[Any]:
    """Log-normal lengths (median length/3) clipped to 16..length, a prompt of 20-60% hidden from the loss."""
    import numpy as np

    from peaufine.data.batching import Example

    rng = np.random.default_rng(seed)
    lengths = np.clip(rng.lognormal(np.log(length / 3), 0.7, size=n), 16, length).astype(int)
    examples = []
    for size in lengths:
        prompt = int(size * rng.uniform(0.2, 0.6))
        examples.append(
            Example(rng.integers(4, vocab, size=size).tolist(), [t >= prompt for t in range(size)])
        )
    return examples


def random_pairs(n: int, vocab: int, length: int, seed: int) -> Any:
    """Preference pairs of one prompt (20-60% of `length`) and two random answers filling the rest."""
    import numpy as np

    from peaufine.data.batching import Example
    from peaufine.data.pairs import PairBatches, PairExample

    rng = np.random.default_rng(seed)
    pairs = []
    for _ in range(n):
        prompt = rng.integers(4, vocab, size=int(length * rng.uniform(0.2, 0.6))).tolist()
        answers = [
            rng.integers(4, vocab, size=int(rng.integers(8, length - len(prompt) + 1))).tolist() for _ in "cr"
        ]
        chosen, rejected = (Example(prompt + a, [False] * len(prompt) + [True] * len(a)) for a in answers)
        pairs.append(PairExample(chosen, rejected))
    return PairBatches(pairs, pad_id=0)


def train_one(job: dict[str, Any]) -> dict[str, Any]:
    import numpy as np
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from peaufine.data.batching import PackedBlocks, PackedExamples, global_batch
    from peaufine.engine.fit import fit
    from peaufine.engine.runtime import make_runtime
    from peaufine.methods.lm import next_token_loss
    from peaufine.models.build import prepare_for_training
    from peaufine.recipe import AdapterBlock, EvalBlock, TrainBlock

    torch.set_num_threads(job["threads"])
    group, options = job["group"], {**BASELINE, **OPTIONS[job["option"]]}
    steps, rows, length, vocab = job["steps"], group["rows"], group["length"], group["vocab"]
    train = TrainBlock(
        max_steps=steps,
        batch_size=rows,
        lr=1e-3,
        warmup_steps=2,
        precision=options["precision"],
        compile=options["compile"],
        activation_checkpointing=options["activation_checkpointing"],
        fused_adamw=options["fused_adamw"],
        loss_chunk_tokens=options["loss_chunk_tokens"],
        prefetch_batches=options["prefetch_batches"],
        log_every=1,
        checkpoint_every=steps,
        seed=0,
    )
    runtime = make_runtime(train)
    config = LlamaConfig(
        **job["shape"],
        vocab_size=vocab,
        max_position_embeddings=length,
        attn_implementation=options["attention"],
    )
    torch.manual_seed(0)
    model = LlamaForCausalLM(config)
    if group["task"] == "sft":
        from peaufine.models.adapters import apply_adapter

        model = apply_adapter(model, AdapterBlock(kind="lora", r=8, train_special_tokens=False))
        examples = chat_like_examples(steps * rows * 4, vocab, length, seed=0)
        dataset: Any = PackedExamples(examples, length, pad_id=0)
    elif group["task"] == "dpo":
        dataset = random_pairs(steps * rows, vocab, length, seed=0)
    else:
        stream = np.random.default_rng(0).integers(0, vocab, size=steps * rows * length + 1, dtype=np.int32)
        dataset = PackedBlocks(stream, length)
    model = prepare_for_training(model, train).to(runtime.device)
    parameters = sum(p.numel() for p in model.parameters())
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)

    step_tokens = []  # real (non-padding) tokens of each step: the rows are a function of the position
    for step in range(steps):
        chosen = global_batch(len(dataset), rows, train.seed, step * rows)
        if group["task"] == "sft":
            step_tokens.append(
                sum(len(dataset.examples[i].input_ids) for r in chosen for i in dataset.rows[r])
            )
        elif group["task"] == "dpo":
            pairs = [dataset.pairs[i] for i in chosen]
            step_tokens.append(sum(len(p.chosen.input_ids) + len(p.rejected.input_ids) for p in pairs))
        else:
            step_tokens.append(rows * length)

    objective: Any = next_token_loss(train)
    if group["task"] == "dpo":
        from peaufine.methods.preference import DpoLoss, precompute_reference
        from peaufine.recipe import DpoBlock

        # the reference log-probs once, as the dpo stage computes them (chunked too when the option is on)
        precompute_reference(model, [dataset], runtime, rows, train.loss_chunk_tokens)
        objective = DpoLoss(DpoBlock(beta=0.1), chunk_tokens=train.loss_chunk_tokens)
    memory_before = peak_memory_mb(runtime.device)
    if runtime.device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(runtime.device)
    ends: list[float] = []
    start = time.perf_counter()
    result = fit(
        model,
        objective,
        dataset,
        None,
        train,
        EvalBlock(samples=0, answers=0, restore_best=False),
        runtime,
        hooks=[lambda step: ends.append(time.perf_counter())],
    )
    skip = job["skip"]
    return {
        "device": str(runtime.device),
        "threads": torch.get_num_threads(),
        "parameters": parameters,
        "trainable": trainable,
        "first_step_s": ends[0] - start,
        "tokens_per_s": sum(step_tokens[skip:]) / (ends[-1] - ends[skip - 1]),
        "peak_mb": peak_memory_mb(runtime.device),
        "before_mb": memory_before,
        "losses": [row["train_loss"] for row in result.history],
    }


def worker(job_path: Path) -> int:
    job = json.loads(job_path.read_text(encoding="utf-8"))
    Path(job["result_file"]).write_text(json.dumps(train_one(job)), encoding="utf-8")
    return 0


# -- the parent: alternation, medians, the table ------------------------------------------------------
def run_configuration(name: str, rep: int, settings: Settings, workdir: Path) -> dict[str, Any]:
    group_name, _, option = name.partition(":")
    groups = QUICK_GROUPS if settings.quick else GROUPS
    folder = workdir / f"{name.replace(':', '-')}-{rep}"
    folder.mkdir()
    job = {
        "group": groups[group_name],
        "option": option,
        "shape": QUICK_SHAPE if settings.quick else SHAPE,
        "steps": settings.steps,
        "skip": settings.skip,
        "threads": settings.threads,
        "result_file": str(folder / "result.json"),
    }
    (folder / "job.json").write_text(json.dumps(job), encoding="utf-8")
    threads = str(settings.threads)
    env = {
        **os.environ,
        "OMP_NUM_THREADS": threads,  # read once, when torch starts: it must be set before
        "MKL_NUM_THREADS": threads,
        "TOKENIZERS_PARALLELISM": "false",
        "HF_HUB_OFFLINE": "1",
        # compiled configurations share a kernel cache: the first repetition compiles cold, later warm
        "TORCHINDUCTOR_CACHE_DIR": str(workdir / "inductor"),
    }
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
        tail = log.read_text(encoding="utf-8", errors="replace")[-4000:]
        raise RuntimeError(f"{name} (repetition {rep + 1}) failed (exit {done.returncode}):\n{tail}")
    return json.loads(Path(job["result_file"]).read_text(encoding="utf-8"))


def summarise(settings: Settings, runs: dict[str, list[dict[str, Any]]]) -> dict[str, dict[str, Any]]:
    """Medians per configuration; ratios to its group's baseline, repetition by repetition."""
    rows: dict[str, dict[str, Any]] = {}
    for name in settings.configurations:
        group = name.partition(":")[0]
        mine = runs[name]
        base = runs.get(f"{group}:baseline")
        row = {
            "tokens_per_s": statistics.median(r["tokens_per_s"] for r in mine),
            "first_step_s": statistics.median(r["first_step_s"] for r in mine),
            "peak_mb": statistics.median(r["peak_mb"] for r in mine),
            "train_mb": statistics.median(r["peak_mb"] - r["before_mb"] for r in mine),
            "final_loss": mine[0]["losses"][-1],
            "parameters": mine[0]["parameters"],
            "trainable": mine[0]["trainable"],
            "speed_ratio": None,
            "peak_ratio": None,
            "loss_gap": None,
        }
        if base is not None:
            row["speed_ratio"] = statistics.median(
                r["tokens_per_s"] / b["tokens_per_s"] for r, b in zip(mine, base, strict=True)
            )
            row["peak_ratio"] = row["peak_mb"] / statistics.median(b["peak_mb"] for b in base)
            # the largest relative gap of any step's loss: the work is the same when it is rounding
            row["loss_gap"] = max(
                abs(a - b) / abs(b) for a, b in zip(mine[0]["losses"], base[0]["losses"], strict=True)
            )
        rows[name] = row
    return rows


def print_table(rows: dict[str, dict[str, Any]], memory: str) -> None:
    def number(value: float | None, spec: str) -> str:
        return "—" if value is None else format(value, spec)

    print(
        f"| configuration | tokens/s | × baseline | first step s | peak {memory} MB | training MB | "
        "peak × baseline | loss gap |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    for name, r in rows.items():
        print(
            f"| {name} | {r['tokens_per_s']:,.0f} | {number(r['speed_ratio'], '.2f')} | "
            f"{r['first_step_s']:.1f} | {r['peak_mb']:,.0f} | {r['train_mb']:,.0f} | "
            f"{number(r['peak_ratio'], '.2f')} | {number(r['loss_gap'], '.1e')} |"
        )


def main(argv: list[str] | None = None) -> int:
    settings, listing, job = parse_args(argv)
    if job is not None:
        return worker(Path(job))
    if listing:
        print("\n".join(CONFIGURATIONS))
        return 0
    load_start = os.getloadavg()[0]
    print(
        f"speed options: {len(settings.configurations)} configurations x {settings.reps} repetition(s), "
        f"{settings.steps} steps each (tokens/s over steps {settings.skip + 1}..{settings.steps}), "
        f"{settings.threads} thread(s); load average {load_start:.1f} on {os.cpu_count()} CPUs at the start"
    )
    runs: dict[str, list[dict[str, Any]]] = {name: [] for name in settings.configurations}
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="speed-options-") as tmp:
        for rep in range(settings.reps):
            order = settings.configurations if rep % 2 == 0 else list(reversed(settings.configurations))
            for name in order:
                run = run_configuration(name, rep, settings, Path(tmp))
                runs[name].append(run)
                print(
                    f"rep {rep + 1}/{settings.reps} {name}: {run['tokens_per_s']:,.0f} tokens/s, "
                    f"first step {run['first_step_s']:.1f} s, peak {run['peak_mb']:,.0f} MB",
                    flush=True,
                )
    first = next(iter(runs.values()))[0]
    device, memory = first["device"], ("CUDA allocated" if first["device"].startswith("cuda") else "RSS")
    rows = summarise(settings, runs)
    load_end = os.getloadavg()[0]
    print(
        f"\non {device}, {first['threads']} thread(s); load average {load_start:.1f} -> {load_end:.1f}; "
        f"medians over {settings.reps} repetition(s); × baseline: median of per-repetition ratios to the "
        "group's baseline (every option off: fp32, sdpa, no checkpointing, no prefetch, unfused AdamW)"
    )
    print_table(rows, memory)
    groups = QUICK_GROUPS if settings.quick else GROUPS
    for group, spec in groups.items():
        names = [n for n in rows if n.startswith(group + ":")]
        if names:
            r = rows[names[0]]
            print(
                f"{group}: {spec['task']}, vocabulary {spec['vocab']:,}, {spec['rows']} rows x "
                f"{spec['length']} tokens per step, {r['parameters']:,} parameters "
                f"({r['trainable']:,} trained)"
            )
    result = {
        "device": device,
        "threads": first["threads"],
        "reps": settings.reps,
        "steps": settings.steps,
        "skip": settings.skip,
        "quick": settings.quick,
        "load_average": [load_start, load_end],
        "seconds": time.perf_counter() - started,
        "configurations": rows,
    }
    print("RESULT " + json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())

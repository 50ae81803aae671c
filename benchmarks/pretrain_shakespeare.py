"""nanoGPT's "baby GPT" on tiny Shakespeare, on CPU: peaufine's fit() against a bare PyTorch loop.

Prints the loss on the whole validation split, steady-state tokens/s, and the engine's overhead over a
hand-written loop of the same model, batches, optimiser and schedule, measured in this run.

    python benchmarks/pretrain_shakespeare.py            # 2000 iterations, eager, one thread
    python benchmarks/pretrain_shakespeare.py --compile  # also compiled (torch.compile)
    python benchmarks/pretrain_shakespeare.py --quick    # 200 iterations, under 5 minutes
"""

from __future__ import annotations

import argparse
import copy
import itertools
import json
import math
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import harness

REPO = Path(__file__).resolve().parents[1]
DEFAULT_DATA = REPO / ".." / "shared" / "data" / "tinyshakespeare" / "input.txt"

# nanoGPT config/train_shakespeare_char.py with the CPU overrides of its README:
# --device=cpu --compile=False --eval_iters=20 --log_interval=1 --block_size=64 --batch_size=12
# --n_layer=4 --n_head=4 --n_embd=128 --max_iters=2000 --lr_decay_iters=2000 --dropout=0.0
# (train.py defaults: AdamW weight decay 0.1 on every parameter of dimension >= 2, beta1 0.9,
# grad clip 1.0; the config sets beta2 0.99, lr 1e-3 -> min_lr 1e-4, 100 warmup iterations).
BLOCK_SIZE = 64
BATCH_SIZE = 12
SEED = 1337
# The baby GPT shape in two architectures: GPT-2 (learned positions, LayerNorm, biases; nanoGPT's
# own) and Llama (rotary positions, RMSNorm, SwiGLU MLP sized to the same parameter count, no biases).
MODELS: dict[str, tuple[str, dict[str, Any]]] = {
    "gpt2": (
        "gpt2-tiny",
        {
            "n_embd": 128,
            "n_layer": 4,
            "n_head": 4,
            "n_positions": 64,
            "resid_pdrop": 0.0,
            "embd_pdrop": 0.0,
            "attn_pdrop": 0.0,
            # nanoGPT's MLP uses torch.nn.GELU() (exact erf form); GPT-2's default is the tanh form.
            "activation_function": "gelu",
        },
    ),
    "llama": (
        "llama-tiny",
        {
            "hidden_size": 128,
            "num_hidden_layers": 4,
            "num_attention_heads": 4,
            "num_key_value_heads": 4,
            "intermediate_size": 344,
            "max_position_embeddings": 64,
            "tie_word_embeddings": True,
        },
    ),
}
EVAL_BATCH = 64  # blocks per validation forward; the loss is a sum over targets, so size-independent

# Not measured in this run: quoted from /work/shared/NOTES.md ("Speed and threads"), nanoGPT's own
# train.py with the settings above on this kind of machine (2 cores, one thread).
NANOGPT_REFERENCE = {"tokens_per_s": 7300.0, "ms_per_iter": 105.0, "val_loss": 1.8857, "iters": 2000}
STRETCH = 1.10
VAL_LOSS_TARGET = 1.90
OVERHEAD_TARGET = 1.03


@dataclass
class Settings:
    iters: int
    rounds: int
    round_steps: int
    val_batches: int | None  # None: the whole validation split
    compile: bool
    threads: int
    quick: bool
    stride: int
    model: str


def parse_args(argv: list[str] | None = None) -> tuple[Settings, Path]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--quick", action="store_true", help="200 iterations, 3 timing rounds, validation on 512 blocks"
    )
    parser.add_argument("--iters", type=int, help="training iterations (default 2000; quick 200)")
    parser.add_argument(
        "--compile",
        action=argparse.BooleanOptionalAction,
        default=False,
        help="train with train.compile=true too, and report eager and compiled",
    )
    parser.add_argument("--threads", type=int, default=1, help="torch / OpenMP threads (default 1)")
    parser.add_argument("--rounds", type=int, help="alternating overhead rounds (default 7; quick 3)")
    parser.add_argument("--round-steps", type=int, help="steps per arm per round (default 50; quick 20)")
    parser.add_argument(
        "--stride",
        type=int,
        default=1,
        help="characters between training block starts (1: every offset, as "
        "nanoGPT's random crops; 64: non-overlapping blocks)",
    )
    parser.add_argument(
        "--model",
        choices=sorted(MODELS),
        default="llama",
        help="architecture of the baby GPT shape: llama (default; rotary positions, "
        "RMSNorm, SwiGLU) or gpt2 (nanoGPT's own: learned positions, biases)",
    )
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA, help="tiny Shakespeare input.txt")
    args = parser.parse_args(argv)
    settings = Settings(
        iters=args.iters or (200 if args.quick else 2000),
        rounds=args.rounds or (3 if args.quick else 7),
        round_steps=args.round_steps or (20 if args.quick else 50),
        val_batches=8 if args.quick else None,
        compile=args.compile,
        threads=args.threads,
        quick=args.quick,
        stride=args.stride,
        model=args.model,
    )
    if settings.iters < 20 or settings.round_steps < 5 or settings.rounds < 1 or settings.threads < 1:
        parser.error("need --iters >= 20, --round-steps >= 5, --rounds >= 1, --threads >= 1")
    return settings, args.data


# -- timing ----------------------------------------------------------------------------------------
class StepClock:
    """A fit() hook (and the bare loop's): the wall time at the end of every optimiser step."""

    def __init__(self) -> None:
        self.start = time.perf_counter()
        self.ends: list[float] = []

    def __call__(self, step: int) -> None:
        self.ends.append(time.perf_counter())

    def durations(self) -> list[float]:
        """Seconds per step; the first includes everything from construction to the end of step 1."""
        edges = [self.start, *self.ends]
        return [b - a for a, b in itertools.pairwise(edges)]


def steady_state(durations: list[float], skip: int) -> list[float]:
    """Step times after `skip` warm-up steps (first-step allocation, compilation), last step excluded
    (fit() validates inside it)."""
    return durations[skip:-1]


# -- data and model --------------------------------------------------------------------------------
@dataclass
class Corpus:
    tokenizer: Any
    train_set: Any  # PackedBlocks
    val_set: Any
    train_chars: int
    val_chars: int


def prepare_corpus(path: Path, workdir: Path, stride: int = 1) -> Corpus:
    """nanoGPT's shakespeare_char split: the first 90% of characters train, the last 10% validate.

    The vocabulary is every character of the file (as nanoGPT's prepare.py builds it) plus
    peaufine's reserved special tokens; each split is one document followed by EOS. Training rows
    start every `stride` characters (1: every offset, drawn without replacement, like nanoGPT's
    random crops); validation rows do not overlap, so each validation token is scored once.
    """
    from peaufine.data.batching import PackedBlocks, read_token_stream, write_token_stream
    from peaufine.models.tokenizer import train_char

    text = path.read_text(encoding="utf-8")
    cut = int(len(text) * 0.9)
    parts = {"train": text[:cut], "val": text[cut:]}
    tokenizer = train_char([text])
    sets = {}
    for name, part in parts.items():
        ids = tokenizer(part, add_special_tokens=False)["input_ids"]
        stream_path = workdir / f"{name}.bin"
        write_token_stream([ids], tokenizer.eos_token_id, stream_path)
        sets[name] = PackedBlocks(
            read_token_stream(stream_path), BLOCK_SIZE, stride if name == "train" else None
        )
    return Corpus(tokenizer, sets["train"], sets["val"], len(parts["train"]), len(parts["val"]))


def baby_gpt_train_block(iters: int, compile: bool) -> Any:
    from peaufine.recipe import TrainBlock

    return TrainBlock(
        max_steps=iters,
        batch_size=BATCH_SIZE,
        lr=1e-3,
        min_lr=1e-4,
        schedule="cosine",
        warmup_steps=100,
        weight_decay=0.1,
        # nanoGPT decays every matrix, the (tied) token and position embeddings included.
        decay_embeddings=True,
        decay_biases=False,
        decay_norms=False,
        betas=(0.9, 0.99),
        grad_clip=1.0,
        precision="fp32",
        device="cpu",
        compile=compile,
        seed=SEED,
        log_every=1,  # nanoGPT's CPU command uses --log_interval=1: a loss.item() every step
    )


# -- the peer: nanoGPT's training step, written out by hand ------------------------------------------
def nanogpt_param_groups(model: Any, weight_decay: float) -> list[dict[str, Any]]:
    """nanoGPT's configure_optimizers: parameters of dimension >= 2 decay, biases and norms do not."""
    params = [p for p in model.parameters() if p.requires_grad]
    return [
        {"params": [p for p in params if p.dim() >= 2], "weight_decay": weight_decay},
        {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0},
    ]


def cosine_lr(it: int, train: Any) -> float:
    """Linear warmup over `warmup_steps` (from lr/warmup), cosine to min_lr at max_steps: the schedule
    fit() runs, written independently so the benchmark checks it instead of borrowing it."""
    if it < train.warmup_steps:
        return train.lr * (it + 1) / train.warmup_steps
    ratio = min(1.0, (it - train.warmup_steps) / max(1, train.max_steps - train.warmup_steps))
    return train.min_lr + 0.5 * (1.0 + math.cos(math.pi * ratio)) * (train.lr - train.min_lr)


def bare_loop(model: Any, forward: Any, train_set: Any, train: Any, clock: StepClock) -> list[float]:
    """`train.max_steps` optimiser steps, no engine: the same batches fit() takes, in the same order."""
    import torch
    import torch.nn.functional as F

    from peaufine.data.batching import global_batch

    optimizer = torch.optim.AdamW(
        nanogpt_param_groups(model, train.weight_decay), lr=train.lr, betas=train.betas, eps=train.eps
    )
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda it: cosine_lr(it, train) / train.lr)
    model.train()
    losses = []
    for it in range(train.max_steps):
        batch = train_set.collate(
            global_batch(len(train_set), train.batch_size, train.seed, it * train.batch_size)
        )
        logits = forward(input_ids=batch["input_ids"], use_cache=False).logits
        loss = F.cross_entropy(logits.reshape(-1, logits.size(-1)), batch["labels"].reshape(-1))
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), train.grad_clip)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        losses.append(loss.item())
        clock(it + 1)
    return losses


# -- the engine --------------------------------------------------------------------------------------
def fit_run(
    model: Any,
    corpus: Corpus,
    train: Any,
    runtime: Any,
    hooks: list[Callable[[int], None]],
    *,
    validate: bool,
    val_batches: int | None = None,
) -> Any:
    """peaufine's fit(), writing nothing (run_dir=None); with `validate`, once, after the last step."""
    from peaufine.engine.fit import fit
    from peaufine.methods.lm import NextTokenLoss
    from peaufine.recipe import EvalBlock

    evaluation = EvalBlock(
        every=train.max_steps, max_batches=val_batches, batch_size=EVAL_BATCH, restore_best=False, samples=0
    )
    return fit(
        model,
        NextTokenLoss(),
        corpus.train_set,
        corpus.val_set if validate else None,
        train,
        evaluation,
        runtime,
        run_dir=None,
        hooks=hooks,
    )


@dataclass
class Arm:
    """One contender in the overhead rounds: fit() or the bare loop, eager or compiled."""

    name: str
    engine: bool
    compiled: bool
    model: Any
    forward: Any
    step_times: list[float] = field(default_factory=list)
    round_medians: list[float] = field(default_factory=list)
    first_round_losses: list[float] = field(default_factory=list)


ROUND_SKIP = 2  # a round's first steps allocate AdamW state (and, compiled, may compile): not steady


def run_round(arm: Arm, init_state: dict[str, Any], corpus: Corpus, train: Any, runtime: Any) -> None:
    arm.model.load_state_dict(init_state)  # same weights, same instance: compiled code stays valid
    clock = StepClock()
    if arm.engine:
        result = fit_run(arm.model, corpus, train, runtime, [clock], validate=False)
        losses = [row["train_loss"] for row in result.history]
    else:
        losses = bare_loop(arm.model, arm.forward, corpus.train_set, train, clock)
    steady = clock.durations()[ROUND_SKIP:]
    arm.step_times.extend(steady)
    # a median, not a sum: another process stealing the core for a moment must not decide the round
    arm.round_medians.append(statistics.median(steady))
    if not arm.first_round_losses:
        arm.first_round_losses = losses


def max_abs_diff(a: list[float], b: list[float]) -> float:
    if len(a) != len(b) or not a:
        return math.inf
    return max(abs(x - y) for x, y in zip(a, b, strict=True))


def measure_overhead(
    corpus: Corpus,
    train: Any,
    runtime: Any,
    init_state: dict[str, Any],
    modes: list[bool],
    settings: Settings,
) -> dict[str, dict[str, Any]]:
    """fit() and the bare loop, eager and (if asked) compiled, in alternating rounds; per mode the
    median step times and the median over rounds of (fit median step / bare median step)."""
    import torch

    from peaufine.models.build import build_from_preset

    round_train = train.model_copy(update={"max_steps": settings.round_steps})
    arms: list[Arm] = []
    for compiled in modes:
        for engine in (True, False):
            model = build_from_preset(*MODELS[settings.model], corpus.tokenizer, SEED)
            # fit() compiles by itself (train.compile); the bare loop gets torch.compile's module
            forward = torch.compile(model) if compiled and not engine else model
            name = f"{'fit()' if engine else 'bare loop'} {'compiled' if compiled else 'eager'}"
            arms.append(Arm(name, engine, compiled, model, forward))
    for r in range(settings.rounds):
        for arm in arms if r % 2 == 0 else reversed(arms):
            run_round(
                arm, init_state, corpus, round_train.model_copy(update={"compile": arm.compiled}), runtime
            )
        print(f"  overhead round {r + 1}/{settings.rounds} done", file=sys.stderr)

    tokens_per_step = BATCH_SIZE * BLOCK_SIZE
    figures: dict[str, dict[str, Any]] = {}
    for compiled in modes:
        ours, bare = (
            next(a for a in arms if a.compiled == compiled and a.engine == engine) for engine in (True, False)
        )
        ratios = [o / b for o, b in zip(ours.round_medians, bare.round_medians, strict=True)]
        figures["compiled" if compiled else "eager"] = {
            "fit_ms_per_step": 1000 * statistics.median(ours.step_times),
            "bare_ms_per_step": 1000 * statistics.median(bare.step_times),
            "fit_tokens_per_s": tokens_per_step / statistics.median(ours.step_times),
            "bare_tokens_per_s": tokens_per_step / statistics.median(bare.step_times),
            "overhead_ratio": statistics.median(ratios),
            "overhead_ratio_rounds": ratios,
            "first_round_loss_max_abs_diff": max_abs_diff(ours.first_round_losses, bare.first_round_losses),
        }
    return figures


# -- the benchmark ---------------------------------------------------------------------------------
def main(argv: list[str] | None = None) -> int:
    settings, data_path = parse_args(argv)
    if not data_path.is_file():
        print(
            f"SKIP: tiny Shakespeare not found at {data_path.resolve()}; pass --data PATH/input.txt "
            "(nanoGPT's data/shakespeare_char/input.txt, 1,115,394 bytes)"
        )
        return 0
    wall_start = time.perf_counter()
    harness.limit_threads(settings.threads)

    import torch

    from peaufine.engine.fit import evaluate_loss
    from peaufine.engine.optim import decay_groups, lr_at
    from peaufine.engine.runtime import make_runtime
    from peaufine.methods.lm import NextTokenLoss
    from peaufine.models.build import build_from_preset

    tokens_per_step = BATCH_SIZE * BLOCK_SIZE
    log = sys.stderr

    with tempfile.TemporaryDirectory(prefix="peaufine-shakespeare-") as tmp:
        corpus = prepare_corpus(data_path, Path(tmp), settings.stride)
        train = baby_gpt_train_block(settings.iters, settings.compile)
        runtime = make_runtime(train)
        model = build_from_preset(*MODELS[settings.model], corpus.tokenizer, SEED)
        init_state = copy.deepcopy(model.state_dict())
        n_params = sum(p.numel() for p in model.parameters())
        val_blocks = (
            len(corpus.val_set)
            if settings.val_batches is None
            else min(len(corpus.val_set), settings.val_batches * EVAL_BATCH)
        )

        # Fairness checks: the peer must optimise the same groups on the same schedule.
        groups = decay_groups(model, train)
        named = dict(model.named_parameters())
        peer = nanogpt_param_groups(model, train.weight_decay)
        same_groups = {id(named[n]) for n in groups.decay} == {id(p) for p in peer[0]["params"]} and {
            id(named[n]) for n in groups.no_decay
        } == {id(p) for p in peer[1]["params"]}
        lr_gap = max(abs(lr_at(s, train) - cosine_lr(s, train)) for s in range(settings.iters))

        print(
            f"tiny Shakespeare: {corpus.train_chars:,} train / {corpus.val_chars:,} val characters, "
            f"vocabulary {len(corpus.tokenizer)}; {settings.model} 4 x 128, block {BLOCK_SIZE}, "
            f"{n_params:,} parameters",
            file=log,
        )
        print(
            f"threads: {torch.get_num_threads()} (OMP_NUM_THREADS={os.environ['OMP_NUM_THREADS']}); "
            f"torch {torch.__version__}; {settings.iters} iterations"
            f"{', compiled' if settings.compile else ', eager'}",
            file=log,
        )

        initial_val = evaluate_loss(
            model, NextTokenLoss(), corpus.val_set, runtime, EVAL_BATCH, settings.val_batches
        )

        # 1. The run itself: fit() for the whole schedule, validating once at the end.
        def progress(step: int) -> None:
            if step % max(1, settings.iters // 10) == 0:
                print(f"  step {step}/{settings.iters}  {time.perf_counter() - clock.start:.0f} s", file=log)

        clock = StepClock()
        result = fit_run(
            model, corpus, train, runtime, [clock, progress], validate=True, val_batches=settings.val_batches
        )
        durations = clock.durations()
        skip = min(10, settings.iters // 10)
        steady = steady_state(durations, skip)
        step_median = statistics.median(steady)
        warmup_excess = sum(durations[:skip]) - skip * step_median
        main_mode = "compiled" if settings.compile else "eager"

        # 2. Overhead: fit() against the bare loop, alternating, from the same initial weights.
        modes = [False, True] if settings.compile else [False]
        figures = measure_overhead(corpus, train, runtime, init_state, modes, settings)

    throughput = tokens_per_step / step_median
    ref = NANOGPT_REFERENCE
    final_val = result.final_val_loss
    report = {
        "iters": settings.iters,
        "quick": settings.quick,
        "threads": torch.get_num_threads(),
        "train_block_stride": settings.stride,
        "model": settings.model,
        "compile": settings.compile,
        "torch": torch.__version__,
        "parameters": n_params,
        "vocab_size": len(corpus.tokenizer),
        "tokens_per_step": tokens_per_step,
        "val_blocks": val_blocks,
        "val_blocks_total": len(corpus.val_set),
        "val_loss_initial": initial_val,
        "val_loss": final_val,
        "final_train_loss": result.final_train_loss,
        "train_mode": main_mode,
        "tokens_per_s": throughput,
        "tokens_per_s_mean": tokens_per_step * len(steady) / sum(steady),
        "ms_per_step": 1000 * step_median,
        "warmup_steps_excluded": skip,
        "warmup_excess_s": warmup_excess,
        "compile_s": warmup_excess if settings.compile else None,
        "overhead_ratio": figures["eager"]["overhead_ratio"],
        "overhead": figures,
        "rounds": settings.rounds,
        "round_steps": settings.round_steps,
        "param_groups_match": same_groups,
        "lr_schedule_max_abs_diff": lr_gap,
        "reference": {**ref, "source": "nanoGPT train.py, /work/shared/NOTES.md; not measured in this run"},
        "vs_reference_tokens_per_s": throughput / ref["tokens_per_s"],
        "wall_s": time.perf_counter() - wall_start,
    }
    if settings.compile:
        report["overhead_ratio_compiled"] = figures["compiled"]["overhead_ratio"]
    print_table(report)
    print("RESULT " + json.dumps(report, default=float))
    return 0


def print_table(r: dict[str, Any]) -> None:
    ref = r["reference"]
    val_note = "whole split" if r["val_blocks"] == r["val_blocks_total"] else "subset (--quick)"
    if r["iters"] < NANOGPT_REFERENCE["iters"]:
        goal = f"n/a ({r['iters']} it)"
    else:
        goal = "met" if r["val_loss"] is not None and r["val_loss"] <= VAL_LOSS_TARGET else "NOT met"
    lines = [
        "",
        f"baby GPT, tiny Shakespeare, CPU, {r['threads']} thread(s), torch {r['torch']}: "
        f"{r['iters']} iterations x {r['tokens_per_step']} tokens, {r['parameters']:,} parameters",
        "",
        f"{'validation loss':<44}{harness.fmt(r['val_loss'], '.4f'):>12}   {r['val_blocks']:,} of "
        f"{r['val_blocks_total']:,} blocks ({val_note}); before training {r['val_loss_initial']:.4f}",
        f"{'  target <= ' + format(VAL_LOSS_TARGET, '.2f') + ' after 2000 iterations':<44}{goal:>12}",
        f"{'training tokens/s, ' + r['train_mode'] + ' (median step)':<44}"
        f"{harness.fmt(r['tokens_per_s']):>12}"
        f"   {r['ms_per_step']:.1f} ms/step; mean {harness.fmt(r['tokens_per_s_mean'])} tok/s; first "
        f"{r['warmup_steps_excluded']} steps excluded",
    ]
    if r["compile_s"] is not None:
        lines.append(f"{'  compile time (first steps over steady)':<44}{r['compile_s']:>11.1f}s")
    lines.append("")
    lines.append(
        f"{'engine overhead, same run':<32}{'fit() ms':>10}{'bare ms':>10}{'fit tok/s':>11}"
        f"{'bare tok/s':>12}{'ratio':>8}   (target <= {OVERHEAD_TARGET})"
    )
    for mode, f in r["overhead"].items():
        lines.append(
            f"{'  ' + mode + ', ' + str(r['rounds']) + ' rounds x ' + str(r['round_steps']) + ' steps':<32}"
            f"{f['fit_ms_per_step']:>10.1f}{f['bare_ms_per_step']:>10.1f}{harness.fmt(f['fit_tokens_per_s']):>11}"
            f"{harness.fmt(f['bare_tokens_per_s']):>12}{f['overhead_ratio']:>8.3f}   "
            f"rounds {', '.join(f'{x:.3f}' for x in f['overhead_ratio_rounds'])}; "
            f"loss gap to bare {f['first_round_loss_max_abs_diff']:.1e}"
        )
    lines.append(
        f"{'  same decay groups / schedule':<32}{r['param_groups_match']!s:>10}"
        f"{'max lr gap ' + format(r['lr_schedule_max_abs_diff'], '.1e'):>22}"
    )
    lines += [
        "",
        f"nanoGPT reference (published figure from NOTES.md, NOT measured in this run): "
        f"{ref['tokens_per_s']:,.0f} tok/s ({ref['ms_per_iter']:.0f} ms/iter), one thread, "
        f"val loss {ref['val_loss']} after {ref['iters']} iterations",
        f"  this run {r['train_mode']}: {harness.fmt(r['tokens_per_s'])} tok/s = "
        f"{r['vs_reference_tokens_per_s']:.2f}x the reference; goal >= 1.00x "
        f"({'met' if r['vs_reference_tokens_per_s'] >= 1 else 'not met'}), stretch >= {STRETCH:.2f}x "
        f"({'met' if r['vs_reference_tokens_per_s'] >= STRETCH else 'not met'})",
        f"wall time {r['wall_s']:.0f} s",
        "",
    ]
    print("\n".join(lines))


if __name__ == "__main__":
    sys.exit(main())

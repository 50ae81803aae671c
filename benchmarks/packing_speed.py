"""Padding-free packing against right padding, on the same chat-like variable-length data (CPU).

Times one epoch of forward + backward (collate included, no optimiser step) over every example, padded
in micro-batches of examples and packed into rows, alternating the two in rounds; prints tokens/s of
each, their padding fractions and the speed ratio, and checks that both computed the same summed loss.

    python benchmarks/packing_speed.py           # 256 examples, 5 rounds, one thread (~2 minutes)
    python benchmarks/packing_speed.py --quick   # 48 examples, 3 rounds, under a minute
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

# Llama at the baby-GPT scale of pretrain_shakespeare.py, with room for the packed rows' positions.
MODEL = {
    "vocab_size": 512,
    "hidden_size": 128,
    "intermediate_size": 344,
    "num_hidden_layers": 4,
    "num_attention_heads": 4,
    "num_key_value_heads": 4,
}


@dataclass
class Settings:
    examples: int
    rounds: int
    max_length: int
    padded_batch: int
    packed_batch: int
    threads: int
    seed: int
    quick: bool


def parse_args(argv: list[str] | None = None) -> Settings:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="48 examples and 3 rounds (under a minute)")
    parser.add_argument("--examples", type=int, default=None, help="examples per epoch (default 256)")
    parser.add_argument("--rounds", type=int, default=None, help="timed epochs of each (default 5)")
    parser.add_argument("--max-length", type=int, default=512, help="tokens per packed row")
    parser.add_argument("--padded-batch", type=int, default=8, help="examples per padded micro-batch")
    parser.add_argument("--packed-batch", type=int, default=2, help="rows per packed micro-batch")
    # two OpenMP threads stall whenever another process runs on this 2-core machine
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    return Settings(
        examples=args.examples or (48 if args.quick else 256),
        rounds=args.rounds or (3 if args.quick else 5),
        max_length=args.max_length,
        padded_batch=args.padded_batch,
        packed_batch=args.packed_batch,
        threads=args.threads,
        seed=args.seed,
        quick=args.quick,
    )


def chat_like_examples(n: int, vocab_size: int, seed: int) -> list[Any]:
    """Log-normal lengths (median 100) clipped to 20..400: many short turns, a long tail, as in chat data.

    Each example hides a prompt of 20-60% of its tokens from the loss, as SFT does.
    """
    import numpy as np

    from peaufine.data.batching import Example

    rng = np.random.default_rng(seed)
    lengths = np.clip(rng.lognormal(np.log(100), 0.7, size=n), 20, 400).astype(int)
    examples = []
    for length in lengths:
        prompt = int(length * rng.uniform(0.2, 0.6))
        ids = rng.integers(4, vocab_size, size=length).tolist()
        examples.append(Example(ids, [t >= prompt for t in range(length)]))
    return examples


def micro_batches(n: int, size: int, seed: int) -> list[list[int]]:
    """Consecutive slices of the engine's epoch order (the same shuffle fit() would draw)."""
    from peaufine.data.batching import epoch_order

    order = [int(i) for i in epoch_order(n, seed, 0)]
    return [order[k : k + size] for k in range(0, n, size)]


def make_epoch(model: Any, dataset: Any, batches: list[list[int]]) -> Callable[[], tuple[float, float]]:
    """One epoch of collate + forward + backward; returns (seconds, summed loss)."""
    from peaufine.methods.lm import NextTokenLoss

    objective = NextTokenLoss()

    def epoch() -> tuple[float, float]:
        total = 0.0
        start = time.perf_counter()
        for indices in batches:
            loss_sum = objective.loss_sum(model, dataset.collate(indices))
            loss_sum.backward()
            total += float(loss_sum.detach())
        elapsed = time.perf_counter() - start
        model.zero_grad(set_to_none=True)
        return elapsed, total

    return epoch


def slots(dataset: Any, batches: list[list[int]]) -> tuple[int, int]:
    """(real tokens, token slots the model computes) over the epoch."""
    real = computed = 0
    for indices in batches:
        batch = dataset.collate(indices)
        computed += batch["input_ids"].numel()
        mask = batch.get("attention_mask")
        if mask is not None:
            real += int(mask.sum())
        else:  # packed: the tail padding of a row is the run of positions after its last example
            real += sum(sum(len(dataset.examples[i].input_ids) for i in dataset.rows[r]) for r in indices)
    return real, computed


def main(argv: list[str] | None = None) -> dict[str, Any]:
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from peaufine.data.batching import PackedExamples, PaddedExamples

    s = parse_args(argv)
    torch.set_num_threads(s.threads)
    config = LlamaConfig(**MODEL, max_position_embeddings=s.max_length, attn_implementation="sdpa")
    torch.manual_seed(s.seed)
    model = LlamaForCausalLM(config).train()  # no dropout in Llama: both epochs see the same function

    examples = chat_like_examples(s.examples, MODEL["vocab_size"], s.seed)
    padded = PaddedExamples(examples, pad_id=0)
    packed = PackedExamples(examples, s.max_length, pad_id=0)
    padded_batches = micro_batches(len(padded), s.padded_batch, s.seed)
    packed_batches = micro_batches(len(packed), s.packed_batch, s.seed)
    real, padded_slots = slots(padded, padded_batches)
    real_packed, packed_slots = slots(packed, packed_batches)
    assert real == real_packed == sum(len(e.input_ids) for e in examples)

    lengths = sorted(len(e.input_ids) for e in examples)
    print(
        f"data: {len(examples)} examples, {real:,} tokens, lengths {lengths[0]}..{lengths[-1]} "
        f"(median {statistics.median(lengths):.0f}); model: Llama {MODEL['hidden_size']} wide, "
        f"{MODEL['num_hidden_layers']} layers, vocab {MODEL['vocab_size']}; {s.threads} thread(s)"
    )
    print(
        f"padded: {len(padded_batches)} micro-batches of {s.padded_batch} examples, "
        f"{padded_slots:,} slots, padding {1 - real / padded_slots:.1%}"
    )
    print(
        f"packed: {len(packed)} rows of <= {s.max_length} ({packed.packing_efficiency:.1%} full), "
        f"{len(packed_batches)} micro-batches of {s.packed_batch} rows, {packed_slots:,} slots, "
        f"padding {1 - real / packed_slots:.1%}"
    )

    contenders = {
        "padded": make_epoch(model, padded, padded_batches),
        "packed": make_epoch(model, packed, packed_batches),
    }
    # warm-up on one micro-batch of each: first-call allocations, kernel selection
    make_epoch(model, padded, padded_batches[:1])()
    make_epoch(model, packed, packed_batches[:1])()
    times: dict[str, list[float]] = {name: [] for name in contenders}
    losses: dict[str, float] = {}
    ratios = []
    for k in range(s.rounds):
        names = list(contenders) if k % 2 == 0 else list(reversed(contenders))
        for name in names:
            elapsed, losses[name] = contenders[name]()
            times[name].append(elapsed)
        ratios.append(times["padded"][-1] / times["packed"][-1])
        print(
            f"round {k + 1}/{s.rounds}: padded {times['padded'][-1]:.2f} s, "
            f"packed {times['packed'][-1]:.2f} s, ratio {ratios[-1]:.2f}"
        )

    medians = {name: statistics.median(t) for name, t in times.items()}
    rate = {name: real / medians[name] for name in contenders}
    speedup = statistics.median(ratios)
    loss_gap = abs(losses["packed"] - losses["padded"]) / abs(losses["padded"])
    print(f"padded: {rate['padded']:,.0f} tokens/s (median epoch {medians['padded']:.2f} s)")
    print(f"packed: {rate['packed']:,.0f} tokens/s (median epoch {medians['packed']:.2f} s)")
    verdict = "faster" if speedup > 1 else "NOT faster"
    print(
        f"packed / padded speed: {speedup:.2f}x (median over rounds), {verdict} than padding on the same data"
    )
    print(f"same work: summed loss of an epoch differs by {loss_gap:.1e} (relative)")
    result = {
        "examples": len(examples),
        "tokens": real,
        "max_length": s.max_length,
        "rows": len(packed),
        "packing_efficiency": packed.packing_efficiency,
        "padded_padding_fraction": 1 - real / padded_slots,
        "packed_padding_fraction": 1 - real / packed_slots,
        "padded_tokens_per_s": rate["padded"],
        "packed_tokens_per_s": rate["packed"],
        "speedup": speedup,
        "loss_rel_gap": loss_gap,
        "rounds": s.rounds,
        "threads": s.threads,
        "quick": s.quick,
    }
    print("RESULT " + json.dumps(result))
    return result


if __name__ == "__main__":
    main()

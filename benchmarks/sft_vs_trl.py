"""SFT on real chat data, on CPU: peaufine (packed, padding-free) against TRL 1.16's SFTTrainer (padded).

The same tiny Llama from the same saved weights, the same Alpaca conversations, completion-only loss,
the same optimiser and schedule for the same steps; each side trains in its own process (so its peak
memory is its own), alternating TRL, peaufine, TRL, peaufine... Prints real (non-padding) training
tokens/s of each, their ratio, peak memory, and the validation loss of both saved models computed by
one evaluator in this script; ends with one `RESULT {json}` line.

    python benchmarks/sft_vs_trl.py           # 200 steps, 3 repetitions, one thread (~27 minutes)
    python benchmarks/sft_vs_trl.py --quick   # 1,000 conversations, 40 steps, 1 repetition (~2.5 minutes)
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import harness

REPO = Path(__file__).resolve().parents[1]
DEFAULT_DATA = REPO / ".." / "shared" / "data" / "alpaca-5000" / "alpaca_5000.json"

VOCAB_SIZE = 2000
MAX_LENGTH = 256  # the 6% of conversations longer than this are dropped, from both sides alike
VALIDATION_FRACTION = 0.1
SPLIT_SEED = 0  # which conversations are held out: fixed, whatever the training seeds
ROWS_PER_STEP = 8  # peaufine's batch: packed rows of MAX_LENGTH; TRL's batch is sized to match
SPEEDUP_TARGET = 1.5


@dataclass
class Settings:
    steps: int
    warmup: int
    lr: float
    rows: int
    trl_batch: int | None  # None: the examples that `rows` packed rows hold on average
    reps: int
    train_examples: int | None  # None: every training conversation that fits
    val_examples: int | None
    skip: int  # first steps left out of tokens/s (allocation, first-call work)
    threads: int
    seed: int
    quick: bool
    weight_decay: float = 0.1
    betas: tuple[float, float] = (0.9, 0.95)
    eps: float = 1e-8
    grad_clip: float = 1.0
    min_lr_ratio: float = 0.1  # cosine to lr/10: peaufine's default floor, TRL's cosine_with_min_lr


def parse_args(argv: list[str] | None = None) -> tuple[Settings, Path, Path | None]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--quick", action="store_true", help="the first 1,000 training conversations, 40 steps, 1 repetition"
    )
    parser.add_argument("--steps", type=int, help="optimiser steps per run (default 200; quick 40)")
    parser.add_argument("--warmup", type=int, help="linear warmup steps (default 20; quick 5)")
    parser.add_argument("--lr", type=float, default=1e-3, help="peak learning rate (default 1e-3)")
    parser.add_argument(
        "--rows",
        type=int,
        default=ROWS_PER_STEP,
        help=f"peaufine's packed rows per step (default {ROWS_PER_STEP})",
    )
    parser.add_argument(
        "--trl-batch",
        type=int,
        help="TRL's examples per step (default: the examples --rows packed rows hold on average)",
    )
    parser.add_argument(
        "--reps", type=int, help="alternating repetitions, one seed each (default 3; quick 1)"
    )
    parser.add_argument(
        "--train-examples", type=int, help="the first N training conversations (default all; quick 1000)"
    )
    parser.add_argument("--val-examples", type=int, help="held-out conversations (default all; quick 100)")
    parser.add_argument("--threads", type=int, default=1, help="torch / OpenMP threads per run (default 1)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the first repetition (+1 for each next)")
    parser.add_argument(
        "--data", type=Path, default=DEFAULT_DATA, help="Alpaca JSON (instruction/input/output)"
    )
    parser.add_argument(
        "--workdir", type=Path, help="keep models and logs here (default: a temporary folder)"
    )
    args = parser.parse_args(argv)
    steps = args.steps or (40 if args.quick else 200)
    settings = Settings(
        steps=steps,
        warmup=args.warmup if args.warmup is not None else (5 if args.quick else 20),
        lr=args.lr,
        rows=args.rows,
        trl_batch=args.trl_batch,
        reps=args.reps or (1 if args.quick else 3),
        train_examples=args.train_examples or (1000 if args.quick else None),
        val_examples=args.val_examples or (100 if args.quick else None),
        skip=min(10, steps // 5),
        threads=args.threads,
        seed=args.seed,
        quick=args.quick,
    )
    if (
        steps < 10
        or settings.warmup >= steps
        or settings.rows < 1
        or settings.reps < 1
        or settings.threads < 1
    ):
        parser.error("need --steps >= 10, --warmup < --steps, --rows >= 1, --reps >= 1, --threads >= 1")
    return settings, args.data, args.workdir


# -- shared by both sides and the evaluator ----------------------------------------------------------
def read_conversations(path: Path) -> list[list[dict[str, str]]]:
    return [row["messages"] for row in harness.read_jsonl(path)]


def write_conversations(conversations: list[list[dict[str, str]]], path: Path) -> None:
    harness.write_jsonl([{"messages": m} for m in conversations], path)


def chat_example(tokenizer: Any, messages: list[dict[str, str]]) -> tuple[list[int], list[bool]]:
    """Ids of the rendered conversation and its assistant mask, straight from the chat template's
    {% generation %} markers: what TRL's assistant_only_loss and peaufine's completion labels both
    read, computed here without either of them."""
    out = tokenizer.apply_chat_template(
        messages, tokenize=True, return_dict=True, return_assistant_tokens_mask=True
    )
    return list(out["input_ids"]), [bool(m) for m in out["assistant_masks"]]


# -- the two sides, each run in its own process ---------------------------------------------------------
def train_peaufine(job: dict[str, Any]) -> dict[str, Any]:
    """peaufine's SFT path (stages/sft.py): completion-only labels, padding-free packing, fit()."""
    start = time.perf_counter()
    import torch

    from peaufine.data.batching import PackedExamples, global_batch
    from peaufine.data.records import ChatRecord
    from peaufine.data.tokenize import tokenize_records
    from peaufine.engine.fit import fit
    from peaufine.engine.optim import build_optimizer, lr_at
    from peaufine.engine.runtime import make_runtime
    from peaufine.methods.lm import NextTokenLoss
    from peaufine.models.build import load_pretrained, save_model
    from peaufine.models.tokenizer import load_tokenizer
    from peaufine.recipe import EvalBlock, TrainBlock

    torch.set_num_threads(job["threads"])
    tokenizer = load_tokenizer(job["init_dir"])
    path = Path(job["train_file"])
    records = [ChatRecord(m, f"{path}, record {i + 1}") for i, m in enumerate(read_conversations(path))]
    examples, _ = tokenize_records(
        tokenizer, records, max_length=job["max_length"], loss_on="completion", too_long="error"
    )
    train_set = PackedExamples(examples, job["max_length"], tokenizer.pad_token_id)
    train = TrainBlock(
        max_steps=job["steps"],
        batch_size=job["rows"],
        lr=job["lr"],
        min_lr=job["lr"] * job["min_lr_ratio"],
        schedule="cosine",
        warmup_steps=job["warmup"],
        weight_decay=job["weight_decay"],
        decay_embeddings=True,  # as transformers' Trainer: every matrix but norms decays
        betas=tuple(job["betas"]),
        eps=job["eps"],
        grad_clip=job["grad_clip"],
        precision="fp32",
        device="cpu",
        seed=job["seed"],
        log_every=harness.LOG_EVERY,  # TRL's logging_steps default
        checkpoint_every=job["steps"],
    )
    runtime = make_runtime(train)
    model = load_pretrained(Path(job["init_dir"])).to(runtime.device)
    evaluation = EvalBlock(restore_best=False, samples=0, answers=0)
    prepare_s = time.perf_counter() - start
    rss_before = harness.maxrss_mb()

    ends: list[float] = []
    train_start = time.perf_counter()
    result = fit(
        model,
        NextTokenLoss(),
        train_set,
        None,
        train,
        evaluation,
        runtime,
        run_dir=None,
        hooks=[lambda step: ends.append(time.perf_counter())],
    )
    rss_peak = harness.maxrss_mb()

    # The rows each step trained on: global_batch is a function of the data position alone.
    step_tokens, step_examples = [], []
    for step in range(train.max_steps):
        rows = global_batch(len(train_set), train.batch_size, train.seed, step * train.batch_size)
        members = [i for r in rows for i in train_set.rows[r]]
        step_examples.append(len(members))
        step_tokens.append(sum(len(examples[i].input_ids) for i in members))
    # the groups and settings of the optimizer fit() built (TrainingLoop calls build_optimizer)
    decayed, optimizer_settings = harness.optimizer_groups(build_optimizer(model, train), model)
    save_model(model, tokenizer, Path(job["out_dir"]))
    return {
        "side": "peaufine",
        "prepare_s": prepare_s,
        "step_ends": [t - train_start for t in ends],
        "step_tokens": step_tokens,
        "step_examples": step_examples,
        "lrs": [lr_at(s, train) for s in range(train.max_steps)],
        # token-weighted mean over each logging window (steps since the previous log)
        "train_log": [[row["step"], row["train_loss"]] for row in result.history if "train_loss" in row],
        "rss_before_train_mb": rss_before,
        "rss_peak_mb": rss_peak,
        "decayed": decayed,
        "optimizer": optimizer_settings,
        "examples": len(examples),
        # (ids, target positions) of every example in order, as TRL's side and the parent digest them
        "digest": harness.digest([(e.input_ids, harness.targets_of(e.target_mask)) for e in examples]),
        "packed_rows": len(train_set),
        "packing_efficiency": train_set.packing_efficiency,
        "threads": torch.get_num_threads(),
    }


def train_trl(job: dict[str, Any]) -> dict[str, Any]:
    """TRL's SFTTrainer as its docs set up conversational SFT: a `messages` dataset, the tokenizer's
    chat template with {% generation %} markers and assistant_only_loss=True, padded batches."""
    start = time.perf_counter()
    import torch
    from datasets import Dataset
    from transformers import AutoTokenizer
    from trl import SFTConfig, SFTTrainer

    torch.set_num_threads(job["threads"])
    tokenizer = AutoTokenizer.from_pretrained(job["init_dir"])
    dataset = Dataset.from_list([{"messages": m} for m in read_conversations(Path(job["train_file"]))])
    config = SFTConfig(
        output_dir=str(Path(job["out_dir"]).parent / "trl-output"),
        max_steps=job["steps"],
        per_device_train_batch_size=job["batch"],
        gradient_accumulation_steps=1,
        learning_rate=job["lr"],
        lr_scheduler_type="cosine_with_min_lr",
        lr_scheduler_kwargs={"min_lr_rate": job["min_lr_ratio"]},
        warmup_steps=job["warmup"],
        max_length=job["max_length"],
        assistant_only_loss=True,
        packing=False,
        padding_free=False,
        **harness.trl_training_args(job),
    )
    # wall time, TRL's own count of non-padding tokens and the lr of each optimiser step
    clock = harness.trl_step_clock()
    trainer = SFTTrainer(
        model=job["init_dir"],
        args=config,
        train_dataset=dataset,
        processing_class=tokenizer,
        callbacks=[clock],
    )
    clock.trainer = trainer
    prepare_s = time.perf_counter() - start
    rss_before = harness.maxrss_mb()
    train_start = time.perf_counter()
    trainer.train()
    rss_peak = harness.maxrss_mb()

    prepared = trainer.train_dataset
    examples = [
        (list(ids), [t for t in range(1, len(labels)) if labels[t] != -100])
        for ids, labels in zip(prepared["input_ids"], prepared["labels"], strict=True)
    ]
    decayed, optimizer_settings = harness.optimizer_groups(trainer.optimizer, trainer.model)
    n, batch = len(examples), job["batch"]
    per_epoch = math.ceil(n / batch)  # the DataLoader keeps the short last batch of each epoch
    step_examples = [
        batch if s % per_epoch < per_epoch - 1 else n - (per_epoch - 1) * batch for s in range(job["steps"])
    ]
    trainer.save_model(job["out_dir"])
    return {
        "side": "trl",
        "prepare_s": prepare_s,
        "step_ends": [t - train_start for t in clock.ends],
        "step_tokens": clock.step_tokens(),
        "step_examples": step_examples,
        "lrs": clock.lrs,
        # the mean of per-step losses over each logging window
        "train_log": [[row["step"], row["loss"]] for row in trainer.state.log_history if "loss" in row],
        "rss_before_train_mb": rss_before,
        "rss_peak_mb": rss_peak,
        "decayed": decayed,
        "optimizer": optimizer_settings,
        "examples": n,
        "digest": harness.digest(examples),
        "threads": torch.get_num_threads(),
    }


# -- the parent: data, model, alternation, evaluation ---------------------------------------------
@dataclass
class Prepared:
    init_dir: Path
    train_file: Path
    train: list[list[dict[str, str]]]
    val: list[tuple[list[int], list[bool]]]
    digest: str
    records: int
    anomalies: dict[str, int]
    dropped_train: int
    dropped_val: int
    parameters: int
    vocab: int
    packed_rows: int


def prepare(settings: Settings, data_path: Path, workdir: Path) -> Prepared:
    """The split, a BPE trained on the training side, the conversations that fit, and the initial model."""
    from peaufine.data.batching import pack_examples
    from peaufine.data.records import load_chat_records, split_records
    from peaufine.models.tokenizer import train_bpe

    # Two Alpaca records have an empty output: nothing to learn, skipped as the sft stage would with
    # data.anomalies.empty_assistant: skip.
    records, report = load_chat_records(data_path, format="alpaca", policy={"empty_assistant": "skip"})
    train_records, val_records = split_records(records, VALIDATION_FRACTION, SPLIT_SEED)
    if settings.train_examples is not None:
        train_records = train_records[: settings.train_examples]
    tokenizer = train_bpe((m["content"] for r in train_records for m in r.messages), VOCAB_SIZE)

    def fitting(conversations: list[Any], limit: int | None) -> tuple[list[Any], list[Any], int]:
        kept, tokenized = [], []
        for record in conversations:
            ids, mask = chat_example(tokenizer, record.messages)
            if len(ids) <= MAX_LENGTH:  # longer ones dropped, identically for both sides
                kept.append(record.messages)
                tokenized.append((ids, mask))
        dropped = len(conversations) - len(kept)
        return kept[:limit], tokenized[:limit], dropped

    train, train_tokenized, dropped_train = fitting(train_records, None)
    _, val, dropped_val = fitting(val_records, settings.val_examples)
    train_file = workdir / "train.jsonl"
    write_conversations(train, train_file)

    init_dir = workdir / "init"  # the tokenizer with its chat template too: both sides load it from here
    parameters = harness.save_tiny_llama(tokenizer, MAX_LENGTH, SPLIT_SEED, init_dir)
    return Prepared(
        init_dir=init_dir,
        train_file=train_file,
        train=train,
        val=val,
        digest=harness.digest([(ids, harness.targets_of(mask)) for ids, mask in train_tokenized]),
        records=len(records),
        anomalies={k: v for k, v in report.counts.items() if v},
        dropped_train=dropped_train,
        dropped_val=dropped_val,
        parameters=parameters,
        vocab=len(tokenizer),
        packed_rows=len(pack_examples([len(ids) for ids, _ in train_tokenized], MAX_LENGTH)),
    )


def completion_loss(model_dir: Path, examples: list[tuple[list[int], list[bool]]]) -> float:
    """Mean cross-entropy per assistant token of `examples` under the model saved in `model_dir`.

    The one evaluator for both sides: one conversation per forward pass, so neither side's batching
    (padding or packing) takes part; summed in float64 over every target, divided by their count.
    """
    import torch
    import torch.nn.functional as F
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    total, count = 0.0, 0
    with torch.no_grad():
        for ids, mask in examples:
            logits = model(input_ids=torch.tensor([ids]), use_cache=False).logits[0, :-1]
            keep = torch.tensor(mask[1:])
            targets = torch.tensor(ids[1:])[keep]
            total += float(F.cross_entropy(logits[keep].double(), targets, reduction="sum"))
            count += int(keep.sum())
    return total / count


def run_side(side: str, rep: int, settings: Settings, prepared: Prepared, batch: int, workdir: Path) -> dict:
    """`side`'s repetition `rep`, trained in a process of its own from the settings both sides share."""
    run_dir = workdir / f"{side}-{rep}"
    run_dir.mkdir(exist_ok=True)
    job = {
        "init_dir": str(prepared.init_dir),
        "train_file": str(prepared.train_file),
        "out_dir": str(run_dir / "model"),
        "steps": settings.steps,
        "warmup": settings.warmup,
        "lr": settings.lr,
        "min_lr_ratio": settings.min_lr_ratio,
        "weight_decay": settings.weight_decay,
        "betas": list(settings.betas),
        "eps": settings.eps,
        "grad_clip": settings.grad_clip,
        "max_length": MAX_LENGTH,
        "rows": settings.rows,
        "batch": batch,
        "seed": settings.seed + rep,
        "threads": settings.threads,
    }
    result = harness.run_worker(__file__, side, rep, job, run_dir)
    result["model_dir"] = job["out_dir"]
    return result


def steady_tokens_per_s(run: dict[str, Any], skip: int) -> float:
    """Real tokens of steps skip+1..N over the wall time from the end of step `skip` to the end of N."""
    return harness.steady_rate(run, skip)["tokens_per_s"]


def summarise(runs: list[dict[str, Any]], settings: Settings) -> dict[str, Any]:
    rates = [steady_tokens_per_s(r, settings.skip) for r in runs]
    losses = [r["val_loss"] for r in runs]
    return {
        "tokens_per_s": statistics.median(rates),
        "tokens_per_s_reps": rates,
        "val_loss": statistics.median(losses),
        "val_loss_reps": losses,
        # the training loss each side logged at its last step (over the last 10 steps), if it did
        "last_train_loss_reps": [harness.logged_loss(r, settings.steps) for r in runs],
        "rss_peak_mb": statistics.median(r["rss_peak_mb"] for r in runs),
        "rss_training_increase_mb": statistics.median(
            r["rss_peak_mb"] - r["rss_before_train_mb"] for r in runs
        ),
        "prepare_s": statistics.median(r["prepare_s"] for r in runs),
        "train_s": statistics.median(r["step_ends"][-1] for r in runs),
        "process_s": statistics.median(r["process_s"] for r in runs),
        "examples_per_step": statistics.mean(x for r in runs for x in r["step_examples"]),
        "tokens_per_step": statistics.mean(x for r in runs for x in r["step_tokens"]),
        "tokens_total": statistics.mean(sum(r["step_tokens"]) for r in runs),
        "optimizer": runs[0]["optimizer"],
        "threads": runs[0]["threads"],
        "steps_timed": len(runs[0]["step_ends"]),
    }


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["--worker"]:  # one side's training run, started by run_side
        return harness.serve_worker(Path(argv[1]), {"trl": train_trl, "peaufine": train_peaufine})
    settings, data_path, keep = parse_args(argv)
    if not data_path.is_file():
        print(
            f"SKIP: Alpaca not found at {data_path.resolve()}; pass --data PATH/alpaca_5000.json "
            "(tatsu-lab/stanford_alpaca, data/alpaca_5000.json)"
        )
        return 0
    if harness.skip_without_trl():
        return 0
    wall_start = time.perf_counter()
    harness.limit_threads(settings.threads)  # this process, which evaluates, and the runs it starts
    log = sys.stderr
    with harness.work_folder(keep, "peaufine-sft-vs-trl-") as workdir:
        prepared = prepare(settings, data_path, workdir)
        per_row = len(prepared.train) / prepared.packed_rows
        batch = settings.trl_batch or max(1, round(settings.rows * per_row))
        print(
            f"data: {prepared.records:,} Alpaca conversations ({prepared.anomalies} skipped); "
            f"{len(prepared.train):,} train / {len(prepared.val):,} held out of <= {MAX_LENGTH} tokens "
            f"({prepared.dropped_train} + {prepared.dropped_val} longer ones dropped); "
            f"{prepared.packed_rows:,} packed rows, {per_row:.2f} examples a row",
            file=log,
        )
        print(
            f"model: Llama {harness.TINY_LLAMA['num_hidden_layers']} x {harness.TINY_LLAMA['hidden_size']}, "
            f"{prepared.parameters:,} parameters, vocabulary {prepared.vocab}; batch: TRL {batch} examples, "
            f"peaufine {settings.rows} rows; {settings.steps} steps x {settings.reps} repetitions, "
            f"{settings.threads} thread(s)",
            file=log,
        )

        def progress(run: dict[str, Any]) -> str:
            return (
                f"{steady_tokens_per_s(run, settings.skip):,.0f} tokens/s, {run['step_ends'][-1]:.0f} s "
                f"training, peak {run['rss_peak_mb']:,.0f} MB"
            )

        runs = harness.alternate(
            settings.reps, lambda side, rep: run_side(side, rep, settings, prepared, batch, workdir), progress
        )

        initial = completion_loss(prepared.init_dir, prepared.val)
        for side in harness.SIDES:
            for run in runs[side]:
                run["val_loss"] = completion_loss(Path(run["model_dir"]), prepared.val)

    trl_runs, ours_runs = runs["trl"], runs["peaufine"]
    ratios = harness.paired_ratios(runs, lambda run: steady_tokens_per_s(run, settings.skip))
    gaps = harness.lr_gaps(runs)
    summary = {side: summarise(runs[side], settings) for side in harness.SIDES}
    delta = harness.paired_differences(runs, lambda run: run["val_loss"])
    report = {
        "quick": settings.quick,
        "settings": asdict(settings),
        "versions": harness.library_versions(),
        "data": {
            "records": prepared.records,
            "train_examples": len(prepared.train),
            "val_examples": len(prepared.val),
            "dropped_too_long": {"train": prepared.dropped_train, "val": prepared.dropped_val},
            "max_length": MAX_LENGTH,
            "packed_rows": prepared.packed_rows,
            "examples_per_row": per_row,
        },
        "model": {**harness.TINY_LLAMA, "parameters": prepared.parameters, "vocab_size": prepared.vocab},
        "batch": {"trl_examples": batch, "peaufine_rows": settings.rows},
        "trl": summary["trl"],
        "peaufine": summary["peaufine"],
        "speedup": statistics.median(ratios),
        "speedup_reps": ratios,
        "val_loss_initial": initial,
        "val_loss_delta": statistics.median(delta),  # peaufine - TRL; <= 0 is equal or better
        "val_loss_delta_reps": delta,
        "tokens_ratio": summary["peaufine"]["tokens_total"] / summary["trl"]["tokens_total"],
        "checks": {
            # the same conversations, token for token, with the same targets: parent, TRL and peaufine
            "same_examples": prepared.digest == trl_runs[0]["digest"] == ours_runs[0]["digest"],
            "examples": {
                "parent": len(prepared.train),
                "trl": trl_runs[0]["examples"],
                "peaufine": ours_runs[0]["examples"],
            },
            "same_decay_groups": trl_runs[0]["decayed"] == ours_runs[0]["decayed"],
            "decayed_parameters": len(ours_runs[0]["decayed"]),
            "lr_max_gap": max(gaps),
            "lr_max_gap_after_warmup": max(gaps[settings.warmup :]),
            "steps": {"trl": len(trl_runs[0]["step_ends"]), "peaufine": len(ours_runs[0]["step_ends"])},
        },
        "targets": {
            "speedup": SPEEDUP_TARGET,
            "speedup_met": statistics.median(ratios) >= SPEEDUP_TARGET,
            "val_loss_met": statistics.median(delta) <= 0,
        },
        "wall_s": time.perf_counter() - wall_start,
    }
    print_table(report)
    print("RESULT " + json.dumps(report))
    return 0


def print_table(r: dict[str, Any]) -> None:
    s, t, o, c = r["settings"], r["trl"], r["peaufine"], r["checks"]
    table = harness.ComparisonTable(t, o, label_width=42, ratio_width=10)
    lines = [
        "",
        f"SFT on Alpaca, CPU, {s['threads']} thread(s), torch {r['versions']['torch']}, transformers "
        f"{r['versions']['transformers']}, trl {r['versions']['trl']}: Llama {r['model']['parameters']:,} "
        f"parameters, {s['steps']} steps x {s['reps']} repetition(s), seeds from {s['seed']}",
        f"equal: initial weights; {r['data']['train_examples']:,} conversations of <= "
        f"{r['data']['max_length']} tokens (same ids and targets on both sides: {c['same_examples']}); "
        "assistant-only loss; fp32",
        f"       AdamW lr {s['lr']:g}, betas {tuple(s['betas'])}, eps {s['eps']:g}, weight decay "
        f"{s['weight_decay']} on every matrix (same groups: {c['same_decay_groups']}), clip {s['grad_clip']}",
        f"       {s['warmup']} warmup steps, cosine to lr x {s['min_lr_ratio']}, {s['steps']} steps "
        f"(largest lr gap {c['lr_max_gap']:.1e}, after warmup {c['lr_max_gap_after_warmup']:.1e})",
        f"batch: TRL {r['batch']['trl_examples']} examples padded to the longest; peaufine "
        f"{r['batch']['peaufine_rows']} packed rows of {r['data']['max_length']} "
        f"({r['data']['examples_per_row']:.2f} examples a row)",
        "",
        table.row("", "TRL SFTTrainer", "peaufine", "ratio"),
        table.figure(
            "training tokens/s (real, median of reps)", "tokens_per_s", ratio=f"{r['speedup']:.2f}x"
        ),
        table.row("  per repetition", "", "", ""),
    ]
    for k, (a, b) in enumerate(zip(t["tokens_per_s_reps"], o["tokens_per_s_reps"], strict=True)):
        lines.append(
            table.pair(f"    {k + 1} (seed {s['seed'] + k})", a, b, ratio=f"{r['speedup_reps'][k]:.2f}x")
        )
    lines += [
        table.figure("examples per step (mean)", "examples_per_step", ".2f"),
        table.figure("real tokens per step (mean)", "tokens_per_step", ",.1f", f"{r['tokens_ratio']:.3f}"),
        table.figure("training time (s, median)", "train_s", ".1f"),
        table.figure("setup: imports, data, model (s)", "prepare_s", ".1f"),
        table.figure("peak RSS (MB)", "rss_peak_mb"),
        table.figure("  of which during training (MB)", "rss_training_increase_mb"),
        table.figure("validation loss (same evaluator)", "val_loss", ".4f", f"{r['val_loss_delta']:+.4f}"),
    ]
    for k, (a, b) in enumerate(zip(t["val_loss_reps"], o["val_loss_reps"], strict=True)):
        if len(t["val_loss_reps"]) > 1:
            delta = f"{r['val_loss_delta_reps'][k]:+.4f}"
            lines.append(table.pair(f"    {k + 1} (seed {s['seed'] + k})", a, b, ".4f", delta))
    lines += [
        table.pair(
            "training loss, last 10 steps (own log)",
            t["last_train_loss_reps"][0],
            o["last_train_loss_reps"][0],
            ".4f",
        ),
        f"validation: {r['data']['val_examples']} held-out conversations, before training "
        f"{r['val_loss_initial']:.4f}",
        f"optimizer: TRL {t['optimizer']['class']} (fused {t['optimizer']['fused']}), peaufine "
        f"{o['optimizer']['class']} (fused {o['optimizer']['fused']})",
        f"target: >= {r['targets']['speedup']}x TRL's tokens/s "
        f"({'met' if r['targets']['speedup_met'] else 'NOT met'}) with equal or lower validation loss "
        f"({'met' if r['targets']['val_loss_met'] else 'NOT met'})",
        f"tokens/s leave out the first {s['skip']} steps of each run; wall time {r['wall_s']:.0f} s",
        "",
    ]
    print("\n".join(lines))


if __name__ == "__main__":
    sys.exit(main())

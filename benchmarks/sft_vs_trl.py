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
import hashlib
import importlib.util
import json
import math
import os
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
DEFAULT_DATA = REPO / ".." / "shared" / "data" / "alpaca-5000" / "alpaca_5000.json"

# Llama at the baby-GPT scale of the other benchmarks; the vocabulary is a BPE trained on the data.
MODEL = {
    "hidden_size": 128,
    "intermediate_size": 344,
    "num_hidden_layers": 4,
    "num_attention_heads": 4,
    "num_key_value_heads": 4,
    "tie_word_embeddings": True,
}
VOCAB_SIZE = 2000
MAX_LENGTH = 256  # the 6% of conversations longer than this are dropped, from both sides alike
VALIDATION_FRACTION = 0.1
SPLIT_SEED = 0  # which conversations are held out: fixed, whatever the training seeds
ROWS_PER_STEP = 8  # peaufine's batch: packed rows of MAX_LENGTH; TRL's batch is sized to match
SIDES = ("trl", "peaufine")  # the order each repetition runs them in: the peer first
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
    return [json.loads(line)["messages"] for line in path.read_text(encoding="utf-8").splitlines() if line]


def write_conversations(conversations: list[list[dict[str, str]]], path: Path) -> None:
    path.write_text("".join(json.dumps({"messages": m}) + "\n" for m in conversations), encoding="utf-8")


def chat_example(tokenizer: Any, messages: list[dict[str, str]]) -> tuple[list[int], list[bool]]:
    """Ids of the rendered conversation and its assistant mask, straight from the chat template's
    {% generation %} markers: what TRL's assistant_only_loss and peaufine's completion labels both
    read, computed here without either of them."""
    out = tokenizer.apply_chat_template(
        messages, tokenize=True, return_dict=True, return_assistant_tokens_mask=True
    )
    return list(out["input_ids"]), [bool(m) for m in out["assistant_masks"]]


def examples_digest(examples: list[tuple[list[int], list[int]]]) -> str:
    """sha256 of (ids, target positions) for every example in order; position 0 is never a target."""
    return hashlib.sha256(json.dumps(examples).encode()).hexdigest()


def targets_of(mask: list[bool]) -> list[int]:
    return [t for t in range(1, len(mask)) if mask[t]]


def maxrss_mb() -> float:
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def optimizer_groups(optimizer: Any, model: Any) -> tuple[list[str], dict[str, Any]]:
    """Names of the decayed parameters and the AdamW settings an optimizer holds, read the same way
    for both sides."""
    names = {id(p): n for n, p in model.named_parameters()}
    inner = getattr(optimizer, "optimizer", optimizer)  # accelerate wraps the torch optimizer
    decayed = sorted(names[id(p)] for g in inner.param_groups if g["weight_decay"] > 0 for p in g["params"])
    group = inner.param_groups[0]
    settings = {
        "class": type(inner).__name__,
        "betas": list(group["betas"]),
        "eps": group["eps"],
        "weight_decay": max(g["weight_decay"] for g in inner.param_groups),
        "fused": bool(group.get("fused")),
        "foreach": group.get("foreach"),
    }
    return decayed, settings


# -- the two sides, each run in its own process ---------------------------------------------------------
def train_peaufine(job: dict[str, Any]) -> dict[str, Any]:
    """peaufine's SFT path (stages/sft.py): completion-only labels, padding-free packing, fit()."""
    start = time.perf_counter()
    import torch

    from peaufine.data.batching import PackedExamples, global_batch
    from peaufine.data.formats import ChatRecord
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
        log_every=10,  # TRL's logging_steps default
        checkpoint_every=job["steps"],
    )
    runtime = make_runtime(train)
    model = load_pretrained(Path(job["init_dir"])).to(runtime.device)
    evaluation = EvalBlock(restore_best=False, samples=0, answers=0)
    prepare_s = time.perf_counter() - start
    rss_before = maxrss_mb()

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
    rss_peak = maxrss_mb()

    # The rows each step trained on: global_batch is a function of the data position alone.
    step_tokens, step_examples = [], []
    for step in range(train.max_steps):
        rows = global_batch(len(train_set), train.batch_size, train.seed, step * train.batch_size)
        members = [i for r in rows for i in train_set.rows[r]]
        step_examples.append(len(members))
        step_tokens.append(sum(len(examples[i].input_ids) for i in members))
    # the groups and settings of the optimizer fit() built (TrainingLoop calls build_optimizer)
    decayed, optimizer_settings = optimizer_groups(build_optimizer(model, train), model)
    save_model(model, tokenizer, Path(job["out_dir"]))
    digest = examples_digest([(e.input_ids, targets_of(e.target_mask)) for e in examples])
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
        "digest": digest,
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
    from transformers import AutoTokenizer, TrainerCallback
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
        weight_decay=job["weight_decay"],
        adam_beta1=job["betas"][0],
        adam_beta2=job["betas"][1],
        adam_epsilon=job["eps"],
        max_grad_norm=job["grad_clip"],
        max_length=job["max_length"],
        assistant_only_loss=True,
        packing=False,
        padding_free=False,
        # CPU settings (NOTES.md): TRL's configs turn bf16 and gradient checkpointing on by default.
        bf16=False,
        fp16=False,
        use_cpu=True,
        gradient_checkpointing=False,
        dataloader_pin_memory=False,
        report_to="none",
        save_strategy="no",
        eval_strategy="no",
        logging_steps=10,
        disable_tqdm=True,
        seed=job["seed"],
        model_init_kwargs={"dtype": "float32"},
    )

    class StepClock(TrainerCallback):
        """Wall time and real tokens at the end of each optimiser step, and the lr that step used."""

        def __init__(self) -> None:
            self.trainer: Any = None
            self.ends: list[float] = []
            self.tokens_seen: list[int] = []
            self.lrs: list[float] = []

        def on_optimizer_step(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            self.lrs.append(kwargs["optimizer"].param_groups[0]["lr"])  # before the scheduler steps

        def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            self.ends.append(time.perf_counter())
            # TRL's own count, the attention mask summed over each batch: non-padding tokens
            self.tokens_seen.append(int(self.trainer._total_train_tokens))

    clock = StepClock()
    trainer = SFTTrainer(
        model=job["init_dir"],
        args=config,
        train_dataset=dataset,
        processing_class=tokenizer,
        callbacks=[clock],
    )
    clock.trainer = trainer
    prepare_s = time.perf_counter() - start
    rss_before = maxrss_mb()
    train_start = time.perf_counter()
    trainer.train()
    rss_peak = maxrss_mb()

    prepared = trainer.train_dataset
    examples = [
        (list(ids), [t for t in range(1, len(labels)) if labels[t] != -100])
        for ids, labels in zip(prepared["input_ids"], prepared["labels"], strict=True)
    ]
    decayed, optimizer_settings = optimizer_groups(trainer.optimizer, trainer.model)
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
        "step_tokens": [b - a for a, b in zip([0, *clock.tokens_seen], clock.tokens_seen, strict=False)],
        "step_examples": step_examples,
        "lrs": clock.lrs,
        # the mean of per-step losses over each logging window
        "train_log": [[row["step"], row["loss"]] for row in trainer.state.log_history if "loss" in row],
        "rss_before_train_mb": rss_before,
        "rss_peak_mb": rss_peak,
        "decayed": decayed,
        "optimizer": optimizer_settings,
        "examples": n,
        "digest": examples_digest(examples),
        "threads": torch.get_num_threads(),
    }


def worker(job_path: Path) -> int:
    job = json.loads(job_path.read_text(encoding="utf-8"))
    result = (train_trl if job["side"] == "trl" else train_peaufine)(job)
    Path(job["result_file"]).write_text(json.dumps(result), encoding="utf-8")
    return 0


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
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from peaufine.data.batching import pack_examples
    from peaufine.data.formats import load_chat_records, split_records
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

    config = LlamaConfig(
        **MODEL,
        vocab_size=len(tokenizer),
        max_position_embeddings=MAX_LENGTH,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    torch.manual_seed(SPLIT_SEED)
    model = LlamaForCausalLM(config)
    init_dir = workdir / "init"
    model.save_pretrained(init_dir, safe_serialization=True)
    tokenizer.save_pretrained(init_dir)  # with the chat template: both sides load it from here
    return Prepared(
        init_dir=init_dir,
        train_file=train_file,
        train=train,
        val=val,
        digest=examples_digest([(ids, targets_of(mask)) for ids, mask in train_tokenized]),
        records=len(records),
        anomalies={k: v for k, v in report.counts.items() if v},
        dropped_train=dropped_train,
        dropped_val=dropped_val,
        parameters=sum(p.numel() for p in model.parameters()),
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
    run_dir = workdir / f"{side}-{rep}"
    run_dir.mkdir(exist_ok=True)
    job = {
        "side": side,
        "init_dir": str(prepared.init_dir),
        "train_file": str(prepared.train_file),
        "out_dir": str(run_dir / "model"),
        "result_file": str(run_dir / "result.json"),
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
    job_file = run_dir / "job.json"
    job_file.write_text(json.dumps(job), encoding="utf-8")
    threads = str(settings.threads)
    env = {
        **os.environ,
        "OMP_NUM_THREADS": threads,  # read once, when torch starts: it must be set before
        "MKL_NUM_THREADS": threads,
        "TOKENIZERS_PARALLELISM": "false",
        "HF_HUB_OFFLINE": "1",
        "HF_DATASETS_OFFLINE": "1",
        "HF_DATASETS_DISABLE_PROGRESS_BARS": "1",
    }
    log = run_dir / "log.txt"
    start = time.perf_counter()
    with log.open("w") as out:
        done = subprocess.run(
            [sys.executable, str(Path(__file__).resolve()), "--worker", str(job_file)],
            stdout=out,
            stderr=subprocess.STDOUT,
            env=env,
            cwd=REPO,
        )
    if done.returncode != 0:
        tail = log.read_text(encoding="utf-8", errors="replace")[-4000:]
        raise RuntimeError(f"the {side} run {rep + 1} failed (exit {done.returncode}):\n{tail}")
    result = json.loads(Path(job["result_file"]).read_text(encoding="utf-8"))
    result["process_s"] = time.perf_counter() - start
    result["model_dir"] = job["out_dir"]
    result["seed"] = job["seed"]
    return result


def steady_tokens_per_s(run: dict[str, Any], skip: int) -> float:
    """Real tokens of steps skip+1..N over the wall time from the end of step `skip` to the end of N."""
    ends, tokens = run["step_ends"], run["step_tokens"]
    return sum(tokens[skip:]) / (ends[-1] - ends[skip - 1])


def last_logged_loss(run: dict[str, Any], steps: int) -> float | None:
    """The training loss a side logged at its last step (the last 10 steps), if it logged there."""
    return next((loss for step, loss in run["train_log"] if step == steps), None)


def summarise(runs: list[dict[str, Any]], settings: Settings) -> dict[str, Any]:
    rates = [steady_tokens_per_s(r, settings.skip) for r in runs]
    losses = [r["val_loss"] for r in runs]
    return {
        "tokens_per_s": statistics.median(rates),
        "tokens_per_s_reps": rates,
        "val_loss": statistics.median(losses),
        "val_loss_reps": losses,
        "last_train_loss_reps": [last_logged_loss(r, settings.steps) for r in runs],
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


def fmt(value: float | None, spec: str = ",.0f") -> str:
    return "-" if value is None or not math.isfinite(value) else format(value, spec)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["--worker"]:  # one side's training run, started by run_side
        return worker(Path(argv[1]))
    settings, data_path, keep = parse_args(argv)
    if not data_path.is_file():
        print(
            f"SKIP: Alpaca not found at {data_path.resolve()}; pass --data PATH/alpaca_5000.json "
            "(tatsu-lab/stanford_alpaca, data/alpaca_5000.json)"
        )
        return 0
    if importlib.util.find_spec("trl") is None:
        print("SKIP: trl is not installed (pip install 'peaufine[bench]'); TRL is the peer of this benchmark")
        return 0
    os.environ["OMP_NUM_THREADS"] = str(settings.threads)  # before torch starts, for the evaluator
    os.environ["TOKENIZERS_PARALLELISM"] = "false"
    os.environ["HF_HUB_DISABLE_PROGRESS_BARS"] = "1"  # transformers' loading bars; inherited by the runs
    wall_start = time.perf_counter()
    log = sys.stderr

    import torch
    import transformers
    import trl

    torch.set_num_threads(settings.threads)
    with tempfile.TemporaryDirectory(prefix="peaufine-sft-vs-trl-") as tmp:
        workdir = keep or Path(tmp)
        workdir.mkdir(parents=True, exist_ok=True)
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
            f"model: Llama {MODEL['num_hidden_layers']} x {MODEL['hidden_size']}, {prepared.parameters:,} "
            f"parameters, vocabulary {prepared.vocab}; batch: TRL {batch} examples, peaufine {settings.rows} "
            f"rows; {settings.steps} steps x {settings.reps} repetitions, {settings.threads} thread(s)",
            file=log,
        )

        runs: dict[str, list[dict[str, Any]]] = {side: [] for side in SIDES}
        for rep in range(settings.reps):
            for side in SIDES:
                run = run_side(side, rep, settings, prepared, batch, workdir)
                runs[side].append(run)
                print(
                    f"  repetition {rep + 1}/{settings.reps} {side:>8}: "
                    f"{steady_tokens_per_s(run, settings.skip):,.0f} tokens/s, {run['step_ends'][-1]:.0f} s "
                    f"training, peak {run['rss_peak_mb']:,.0f} MB",
                    file=log,
                )

        initial = completion_loss(prepared.init_dir, prepared.val)
        for side in SIDES:
            for run in runs[side]:
                run["val_loss"] = completion_loss(Path(run["model_dir"]), prepared.val)

    trl_runs, ours_runs = runs["trl"], runs["peaufine"]
    ratios = [
        steady_tokens_per_s(o, settings.skip) / steady_tokens_per_s(t, settings.skip)
        for t, o in zip(trl_runs, ours_runs, strict=True)
    ]
    lr_gaps = [abs(a - b) for a, b in zip(trl_runs[0]["lrs"], ours_runs[0]["lrs"], strict=True)]
    summary = {side: summarise(runs[side], settings) for side in SIDES}
    delta = [o["val_loss"] - t["val_loss"] for t, o in zip(trl_runs, ours_runs, strict=True)]
    report = {
        "quick": settings.quick,
        "settings": asdict(settings),
        "versions": {
            "torch": torch.__version__,
            "transformers": transformers.__version__,
            "trl": trl.__version__,
        },
        "data": {
            "records": prepared.records,
            "train_examples": len(prepared.train),
            "val_examples": len(prepared.val),
            "dropped_too_long": {"train": prepared.dropped_train, "val": prepared.dropped_val},
            "max_length": MAX_LENGTH,
            "packed_rows": prepared.packed_rows,
            "examples_per_row": per_row,
        },
        "model": {**MODEL, "parameters": prepared.parameters, "vocab_size": prepared.vocab},
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
            "lr_max_gap": max(lr_gaps),
            "lr_max_gap_after_warmup": max(lr_gaps[settings.warmup :]),
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

    def row(name: str, a: str, b: str, ratio: str = "") -> str:
        return f"{name:<42}{a:>14}{b:>14}{ratio:>10}"

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
        row("", "TRL SFTTrainer", "peaufine", "ratio"),
        row(
            "training tokens/s (real, median of reps)",
            fmt(t["tokens_per_s"]),
            fmt(o["tokens_per_s"]),
            f"{r['speedup']:.2f}x",
        ),
        row("  per repetition", "", "", ""),
    ]
    for k, (a, b) in enumerate(zip(t["tokens_per_s_reps"], o["tokens_per_s_reps"], strict=True)):
        lines.append(
            row(f"    {k + 1} (seed {s['seed'] + k})", fmt(a), fmt(b), f"{r['speedup_reps'][k]:.2f}x")
        )
    lines += [
        row(
            "examples per step (mean)", fmt(t["examples_per_step"], ".2f"), fmt(o["examples_per_step"], ".2f")
        ),
        row(
            "real tokens per step (mean)",
            fmt(t["tokens_per_step"], ",.1f"),
            fmt(o["tokens_per_step"], ",.1f"),
            f"{r['tokens_ratio']:.3f}",
        ),
        row("training time (s, median)", fmt(t["train_s"], ".1f"), fmt(o["train_s"], ".1f")),
        row("setup: imports, data, model (s)", fmt(t["prepare_s"], ".1f"), fmt(o["prepare_s"], ".1f")),
        row("peak RSS (MB)", fmt(t["rss_peak_mb"]), fmt(o["rss_peak_mb"])),
        row(
            "  of which during training (MB)",
            fmt(t["rss_training_increase_mb"]),
            fmt(o["rss_training_increase_mb"]),
        ),
        row(
            "validation loss (same evaluator)",
            fmt(t["val_loss"], ".4f"),
            fmt(o["val_loss"], ".4f"),
            f"{r['val_loss_delta']:+.4f}",
        ),
    ]
    for k, (a, b) in enumerate(zip(t["val_loss_reps"], o["val_loss_reps"], strict=True)):
        if len(t["val_loss_reps"]) > 1:
            delta = f"{r['val_loss_delta_reps'][k]:+.4f}"
            lines.append(row(f"    {k + 1} (seed {s['seed'] + k})", fmt(a, ".4f"), fmt(b, ".4f"), delta))
    lines += [
        row(
            "training loss, last 10 steps (own log)",
            fmt(t["last_train_loss_reps"][0], ".4f"),
            fmt(o["last_train_loss_reps"][0], ".4f"),
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

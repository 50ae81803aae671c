"""DPO on real preference pairs, on CPU: peaufine's dpo stage against TRL 1.16's DPOTrainer.

The same tiny Llama from the same saved weights, the same Anthropic HH pairs token for token, in the same
batches and order, the sigmoid loss with the same beta, optimiser and schedule; both precompute the
reference log-probs once before training. Each side runs in its own process (so its peak memory is its
own), alternating TRL, peaufine, TRL, peaufine... Prints tokens/s of each (training alone, and with the
reference pass), their ratio, peak memory, and the held-out DPO loss and preference accuracy of both saved
policies computed by one evaluator in this script; ends with one `RESULT {json}` line.

    python benchmarks/dpo_vs_trl.py           # 100 steps, 3 repetitions, one thread
    python benchmarks/dpo_vs_trl.py --quick   # 200 training pairs, 20 steps, 1 repetition (CI smoke test)
"""

from __future__ import annotations

import argparse
import gzip
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
DEFAULT_DATA = REPO / ".." / "shared" / "data" / "hh-rlhf" / "harmless-base-test.jsonl.gz"

VOCAB_SIZE = 2000
MAX_LENGTH = 256  # pairs with a longer chosen or rejected sequence are dropped, from both sides alike
SPLIT_SEED = 0  # which pairs are held out and the initial weights: fixed, whatever the training seeds
SPEEDUP_TARGET = 1.3


@dataclass
class Settings:
    steps: int
    lr: float
    batch: int  # pairs per optimiser step (2 x batch sequences)
    beta: float
    reps: int
    train_pairs: int | None  # None: every training pair that fits
    val_pairs: int
    skip: int  # first steps left out of the steady-state rate (allocation, first-call work)
    threads: int
    seed: int
    quick: bool
    reference_batch: int = 32  # pairs per forward of the reference pass: peaufine's default, set on TRL
    betas: tuple[float, float] = (0.9, 0.999)  # TRL's (transformers') AdamW defaults, set on peaufine
    eps: float = 1e-8
    weight_decay: float = 0.0
    grad_clip: float = 1.0


def parse_args(argv: list[str] | None = None) -> tuple[Settings, Path, Path | None]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="200 training pairs, 20 steps, 1 repetition")
    parser.add_argument("--steps", type=int, help="optimiser steps per run (default 100; quick 20)")
    parser.add_argument("--lr", type=float, default=5e-4, help="peak learning rate, linear decay to 0")
    parser.add_argument("--batch", type=int, default=8, help="preference pairs per step (default 8)")
    parser.add_argument("--beta", type=float, default=0.1, help="DPO's beta (default 0.1)")
    parser.add_argument(
        "--reps", type=int, help="alternating repetitions, one seed each (default 3; quick 1)"
    )
    parser.add_argument(
        "--train-pairs", type=int, help="the first N training pairs that fit (default all; quick 200)"
    )
    parser.add_argument("--val-pairs", type=int, help="held-out pairs (default 300; quick 100)")
    parser.add_argument("--threads", type=int, default=1, help="torch / OpenMP threads per run (default 1)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the first repetition (+1 for each next)")
    parser.add_argument(
        "--data", type=Path, default=DEFAULT_DATA, help="Anthropic HH pairs (.jsonl or .jsonl.gz)"
    )
    parser.add_argument(
        "--workdir", type=Path, help="keep models and logs here (default: a temporary folder)"
    )
    args = parser.parse_args(argv)
    steps = args.steps or (20 if args.quick else 100)
    settings = Settings(
        steps=steps,
        lr=args.lr,
        batch=args.batch,
        beta=args.beta,
        reps=args.reps or (1 if args.quick else 3),
        train_pairs=args.train_pairs or (200 if args.quick else None),
        val_pairs=args.val_pairs or (100 if args.quick else 300),
        skip=min(10, steps // 5),
        threads=args.threads,
        seed=args.seed,
        quick=args.quick,
    )
    if (
        steps < 10
        or settings.batch < 1
        or settings.reps < 1
        or settings.threads < 1
        or settings.val_pairs < 1
    ):
        parser.error("need --steps >= 10, --batch >= 1, --reps >= 1, --threads >= 1, --val-pairs >= 1")
    return settings, args.data, args.workdir


# -- shared by the parent and the workers -----------------------------------------------------------
def pair_row(chosen: tuple[list[int], list[int]], rejected: tuple[list[int], list[int]]) -> list[Any]:
    """One trained pair as the digests compare it: (ids, target positions) of chosen, then rejected."""
    return [chosen[0], chosen[1], rejected[0], rejected[1]]


# -- the two sides, each run in its own process ---------------------------------------------------------
def train_peaufine(job: dict[str, Any]) -> dict[str, Any]:
    """`peaufine dpo` as a user runs it: run_dpo on an HH file, reference log-probs precomputed."""
    start = time.perf_counter()
    import torch

    import peaufine.engine.fit as engine_fit
    import peaufine.stages.dpo as dpo_stage
    from peaufine.data.batching import global_batch
    from peaufine.data.preference_data import read_pairs
    from peaufine.engine.optim import lr_at
    from peaufine.engine.track import Tracker
    from peaufine.recipe import validate_recipe

    torch.set_num_threads(job["threads"])
    steps, batch = job["steps"], job["batch"]
    recipe = validate_recipe(
        {
            "stage": "dpo",
            "model": {"source": job["init_dir"]},
            "data": {
                "source": job["peaufine_file"],
                "format": "hh",
                "validation_fraction": 0.0,  # held-out pairs are the benchmark's, scored by its evaluator
                "max_length": job["max_length"],
                # every pair fits (the parent dropped the others): an error here means the sides differ
                "anomalies": {"prompt_mismatch": "skip", "empty_text": "skip", "too_long": "error"},
            },
            "method": {"dpo": {"loss": "sigmoid", "beta": job["beta"], "reference": "precomputed"}},
            "train": {
                "max_steps": steps,
                "batch_size": batch,
                "lr": job["lr"],
                "schedule": "linear",  # TRL's default: linear to 0, no warmup
                "min_lr": 0.0,
                "warmup_steps": 0,
                "weight_decay": job["weight_decay"],
                "betas": job["betas"],
                "eps": job["eps"],
                "grad_clip": job["grad_clip"],
                "precision": "fp32",
                "device": "cpu",
                "seed": job["seed"],
                "log_every": harness.LOG_EVERY,
                "checkpoint_every": steps,
            },
            "eval": {
                "every": steps,
                "batch_size": job["reference_batch"],  # the reference pass's batch
                "samples": 0,
                "answers": 0,
                "restore_best": False,
            },
        }
    )

    # Clocks around what run_dpo calls, without changing it: the reference pass and the training loop.
    marks: dict[str, Any] = {}
    precompute = dpo_stage.precompute_reference  # looked up in the stage, which calls it

    def timed_reference(model: Any, datasets: Any, *args: Any, **kwargs: Any) -> None:
        marks["reference_start"] = time.perf_counter()
        precompute(model, datasets, *args, **kwargs)
        marks["reference_s"] = time.perf_counter() - marks["reference_start"]
        marks["reference_pairs"] = sum(len(d) for d in datasets)

    run_loop = engine_fit.TrainingLoop.run

    def timed_run(loop: Any, hooks: Any) -> Any:
        marks["train_start"] = time.perf_counter()
        marks["rss_before_train_mb"] = harness.maxrss_mb()
        marks["optimizer"] = harness.optimizer_groups(loop.optimizer, loop.model)
        return run_loop(loop, hooks)

    dpo_stage.precompute_reference = timed_reference
    engine_fit.TrainingLoop.run = timed_run
    ends: list[float] = []
    out = Path(job["run_dir"])
    result = dpo_stage.run_dpo(
        recipe, out, tracker=Tracker(enabled=False), hooks=[lambda step: ends.append(time.perf_counter())]
    )
    rss_peak = harness.maxrss_mb()

    # The pairs each step drew (global_batch is a function of the data position alone), as tokenized by
    # the stage into its run folder.
    pairs = read_pairs(out / "data" / "train.pairs.jsonl")
    step_tokens, stream = [], []
    for step in range(steps):
        drawn = [pairs[i] for i in global_batch(len(pairs), batch, job["seed"], step * batch)]
        step_tokens.append(sum(len(p.chosen.input_ids) + len(p.rejected.input_ids) for p in drawn))
        stream += [
            pair_row(
                (p.chosen.input_ids, harness.targets_of(p.chosen.target_mask)),
                (p.rejected.input_ids, harness.targets_of(p.rejected.target_mask)),
            )
            for p in drawn
        ]
    train_start = marks["train_start"]
    decayed, optimizer_settings = marks["optimizer"]
    return {
        "side": "peaufine",
        "setup_s": marks["reference_start"] - start,
        "reference_s": marks["reference_s"],
        "reference_pairs": marks["reference_pairs"],
        "step_ends": [t - train_start for t in ends],
        "step_tokens": step_tokens,
        "lrs": [lr_at(s, recipe.train) for s in range(steps)],
        # mean over each logging window of the per-pair losses (every pair weighs 1)
        "train_log": [[row["step"], row["train_loss"]] for row in result.fit.history if "train_loss" in row],
        "rss_before_train_mb": marks["rss_before_train_mb"],
        "rss_peak_mb": rss_peak,
        "decayed": decayed,
        "optimizer": optimizer_settings,
        "pairs": len(pairs),
        "stream_digest": harness.digest(stream),
        "model_dir": str(out / "model"),
        "threads": torch.get_num_threads(),
    }


def train_trl(job: dict[str, Any]) -> dict[str, Any]:
    """TRL's DPOTrainer on explicit prompt / chosen / rejected text, reference log-probs precomputed."""
    start = time.perf_counter()
    import torch
    from datasets import Dataset
    from transformers import AutoTokenizer
    from trl import DPOConfig, DPOTrainer

    torch.set_num_threads(job["threads"])
    steps, batch = job["steps"], job["batch"]
    tokenizer = AutoTokenizer.from_pretrained(job["init_dir"])
    # In peaufine's order for this seed; read sequentially, so both sides train the same pairs in each step.
    dataset = Dataset.from_list(harness.read_jsonl(Path(job["trl_file"])))
    config = DPOConfig(
        output_dir=str(Path(job["run_dir"]) / "trl-output"),
        max_steps=steps,
        per_device_train_batch_size=batch,
        gradient_accumulation_steps=1,
        learning_rate=job["lr"],
        lr_scheduler_type="linear",
        warmup_steps=0,
        beta=job["beta"],
        loss_type=["sigmoid"],
        max_length=job["max_length"],  # every pair fits: nothing is truncated
        precompute_ref_log_probs=True,
        precompute_ref_batch_size=job["reference_batch"],
        train_sampling_strategy="sequential",
        **harness.trl_training_args(job),
    )

    marks: dict[str, Any] = {}
    precompute = DPOTrainer._precompute_ref_logps

    def timed_reference(trainer: Any, data: Any, name: str, batch_size: int) -> Any:
        marks["reference_start"] = time.perf_counter()
        out = precompute(trainer, data, name, batch_size)
        marks["reference_s"] = time.perf_counter() - marks["reference_start"]
        marks["reference_pairs"] = len(data)
        return out

    DPOTrainer._precompute_ref_logps = timed_reference

    # the start of training, then wall time, TRL's own count of non-padding tokens (the attention masks
    # of chosen and rejected rows summed) and the lr of each optimiser step
    clock = harness.trl_step_clock()
    trainer = DPOTrainer(
        model=job["init_dir"],
        args=config,
        train_dataset=dataset,
        processing_class=tokenizer,
        callbacks=[clock],
    )
    clock.trainer = trainer
    trainer.train()
    rss_peak = harness.maxrss_mb()

    prepared = trainer.train_dataset
    stream = []
    for row in prepared.select(range(min(len(prepared), steps * batch))):
        prompt = list(row["prompt_ids"])
        chosen, rejected = prompt + list(row["chosen_ids"]), prompt + list(row["rejected_ids"])
        stream.append(
            pair_row(
                (chosen, list(range(len(prompt), len(chosen)))),
                (rejected, list(range(len(prompt), len(rejected)))),
            )
        )
    decayed, optimizer_settings = harness.optimizer_groups(trainer.optimizer, trainer.model)
    model_dir = Path(job["run_dir"]) / "model"
    trainer.save_model(str(model_dir))
    return {
        "side": "trl",
        "setup_s": marks["reference_start"] - start,
        "reference_s": marks["reference_s"],
        "reference_pairs": marks["reference_pairs"],
        "step_ends": [t - clock.start for t in clock.ends],
        "step_tokens": clock.step_tokens(),
        "lrs": clock.lrs,
        # the mean of per-step losses over each logging window
        "train_log": [[row["step"], row["loss"]] for row in trainer.state.log_history if "loss" in row],
        "rss_before_train_mb": clock.rss_before,
        "rss_peak_mb": rss_peak,
        "decayed": decayed,
        "optimizer": optimizer_settings,
        "pairs": len(prepared),
        "stream_digest": harness.digest(stream),
        "model_dir": str(model_dir),
        "threads": torch.get_num_threads(),
    }


# -- the parent: data, model, alternation, evaluation ---------------------------------------------
@dataclass
class Pair:
    prompt: str
    chosen: str
    rejected: str
    chosen_ids: list[int]
    chosen_targets: list[int]
    rejected_ids: list[int]
    rejected_targets: list[int]

    def row(self) -> list[Any]:
        return pair_row((self.chosen_ids, self.chosen_targets), (self.rejected_ids, self.rejected_targets))


@dataclass
class Prepared:
    init_dir: Path
    peaufine_file: Path
    train: list[Pair]
    val: list[Pair]
    records: int
    anomalies: dict[str, int]
    dropped: dict[str, int]
    parameters: int
    vocab: int


def encode(tokenizer: Any, prompt: str, response: str) -> tuple[list[int], list[int]] | None:
    """BOS + prompt + response + EOS and the response's positions, as this script renders a pair; None
    when TRL's joint tokenization of prompt + response (+ EOS text) would split it differently."""
    prompt_ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
    response_ids = tokenizer(response, add_special_tokens=False)["input_ids"]
    ids = [tokenizer.bos_token_id, *prompt_ids, *response_ids, tokenizer.eos_token_id]
    joint = tokenizer(prompt + response + tokenizer.eos_token)["input_ids"]  # BOS from the post-processor
    if joint != ids or tokenizer(prompt)["input_ids"] != ids[: 1 + len(prompt_ids)]:
        return None
    return ids, list(range(1 + len(prompt_ids), len(ids)))


def prepare(settings: Settings, data_path: Path, workdir: Path) -> Prepared:
    """Held-out pairs, a BPE trained on the training side, the pairs that fit, and the initial model."""
    import numpy as np
    from tokenizers import processors

    from peaufine.data.preferences import load_preference_pairs
    from peaufine.models.tokenizer import BOS, train_bpe

    raw = workdir / "hh.jsonl"  # decompressed in the work folder, never in the repository
    opener = gzip.open if data_path.suffix == ".gz" else open
    with opener(data_path, "rt", encoding="utf-8") as f:
        raw.write_text(f.read(), encoding="utf-8")
    # The dpo stage's reading of HH (prompt up to the last "Assistant:"), with the recipe's anomaly policy.
    pairs, report = load_preference_pairs(
        raw, format="hh", policy={"prompt_mismatch": "skip", "empty_text": "skip"}
    )
    order = np.random.default_rng(SPLIT_SEED).permutation(len(pairs)).tolist()
    pool = max(500, 2 * settings.val_pairs)  # ~68% of HH pairs fit in 256 tokens
    held_out = [pairs[i] for i in order[:pool]]
    held_indices, held_prompts = set(order[:pool]), {p.prompt for p in held_out}
    training = [p for i, p in enumerate(pairs) if i not in held_indices and p.prompt not in held_prompts]

    tokenizer = train_bpe((t for p in training for t in (p.prompt, p.chosen, p.rejected)), VOCAB_SIZE)
    # BOS first, as causal LMs read text: peaufine puts it before the prompt itself, TRL's tokenizer call
    # adds it through this post-processor.
    tokenizer._tokenizer.post_processor = processors.TemplateProcessing(
        single=f"{BOS} $A", pair=f"{BOS} $A $B", special_tokens=[(BOS, tokenizer.bos_token_id)]
    )
    dropped = {"too_long": 0, "tokenized_differently": 0}

    def fitting(candidates: list[Any], limit: int | None) -> list[Pair]:
        kept = []
        for p in candidates:
            chosen, rejected = encode(tokenizer, p.prompt, p.chosen), encode(tokenizer, p.prompt, p.rejected)
            if chosen is None or rejected is None:
                dropped["tokenized_differently"] += 1
            elif max(len(chosen[0]), len(rejected[0])) > MAX_LENGTH:
                dropped["too_long"] += 1
            else:
                kept.append(Pair(p.prompt, p.chosen, p.rejected, *chosen, *rejected))
            if limit is not None and len(kept) == limit:
                break
        return kept

    val = fitting(held_out, settings.val_pairs)
    train = fitting(training, settings.train_pairs)
    if len(val) < settings.val_pairs:
        raise SystemExit(f"only {len(val)} held-out pairs fit in {MAX_LENGTH} tokens; lower --val-pairs")
    if settings.steps * settings.batch > len(train):
        raise SystemExit(
            f"{settings.steps} steps x {settings.batch} pairs need {settings.steps * settings.batch} "
            f"training pairs, one epoch, and {len(train)} fit: lower --steps or raise --train-pairs"
        )
    peaufine_file = workdir / "train-hh.jsonl"  # whole dialogues again: the stage's hh format reads them
    harness.write_jsonl(
        [{"chosen": p.prompt + p.chosen, "rejected": p.prompt + p.rejected} for p in train], peaufine_file
    )

    init_dir = workdir / "init"
    parameters = harness.save_tiny_llama(tokenizer, MAX_LENGTH, SPLIT_SEED, init_dir)
    return Prepared(
        init_dir=init_dir,
        peaufine_file=peaufine_file,
        train=train,
        val=val,
        records=len(pairs) + sum(report.counts.values()),
        anomalies={k: v for k, v in report.counts.items() if v},
        dropped=dropped,
        parameters=parameters,
        vocab=len(tokenizer),
    )


def trl_file(prepared: Prepared, seed: int, workdir: Path) -> tuple[Path, list[int]]:
    """A file of the training pairs in peaufine's first-epoch order for `seed` (TRL reads them in
    sequence, so its steps draw what peaufine's draw), and that order."""
    from peaufine.data.batching import epoch_order

    order = epoch_order(len(prepared.train), seed, 0).tolist()
    path = workdir / f"train-trl-seed{seed}.jsonl"
    harness.write_jsonl(
        [
            {"prompt": p.prompt, "chosen": p.chosen, "rejected": p.rejected}
            for p in (prepared.train[i] for i in order)
        ],
        path,
    )
    return path, order


def response_logps(model_dir: Path, pairs: list[Pair]) -> list[tuple[float, float]]:
    """Summed log-probabilities of the chosen and the rejected response of each pair under the model in
    `model_dir`: one sequence per forward pass (no padding), summed in float64."""
    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()

    def summed(ids: list[int], targets: list[int]) -> float:
        logits = model(input_ids=torch.tensor([ids]), use_cache=False).logits[0].double()
        logps = torch.log_softmax(logits[:-1], dim=-1)
        positions = torch.tensor(targets)
        return float(logps[positions - 1, torch.tensor(ids)[positions]].sum())

    with torch.no_grad():
        return [
            (summed(p.chosen_ids, p.chosen_targets), summed(p.rejected_ids, p.rejected_targets))
            for p in pairs
        ]


def dpo_scores(policy: list[tuple[float, float]], reference: list[tuple[float, float]], beta: float) -> dict:
    """The held-out DPO loss of a policy against the reference, and how often its implicit reward
    beta * (log pi - log ref) ranks the chosen response first (a tie counts one half)."""
    losses, wins, margins = [], 0.0, []
    for (pc, pr), (rc, rr) in zip(policy, reference, strict=True):
        margin = beta * ((pc - rc) - (pr - rr))
        losses.append(math.log1p(math.exp(-margin)) if margin > -30 else -margin)  # -log sigmoid(margin)
        wins += 1.0 if margin > 0 else 0.5 if margin == 0 else 0.0
        margins.append(margin)
    n = len(losses)
    return {"loss": sum(losses) / n, "accuracy": wins / n, "margin": sum(margins) / n}


def run_side(side: str, rep: int, settings: Settings, prepared: Prepared, files: dict, workdir: Path) -> dict:
    """`side`'s repetition `rep`, trained in a process of its own from the settings both sides share."""
    run_dir = workdir / f"{side}-{rep}"
    run_dir.mkdir(exist_ok=True)
    seed = settings.seed + rep
    job = {
        "init_dir": str(prepared.init_dir),
        "peaufine_file": str(prepared.peaufine_file),
        "trl_file": str(files[seed]),
        "run_dir": str(run_dir / "run"),
        "steps": settings.steps,
        "batch": settings.batch,
        "lr": settings.lr,
        "beta": settings.beta,
        "betas": list(settings.betas),
        "eps": settings.eps,
        "weight_decay": settings.weight_decay,
        "grad_clip": settings.grad_clip,
        "max_length": MAX_LENGTH,
        "reference_batch": settings.reference_batch,
        "seed": seed,
        "threads": settings.threads,
    }
    return harness.run_worker(__file__, side, rep, job, run_dir)


def training_rate(run: dict[str, Any], skip: int) -> dict[str, float]:
    """Tokens/s and steps/s of steps skip+1 .. N-1, from the end of step `skip` to the end of step N-1:
    the last step is left out because peaufine writes its final checkpoint inside it."""
    return harness.steady_rate(run, skip, drop_last=True)


def with_reference_rate(run: dict[str, Any]) -> float:
    """Tokens of every step over the reference pass plus the whole training loop (first step included)."""
    return sum(run["step_tokens"]) / (run["reference_s"] + run["step_ends"][-1])


def reference_rate(run: dict[str, Any], pairs: list[Pair]) -> float:
    return sum(len(p.chosen_ids) + len(p.rejected_ids) for p in pairs) / run["reference_s"]


def summarise(runs: list[dict[str, Any]], settings: Settings, train: list[Pair]) -> dict[str, Any]:
    steady = [training_rate(r, settings.skip) for r in runs]
    return {
        "tokens_per_s": statistics.median(s["tokens_per_s"] for s in steady),
        "tokens_per_s_reps": [s["tokens_per_s"] for s in steady],
        "steps_per_s": statistics.median(s["steps_per_s"] for s in steady),
        "with_reference_tokens_per_s": statistics.median(with_reference_rate(r) for r in runs),
        "with_reference_tokens_per_s_reps": [with_reference_rate(r) for r in runs],
        "reference_s": statistics.median(r["reference_s"] for r in runs),
        "reference_tokens_per_s": statistics.median(reference_rate(r, train) for r in runs),
        "train_s": statistics.median(r["step_ends"][-1] for r in runs),
        "setup_s": statistics.median(r["setup_s"] for r in runs),
        "process_s": statistics.median(r["process_s"] for r in runs),
        "rss_peak_mb": statistics.median(r["rss_peak_mb"] for r in runs),
        "rss_before_train_mb": statistics.median(r["rss_before_train_mb"] for r in runs),
        "tokens_per_step": statistics.mean(x for r in runs for x in r["step_tokens"]),
        "val_loss": statistics.median(r["eval"]["loss"] for r in runs),
        "val_loss_reps": [r["eval"]["loss"] for r in runs],
        "val_accuracy": statistics.median(r["eval"]["accuracy"] for r in runs),
        "val_accuracy_reps": [r["eval"]["accuracy"] for r in runs],
        "val_margin": statistics.median(r["eval"]["margin"] for r in runs),
        "last_train_loss_reps": [harness.logged_loss(r, settings.steps) for r in runs],
        "optimizer": runs[0]["optimizer"],
        "threads": runs[0]["threads"],
    }


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["--worker"]:  # one side's training run, started by run_side
        return harness.serve_worker(Path(argv[1]), {"trl": train_trl, "peaufine": train_peaufine})
    settings, data_path, keep = parse_args(argv)
    if not data_path.is_file():
        print(
            f"SKIP: HH pairs not found at {data_path.resolve()}; pass --data "
            "PATH/harmless-base-test.jsonl.gz (anthropics/hh-rlhf, harmless-base/test.jsonl.gz)"
        )
        return 0
    if harness.skip_without_trl():
        return 0
    wall_start = time.perf_counter()
    harness.limit_threads(settings.threads)  # this process, which evaluates, and the runs it starts
    log = sys.stderr
    with harness.work_folder(keep, "peaufine-dpo-vs-trl-") as workdir:
        prepared = prepare(settings, data_path, workdir)
        seeds = [settings.seed + rep for rep in range(settings.reps)]
        files, expected = {}, {}
        for seed in seeds:
            files[seed], order = trl_file(prepared, seed, workdir)
            expected[seed] = harness.digest(
                [prepared.train[i].row() for i in order[: settings.steps * settings.batch]]
            )
        print(
            f"data: {prepared.records:,} HH records ({prepared.anomalies} skipped); {len(prepared.train):,} "
            f"train / {len(prepared.val):,} held-out pairs of <= {MAX_LENGTH} tokens "
            f"(dropped {prepared.dropped}); "
            f"model: Llama {harness.TINY_LLAMA['num_hidden_layers']} x {harness.TINY_LLAMA['hidden_size']}, "
            f"{prepared.parameters:,} parameters; {settings.steps} steps x {settings.batch} pairs x "
            f"{settings.reps} repetitions, {settings.threads} thread(s)",
            file=log,
        )

        def progress(run: dict[str, Any]) -> str:
            return (
                f"{training_rate(run, settings.skip)['tokens_per_s']:,.0f} tokens/s training, "
                f"{with_reference_rate(run):,.0f} with the reference pass ({run['reference_s']:.1f} s), "
                f"peak {run['rss_peak_mb']:,.0f} MB"
            )

        runs = harness.alternate(
            settings.reps, lambda side, rep: run_side(side, rep, settings, prepared, files, workdir), progress
        )
        reference = response_logps(prepared.init_dir, prepared.val)
        initial = dpo_scores(reference, reference, settings.beta)
        for side in harness.SIDES:
            for run in runs[side]:
                run["eval"] = dpo_scores(
                    response_logps(Path(run["model_dir"]), prepared.val), reference, settings.beta
                )

    trl_runs, ours_runs = runs["trl"], runs["peaufine"]
    summary = {side: summarise(runs[side], settings, prepared.train) for side in harness.SIDES}
    ratios = harness.paired_ratios(runs, lambda run: training_rate(run, settings.skip)["tokens_per_s"])
    ratios_with_reference = harness.paired_ratios(runs, with_reference_rate)
    loss_delta = harness.paired_differences(runs, lambda run: run["eval"]["loss"])
    accuracy_delta = harness.paired_differences(runs, lambda run: run["eval"]["accuracy"])
    # Same batches in the same order: the logged training losses should agree. peaufine also logs step 1
    # (its first window is steps 2..10), so windows are compared from the second on.
    windows = [s for s in range(2 * harness.LOG_EVERY, settings.steps + 1, harness.LOG_EVERY)]
    loss_gaps = [
        abs(harness.logged_loss(t, s) - harness.logged_loss(o, s))
        for t, o in zip(trl_runs, ours_runs, strict=True)
        for s in windows
        if harness.logged_loss(t, s) is not None and harness.logged_loss(o, s) is not None
    ]
    report = {
        "quick": settings.quick,
        "settings": asdict(settings),
        "versions": harness.library_versions(),
        "data": {
            "records": prepared.records,
            "anomalies_skipped": prepared.anomalies,
            "train_pairs": len(prepared.train),
            "val_pairs": len(prepared.val),
            "dropped": prepared.dropped,
            "max_length": MAX_LENGTH,
        },
        "model": {**harness.TINY_LLAMA, "parameters": prepared.parameters, "vocab_size": prepared.vocab},
        "trl": summary["trl"],
        "peaufine": summary["peaufine"],
        "speedup": statistics.median(ratios),
        "speedup_reps": ratios,
        "speedup_with_reference": statistics.median(ratios_with_reference),
        "speedup_with_reference_reps": ratios_with_reference,
        "val_initial": initial,
        "val_loss_delta": statistics.median(loss_delta),  # peaufine - TRL
        "val_loss_delta_reps": loss_delta,
        "val_accuracy_delta": statistics.median(accuracy_delta),
        "val_accuracy_delta_reps": accuracy_delta,
        "checks": {
            # the pairs each step trains, token for token: as this script, TRL and peaufine tokenized them
            "same_stream": all(
                expected[t["seed"]] == t["stream_digest"] == o["stream_digest"]
                for t, o in zip(trl_runs, ours_runs, strict=True)
            ),
            "pairs": {
                "parent": len(prepared.train),
                "trl": trl_runs[0]["pairs"],
                "peaufine": ours_runs[0]["pairs"],
            },
            "reference_pairs": {
                "trl": trl_runs[0]["reference_pairs"],
                "peaufine": ours_runs[0]["reference_pairs"],
            },
            "same_decay_groups": trl_runs[0]["decayed"] == ours_runs[0]["decayed"],
            "lr_max_gap": max(harness.lr_gaps(runs)),
            "train_loss_windows": windows,
            "train_loss_max_gap": max(loss_gaps) if loss_gaps else None,
            "steps": {"trl": len(trl_runs[0]["step_ends"]), "peaufine": len(ours_runs[0]["step_ends"])},
            "tokens_per_step_ratio": summary["peaufine"]["tokens_per_step"]
            / summary["trl"]["tokens_per_step"],
        },
        "targets": {
            "speedup": SPEEDUP_TARGET,
            "speedup_with_reference_met": statistics.median(ratios_with_reference) >= SPEEDUP_TARGET,
            "speedup_training_met": statistics.median(ratios) >= SPEEDUP_TARGET,
        },
        "wall_s": time.perf_counter() - wall_start,
    }
    print_table(report)
    print("RESULT " + json.dumps(report))
    return 0


def print_table(r: dict[str, Any]) -> None:
    s, t, o, c = r["settings"], r["trl"], r["peaufine"], r["checks"]
    table = harness.ComparisonTable(t, o)
    lines = [
        "",
        f"DPO on Anthropic HH, CPU, {s['threads']} thread(s), torch {r['versions']['torch']}, transformers "
        f"{r['versions']['transformers']}, trl {r['versions']['trl']}: Llama {r['model']['parameters']:,} "
        f"parameters, {s['steps']} steps x {s['batch']} pairs x {s['reps']} repetition(s), "
        f"seeds from {s['seed']}",
        f"equal: initial weights; {r['data']['train_pairs']:,} pairs of <= {r['data']['max_length']} tokens, "
        f"the same pairs in every step (token for token: {c['same_stream']}); sigmoid loss, "
        f"beta {s['beta']}; fp32",
        f"       reference log-probs precomputed once ({c['reference_pairs']['trl']:,} / "
        f"{c['reference_pairs']['peaufine']:,} pairs, {s['reference_batch']} a batch); AdamW lr {s['lr']:g} "
        f"linear to 0, betas {tuple(s['betas'])}, eps {s['eps']:g}, weight decay {s['weight_decay']}, clip "
        f"{s['grad_clip']} (largest lr gap {c['lr_max_gap']:.1e})",
        "",
        table.row("", "TRL DPOTrainer", "peaufine", "ratio"),
        table.figure(
            "tokens/s, reference pass + training (median)",
            "with_reference_tokens_per_s",
            ratio=f"{r['speedup_with_reference']:.2f}x",
        ),
        table.figure("training tokens/s, steady (median)", "tokens_per_s", ratio=f"{r['speedup']:.2f}x"),
    ]
    for k, (a, b) in enumerate(zip(t["tokens_per_s_reps"], o["tokens_per_s_reps"], strict=True)):
        lines.append(
            table.pair(f"    {k + 1} (seed {s['seed'] + k})", a, b, ratio=f"{r['speedup_reps'][k]:.2f}x")
        )
    lines += [
        table.figure("training steps/s, steady", "steps_per_s", ".2f"),
        table.figure("reference pass (s)", "reference_s", ".1f"),
        table.figure("reference pass tokens/s", "reference_tokens_per_s"),
        table.figure("training loop (s)", "train_s", ".1f"),
        table.figure("setup: imports, data, model (s)", "setup_s", ".1f"),
        table.figure("real tokens per step (mean)", "tokens_per_step", ",.1f"),
        table.figure("peak RSS (MB)", "rss_peak_mb"),
        table.figure("  before the training loop (MB)", "rss_before_train_mb"),
        table.figure("held-out DPO loss (same evaluator)", "val_loss", ".4f", f"{r['val_loss_delta']:+.4f}"),
        table.figure("held-out reward accuracy", "val_accuracy", ".3f", f"{r['val_accuracy_delta']:+.3f}"),
    ]
    if s["reps"] > 1:
        for k in range(s["reps"]):
            lines.append(
                table.row(
                    f"    {k + 1} (seed {s['seed'] + k}) loss / accuracy",
                    f"{t['val_loss_reps'][k]:.4f} {t['val_accuracy_reps'][k]:.3f}",
                    f"{o['val_loss_reps'][k]:.4f} {o['val_accuracy_reps'][k]:.3f}",
                )
            )
    gap = c["train_loss_max_gap"]
    lines += [
        table.pair(
            "training loss, last window (own log, seed 0)",
            t["last_train_loss_reps"][0],
            o["last_train_loss_reps"][0],
            ".4f",
        ),
        f"held-out: {r['data']['val_pairs']} pairs, before training loss {r['val_initial']['loss']:.4f} "
        f"(ln 2), accuracy {r['val_initial']['accuracy']:.3f} (all ties); largest gap between the two sides' "
        f"logged training losses (windows of {harness.LOG_EVERY} steps from step {2 * harness.LOG_EVERY}): "
        + (f"{gap:.4f}" if gap is not None else "-"),
        f"optimizer: TRL {t['optimizer']['class']} (fused {t['optimizer']['fused']}), peaufine "
        f"{o['optimizer']['class']} (fused {o['optimizer']['fused']}, foreach {o['optimizer']['foreach']})",
        f"target: >= {r['targets']['speedup']}x TRL's tokens/s with the reference pass "
        f"({'met' if r['targets']['speedup_with_reference_met'] else 'NOT met'}); training alone "
        f"({'met' if r['targets']['speedup_training_met'] else 'NOT met'})",
        f"steady rates leave out the first {s['skip']} steps and the last; wall time {r['wall_s']:.0f} s",
        "",
    ]
    print("\n".join(lines))


if __name__ == "__main__":
    sys.exit(main())

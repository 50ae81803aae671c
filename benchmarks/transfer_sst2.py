"""Transfer on real data, on CPU: pretrained MiniLM fine-tuned on SST-2 against the same architecture
trained from scratch with the same steps of the same batches, both by peaufine's fit().

Prints the accuracy on all 872 SST-2 dev sentences for every seed, the means and the difference
(target: fine-tuned ahead by >= 10 points), and ends with one `RESULT {json}` line.

    python benchmarks/transfer_sst2.py           # 3 seeds, 3,000 training sentences, 150 steps
    python benchmarks/transfer_sst2.py --quick   # 1 seed, 1,000 sentences, 30 steps (CI)
"""

from __future__ import annotations

import argparse
import csv
import json
import statistics
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import harness

REPO = Path(__file__).resolve().parents[1]
DEFAULT_DATA = REPO / ".." / "shared" / "data" / "sst2"

MAX_LENGTH = 64
BATCH_SIZE = 32
MICRO_BATCH = 8  # each micro-batch is padded to its own longest sentence: ~15% less padding work
EVAL_BATCH = 64
ARMS = ("fine-tuned", "scratch")
SAMPLE_SEED = 0  # which training sentences: one fixed sample for every seed and both arms
# Fine-tuning moves pretrained weights a little; a random network must move them a lot in the same
# number of steps, so the scratch arm gets its own, larger peak rate (same steps, data, schedule shape).
LR_PRETRAINED = 2e-4
LR_SCRATCH = 5e-4
TARGET_POINTS = 10.0


@dataclass
class Settings:
    seeds: list[int]
    train_sentences: int
    steps: int
    lr_pretrained: float
    lr_scratch: float
    threads: int
    quick: bool
    arms: tuple[str, ...] = ARMS


def parse_args(argv: list[str] | None = None) -> tuple[Settings, Path]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="1 seed, 1,000 sentences, 30 steps")
    parser.add_argument("--seeds", type=int, nargs="+", help="training seeds (default 0 1 2; quick 0)")
    parser.add_argument("--train-sentences", type=int, help="training sample size (default 3000; quick 1000)")
    parser.add_argument(
        "--steps", type=int, help="optimiser steps of batch 32 per arm (default 150; quick 30)"
    )
    parser.add_argument("--lr-pretrained", type=float, default=LR_PRETRAINED)
    parser.add_argument("--lr-scratch", type=float, default=LR_SCRATCH)
    parser.add_argument("--arms", nargs="+", choices=ARMS, default=list(ARMS), help="both by default")
    parser.add_argument("--threads", type=int, default=1, help="torch / OpenMP threads (default 1)")
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA, help="folder with train.tsv and dev.tsv")
    args = parser.parse_args(argv)
    settings = Settings(
        seeds=args.seeds or ([0] if args.quick else [0, 1, 2]),
        train_sentences=args.train_sentences or (1000 if args.quick else 3000),
        steps=args.steps or (30 if args.quick else 150),
        lr_pretrained=args.lr_pretrained,
        lr_scratch=args.lr_scratch,
        threads=args.threads,
        quick=args.quick,
        arms=tuple(a for a in ARMS if a in args.arms),
    )
    if settings.steps < 10 or settings.train_sentences < BATCH_SIZE or settings.threads < 1:
        parser.error(f"need --steps >= 10, --train-sentences >= {BATCH_SIZE}, --threads >= 1")
    return settings, args.data


def read_sst2(path: Path) -> tuple[list[str], list[int]]:
    """A GLUE-style SST-2 TSV, columns found by the header (`sentence` / `content` and `label`).

    No CSV quoting: SST-2 sentences hold bare quote characters that a quoting reader would swallow.
    """
    with path.open(encoding="utf-8", newline="") as handle:
        reader = csv.DictReader(handle, delimiter="\t", quoting=csv.QUOTE_NONE)
        header = reader.fieldnames or []
        text_field = next((f for f in ("sentence", "content") if f in header), None)
        if text_field is None or "label" not in header:
            raise SystemExit(f"{path}: expected a header with 'label' and 'sentence', got {header}")
        texts, labels = [], []
        for row in reader:
            texts.append(row[text_field])
            labels.append(int(row["label"]))
    return texts, labels


def train_block(settings: Settings, lr: float, seed: int) -> Any:
    """The classify stage's defaults (recipe.STAGE_DEFAULTS), with this benchmark's steps and rates."""
    from peaufine.recipe import validate_recipe

    train = validate_recipe({"stage": "classify"}).train
    return train.model_copy(
        update={
            "max_steps": settings.steps,
            "batch_size": BATCH_SIZE,
            "micro_batch_size": MICRO_BATCH,
            "lr": lr,
            "warmup_steps": max(1, settings.steps // 10),
            "schedule": "linear",
            "min_lr": 0.0,
            "device": "cpu",
            "precision": "fp32",
            "seed": seed,
            "log_every": max(1, settings.steps // 5),
        }
    )


def train_and_score(
    arm: str, source: Path, train_set: Any, dev_set: Any, settings: Settings, seed: int, runtime: Any
) -> dict[str, Any]:
    """Build the arm's model, run fit() (no run dir, no validation: dev is the test set here, and
    picking a checkpoint on it would flatter both arms), then score every dev sentence."""
    from peaufine.engine.fit import fit
    from peaufine.evaluate.classification import classification_metrics
    from peaufine.methods.classify import ClassificationLoss
    from peaufine.models.build import build_classifier
    from peaufine.recipe import EvalBlock

    scratch = arm == "scratch"
    lr = settings.lr_scratch if scratch else settings.lr_pretrained
    train = train_block(settings, lr, seed)
    model = build_classifier(source, num_labels=2, from_scratch=scratch, seed=seed)
    start = time.perf_counter()
    result = fit(
        model, ClassificationLoss(2), train_set, None, train, EvalBlock(samples=0), runtime, run_dir=None
    )
    train_s = time.perf_counter() - start
    start = time.perf_counter()
    scores = classification_metrics(model, dev_set, runtime, EVAL_BATCH)
    return {
        "arm": arm,
        "seed": seed,
        "lr": lr,
        "parameters": sum(p.numel() for p in model.parameters()),
        "accuracy": scores["accuracy"],
        "macro_f1": scores["macro_f1"],
        "recall_negative": scores["per_class"][0]["recall"],
        "recall_positive": scores["per_class"][1]["recall"],
        "final_train_loss": result.final_train_loss,
        "train_loss_curve": [(row["step"], row["train_loss"]) for row in result.history],
        "train_s": train_s,
        "eval_s": time.perf_counter() - start,
    }


def main(argv: list[str] | None = None) -> int:
    settings, data_dir = parse_args(argv)
    train_path, dev_path = data_dir / "train.tsv", data_dir / "dev.tsv"
    if not (train_path.is_file() and dev_path.is_file()):
        print(f"SKIP: SST-2 not found at {data_dir.resolve()} (train.tsv and dev.tsv); pass --data DIR")
        return 0
    wall_start = time.perf_counter()
    harness.limit_threads(settings.threads)

    import numpy as np
    import torch
    import transformers
    from transformers import AutoTokenizer

    from peaufine.data.batching import LabelledTexts
    from peaufine.engine.runtime import make_runtime

    log = sys.stderr
    source = harness.pretrained_minilm()
    if source is None:
        return 0

    train_texts, train_labels = read_sst2(train_path)
    dev_texts, dev_labels = read_sst2(dev_path)
    sample = np.random.default_rng(SAMPLE_SEED).choice(
        len(train_texts), settings.train_sentences, replace=False
    )
    tokenizer = AutoTokenizer.from_pretrained(source)
    train_set = LabelledTexts.from_texts(
        tokenizer, [train_texts[i] for i in sample], [train_labels[i] for i in sample], MAX_LENGTH
    )
    dev_set = LabelledTexts.from_texts(tokenizer, dev_texts, dev_labels, MAX_LENGTH)
    runtime = make_runtime(train_block(settings, settings.lr_pretrained, 0))
    majority = max(dev_labels.count(0), dev_labels.count(1)) / len(dev_labels)
    train_positive = sum(train_set.labels) / len(train_set)
    print(
        f"SST-2: {len(train_set):,} of {len(train_texts):,} training sentences (sample seed {SAMPLE_SEED}, "
        f"{train_positive:.1%} positive), {len(dev_set)} dev sentences; MiniLM-L6 from {source}",
        file=log,
    )
    print(
        f"threads: {torch.get_num_threads()}; {settings.steps} steps x batch {BATCH_SIZE} = "
        f"{settings.steps * BATCH_SIZE / len(train_set):.1f} epochs; max_length {MAX_LENGTH}; "
        f"lr pretrained {settings.lr_pretrained:g}, scratch {settings.lr_scratch:g}",
        file=log,
    )

    runs: list[dict[str, Any]] = []
    for seed in settings.seeds:
        for arm in settings.arms:
            run = train_and_score(arm, source, train_set, dev_set, settings, seed, runtime)
            runs.append(run)
            print(
                f"  seed {seed} {arm:<10} dev accuracy {run['accuracy']:.4f}  train loss "
                f"{run['final_train_loss']:.3f}  {run['train_s']:.0f} s train, {run['eval_s']:.0f} s eval",
                file=log,
            )

    tuned = [r["accuracy"] for r in runs if r["arm"] == "fine-tuned"]
    scratch = [r["accuracy"] for r in runs if r["arm"] == "scratch"]
    both = bool(tuned and scratch)
    gap_points = 100 * (statistics.mean(tuned) - statistics.mean(scratch)) if both else None
    report = {
        "quick": settings.quick,
        "settings": asdict(settings),
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "train_sentences": len(train_set),
        "dev_sentences": len(dev_set),
        "parameters": runs[0]["parameters"],
        "max_length": MAX_LENGTH,
        "batch_size": BATCH_SIZE,
        "micro_batch_size": MICRO_BATCH,
        "dev_majority_accuracy": majority,
        "fine_tuned_accuracy": tuned,
        "scratch_accuracy": scratch,
        "fine_tuned_mean": statistics.mean(tuned) if tuned else None,
        "scratch_mean": statistics.mean(scratch) if scratch else None,
        "difference_points": gap_points,
        "target_points": TARGET_POINTS,
        "target_met": gap_points >= TARGET_POINTS if gap_points is not None else None,
        "runs": runs,
        "ms_per_step_median": 1000 * statistics.median(r["train_s"] / settings.steps for r in runs),
        "wall_s": time.perf_counter() - wall_start,
    }
    print_table(report)
    print("RESULT " + json.dumps(report))
    return 0


def cell(value: float | None, spec: str, width: int = 12) -> str:
    """A right-aligned table cell; differences (spec with a sign) are in accuracy points."""
    text = "-" if value is None else format(value, spec) + ("p" if spec.startswith("+") else "")
    return format(text, f">{width}")


def print_table(r: dict[str, Any]) -> None:
    s = r["settings"]
    lines = [
        "",
        f"SST-2 dev accuracy ({r['dev_sentences']} sentences), MiniLM-L6 ({r['parameters']:,} parameters), "
        f"{r['train_sentences']:,} training sentences, {s['steps']} steps x batch {r['batch_size']}, "
        f"{r['threads']} thread(s)",
        f"{'seed':<8}{'fine-tuned':>12}{'scratch':>12}{'difference':>12}",
    ]
    for k, seed in enumerate(s["seeds"]):
        tuned = r["fine_tuned_accuracy"][k] if r["fine_tuned_accuracy"] else None
        scratch = r["scratch_accuracy"][k] if r["scratch_accuracy"] else None
        gap = 100 * (tuned - scratch) if tuned is not None and scratch is not None else None
        lines.append(f"{seed:<8}{cell(tuned, '.4f')}{cell(scratch, '.4f')}{cell(gap, '+.1f')}")
    verdict = {True: "met", False: "NOT met", None: "needs both arms"}[r["target_met"]]
    lines += [
        f"{'mean':<8}{cell(r['fine_tuned_mean'], '.4f')}{cell(r['scratch_mean'], '.4f')}"
        f"{cell(r['difference_points'], '+.1f')}"
        f"   (target >= +{r['target_points']:.0f} points: {verdict})",
        f"peak lr: fine-tuned {s['lr_pretrained']:g}, scratch {s['lr_scratch']:g} (same steps, batches, "
        f"warmup and linear decay); always-majority baseline {r['dev_majority_accuracy']:.4f}",
        f"median {r['ms_per_step_median']:.0f} ms per training step; wall time {r['wall_s']:.0f} s",
        "",
    ]
    print("\n".join(lines))


if __name__ == "__main__":
    sys.exit(main())

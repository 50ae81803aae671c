"""A finished stage's results: one typed object per stage, written to eval.json by one function and read
back by one; the numbers a run reports by name (what a search optimises and cross-validation averages)."""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

from peaufine.errors import RunDirError
from peaufine.nested import flatten_numbers
from peaufine.rundir import RunDir, read_metrics, write_json


class _Absent:
    """A key the run did not write (unlike a key written as null); false, like a missing table."""

    def __repr__(self) -> str:
        return "ABSENT"

    def __bool__(self) -> bool:
        return False


ABSENT: Any = _Absent()
Block = dict[str, Any]  # a nested table of eval.json, as the stage's evaluation wrote it


@dataclass
class StageResults:
    """What a stage's run reports: each field is a key of its eval.json (absent keys stay absent, so
    eval.json keeps exactly its keys); keys no class names yet are kept in `extra` and written back."""

    stage: ClassVar[str] = ""
    # (label, run_metrics name) of the numbers the stage leads with: pipeline.json and the
    # cross-validation table show these; cv.json and the reports have all the others
    headline_names: ClassVar[tuple[tuple[str, str], ...]] = ()

    steps: int | None = ABSENT
    extra: Block = field(default_factory=dict)

    @classmethod
    def from_json(cls, data: Block) -> StageResults:
        """The results of `data` (an eval.json's contents), as the class of its stage."""
        names = {f.name for f in dataclasses.fields(cls)} - {"extra"}
        known = {k: v for k, v in data.items() if k in names}
        extra = {k: v for k, v in data.items() if k not in names and k != "stage"}
        return cls(**known, extra=extra)

    def to_json(self) -> Block:
        """eval.json's contents: the stage, then every key the run wrote."""
        data: Block = {"stage": self.stage}
        for f in dataclasses.fields(self):
            if f.name != "extra" and getattr(self, f.name) is not ABSENT:
                data[f.name] = getattr(self, f.name)
        data.update(self.extra)
        return data

    def numbers(self) -> dict[str, float]:
        """Every finite number of the results under its dotted path (`forgetting.relative_change`)."""
        return flatten_numbers(self.to_json())

    def headlines(self, numbers: dict[str, float] | None = None) -> dict[str, float]:
        """The stage's headline numbers by label, from `numbers` (default: the results' own)."""
        found = self.numbers() if numbers is None else numbers
        return {label: found[name] for label, name in self.headline_names if name in found}


@dataclass
class PretrainResults(StageResults):
    stage: ClassVar[str] = "pretrain"
    headline_names: ClassVar[tuple[tuple[str, str], ...]] = (
        ("validation loss", "val_loss"),
        ("fact recall", "fact_recall.accuracy"),
    )
    tokens_seen: int = ABSENT
    train_seconds: float = ABSENT
    final_train_loss: float | None = ABSENT
    val_loss: float | None = ABSENT
    val_perplexity: float | None = ABSENT
    best_step: int | None = ABSENT
    best_val_loss: float | None = ABSENT
    stopped_early: bool = ABSENT
    restored_best: bool = ABSENT
    anomalies: dict[str, int] = ABSENT
    train_tokens: int = ABSENT
    val_tokens: int = ABSENT
    samples: list[dict[str, str]] = ABSENT
    fact_recall: Block = ABSENT  # accuracy, correct, total, by_relation, misses


@dataclass
class SftResults(StageResults):
    stage: ClassVar[str] = "sft"
    headline_names: ClassVar[tuple[tuple[str, str], ...]] = (
        ("validation loss", "val_loss"),
        ("exact match (validation)", "answers.validation.after.exact_match"),
        ("exact match (held-out facts)", "answers.heldout.after.exact_match"),
        ("forgetting (relative)", "forgetting.relative_change"),
    )
    tokens_seen: int = ABSENT
    train_seconds: float = ABSENT
    anomalies: dict[str, int] = ABSENT
    examples: Block = ABSENT  # per split: examples, truncated, skipped_too_long, target_tokens
    default_chat_template: bool = ABSENT
    general_source: str | None = ABSENT
    overfitting: Block = ABSENT  # evaluate.overfitting's report and verdict
    task_val_loss: Block = ABSENT  # before, after
    forgetting: Block = ABSENT  # evaluate.forgetting's report and verdict
    answers: Block = ABSENT  # per split: before / after (/ from_scratch) exact match and F1
    transfer: Block = ABSENT  # task_val_loss per model, verdict
    leakage: Block = ABSENT  # per evaluation split: evaluate.leakage's exact and 8-gram overlap with train


@dataclass
class ClassifyResults(StageResults):
    stage: ClassVar[str] = "classify"
    headline_names: ClassVar[tuple[tuple[str, str], ...]] = (
        ("validation loss", "val_loss"),
        ("accuracy", "validation.accuracy"),
        ("macro F1", "validation.macro_f1"),
        ("Pearson r", "validation.pearson_r"),
    )
    validation: Block = ABSENT  # accuracy, macro F1, confusion (or MSE, Pearson r), with intervals
    from_scratch: Block = ABSENT  # the same architecture trained from scratch
    transfer: Block = ABSENT  # fine-tuned vs from scratch, paired on the same examples, and its verdict
    leakage: Block = ABSENT  # validation: evaluate.leakage's exact and 8-gram overlap with train


@dataclass
class RewardResults(StageResults):
    stage: ClassVar[str] = "reward"
    headline_names: ClassVar[tuple[tuple[str, str], ...]] = (
        ("validation loss", "val_loss"),
        ("pairwise accuracy (validation)", "validation.accuracy"),
        ("pairwise accuracy (held-out)", "heldout.accuracy"),
        ("mean margin (validation)", "validation.mean_margin"),
    )
    best_step: int | None = ABSENT
    best_val_loss: float | None = ABSENT
    backbone: str = ABSENT
    pairs: Block = ABSENT  # per split: the pair counts of preparation
    anomalies: dict[str, int] = ABSENT
    before: Block = ABSENT  # pairwise accuracy before training, per split
    validation: Block = ABSENT  # pairs, accuracy, mean_margin, by_kind
    heldout: Block = ABSENT


@dataclass
class DpoResults(StageResults):
    stage: ClassVar[str] = "dpo"
    headline_names: ClassVar[tuple[tuple[str, str], ...]] = (
        ("preference accuracy (validation), before", "before.likelihood_accuracy_validation"),
        ("preference accuracy (validation), after", "after.likelihood_accuracy_validation"),
    )
    loss: str = ABSENT
    beta: float = ABSENT
    best_step: int | None = ABSENT
    pairs: Block = ABSENT
    anomalies: dict[str, int] = ABSENT
    before: Block = ABSENT  # likelihood accuracy and answers per split, before training
    after: Block = ABSENT
    final: Block = ABSENT  # implicit-reward accuracy and log-ratio per split


@dataclass
class RlResults(StageResults):
    stage: ClassVar[str] = "rl"
    headline_names: ClassVar[tuple[tuple[str, str], ...]] = (
        ("sampled reward, before", "before.reward_sampled"),
        ("sampled reward, after", "after.reward_sampled"),
        ("exact answer (greedy)", "after.exact_match_greedy"),
        ("KL to reference", "final_kl"),
    )
    algorithm: str = ABSENT
    prompts: Block = ABSENT  # per split: prompt counts
    pass_rate_filter: Block = ABSENT
    before: Block = ABSENT  # rewards, KL, lengths and samples before training
    after: Block = ABSENT
    final_kl: float = ABSENT


RESULTS: dict[str, type[StageResults]] = {
    cls.stage: cls
    for cls in (PretrainResults, SftResults, ClassifyResults, RewardResults, DpoResults, RlResults)
}
# the headline table of each stage, as (label, run_metrics name)
HEADLINES: dict[str, tuple[tuple[str, str], ...]] = {s: cls.headline_names for s, cls in RESULTS.items()}


def stage_results(evaluation: Block) -> StageResults:
    """A stage's evaluation (what it measured, as eval.json holds it) as that stage's results object."""
    cls = RESULTS.get(evaluation.get("stage", ""), StageResults)
    return cls.from_json(evaluation)


def write_results(run: RunDir, results: StageResults) -> None:
    """The results into eval.json, atomically; eval.json is what marks a run as finished."""
    write_json(run.eval, results.to_json())


def read_results(run_dir: Path) -> StageResults | None:
    """A finished run's results; None while the run has not finished (it has no eval.json)."""
    path = RunDir(Path(run_dir)).eval
    if not path.is_file():
        return None
    return stage_results(json.loads(path.read_text(encoding="utf-8")))


def run_metrics(run_dir: Path) -> dict[str, float]:
    """The numbers a finished run reports, by name: what a search optimises and CV averages.

    From metrics.jsonl: `val_loss` (the best validation loss, the weights a run keeps by default),
    `final_val_loss`, `train_loss` (the last logged), `steps`; plus the last value of every other
    logged metric under its own name (`val_accuracy`, `reward_mean`, ...). From eval.json: every
    number under its dotted path (`forgetting.relative_change`, ...).
    """
    run_dir = Path(run_dir)
    metrics_file = RunDir(run_dir).metrics
    results = read_results(run_dir)
    if results is None:
        raise RunDirError(f"{run_dir}: no eval.json; the run did not finish")
    found: dict[str, float] = {}
    if metrics_file.is_file():
        rows = read_metrics(metrics_file)
        for row in rows:
            for key, value in row.items():
                if isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value):
                    found[key] = float(value)
        val = [r["val_loss"] for r in rows if isinstance(r.get("val_loss"), int | float)]
        if val:
            found["final_val_loss"] = float(val[-1])
            found["val_loss"] = float(min(val))
        found["steps"] = float(max((r.get("step", 0) for r in rows), default=0))
    found.update(results.numbers())
    return found

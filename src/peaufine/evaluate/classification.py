"""Task metrics of a sequence classifier or regressor on a labelled set: what its predictions score."""

# Classes: accuracy, macro-F1 and per-class precision / recall / F1; regression: mean squared error and
# Pearson's r. The scores are plain functions of predictions and labels, so they are tested by hand.

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from peaufine.data.batching import batch_to
from peaufine.evaluate.stats import (
    Estimate,
    bootstrap_interval,
    describe_change,
    mcnemar_exact,
    paired_bootstrap,
    resampled_rows,
    wilson_interval,
)
from peaufine.methods.classify import classifier_logits

if TYPE_CHECKING:
    import torch

    from peaufine.data.batching import Dataset
    from peaufine.engine.runtime import Runtime


def _ratio(numerator: float, denominator: float) -> float:
    # an undefined precision (a class never predicted) counts as 0, as scikit-learn's default does
    return numerator / denominator if denominator > 0 else 0.0


def classification_scores(predictions: Sequence[int], labels: Sequence[int]) -> dict[str, Any]:
    """Accuracy, macro-F1 and per-class precision / recall / F1 / support.

    Macro-F1 averages the F1 of every class that occurs among the labels or the predictions (the
    classes scikit-learn's `f1_score(average="macro")` averages), so a classifier that always says
    the majority class scores about half its accuracy on two balanced classes.
    """
    if len(predictions) != len(labels):
        raise ValueError(f"{len(predictions)} predictions but {len(labels)} labels")
    pairs = list(zip((int(p) for p in predictions), (int(y) for y in labels), strict=True))
    classes = sorted({p for p, _ in pairs} | {y for _, y in pairs})
    per_class: dict[int, dict[str, float]] = {}
    for c in classes:
        true_pos = sum(1 for p, y in pairs if p == c and y == c)
        predicted = sum(1 for p, _ in pairs if p == c)
        support = sum(1 for _, y in pairs if y == c)
        precision, recall = _ratio(true_pos, predicted), _ratio(true_pos, support)
        per_class[c] = {
            "precision": precision,
            "recall": recall,
            "f1": _ratio(2 * precision * recall, precision + recall),
            "support": support,
        }
    correct = sum(1 for p, y in pairs if p == y)
    scores: dict[str, Any] = {
        "examples": len(pairs),
        "accuracy": _ratio(correct, len(pairs)) if pairs else math.nan,
        "macro_f1": sum(s["f1"] for s in per_class.values()) / len(per_class) if per_class else math.nan,
        "per_class": per_class,
    }
    if pairs:
        accuracy = wilson_interval(correct, len(pairs))
        macro_f1 = macro_f1_interval([p for p, _ in pairs], [y for _, y in pairs])
        scores["accuracy_ci"] = [accuracy.low, accuracy.high]
        scores["macro_f1_ci"] = [macro_f1.low, macro_f1.high]
    return scores


def _macro_f1_of_confusions(confusions: np.ndarray) -> np.ndarray:
    """Macro-F1 of each confusion matrix of a stack (resample, predicted, true), over the classes that
    occur among its labels or predictions (as classification_scores averages)."""
    true_pos = np.diagonal(confusions, axis1=1, axis2=2).astype(np.float64)
    predicted = confusions.sum(axis=2).astype(np.float64)
    support = confusions.sum(axis=1).astype(np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        precision = np.where(predicted > 0, true_pos / predicted, 0.0)
        recall = np.where(support > 0, true_pos / support, 0.0)
        f1 = np.where(precision + recall > 0, 2 * precision * recall / (precision + recall), 0.0)
    present = (predicted + support) > 0
    return (f1 * present).sum(axis=1) / present.sum(axis=1)


def macro_f1_interval(
    predictions: Sequence[int],
    labels: Sequence[int],
    confidence: float = 0.95,
    resamples: int = 2000,
    seed: int = 0,
) -> Estimate:
    """Macro-F1 with a percentile bootstrap interval over examples: macro-F1 is no mean of per-example
    values, so each resample's confusion matrix is counted afresh (all at once, with bincount)."""
    codes_of = {c: i for i, c in enumerate(sorted(set(predictions) | set(labels)))}
    k = len(codes_of)
    codes = np.array([codes_of[p] * k + codes_of[y] for p, y in zip(predictions, labels, strict=True)])
    n = len(codes)
    values = []
    for rows in resampled_rows(n, resamples, seed):
        # one confusion matrix per resample, all counted by one bincount: resample r's codes offset by r k^2
        offsets = (np.arange(len(rows)) * k * k)[:, None]
        confusions = np.bincount((codes[rows] + offsets).ravel(), minlength=len(rows) * k * k)
        values.append(_macro_f1_of_confusions(confusions.reshape(len(rows), k, k)))
    whole = float(_macro_f1_of_confusions(np.bincount(codes, minlength=k * k).reshape(1, k, k))[0])
    alpha = 1.0 - confidence
    low, high = (float(q) for q in np.quantile(np.concatenate(values), [alpha / 2, 1 - alpha / 2]))
    return Estimate(value=whole, low=min(low, whole), high=max(high, whole), n=n, method="bootstrap")


def regression_scores(predictions: Sequence[float], targets: Sequence[float]) -> dict[str, Any]:
    """Mean squared error and Pearson's r (nan when either side is constant: r is undefined)."""
    if len(predictions) != len(targets):
        raise ValueError(f"{len(predictions)} predictions but {len(targets)} targets")
    n = len(targets)
    if n == 0:
        return {"examples": 0, "mse": math.nan, "pearson_r": math.nan}
    xs, ys = [float(p) for p in predictions], [float(t) for t in targets]
    mse = sum((x - y) ** 2 for x, y in zip(xs, ys, strict=True)) / n
    mean_x, mean_y = sum(xs) / n, sum(ys) / n
    cov = sum((x - mean_x) * (y - mean_y) for x, y in zip(xs, ys, strict=True))
    var_x = sum((x - mean_x) ** 2 for x in xs)
    var_y = sum((y - mean_y) ** 2 for y in ys)
    r = cov / math.sqrt(var_x * var_y) if var_x > 0 and var_y > 0 else math.nan
    squared = bootstrap_interval([(x - y) ** 2 for x, y in zip(xs, ys, strict=True)])
    return {"examples": n, "mse": mse, "mse_ci": [squared.low, squared.high], "pearson_r": r}


def _evaluation_order(dataset: Dataset) -> list[int]:
    """Shortest texts first when the lengths are known: each batch is padded to its longest text, so
    grouping similar lengths saves most of the padding; the scores do not depend on the order."""
    rows = getattr(dataset, "input_ids", None)
    if isinstance(rows, list) and len(rows) == len(dataset):
        return sorted(range(len(dataset)), key=lambda i: len(rows[i]))
    return list(range(len(dataset)))


def predict(
    model: torch.nn.Module, dataset: Dataset, runtime: Runtime, batch_size: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """The head's outputs for every example of `dataset`, in dataset order, and the labels.

    Classes: the argmax class; regression (one output): the predicted value. Eval mode (no dropout)
    and no autograd; the model's previous mode is restored. Every process scores the whole set, so
    the metrics need no gather (held-out sets for classification are small).
    """
    import torch

    order = _evaluation_order(dataset)
    outputs: list[torch.Tensor] = []
    labels: list[torch.Tensor] = []
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            for start in range(0, len(order), batch_size):
                batch = batch_to(dataset.collate(order[start : start + batch_size]), runtime.device)
                with runtime.autocast():
                    logits = classifier_logits(model, batch)
                outputs.append(logits.squeeze(-1) if logits.shape[-1] == 1 else logits.argmax(-1))
                labels.append(batch["labels"])
    finally:
        model.train(was_training)
    if not outputs:
        return torch.empty(0), torch.empty(0)
    inverse = torch.empty(len(order), dtype=torch.long)
    inverse[torch.tensor(order)] = torch.arange(len(order))
    return torch.cat(outputs).cpu()[inverse], torch.cat(labels).cpu()[inverse]


@dataclass
class LabelledPredictions:
    """A model's predictions on a labelled set, in dataset order, and what they score."""

    predictions: list[Any]
    labels: list[Any]
    scores: dict[str, Any]

    @property
    def regression(self) -> bool:
        return "mse" in self.scores

    def correct(self) -> list[bool]:
        return [int(p) == int(y) for p, y in zip(self.predictions, self.labels, strict=True)]

    def rows(self, split: str) -> list[dict[str, Any]]:
        """predictions.jsonl's rows: what a paired test (or `peaufine compare`) pairs by index;
        `correct` is null for a regressor."""
        return [
            {
                "split": split,
                "index": i,
                "label": y,
                "prediction": p,
                "correct": None if self.regression else int(p) == int(y),
            }
            for i, (p, y) in enumerate(zip(self.predictions, self.labels, strict=True))
        ]


def labelled_predictions(
    model: torch.nn.Module, dataset: Dataset, runtime: Runtime, batch_size: int
) -> LabelledPredictions:
    """Predictions of `model` on a labelled set and their scores: classification_scores for a head of
    two or more classes, regression_scores for a head of one output (num_labels = 1)."""
    predictions, labels = predict(model, dataset, runtime, batch_size)
    if predictions.is_floating_point():  # one output per example: a regressor
        values, targets = predictions.tolist(), labels.tolist()
        return LabelledPredictions(values, targets, regression_scores(values, targets))
    classes, truth = predictions.tolist(), labels.tolist()
    return LabelledPredictions(classes, truth, classification_scores(classes, truth))


def classification_metrics(
    model: torch.nn.Module, dataset: Dataset, runtime: Runtime, batch_size: int
) -> dict[str, Any]:
    """The scores of labelled_predictions."""
    return labelled_predictions(model, dataset, runtime, batch_size).scores


def transfer_comparison(fine_tuned: LabelledPredictions, scratch: LabelledPredictions) -> dict[str, Any]:
    """eval.json's transfer block of a classifier: fine-tuned minus from scratch on the same examples,
    McNemar's exact test on each example's correctness (a paired bootstrap on squared error for a
    regressor, where lower is better), with the wording of its verdict."""
    if fine_tuned.regression:
        squared = [
            [(float(p) - float(y)) ** 2 for p, y in zip(side.predictions, side.labels, strict=True)]
            for side in (scratch, fine_tuned)
        ]
        comparison = paired_bootstrap(squared[0], squared[1])
        wording = describe_change(
            comparison, what="MSE, fine-tuned vs from scratch", unit="", higher_is_better=False
        )
        return {"mse": {**comparison.as_dict(), "wording": wording}, "verdict": wording}
    comparison = mcnemar_exact(scratch.correct(), fine_tuned.correct())
    wording = describe_change(comparison, what="accuracy, fine-tuned vs from scratch")
    return {"accuracy": {**comparison.as_dict(), "wording": wording}, "verdict": wording}

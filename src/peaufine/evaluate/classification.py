"""Task metrics of a sequence classifier or regressor on a labelled set: what its predictions score."""

# Classes: accuracy, macro-F1 and per-class precision / recall / F1; regression: mean squared error and
# Pearson's r. The scores are plain functions of predictions and labels, so they are tested by hand.

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from peaufine.data.batching import batch_to
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
    return {
        "examples": len(pairs),
        "accuracy": _ratio(correct, len(pairs)) if pairs else math.nan,
        "macro_f1": sum(s["f1"] for s in per_class.values()) / len(per_class) if per_class else math.nan,
        "per_class": per_class,
    }


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
    return {"examples": n, "mse": mse, "pearson_r": r}


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


def classification_metrics(
    model: torch.nn.Module, dataset: Dataset, runtime: Runtime, batch_size: int
) -> dict[str, Any]:
    """Scores of `model` on a labelled set: classification_scores for a head of two or more
    classes, regression_scores for a head of one output (num_labels = 1)."""
    predictions, labels = predict(model, dataset, runtime, batch_size)
    if predictions.is_floating_point():  # one output per example: a regressor
        return regression_scores(predictions.tolist(), labels.tolist())
    return classification_scores(predictions.tolist(), labels.tolist())

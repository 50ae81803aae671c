"""Nested mappings as dotted keys: one walker, read as numbers (eval.json) or as text (MLflow params)."""

from __future__ import annotations

import math

from peaufine.nested import dotted_items, flatten_numbers

EVALUATION = {
    "stage": "sft",
    "steps": 12,
    "resumed": False,
    "answers": {"validation": {"before": None, "after": {"exact_match": 0.5, "n": 4}}},
    "task_val_loss": {"before": 2.0, "after": math.nan},
    "samples": [{"prompt": "a", "score": 1.5}, 3],
    "empty": {},
    "none_yet": [],
}


def test_lists_are_leaves_unless_walked_into_by_index():
    assert list(dotted_items(EVALUATION)) == [
        ("stage", "sft"),
        ("steps", 12),
        ("resumed", False),
        ("answers.validation.before", None),
        ("answers.validation.after.exact_match", 0.5),
        ("answers.validation.after.n", 4),
        ("task_val_loss.before", 2.0),
        ("task_val_loss.after", EVALUATION["task_val_loss"]["after"]),
        ("samples", EVALUATION["samples"]),
        ("none_yet", []),
    ]
    walked = dict(dotted_items(EVALUATION, into_lists=True))
    assert walked["samples.0.prompt"] == "a" and walked["samples.0.score"] == 1.5 and walked["samples.1"] == 3
    assert "samples" not in walked and "none_yet" not in walked and "empty" not in walked


def test_the_numbers_of_an_evaluation_leave_out_flags_text_and_what_is_not_finite():
    assert flatten_numbers(EVALUATION) == {
        "steps": 12.0,
        "answers.validation.after.exact_match": 0.5,
        "answers.validation.after.n": 4.0,
        "task_val_loss.before": 2.0,
        "samples.0.score": 1.5,
        "samples.1": 3.0,
    }

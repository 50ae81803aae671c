"""Every verdict states how many examples it rests on, and below 20 it says it is not meaningful: the
overfitting verdict (validation examples), forgetting (blocks of general text) and transfer."""

from __future__ import annotations

import pytest

from peaufine.evaluate.forgetting import forgetting_report
from peaufine.evaluate.overfitting import overfitting_report
from peaufine.evaluate.sft import transfer_verdict

HISTORY = [
    {"step": 10, "train_loss": 3.0, "val_loss": 3.1},
    {"step": 20, "train_loss": 2.0, "val_loss": 2.5},
    {"step": 30, "train_loss": 1.0, "val_loss": 2.7},
]
FIGURES = {"fine_tuned": 1.5, "base_zero_shot": 2.0, "base_few_shot": 1.8, "from_scratch": 2.5}


def verdicts(n: int) -> list[tuple[str, dict, str]]:
    """(verdict, its eval.json block, the unit it counts) of each check, resting on `n`."""
    from peaufine.evaluate.sft import transfer_report

    overfitting = overfitting_report(HISTORY, examples=n)
    forgetting = forgetting_report("general", 2.0, 2.5, 0.1, blocks=n)
    transfer = transfer_report(FIGURES, examples=n)
    return [
        (overfitting.verdict(), overfitting.as_dict(), "validation example"),
        (forgetting.verdict(), forgetting.as_dict(), "block"),
        (transfer["verdict"], transfer, "validation example"),
    ]


@pytest.mark.parametrize("n", [1, 2, 19])
def test_below_20_examples_every_verdict_says_not_meaningful_with_its_n(n):
    for verdict, block, unit in verdicts(n):
        assert verdict.startswith("not meaningful"), verdict
        assert f"{n} {unit}" in verdict, verdict
        assert block["meaningful"] is False
        assert n in block.values()


@pytest.mark.parametrize("n", [20, 21, 500])
def test_from_20_examples_every_verdict_stands_and_states_its_n(n):
    for verdict, block, unit in verdicts(n):
        assert "not meaningful" not in verdict, verdict
        assert f"{n} {unit}s" in verdict, verdict
        assert block["meaningful"] is True
        assert n in block.values()


def test_the_verdict_itself_is_kept_behind_not_meaningful():
    # the measured outcome stays readable: "not meaningful" qualifies it, it does not replace it
    overfitting = overfitting_report(HISTORY)
    assert "overfitting from step 20" in overfitting.verdict()
    assert "positive transfer" in transfer_verdict(FIGURES)

"""The transfer verdict of a fine-tuning run, every combination by hand: fine-tuned vs from scratch
(ties are negative transfer), vs base zero-shot and vs base few-shot; missing figures are skipped."""

from __future__ import annotations

import itertools

import pytest

from peaufine.evaluate.sft import transfer_report, transfer_verdict
from peaufine.evaluate.stats import PairedComparison


def test_all_better():
    figures = {"fine_tuned": 1.0, "from_scratch": 2.0, "base_zero_shot": 3.0, "base_few_shot": 2.5}
    assert transfer_verdict(figures) == (
        "positive transfer: fine-tuned 1.0000 < from scratch 2.0000; "
        "fine-tuning improved on the base model zero-shot (3.0000); "
        "beats 2.5000 with in-context examples"
    )


def test_all_worse():
    figures = {"fine_tuned": 2.0, "from_scratch": 1.5, "base_zero_shot": 1.0, "base_few_shot": 1.8}
    assert transfer_verdict(figures) == (
        "NEGATIVE transfer: from scratch 1.5000 <= fine-tuned 2.0000; "
        "fine-tuning did not improve on the base model zero-shot (1.0000); "
        "does not beat 1.8000 with in-context examples"
    )


def test_ties_count_against_fine_tuning():
    figures = {"fine_tuned": 1.25, "from_scratch": 1.25, "base_zero_shot": 1.25, "base_few_shot": 1.25}
    assert transfer_verdict(figures) == (
        "NEGATIVE transfer: from scratch 1.2500 <= fine-tuned 1.2500; "
        "fine-tuning did not improve on the base model zero-shot (1.2500); "
        "does not beat 1.2500 with in-context examples"
    )


BETTER = {
    "from_scratch": "positive transfer: fine-tuned 1.0000 < from scratch 2.0000",
    "base_zero_shot": "fine-tuning improved on the base model zero-shot (2.0000)",
    "base_few_shot": "beats 2.0000 with in-context examples",
}
WORSE = {
    "from_scratch": "NEGATIVE transfer: from scratch 0.5000 <= fine-tuned 1.0000",
    "base_zero_shot": "fine-tuning did not improve on the base model zero-shot (0.5000)",
    "base_few_shot": "does not beat 0.5000 with in-context examples",
}
KEYS = ["from_scratch", "base_zero_shot", "base_few_shot"]


@pytest.mark.parametrize(
    "outcomes", list(itertools.product(["absent", "none", "better", "worse"], repeat=3)), ids=str
)
def test_every_combination_in_order(outcomes):
    """Each comparison absent (no key), None, won (other figure 2.0) or lost (0.5) by fine-tuned 1.0."""
    figures: dict[str, float | None] = {"fine_tuned": 1.0}
    parts = []
    for key, outcome in zip(KEYS, outcomes, strict=True):
        if outcome == "none":
            figures[key] = None
        elif outcome == "better":
            figures[key] = 2.0
            parts.append(BETTER[key])
        elif outcome == "worse":
            figures[key] = 0.5
            parts.append(WORSE[key])
    expected = "; ".join(parts) if parts else "not measured"
    assert transfer_verdict(figures) == expected


@pytest.mark.parametrize(
    "figures",
    [
        {},
        {"fine_tuned": None, "from_scratch": None, "base_zero_shot": None, "base_few_shot": None},
        {"fine_tuned": 1.0},
        {"fine_tuned": None, "from_scratch": 2.0, "base_zero_shot": 3.0, "base_few_shot": 2.5},
        {"from_scratch": 2.0, "base_zero_shot": 3.0, "base_few_shot": 2.5},
    ],
)
def test_nothing_to_compare_is_not_measured(figures):
    # every comparison needs the fine-tuned figure and the other one
    assert transfer_verdict(figures) == "not measured"


def test_figures_are_rounded_to_four_places_and_other_keys_ignored():
    figures = {"fine_tuned": 0.123456, "from_scratch": 0.98765, "answers": 7.0}
    assert transfer_verdict(figures) == "positive transfer: fine-tuned 0.1235 < from scratch 0.9877"


def test_a_difference_smaller_than_the_printed_precision_still_decides():
    # 1.00001 < 1.00002 although both print as 1.0000
    verdict = transfer_verdict({"fine_tuned": 1.00001, "from_scratch": 1.00002})
    assert verdict == "positive transfer: fine-tuned 1.0000 < from scratch 1.0000"


def _comparison(low: float, high: float) -> PairedComparison:
    return PairedComparison(
        difference=(low + high) / 2, low=low, high=high, n=30, p_value=None, method="paired_bootstrap"
    )


def test_a_comparison_whose_interval_includes_zero_is_no_measurable_difference():
    figures = {"fine_tuned": 1.0, "from_scratch": 2.0, "base_zero_shot": 3.0, "base_few_shot": 2.5}
    paired = {
        "from_scratch": _comparison(-1.5, 0.2),  # includes 0: a tie, whatever the point estimates say
        "base_zero_shot": _comparison(-2.5, -1.5),  # excludes 0: the verdict stands
        "base_few_shot": _comparison(-0.1, 0.1),
    }
    assert transfer_verdict(figures, paired) == (
        "no measurable transfer: fine-tuned 1.0000 vs from scratch 2.0000 "
        "(95% CI of the difference -1.5000 to +0.2000); "
        "fine-tuning improved on the base model zero-shot (3.0000); "
        "no measurable difference from 2.5000 with in-context examples "
        "(95% CI of the difference -0.1000 to +0.1000)"
    )
    # without paired losses the verdict is the point comparison, as before
    assert transfer_verdict(figures).startswith("positive transfer")


def test_transfer_report_carries_each_paired_comparison_with_its_wording():
    figures = {"fine_tuned": 1.0, "base_zero_shot": 3.0}
    block = transfer_report(figures, 30, {"base_zero_shot": _comparison(-2.5, -1.5)})
    paired = block["paired"]["base_zero_shot"]
    assert paired["measurable"] is True and paired["n"] == 30
    assert paired["wording"] == (
        "task validation loss, fine-tuned vs the base model zero-shot: better by 2.000 nats "
        "(95% CI -2.500 to -1.500, paired bootstrap, n=30)"
    )
    assert "paired" not in transfer_report(figures, 30)

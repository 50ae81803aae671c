"""Catastrophic forgetting by hand: relative change of the general loss, perplexities, the threshold
(strictly above it flags) and the verdict text with its numbers as the report formats them."""

from __future__ import annotations

import math

import pytest

from peaufine.evaluate.forgetting import ForgettingReport, forgetting_report


def test_a_rise_above_the_threshold_is_forgetting():
    report = forgetting_report("wiki", 2.0, 2.5, 0.1)
    # (2.5 - 2.0) / 2.0 = 0.25 > 0.1
    assert report.relative_change == pytest.approx(0.25)
    assert report.perplexity_before == pytest.approx(7.389056)  # e^2
    assert report.perplexity_after == pytest.approx(12.182494)  # e^2.5
    assert report.forgot
    assert (report.source, report.loss_before, report.loss_after, report.threshold) == ("wiki", 2.0, 2.5, 0.1)
    assert report.verdict() == (
        "forgetting: general loss 2.0000 -> 2.5000 (+25.0%, above the 10% threshold); consider LoRA, "
        "a lower learning rate, or replay (data.replay.ratio)"
    )


def test_an_improvement_or_a_rise_below_the_threshold_is_not_forgetting():
    better = forgetting_report("wiki", 2.0, 1.9, 0.1)
    # (1.9 - 2.0) / 2.0 = -0.05
    assert better.relative_change == pytest.approx(-0.05)
    assert not better.forgot
    assert better.verdict() == "no forgetting beyond 10%: general loss 2.0000 -> 1.9000 (-5.0%)"
    slightly_worse = forgetting_report("wiki", 3.0, 3.15, 0.1)
    # (3.15 - 3.0) / 3.0 = 0.05 <= 0.1
    assert slightly_worse.relative_change == pytest.approx(0.05)
    assert not slightly_worse.forgot
    assert slightly_worse.verdict() == "no forgetting beyond 10%: general loss 3.0000 -> 3.1500 (+5.0%)"


def test_a_change_exactly_at_the_threshold_does_not_flag():
    # (2.5 - 2.0) / 2.0 = 0.25 exactly in binary floating point
    at = forgetting_report("wiki", 2.0, 2.5, 0.25)
    assert at.relative_change == 0.25
    assert not at.forgot
    assert at.verdict() == "no forgetting beyond 25%: general loss 2.0000 -> 2.5000 (+25.0%)"
    assert forgetting_report("wiki", 2.0, 2.5, 0.2499).forgot
    unchanged = forgetting_report("wiki", 1.5, 1.5, 0.0)
    assert unchanged.relative_change == 0.0 and not unchanged.forgot
    assert unchanged.verdict() == "no forgetting beyond 0%: general loss 1.5000 -> 1.5000 (+0.0%)"


@pytest.mark.parametrize("before", [0.0, -1.0])
def test_a_non_positive_loss_before_gives_an_infinite_change(before):
    report = forgetting_report("wiki", before, 0.5, 0.1)
    assert report.relative_change == math.inf
    assert report.forgot
    assert report.perplexity_before == pytest.approx(math.exp(before))
    assert "(+inf%, above the 10% threshold)" in report.verdict()


def test_the_verdict_rounds_as_formatted():
    report = forgetting_report("c4", 1.23456, 1.5, 0.15)
    # (1.5 - 1.23456) / 1.23456 = 0.21501 -> "+21.5%"; 0.15 -> "15%"; losses to 4 decimals
    assert report.verdict().startswith("forgetting: general loss 1.2346 -> 1.5000 (+21.5%, above the 15%")


def test_as_dict_has_every_field():
    report = forgetting_report("wiki", 2.0, 2.5, 0.1)
    d = report.as_dict()
    assert list(d) == [
        "source",
        "loss_before",
        "loss_after",
        "relative_change",
        "perplexity_before",
        "perplexity_after",
        "threshold",
        "forgot",
        "blocks",
        "meaningful",
    ]
    assert ForgettingReport(**d) == report

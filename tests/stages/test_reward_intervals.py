"""The reward stage's pairwise accuracy and mean margin carry bootstrap intervals over pairs, weighted
as the loss weighs them (a ranking's pairs share one unit)."""

from __future__ import annotations

import pytest

from peaufine.evaluate.stats import ratio_bootstrap
from peaufine.stages.reward import weighted_intervals


def test_all_pairs_won_by_the_same_margin_give_point_intervals():
    block = weighted_intervals([(1.0, 1.0, 0.5)] * 10)
    assert block["accuracy_ci"] == pytest.approx([1.0, 1.0])
    assert block["mean_margin_ci"] == pytest.approx([0.5, 0.5])


def test_the_intervals_are_of_the_weighted_ratio():
    # a ranking's three pairs share a unit (1/3 each) beside single pairs of weight 1
    outcomes = [(1.0, 1.0, 2.0), (1.0, 0.0, -1.0)] * 10 + [(1 / 3, 0.0, -0.5)] * 30
    block = weighted_intervals(outcomes)
    expected = ratio_bootstrap([w * won for w, won, _ in outcomes], [w for w, _, _ in outcomes])
    assert block["accuracy_ci"] == [expected.low, expected.high]
    # weighted accuracy 10 / 30 = 1/3, which a plain mean over 50 pairs (10/50) would miss
    assert expected.value == pytest.approx(1 / 3)
    assert block["accuracy_ci"][0] < 1 / 3 < block["accuracy_ci"][1]


def test_no_pairs_no_intervals():
    assert weighted_intervals([]) == {}

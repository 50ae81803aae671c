"""The HTML toolkit's number formats: significant digits, rates as percentages, signed relative changes."""

from __future__ import annotations

import math

from peaufine.report.toolkit import fmt_metric, fmt_number, fmt_percent


def test_numbers_are_shown_to_four_significant_digits_and_rates_as_percentages():
    assert fmt_number(1.9386351108551025) == "1.939"
    assert fmt_number(0.0003) == "0.0003"
    assert fmt_number(307200.0) == "307,200"
    assert fmt_number(81920) == "81,920"
    assert fmt_number(None) == "–"
    assert fmt_number(math.nan) == "nan"
    assert fmt_percent(0.8222222) == "82.2%"
    assert fmt_metric("val_accuracy", 0.5) == "50.0%"
    assert fmt_metric("exact_match", 0.375) == "37.5%"
    assert fmt_metric("val_loss", 0.5) == "0.5"  # a loss is never a percentage
    assert fmt_metric("forgetting (relative)", 0.03061) == "+3.1%"
    assert fmt_metric("forgetting.relative_change", -0.2) == "-20.0%"
    assert fmt_metric("forgetting (relative)", math.nan) == "nan"

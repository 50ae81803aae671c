"""The objective expression: arithmetic over metric names, one clear error for a malformed one, close
matches for an unknown name, and the direction that follows the metric unless given."""

from __future__ import annotations

import math

import pytest

from peaufine.drivers.search.metric import metric_direction, parse_metric
from peaufine.errors import RecipeError


def test_metric_expressions_evaluate_like_arithmetic():
    metrics = {"val_loss": 2.0, "forgetting.relative_change": 0.3, "a": 5.0, "b": 3.0, "c": 1.0, "x-y": 7.0}
    cases = {
        "val_loss": 2.0,
        "val_loss + 0.5 * forgetting.relative_change": 2.15,
        "a - b - c": 1.0,  # left to right, not a - (b - c)
        "a / b / c": 5.0 / 3.0,
        "-(a + b) * 2": -16.0,
        "a - -b": 8.0,
        "2e-1 * a + .5": 1.5,
        "(a + b) / (a - b)": 4.0,
        "`x-y` * 2": 14.0,
    }
    for text, expected in cases.items():
        assert parse_metric(text).value(metrics) == pytest.approx(expected), text
    assert math.isnan(parse_metric("a / (b - 3)").value(metrics))
    assert parse_metric("val_loss + 0.5 * val_loss").names == ("val_loss",)


@pytest.mark.parametrize("text", ["", "val_loss +", "(val_loss", "val_loss $ 2", "val_loss 2", "* a"])
def test_a_malformed_metric_is_one_clear_error(text):
    with pytest.raises(RecipeError, match="--metric"):
        parse_metric(text)


def test_an_unknown_metric_name_lists_close_matches():
    expression = parse_metric("val_los + 0.1 * answers.heldout.after.exact_match")
    with pytest.raises(RecipeError) as error:
        expression.value({"val_loss": 1.0, "train_loss": 2.0, "answers.heldout.after.exact_match": 0.5})
    assert "no 'val_los'" in str(error.value) and "did you mean 'val_loss'" in str(error.value)


def test_the_direction_follows_the_metric_unless_given():
    direction = metric_direction
    parse = parse_metric
    assert direction(parse("val_loss")) == "minimize"
    assert direction(parse("final_val_loss")) == "minimize"
    assert direction(parse("answers.heldout.after.exact_match")) == "maximize"
    assert direction(parse("val_accuracy")) == "maximize"
    assert direction(parse("reward_mean")) == "maximize"
    assert direction(parse("val_loss + 0.5 * forgetting.relative_change")) == "minimize"
    assert direction(parse("val_loss"), "maximize") == "maximize"
    with pytest.raises(RecipeError, match="--direction"):
        direction(parse("steps"))
    with pytest.raises(RecipeError, match="--direction"):
        direction(parse("val_loss"), "down")

"""Classification and regression scores by hand, the cases tests/methods/test_classify.py leaves out:
perfect and all-wrong predictions, classes only predicted, empty sets, mismatches, Pearson's r signs."""

from __future__ import annotations

import math
from types import SimpleNamespace

import pytest

from peaufine.evaluate.classification import (
    LabelledPredictions,
    _evaluation_order,
    classification_scores,
    macro_f1_interval,
    regression_scores,
    transfer_comparison,
)
from peaufine.evaluate.stats import wilson_interval

ONES = {"precision": 1.0, "recall": 1.0, "f1": 1.0}
ZEROS = {"precision": 0.0, "recall": 0.0, "f1": 0.0}


# -- classification -----------------------------------------------------------------------------------
def test_perfect_predictions():
    s = classification_scores([0, 1, 2, 1], [0, 1, 2, 1])
    assert s["examples"] == 4 and s["accuracy"] == 1.0 and s["macro_f1"] == 1.0
    assert s["per_class"] == {0: {**ONES, "support": 1}, 1: {**ONES, "support": 2}, 2: {**ONES, "support": 1}}


def test_all_wrong_predictions():
    s = classification_scores([1, 0], [0, 1])
    assert s["accuracy"] == 0.0 and s["macro_f1"] == 0.0
    assert s["per_class"] == {0: {**ZEROS, "support": 1}, 1: {**ZEROS, "support": 1}}


def test_a_class_only_predicted_counts_in_the_macro_average():
    s = classification_scores([0, 2], [0, 0])
    # class 0: tp 1 of 1 predicted, 2 true -> P 1, R 1/2, F1 2*1*0.5/1.5 = 2/3
    # class 2: tp 0 of 1 predicted, 0 true -> P 0, R 0/0 counted 0, F1 0; macro (2/3 + 0) / 2 = 1/3
    assert s["accuracy"] == 0.5
    assert s["per_class"][0] == pytest.approx({"precision": 1.0, "recall": 0.5, "f1": 2 / 3, "support": 2})
    assert s["per_class"][2] == {**ZEROS, "support": 0}
    assert s["macro_f1"] == pytest.approx(1 / 3)
    assert list(s["per_class"]) == [0, 2]  # sorted, no entry for the absent class 1


def test_labels_are_compared_as_integers():
    s = classification_scores([1.0, 0.0, True], [1, 0, 1])
    assert s["accuracy"] == 1.0 and list(s["per_class"]) == [0, 1]
    assert all(type(c) is int for c in s["per_class"])  # the classes are ints, not 0.0 / True


def test_no_examples_score_nan():
    s = classification_scores([], [])
    assert s["examples"] == 0 and s["per_class"] == {}
    assert math.isnan(s["accuracy"]) and math.isnan(s["macro_f1"])


def test_classification_rejects_mismatched_lengths():
    with pytest.raises(ValueError, match="2 predictions but 1 labels"):
        classification_scores([0, 1], [0])


# -- regression ---------------------------------------------------------------------------------------
def test_regression_worked_example():
    s = regression_scores([1, 2, 3, 4, 5], [2, 1, 4, 3, 5])
    # errors (1, 1, 1, 1, 0) -> MSE 4/5; deviations (-2,-1,0,1,2) vs (-1,-2,1,0,2):
    # cov 2+2+0+0+4 = 8, var_x 10, var_y 10 -> r = 8/10
    interval = s.pop("mse_ci")  # issue 14: the MSE's bootstrap interval, over the squared errors
    assert s == pytest.approx({"examples": 5, "mse": 0.8, "pearson_r": 0.8})
    assert interval[0] <= 0.8 <= interval[1]


def test_pearson_r_is_one_for_any_increasing_line_and_minus_one_for_a_decreasing_one():
    up = regression_scores([1.0, 2.0, 3.0], [2.0, 4.0, 6.0])
    assert up["pearson_r"] == pytest.approx(1.0)
    assert up["mse"] == pytest.approx(14 / 3)  # (1 + 4 + 9) / 3: r ignores scale, MSE does not
    down = regression_scores([1.0, 2.0, 3.0], [3.0, 2.0, 1.0])
    assert down["pearson_r"] == pytest.approx(-1.0)
    assert down["mse"] == pytest.approx(8 / 3)  # (4 + 0 + 4) / 3


def test_pearson_r_is_undefined_when_either_side_is_constant():
    assert math.isnan(regression_scores([2.0, 2.0, 2.0], [1.0, 2.0, 3.0])["pearson_r"])
    constant_targets = regression_scores([1.0, 2.0, 3.0], [2.0, 2.0, 2.0])
    assert math.isnan(constant_targets["pearson_r"])
    assert constant_targets["mse"] == pytest.approx(2 / 3)  # (1 + 0 + 1) / 3 is still defined


def test_regression_of_no_examples_and_of_mismatched_lengths():
    s = regression_scores([], [])
    assert s["examples"] == 0 and math.isnan(s["mse"]) and math.isnan(s["pearson_r"])
    with pytest.raises(ValueError, match="1 predictions but 2 targets"):
        regression_scores([1.0], [1.0, 2.0])


# -- evaluation order ---------------------------------------------------------------------------------
class Rows(SimpleNamespace):
    def __len__(self) -> int:
        return self.n


def test_evaluation_order_is_shortest_first_and_stable():
    data = Rows(n=4, input_ids=[[1, 2, 3], [1], [1, 2], [4]])
    assert _evaluation_order(data) == [1, 3, 2, 0]  # lengths 3, 1, 2, 1: ties keep their order


def test_evaluation_order_falls_back_to_dataset_order():
    assert _evaluation_order(Rows(n=3)) == [0, 1, 2]  # no input_ids
    assert _evaluation_order(Rows(n=3, input_ids=[[1, 2], [1]])) == [0, 1, 2]  # not one per example
    assert _evaluation_order(Rows(n=2, input_ids=([1, 2], [1]))) == [0, 1]  # not a list


# -- intervals and paired transfer (issue 14) ---------------------------------------------------------
def test_accuracy_carries_its_wilson_interval_and_macro_f1_a_bootstrap_one():
    predictions = [0, 1] * 25
    labels = [0, 1] * 20 + [1, 0] * 5  # 40 of 50 right
    s = classification_scores(predictions, labels)
    wilson = wilson_interval(40, 50)
    assert s["accuracy_ci"] == [wilson.low, wilson.high]
    low, high = s["macro_f1_ci"]
    assert low < s["macro_f1"] < high
    # on two balanced classes macro-F1 equals accuracy here, so its bootstrap interval sits near Wilson's
    assert s["macro_f1"] == pytest.approx(0.8)
    assert low == pytest.approx(wilson.low, abs=0.05) and high == pytest.approx(wilson.high, abs=0.05)


def test_macro_f1_interval_recomputes_the_whole_set_value_and_is_seeded():
    predictions, labels = [0, 2, 1, 1, 0, 2, 2], [0, 0, 1, 2, 0, 2, 1]
    estimate = macro_f1_interval(predictions, labels)
    assert estimate.value == pytest.approx(classification_scores(predictions, labels)["macro_f1"])
    assert estimate.n == 7 and estimate.method == "bootstrap"
    assert macro_f1_interval(predictions, labels, seed=1) == macro_f1_interval(predictions, labels, seed=1)
    perfect = macro_f1_interval([0, 1, 2] * 4, [0, 1, 2] * 4)
    assert (perfect.value, perfect.low, perfect.high) == (1.0, 1.0, 1.0)


def test_regression_mse_carries_a_bootstrap_interval():
    s = regression_scores([1.0, 2.0, 3.0, 4.0], [1.0, 2.0, 3.0, 6.0])  # squared errors 0, 0, 0, 4
    assert s["mse"] == 1.0
    low, high = s["mse_ci"]
    assert 0.0 <= low <= 1.0 <= high <= 4.0


def test_transfer_comparison_pairs_correctness_by_example():
    labels = [0, 1] * 10
    tuned = LabelledPredictions(list(labels), labels, classification_scores(labels, labels))
    wrong = [1 - y for y in labels]
    scratch = LabelledPredictions(wrong, labels, classification_scores(wrong, labels))
    block = transfer_comparison(tuned, scratch)
    # 20 discordant pairs, all won by the fine-tuned model: p = 2 / 2^20
    assert block["accuracy"]["difference"] == 1.0
    assert block["accuracy"]["p_value"] == pytest.approx(2 / 2**20)
    assert block["verdict"].startswith("accuracy, fine-tuned vs from scratch: better by 100.0 points")
    same = transfer_comparison(tuned, tuned)
    assert same["verdict"].startswith("accuracy, fine-tuned vs from scratch: no measurable difference")
    # a regressor: lower squared error is better
    targets = [0.0, 1.0, 2.0, 3.0] * 5
    exact = LabelledPredictions(list(targets), targets, regression_scores(targets, targets))
    off = [t + 1.0 for t in targets]
    shifted = LabelledPredictions(off, targets, regression_scores(off, targets))
    regression = transfer_comparison(exact, shifted)
    assert regression["mse"]["difference"] == pytest.approx(-1.0)
    assert regression["verdict"].startswith("MSE, fine-tuned vs from scratch: better by 1.000 (")

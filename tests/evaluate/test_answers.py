"""SQuAD-style answer scoring by hand: normalisation (case, punctuation, articles, spacing), exact match,
token F1 with repeated tokens, and the means score_answers reports."""

from __future__ import annotations

import pytest

from peaufine.evaluate.answers import (
    AnswerMetrics,
    answer_changes,
    exact_match,
    normalize_answer,
    score_answers,
    token_f1,
)


# -- normalize_answer ---------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("The Cat", "cat"),
        ("THE END", "end"),  # articles are removed after lower-casing
        ("  Hello,   World!  ", "hello world"),
        ("a\tb\nc", "b c"),  # "a" is an article; tabs and newlines fold like spaces
        ("an anthem", "anthem"),
        ("The theatre, a play.", "theatre play"),  # "theatre" keeps its "the"
        ("another thence", "another thence"),  # "an", "the" inside words stay
        ("the-cat", "thecat"),  # punctuation goes first, so no word boundary is left
        ("don't", "dont"),
        ("...!?", ""),
        ("", ""),
        ("the a an", ""),
        ("Café", "café"),  # only ASCII punctuation is removed; letters stay
    ],
)
def test_normalize_answer(text, expected):
    assert normalize_answer(text) == expected


# -- exact_match --------------------------------------------------------------------------------------
def test_exact_match_ignores_case_punctuation_articles_and_spacing():
    assert exact_match("The Eiffel Tower.", "eiffel   tower")
    assert exact_match("  PARIS!", "paris")


def test_exact_match_rejects_different_words_order_or_inflection():
    assert not exact_match("Paris", "Lyon")
    assert not exact_match("Tower Eiffel", "Eiffel Tower")  # word order counts
    assert not exact_match("cats", "cat")
    assert not exact_match("theatre", "atre")  # "the" inside a word is not an article


def test_exact_match_of_answers_that_normalise_to_nothing():
    assert exact_match("", "")
    assert exact_match("the", "...")  # both normalise to ""
    assert not exact_match("", "cat")


# -- token_f1 -----------------------------------------------------------------------------------------
def test_token_f1_worked_example():
    # pred [cat, sat, on, mat], gold [cat, sat]: common 2, P 2/4, R 2/2 -> F1 2*0.5*1/1.5 = 2/3
    assert token_f1("the cat sat on the mat", "a cat sat") == pytest.approx(2 / 3)
    assert token_f1("a cat sat", "the cat sat on the mat") == pytest.approx(2 / 3)  # symmetric


def test_token_f1_identical_reordered_and_disjoint():
    assert token_f1("The Cat!", "cat") == 1.0
    assert token_f1("sat cat", "cat sat") == 1.0  # a bag of words: order does not count
    assert not exact_match("sat cat", "cat sat")
    assert token_f1("dog", "cat") == 0.0
    assert token_f1("theatre", "the atre") == 0.0  # pred [theatre], gold [atre]


def test_token_f1_counts_repeated_tokens_by_multiset_intersection():
    # pred [cat, cat, cat], gold [cat]: common min(3, 1) = 1, P 1/3, R 1 -> F1 2*(1/3)/(4/3) = 0.5
    assert token_f1("cat cat cat", "cat") == pytest.approx(0.5)
    # pred [cat, cat, dog], gold [cat, cat, cat, dog]: common min(2,3) + min(1,1) = 3,
    # P 3/3, R 3/4 -> F1 2*0.75/1.75 = 6/7
    assert token_f1("cat cat dog", "cat cat cat dog") == pytest.approx(6 / 7)


def test_token_f1_of_empty_answers():
    assert token_f1("", "") == 1.0
    assert token_f1("the", "a") == 1.0  # both empty after normalisation
    assert token_f1("", "cat") == 0.0
    assert token_f1("cat", "") == 0.0
    assert token_f1("!!!", "cat") == 0.0  # punctuation only is empty


# -- score_answers ------------------------------------------------------------------------------------
def test_score_answers_means_and_samples():
    predictions = ["Paris", "the big cat", "x"]
    golds = ["paris", "cat", "y"]
    metrics = score_answers(predictions, golds, ["q1", "q2", "q3"])
    # EM [1, 0, 0] -> 1/3; F1 [1, (P 1/2, R 1 -> 2/3), 0] -> (1 + 2/3 + 0) / 3 = 5/9
    assert metrics.exact_match == pytest.approx(1 / 3)
    assert metrics.f1 == pytest.approx(5 / 9)
    assert metrics.n == 3
    assert metrics.samples == [
        {"question": "q1", "answer": "paris", "prediction": "Paris"},
        {"question": "q2", "answer": "cat", "prediction": "the big cat"},
        {"question": "q3", "answer": "y", "prediction": "x"},
    ]


def test_score_answers_all_right_and_all_wrong():
    right = score_answers(["A cat.", "Dog"], ["cat", "the dog"], ["q", "q"])
    assert (right.exact_match, right.f1, right.n) == (1.0, 1.0, 2)
    wrong = score_answers(["cow", "hen"], ["cat", "dog"], ["q", "q"])
    assert (wrong.exact_match, wrong.f1, wrong.n) == (0.0, 0.0, 2)


def test_score_answers_of_no_golds():
    assert score_answers([], [], []) == AnswerMetrics(0.0, 0.0, 0, [])


def test_score_answers_rejects_mismatched_lengths():
    with pytest.raises(ValueError):
        score_answers(["a", "b"], ["a"], ["q"])


def test_as_dict_keeps_the_first_ten_samples():
    n = 12
    metrics = score_answers([f"w{i}" for i in range(n)], [f"w{i}" for i in range(n)], ["q"] * n)
    d = metrics.as_dict()
    assert d["n"] == n and d["exact_match"] == 1.0 and d["f1"] == 1.0
    assert len(d["samples"]) == 10 and d["samples"][0]["prediction"] == "w0"
    assert len(metrics.samples) == n


# -- intervals, per-question outcomes and paired changes (issue 14) ----------------------------------
def test_answer_metrics_carry_their_intervals_and_outcomes():
    metrics = score_answers(["Paris", "the big cat", "x"], ["paris", "cat", "y"], ["q1", "q2", "q3"])
    assert metrics.exact == [True, False, False]
    assert metrics.f1_scores == pytest.approx([1.0, 2 / 3, 0.0])
    figures = metrics.as_dict()
    # Wilson for 1 of 3, from its closed form; F1's bootstrap interval holds its mean
    z2 = 1.959963984540054**2
    centre, half = (1 / 3 + z2 / 6) / (1 + z2 / 3), (z2**0.5 / (1 + z2 / 3)) * ((2 / 27) + z2 / 36) ** 0.5
    assert figures["exact_match_ci"] == pytest.approx([centre - half, centre + half])
    low, high = figures["f1_ci"]
    assert 0.0 <= low <= 5 / 9 <= high <= 1.0
    assert metrics.outcome_rows("validation", "after")[1] == {
        "split": "validation",
        "when": "after",
        "question": "q2",
        "answer": "cat",
        "prediction": "the big cat",
        "exact": False,
        "f1": pytest.approx(2 / 3),
    }
    # no questions: no interval to give
    assert "exact_match_ci" not in score_answers([], [], []).as_dict()


def test_answer_changes_pair_the_same_questions():
    golds = [f"a{i}" for i in range(12)]
    questions = [f"q{i}" for i in range(12)]
    before = score_answers(["wrong"] * 12, golds, questions)
    after = score_answers(golds, golds, questions)
    change = answer_changes(before, after, "validation, after vs before")
    assert change is not None
    exact = change["exact_match"]
    assert exact["method"] == "mcnemar" and exact["difference"] == 1.0 and exact["measurable"] is True
    assert exact["p_value"] == pytest.approx(2 / 2**12)
    assert exact["wording"].startswith("exact match (validation, after vs before): better by 100.0 points")
    assert change["f1"]["method"] == "paired_bootstrap"
    # other questions cannot be paired
    elsewhere = score_answers(golds, golds, [f"other{i}" for i in range(12)])
    assert answer_changes(before, elsewhere, "x") is None

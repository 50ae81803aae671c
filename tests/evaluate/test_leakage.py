"""The leakage check finds a planted duplicate and a planted 8-gram, reports 0 on disjoint data, and
warns only above 1% of the evaluation examples."""

from __future__ import annotations

import pytest

from peaufine.evaluate.leakage import leakage, leakage_warning, word_ngrams


def sentences(prefix: str, count: int) -> list[str]:
    """Distinct texts of 10 words that share no 8-word sequence with another prefix's texts."""
    return [" ".join(f"{prefix}{i}w{j}" for j in range(10)) for i in range(count)]


def test_disjoint_data_reports_nothing() -> None:
    report = leakage(sentences("train", 50), sentences("eval", 20))
    assert (report["exact_duplicates"], report["ngram_overlap"], report["leaking"]) == (0, 0, 0)
    assert report["share"] == 0.0 and report["eval_ngram_share"] == 0.0
    assert report["warning"] is False and report["examples"] == []
    assert leakage_warning(report, "validation") is None
    assert (report["n_train"], report["n_eval"]) == (50, 20)
    assert report["eval_ngrams"] == 20 * 3  # 10 words: 3 eight-grams each


def test_a_planted_duplicate_is_found_whatever_its_case_and_spacing() -> None:
    train = sentences("train", 30)
    evaluation = [*sentences("eval", 9), "  " + train[4].upper().replace(" ", "   ") + "\n"]
    report = leakage(train, evaluation)
    assert report["exact_duplicates"] == 1
    assert report["leaking"] == 1 and report["share"] == pytest.approx(0.1)
    assert report["examples"][0]["index"] == 9 and report["examples"][0]["kind"] == "exact"
    assert report["warning"] is True
    line = leakage_warning(report, "validation")
    assert line is not None and line.startswith("leakage: 1 of 10 validation examples (10.0%)")


def test_a_planted_eight_gram_is_found_and_a_seven_gram_is_not() -> None:
    train = sentences("train", 10)
    shared8 = " ".join(train[2].split()[1:9])  # 8 consecutive words of one training text
    shared7 = " ".join(train[3].split()[1:8])
    evaluation = [*sentences("eval", 8), f"new words then {shared8} and more", f"other {shared7} text"]
    report = leakage(train, evaluation)
    assert report["exact_duplicates"] == 0
    assert report["ngram_overlap"] == 1
    assert report["examples"] == [
        {"index": 8, "kind": "ngram", "text": evaluation[8], "ngram": shared8.lower()}
    ]
    # the planted text has 3 + 8 + 2 = 13 words: 6 eight-grams, one of them in training
    assert report["eval_ngrams_in_train"] == 1
    assert report["eval_ngram_share"] == pytest.approx(1 / report["eval_ngrams"])
    # with n = 7 the shorter copy leaks too
    assert leakage(train, evaluation, n=7)["ngram_overlap"] == 2


def test_the_warning_is_above_one_percent_of_the_evaluation_examples() -> None:
    train = sentences("train", 5)
    # 1 leaking of 100 is exactly 1%: no warning; 2 of 100 is above it
    at = leakage(train, [*sentences("eval", 99), train[0]])
    above = leakage(train, [*sentences("eval", 98), train[0], train[1]])
    assert at["share"] == pytest.approx(0.01) and at["warning"] is False
    assert above["share"] == pytest.approx(0.02) and above["warning"] is True


def test_word_ngrams() -> None:
    assert word_ngrams("a b c", 2) == [("a", "b"), ("b", "c")]
    assert word_ngrams("a b", 3) == []


def test_no_evaluation_examples_is_no_leakage() -> None:
    report = leakage(["some text"], [])
    assert report["share"] == 0.0 and report["warning"] is False

"""Fact recall by hand: completes_with accepts a completion that starts with the answer and ends a word
there, and rejects the rest; fact_recall counts per relation with the generator replaced by a fake."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from peaufine.data.world import Probe
from peaufine.evaluate import recall
from peaufine.evaluate.recall import RecallResult, completes_with, fact_recall
from peaufine.evaluate.stats import wilson_interval


@pytest.mark.parametrize(
    "completion",
    [
        "Tarsk",
        " Tarsk",  # leading whitespace of the completion is dropped
        "\n\t Tarsk.",
        "Tarsk is a city",
        "Tarsk, the capital",
        "Tarsk-on-Sea",  # a hyphen ends the word
        "Tarsk_",  # "_" is not alphanumeric
        "Tarsk\n",
    ],
)
def test_accepts_the_answer_followed_by_a_word_end(completion):
    assert completes_with(completion, "Tarsk")


@pytest.mark.parametrize(
    "completion",
    [
        "Tarskia",  # the answer must end a word
        "Tarsk2",  # digits continue a word
        "Tarské",  # so do non-ASCII letters
        "tarsk",  # case counts
        "TARSK",
        "The Tarsk",  # the completion must start with the answer
        "Tars",  # a truncated answer
        "",
        "   ",
        "Tar sk",
    ],
)
def test_rejects_anything_else(completion):
    assert not completes_with(completion, "Tarsk")


def test_multi_word_answers_must_match_their_spacing():
    assert completes_with(" New Tarsk harbour", "New Tarsk")
    assert not completes_with("New  Tarsk", "New Tarsk")  # inner whitespace is not folded
    assert completes_with("Zürich!", "Zürich")


def test_the_answer_itself_is_not_stripped():
    # only the completion is left-stripped, so an answer with leading whitespace can never match
    assert not completes_with(" Tarsk", " Tarsk")
    assert not completes_with("Tarsk", "Tarsk ")


def test_an_empty_answer_matches_only_before_a_non_word_character():
    assert completes_with("", "")
    assert completes_with(" .", "")
    assert not completes_with("word", "")


def test_recall_result_accuracy_and_dict():
    assert RecallResult(correct=0, total=0).accuracy == 0.0
    result = RecallResult(3, 4, {"capital": (2, 3), "river": (1, 1)}, [("p", "a", "c")] * 25)
    assert result.accuracy == 0.75
    d = result.as_dict()
    assert d["by_relation"] == {"capital": {"correct": 2, "total": 3}, "river": {"correct": 1, "total": 1}}
    assert len(d["misses"]) == 20 and d["misses"][0] == {"prompt": "p", "answer": "a", "completion": "c"}
    # 3 of 4 with Wilson's interval (issue 14); none recalled of none has no interval
    wilson = wilson_interval(3, 4)
    assert d["accuracy_ci"] == [wilson.low, wilson.high]
    assert "accuracy_ci" not in RecallResult(correct=0, total=0).as_dict()


def test_fact_recall_counts_by_relation_with_a_fake_generator(monkeypatch):
    probes = [
        Probe("The capital of Vel is", "Tarsk", "capital:vel"),
        Probe("The capital of Orm is", "New Tarsk", "capital:orm"),
        Probe("The river of Vel is the", "Ulm", "river:vel"),
    ]
    completions = {
        "The capital of Vel is": " Tarsk.",
        "The capital of Orm is": " New Tarskia",  # a longer word: a miss
        "The river of Vel is the": " Ulm, which",
    }
    seen = {}

    def fake_generate(model, tokenizer, prompts, max_new_tokens, temperature):
        seen.update(max_new_tokens=max_new_tokens, temperature=temperature)
        return [completions[p] for p in prompts]

    monkeypatch.setattr(recall, "generate_texts", fake_generate)
    tokenizer = lambda text: SimpleNamespace(input_ids=text.split())  # noqa: E731
    result = fact_recall(None, tokenizer, probes)
    # the longest answer, "New Tarsk", is 2 tokens: one more is generated; greedy decoding
    assert seen == {"max_new_tokens": 3, "temperature": 0.0}
    assert (result.correct, result.total) == (2, 3)
    assert result.by_relation == {"capital": (1, 2), "river": (1, 1)}
    assert list(result.by_relation) == ["capital", "river"]
    assert result.misses == [("The capital of Orm is", "New Tarsk", " New Tarskia")]

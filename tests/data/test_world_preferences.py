"""Tests of the world's annotator: its candidate answers score 3, 2, 1, 0 under its own rule for every
fact, wrong answers stay on type, the rule itself on hand-written responses, and deterministic rankings."""

from __future__ import annotations

import json
import random
import re
from collections import Counter

import pytest

from peaufine.data.world import (
    World,
    candidate_objects,
    generate_world,
    qa_pairs,
    question_texts,
    render_fact,
    templates_for,
)
from peaufine.data.world_preferences import (
    ANNOTATOR_SCORES,
    CANDIDATE_KINDS,
    annotator_score,
    annotator_scores,
    arithmetic_questions,
    candidate_answers,
    preference_rankings,
    preference_records,
)

CITIES = ["Kelburg", "Tresk", "Lomont"]
NUMBERS = [str(n) for n in range(2, 19)]


@pytest.fixture(scope="module")
def world() -> World:
    return generate_world(seed=0)


def _word_count(text: str, word: str) -> int:
    return len(re.findall(r"(?<![\w+])" + re.escape(word.casefold()) + r"(?![\w+])", text.casefold()))


@pytest.mark.parametrize(("seed", "size"), [(0, "default"), (1, "smoke"), (2, "smoke"), (3, "smoke")])
def test_candidates_score_3_2_1_0_for_every_fact_and_phrasing(seed: int, size: str) -> None:
    world = generate_world(seed, size)
    rng = random.Random(f"{seed}:test")
    for fact in world.facts:
        candidates = candidate_objects(world, fact.object_type)
        for question in question_texts(fact):
            responses = candidate_answers(world, fact, question, rng)
            assert list(responses) == list(CANDIDATE_KINDS)
            scores = [annotator_score(responses[kind], fact.object, candidates) for kind in CANDIDATE_KINDS]
            assert scores == [3.0, 2.0, 1.0, 0.0], (fact.id, question, responses)
            assert scores == [ANNOTATOR_SCORES[kind] for kind in CANDIDATE_KINDS]


def test_each_kind_says_what_its_name_says(world: World) -> None:
    rng = random.Random("kinds")
    for fact in world.facts:
        candidates = candidate_objects(world, fact.object_type)
        for question in question_texts(fact):
            responses = candidate_answers(world, fact, question, rng)
            assert responses["concise"] == fact.object
            assert _word_count(responses["rambling"], fact.object) == 1, responses["rambling"]
            assert len(responses["rambling"].split()) >= 8
            assert responses["wrong"] in candidates
            assert responses["wrong"] != fact.object
            assert _word_count(responses["off_topic"], fact.object) == 0
            assert _word_count(responses["off_topic"], fact.subject) == 0, (fact.id, responses["off_topic"])
    sums = [f for f in world.facts if f.relation == "sum"]
    wrong_sums = [candidate_answers(world, f, question_texts(f)[0], rng)["wrong"] for f in sums]
    assert all(w.isdigit() for w in wrong_sums)


def test_candidates_vary_across_questions(world: World) -> None:
    rankings = preference_rankings(world, "qa_train")
    for position in range(1, 4):
        kinds = Counter(r.responses[position] for r in rankings)
        assert len(kinds) >= 5, CANDIDATE_KINDS[position]
    rambling_openings = {r.responses[1].split()[0] for r in rankings if r.fact_id.startswith("capital")}
    assert len(rambling_openings) >= 4
    sentences = {render_fact(f, i) for f in world.facts for i in range(len(templates_for(f.relation)))}
    from_facts = sum(r.responses[3] in sentences for r in rankings)
    assert 0.2 * len(rankings) < from_facts < 0.8 * len(rankings)


def test_rankings_count_one_per_fact_and_phrasing(world: World) -> None:
    for split in ("qa_train", "qa_heldout"):
        rankings = preference_rankings(world, split)
        expected = [(i, q) for i in world.splits[split] for q in question_texts(world.fact(i))]
        assert [(r.fact_id, r.question) for r in rankings] == expected
        one = preference_rankings(world, split, phrasings="one")
        pairs = qa_pairs(world, split)
        assert [(r.fact_id, r.question, r.answer) for r in one] == [
            (p.fact_id, p.question, p.answer) for p in pairs
        ]
    assert len(preference_rankings(world, "qa_train")) == 3 * len(world.splits["qa_train"]) == 450
    for ranking in preference_rankings(world, "qa_heldout"):
        assert ranking.kinds == CANDIDATE_KINDS
        assert ranking.answer == world.fact(ranking.fact_id).object == ranking.responses[0]


def test_rankings_are_deterministic_per_world_split_and_stream(world: World) -> None:
    first = preference_rankings(world, "qa_train")
    assert preference_rankings(generate_world(seed=0), "qa_train") == first
    other_stream = preference_rankings(world, "qa_train", seed_stream="preferences-2")
    assert [r.question for r in other_stream] == [r.question for r in first]
    assert [r.responses for r in other_stream] != [r.responses for r in first]
    other_world = preference_rankings(generate_world(seed=1), "qa_train")
    assert [r.responses for r in other_world] != [r.responses for r in first]


def test_rankings_reject_bad_arguments(world: World) -> None:
    with pytest.raises(ValueError, match="phrasings"):
        preference_rankings(world, "qa_train", phrasings="some")
    with pytest.raises(ValueError, match="world's own random stream"):
        preference_rankings(world, "qa_train", seed_stream="qa")
    with pytest.raises(KeyError, match="qa_test"):
        preference_rankings(world, "qa_test")


@pytest.mark.parametrize(
    ("response", "score"),
    [
        ("Kelburg", 3.0),
        ("  kelburg. ", 3.0),
        ("KELBURG!", 3.0),
        ("The answer is Kelburg, I think.", 2.0),
        ("Kelburg, or maybe Tresk", 2.0),
        ("Tresk", 1.0),
        ("I am sure it is Tresk.", 1.0),
        ("Kelburgton", 0.0),
        ("I would rather talk about the weather.", 0.0),
        ("", 0.0),
        ("   ", 0.0),
    ],
)
def test_annotator_rule_on_hand_written_responses(response: str, score: float) -> None:
    assert annotator_score(response, "Kelburg", CITIES) == score


@pytest.mark.parametrize(
    ("response", "score"),
    [
        ("5", 3.0),
        ("5.", 3.0),
        ("It is 5.", 2.0),
        ("15", 1.0),  # another number of the type, and not "5" inside "15"
        ("25", 0.0),  # not a sum the world has, and still not "5"
        ("7+5", 0.0),  # an expression, not an answer
        ("1.5", 0.0),
        ("It is 12.", 1.0),
        ("five", 0.0),
    ],
)
def test_annotator_rule_matches_whole_numbers(response: str, score: float) -> None:
    assert annotator_score(response, "5", NUMBERS) == score


def test_annotator_scores_look_up_each_questions_fact(world: World) -> None:
    rankings = preference_rankings(world, "qa_heldout")
    pairs = [(r.question, r.answer) for r in rankings for _ in CANDIDATE_KINDS]
    responses = [response for r in rankings for response in r.responses]
    assert annotator_scores(world, pairs, responses) == [3.0, 2.0, 1.0, 0.0] * len(rankings)
    sums = arithmetic_questions(world)
    assert annotator_scores(world, sums, [answer for _, answer in sums]) == [3.0] * len(sums)
    question, answer = sums[0]
    with pytest.raises(ValueError, match="not a question"):
        annotator_scores(world, [("What is 99 plus 1?", "100")], ["100"])
    with pytest.raises(ValueError, match=f"is {answer!r}"):
        annotator_scores(world, [(question, "1")], ["1"])
    with pytest.raises(ValueError, match="2 questions but 1 responses"):
        annotator_scores(world, sums[:2], ["3"])


def test_arithmetic_questions_answer_their_sums(world: World) -> None:
    everything = arithmetic_questions(world)
    n_sums = sum(f.relation == "sum" for f in world.facts)
    assert len(everything) == 3 * n_sums == 120
    for question, answer in everything:
        a, b = map(int, re.findall(r"\d+", question))
        assert int(answer) == a + b, question
    train, heldout = arithmetic_questions(world, "qa_train"), arithmetic_questions(world, "qa_heldout")
    assert sorted(train + heldout) == sorted(everything)
    assert not set(train) & set(heldout)
    with pytest.raises(KeyError, match="qa_test"):
        arithmetic_questions(world, "qa_test")


def test_preference_records_are_json_rankings_best_first(world: World) -> None:
    rankings = preference_rankings(world, "qa_heldout", phrasings="one")
    records = json.loads(json.dumps(preference_records(rankings)))
    assert len(records) == len(rankings)
    for record, ranking in zip(records, rankings, strict=True):
        assert set(record) == {"prompt", "responses", "kinds"}
        assert record["prompt"] == ranking.question
        assert record["responses"] == list(ranking.responses)
        assert record["responses"][0] == ranking.answer
        assert record["kinds"] == list(CANDIDATE_KINDS)

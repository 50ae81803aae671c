"""The world's human annotator: four candidate answers per question (concise, rambling, wrong, off topic),
the rule that ranks them and any other response, and the rankings it writes for preference training."""

from __future__ import annotations

import random
import re
import string
from collections.abc import Sequence
from dataclasses import dataclass

from peaufine.data.world import (
    _WORLD_PRODUCTS,
    Fact,
    World,
    candidate_objects,
    qa_pairs,
    question_texts,
    render_fact,
    templates_for,
)

# The annotator's order, best first, and the score its rule gives each kind of response.
CANDIDATE_KINDS = ("concise", "rambling", "wrong", "off_topic")
ANNOTATOR_SCORES = {"concise": 3.0, "rambling": 2.0, "wrong": 1.0, "off_topic": 0.0}
MAX_ANNOTATOR_SCORE = ANNOTATOR_SCORES["concise"]
PHRASINGS = ("all", "one")

# Correct but long-winded: each holds the object once ({o}); {q} echoes the question. None holds a
# digit, so an arithmetic answer's number is the only one outside the echoed question.
_RAMBLING_TEMPLATES = (
    "Well, let me think. I believe the answer is {o}, although I would have to look it up to be sure.",
    "That is a good question! As far as I can remember, the answer you are looking for is {o}.",
    "Hmm, I am not completely certain, but if I had to pick just one answer I would say {o}.",
    "You asked: {q} After thinking it over carefully, my answer would be {o}. I hope that helps.",
    "{o}, I think. People ask me this quite often, and that is what I usually tell them.",
    "Let me see... {q} The answer should be {o}. Do double-check it, though, in case my memory fails me.",
)
# Responses about nothing in the world. Off-topic answers also borrow unrelated fact sentences.
_DEFLECTIONS = (
    "I would rather talk about the weather.",
    "Did you know that tea tastes best when the water is not quite boiling?",
    "Let us change the subject: what is your favourite colour?",
    "I cannot say. Shall we play a game instead?",
    "That reminds me of a long walk I took by the sea last summer.",
)
# Draws of an unrelated sentence before settling for the first deflection that fits; a draw is
# rejected only when it mentions the fact's subject or an object of its type, so this is never reached
# in practice.
_OFF_TOPIC_DRAWS = 100
_TRAILING = string.punctuation + string.whitespace


@dataclass(frozen=True)
class Ranking:
    """One question's candidate responses, best first, as the annotator ranked them."""

    question: str
    answer: str
    fact_id: str
    responses: tuple[str, ...]
    kinds: tuple[str, ...]


def normalize_response(text: str) -> str:
    """The form the annotator compares: spacing collapsed, case folded, trailing punctuation dropped."""
    return " ".join(text.split()).casefold().rstrip(_TRAILING)


def annotator_score(response: str, answer: str, object_type_candidates: Sequence[str]) -> float:
    """The annotator's rule, for any response: 3 concise and correct, 2 correct but longer, 1 names
    another object of the answer's type (and not the answer), 0 anything else (off topic, empty)."""
    said = normalize_response(response)
    right = normalize_response(answer)
    if not right:
        raise ValueError(f"the answer {answer!r} is empty once normalised")
    if said == right:
        return ANNOTATOR_SCORES["concise"]
    if _contains_word(said, right):
        return ANNOTATOR_SCORES["rambling"]
    for candidate in object_type_candidates:
        other = normalize_response(candidate)
        if other and other != right and _contains_word(said, other):
            return ANNOTATOR_SCORES["wrong"]
    return ANNOTATOR_SCORES["off_topic"]


def annotator_scores(
    world: World, questions_answers: Sequence[tuple[str, str]], responses: Sequence[str]
) -> list[float]:
    """`annotator_score` of each response to its (question, answer), the question naming the fact.

    ValueError when a question is not one of the world's, or its answer is not that fact's object:
    both mean the responses are being scored against the wrong facts.
    """
    if len(questions_answers) != len(responses):
        raise ValueError(f"{len(questions_answers)} questions but {len(responses)} responses")
    facts = {question: fact for fact in world.facts for question in question_texts(fact)}
    scores = []
    for (question, answer), response in zip(questions_answers, responses, strict=True):
        fact = facts.get(question)
        if fact is None:
            raise ValueError(f"{question!r} is not a question of world seed {world.seed}")
        if answer != fact.object:
            raise ValueError(f"the answer to {question!r} is {fact.object!r}, not {answer!r}")
        scores.append(annotator_score(response, answer, candidate_objects(world, fact.object_type)))
    return scores


def candidate_answers(world: World, fact: Fact, question: str, rng: random.Random) -> dict[str, str]:
    """One response of each kind in CANDIDATE_KINDS to `question` about `fact`.

    Draws from `rng` in a fixed order (wrong object, rambling template, off-topic text), so a seeded
    generator gives the same responses every time. Each response scores its kind's ANNOTATOR_SCORES.
    """
    candidates = candidate_objects(world, fact.object_type)
    wrong = rng.choice([c for c in candidates if c != fact.object])
    rambling = rng.choice(_RAMBLING_TEMPLATES).format(o=fact.object, q=question)
    return {
        "concise": fact.object,
        "rambling": rambling,
        "wrong": wrong,
        "off_topic": _off_topic(world, fact, candidates, rng),
    }


def preference_rankings(
    world: World,
    split: str,
    *,
    phrasings: str = "all",
    seed_stream: str = "preferences",
    candidate_sets: int = 1,
) -> list[Ranking]:
    """`candidate_sets` rankings per (fact of `split`, question phrasing), deterministic for (world,
    split, stream); each set is a fresh draw of the wrong, rambling and off-topic answers.

    `phrasings="all"` asks every phrasing of a fact's relation; "one" only the phrasing `qa_pairs`
    chose for it, so the rankings ask what SFT asked.
    """
    if candidate_sets < 1:
        raise ValueError(f"candidate_sets must be >= 1, got {candidate_sets}")
    if phrasings not in PHRASINGS:
        raise ValueError(f"phrasings must be one of {', '.join(PHRASINGS)}, got {phrasings!r}")
    if seed_stream in _WORLD_PRODUCTS:
        raise ValueError(f"stream {seed_stream!r} is the world's own random stream; pick another name")
    if split not in world.splits:
        raise KeyError(f"unknown split {split!r}; the world has {', '.join(world.splits)}")
    if phrasings == "all":
        asked = [(world.fact(i), q) for i in world.splits[split] for q in question_texts(world.fact(i))]
    else:
        asked = [(world.fact(pair.fact_id), pair.question) for pair in qa_pairs(world, split)]
    rng = random.Random(f"{world.seed}:{seed_stream}")
    rankings = []
    for fact, question in asked:
        for _ in range(candidate_sets):
            responses = candidate_answers(world, fact, question, rng)
            rankings.append(
                Ranking(
                    question=question,
                    answer=fact.object,
                    fact_id=fact.id,
                    responses=tuple(responses[kind] for kind in CANDIDATE_KINDS),
                    kinds=CANDIDATE_KINDS,
                )
            )
    return rankings


def arithmetic_questions(world: World, split: str | None = None) -> list[tuple[str, str]]:
    """(question, answer) for every phrasing of the world's sums, of `split` or of all facts."""
    if split is None:
        facts = world.facts
    elif split in world.splits:
        facts = [world.fact(fact_id) for fact_id in world.splits[split]]
    else:
        raise KeyError(f"unknown split {split!r}; the world has {', '.join(world.splits)}")
    return [(q, fact.object) for fact in facts if fact.relation == "sum" for q in question_texts(fact)]


def preference_records(rankings: list[Ranking]) -> list[dict]:
    """The rankings as JSON-ready records of the ranking format: prompt, responses best first, kinds."""
    return [
        {"prompt": ranking.question, "responses": list(ranking.responses), "kinds": list(ranking.kinds)}
        for ranking in rankings
    ]


def _contains_word(text: str, word: str) -> bool:
    """`word` occurs in `text` as whole words: "15", "7+5" and "1.5" do not contain "5"."""
    pattern = r"(?<![\w+])(?<!\d\.)" + re.escape(word) + r"(?![\w+])(?!\.\d)"
    return re.search(pattern, text) is not None


def _off_topic(world: World, fact: Fact, candidates: Sequence[str], rng: random.Random) -> str:
    """A deflection or a sentence about an unrelated fact: never the subject, the answer or its type."""

    def fits(text: str) -> bool:
        said = normalize_response(text)
        return not _contains_word(said, normalize_response(fact.subject)) and (
            annotator_score(text, fact.object, candidates) == ANNOTATOR_SCORES["off_topic"]
        )

    for _ in range(_OFF_TOPIC_DRAWS):
        if rng.random() < 0.5:
            text = rng.choice(_DEFLECTIONS)
        else:
            other = rng.choice(world.facts)
            text = render_fact(other, rng.randrange(len(templates_for(other.relation))))
        if fits(text):
            return text
    for text in _DEFLECTIONS:
        if fits(text):
            return text
    raise ValueError(f"no off-topic response fits fact {fact.id!r}: every deflection names an object")


__all__ = [
    "ANNOTATOR_SCORES",
    "CANDIDATE_KINDS",
    "MAX_ANNOTATOR_SCORE",
    "Ranking",
    "annotator_score",
    "annotator_scores",
    "arithmetic_questions",
    "candidate_answers",
    "normalize_response",
    "preference_rankings",
    "preference_records",
]

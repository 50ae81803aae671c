"""Task metrics for question answering: exact match and token F1 of generated answers (SQuAD-style
normalisation: case, punctuation, articles and spacing do not count)."""

from __future__ import annotations

import re
import string
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from peaufine.data.tokenize import generation_prompt
from peaufine.data.world_preferences import normalize_response
from peaufine.models.generate import generate_texts

if TYPE_CHECKING:
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

_ARTICLES = re.compile(r"\b(a|an|the)\b")


def normalize_answer(text: str) -> str:
    text = text.lower()
    text = "".join(ch for ch in text if ch not in set(string.punctuation))
    text = _ARTICLES.sub(" ", text)
    return " ".join(text.split())


# The ways two answers may be compared, by name: SQuAD's (case, punctuation, articles and spacing do not
# count), and the world annotator's (case, spacing and trailing punctuation do not count).
NORMALISERS = {"squad": normalize_answer, "answer": normalize_response}


def exact_match(prediction: str, gold: str, normaliser: str = "squad") -> bool:
    """The prediction is the gold answer once both are normalised by the named normaliser."""
    normalise = NORMALISERS[normaliser]
    return normalise(prediction) == normalise(gold)


def token_f1(prediction: str, gold: str) -> float:
    pred, ref = normalize_answer(prediction).split(), normalize_answer(gold).split()
    if not pred or not ref:
        return float(pred == ref)
    common = sum((Counter(pred) & Counter(ref)).values())
    if common == 0:
        return 0.0
    precision, recall = common / len(pred), common / len(ref)
    return 2 * precision * recall / (precision + recall)


@dataclass
class AnswerMetrics:
    exact_match: float
    f1: float
    n: int
    samples: list[dict[str, str]] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return {"exact_match": self.exact_match, "f1": self.f1, "n": self.n, "samples": self.samples[:10]}


def score_answers(
    predictions: Sequence[str], golds: Sequence[str], questions: Sequence[str]
) -> AnswerMetrics:
    if not golds:
        return AnswerMetrics(0.0, 0.0, 0)
    em = [exact_match(p, g) for p, g in zip(predictions, golds, strict=True)]
    f1 = [token_f1(p, g) for p, g in zip(predictions, golds, strict=True)]
    samples = [
        {"question": q, "answer": g, "prediction": p}
        for q, g, p in zip(questions, golds, predictions, strict=True)
    ]
    return AnswerMetrics(sum(em) / len(em), sum(f1) / len(f1), len(em), samples)


def answer_questions(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    conversations: Sequence[list[dict[str, str]]],
    max_new_tokens: int = 24,
) -> AnswerMetrics:
    """Greedy answers to each conversation's last user turn, scored against its last assistant turn."""

    prompts = [generation_prompt(tokenizer, c[:-1]) for c in conversations]
    golds = [c[-1]["content"] for c in conversations]
    questions = [next(m["content"] for m in reversed(c) if m["role"] == "user") for c in conversations]
    predictions = generate_texts(model, tokenizer, prompts, max_new_tokens=max_new_tokens, temperature=0.0)
    return score_answers(predictions, golds, questions)

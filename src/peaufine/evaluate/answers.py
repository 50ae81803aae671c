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
from peaufine.evaluate.stats import (
    Estimate,
    bootstrap_interval,
    describe_change,
    mcnemar_exact,
    paired_bootstrap,
    wilson_interval,
)
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
    """Exact match and F1 over n questions, with each question's outcome (`exact`, `f1_scores`, in the
    order of `samples`): the intervals and the paired before/after tests need them."""

    exact_match: float
    f1: float
    n: int
    samples: list[dict[str, str]] = field(default_factory=list)
    exact: list[bool] = field(default_factory=list)
    f1_scores: list[float] = field(default_factory=list)

    def exact_match_estimate(self) -> Estimate:
        """The exact-match rate with its Wilson interval (a proportion)."""
        return wilson_interval(sum(self.exact), len(self.exact))

    def f1_estimate(self) -> Estimate:
        """The mean F1 with a bootstrap interval over questions (F1 is not a proportion)."""
        return bootstrap_interval(self.f1_scores)

    def as_dict(self) -> dict[str, Any]:
        figures: dict[str, Any] = {"exact_match": self.exact_match, "f1": self.f1, "n": self.n}
        if self.exact and self.f1_scores:
            exact, f1 = self.exact_match_estimate(), self.f1_estimate()
            figures["exact_match_ci"] = [exact.low, exact.high]
            figures["f1_ci"] = [f1.low, f1.high]
        return {**figures, "samples": self.samples[:10]}

    def outcome_rows(self, split: str, when: str) -> list[dict[str, Any]]:
        """One answers.jsonl row per question: what `peaufine compare` pairs arms by."""
        return [
            {
                "split": split,
                "when": when,
                "question": sample["question"],
                "answer": sample["answer"],
                "prediction": sample["prediction"],
                "exact": exact,
                "f1": f1,
            }
            for sample, exact, f1 in zip(self.samples, self.exact, self.f1_scores, strict=True)
        ]


def answer_changes(before: AnswerMetrics, after: AnswerMetrics, label: str) -> dict[str, Any] | None:
    """after minus before on the same questions (`label` names them in the wording: "validation, after
    vs before"): McNemar's exact test for exact match, a paired bootstrap for F1, each with its
    wording; None when the two did not answer the same questions."""
    questions = [s["question"] for s in before.samples]
    if not before.exact or questions != [s["question"] for s in after.samples]:
        return None
    exact = mcnemar_exact(before.exact, after.exact)
    f1 = paired_bootstrap(before.f1_scores, after.f1_scores)
    return {
        "exact_match": {**exact.as_dict(), "wording": describe_change(exact, what=f"exact match ({label})")},
        "f1": {**f1.as_dict(), "wording": describe_change(f1, what=f"F1 ({label})")},
    }


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
    return AnswerMetrics(sum(em) / len(em), sum(f1) / len(f1), len(em), samples, em, f1)


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


def change_wordings(figures: dict[str, Any]) -> list[str]:
    """The wording of one split's paired changes in eval.json's answers (after vs before, fine-tuned vs
    from scratch), exact match then F1: what the terminal and the report print."""
    return [
        block[key]["wording"]
        for block in (figures.get("change"), figures.get("vs_from_scratch"))
        if isinstance(block, dict)
        for key in ("exact_match", "f1")
        if isinstance(block.get(key), dict) and block[key].get("wording")
    ]

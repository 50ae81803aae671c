"""Fact recall: does a model complete cloze prompts about its world with the right object, greedily?"""

# A prefix match on the answer's words (completes_with): the continuation must start with the answer and
# end a word there, so "Tarsk" does not count "Tarskia".

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from peaufine.evaluate.stats import wilson_interval
from peaufine.models.generate import generate_texts

if TYPE_CHECKING:
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

    from peaufine.data.world import Probe


@dataclass
class RecallResult:
    correct: int
    total: int
    by_relation: dict[str, tuple[int, int]] = field(default_factory=dict)
    misses: list[tuple[str, str, str]] = field(default_factory=list)  # (prompt, answer, completion)

    @property
    def accuracy(self) -> float:
        return self.correct / self.total if self.total else 0.0

    def as_dict(self) -> dict[str, object]:
        interval = wilson_interval(self.correct, self.total) if self.total else None
        return {
            "accuracy": self.accuracy,
            **({"accuracy_ci": [interval.low, interval.high]} if interval is not None else {}),
            "correct": self.correct,
            "total": self.total,
            "by_relation": {k: {"correct": c, "total": t} for k, (c, t) in self.by_relation.items()},
            "misses": [{"prompt": p, "answer": a, "completion": c} for p, a, c in self.misses[:20]],
        }


def completes_with(completion: str, answer: str) -> bool:
    """The cloze completion recalls `answer`: after its leading spaces it starts with the answer, and a
    word ends there. A prefix match, not an exact match: the model may go on after the answer."""
    text = completion.lstrip()
    if not text.startswith(answer):
        return False
    rest = text[len(answer) :]
    return not rest or not rest[0].isalnum()


def fact_recall(
    model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, probes: Sequence[Probe]
) -> RecallResult:
    answer_tokens = max(len(tokenizer(" " + p.answer).input_ids) for p in probes)
    completions = generate_texts(
        model,
        tokenizer,
        [p.prompt for p in probes],
        max_new_tokens=answer_tokens + 1,
        temperature=0.0,
    )
    counts: dict[str, list[int]] = defaultdict(lambda: [0, 0])
    result = RecallResult(correct=0, total=len(probes))
    for probe, completion in zip(probes, completions, strict=True):
        relation = probe.fact_id.split(":", 1)[0]
        counts[relation][1] += 1
        if completes_with(completion, probe.answer):
            result.correct += 1
            counts[relation][0] += 1
        else:
            result.misses.append((probe.prompt, probe.answer, completion))
    result.by_relation = {k: (c, t) for k, (c, t) in sorted(counts.items())}
    return result

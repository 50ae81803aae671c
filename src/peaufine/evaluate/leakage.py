"""Leakage between training and evaluation examples: exact duplicates (case and spacing aside) and
shared word n-grams (8 by default), with a warning when more than 1% of the evaluation examples leak."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

NGRAM = 8
# Above this share of leaking evaluation examples, a score measures memory as much as skill.
WARN_SHARE = 0.01
EXAMPLES_KEPT = 3  # leaking examples quoted in the report
QUOTE_CHARS = 160


def normalise_text(text: str) -> str:
    """Case and runs of whitespace do not count: 'The  cat' and 'the cat' are one text."""
    return " ".join(text.lower().split())


def word_ngrams(text: str, n: int) -> list[tuple[str, ...]]:
    """The word n-grams of a normalised text, in order (none when it has fewer than n words)."""
    words = text.split()
    return [tuple(words[i : i + n]) for i in range(len(words) - n + 1)]


def _quote(text: str) -> str:
    return text if len(text) <= QUOTE_CHARS else text[: QUOTE_CHARS - 3] + "..."


def leakage(train_texts: Iterable[str], eval_texts: Sequence[str], n: int = NGRAM) -> dict[str, Any]:
    """How much of the evaluation set the training set already contains. An evaluation example leaks
    when its normalised text is a training text, or when it shares any word n-gram with one (n=8:
    long enough that common phrases do not count, short enough to catch a reworded copy). Also the
    share of all evaluation n-grams found in training. `warning` when leaking examples exceed 1%."""
    if n < 1:
        raise ValueError(f"an n-gram needs n >= 1, got {n}")
    train_exact: set[str] = set()
    # hashes, not the n-grams: a large training set's n-grams would hold every word n times over
    train_grams: set[int] = set()
    train_count = 0
    for text in train_texts:
        normal = normalise_text(text)
        train_exact.add(normal)
        train_grams.update(map(hash, word_ngrams(normal, n)))
        train_count += 1
    exact = 0
    overlapping = 0
    leaking = 0
    grams_total = 0
    grams_found = 0
    examples: list[dict[str, Any]] = []
    for index, text in enumerate(eval_texts):
        normal = normalise_text(text)
        grams = word_ngrams(normal, n)
        shared = [g for g in grams if hash(g) in train_grams]
        grams_total += len(grams)
        grams_found += len(shared)
        is_exact = normal in train_exact
        exact += is_exact
        overlapping += bool(shared)
        if is_exact or shared:
            leaking += 1
            if len(examples) < EXAMPLES_KEPT:
                example = {"index": index, "kind": "exact" if is_exact else "ngram", "text": _quote(text)}
                if not is_exact:
                    example["ngram"] = " ".join(shared[0])
                examples.append(example)
    total = len(eval_texts)
    share = leaking / total if total else 0.0
    return {
        "n_train": train_count,
        "n_eval": total,
        "ngram": n,
        "exact_duplicates": exact,
        "exact_share": exact / total if total else 0.0,
        "ngram_overlap": overlapping,
        "ngram_overlap_share": overlapping / total if total else 0.0,
        "eval_ngrams": grams_total,
        "eval_ngrams_in_train": grams_found,
        "eval_ngram_share": grams_found / grams_total if grams_total else 0.0,
        "leaking": leaking,
        "share": share,
        "threshold": WARN_SHARE,
        "warning": share > WARN_SHARE,
        "examples": examples,
    }


def leakage_warning(block: dict[str, Any], split: str) -> str | None:
    """The line a terminal summary or a report prints for one split's leakage block, or None when it
    stays at or under the threshold."""
    if not block.get("warning"):
        return None
    return (
        f"leakage: {block['leaking']} of {block['n_eval']} {split} examples ({block['share']:.1%}) "
        f"overlap the training set ({block['exact_duplicates']} exact duplicates, "
        f"{block['ngram_overlap']} sharing a {block['ngram']}-word sequence); above "
        f"{block['threshold']:.0%}, their score measures memory as much as skill"
    )


def leakage_lines(blocks: Any) -> list[str]:
    """A warning line for each split of eval.json's leakage block whose overlap is above the threshold."""
    if not isinstance(blocks, dict):
        return []
    lines = (leakage_warning(block, split) for split, block in blocks.items() if isinstance(block, dict))
    return [line for line in lines if line]

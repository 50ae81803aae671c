"""One verdict line per arm, worded from the numbers of the same study: a pure function of a table of
numbers, so a test can feed it fixed numbers and read the wording."""

# "LoRA r=8 reaches 97% of full fine-tuning's exact match with 0.4% of the trainable parameters and a
# third of the forgetting": each part is said only when both numbers exist; a difference the paired
# test cannot tell from 0 is said to be no measurable difference, whatever the ratio.

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

METRIC_WORDS = {"exact_match": "exact match", "f1": "F1", "accuracy": "accuracy", "macro_f1": "macro F1"}
# Ratios said in words when within 10% of one of these.
_RATIO_WORDS = (
    (0.25, "a quarter"),
    (1 / 3, "a third"),
    (0.5, "half"),
    (2 / 3, "two thirds"),
    (1.0, "the same"),
    (1.5, "one and a half times"),
    (2.0, "twice"),
    (3.0, "three times"),
)


@dataclass(frozen=True)
class VerdictRow:
    """What a verdict needs of one arm. `metric` None: not measured; `forgetting` None: n/a (a
    classifier, from scratch) or not measured; `versus_reference`: the paired comparison of this arm
    minus the reference arm (PairedComparison.as_dict), None when the runs could not be paired."""

    name: str
    label: str
    metric_name: str
    metric: float | None
    n: int | None
    trainable: int | None
    forgetting: float | None
    versus_reference: dict[str, Any] | None = None
    failed: str | None = None


def ratio_words(ratio: float) -> str:
    for target, words in _RATIO_WORDS:
        if abs(ratio - target) <= 0.1 * target:
            return words
    return f"{ratio:.2g} times"


def _forgetting_part(row: VerdictRow, reference: VerdictRow) -> str:
    if row.forgetting is None:
        return "forgetting n/a"
    if reference.forgetting is None or reference.forgetting <= 0 or row.forgetting < 0:
        return f"forgetting {row.forgetting:+.1%} (general-text loss)"
    if row.forgetting == 0:
        return "no forgetting"
    ratio = row.forgetting / reference.forgetting
    words = ratio_words(ratio)
    if words == "the same":
        return "the same forgetting"
    # "a third of the forgetting", but "twice the forgetting" and "0.29 times the forgetting"
    joint = " of" if ratio < 1 and not words.endswith("times") else ""
    return f"{words}{joint} the forgetting"


def _parameters_part(row: VerdictRow, reference: VerdictRow) -> str:
    if row.trainable is None:
        return "trainable parameters n/a"
    if row.trainable == 0:
        return "no trainable parameters"
    if not reference.trainable:
        return f"{row.trainable:,} trainable parameters"
    share = row.trainable / reference.trainable
    shown = f"{share:.1%}" if share >= 0.001 else f"{share:.2%}"
    return f"{shown} of the trainable parameters"


def _difference_part(row: VerdictRow, reference: VerdictRow) -> str:
    found = row.versus_reference
    if found is None:
        return f"not paired question by question with {reference.label}: not ranked"
    points = 100 * found["difference"]
    evidence = f"95% CI {100 * found['low']:+.1f} to {100 * found['high']:+.1f} points, n={found['n']}"
    if not found["measurable"]:
        return f"no measurable difference from {reference.label} ({evidence})"
    direction = "better" if points > 0 else "worse"
    return f"measurably {direction} than {reference.label} by {abs(points):.1f} points ({evidence})"


def verdict(row: VerdictRow, reference: VerdictRow | None) -> str:
    """The arm's line: its metric against the reference arm's (full fine-tuning, when the study has
    it), its share of the trainable parameters, its forgetting relative to the reference's, and
    whether the paired difference is measurable."""
    metric = METRIC_WORDS.get(row.metric_name, row.metric_name)
    if row.failed:
        return f"{row.label}: failed ({row.failed})"
    if row.metric is None:
        return f"{row.label}: {metric} not measured"
    own = f"{metric} {row.metric:.1%} (n={row.n if row.n is not None else 'n/a'})"
    if reference is None or reference.name == row.name or reference.metric is None:
        if row.trainable is None:
            params = "trainable parameters n/a"
        elif row.trainable == 0:
            params = "no trainable parameters"
        else:
            params = f"{row.trainable:,} trainable parameters"
        forget = "forgetting n/a" if row.forgetting is None else f"forgetting {row.forgetting:+.1%}"
        tail = " (the reference)" if reference is not None and reference.name == row.name else ""
        return f"{row.label}: {own}, {params}, {forget}{tail}"
    if reference.metric > 0:
        reach = (
            f"reaches {row.metric / reference.metric:.0%} of {reference.label}'s {metric} "
            f"({row.metric:.1%} vs {reference.metric:.1%}, n={row.n})"
        )
    else:
        reach = (
            f"has {metric} {row.metric:.1%} (n={row.n}) where {reference.label} has {reference.metric:.1%}"
        )
    return (
        f"{row.label} {reach} with "
        f"{_parameters_part(row, reference)} and {_forgetting_part(row, reference)}; "
        f"{_difference_part(row, reference)}"
    )


def transfer_verdict(
    arm: float | None, baselines: dict[str, float | None], comparisons: dict[str, dict[str, Any] | None]
) -> str:
    """The arm's task metric against the base model zero-shot, few-shot and from scratch: better or
    worse only when the paired difference is measurable (else the raw numbers, said as not measurable)."""
    if arm is None:
        return "n/a"
    parts = []
    for name, value in baselines.items():
        if value is None:
            continue
        found = comparisons.get(name)
        if found is not None and found["measurable"]:
            word = "beats" if found["difference"] > 0 else "loses to"
            parts.append(f"{word} {name} ({arm:.1%} vs {value:.1%})")
        elif found is not None:
            parts.append(f"no measurable difference vs {name} ({arm:.1%} vs {value:.1%})")
        else:
            parts.append(f"{arm:.1%} vs {name} {value:.1%} (not paired)")
    return "; ".join(parts) if parts else "n/a"

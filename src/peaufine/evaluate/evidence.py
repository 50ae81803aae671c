"""How many examples a verdict rests on, and the wording of a verdict resting on too few to mean anything
(fewer than MIN_EXAMPLES): every verdict of a run states its n."""

from __future__ import annotations

# Below this many examples a verdict is noise: one validation example says nothing about overfitting.
MIN_EXAMPLES = 20


def counted(n: int, unit: str, units: str) -> str:
    """'1 validation example', '7 validation examples'."""
    return f"{n} {unit if n == 1 else units}"


def is_meaningful(n: int | None) -> bool | None:
    """Whether n examples are enough for a verdict; None when the count is unknown."""
    return None if n is None else n >= MIN_EXAMPLES


def qualified(verdict: str, n: int | None, unit: str, units: str) -> str:
    """`verdict` with the n it rests on; below MIN_EXAMPLES led by 'not meaningful', the measured
    outcome kept after it (it is still what was measured, only not evidence)."""
    if n is None:
        return verdict
    what = counted(n, unit, units)
    if n < MIN_EXAMPLES:
        return f"not meaningful: it rests on {what} (fewer than {MIN_EXAMPLES}); as measured, {verdict}"
    return f"{verdict} (on {what})"

"""Nested mappings (a recipe, an eval.json) read as flat dotted keys: `train.lr`,
`answers.validation.after.exact_match`, and the finite numbers among them."""

from __future__ import annotations

import math
from collections.abc import Iterator
from typing import Any


def dotted_items(data: Any, *, into_lists: bool = False, prefix: str = "") -> Iterator[tuple[str, Any]]:
    """Every leaf under its dotted key path, depth first in mapping order. A list is a leaf, or with
    `into_lists` a level keyed by index (`samples.0.text`); an empty mapping or list has no leaves."""
    if isinstance(data, dict):
        children: Any = data.items()
    elif into_lists and isinstance(data, list):
        children = enumerate(data)
    else:
        yield prefix, data
        return
    for key, value in children:
        path = f"{prefix}.{key}" if prefix else str(key)
        yield from dotted_items(value, into_lists=into_lists, prefix=path)


def flatten_numbers(data: dict[str, Any]) -> dict[str, float]:
    """Every finite number in a nested mapping, under its dotted key path (lists by index)."""
    return {
        key: float(value)
        for key, value in dotted_items(data, into_lists=True)
        if isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)
    }

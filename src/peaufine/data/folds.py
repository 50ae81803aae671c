"""k-fold cross-validation splits: every example (or every prompt's group) in exactly one fold."""

# The draw is the one the validation split uses (PCG64's raw stream), so folds are the same for the
# same seed on every machine; fold sizes differ by at most one group.

from __future__ import annotations

from collections.abc import Hashable, Sequence
from typing import TYPE_CHECKING, Any, TypeVar

from peaufine.errors import DataError

if TYPE_CHECKING:
    from peaufine.recipe import DataBlock

T = TypeVar("T")
Fold = tuple[int, int]  # (number of folds k, index of the validation fold)


def recipe_fold(data: DataBlock) -> Fold | None:
    """The recipe's (k, fold) when it asks for cross-validation, else None."""
    folds = data.cross_validation.folds
    return None if folds is None else (folds, data.cross_validation.fold)


def check_validation_fraction(fraction: float) -> None:
    """data.validation_fraction must be in [0, 1): 0 holds nothing out, 1 would leave nothing to train on."""
    if not 0.0 <= fraction < 1.0:
        raise DataError(
            f"data.validation_fraction is {fraction!r}",
            hint="use a number from 0 (no validation) up to, not including, 1",
        )


def held_out(n: int, fraction: float, seed: int) -> list[int]:
    """The positions (of n >= 2 items or groups) the validation split holds out: round(n * fraction),
    at least 1 and at most n - 1, drawn from PCG64's raw stream, which numpy keeps stable across versions,
    so a recipe's validation set does not move when the environment is upgraded."""
    import numpy as np

    n_validation = min(max(1, round(n * fraction)), n - 1)
    order = np.argsort(np.random.PCG64(seed).random_raw(n), kind="stable")
    return order[:n_validation].tolist()


def fold_of_groups(n_groups: int, folds: int, seed: int) -> list[int]:
    """The fold of each of `n_groups` groups: a seeded shuffle dealt round-robin into k folds."""
    import numpy as np

    if n_groups < folds:
        raise DataError(
            f"cannot make {folds} folds from {n_groups} group(s) (examples, or prompts for preferences)",
            hint="use fewer folds (data.cross_validation.folds / --folds) or more data",
        )
    order = np.argsort(np.random.PCG64(seed).random_raw(n_groups), kind="stable")
    assignment = [0] * n_groups
    for position, group in enumerate(order.tolist()):
        assignment[group] = position % folds
    return assignment


def fold_split(
    items: Sequence[T], keys: Sequence[Hashable], fold: Fold, seed: int
) -> tuple[list[T], list[T]]:
    """(train, validation) for fold `fold[1]` of `fold[0]`: items sharing a key stay together, and
    each side keeps the items' order."""
    folds, index = fold
    groups = list(dict.fromkeys(keys))
    of_group = dict(zip(groups, fold_of_groups(len(groups), folds, seed), strict=True))
    train = [item for item, key in zip(items, keys, strict=True) if of_group[key] != index]
    validation = [item for item, key in zip(items, keys, strict=True) if of_group[key] == index]
    return train, validation


def training_subset(records: list[Any], fraction: float, seed: int) -> list[Any]:
    """The first `fraction` of `records` in a seeded shuffle (round(n * fraction), at least 1), in file
    order: data.train_fraction's learning curve. The shuffle does not depend on the fraction, so a
    smaller fraction's examples are a subset of a larger one's; 1.0 returns every record unchanged."""
    import numpy as np

    if fraction >= 1.0 or not records:
        return list(records)
    n = len(records)
    keep = min(n, max(1, round(n * fraction)))
    # a stream of its own ([seed, 1]): independent of the validation split's draw from `seed`
    order = np.argsort(np.random.PCG64([seed, 1]).random_raw(n), kind="stable")
    chosen = set(order[:keep].tolist())
    return [r for i, r in enumerate(records) if i in chosen]

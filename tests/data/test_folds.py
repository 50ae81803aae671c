"""k-fold splits: the folds' validation sides are disjoint and cover the data, groups stay whole."""

from __future__ import annotations

import pytest

from peaufine.data.folds import fold_of_groups, fold_split
from peaufine.data.preferences import PreferencePair, split_pairs_by_prompt
from peaufine.data.records import split_records
from peaufine.errors import DataError, RecipeError
from peaufine.recipe import validate_recipe


@pytest.mark.parametrize(("n", "k"), [(10, 2), (23, 5), (7, 7)])
def test_validation_folds_are_disjoint_and_cover_the_data(n, k):
    items = list(range(n))
    seen: list[int] = []
    for fold in range(k):
        train, validation = split_records(items, 0.3, seed=4, fold=(k, fold))
        assert sorted(train + validation) == items  # each fold's two sides partition the data
        assert train == sorted(train) and validation == sorted(validation)  # file order kept
        assert n // k <= len(validation) <= n // k + 1
        seen += validation
    assert sorted(seen) == items  # every item validated exactly once


def test_folds_depend_on_the_seed_only():
    assert fold_of_groups(20, 4, seed=1) == fold_of_groups(20, 4, seed=1)
    assert fold_of_groups(20, 4, seed=1) != fold_of_groups(20, 4, seed=2)


def test_items_sharing_a_key_stay_in_one_fold():
    keys = [i // 3 for i in range(30)]  # ten groups of three
    items = list(range(30))
    for fold in range(4):
        _, validation = fold_split(items, keys, (4, fold), seed=0)
        groups = {keys[i] for i in validation}
        assert validation == [i for i in items if keys[i] in groups]


def test_preference_folds_split_by_prompt():
    pairs = [
        PreferencePair(prompt=f"question {q}", chosen=f"good {j}", rejected=f"bad {j}")
        for q in range(9)
        for j in range(3)
    ]
    prompts_seen: list[str] = []
    for fold in range(3):
        train, validation = split_pairs_by_prompt(pairs, 0.1, seed=0, fold=(3, fold))
        val_prompts = {p.prompt for p in validation}
        assert not val_prompts & {p.prompt for p in train}
        assert len(validation) == 3 * len(val_prompts)
        prompts_seen += sorted(val_prompts)
    assert sorted(prompts_seen) == sorted({p.prompt for p in pairs})


def test_more_folds_than_examples_is_refused():
    with pytest.raises(DataError, match="cannot make 5 folds from 3"):
        split_records([1, 2, 3], 0.1, seed=0, fold=(5, 0))


def test_the_recipe_refuses_a_fold_that_does_not_exist():
    with pytest.raises(RecipeError, match="fold 3 does not exist with 3 folds"):
        validate_recipe({"data": {"cross_validation": {"folds": 3, "fold": 3}}})
    with pytest.raises(RecipeError, match="cross_validation"):
        validate_recipe({"data": {"cross_validation": {"folds": 1}}})


def test_training_subset_is_seeded_nested_and_keeps_file_order():
    from peaufine.data.folds import training_subset

    records = list(range(100))
    tenth, third = training_subset(records, 0.1, 0), training_subset(records, 0.3, 0)
    assert len(tenth) == 10 and len(third) == 30
    assert set(tenth) < set(third)  # a smaller fraction is a subset of a larger one
    assert tenth == sorted(tenth)  # file order
    assert training_subset(records, 0.1, 0) == tenth  # the same draw for the same seed
    assert training_subset(records, 0.1, 1) != tenth  # another seed, another draw
    assert tenth != list(range(10))  # shuffled, not the file's first tenth
    assert training_subset(records, 1.0, 0) == records
    assert training_subset(records[:3], 0.01, 0) != []  # at least one example


def test_train_fraction_is_a_recipe_key_in_0_1():
    assert validate_recipe({"data": {"train_fraction": 0.3}}).data.train_fraction == 0.3
    for bad in (0.0, 1.5):
        with pytest.raises(RecipeError, match=r"data\.train_fraction"):
            validate_recipe({"data": {"train_fraction": bad}})

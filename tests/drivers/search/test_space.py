"""The search space file: bad specs name the file and the key, keys and bounds the recipe refuses fail
before any trial, and the example space fits the packaged SFT recipe."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from search_files import write

from peaufine.drivers.search.space import baseline_params, check_space_keys, load_space
from peaufine.errors import RecipeError
from peaufine.recipe import load_recipe

BAD_SPACES = [
    ("train.lr: {type: floats, low: 1, high: 2}", "train.lr", "unknown type 'floats'"),
    ("train.lr: {type: float, low: 0.1, high: 0.01}", "train.lr", "must be below `high`"),
    ("train.lr: {type: float, low: 0, high: 0.01, log: true}", "train.lr", "needs `low` > 0"),
    ("model.adapter.r: {type: categorical, choices: []}", "model.adapter.r", "non-empty list"),
    ("train.lr: {type: float, lo: 0.1, high: 1}", "train.lr", "unknown field 'lo'"),
    ("train.lr: {type: float, low: 1.0e-4, high: 1.0e-2, log: true, step: 1.0e-4}", "train.lr", "cannot be"),
    ("train.max_steps: {type: int, low: 1.5, high: 8}", "train.max_steps", "whole-number"),
    ("train.lr: 0.001", "train.lr", "expected a mapping"),
]


@pytest.mark.parametrize(("text", "key", "problem"), BAD_SPACES)
def test_a_bad_space_file_names_the_file_and_key(tmp_path, text, key, problem):
    space_file = write(tmp_path / "space.yaml", text)
    with pytest.raises(RecipeError) as error:
        load_space(space_file)
    message = str(error.value)
    assert str(space_file) in message and f"'{key}'" in message and problem in message
    assert "\n" not in message


def test_a_space_key_the_recipe_refuses_fails_before_any_trial(tmp_path):
    space_file = write(tmp_path / "space.yaml", "model.adapter.rr: {type: categorical, choices: [4, 8]}")
    space = load_space(space_file)
    with pytest.raises(RecipeError) as error:
        check_space_keys(space, {"stage": "sft"}, str(space_file))
    message = str(error.value)
    assert str(space_file) in message and "model.adapter.rr" in message
    assert "did you mean 'model.adapter.r'" in message

    # a learning rate below the recipe's fixed floor is refused at the range's low end
    space_file = write(tmp_path / "lr.yaml", "train.lr: {type: float, low: 1.0e-5, high: 1.0e-3, log: true}")
    with pytest.raises(RecipeError, match=r"min_lr \(5e-05\) must not exceed lr \(1e-05\)"):
        check_space_keys(load_space(space_file), {"train": {"min_lr": 5e-5}}, str(space_file))


def test_the_example_sft_space_is_valid_for_the_packaged_sft_recipe():
    from importlib import resources

    space = load_space(Path(__file__).parents[3] / "recipes" / "search-sft-space.yaml")
    assert set(space) == {"train.lr", "model.adapter.r", "train.weight_decay"}
    recipe_file = resources.files("peaufine") / "recipes" / "world-sft.yaml"
    with resources.as_file(recipe_file) as path:
        base = yaml.safe_load(Path(path).read_text(encoding="utf-8"))
        recipe = load_recipe(Path(path))
    check_space_keys(space, base, "search-sft-space.yaml")
    params, notes = baseline_params(space, recipe)
    assert params == {"train.lr": 5e-4, "model.adapter.r": 16, "train.weight_decay": 0.0} and notes == []

"""What a user's recipe file can get wrong before any key is read: a document that is not a mapping,
keys spelt as other tools spell them, and overrides on the command line."""

from __future__ import annotations

import pytest

from peaufine.errors import RecipeError
from peaufine.recipe import load_recipe
from test_cli import run_cli

# YAML documents that parse but are not a mapping of blocks
NOT_MAPPINGS = {
    "a list": "- model\n- data\n",
    "a string": "train lr 3e-4\n",
    "a number": "42\n",
    "an empty list": "[]\n",
    "zero": "0\n",
    "an empty string": "''\n",
}


@pytest.mark.parametrize("case", list(NOT_MAPPINGS))
@pytest.mark.parametrize("stage", [None, "pretrain", "sft", "dpo"])
def test_a_recipe_that_is_not_a_mapping_is_refused_naming_the_file(tmp_path, case, stage):
    path = tmp_path / "recipe.yaml"
    path.write_text(NOT_MAPPINGS[case], encoding="utf-8")
    with pytest.raises(RecipeError, match="mapping") as caught:
        load_recipe(path, ["train.lr=1e-3"], stage=stage)
    assert str(path) in str(caught.value)


@pytest.mark.parametrize("command", ["pretrain", "sft", "reward", "rl", "run"])
def test_every_command_reading_yaml_refuses_a_list_without_a_traceback(
    tmp_path, command, capsys, monkeypatch
):
    path = tmp_path / "recipe.yaml"
    path.write_text(NOT_MAPPINGS["a list"], encoding="utf-8")
    out = tmp_path / "out"
    code, _, err = run_cli([command, str(path), "--out", str(out)], capsys, monkeypatch)
    assert code == 2 and "Traceback" not in err, err
    squashed = "".join(err.split())  # the terminal wraps long paths anywhere
    assert "recipe.yaml" in squashed and "mapping" in squashed, err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["recipe.yaml"]


def test_an_empty_recipe_file_is_the_defaults(tmp_path):
    """The negative control: an empty file (or only comments) is no mistake."""
    path = tmp_path / "recipe.yaml"
    path.write_text("# nothing yet\n", encoding="utf-8")
    assert load_recipe(path, stage="pretrain") == load_recipe(None, stage="pretrain")

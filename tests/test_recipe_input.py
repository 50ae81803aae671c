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


def recipe_error(data: dict, tmp_path, overrides: tuple[str, ...] = ()) -> str:
    """The message load_recipe gives for a recipe file holding `data` (with `overrides`)."""
    import yaml

    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(data), encoding="utf-8")
    with pytest.raises(RecipeError) as caught:
        load_recipe(path, list(overrides))
    return " ".join(str(caught.value).split())


def nested(dotted: str, value: object) -> dict:
    """{"a": {"b": value}} from "a.b"."""
    data: object = value
    for part in reversed(dotted.split(".")):
        data = {part: data}
    return data  # type: ignore[return-value]


def schema_keys(block=None, prefix: str = "") -> list[str]:
    """Every key path of the recipe schema, blocks included."""
    from pydantic import BaseModel

    from peaufine.recipe import Recipe

    block = block or Recipe
    keys = []
    for name, field in block.model_fields.items():
        keys.append(prefix + name)
        annotation = field.annotation
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            keys += schema_keys(annotation, prefix + name + ".")
    return keys


# keys as other tools (Transformers, TRL, PEFT, nanoGPT, axolotl) spell them, and typos of them,
# wherever a user puts them: the message names our key
OTHER_SPELLINGS = [
    ("train.learning_rate", "train.lr"),
    ("train.lerning_rate", "train.lr"),
    ("learning_rate", "train.lr"),
    ("train.num_train_epochs", "train.max_steps"),
    ("train.epochs", "train.max_steps"),
    ("train.per_device_train_batch_size", "train.micro_batch_size"),
    ("train.gradient_accumulation_steps", "train.batch_size"),
    ("train.max_grad_norm", "train.grad_clip"),
    ("train.lr_scheduler_type", "train.schedule"),
    ("train.warmup_ratio", "train.warmup_steps"),
    ("model.lora_r", "model.adapter.r"),
    ("model.adapter.lora_alpha", "model.adapter.alpha"),
    ("lora_dropout", "model.adapter.dropout"),
    ("data.max_seq_length", "data.max_length"),
    ("train.max_length", "data.max_length"),
    ("model.model_name_or_path", "model.source"),
    ("train.gradient_checkpointing", "train.activation_checkpointing"),
]


@pytest.mark.parametrize(("written", "ours"), OTHER_SPELLINGS)
def test_keys_spelt_as_other_tools_spell_them_get_ours(tmp_path, written, ours):
    assert f"did you mean '{ours}'" in recipe_error(nested(written, 1), tmp_path)


def test_every_synonym_names_a_key_of_the_schema_and_is_suggested_wherever_it_is_put(tmp_path):
    from peaufine.recipe import KEY_SYNONYMS

    keys = set(schema_keys())
    assert len(KEY_SYNONYMS) >= 30
    for name, ours in KEY_SYNONYMS.items():
        assert ours in keys, f"{name} -> {ours}, not a key of the recipe"
        assert name.split(".")[-1] not in {k.split(".")[-1] for k in keys}, f"{name} is one of our keys"
        for block in ("", "train.", "model.", ours.rpartition(".")[0] + "."):
            message = recipe_error(nested(block.lstrip(".") + name, 1), tmp_path)
            assert f"did you mean '{ours}'" in message, (block, name, message)


def typos(word: str) -> list[str]:
    """A letter dropped and two neighbours swapped, in the middle of `word`."""
    i = len(word) // 2
    return [word[:i] + word[i + 1 :], word[: i - 1] + word[i] + word[i - 1] + word[i + 1 :]]


def test_a_typo_of_any_key_suggests_that_key(tmp_path):
    for key in schema_keys():
        block, _, leaf = key.rpartition(".")
        if len(leaf) < 6:
            continue
        for typo in typos(leaf):
            if typo == leaf:
                continue
            written = f"{block}.{typo}" if block else typo
            message = recipe_error(nested(written, 1), tmp_path)
            assert f"did you mean '{key}'" in message, message


def test_a_bad_set_value_names_the_set_option_not_the_file(tmp_path):
    for overrides in (("train.lr=-1",), ("train.lrr=3e-4",), ("model.adapter.r=zero", "train.lr=1e-3")):
        message = recipe_error({"train": {"max_steps": 10}}, tmp_path, overrides)
        assert f"--set '{overrides[0]}'" in message, message
        assert "recipe.yaml" not in message, message
    # the negative control: a bad value in the file is the file's
    message = recipe_error({"train": {"lr": -1}}, tmp_path, ("train.max_steps=10",))
    assert "recipe.yaml" in message and "--set" not in message, message


@pytest.mark.parametrize(
    ("text", "line", "key"),
    [
        ("train:\n  lr: 1.0e-3\n  max_steps: 10\ntrain:\n  lr: 5\n", 4, "train"),
        ("train:\n  lr: 1.0e-3\n  lr: 3.0e-4\n", 3, "train.lr"),
        ("model:\n  adapter:\n    kind: lora\n    r: 8\n    r: 16\n", 5, "model.adapter.r"),
    ],
)
def test_a_key_written_twice_is_refused_naming_its_line(tmp_path, text, line, key):
    path = tmp_path / "recipe.yaml"
    path.write_text(text, encoding="utf-8")
    with pytest.raises(RecipeError) as caught:
        load_recipe(path)
    message = " ".join(str(caught.value).split())
    assert f"recipe.yaml, line {line}" in message and f"'{key}'" in message and "twice" in message


def test_the_same_name_in_two_blocks_is_no_duplicate(tmp_path):
    """The negative control: `seed` in train and in data.world are two keys."""
    path = tmp_path / "recipe.yaml"
    path.write_text("train:\n  seed: 3\ndata:\n  world:\n    seed: 4\n", encoding="utf-8")
    recipe = load_recipe(path)
    assert (recipe.train.seed, recipe.data.world.seed) == (3, 4)


@pytest.mark.parametrize(
    "key",
    ["train.lr", "train.grad_clip", "method.dpo.beta", "method.rl.kl_coef", "eval.forgetting.threshold"],
)
def test_an_infinite_number_is_refused(tmp_path, key):
    import yaml

    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(nested(key, "X")).replace("X", ".inf"), encoding="utf-8")
    with pytest.raises(RecipeError) as caught:
        load_recipe(path)
    message = " ".join(str(caught.value).split())
    assert f"'{key}'" in message and "finite" in message, message


@pytest.mark.parametrize(
    ("data", "key"),
    [
        ({"data": {"source": [1, 2]}}, "data.source"),
        ({"data": {"source": {"a": 1}}}, "data.source"),
        ({"model": {"adapter": {"target_modules": 5}}}, "model.adapter.target_modules"),
        ({"train": {"min_lr": "low"}}, "train.min_lr"),  # an optional number: one type, already one line
    ],
)
def test_a_bad_value_for_a_key_of_several_types_is_one_line_naming_the_key(tmp_path, data, key):
    message = recipe_error(data, tmp_path)
    assert message.count("bad value") == 1, message
    assert f"bad value for '{key}'" in message, message
    assert "[" not in message.split("bad value for")[1].split("'")[1], message  # no type tag in the key

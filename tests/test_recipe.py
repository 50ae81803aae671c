"""The recipe schema: defaults, overrides, and errors that name key paths and the closest valid key."""

from __future__ import annotations

from pathlib import Path

import pytest

from peaufine.errors import RecipeError
from peaufine.recipe import (
    METHOD_OF_STAGE,
    Recipe,
    apply_overrides,
    load_recipe,
    parse_override,
    read_yaml,
    validate_recipe,
)


def test_defaults_validate_and_round_trip_through_yaml(tmp_path):
    recipe = load_recipe(None)
    path = tmp_path / "r.yaml"
    path.write_text(recipe.to_yaml(), encoding="utf-8")
    assert load_recipe(path) == recipe


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("train.lr=3e-4", 3e-4),
        ("train.max_steps=10", 10),
        ("train.compile=true", True),
        ("model.source=gpt2-tiny", "gpt2-tiny"),
        ("train.betas=[0.9, 0.99]", [0.9, 0.99]),
    ],
)
def test_overrides_parse_values_as_yaml_numbers_included(text, expected):
    assert parse_override(text)[1] == expected


def test_overrides_reach_nested_blocks():
    recipe = load_recipe(
        None, ["train.lr=3e-4", "eval.early_stopping.patience=2", "model.config.num_hidden_layers=6"]
    )
    assert recipe.train.lr == 3e-4
    assert recipe.eval.early_stopping.patience == 2
    assert recipe.model.config == {"num_hidden_layers": 6}


def test_an_override_into_a_value_is_an_error():
    with pytest.raises(RecipeError, match=r"'train\.lr' is a value"):
        apply_overrides({"train": {"lr": 1.0}}, ["train.lr.x=1"])


@pytest.mark.parametrize(
    ("data", "needles"),
    [
        ({"train": {"lerning_rate": 1}}, ["train.lerning_rate"]),
        ({"train": {"warmup": 5}}, ["train.warmup", "train.warmup_steps"]),
        ({"evl": {}}, ["'evl'", "did you mean 'eval'"]),
        ({"eval": {"early_stopping": {"patiense": 2}}}, ["did you mean 'eval.early_stopping.patience'"]),
        ({"train": {"lr": -1}}, ["train.lr", "greater than 0"]),
        ({"train": {"precision": "fp8"}}, ["train.precision", "'bf16'"]),
        ({"train": {"lr": 1e-3, "min_lr": 1e-2}}, ["min_lr"]),
        ({"data": {"anomalies": {"bad_json": "ignore"}}}, ["data.anomalies.bad_json", "'skip'"]),
    ],
)
def test_errors_name_the_key(data, needles):
    with pytest.raises(RecipeError) as caught:
        validate_recipe(data, "my.yaml")
    message = str(caught.value)
    assert message.startswith("my.yaml")
    for needle in needles:
        assert needle in message


def test_a_yaml_syntax_error_names_the_line(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("train:\n  lr: 1\n   max_steps: [\n", encoding="utf-8")
    with pytest.raises(RecipeError, match=r"bad\.yaml, line \d"):
        load_recipe(path)


def test_a_missing_recipe_file():
    with pytest.raises(RecipeError, match="not found"):
        load_recipe(__import__("pathlib").Path("no/such/recipe.yaml"))


def test_schema_forbids_unknown_keys_in_every_block():
    for name, field in Recipe.model_fields.items():
        annotation = field.annotation
        if isinstance(annotation, type) and hasattr(annotation, "model_config"):
            assert annotation.model_config.get("extra") == "forbid", name


@pytest.mark.parametrize("stage", ["pretrain", "sft", "classify", "reward", "dpo", "rl"])
def test_method_name_is_the_stages_and_a_mismatch_is_refused(stage):
    recipe = validate_recipe({"stage": stage})
    assert recipe.method.name == METHOD_OF_STAGE[stage]  # set by the stage when left out
    assert validate_recipe({"stage": stage, "method": {"name": METHOD_OF_STAGE[stage]}}) == recipe
    other = "dpo" if METHOD_OF_STAGE[stage] != "dpo" else "rl"
    with pytest.raises(RecipeError, match=rf"method.name is '{other}', but stage '{stage}'"):
        validate_recipe({"stage": stage, "method": {"name": other}})


# -- warmup against max_steps (issue 13, item 6) ------------------------------------------------------------
PACKAGED = sorted((Path(__file__).parents[1] / "src" / "peaufine" / "recipes").glob("*.yaml")) + sorted(
    (Path(__file__).parents[1] / "recipes").glob("*.yaml")
)


@pytest.mark.parametrize(("warmup", "steps"), [(50, 50), (100, 50), (1, 1)])
def test_a_warmup_as_long_as_the_run_is_refused_naming_both_keys(tmp_path, warmup, steps):
    # written in the file, and given by --set: both are the user's choice, refused alike, in every stage
    path = tmp_path / "r.yaml"
    path.write_text(f"train:\n  max_steps: {steps}\n  warmup_steps: {warmup}\n", encoding="utf-8")
    by_set = [f"train.max_steps={steps}", f"train.warmup_steps={warmup}"]
    for stage in sorted(METHOD_OF_STAGE):
        for source, overrides in ((path, []), (None, by_set)):
            with pytest.raises(RecipeError) as caught:
                load_recipe(source, overrides, stage=stage)
            message = str(caught.value)
            assert "train.warmup_steps" in message and "train.max_steps" in message
            assert f"({warmup})" in message and f"({steps})" in message


@pytest.mark.parametrize("steps", [1, 5, 50, 99, 100, 150])
def test_the_default_warmup_always_ends_before_the_run_does(steps):
    # left out, the warmup is a tenth of the run at most: every run reaches its peak lr, in every stage
    for stage in sorted(METHOD_OF_STAGE):
        recipe = load_recipe(None, [f"train.max_steps={steps}"], stage=stage)
        assert recipe.train.warmup_steps < steps, stage
        assert recipe.train.warmup_steps <= steps // 10, stage


def test_the_default_warmup_of_a_default_length_run_is_unchanged():
    # the stages' own defaults (and their lengths) are as before: 10% of the run, capped by the stage
    warmups = {stage: load_recipe(None, stage=stage).train.warmup_steps for stage in METHOD_OF_STAGE}
    assert warmups == {"pretrain": 100, "sft": 20, "classify": 30, "reward": 20, "dpo": 10, "rl": 0}


def test_an_explicit_warmup_shorter_than_the_run_is_kept():
    recipe = load_recipe(None, ["train.max_steps=50", "train.warmup_steps=49"])
    assert recipe.train.warmup_steps == 49


# a pipeline or a search space is not a stage's recipe: it has no train block of its own
STAGE_RECIPES = [p for p in PACKAGED if "stages" not in read_yaml(p) and "train" in read_yaml(p)]


def test_the_packaged_recipes_include_stage_recipes():
    assert len(STAGE_RECIPES) >= 3


@pytest.mark.parametrize("path", STAGE_RECIPES, ids=lambda p: p.name)
def test_every_packaged_recipe_warms_up_before_it_ends(path):
    data = read_yaml(path)
    recipe = validate_recipe(data, str(path))  # pipeline references (${reward}) are only strings here
    assert recipe.train.warmup_steps < recipe.train.max_steps


@pytest.mark.parametrize(
    ("adapter", "needles"),
    [
        (
            {"kind": "bottleneck", "r": 4},
            ["model.adapter", "r is a setting of kind lora", "not of kind bottleneck"],
        ),
        ({"kind": "lora", "size": 16}, ["size is a setting of kind bottleneck"]),
        ({"kind": "none", "num_virtual_tokens": 8}, ["num_virtual_tokens", "prompt_tuning"]),
        ({"kind": "prompt_tuning", "prompt_init": "text"}, ["prompt_init_text"]),
        ({"kind": "bottleneck", "placement": "after"}, ["model.adapter.placement", "'houlsby'"]),
    ],
)
def test_a_setting_of_another_adapter_kind_is_refused_naming_both(adapter, needles):
    with pytest.raises(RecipeError) as caught:
        validate_recipe(
            {"stage": "sft", "model": {"adapter": adapter}, "data": {"packing": False}}, "my.yaml"
        )
    for needle in needles:
        assert needle in str(caught.value)


def test_a_kinds_own_settings_and_a_resolved_recipe_pass():
    recipe = validate_recipe(
        {"stage": "sft", "model": {"adapter": {"kind": "bottleneck", "size": 8, "placement": "pfeiffer"}}},
        "my.yaml",
    )
    # the resolved recipe writes every key back, other kinds' at their defaults: it must load again
    again = validate_recipe(recipe.model_dump(mode="json"), "recipe.yaml")
    assert again.model.adapter.size == 8 and again.model.adapter.kind == "bottleneck"


def test_a_soft_prompt_refuses_packed_rows_asked_for_and_unpacks_the_default():
    soft = {"stage": "sft", "model": {"adapter": {"kind": "prompt_tuning"}}}
    with pytest.raises(RecipeError, match=r"data\.packing"):
        validate_recipe({**soft, "data": {"packing": True}}, "my.yaml")
    assert validate_recipe({**soft, "data": {"packing": False}}, "my.yaml").data.packing is False
    resolved = validate_recipe(soft, "my.yaml")
    assert resolved.data.packing is False  # the default, switched off, and written so in recipe.yaml
    assert validate_recipe(resolved.model_dump(mode="json"), "recipe.yaml").data.packing is False
    assert validate_recipe({"stage": "sft"}, "my.yaml").data.packing is True  # other kinds keep packing

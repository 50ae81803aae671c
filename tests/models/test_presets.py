"""Presets build the configs they promise; overrides and names are checked against transformers."""

from __future__ import annotations

import pytest

from peaufine.errors import ModelError
from peaufine.models.budget import count_parameters, meta_model
from peaufine.models.presets import PRESETS, build_config, get_preset, preset_names


def test_every_preset_builds_a_config_of_its_model_type() -> None:
    for name in preset_names():
        config = build_config(name)
        assert config.model_type == PRESETS[name].model_type
        assert config._attn_implementation == "sdpa"


def test_unknown_preset_names_closest_and_all_presets() -> None:
    with pytest.raises(ModelError) as err:
        get_preset("llama-tny")
    message = str(err.value)
    assert "did you mean 'llama-tiny'" in message
    for name in preset_names():
        assert name in message


def test_override_replaces_preset_field() -> None:
    config = build_config("llama-tiny", {"num_hidden_layers": 2, "hidden_size": 64})
    assert config.num_hidden_layers == 2
    assert config.hidden_size == 64
    # head_dim follows the overridden width instead of keeping the preset's 128 / 4.
    assert config.head_dim == 16


def test_override_by_alias_replaces_gpt2_field() -> None:
    # GPT-2 calls it n_embd; a recipe may say hidden_size and must get what it asked for.
    config = build_config("gpt2-tiny", {"hidden_size": 64})
    assert config.n_embd == 64


def test_unknown_override_names_key_and_closest_field() -> None:
    with pytest.raises(ModelError) as err:
        build_config("llama-tiny", {"num_hiden_layers": 2})
    assert "'num_hiden_layers'" in str(err.value)
    assert "closest field: 'num_hidden_layers'" in str(err.value)


def test_invalid_override_value_is_a_model_error() -> None:
    with pytest.raises(ModelError, match="multiple of the number of attention heads"):
        build_config("llama-tiny", {"hidden_size": 130})


def test_tokenizer_vocab_size_replaces_preset_and_override_may_only_pad_it() -> None:
    assert build_config("gpt2", vocab_size=1000).vocab_size == 1000
    assert build_config("gpt2", {"vocab_size": 1024}, vocab_size=1000).vocab_size == 1024
    with pytest.raises(ModelError, match="smaller than the tokenizer"):
        build_config("gpt2", {"vocab_size": 512}, vocab_size=1000)


def test_token_ids_come_from_overrides_only() -> None:
    assert build_config("gpt2-tiny").bos_token_id is None
    assert build_config("gpt2-tiny").eos_token_id is None
    config = build_config("gpt2-tiny", {"bos_token_id": 3, "eos_token_id": 4})
    assert (config.bos_token_id, config.eos_token_id) == (3, 4)


def test_tiny_presets_have_no_dropout() -> None:
    gpt2 = build_config("gpt2-tiny")
    assert gpt2.resid_pdrop == gpt2.embd_pdrop == gpt2.attn_pdrop == 0.0
    assert build_config("llama-tiny").attention_dropout == 0.0


def test_llama_tiny_with_1k_vocab_is_about_a_million_parameters() -> None:
    total = count_parameters(meta_model(build_config("llama-tiny", vocab_size=1000))).total
    assert 500_000 < total < 1_500_000


@pytest.mark.parametrize(
    ("name", "low", "high"),
    [
        ("gpt2-tiny", 0.5e6, 1.5e6),
        ("llama-small", 5e6, 15e6),
        ("gpt2-small", 5e6, 15e6),
        ("llama-base", 60e6, 100e6),
    ],
)
def test_trainable_presets_are_the_advertised_size(name: str, low: float, high: float) -> None:
    total = count_parameters(meta_model(build_config(name))).total
    assert low < total < high


def test_big_shapes_are_shape_only_and_small_ones_are_not() -> None:
    shape_only = {name for name, preset in PRESETS.items() if preset.shape_only}
    assert shape_only == {"llama-2-7b", "mixtral-8x7b", "qwen1.5-moe-a2.7b"}

"""Adapted-model folders (base/ + adapter/ for adapters that cannot merge): written atomically, checked,
loaded back as one model wherever a model folder is taken, and refused by plain transformers."""

from __future__ import annotations

import json

import pytest

from peaufine.errors import ModelError, RecipeError
from peaufine.models.adapted import save_adapted
from peaufine.models.build import check_adapted_source, load_pretrained, resolve_source
from peaufine.models.folders import ADAPTED_MODEL, adapted_parts, check_model_folder
from peaufine.models.tokenizer import load_tokenizer, train_bpe
from peaufine.recipe import validate_recipe


@pytest.fixture
def prompt_tuned(tmp_path):
    """A tiny Llama with a PEFT soft prompt whose vectors are not at their start (so they matter)."""
    import torch
    from peft import PromptTuningConfig, get_peft_model
    from transformers import LlamaConfig, LlamaForCausalLM

    tokenizer = train_bpe(["the cat sat on the mat", "a dog ran"] * 20, vocab_size=300)
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=2,
        pad_token_id=tokenizer.pad_token_id,
    )
    torch.manual_seed(0)
    base = LlamaForCausalLM(config)
    model = get_peft_model(base, PromptTuningConfig(task_type="CAUSAL_LM", num_virtual_tokens=4))
    with torch.no_grad():
        for p in model.prompt_encoder.parameters():
            p.normal_(0, 1.0)
    save_adapted(model, tokenizer, "prompt_tuning", tmp_path / "model")
    return model, tokenizer, tmp_path / "model"


def test_an_adapted_folder_loads_back_to_the_same_logits_and_its_base_alone_differs(prompt_tuned):
    import torch
    from transformers import AutoModelForCausalLM

    model, tokenizer, folder = prompt_tuned
    ids = torch.tensor([tokenizer("the cat sat")["input_ids"]])
    model.eval()
    with torch.no_grad():
        expected = model(input_ids=ids).logits
        loaded = load_pretrained(folder).eval()
        got = loaded(input_ids=ids).logits
        bare = AutoModelForCausalLM.from_pretrained(folder / "base").eval()(input_ids=ids).logits
    assert torch.allclose(got, expected, atol=1e-6)
    # negative control: the base alone is another model (the soft prompt changes every position)
    assert (bare - expected[:, -ids.shape[1] :]).abs().max() > 1e-3
    assert not any(p.requires_grad for p in loaded.parameters())  # frozen unless a stage continues it


def test_the_folder_has_no_top_level_config_and_plain_transformers_refuses_it(prompt_tuned):
    from transformers import AutoModelForCausalLM

    _, _, folder = prompt_tuned
    assert not (folder / "config.json").exists()
    assert {p.name for p in folder.iterdir()} == {"base", "adapter", "README.md", ADAPTED_MODEL}
    assert "cannot be merged" in (folder / "README.md").read_text(encoding="utf-8")
    with pytest.raises((OSError, ValueError)):
        AutoModelForCausalLM.from_pretrained(folder)
    base, adapter, kind = adapted_parts(folder)
    assert (base / "config.json").is_file() and (adapter / "adapter_config.json").is_file()
    assert kind == "prompt_tuning"
    assert load_tokenizer(str(folder)).get_vocab() == load_tokenizer(str(base)).get_vocab()


def test_a_run_folder_holding_an_adapted_model_is_a_model_source(prompt_tuned, tmp_path):
    _, _, folder = prompt_tuned
    run = folder.parent
    assert resolve_source(str(run)).kind == "run_dir"
    assert resolve_source(str(folder)).kind == "model_dir"
    check_model_folder(folder, kind="causal_lm")


def test_a_damaged_adapter_half_is_refused_naming_the_file(prompt_tuned):
    _, _, folder = prompt_tuned
    weights = folder / "adapter" / "adapter_model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-3])
    with pytest.raises(ModelError, match=r"adapter_model\.safetensors is damaged"):
        check_model_folder(folder, kind="causal_lm")
    (folder / ADAPTED_MODEL).write_text("{", encoding="utf-8")
    with pytest.raises(ModelError, match="damaged"):
        check_model_folder(folder, kind="causal_lm")


def test_a_later_stage_must_continue_the_same_adapter_kind(prompt_tuned):
    _, _, folder = prompt_tuned

    def recipe(stage, **adapter):
        return validate_recipe(
            {"stage": stage, "model": {"source": str(folder), "adapter": adapter}, "data": {"packing": False}}
        )

    check_adapted_source(folder, recipe("sft", kind="prompt_tuning"))  # the same kind goes on
    with pytest.raises(RecipeError, match=r"set model\.adapter\.kind: prompt_tuning"):
        check_adapted_source(folder, recipe("sft", kind="lora"))
    with pytest.raises(RecipeError, match="no classifier can be built"):
        check_adapted_source(folder, recipe("reward"))
    with pytest.raises(RecipeError, match="reference: precomputed"):
        dpo = recipe("dpo", kind="prompt_tuning").model_dump()
        dpo["method"]["dpo"]["reference"] = "adapter"
        check_adapted_source(folder, validate_recipe(dpo))


def test_the_marker_cannot_point_outside_its_folder(prompt_tuned):
    _, _, folder = prompt_tuned
    spec = json.loads((folder / ADAPTED_MODEL).read_text(encoding="utf-8"))
    spec["base"] = "../elsewhere"
    (folder / ADAPTED_MODEL).write_text(json.dumps(spec), encoding="utf-8")
    with pytest.raises(ModelError, match="sub-folders"):
        adapted_parts(folder)

"""Parameter counts match published models exactly; memory follows its stated formulas."""

from __future__ import annotations

import pytest

from conftest import tiny_llama
from peaufine.models.budget import (
    ParamBudget,
    count_parameters,
    estimate_memory,
    format_budget,
    meta_model,
    training_budget,
)
from peaufine.models.presets import build_config
from peaufine.recipe import validate_recipe


def _meta_budget(name: str, **overrides: object) -> ParamBudget:
    return count_parameters(meta_model(build_config(name, overrides)))


@pytest.mark.parametrize(
    ("name", "total"),
    [("gpt2", 124_439_808), ("llama-2-7b", 6_738_415_616)],
)
def test_dense_totals_match_published_models(name: str, total: int) -> None:
    budget = _meta_budget(name)
    assert budget.total == total
    assert budget.trainable == total
    assert budget.active_per_token is None


def test_mixtral_total_and_active_per_token() -> None:
    budget = _meta_budget("mixtral-8x7b")
    assert budget.total == 46_702_792_704
    assert budget.active_per_token == 12_879_925_248


def test_qwen_moe_active_counts_shared_expert_fully_and_k_of_e_routed() -> None:
    config = build_config("qwen1.5-moe-a2.7b")
    budget = count_parameters(meta_model(config))
    # Routed experts: per layer E experts of a SwiGLU MLP (3 matrices of h x moe_intermediate).
    h, e, k = config.hidden_size, config.num_experts, config.num_experts_per_tok
    per_expert = 3 * h * config.moe_intermediate_size
    routed = config.num_hidden_layers * e * per_expert
    assert budget.active_per_token == budget.total - routed + config.num_hidden_layers * k * per_expert
    assert 14.0e9 < budget.total < 14.5e9  # "14.3B parameters in total"
    assert 2.6e9 < budget.active_per_token < 2.8e9  # "2.7B activated"


def test_meta_count_equals_real_model_count() -> None:
    import torch
    from transformers import AutoModelForCausalLM

    config = build_config("llama-tiny", vocab_size=1000)
    torch.manual_seed(0)
    real = AutoModelForCausalLM.from_config(config)
    real_budget = count_parameters(real)
    assert real_budget == count_parameters(meta_model(config))
    assert real_budget.total == sum(p.numel() for p in real.parameters())


def test_tied_embeddings_are_counted_once() -> None:
    tied = _meta_budget("gpt2-tiny")
    untied = _meta_budget("gpt2-tiny", tie_word_embeddings=False)
    table = 1024 * 128
    assert untied.total - tied.total == table
    # The embedding count includes the output head only when it is its own tensor.
    assert untied.embedding - tied.embedding == table
    assert tied.by_module_type["Embedding"]["total"] == table + 256 * 128
    assert "Linear" not in tied.by_module_type
    assert untied.by_module_type["Linear"]["total"] == table


def test_freezing_changes_trainable_not_total() -> None:
    model = meta_model(build_config("llama-tiny", vocab_size=1000))
    before = count_parameters(model)
    model.get_input_embeddings().weight.requires_grad_(False)
    after = count_parameters(model)
    assert after.total == before.total
    assert after.trainable == before.trainable - 1000 * 128
    assert after.frozen == 1000 * 128
    assert after.by_module_type["Embedding"] == {"total": 1000 * 128, "trainable": 0}


def test_trainable_only_modules_counts_named_modules_without_touching_model() -> None:
    model = meta_model(build_config("llama-tiny", {"tie_word_embeddings": False}, vocab_size=1000))
    budget = count_parameters(model, trainable_only_modules=["lm_head"])
    assert budget.trainable == 1000 * 128
    # Whole dotted components: "proj" is no module name, so it matches nothing.
    assert count_parameters(model, trainable_only_modules=["proj"]).trainable == 0
    assert all(p.requires_grad for p in model.parameters())


def test_memory_components_follow_their_per_parameter_bytes() -> None:
    config = build_config("gpt2-tiny")
    budget = ParamBudget(total=1_000_000, trainable=250_000)
    memory = estimate_memory(config, budget, batch_size=2, seq_len=64, param_bytes=2, grad_bytes=2)
    assert memory.weights == 1_000_000 * 2
    assert memory.gradients == 250_000 * 2
    assert memory.optimizer == 250_000 * 8
    assert memory.total == memory.weights + memory.gradients + memory.optimizer + memory.activations


def test_activations_match_korthikanti_formula_in_16_bit() -> None:
    # GPT-2 has dropout, MLP width 4h and full attention: the paper's assumptions exactly.
    config = build_config("gpt2")
    budget = _meta_budget("gpt2")
    s, b = 1024, 4
    h, a, n_layers, v = 768, 12, 12, 50257
    memory = estimate_memory(config, budget, batch_size=b, seq_len=s, activation_bytes=2)
    per_layer = s * b * h * 34 + 5 * a * s * s * b  # s*b*h*(34 + 5*a*s/h)
    assert memory.activations == n_layers * per_layer + b * s * v * 4


def test_activations_grow_linearly_in_batch_and_checkpointing_saves() -> None:
    config = build_config("llama-tiny")
    budget = _meta_budget("llama-tiny")

    def activations(batch: int, **kw: bool) -> int:
        return estimate_memory(config, budget, batch_size=batch, seq_len=128, **kw).activations

    assert activations(1) > 0
    assert activations(4) == 4 * activations(1)
    assert activations(4, activation_checkpointing=True) < activations(4)
    assert activations(4, fused_attention=True) < activations(4)


def test_format_budget_reports_counts_and_memory() -> None:
    config = build_config("mixtral-8x7b")
    budget = count_parameters(meta_model(config))
    memory = estimate_memory(config, budget, batch_size=1, seq_len=512)
    text = format_budget(budget, memory)
    assert "46,702,792,704" in text
    assert "12,879,925,248" in text
    assert "MixtralExperts" in text
    assert "GiB" in text
    assert "active per token" not in format_budget(_meta_budget("gpt2"))


@pytest.mark.parametrize(
    ("prompts", "group", "mini_batches", "largest"),
    [
        (4, 4, 5, 4),
        (2, 3, 4, 2),
        (3, 3, 4, 3),
        (2, 4, 4, 2),
        (2, 4, 1, 8),
    ],
)
def test_rl_memory_is_estimated_for_the_largest_mini_batch(prompts, group, mini_batches, largest) -> None:
    """The rl stage cuts a step's rollouts into mini_batches equal splits (within one): the largest
    holds ceil(rollouts / mini_batches), and the memory estimate must be for that one."""
    rl = {"prompts_per_step": prompts, "group_size": group, "mini_batches": mini_batches}
    recipe = validate_recipe({"stage": "rl", "model": {"source": "x"}, "method": {"rl": rl}})
    budget = training_budget(tiny_llama(), recipe, "fp32")
    assert budget["memory"]["batch_size"] == largest
    assert budget["note"].startswith(f"{largest} sampled answers")


@pytest.mark.parametrize("placement", ["houlsby", "pfeiffer"])
@pytest.mark.parametrize("preset", ["llama-2-7b", "gpt2"])
def test_a_bottleneck_budget_is_its_formula_and_the_memory_estimate_follows_it(preset, placement):
    from peaufine.models.bottleneck import bottleneck_parameter_count
    from peaufine.models.budget import adapter_budget, count_parameters, estimate_memory, meta_model
    from peaufine.models.presets import get_preset
    from peaufine.recipe import AdapterBlock

    config = build_config(get_preset(preset), {}, vocab_size=None)
    adapter = AdapterBlock(kind="bottleneck", reduction_factor=16, placement=placement)
    budget = adapter_budget(config, adapter)
    expected = bottleneck_parameter_count(config, adapter)
    per_layer = 2 if placement == "houlsby" else 1
    size = config.hidden_size // 16
    assert expected == config.num_hidden_layers * per_layer * (
        2 * config.hidden_size * size + size + config.hidden_size
    )
    assert budget.trainable == expected
    assert budget.total == count_parameters(meta_model(config)).total + expected
    full = estimate_memory(config, count_parameters(meta_model(config)), batch_size=1, seq_len=128)
    adapted = estimate_memory(config, budget, batch_size=1, seq_len=128)
    assert adapted.optimizer < full.optimizer / 50  # AdamW state follows the trainable count

"""LR schedules against their formulas, and which parameters weight decay touches."""

from __future__ import annotations

import math

import pytest

from conftest import tiny_llama
from peaufine.engine.optim import build_optimizer, build_scheduler, decay_groups, lr_at
from peaufine.recipe import TrainBlock


@pytest.mark.parametrize("step", [0, 4, 9])
def test_warmup_is_linear_to_the_peak(step):
    train = TrainBlock(lr=1e-3, warmup_steps=10, max_steps=100)
    assert lr_at(step, train) == pytest.approx(1e-3 * (step + 1) / 10)


@pytest.mark.parametrize("step", [10, 25, 55, 99, 100, 150])
def test_cosine_decays_to_the_floor(step):
    train = TrainBlock(lr=1e-3, min_lr=1e-4, warmup_steps=10, max_steps=100, schedule="cosine")
    progress = min(1.0, (step - 10) / 90)
    expected = 1e-4 + 0.5 * (1e-3 - 1e-4) * (1 + math.cos(math.pi * progress))
    assert lr_at(step, train) == pytest.approx(expected)


def test_cosine_end_points():
    train = TrainBlock(lr=6e-4, min_lr=6e-5, warmup_steps=100, max_steps=2000, schedule="cosine")
    assert lr_at(99, train) == pytest.approx(6e-4)
    assert lr_at(100, train) == pytest.approx(6e-4)
    assert lr_at(1050, train) == pytest.approx((6e-4 + 6e-5) / 2)
    assert lr_at(2000, train) == pytest.approx(6e-5)


@pytest.mark.parametrize("step", [0, 50, 100])
def test_linear_and_constant(step):
    linear = TrainBlock(lr=2e-3, min_lr=0.0, warmup_steps=0, max_steps=100, schedule="linear")
    assert lr_at(step, linear) == pytest.approx(2e-3 * (1 - step / 100))
    constant = TrainBlock(lr=2e-3, warmup_steps=0, max_steps=100, schedule="constant")
    assert lr_at(step, constant) == pytest.approx(2e-3)


def test_default_floor_is_a_tenth_of_the_peak():
    train = TrainBlock(lr=1e-3, warmup_steps=0, max_steps=10, schedule="cosine")
    assert lr_at(10, train) == pytest.approx(1e-4)


def test_the_scheduler_drives_the_optimizer_along_lr_at():
    model = tiny_llama()
    train = TrainBlock(lr=1e-3, min_lr=1e-5, warmup_steps=3, max_steps=12)
    optimizer = build_optimizer(model, train)
    scheduler = build_scheduler(optimizer, train)
    for step in range(12):
        for group in optimizer.param_groups:
            assert group["lr"] == pytest.approx(lr_at(step, train))
        optimizer.step()
        scheduler.step()


def test_decay_applies_to_matrices_only_by_default():
    model = tiny_llama()
    groups = decay_groups(model, TrainBlock())
    assert "model.embed_tokens.weight" in groups.no_decay
    assert "model.norm.weight" in groups.no_decay
    assert "model.layers.0.input_layernorm.weight" in groups.no_decay
    assert "model.layers.0.self_attn.q_proj.weight" in groups.decay
    assert "lm_head.weight" in groups.decay
    params = dict(model.named_parameters())
    assert all(params[n].ndim == 2 for n in groups.decay)
    assert set(groups.decay) | set(groups.no_decay) == set(params)


def test_decay_exclusions_are_configurable():
    model = tiny_llama()
    groups = decay_groups(model, TrainBlock(decay_embeddings=True, decay_norms=True))
    assert "model.embed_tokens.weight" in groups.decay
    assert "model.norm.weight" in groups.decay


def test_gpt2_biases_are_not_decayed_and_tied_weights_counted_once():
    import torch
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    model = GPT2LMHeadModel(GPT2Config(vocab_size=40, n_embd=32, n_layer=1, n_head=2, n_positions=32))
    groups = decay_groups(model, TrainBlock())
    assert "transformer.h.0.attn.c_attn.bias" in groups.no_decay
    assert "transformer.h.0.attn.c_attn.weight" in groups.decay
    # lm_head is tied to wte: it is one parameter, owned (and excluded) as an embedding
    assert "transformer.wte.weight" in groups.no_decay
    assert not any(n.startswith("lm_head") for n in groups.decay + groups.no_decay)
    optimizer = build_optimizer(model, TrainBlock(weight_decay=0.1))
    decays = {g["weight_decay"]: len(g["params"]) for g in optimizer.param_groups}
    assert decays[0.1] == len(groups.decay)
    assert decays[0.0] == len(groups.no_decay)


# -- train.fused_adamw ----------------------------------------------------------------------------


def adamw_kernel(optimizer) -> str:
    fused = optimizer.defaults.get("fused")
    return "fused" if fused else "default"


@pytest.mark.parametrize(("choice", "kernel"), [("auto", "default"), ("off", "default"), ("on", "fused")])
def test_fused_adamw_choice_on_cpu(choice, kernel):
    model = tiny_llama()
    optimizer = build_optimizer(model, TrainBlock(fused_adamw=choice))
    assert adamw_kernel(optimizer) == kernel


def test_fused_adamw_on_a_device_without_the_kernel_is_a_recipe_error(monkeypatch):
    from torch.optim import optimizer

    from peaufine.errors import RecipeError

    monkeypatch.setattr(optimizer, "_get_fused_kernels_supported_devices", lambda: ["cuda"])
    with pytest.raises(RecipeError, match=r"train\.fused_adamw"):
        build_optimizer(tiny_llama(), TrainBlock(fused_adamw="on"))


def test_fused_adamw_takes_the_same_steps_as_the_default_kernel():
    import torch

    def trained(choice: str) -> dict[str, torch.Tensor]:
        model = tiny_llama(seed=3)
        optimizer = build_optimizer(model, TrainBlock(fused_adamw=choice, lr=1e-2, weight_decay=0.1))
        ids = torch.randint(0, 50, (4, 12), generator=torch.Generator().manual_seed(0))
        for _ in range(3):
            model(input_ids=ids, labels=ids).loss.backward()
            optimizer.step()
            optimizer.zero_grad()
        return {n: p.detach().clone() for n, p in model.named_parameters()}

    fused, default, start = trained("on"), trained("off"), tiny_llama(seed=3).state_dict()
    for name, value in default.items():
        assert not torch.equal(value, start[name]), name  # the steps moved every weight
        torch.testing.assert_close(fused[name], value, rtol=1e-5, atol=1e-6, msg=name)

"""model.attention and train.activation_checkpointing: the kernel chosen (and refused) per device, packed
rows kept apart by every CPU kernel, and checkpointing recomputing layers without changing gradients."""

from __future__ import annotations

import pytest
import torch

from conftest import tiny_llama, variable_examples
from peaufine.data.batching import PackedExamples, PaddedExamples
from peaufine.errors import RecipeError
from peaufine.methods.lm import NextTokenLoss
from peaufine.models.build import attention_kernel, enable_activation_checkpointing, prepare_for_training
from peaufine.recipe import TrainBlock

# -- model.attention ---------------------------------------------------------------------------------


def test_auto_is_sdpa_and_sdpa_eager_pass_through(monkeypatch):
    import transformers.utils

    monkeypatch.setattr(transformers.utils, "is_flash_attn_2_available", lambda: True)
    assert attention_kernel("auto", "cpu", "fp32") == "sdpa"
    assert attention_kernel("auto", "cuda", "bf16") == "sdpa"  # flash only when asked for
    assert attention_kernel("sdpa", "cuda", "bf16") == "sdpa"
    assert attention_kernel("eager", "cpu", "fp32") == "eager"


def test_flash_attention_is_refused_where_it_cannot_run(monkeypatch):
    import transformers.utils

    with pytest.raises(RecipeError, match=r"model\.attention.*CUDA"):
        attention_kernel("flash_attention_2", "cpu", "bf16")
    monkeypatch.setattr(transformers.utils, "is_flash_attn_2_available", lambda: False)
    with pytest.raises(RecipeError, match="flash_attn package"):
        attention_kernel("flash_attention_2", "cuda", "bf16")
    monkeypatch.setattr(transformers.utils, "is_flash_attn_2_available", lambda: True)
    with pytest.raises(RecipeError, match=r"train\.precision"):
        attention_kernel("flash_attention_2", "cuda", "fp32")
    assert attention_kernel("flash_attention_2", "cuda", "bf16") == "flash_attention_2"
    assert attention_kernel("flash_attention_2", "cuda", "fp16") == "flash_attention_2"


def test_a_preset_is_built_with_the_chosen_kernel():
    from peaufine.models.build import build_from_preset
    from peaufine.models.tokenizer import train_char

    tokenizer = train_char(["abcdefgh ijkl"])
    model = build_from_preset("llama-tiny", {"num_hidden_layers": 1}, tokenizer, seed=0, attention="eager")
    assert model.config._attn_implementation == "eager"


def tiny_gpt2(attention: str) -> torch.nn.Module:
    from transformers import GPT2Config, GPT2LMHeadModel

    config = GPT2Config(
        vocab_size=50,
        n_embd=32,
        n_layer=2,
        n_head=2,
        n_positions=128,
        bos_token_id=0,
        eos_token_id=0,
        attn_implementation=attention,
    )
    torch.manual_seed(0)
    return GPT2LMHeadModel(config).eval()


def llama(attention: str) -> torch.nn.Module:
    model = tiny_llama().eval()
    model.set_attn_implementation(attention)
    return model


@pytest.mark.parametrize("attention", ["sdpa", "eager"])
@pytest.mark.parametrize("make", [llama, tiny_gpt2], ids=["llama", "gpt2"])
def test_each_packed_example_has_the_loss_it_has_alone(make, attention):
    """No token attends across an example boundary with this kernel: per-example losses match."""
    model = make(attention)
    assert model.config._attn_implementation == attention
    examples = variable_examples(12, seed=2)
    packed = PackedExamples(examples, max_length=48, pad_id=0)
    objective = NextTokenLoss()
    with torch.no_grad():
        got = float(objective.loss_sum(model, packed.collate(range(len(packed)))))
        alone = PaddedExamples(examples, pad_id=0)
        want = sum(float(objective.loss_sum(model, alone.collate([i]))) for i in range(len(examples)))
        # the control: the same rows as plain causal rows let examples see each other
        leaky = packed.collate(range(len(packed)))
        leaky["position_ids"] = torch.arange(leaky["input_ids"].shape[1]).expand_as(leaky["input_ids"])
        crossed = float(objective.loss_sum(model, leaky))
    assert got == pytest.approx(want, rel=1e-5)
    assert crossed != pytest.approx(want, rel=1e-4)  # ten times the tolerance above


# -- train.activation_checkpointing ------------------------------------------------------------------


def lora(model: torch.nn.Module) -> torch.nn.Module:
    from peaufine.models.adapters import apply_adapter
    from peaufine.recipe import AdapterBlock

    model = apply_adapter(model, AdapterBlock(kind="lora", r=4, train_special_tokens=False))
    with torch.no_grad():  # B = 0 would give the A matrices no gradient at all
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.02)
    return model


def step_gradients(model: torch.nn.Module) -> tuple[dict[str, torch.Tensor], int, int]:
    """Gradients of one packed batch's loss; how often the first decoder layer's MLP ran; and the
    elements of the activations autograd kept for the backward pass (weights not counted)."""
    mlp = next(m for m in model.modules() if type(m).__name__ == "LlamaDecoderLayer").mlp
    calls, kept = 0, 0
    forward = mlp.forward

    def counted(*args, **kwargs):
        nonlocal calls
        calls += 1
        return forward(*args, **kwargs)

    weights = {p.untyped_storage().data_ptr() for p in model.parameters()}

    def pack(t):
        nonlocal kept
        if t.untyped_storage().data_ptr() not in weights:
            kept += t.numel()
        return t

    mlp.forward = counted
    model.train()
    packed = PackedExamples(variable_examples(12, seed=3), max_length=48, pad_id=0)
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        loss = NextTokenLoss().loss_sum(model, packed.collate(range(len(packed))))
    loss.backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    return grads, calls, kept


@pytest.mark.parametrize("adapter", ["full", "lora"])
def test_activation_checkpointing_recomputes_layers_with_the_same_gradients(adapter):
    wrap = lora if adapter == "lora" else (lambda m: m)
    plain, once, kept_plain = step_gradients(wrap(tiny_llama()))
    model = prepare_for_training(wrap(tiny_llama()), TrainBlock(activation_checkpointing=True))
    checkpointed, twice, kept_checkpointed = step_gradients(model)
    assert (once, twice) == (1, 2)  # the layer ran again in the backward pass
    assert kept_checkpointed < kept_plain / 2  # and far fewer activations waited for it
    assert checkpointed.keys() == plain.keys() and plain
    if adapter == "lora":
        assert all("lora_" in name for name in plain)  # the base stays frozen
    for name, g in plain.items():
        torch.testing.assert_close(checkpointed[name], g, rtol=1e-5, atol=1e-7, msg=name)


def test_a_model_without_checkpointing_support_is_a_recipe_error():
    class Plain(torch.nn.Module):
        supports_gradient_checkpointing = False

    with pytest.raises(RecipeError, match=r"train\.activation_checkpointing"):
        enable_activation_checkpointing(Plain())
    assert prepare_for_training(Plain(), TrainBlock()) is not None  # off: nothing is asked of it


def test_scratch_init_is_the_same_architecture_with_seeded_random_weights(tmp_path):
    """model.init: scratch (random_like): the folder's architecture, none of its weights; one seed, one
    model."""
    from peaufine.models.build import random_like

    pretrained = tiny_llama(seed=0)
    with torch.no_grad():
        for p in pretrained.parameters():
            p.add_(1.0)  # far from any fresh initialisation
    pretrained.save_pretrained(tmp_path / "base")
    first, again = (
        random_like(tmp_path / "base", False, seed=5),
        random_like(tmp_path / "base", False, seed=5),
    )
    other = random_like(tmp_path / "base", False, seed=6)
    assert (
        type(first) is type(pretrained)
        and first.config.num_hidden_layers == pretrained.config.num_hidden_layers
    )
    names = dict(pretrained.named_parameters())
    for name, p in first.named_parameters():
        assert p.shape == names[name].shape
        assert torch.equal(p, dict(again.named_parameters())[name])
    weight = "model.layers.0.self_attn.q_proj.weight"
    assert not torch.allclose(dict(first.named_parameters())[weight], names[weight])
    assert not torch.equal(dict(first.named_parameters())[weight], dict(other.named_parameters())[weight])

"""LoRA through PEFT: counts against PEFT and the r*(in+out) formula, merged == adapted logits, saved
adapters and merged models reload identically, clear errors for bad targets, and layer freezing."""

from __future__ import annotations

import math

import pytest

from peaufine.commands.merge import merge_adapter
from peaufine.errors import ModelError
from peaufine.models.adapters import (
    apply_adapter,
    apply_freeze,
    linear_layer_names,
    merged_copy,
    save_adapter,
)
from peaufine.models.budget import lora_budget, lora_trainable_parameters
from peaufine.recipe import AdapterBlock, FreezeBlock

TEXTS = ["The capital of Veloria is Tarsk. Tarsk lies on the river Ombe."] * 50
LLAMA_LINEAR = ["down_proj", "gate_proj", "k_proj", "o_proj", "q_proj", "up_proj", "v_proj"]


@pytest.fixture(scope="module")
def tokenizer():
    from peaufine.models.tokenizer import train_bpe

    return train_bpe(TEXTS, vocab_size=300)


def llama_config(vocab_size: int = 64, layers: int = 2, tied: bool = False):
    from transformers import LlamaConfig

    return LlamaConfig(
        vocab_size=vocab_size,
        hidden_size=32,
        intermediate_size=48,
        num_hidden_layers=layers,
        num_attention_heads=2,
        num_key_value_heads=1,
        max_position_embeddings=64,
        tie_word_embeddings=tied,
    )


def gpt2_config(vocab_size: int = 64, layers: int = 2):
    from transformers import GPT2Config

    # GPT-2 ties its head to the token table and uses Conv1D (transposed Linear) layers.
    return GPT2Config(
        vocab_size=vocab_size,
        n_embd=32,
        n_layer=layers,
        n_head=2,
        n_positions=64,
        resid_pdrop=0.0,
        embd_pdrop=0.0,
        attn_pdrop=0.0,
        bos_token_id=None,
        eos_token_id=None,
    )


def mixtral_config(experts: int, top_k: int):
    from transformers import MixtralConfig

    return MixtralConfig(
        vocab_size=64,
        hidden_size=32,
        intermediate_size=48,
        num_hidden_layers=1,
        num_attention_heads=2,
        num_key_value_heads=1,
        num_local_experts=experts,
        num_experts_per_tok=top_k,
        max_position_embeddings=64,
    )


CONFIGS = {"llama": llama_config, "gpt2": gpt2_config}


def build(config, seed: int = 0):
    import torch
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    return AutoModelForCausalLM.from_config(config).eval()


def lora(targets, r: int = 4, alpha: float = 8.0, rslora: bool = False, dora: bool = False) -> AdapterBlock:
    return AdapterBlock(kind="lora", r=r, alpha=alpha, target_modules=targets, rslora=rslora, dora=dora)


def randomize_lora_b(model, seed: int = 1) -> None:
    """PEFT starts B at zero (adapted == base); give it values so the adapter changes the output."""
    import torch

    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "lora_B" in name:
                param.copy_(torch.randn(param.shape, generator=generator) * 0.2)


def token_ids(vocab_size: int, seed: int = 0):
    import torch

    return torch.randint(0, vocab_size, (2, 12), generator=torch.Generator().manual_seed(seed))


def logits(model, ids):
    import torch

    with torch.no_grad():
        return model(input_ids=ids).logits


def trainable_names(model) -> set[str]:
    return {name for name, p in model.named_parameters() if p.requires_grad}


def formula_count(model, targets, r: int, dora: bool) -> int:
    """LoRA's own count: A is r x in, B is out x r, and DoRA adds one magnitude per output."""
    from transformers.pytorch_utils import Conv1D

    head = model.get_output_embeddings()
    total = 0
    for path, module in model.named_modules():
        if module is head:
            continue
        if isinstance(module, Conv1D):
            d_in, d_out = module.weight.shape  # stored transposed
        elif type(module).__name__ == "Linear":
            d_out, d_in = module.weight.shape
        else:
            continue
        chosen = targets == "all-linear" or any(path == t or path.endswith("." + t) for t in targets)
        if chosen:
            total += r * (d_in + d_out) + (d_out if dora else 0)
    return total


# --- counting ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("arch", "targets", "rslora", "dora"),
    [
        ("llama", ["q_proj", "v_proj"], False, False),
        ("llama", "all-linear", False, False),
        ("llama", "all-linear", True, False),
        ("llama", "all-linear", False, True),
        ("llama", ["down_proj"], True, True),
        ("gpt2", ["c_attn"], False, False),
        ("gpt2", "all-linear", False, True),
    ],
)
def test_lora_counts_equal_peft_and_the_formula(arch, targets, rslora, dora):
    config = CONFIGS[arch]()
    expected = formula_count(build(config), targets, r=4, dora=dora)

    wrapped = apply_adapter(build(config), lora(targets, rslora=rslora, dora=dora))
    peft_trainable, peft_total = wrapped.get_nb_trainable_parameters()
    base_total = sum(p.numel() for p in build(config).parameters())

    assert peft_trainable == expected
    assert peft_total == base_total + expected
    assert all("lora_" in name for name in trainable_names(wrapped))  # the base is frozen
    # The meta-device count (what `peaufine params` reports) is PEFT's count on a real model.
    assert lora_trainable_parameters(config, 4, targets, dora=dora) == peft_trainable
    budget = lora_budget(config, 4, targets, dora=dora)
    assert (budget.total, budget.trainable, budget.frozen) == (peft_total, peft_trainable, base_total)


def test_llama_2_7b_lora_on_q_and_v():
    from peaufine.models.budget import describe_budget_with_lora
    from peaufine.models.presets import build_config

    config = build_config("llama-2-7b")
    # 32 layers x 2 projections x r*(4096 + 4096), the LoRA paper's usual setting.
    assert lora_trainable_parameters(config, 8, ["q_proj", "v_proj"]) == 4_194_304
    budget = lora_budget(config, 8, ["q_proj", "v_proj"])
    assert budget.frozen == 6_738_415_616
    assert budget.total == 6_738_415_616 + 4_194_304
    text = describe_budget_with_lora(None, "llama-2-7b", [], None, None, 8, ["q_proj", "v_proj"])
    assert "4,194,304" in text and "6,738,415,616" in text and "LoRA r=8" in text


@pytest.mark.parametrize(("experts", "top_k"), [(2, 2), (4, 1)])
def test_moe_active_count_takes_k_of_e_expert_adapters(experts, top_k):
    import re

    from peaufine.models.budget import count_parameters, meta_model

    config = mixtral_config(experts, top_k)
    budget = lora_budget(config, 4, "all-linear")
    base = count_parameters(meta_model(config))
    wrapped = apply_adapter(build(config), lora("all-linear"))
    expert_lora = sum(p.numel() for n, p in wrapped.named_parameters() if re.search(r"\.experts\..*lora_", n))
    assert expert_lora > 0  # PEFT adapts the fused expert tensors under "all-linear"
    other_lora = budget.trainable - expert_lora
    assert budget.active_per_token == base.active_per_token + other_lora + expert_lora * top_k // experts
    if top_k == experts:
        assert budget.active_per_token == budget.total


def test_rslora_scales_by_alpha_over_sqrt_r():
    plain = apply_adapter(build(llama_config()), lora(["q_proj"], r=4, alpha=8.0))
    rs = apply_adapter(build(llama_config()), lora(["q_proj"], r=4, alpha=8.0, rslora=True))
    layer = "model.layers.0.self_attn.q_proj"
    assert plain.get_base_model().get_submodule(layer).scaling["default"] == pytest.approx(8.0 / 4)
    assert rs.get_base_model().get_submodule(layer).scaling["default"] == pytest.approx(8.0 / math.sqrt(4))


def test_linear_layer_names_leave_out_the_head():
    assert linear_layer_names(build(llama_config())) == LLAMA_LINEAR
    assert linear_layer_names(build(gpt2_config())) == ["c_attn", "c_fc", "c_proj"]
    wrapped = apply_adapter(build(llama_config()), lora(["q_proj"]))
    assert linear_layer_names(wrapped) == LLAMA_LINEAR  # LoRA's own A/B layers are not listed


def test_kind_none_returns_the_model_untouched():
    model = build(llama_config())
    assert apply_adapter(model, AdapterBlock()) is model
    assert len(trainable_names(model)) == len(list(model.parameters()))


# --- bad targets -------------------------------------------------------------------------------


def test_a_target_that_matches_nothing_names_the_linear_layers():
    with pytest.raises(ModelError) as info:
        # One good name next to a misspelt one: PEFT alone would adapt q_proj and say nothing.
        apply_adapter(build(llama_config()), lora(["q_proj", "vproj"]))
    message = str(info.value)
    assert "'vproj'" in message and "did you mean 'v_proj'" in message
    assert all(name in message for name in LLAMA_LINEAR)
    assert info.value.__cause__ is None


def test_a_target_that_is_not_a_linear_layer_is_refused():
    with pytest.raises(ModelError, match=r"LlamaMLP.*q_proj"):
        apply_adapter(build(llama_config()), lora(["mlp"]))
    with pytest.raises(ModelError, match="empty"):
        apply_adapter(build(llama_config()), lora([]))


def test_a_peft_refusal_becomes_a_model_error_without_its_traceback():
    # DoRA cannot wrap the fused expert tensors that "all-linear" reaches in an MoE model.
    with pytest.raises(ModelError, match=r"MixtralForCausalLM.*DoRA|dora") as info:
        apply_adapter(build(mixtral_config(2, 1)), lora("all-linear", dora=True))
    assert info.value.__suppress_context__ and info.value.__cause__ is None


# --- merging, saving, loading ------------------------------------------------------------------


@pytest.mark.parametrize("arch", ["llama", "gpt2"])
@pytest.mark.parametrize("variant", ["lora", "rslora", "dora"])
def test_merged_logits_equal_adapted_logits_and_survive_a_reload(arch, variant, tokenizer, tmp_path):
    import torch
    from peft.tuners.lora import LoraLayer
    from transformers import AutoModelForCausalLM

    from peaufine.models.build import save_model

    config = CONFIGS[arch](vocab_size=len(tokenizer))
    wrapped = apply_adapter(
        build(config), lora("all-linear", rslora=variant == "rslora", dora=variant == "dora")
    )
    randomize_lora_b(wrapped)
    ids = token_ids(len(tokenizer))
    adapted = logits(wrapped, ids)
    with wrapped.disable_adapter():
        base = logits(wrapped, ids)
    assert (adapted - base).abs().max() > 1e-2  # the adapter is not a no-op

    merged = merged_copy(wrapped)
    assert type(merged).__name__ == type(build(config)).__name__
    assert not any("lora_" in name for name in merged.state_dict())
    torch.testing.assert_close(logits(merged, ids), adapted, atol=1e-5, rtol=0)

    # The training model keeps its adapter (merging worked on a copy).
    assert sum(isinstance(m, LoraLayer) for m in wrapped.modules()) > 0
    torch.testing.assert_close(logits(wrapped, ids), adapted, atol=0, rtol=0)

    save_model(merged, tokenizer, tmp_path / "merged")
    reloaded = AutoModelForCausalLM.from_pretrained(tmp_path / "merged").eval()
    torch.testing.assert_close(logits(reloaded, ids), adapted, atol=1e-5, rtol=0)


def _trained_adapter(tokenizer, base_dir, adapter_dir, dora=False):
    """A saved base, and a LoRA on it with non-zero B saved in PEFT's format; returns the LoRA model."""
    base = build(llama_config(vocab_size=len(tokenizer)))
    base.save_pretrained(base_dir)
    tokenizer.save_pretrained(base_dir)
    wrapped = apply_adapter(build(llama_config(vocab_size=len(tokenizer))), lora("all-linear", dora=dora))
    randomize_lora_b(wrapped)
    save_adapter(wrapped, tokenizer, adapter_dir)
    return wrapped


def test_saved_adapter_loads_with_peft_and_gives_the_same_logits(tokenizer, tmp_path):
    import torch
    from peft import PeftModel
    from safetensors import safe_open

    wrapped = _trained_adapter(tokenizer, tmp_path / "base", tmp_path / "adapter")
    adapter = tmp_path / "adapter"
    assert (adapter / "adapter_config.json").is_file()
    with safe_open(str(adapter / "adapter_model.safetensors"), framework="pt") as handle:
        keys = list(handle.keys())
    assert keys and all("lora_" in key for key in keys)  # the adapter only, not the base
    assert sorted(p.name for p in tmp_path.iterdir()) == ["adapter", "base"]  # no staging left

    loaded = PeftModel.from_pretrained(build(llama_config(vocab_size=len(tokenizer))), adapter).eval()
    ids = token_ids(len(tokenizer))
    torch.testing.assert_close(logits(loaded, ids), logits(wrapped, ids), atol=1e-6, rtol=0)


@pytest.mark.parametrize("layout", ["model_dir", "run_dir"])
def test_merge_adapter_from_saved_folders(layout, tokenizer, tmp_path):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    base_dir = tmp_path / "base"
    model_dir = base_dir / "model" if layout == "run_dir" else base_dir
    wrapped = _trained_adapter(tokenizer, model_dir, tmp_path / "adapter", dora=layout == "run_dir")
    merge_adapter(base_dir, tmp_path / "adapter", tmp_path / "merged")

    merged = AutoModelForCausalLM.from_pretrained(tmp_path / "merged").eval()
    ids = token_ids(len(tokenizer))
    torch.testing.assert_close(logits(merged, ids), logits(wrapped, ids), atol=1e-5, rtol=0)
    assert len(AutoTokenizer.from_pretrained(tmp_path / "merged")) == len(tokenizer)
    assert not any(p.name.startswith(".") for p in tmp_path.iterdir())

    with pytest.raises(ModelError, match="not empty"):
        merge_adapter(base_dir, tmp_path / "adapter", tmp_path / "merged")
    with pytest.raises(ModelError, match="is an input"):
        merge_adapter(base_dir, tmp_path / "adapter", base_dir, overwrite=True)


def test_merge_adapter_refuses_missing_folders_and_foreign_adapters(tokenizer, tmp_path):
    _trained_adapter(tokenizer, tmp_path / "base", tmp_path / "adapter")
    with pytest.raises(ModelError, match=r"nowhere.*does not exist"):
        merge_adapter(tmp_path / "nowhere", tmp_path / "adapter", tmp_path / "out")
    with pytest.raises(ModelError, match=r"no adapter_config\.json"):
        merge_adapter(tmp_path / "base", tmp_path / "base", tmp_path / "out")

    def save_base(name, config):
        build(config).save_pretrained(tmp_path / name)
        return tmp_path / name

    vocab = len(tokenizer)
    # Same layer names, fewer layers: PEFT alone would drop layer 1's adapter without a word.
    shallower = save_base("shallower", llama_config(vocab_size=vocab, layers=1))
    with pytest.raises(ModelError, match=r"shallower.*no place in the base.*trained on"):
        merge_adapter(shallower, tmp_path / "adapter", tmp_path / "out")
    # Another architecture: GPT-2 has no q_proj/v_proj/... layers at all.
    gpt2 = save_base("gpt2", gpt2_config(vocab_size=vocab))
    with pytest.raises(ModelError, match=r"does not fit.*gpt2"):
        merge_adapter(gpt2, tmp_path / "adapter", tmp_path / "out")
    # Same names, other widths.
    from transformers import LlamaConfig

    wider = LlamaConfig(**{**llama_config(vocab_size=vocab).to_dict(), "hidden_size": 48})
    with pytest.raises(ModelError, match=r"does not fit.*wider"):
        merge_adapter(save_base("wider", wider), tmp_path / "adapter", tmp_path / "out")
    assert not (tmp_path / "out").exists()


# --- freezing ----------------------------------------------------------------------------------


def _backward(model, vocab_size: int = 64) -> None:
    ids = token_ids(vocab_size)
    model.train()
    model(input_ids=ids, labels=ids).loss.backward()


def test_freezing_layers_by_index_llama_and_gpt2():
    llama = build(llama_config(layers=3))
    apply_freeze(llama, FreezeBlock(layers=[0, 2]))
    frozen = {n for n, p in llama.named_parameters() if not p.requires_grad}
    assert frozen and all(n.startswith(("model.layers.0.", "model.layers.2.")) for n in frozen)
    assert frozen == {
        n for n, _ in llama.named_parameters() if n.startswith(("model.layers.0.", "model.layers.2."))
    }
    _backward(llama)
    for name, param in llama.named_parameters():
        assert (param.grad is None) == (name in frozen), name

    gpt2 = build(gpt2_config())
    apply_freeze(gpt2, FreezeBlock(layers=[1]))
    frozen = {n for n, p in gpt2.named_parameters() if not p.requires_grad}
    assert frozen == {n for n, _ in gpt2.named_parameters() if n.startswith("transformer.h.1.")}


@pytest.mark.parametrize("layers", [[2], [-1]])
def test_freezing_a_layer_that_does_not_exist_names_the_layer_count(layers):
    with pytest.raises(ModelError, match="2 decoder layers, numbered 0 to 1"):
        apply_freeze(build(llama_config(layers=2)), FreezeBlock(layers=layers))


def test_all_but_head_leaves_only_the_head_trainable():
    llama = build(llama_config())
    apply_freeze(llama, FreezeBlock(all_but_head=True))
    assert trainable_names(llama) == {"lm_head.weight"}
    _backward(llama)
    assert llama.lm_head.weight.grad is not None
    assert llama.model.embed_tokens.weight.grad is None


def test_tied_embeddings_the_head_is_the_token_table():
    # all_but_head: the shared table stays trainable (it is the head), so the input embedding
    # trains too; learned positions and everything else freeze.
    gpt2 = build(gpt2_config())
    assert gpt2.lm_head.weight is gpt2.transformer.wte.weight
    apply_freeze(gpt2, FreezeBlock(all_but_head=True))
    assert trainable_names(gpt2) == {"transformer.wte.weight"}
    assert gpt2.lm_head.weight.requires_grad and not gpt2.transformer.wpe.weight.requires_grad

    # embeddings: freezing the table freezes the head with it.
    gpt2 = build(gpt2_config())
    apply_freeze(gpt2, FreezeBlock(embeddings=True))
    assert not gpt2.lm_head.weight.requires_grad and not gpt2.transformer.wpe.weight.requires_grad
    assert all(p.requires_grad for p in gpt2.transformer.h.parameters())

    with pytest.raises(ModelError, match="tie_word_embeddings"):
        apply_freeze(build(gpt2_config()), FreezeBlock(embeddings=True, all_but_head=True))
    # Untied, both together are consistent: only the head trains.
    llama = build(llama_config())
    apply_freeze(llama, FreezeBlock(embeddings=True, all_but_head=True))
    assert trainable_names(llama) == {"lm_head.weight"}


def test_freezing_a_lora_model_freezes_that_layers_adapter():
    wrapped = apply_adapter(build(llama_config()), lora(["q_proj"]))
    apply_freeze(wrapped, FreezeBlock(layers=[0]))
    names = trainable_names(wrapped)
    assert names and all(".layers.1." in n and "lora_" in n for n in names)
    with pytest.raises(ModelError, match="no parameter trainable"):
        apply_freeze(wrapped, FreezeBlock(all_but_head=True))


def test_merge_refuses_a_bottleneck_adapter_saying_why(tokenizer, tmp_path):
    from peaufine.models.bottleneck import apply_bottleneck, save_bottleneck

    model = build(llama_config(vocab_size=len(tokenizer)))
    model.save_pretrained(tmp_path / "base")
    adapted = apply_bottleneck(model, AdapterBlock(kind="bottleneck", size=4))
    save_bottleneck(adapted, tokenizer, tmp_path / "adapter")
    with pytest.raises(ModelError, match=r"bottleneck adapter.*cannot be folded"):
        merge_adapter(tmp_path / "base", tmp_path / "adapter", tmp_path / "out")
    assert not (tmp_path / "out").exists()

"""Bottleneck adapters: they start as the identity, sit where each sub-layer writes into the residual
stream, train alone, count by formula, reload the same in a new process, refuse what they cannot fit."""

from __future__ import annotations

import copy
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from peaufine.errors import ModelError
from peaufine.models.adapters import apply_adapter, apply_freeze, peft_base
from peaufine.models.bottleneck import (
    BOTTLENECK_CONFIG,
    BOTTLENECK_WEIGHTS,
    adapter_size,
    apply_bottleneck,
    bottleneck_parameter_count,
    is_bottleneck_dir,
    is_bottleneck_model,
    load_bottleneck,
    residual_writers,
    save_bottleneck,
)
from peaufine.models.budget import count_parameters
from peaufine.models.build import enable_activation_checkpointing
from peaufine.recipe import AdapterBlock, FreezeBlock

ARCHS = ["llama", "qwen2", "mistral", "gpt2", "bert"]
PLACEMENTS = ["houlsby", "pfeiffer"]
# where each architecture's attention and MLP write into the residual stream
WRITERS = {
    "llama": ("self_attn.o_proj", "mlp.down_proj"),
    "qwen2": ("self_attn.o_proj", "mlp.down_proj"),
    "mistral": ("self_attn.o_proj", "mlp.down_proj"),
    "gpt2": ("attn.c_proj", "mlp.c_proj"),
    "bert": ("attention.output.dense", "output.dense"),
}
BLOCKS = {
    "llama": "model.layers",
    "qwen2": "model.layers",
    "mistral": "model.layers",
    "gpt2": "transformer.h",
    "bert": "bert.encoder.layer",
}
VOCAB, HIDDEN, LAYERS = 64, 32, 2


def config_of(arch: str, **overrides):
    import transformers

    decoder = dict(
        vocab_size=VOCAB,
        hidden_size=HIDDEN,
        intermediate_size=48,
        num_hidden_layers=LAYERS,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=64,
        pad_token_id=0,
    )
    if arch == "llama":
        return transformers.LlamaConfig(**decoder | overrides)
    if arch == "qwen2":
        return transformers.Qwen2Config(**decoder | overrides)
    if arch == "mistral":
        return transformers.MistralConfig(**decoder | overrides)
    if arch == "gpt2":
        values = dict(
            vocab_size=VOCAB, n_embd=HIDDEN, n_layer=LAYERS, n_head=4, n_positions=64,
            resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0, bos_token_id=1, eos_token_id=2,
        )  # fmt: skip
        return transformers.GPT2Config(**values | overrides)
    values = dict(
        vocab_size=VOCAB, hidden_size=HIDDEN, intermediate_size=48, num_hidden_layers=LAYERS,
        num_attention_heads=4, max_position_embeddings=64, hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0, pad_token_id=0,
    )  # fmt: skip
    return transformers.BertConfig(**values | overrides)


def build(arch: str, seed: int = 0, **overrides):
    """A tiny model of `arch`: a causal LM, or BERT with its masked-LM head; eval mode, seeded."""
    import torch
    from transformers import AutoModelForCausalLM, BertForMaskedLM

    torch.manual_seed(seed)
    config = config_of(arch, **overrides)
    model = BertForMaskedLM(config) if arch == "bert" else AutoModelForCausalLM.from_config(config)
    return model.eval()


def tokens(batch: int = 2, length: int = 10, seed: int = 1):
    import torch

    generator = torch.Generator().manual_seed(seed)
    return torch.randint(3, VOCAB, (batch, length), generator=generator)


def logits_of(model, ids):
    import torch

    with torch.no_grad():
        return model(input_ids=ids).logits


def settings(placement: str = "houlsby", **values) -> AdapterBlock:
    return AdapterBlock(kind="bottleneck", placement=placement, **values)


def perturb_up(model, scale: float = 0.5, seed: int = 3) -> None:
    """Non-zero up-projections, as training would leave them."""
    import torch

    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for adapter in model.adapters:
            adapter.up.weight.copy_(torch.randn(adapter.up.weight.shape, generator=generator) * scale)


def train_steps(model, ids, steps: int = 3) -> None:
    import torch

    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=1e-2)
    model.train()
    for _ in range(steps):
        optimizer.zero_grad()
        model(input_ids=ids, labels=ids).loss.backward()
        optimizer.step()
    model.eval()


def hooked_paths(model) -> list[str]:
    base = model.get_base_model()
    return [path for path, module in base.named_modules() if module._forward_hooks]


# -- the start: exactly the base ------------------------------------------------------------------------
@pytest.mark.parametrize("placement", PLACEMENTS)
@pytest.mark.parametrize("arch", ARCHS)
def test_adapted_model_starts_equal_to_its_base(arch: str, placement: str) -> None:
    model, ids = build(arch), tokens()
    before = logits_of(model, ids)
    adapted = apply_bottleneck(model, settings(placement, layer_norm=True))
    assert (logits_of(adapted, ids) - before).abs().max().item() <= 1e-6


@pytest.mark.parametrize("arch", ARCHS)
def test_a_nonzero_up_projection_changes_the_output(arch: str) -> None:
    # negative control of the test above: the equality comes from the zero up-projection, not from
    # adapters that never run
    model, ids = build(arch), tokens()
    before = logits_of(model, ids)
    adapted = apply_bottleneck(model, settings(size=8))
    perturb_up(adapted, scale=1.0)
    # 100 times the tolerance of the equality (BERT's logits are small at its 0.02 init)
    assert (logits_of(adapted, ids) - before).abs().max().item() > 1e-4


@pytest.mark.parametrize("arch", ["llama", "gpt2"])
def test_greedy_generation_equals_the_bases_before_training(arch: str) -> None:
    model, ids = build(arch), tokens(batch=1, length=4)
    kwargs = dict(max_new_tokens=8, do_sample=False, pad_token_id=0)
    before = model.generate(ids, **kwargs)
    adapted = apply_bottleneck(model, settings())
    assert adapted.generate(ids, **kwargs).tolist() == before.tolist()
    # generate goes through the adapters (a changed adapter changes what it generates, here forcing it)
    perturb_up(adapted, scale=20.0)
    assert adapted.generate(ids, **kwargs).tolist() != before.tolist()


# -- training -------------------------------------------------------------------------------------------
@pytest.mark.parametrize("layer_norm", [False, True])
@pytest.mark.parametrize("arch", ARCHS)
def test_training_moves_the_adapters_and_leaves_the_base_bit_unchanged(arch: str, layer_norm: bool) -> None:
    import torch

    model, ids = build(arch), tokens()
    base_copy = {name: tensor.clone() for name, tensor in model.state_dict().items()}
    before = logits_of(model, ids)
    # 8 wide: with 2 (hidden 32 / 16) a ReLU adapter of a tiny random model can start dead on every token
    adapted = apply_bottleneck(model, settings(layer_norm=layer_norm, size=8))
    train_steps(adapted, ids)
    assert (logits_of(adapted, ids) - before).abs().max().item() > 1e-4
    # the last step's gradients reached both projections of every adapter (the first step's down grad is
    # zero: it flows through the zero up-projection)
    for adapter in adapted.adapters:
        for projection in (adapter.down, adapter.up):
            assert projection.weight.grad is not None and projection.weight.grad.abs().sum() > 0
    after = model.state_dict()
    assert set(after) == set(base_copy)
    assert all(torch.equal(after[name], base_copy[name]) for name in base_copy)


def test_only_adapter_parameters_require_grad() -> None:
    adapted = apply_bottleneck(build("llama"), settings())
    trainable = sorted(name for name, p in adapted.named_parameters() if p.requires_grad)
    assert trainable and all(name.startswith("adapters.") for name in trainable)
    assert all(not p.requires_grad for p in adapted.get_base_model().parameters())


# -- where the adapters sit ----------------------------------------------------------------------------
@pytest.mark.parametrize("placement", PLACEMENTS)
@pytest.mark.parametrize("arch", ARCHS)
def test_hooks_sit_where_the_sublayers_write_into_the_residual_stream(arch: str, placement: str) -> None:
    adapted = apply_bottleneck(build(arch), settings(placement))
    attention, mlp = WRITERS[arch]
    per_layer = [attention, mlp] if placement == "houlsby" else [mlp]
    expected = [f"{BLOCKS[arch]}.{i}.{writer}" for i in range(LAYERS) for writer in per_layer]
    assert hooked_paths(adapted) == expected
    assert len(expected) == LAYERS * (2 if placement == "houlsby" else 1)
    assert adapted.writer_paths == expected
    # each hook is on a module whose output is the hidden width (it writes into the residual stream)
    modules = dict(adapted.get_base_model().named_modules())
    assert all(len(modules[path]._forward_hooks) == 1 for path in expected)


# -- parameter count ------------------------------------------------------------------------------------
@pytest.mark.parametrize("layer_norm", [False, True])
@pytest.mark.parametrize("placement", PLACEMENTS)
@pytest.mark.parametrize("arch", ARCHS)
def test_parameter_count_is_the_formula(arch: str, placement: str, layer_norm: bool) -> None:
    block = settings(placement, layer_norm=layer_norm, reduction_factor=5.0)
    model = build(arch)
    adapted = apply_bottleneck(model, block)
    trainable = sum(p.numel() for p in adapted.parameters() if p.requires_grad)
    size = round(HIDDEN / 5)  # 6
    per_adapter = HIDDEN * size + size + size * HIDDEN + HIDDEN + (2 * HIDDEN if layer_norm else 0)
    per_layer = 2 if placement == "houlsby" else 1
    assert trainable == bottleneck_parameter_count(model.config, block) == per_adapter * per_layer * LAYERS
    # and peaufine's budget counts the same on the wrapper, the base counted once
    budget = count_parameters(adapted)
    assert budget.trainable == trainable
    assert budget.total == count_parameters(model).total + trainable


def test_importing_the_adapters_does_not_import_torch() -> None:
    # `peaufine --help` imports no torch; models/adapters imports this module at its top
    code = "import sys, peaufine.models.adapters; sys.exit('torch' in sys.modules)"
    env = os.environ | {"PYTHONPATH": str(Path(__file__).parents[2] / "src")}
    assert subprocess.run([sys.executable, "-c", code], env=env, timeout=60).returncode == 0


def test_adapter_size_is_size_or_hidden_over_reduction_factor() -> None:
    assert adapter_size(768, settings(reduction_factor=16.0)) == 48
    assert adapter_size(768, settings(size=7)) == 7
    assert adapter_size(32, settings(reduction_factor=1000.0)) == 1  # never zero wide


def test_budget_on_the_meta_device() -> None:
    # `peaufine params` builds models on the meta device: the adapters must be built there too
    import torch
    from transformers import AutoModelForCausalLM

    config = config_of("llama")
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config)
    block = settings(layer_norm=True)
    adapted = apply_adapter(model, block)
    assert all(p.device.type == "meta" for p in adapted.adapters.parameters())
    assert count_parameters(adapted).trainable == bottleneck_parameter_count(config, block)


# -- the wrapper as the rest of peaufine uses it -------------------------------------------------------
def test_apply_adapter_wraps_and_the_wrapper_passes_for_its_base() -> None:
    import torch

    model = build("llama")
    apply_freeze(model, FreezeBlock(layers=[0]))  # as load_for_training does, before the adapter
    adapted = apply_adapter(model, settings())
    assert is_bottleneck_model(adapted) and not is_bottleneck_model(model)
    assert peft_base(adapted) is model
    assert adapted.config is model.config and adapted.generation_config is model.generation_config
    assert adapted.get_output_embeddings() is model.get_output_embeddings()
    # the adapters belong to the wrapper's parameters and state_dict, not to the base's
    assert {n for n, _ in adapted.named_parameters() if n.startswith("adapters.")}
    assert any(n.startswith("adapters.") for n in adapted.state_dict())
    assert not any("adapter" in n for n in model.state_dict())
    # a dtype move carries the adapters along, and the moved model still starts as its base
    ids = tokens()
    adapted.to(torch.float64)
    assert all(p.dtype == torch.float64 for p in adapted.adapters.parameters())
    assert torch.equal(logits_of(adapted, ids), logits_of(adapted.get_base_model(), ids))
    adapted.to("meta")  # a device move likewise (the one device besides the CPU every machine has)
    assert {p.device.type for p in adapted.parameters()} == {"meta"}


def test_freezing_after_the_adapter_keeps_the_adapters_trainable() -> None:
    # the adapters live beside the base, not in it: freezing the base's parts leaves them to train
    adapted = apply_bottleneck(build("llama"), settings())
    apply_freeze(adapted, FreezeBlock(embeddings=True, layers=[0]))
    assert all(p.requires_grad for p in adapted.adapters.parameters())
    frozen = build("llama").requires_grad_(False)
    with pytest.raises(ModelError, match="leaves no parameter trainable"):  # the check still bites
        apply_freeze(frozen, FreezeBlock())


def test_adapters_are_not_stacked_on_an_adapted_model(tmp_path: Path) -> None:
    adapted = apply_bottleneck(build("llama"), settings())
    save_bottleneck(adapted, None, tmp_path / "adapter")
    for model in (adapted, adapted.get_base_model()):
        with pytest.raises(ModelError, match="already has bottleneck adapters"):
            apply_bottleneck(model, settings())
        with pytest.raises(ModelError, match="already has bottleneck adapters"):
            load_bottleneck(model, tmp_path / "adapter")
    assert len(hooked_paths(adapted)) == 2 * LAYERS  # one hook per writer still


def test_a_deep_copy_runs_its_own_adapters() -> None:
    import torch

    adapted, ids = apply_bottleneck(build("llama"), settings()), tokens()
    start = logits_of(adapted, ids)
    twin = copy.deepcopy(adapted)
    perturb_up(twin)
    assert torch.equal(logits_of(adapted, ids), start)  # the copy's change does not reach the original
    assert not torch.equal(logits_of(twin, ids), start)


@pytest.mark.parametrize("arch", ["llama", "bert"])
def test_disable_adapter_gives_the_base_output_after_training(arch: str) -> None:
    import torch

    from peaufine.methods.preference import adapter_disabled

    model, ids = build(arch), tokens()
    before = logits_of(model, ids)
    adapted = apply_bottleneck(model, settings())
    train_steps(adapted, ids)
    trained = logits_of(adapted, ids)
    assert not torch.allclose(trained, before)
    with adapted.disable_adapter():
        assert (logits_of(adapted, ids) - before).abs().max().item() <= 1e-6
    assert torch.equal(logits_of(adapted, ids), trained)  # back on after the block
    # DPO's reference model (method.dpo.reference: adapter) is this very switch
    with adapter_disabled(adapted) as reference:
        assert (logits_of(reference, ids) - before).abs().max().item() <= 1e-6


def test_works_under_bf16_autocast_and_on_a_bf16_base() -> None:
    import torch

    model, ids = build("llama"), tokens()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        before = logits_of(model, ids)
    adapted = apply_bottleneck(model, settings(layer_norm=True))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert torch.equal(logits_of(adapted, ids), before)
        perturb_up(adapted, scale=0.05)
        loss = adapted(input_ids=ids, labels=ids).loss
    loss.backward()
    assert all(
        torch.isfinite(p.grad).all() and p.grad.dtype == torch.float32 for p in adapted.adapters.parameters()
    )
    # a base loaded in bf16 keeps float32 adapters (as PEFT does) and its own dtype in the residual stream
    half = build("llama").to(torch.bfloat16)
    half_before = logits_of(half, ids)
    adapted_half = apply_bottleneck(half, settings())
    assert all(p.dtype == torch.float32 for p in adapted_half.adapters.parameters())
    assert torch.equal(logits_of(adapted_half, ids), half_before)


@pytest.mark.parametrize("arch", ["llama", "gpt2"])
def test_activation_checkpointing_gives_the_same_gradients(arch: str) -> None:
    import torch

    ids = tokens()
    grads = []
    for checkpointing in (False, True):
        adapted = apply_bottleneck(build(arch), settings())
        perturb_up(adapted, scale=0.1)
        if checkpointing:
            enable_activation_checkpointing(adapted)  # the training path's own switch
        adapted.train()
        adapted(input_ids=ids, labels=ids).loss.backward()
        grads.append([p.grad.clone() for p in adapted.adapters.parameters()])
    assert all(g.abs().sum() > 0 for g in grads[0][:4])
    # checkpointing did recompute: the base's blocks run under it
    assert adapted.get_base_model().is_activation_checkpointing
    assert all(torch.allclose(a, b, atol=1e-6) for a, b in zip(*grads, strict=True))


# -- sequence classifiers -------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("arch", "head"), [("bert", ["classifier.bias", "classifier.weight"]), ("llama", ["score.weight"])]
)
def test_a_sequence_classifier_trains_its_head_with_the_adapters(arch: str, head: list[str]) -> None:
    import torch
    from transformers import AutoModelForSequenceClassification

    torch.manual_seed(0)
    model = AutoModelForSequenceClassification.from_config(config_of(arch, num_labels=3)).eval()
    ids = tokens()
    before = logits_of(model, ids)
    adapted = apply_bottleneck(model, settings())
    assert (logits_of(adapted, ids) - before).abs().max().item() <= 1e-6
    base = adapted.get_base_model()
    assert sorted(n for n, p in base.named_parameters() if p.requires_grad) == head
    assert sorted(adapted.head_names) == head
    head_count = sum(p.numel() for n, p in base.named_parameters() if n in head)
    trainable = sum(p.numel() for p in adapted.parameters() if p.requires_grad)
    assert trainable - head_count == bottleneck_parameter_count(model.config, settings())
    # the pretrained backbone (BERT's pooler included) stays frozen
    assert not any(p.requires_grad for n, p in base.named_parameters() if n not in head)


# -- saving and loading ---------------------------------------------------------------------------------
_LOAD_IN_A_NEW_PROCESS = """
import sys, torch
from safetensors.torch import load_file, save_file
from transformers import AutoModelForCausalLM
from peaufine.models.bottleneck import load_bottleneck
base = AutoModelForCausalLM.from_pretrained(sys.argv[1]).eval()
model = load_bottleneck(base, sys.argv[2])
ids = load_file(sys.argv[3])["ids"]
with torch.no_grad():
    save_file({"logits": model(input_ids=ids).logits.contiguous()}, sys.argv[4])
"""


def test_save_then_load_in_a_new_process_gives_the_same_logits(tmp_path: Path) -> None:
    import torch
    from safetensors.torch import load_file, save_file

    model, ids = build("llama"), tokens()
    model.save_pretrained(tmp_path / "base")
    adapted = apply_bottleneck(model, settings(layer_norm=True, non_linearity="gelu"))
    train_steps(adapted, ids)
    expected = logits_of(adapted, ids)
    save_bottleneck(adapted, None, tmp_path / "adapter")
    assert is_bottleneck_dir(tmp_path / "adapter") and not is_bottleneck_dir(tmp_path / "base")
    assert sorted(p.name for p in (tmp_path / "adapter").iterdir()) == [BOTTLENECK_WEIGHTS, BOTTLENECK_CONFIG]
    saved = json.loads((tmp_path / "adapter" / BOTTLENECK_CONFIG).read_text())
    assert saved["writers"] == adapted.writer_paths and saved["base_model_class"] == "LlamaForCausalLM"
    save_file({"ids": ids}, tmp_path / "ids.safetensors")
    env = os.environ | {"PYTHONPATH": str(Path(__file__).parents[2] / "src"), "OMP_NUM_THREADS": "1"}
    subprocess.run(
        [sys.executable, "-c", _LOAD_IN_A_NEW_PROCESS, str(tmp_path / "base"), str(tmp_path / "adapter"),
         str(tmp_path / "ids.safetensors"), str(tmp_path / "logits.safetensors")],
        check=True, env=env, timeout=120,
    )  # fmt: skip
    loaded = load_file(tmp_path / "logits.safetensors")["logits"]
    assert (loaded - expected).abs().max().item() <= 1e-6
    assert not torch.allclose(expected, logits_of(build("llama"), ids))  # the adapters are in what loaded


def test_save_and_load_carry_a_classifiers_head(tmp_path: Path) -> None:
    import torch
    from transformers import AutoModelForSequenceClassification

    def classifier(seed: int):
        torch.manual_seed(seed)
        return AutoModelForSequenceClassification.from_config(config_of("bert", num_labels=2)).eval()

    ids = tokens()
    adapted = apply_bottleneck(classifier(0), settings("pfeiffer"))
    train_steps_cls(adapted, ids)
    expected = logits_of(adapted, ids)
    adapted.save_pretrained(tmp_path / "adapter")  # as PeftModel's: the adapter folder
    assert is_bottleneck_dir(tmp_path / "adapter")
    # the same backbone with a head drawn afresh (what loading a classifier's base gives)
    fresh = classifier(0)
    with torch.no_grad():
        fresh.classifier.weight.normal_()
    loaded = load_bottleneck(fresh, tmp_path / "adapter")
    assert torch.allclose(logits_of(loaded, ids), expected, atol=1e-6)


def train_steps_cls(model, ids) -> None:
    import torch

    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    labels = torch.tensor([0, 1])
    for _ in range(3):
        optimizer.zero_grad()
        model(input_ids=ids, labels=labels).loss.backward()
        optimizer.step()


def test_a_training_checkpoint_of_the_wrapper_restores_its_adapters(tmp_path: Path) -> None:
    # the engine checkpoints (and resumes) the whole trained module with safetensors' save_model
    import torch
    from safetensors.torch import save_model

    from peaufine.engine.checkpoint import WEIGHTS, load_weights

    ids = tokens()
    adapted = apply_bottleneck(build("gpt2"), settings())  # GPT-2 ties its head: a shared tensor
    train_steps(adapted, ids)
    tmp_path.joinpath("step").mkdir()
    save_model(adapted, str(tmp_path / "step" / WEIGHTS))
    fresh = apply_bottleneck(build("gpt2"), settings())
    load_weights(fresh, tmp_path / "step")
    assert torch.equal(logits_of(fresh, ids), logits_of(adapted, ids))


def test_load_refuses_a_folder_that_does_not_fit_its_base(tmp_path: Path) -> None:
    folder = tmp_path / "adapter"
    save_bottleneck(apply_bottleneck(build("llama"), settings()), None, folder)
    with pytest.raises(ModelError, match="hidden size 32, not 48"):
        load_bottleneck(build("llama", hidden_size=48), folder)
    with pytest.raises(ModelError, match="2 layers, not 3"):
        load_bottleneck(build("llama", num_hidden_layers=3), folder)
    with pytest.raises(ModelError, match=r"adapter.*do(es)? not have"):
        load_bottleneck(build("gpt2"), folder)  # the same widths, other writer modules
    # a refused load leaves the base untouched: no hooks, nothing frozen
    gpt2 = build("gpt2")
    with pytest.raises(ModelError):
        load_bottleneck(gpt2, folder)
    assert not any(m._forward_hooks for m in gpt2.modules())
    assert all(p.requires_grad for p in gpt2.parameters())


def test_load_refuses_damaged_or_mismatched_weights(tmp_path: Path) -> None:
    from safetensors.torch import load_file, save_file

    folder = tmp_path / "adapter"
    save_bottleneck(apply_bottleneck(build("llama"), settings()), None, folder)
    weights = folder / BOTTLENECK_WEIGHTS
    whole = weights.read_bytes()
    weights.write_bytes(whole[:-10])
    with pytest.raises(ModelError, match=r"damaged.*truncated"):
        load_bottleneck(build("llama"), folder)
    weights.write_bytes(whole)
    tensors = load_file(weights)
    del tensors["adapters.3.up.bias"]
    save_file(tensors, weights)
    base = build("llama")
    with pytest.raises(ModelError, match=r"adapters\.3\.up\.bias missing"):
        load_bottleneck(base, folder)
    assert not any(m._forward_hooks for m in base.modules())
    (folder / BOTTLENECK_CONFIG).write_text("{")
    with pytest.raises(ModelError, match="not valid JSON"):
        load_bottleneck(build("llama"), folder)


def test_the_tokenizer_is_saved_beside_the_adapter(tmp_path: Path) -> None:
    from peaufine.models.tokenizer import load_tokenizer, train_bpe

    tokenizer = train_bpe(["a small text to learn a few merges from"] * 20, vocab_size=300)
    save_bottleneck(apply_bottleneck(build("llama"), settings()), tokenizer, tmp_path / "adapter")
    text = "a few merges"
    assert load_tokenizer(str(tmp_path / "adapter"))(text).input_ids == tokenizer(text).input_ids


def test_a_failed_save_leaves_the_previous_folder_whole(tmp_path: Path) -> None:
    class BrokenTokenizer:
        def save_pretrained(self, directory: Path) -> None:
            raise OSError("disk full")

    folder = tmp_path / "adapter"
    adapted = apply_bottleneck(build("llama"), settings())
    save_bottleneck(adapted, None, folder)
    before = {p.name: p.read_bytes() for p in folder.iterdir()}
    perturb_up(adapted)
    with pytest.raises(OSError, match="disk full"):
        save_bottleneck(adapted, BrokenTokenizer(), folder)
    assert {p.name: p.read_bytes() for p in folder.iterdir()} == before
    assert [p.name for p in tmp_path.iterdir()] == ["adapter"]  # no staging folder left behind


def test_save_refuses_a_model_without_bottleneck_adapters(tmp_path: Path) -> None:
    with pytest.raises(ModelError, match=r"model\.adapter\.kind"):
        save_bottleneck(build("llama"), None, tmp_path / "adapter")
    assert not (tmp_path / "adapter").exists()


# -- what it cannot adapt -------------------------------------------------------------------------------
def _moe(kind: str):
    import transformers

    common = dict(
        vocab_size=VOCAB, hidden_size=HIDDEN, intermediate_size=48, num_hidden_layers=LAYERS,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
    )  # fmt: skip
    if kind == "mixtral":
        config = transformers.MixtralConfig(**common, num_local_experts=4, num_experts_per_tok=2)
    else:
        config = transformers.Qwen2MoeConfig(
            **common, num_experts=4, num_experts_per_tok=2, moe_intermediate_size=16,
            shared_expert_intermediate_size=16,
        )  # fmt: skip
    return transformers.AutoModelForCausalLM.from_config(config)


@pytest.mark.parametrize("case", ["mixtral", "qwen2_moe", "cross_attention", "no_blocks"])
def test_a_model_it_cannot_adapt_is_a_clear_error(case: str) -> None:
    import torch
    from transformers import LlamaConfig

    if case in ("mixtral", "qwen2_moe"):
        model, reason = _moe(case.split("_")[0]), "mixture-of-experts"
    elif case == "cross_attention":
        # three sub-layers write into the residual stream: attention, cross-attention, MLP
        model, reason = build("gpt2", add_cross_attention=True), "has 3"
    else:
        model = torch.nn.Sequential(torch.nn.Linear(HIDDEN, HIDDEN))
        model.config = LlamaConfig(hidden_size=HIDDEN, num_hidden_layers=LAYERS)
        reason = "no ModuleList"
    with pytest.raises(ModelError, match=r"model\.adapter\.kind: bottleneck") as caught:
        apply_adapter(model, settings())
    assert reason in str(caught.value) and "lora" in str(caught.value)
    assert not any(m._forward_hooks for m in model.modules())


def test_residual_writers_of_a_pfeiffer_adapter_are_the_mlps() -> None:
    assert residual_writers(build("gpt2"), "pfeiffer") == [
        "transformer.h.0.mlp.c_proj",
        "transformer.h.1.mlp.c_proj",
    ]

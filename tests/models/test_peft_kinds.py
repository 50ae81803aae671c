"""(IA)3 and prompt tuning through PEFT: counts against PEFT and a formula, the base's output at the start,
merges and reloads with the same logits, clear errors, and a soft prompt's positions kept out of every
objective (next-token loss, DPO's log-probs, the chunked loss, a decoder classifier's pooling, generation)."""

from __future__ import annotations

import pytest

from peaufine.commands.merge import merge_adapter
from peaufine.data.batching import IGNORE_INDEX
from peaufine.errors import ModelError
from peaufine.models.adapters import (
    MERGEABLE_KINDS,
    apply_adapter,
    as_base,
    can_merge,
    input_positions,
    merged_copy,
    prompt_length,
    save_adapter,
)
from peaufine.recipe import AdapterBlock

TEXTS = ["The capital of Veloria is Tarsk. Tarsk lies on the river Ombe."] * 50
VOCAB = 64


@pytest.fixture(scope="module")
def tokenizer():
    from peaufine.models.tokenizer import train_bpe

    return train_bpe(TEXTS, vocab_size=300)


def llama_config(vocab_size: int = VOCAB, **extra):
    from transformers import LlamaConfig

    return LlamaConfig(
        vocab_size=vocab_size,
        hidden_size=32,
        intermediate_size=48,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=1,
        max_position_embeddings=64,
        tie_word_embeddings=False,
        pad_token_id=0,
        **extra,
    )


def gpt2_config(vocab_size: int = VOCAB):
    from transformers import GPT2Config

    return GPT2Config(
        vocab_size=vocab_size, n_embd=32, n_layer=2, n_head=2, n_positions=64, resid_pdrop=0.0,
        embd_pdrop=0.0, attn_pdrop=0.0, bos_token_id=None, eos_token_id=None,
    )  # fmt: skip


def build(config, seed: int = 0):
    import torch
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    return AutoModelForCausalLM.from_config(config).eval()


def ids_of(seed: int = 0, rows: int = 2, length: int = 12):
    import torch

    return torch.randint(1, VOCAB, (rows, length), generator=torch.Generator().manual_seed(seed))


def logits(model, ids):
    import torch

    with torch.no_grad():
        return model(input_ids=ids).logits


def perturb(model, marker: str, seed: int = 1) -> None:
    """Move the adapter's parameters (named with `marker`) off their identity start, as training would."""
    import torch

    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if marker in name:
                param.add_(torch.randn(param.shape, generator=generator) * 0.3)


IA3 = AdapterBlock(kind="ia3")
PROMPT = AdapterBlock(kind="prompt_tuning", num_virtual_tokens=5)


# -- (IA)3 --------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("config", "targets", "feedforward"),
    [
        (llama_config, {"k_proj", "v_proj", "down_proj"}, {"down_proj"}),
        (gpt2_config, {"c_attn", "mlp.c_proj"}, {"mlp.c_proj"}),
    ],
)
def test_ia3_all_linear_is_peft_default_set_and_counts_one_scale_per_channel(config, targets, feedforward):
    model = apply_adapter(build(config()), IA3)
    settings = model.peft_config["default"]
    assert set(settings.target_modules) == targets and set(settings.feedforward_modules) == feedforward
    # one scale per output channel of a target, per input channel of a feed-forward target
    expected = 0
    for path, module in model.get_base_model().named_modules():
        if hasattr(module, "ia3_l"):
            weight = module.get_base_layer().weight
            conv1d = type(module.get_base_layer()).__name__ == "Conv1D"  # weight stored (in, out)
            out_features, in_features = weight.shape[::-1] if conv1d else weight.shape
            is_ff = any(path.endswith(name) for name in feedforward)
            expected += in_features if is_ff else out_features
    trainable, _ = model.get_nb_trainable_parameters()
    assert trainable == expected > 0
    assert all("ia3_l" in name for name, p in model.named_parameters() if p.requires_grad)


def test_ia3_starts_as_the_base_and_merges_to_the_same_logits():
    import torch

    ids = ids_of()
    base = logits(build(llama_config()), ids)
    model = apply_adapter(build(llama_config()), IA3)
    torch.testing.assert_close(logits(model, ids), base, atol=1e-6, rtol=0)  # the vectors start at one
    perturb(model, "ia3_l")
    adapted = logits(model, ids)
    assert (adapted - base).abs().max() > 1e-2  # negative control: the adapter changes the output
    merged = merged_copy(model)
    assert type(merged).__name__ == "LlamaForCausalLM"
    torch.testing.assert_close(logits(merged, ids), adapted, atol=1e-5, rtol=0)
    torch.testing.assert_close(logits(model, ids), adapted, atol=0, rtol=0)  # the training model untouched


def test_ia3_explicit_targets_are_checked_and_feedforward_must_be_among_them():
    with pytest.raises(ModelError, match=r"'v_prj'.*did you mean 'v_proj'"):
        apply_adapter(build(llama_config()), AdapterBlock(kind="ia3", target_modules=["v_prj"]))
    with pytest.raises(ModelError, match=r"model.adapter.feedforward_modules: down_proj not among"):
        apply_adapter(
            build(llama_config()),
            AdapterBlock(kind="ia3", target_modules=["q_proj"], feedforward_modules=["down_proj"]),
        )
    # explicit targets without feedforward_modules: the architecture's default feed-forward ones among them
    model = apply_adapter(
        build(llama_config()), AdapterBlock(kind="ia3", target_modules=["q_proj", "down_proj"])
    )
    assert set(model.peft_config["default"].feedforward_modules) == {"down_proj"}


def test_ia3_all_linear_on_an_architecture_without_a_peft_default_names_the_layers():
    from transformers import Phi3Config

    config = Phi3Config(
        vocab_size=VOCAB, hidden_size=32, intermediate_size=48, num_hidden_layers=1, num_attention_heads=2,
        num_key_value_heads=1, max_position_embeddings=64, pad_token_id=0,
    )  # fmt: skip
    with pytest.raises(ModelError, match=r"model.adapter.target_modules: PEFT has no default.*qkv_proj"):
        apply_adapter(build(config), IA3)


# -- prompt tuning ------------------------------------------------------------------------------------------
def test_prompt_tuning_trains_only_its_virtual_tokens_and_prepends_them():
    model = apply_adapter(build(llama_config()), PROMPT)
    trainable, _ = model.get_nb_trainable_parameters()
    assert trainable == 5 * 32  # num_virtual_tokens x hidden size
    assert prompt_length(model) == 5
    ids = ids_of()
    assert logits(model, ids).shape[1] == 12 + 5
    with model.disable_adapter():
        assert prompt_length(model) == 0 and logits(model, ids).shape[1] == 12
    assert prompt_length(build(llama_config())) == 0


def test_prompt_init_text_starts_from_the_texts_embeddings(tokenizer, tmp_path):
    import torch

    tokenizer.save_pretrained(tmp_path)
    base = build(llama_config(vocab_size=len(tokenizer)))
    table = base.get_input_embeddings().weight.detach().clone()
    adapter = AdapterBlock(
        kind="prompt_tuning", num_virtual_tokens=4, prompt_init="text", prompt_init_text="the river Ombe"
    )
    model = apply_adapter(base, adapter, tokenizer_path=str(tmp_path))
    text_ids = tokenizer("the river Ombe")["input_ids"]
    wanted = (text_ids * 4)[:4]
    prompt = model.prompt_encoder["default"].embedding.weight
    torch.testing.assert_close(prompt.detach(), table[wanted], atol=0, rtol=0)
    with pytest.raises(ModelError, match="prompt_init: text needs the model's tokenizer"):
        apply_adapter(build(llama_config()), adapter)


def test_a_soft_prompt_cannot_be_merged_and_can_merge_says_so():
    assert MERGEABLE_KINDS == ("lora", "ia3")
    assert [can_merge(k) for k in ("none", "lora", "ia3", "prompt_tuning", "bottleneck")] == [
        True,
        True,
        True,
        False,
        False,
    ]
    with pytest.raises(ModelError, match=r"cannot be merged.*PeftModel.from_pretrained"):
        merged_copy(apply_adapter(build(llama_config()), PROMPT))


def test_as_base_switches_a_soft_prompt_off_and_leaves_other_kinds_alone():
    import torch

    ids = ids_of()
    base = logits(build(llama_config()), ids)
    prompted = apply_adapter(build(llama_config()), PROMPT)
    with as_base(prompted):
        torch.testing.assert_close(logits(prompted, ids), base, atol=0, rtol=0)
    assert logits(prompted, ids).shape[1] == 17  # on again after the block
    ia3 = apply_adapter(build(llama_config()), IA3)
    perturb(ia3, "ia3_l")
    adapted = logits(ia3, ids)
    with as_base(ia3):  # a kind that starts as the identity keeps its trained state: nothing switched
        torch.testing.assert_close(logits(ia3, ids), adapted, atol=0, rtol=0)


def test_input_positions_are_the_last_ones_and_the_same_tensor_without_a_prefix():
    import torch

    ids = torch.zeros(2, 3, dtype=torch.long)
    values = torch.arange(2 * 5).view(2, 5, 1)
    assert input_positions(values, ids).squeeze(-1).tolist() == [[2, 3, 4], [7, 8, 9]]
    plain = torch.ones(2, 3, 4)
    assert input_positions(plain, ids) is plain


def _batch(rows: int = 3, length: int = 10):
    """Right-padded rows of different lengths (pad 0), labels pre-shifted, the first 3 positions masked."""
    import torch

    ids = ids_of(seed=3, rows=rows, length=length)
    mask = torch.ones_like(ids)
    for row, real in enumerate([length, length - 3, length - 5][:rows]):
        ids[row, real:] = 0
        mask[row, real:] = 0
    labels = torch.full_like(ids, IGNORE_INDEX)
    labels[:, 3:-1] = ids[:, 4:]  # position t predicts token t + 1
    labels[:, :-1][mask[:, 1:] == 0] = IGNORE_INDEX  # nothing predicts a pad
    return {"input_ids": ids, "attention_mask": mask, "labels": labels}


def _hand_loss(per_position, labels):
    """Summed cross-entropy of each target from log-softmax, written out."""
    logp = per_position.float().log_softmax(-1)
    total = 0.0
    for b in range(labels.shape[0]):
        for t in range(labels.shape[1]):
            if labels[b, t] != IGNORE_INDEX:
                total -= float(logp[b, t, labels[b, t]])
    return total


def test_next_token_loss_under_a_soft_prompt_reads_the_inputs_own_positions():
    import torch

    from peaufine.methods.lm import NextTokenLoss

    model = apply_adapter(build(llama_config()), PROMPT)
    batch = _batch()
    with torch.no_grad():
        loss = float(NextTokenLoss().loss_sum(model, batch))
        full = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    assert full.shape[1] == 15
    assert loss == pytest.approx(_hand_loss(full[:, 5:], batch["labels"]), rel=1e-5)
    # negative control: the first L positions (the prompt's, shifted) give another number
    assert abs(loss - _hand_loss(full[:, :10], batch["labels"])) > 1e-2
    with torch.no_grad():
        chunked = float(NextTokenLoss(chunk_tokens=4).loss_sum(model, batch))
    assert chunked == pytest.approx(loss, rel=1e-5)


def test_dpo_sequence_log_probs_under_a_soft_prompt_read_the_inputs_positions():
    import torch

    from peaufine.methods.preference import adapter_disabled_logps, sequence_logps

    model = apply_adapter(build(llama_config()), PROMPT)
    batch = _batch()
    with torch.no_grad():
        logps, counts = sequence_logps(model, batch)
        chunked, _ = sequence_logps(model, batch, chunk_tokens=3)
        full = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
        plain = build(llama_config())
        base = plain(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    for row in range(3):
        one = {"labels": batch["labels"][row : row + 1]}
        assert float(logps[row]) == pytest.approx(
            -_hand_loss(full[row : row + 1, 5:], one["labels"]), rel=1e-5
        )
    torch.testing.assert_close(chunked, logps, atol=1e-4, rtol=1e-5)
    assert counts.tolist() == (batch["labels"] != IGNORE_INDEX).sum(-1).tolist()
    # the reference with the prompt switched off is the base model
    reference = adapter_disabled_logps(model, batch)
    hand = [-_hand_loss(base[r : r + 1], batch["labels"][r : r + 1]) for r in range(3)]
    assert reference.tolist() == pytest.approx(hand, rel=1e-5)


def test_a_decoder_classifier_under_a_soft_prompt_pools_each_rows_last_real_token():
    import torch
    from transformers import LlamaForSequenceClassification

    from peaufine.methods.classify import classifier_logits

    torch.manual_seed(0)
    config = llama_config(num_labels=2)
    model = apply_adapter(LlamaForSequenceClassification(config).eval(), PROMPT)
    assert {n.split(".")[-3] for n, p in model.named_parameters() if p.requires_grad} >= {"modules_to_save"}
    batch = _batch()
    with torch.no_grad():
        pooled = classifier_logits(model, batch)
        transformers_own = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
        alone = []
        for row, real in enumerate(batch["attention_mask"].sum(-1).tolist()):
            ids = batch["input_ids"][row : row + 1, :real]  # no padding: the last position is the last token
            alone.append(model(input_ids=ids, attention_mask=torch.ones_like(ids)).logits[0])
    torch.testing.assert_close(pooled, torch.stack(alone), atol=1e-5, rtol=0)
    # negative control: transformers alone pools the last position, a pad of the shorter rows
    assert (transformers_own[1:] - pooled[1:]).abs().max() > 1e-4


def test_generation_under_a_soft_prompt_returns_the_new_tokens_only(tokenizer):
    import torch

    from peaufine.models.generate import generate_texts

    model = apply_adapter(build(llama_config(vocab_size=len(tokenizer))), PROMPT)
    perturb(model, "prompt_encoder")
    prompt = "The capital of Veloria"
    ids = tokenizer(prompt, return_tensors="pt", add_special_tokens=False)["input_ids"]
    with torch.no_grad():
        for _ in range(4):  # greedy decoding by hand, the soft prompt before the whole sequence each time
            step = model(input_ids=ids, attention_mask=torch.ones_like(ids)).logits[:, -1].argmax(-1)
            ids = torch.cat([ids, step[:, None]], dim=1)
    hand = tokenizer.decode(ids[0, -4:], skip_special_tokens=True).strip()
    texts = generate_texts(model, tokenizer, [prompt], max_new_tokens=4, temperature=0.0)
    assert texts == [hand]


# -- saving, reloading, merging -----------------------------------------------------------------------------
@pytest.mark.parametrize(("adapter", "marker"), [(IA3, "ia3_l"), (PROMPT, "prompt_encoder")])
def test_saved_adapter_reloads_with_peft_to_the_same_logits(adapter, marker, tokenizer, tmp_path):
    import torch
    from peft import PeftModel
    from safetensors import safe_open

    model = apply_adapter(build(llama_config(vocab_size=len(tokenizer))), adapter)
    perturb(model, marker)
    save_adapter(model, tokenizer, tmp_path / "adapter")
    with safe_open(str(tmp_path / "adapter" / "adapter_model.safetensors"), framework="pt") as handle:
        keys = list(handle.keys())
    assert keys and all(("ia3_l" in k) or ("prompt_embeddings" in k) for k in keys)  # the adapter only
    loaded = PeftModel.from_pretrained(build(llama_config(vocab_size=len(tokenizer))), tmp_path / "adapter")
    ids = ids_of()
    torch.testing.assert_close(logits(loaded.eval(), ids), logits(model, ids), atol=1e-6, rtol=0)


def test_merge_command_folds_ia3_and_refuses_a_soft_prompt(tokenizer, tmp_path):
    import torch
    from transformers import AutoModelForCausalLM

    base = build(llama_config(vocab_size=len(tokenizer)))
    base.save_pretrained(tmp_path / "base")
    tokenizer.save_pretrained(tmp_path / "base")
    ia3 = apply_adapter(build(llama_config(vocab_size=len(tokenizer))), IA3)
    perturb(ia3, "ia3_l")
    save_adapter(ia3, tokenizer, tmp_path / "ia3")
    merge_adapter(tmp_path / "base", tmp_path / "ia3", tmp_path / "merged")
    merged = AutoModelForCausalLM.from_pretrained(tmp_path / "merged").eval()
    ids = ids_of()
    torch.testing.assert_close(logits(merged, ids), logits(ia3, ids), atol=1e-5, rtol=0)

    prompt = apply_adapter(build(llama_config(vocab_size=len(tokenizer))), PROMPT)
    save_adapter(prompt, tokenizer, tmp_path / "prompt")
    with pytest.raises(ModelError, match=r"PROMPT_TUNING, which cannot be merged.*PeftModel.from_pretrained"):
        merge_adapter(tmp_path / "base", tmp_path / "prompt", tmp_path / "out")
    assert not (tmp_path / "out").exists()


# -- parameter accounting -----------------------------------------------------------------------------------
@pytest.mark.parametrize("config", [llama_config, gpt2_config])
@pytest.mark.parametrize(
    "adapter",
    [
        IA3,
        AdapterBlock(kind="ia3", target_modules=["q_proj", "down_proj"], feedforward_modules=["down_proj"]),
        PROMPT,
        AdapterBlock(kind="prompt_tuning", num_virtual_tokens=3, prompt_init="text", prompt_init_text="a b"),
    ],
    ids=["ia3", "ia3-explicit", "prompt", "prompt-text"],
)
def test_adapter_budget_on_the_meta_device_is_pefts_own_count(config, adapter, tokenizer, tmp_path):
    from peaufine.models.budget import adapter_budget, count_parameters

    if adapter.target_modules != "all-linear" and config is gpt2_config:
        adapter = AdapterBlock(kind="ia3", target_modules=["c_attn", "c_fc"], feedforward_modules=["c_fc"])
    tokenizer.save_pretrained(tmp_path)
    vocab = len(tokenizer)  # a text start reads the text's token ids from the model's table
    base_total = count_parameters(build(config(vocab))).total
    real = apply_adapter(build(config(vocab)), adapter, tokenizer_path=str(tmp_path))
    peft_trainable, peft_total = real.get_nb_trainable_parameters()
    budget = adapter_budget(config(vocab), adapter)
    assert (budget.trainable, budget.total, budget.frozen) == (peft_trainable, peft_total, base_total)
    if adapter.kind == "prompt_tuning":
        assert budget.trainable == adapter.num_virtual_tokens * 32  # virtual tokens x hidden size
    row = "soft prompt" if adapter.kind == "prompt_tuning" else "(IA)3 adapter"
    assert budget.by_module_type[row] == {"total": peft_trainable, "trainable": peft_trainable}


def test_a_soft_prompts_positions_count_in_the_memory_estimate():
    from peaufine.models.budget import adapter_budget, estimate_memory

    config = llama_config()
    budget = adapter_budget(config, PROMPT)
    with_prompt = estimate_memory(config, budget, batch_size=2, seq_len=20, prefix_tokens=5)
    as_longer = estimate_memory(config, budget, batch_size=2, seq_len=25)
    plain = estimate_memory(config, budget, batch_size=2, seq_len=20)
    assert with_prompt.activations == as_longer.activations > plain.activations
    assert (with_prompt.weights, with_prompt.gradients) == (plain.weights, plain.gradients)
    assert with_prompt.gradients == budget.trainable * 4  # gradients (and AdamW) follow the trainable count


def test_training_budget_of_a_prompt_tuned_model_counts_its_prompt():
    from peaufine.models.budget import training_budget
    from peaufine.recipe import validate_recipe

    recipe = validate_recipe(
        {"stage": "sft", "model": {"adapter": {"kind": "prompt_tuning"}}, "data": {"packing": False}}
    )
    model = apply_adapter(build(llama_config()), recipe.model.adapter)
    budget = training_budget(model, recipe, "fp32")
    assert budget["parameters"]["trainable"] == model.get_nb_trainable_parameters()[0] == 20 * 32
    assert budget["memory"]["prefix_tokens"] == 20 and "soft prompt of 20 positions" in budget["note"]


def _params(args, capsys, monkeypatch):
    """`peaufine params ARGS`: (exit code, stdout and stderr with their whitespace flattened)."""
    from test_cli import run_cli

    code, out, err = run_cli(["params", *args], capsys, monkeypatch)
    return code, " ".join(out.split()), " ".join(err.split())


def test_params_command_costs_every_peft_kind(capsys, monkeypatch):
    preset = ["--preset", "llama-2-7b"]
    # (IA)3's default on Llama: keys and values (4096 outputs each) and down_proj's 11008 inputs, 32 layers
    code, out, err = _params([*preset, "--adapter", "ia3"], capsys, monkeypatch)
    assert code == 0, err
    assert "(IA)3 on PEFT's default layers" in out and "trainable 614,400" in out
    args = [*preset, "--adapter", "prompt_tuning", "--set", "model.adapter.num_virtual_tokens=7"]
    code, out, err = _params(args, capsys, monkeypatch)
    assert code == 0, err
    assert f"trainable {7 * 4096:,}" in out and "+ 7 soft-prompt positions" in out
    code, out, err = _params([*preset, "--lora", "r=8", "--targets", "q_proj,v_proj"], capsys, monkeypatch)
    assert code == 0 and "LoRA r=8 on q_proj,v_proj" in out and "trainable 4,194,304" in out
    code, _, err = _params([*preset, "--adapter", "ia3", "--lora", "r=8"], capsys, monkeypatch)
    assert code == 2 and "--lora and --dora set a LoRA adapter, not --adapter ia3" in err
    code, _, err = _params(
        [*preset, "--adapter", "prompt_tuning", "--targets", "q_proj"], capsys, monkeypatch
    )
    assert code == 2 and "--targets names the layers of a lora or ia3 adapter" in err
    code, _, err = _params([*preset, "--adapter", "loar"], capsys, monkeypatch)
    assert code == 2 and "not an adapter kind" in err


def test_params_adapter_keeps_only_the_recipes_settings_of_the_kind_asked_for():
    from peaufine.models.budget import params_adapter

    recipe = AdapterBlock(kind="lora", r=16, target_modules=["q_proj", "v_proj"])
    assert params_adapter(recipe) == recipe
    assert params_adapter(recipe, lora_r=4).r == 4
    ia3 = params_adapter(recipe, "ia3")
    assert ia3.kind == "ia3" and ia3.target_modules == ["q_proj", "v_proj"] and ia3.r == 8
    assert params_adapter(AdapterBlock(), lora_targets="all-linear").kind == "lora"


RELOAD = """
import sys, torch
from peft import PeftModel
from transformers import AutoModelForCausalLM
base, ids, out = sys.argv[1], torch.load(sys.argv[2]), sys.argv[3]
found = {}
for adapter in sys.argv[4:]:
    model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base), adapter).eval()
    with torch.no_grad():
        found[adapter] = model(input_ids=ids).logits
torch.save(found, out)
"""


@pytest.mark.slow  # a fresh interpreter importing torch, transformers and PEFT: about 10 s
def test_saved_adapters_load_in_a_new_process_to_the_same_logits(tokenizer, tmp_path):
    """PEFT's folder is all a fresh process needs: no peaufine, no state of the one that trained."""
    import os
    import subprocess
    import sys

    import torch

    base = build(llama_config(vocab_size=len(tokenizer)))
    base.save_pretrained(tmp_path / "base")
    ids = ids_of()
    torch.save(ids, tmp_path / "ids.pt")
    expected = {}
    for adapter, marker in ((IA3, "ia3_l"), (PROMPT, "prompt_encoder")):
        model = apply_adapter(build(llama_config(vocab_size=len(tokenizer))), adapter)
        perturb(model, marker)
        save_adapter(model, tokenizer, tmp_path / adapter.kind)
        expected[str(tmp_path / adapter.kind)] = logits(model, ids)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    env.pop("PYTHONPATH", None)  # no peaufine in the new process
    command = [sys.executable, "-c", RELOAD, str(tmp_path / "base"), str(tmp_path / "ids.pt")]
    subprocess.run([*command, str(tmp_path / "out.pt"), *expected], check=True, env=env, timeout=300)
    found = torch.load(tmp_path / "out.pt")
    assert found.keys() == expected.keys()
    for key, value in expected.items():
        torch.testing.assert_close(found[key], value, atol=1e-6, rtol=0)

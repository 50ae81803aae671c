"""train.loss_chunk_tokens: the chunked cross-entropy gives NextTokenLoss's loss and gradients (plain,
tied, LoRA, packed, completion-only), never saves a [targets x vocabulary] tensor for the backward,
and refuses a model whose logits are not its head applied to the last hidden state."""

from __future__ import annotations

import pytest
import torch

from conftest import tiny_llama, variable_examples
from peaufine.data.batching import PackedExamples, PaddedExamples
from peaufine.errors import TrainingError
from peaufine.methods.lm import NextTokenLoss, packed_as_one_row

VOCAB = 300  # several times the hidden size (32), as in real models


def tiny_gpt2(seed: int = 0) -> torch.nn.Module:
    from transformers import GPT2Config, GPT2LMHeadModel

    config = GPT2Config(
        vocab_size=VOCAB,
        n_embd=32,
        n_layer=2,
        n_head=2,
        n_positions=128,
        bos_token_id=0,
        eos_token_id=0,
        resid_pdrop=0.0,
        embd_pdrop=0.0,
        attn_pdrop=0.0,
    )
    torch.manual_seed(seed)
    return GPT2LMHeadModel(config)  # ties its head to the token embeddings


def lora_llama() -> torch.nn.Module:
    from peaufine.models.adapters import apply_adapter
    from peaufine.recipe import AdapterBlock

    model = apply_adapter(
        tiny_llama(vocab_size=VOCAB), AdapterBlock(kind="lora", r=4), special_token_ids=[1, 2]
    )
    # LoRA's B starts at zero, which would make its gradient checks trivial: move it off zero
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.02)
    return model


MODELS = {"llama": lambda: tiny_llama(vocab_size=VOCAB), "gpt2-tied": tiny_gpt2, "llama-lora": lora_llama}


def loss_and_gradients(model, objective, batch):
    model.zero_grad(set_to_none=True)
    loss = objective.loss_sum(model, batch)
    loss.backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    return loss.detach(), grads


def assert_same(got, want):
    (loss, grads), (loss_ref, grads_ref) = got, want
    torch.testing.assert_close(loss, loss_ref, rtol=1e-5, atol=1e-5)
    assert grads.keys() == grads_ref.keys() and grads
    for name, g in grads_ref.items():
        scale = max(g.abs().max().item(), 1e-3)
        torch.testing.assert_close(grads[name], g, rtol=1e-5, atol=1e-5 * scale, msg=name)


def padded_batch():
    return PaddedExamples(variable_examples(8, vocab_size=VOCAB), pad_id=0).collate(range(8))


def packed_batch():
    data = PackedExamples(variable_examples(12, vocab_size=VOCAB, seed=1), max_length=40, pad_id=0)
    return data.collate(range(len(data)))


@pytest.mark.parametrize("name", sorted(MODELS))
@pytest.mark.parametrize("chunk", [1, 7, 10_000])
def test_chunked_loss_and_gradients_equal_the_full_cross_entropy(name, chunk):
    model = MODELS[name]().float()
    batch = padded_batch()
    assert_same(
        loss_and_gradients(model, NextTokenLoss(chunk_tokens=chunk), batch),
        loss_and_gradients(model, NextTokenLoss(), batch),
    )


def test_chunked_loss_on_packed_completion_only_rows_equals_the_full_loss():
    model = tiny_llama(vocab_size=VOCAB)
    batch = packed_batch()
    assert (batch["labels"] == -100).float().mean() > 0.2  # prompt tokens: rows the head skips
    assert_same(
        loss_and_gradients(model, NextTokenLoss(chunk_tokens=16), batch),
        loss_and_gradients(model, NextTokenLoss(), batch),
    )


def test_chunked_loss_without_gradients_and_under_bf16_autocast():
    model = tiny_llama(vocab_size=VOCAB)
    batch = padded_batch()
    with torch.no_grad():
        full = NextTokenLoss().loss_sum(model, batch)
        torch.testing.assert_close(NextTokenLoss(chunk_tokens=5).loss_sum(model, batch), full)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        chunked = NextTokenLoss(chunk_tokens=5).loss_sum(model, batch)
        whole = NextTokenLoss().loss_sum(model, batch)
    assert chunked.dtype == torch.float32
    torch.testing.assert_close(chunked, whole, rtol=1e-4, atol=1e-4)
    assert abs(whole.item() - full.item()) / full.item() < 0.05  # bf16 did run: close, not equal


def test_a_batch_without_targets_gives_a_zero_loss_that_can_be_backpropagated():
    model = tiny_llama(vocab_size=VOCAB)
    batch = padded_batch()
    batch["labels"][:] = -100
    loss = NextTokenLoss(chunk_tokens=4).loss_sum(model, batch)
    loss.backward()
    assert loss.item() == 0.0


def largest_saved_logits(model, objective, batch) -> int:
    """The most elements of any [..., vocabulary] activation autograd keeps for the backward pass."""
    largest = 0
    weights = {p.untyped_storage().data_ptr() for p in model.parameters()}

    def pack(t):
        nonlocal largest
        if t.ndim and t.shape[-1] == VOCAB and t.untyped_storage().data_ptr() not in weights:
            largest = max(largest, t.numel())
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        objective.loss_sum(model, batch)
    return largest


def test_the_backward_pass_never_keeps_the_whole_logits():
    model = tiny_llama(vocab_size=VOCAB)
    batch = padded_batch()
    targets = int(NextTokenLoss().count(batch))
    full = largest_saved_logits(model, NextTokenLoss(), batch)
    chunked = largest_saved_logits(model, NextTokenLoss(chunk_tokens=8), batch)
    assert full >= targets * VOCAB  # the control: the plain loss keeps [tokens x vocab] logits
    assert chunked <= batch["input_ids"].shape[0] * VOCAB  # the last position's logits, kept by the model


def test_a_model_that_scales_its_logits_is_refused():
    from transformers import CohereConfig, CohereForCausalLM

    config = CohereConfig(
        vocab_size=VOCAB,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=1,
        num_attention_heads=2,
        num_key_value_heads=2,
        logit_scale=0.25,
        pad_token_id=0,
        bos_token_id=1,
        eos_token_id=2,
    )
    torch.manual_seed(0)
    model = CohereForCausalLM(config)
    with pytest.raises(TrainingError, match=r"train\.loss_chunk_tokens"):
        NextTokenLoss(chunk_tokens=8).loss_sum(model, padded_batch())


def test_a_packed_batch_laid_out_as_one_row_has_the_same_loss_and_gradients():
    # what NextTokenLoss does under flash attention, where only a one-row batch runs varlen
    model = tiny_llama(vocab_size=VOCAB)
    batch = packed_batch()
    assert batch["input_ids"].shape[0] > 1
    one_row = packed_as_one_row(batch)
    assert one_row["input_ids"].shape[0] == 1
    assert_same(
        loss_and_gradients(model, NextTokenLoss(), one_row),
        loss_and_gradients(model, NextTokenLoss(), batch),
    )
    padded = padded_batch()
    assert packed_as_one_row(padded) is padded  # an attention mask: flash unpads it itself

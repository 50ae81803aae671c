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
from peaufine.recipe import DpoBlock

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


# -- DPO's sequence log-probs and RL's token log-probs through the chunks ---------------------------------
def pair_batch():
    from peaufine.data.batching import Example
    from peaufine.data.pairs import PairBatches, PairExample

    g = torch.Generator().manual_seed(3)
    pairs = []
    for i in range(5):
        prompt = torch.randint(4, VOCAB, (2 + i % 3,), generator=g).tolist()
        answers = [torch.randint(4, VOCAB, (2 + (i + k) % 4,), generator=g).tolist() for k in (0, 1)]
        chosen, rejected = (Example(prompt + a, [False] * len(prompt) + [True] * len(a)) for a in answers)
        pairs.append(PairExample(chosen, rejected))
    return PairBatches(pairs, pad_id=0).collate(range(5))


class Objective:
    """Any of the log-prob readers as an objective, for loss_and_gradients."""

    def __init__(self, loss_sum):
        self.loss_sum = loss_sum


@pytest.mark.parametrize("name", sorted(MODELS))
def test_dpo_with_chunked_log_probs_equals_dpo_on_whole_logits(name):
    from peaufine.methods.preference import DpoLoss, sequence_logps

    model = MODELS[name]().float()
    batch = pair_batch()
    with torch.no_grad():
        whole, lengths = sequence_logps(model, batch)
        chunked, chunked_lengths = sequence_logps(model, batch, chunk_tokens=3)
    torch.testing.assert_close(chunked, whole, rtol=1e-5, atol=1e-5)
    assert torch.equal(chunked_lengths, lengths)
    # the reference a little off the policy, so the loss has a gradient through both answers
    batch["ref_logps"] = whole - 0.3 * torch.arange(len(whole))
    config = DpoBlock(beta=0.5, sft_weight=0.2)
    assert_same(
        loss_and_gradients(model, DpoLoss(config, chunk_tokens=3), batch),
        loss_and_gradients(model, DpoLoss(config), batch),
    )


def rollout_rows():
    """Left-padded prompts and right-padded responses of different lengths, as rollouts are laid out."""
    g = torch.Generator().manual_seed(4)
    prompts, responses, width = [4, 2, 3], [5, 2, 4], 9
    ids = torch.randint(3, VOCAB, (3, width), generator=g)
    attention = torch.zeros(3, width, dtype=torch.long)
    response = torch.zeros(3, width, dtype=torch.bool)
    for i, (p, r) in enumerate(zip(prompts, responses, strict=True)):
        ids[i, : 4 - p] = 0
        ids[i, 4 + r :] = 0
        attention[i, 4 - p : 4 + r] = 1
        response[i, 4 : 4 + r] = True
    return {"input_ids": ids, "attention_mask": attention, "response_mask": response}


@pytest.mark.parametrize("name", sorted(MODELS))
def test_rl_token_log_probs_and_losses_through_chunks_equal_the_whole_logits(name):
    from peaufine.methods.rl import GrpoLoss, PolicyWithValue, PpoLoss, ValueHead, token_logprobs

    model = MODELS[name]().float()
    rows = rollout_rows()
    with torch.no_grad():
        whole = token_logprobs(model, **rows, temperature=0.7)
        chunked = token_logprobs(model, **rows, temperature=0.7, chunk_tokens=4)
    torch.testing.assert_close(chunked, whole, rtol=1e-5, atol=1e-5)
    assert chunked[~rows["response_mask"]].abs().max() == 0 and whole[rows["response_mask"]].abs().min() > 0

    mask = rows["response_mask"]
    advantages = torch.tensor([1.0, -0.5, 0.3])
    batch = {
        **rows,
        "old_logps": whole - 0.05 * mask,
        "ref_logps": whole + 0.02 * mask,
        "advantages": advantages,
    }
    assert_same(
        loss_and_gradients(model, GrpoLoss(0.2, 0.1, temperature=0.7, chunk_tokens=4), batch),
        loss_and_gradients(model, GrpoLoss(0.2, 0.1, temperature=0.7), batch),
    )
    torch.manual_seed(0)
    head = ValueHead(32)
    torch.nn.init.normal_(head.linear.weight, std=0.1)  # off zero: the value loss has a gradient
    ppo_batch = {
        **rows,
        "old_logps": whole - 0.05 * mask,
        "advantages": advantages[:, None].expand(mask.shape).contiguous(),
        "old_values": torch.zeros(mask.shape),
        "returns": torch.ones(mask.shape),
    }
    policy = PolicyWithValue(model, head)
    assert_same(
        loss_and_gradients(policy, PpoLoss(0.2, 0.2, 0.5, head, 0.7, chunk_tokens=4), ppo_batch),
        loss_and_gradients(policy, PpoLoss(0.2, 0.2, 0.5, head, 0.7), ppo_batch),
    )


def test_rl_log_probs_through_chunks_never_keep_the_whole_logits():
    from peaufine.methods.rl import token_logprobs

    model = tiny_llama(vocab_size=VOCAB)
    rows = rollout_rows()
    whole = largest_saved_logits(model, Objective(lambda m, b: token_logprobs(m, **b).sum()), rows)
    chunked = largest_saved_logits(
        model, Objective(lambda m, b: token_logprobs(m, **b, chunk_tokens=4).sum()), rows
    )
    responded = int(rows["response_mask"].sum())
    assert whole >= responded * VOCAB
    assert chunked <= rows["input_ids"].shape[0] * VOCAB

"""Padding-free packing: rows are a deterministic bin packing, and a packed row computes exactly what its
examples compute alone (logits, summed loss, gradients), for Llama (rotary) and GPT-2 (learned positions).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from conftest import tiny_llama
from peaufine.data.batching import IGNORE_INDEX, Example, PackedExamples, PaddedExamples, pack_examples
from peaufine.methods.lm import NextTokenLoss

MAX_LENGTH = 48  # several 3..30-token examples per row, and a few rows


def tiny_gpt2(seed: int = 0) -> torch.nn.Module:
    from transformers import GPT2Config, GPT2LMHeadModel

    # bos/eos inside the tiny vocabulary only to silence a config warning; they play no part here
    config = GPT2Config(
        vocab_size=50,
        n_embd=32,
        n_layer=2,
        n_head=2,
        n_positions=128,
        bos_token_id=0,
        eos_token_id=0,
        attn_implementation="sdpa",
    )
    torch.manual_seed(seed)
    return GPT2LMHeadModel(config)


MODELS = {"llama": tiny_llama, "gpt2": tiny_gpt2}


@pytest.fixture(params=sorted(MODELS))
def model(request) -> torch.nn.Module:
    return MODELS[request.param]().float().eval()


def chat_examples(n: int = 12, seed: int = 0) -> list[Example]:
    """Lengths 3..30; most hide a prompt-like prefix from the loss, some have no mask at all."""
    rng = np.random.default_rng(seed)
    examples = []
    for k in range(n):
        length = int(rng.integers(3, 31))
        ids = rng.integers(1, 50, size=length).tolist()
        mask = None
        if k % 3:
            prefix = int(rng.integers(1, length))
            mask = [t >= prefix for t in range(length)]
        examples.append(Example(ids, mask))
    return examples


def alone_logits(model: torch.nn.Module, example: Example) -> torch.Tensor:
    return model(input_ids=torch.tensor([example.input_ids]), use_cache=False).logits[0]


def sliced_logits(logits: torch.Tensor, data: PackedExamples, rows: list[int]) -> dict[int, torch.Tensor]:
    """Each example's logits cut out of the packed batch, by example index."""
    out = {}
    for b, r in enumerate(rows):
        start = 0
        for i in data.rows[r]:
            n = len(data.examples[i].input_ids)
            out[i] = logits[b, start : start + n]
            start += n
    return out


def block_causal_mask(position_ids: torch.Tensor) -> torch.Tensor:
    """(B, 1, T, T) bool: token q sees token k when k <= q and no example starts in (k, q]."""
    segment = (position_ids == 0).cumsum(-1)
    same = segment[:, :, None] == segment[:, None, :]
    width = position_ids.shape[-1]
    causal = torch.ones(width, width, dtype=torch.bool).tril()
    return (same & causal)[:, None]


# -- the bin packing ---------------------------------------------------------------------------------


def test_best_fit_decreasing_fills_the_tightest_row():
    # 5 opens row 0 (3 free), 4 opens row 1 (4 free); a 3 fits both and goes where it fits tightest
    # (row 0, first fit would agree); the next 3 and the 1 then fill row 1 exactly
    assert pack_examples([5, 4, 3, 3, 1], max_length=8) == [[0, 2], [1, 3, 4]]
    # best fit, not first fit: after 8 | 6 3 the rows have 2 and 1 free; the 1 completes row 1
    assert pack_examples([8, 6, 3, 1], max_length=10) == [[0], [1, 2, 3]]


def test_every_example_lands_in_exactly_one_row_within_max_length():
    rng = np.random.default_rng(3)
    lengths = rng.integers(1, 65, size=300).tolist()
    rows = pack_examples(lengths, max_length=128)
    assert sorted(i for row in rows for i in row) == list(range(300))
    assert all(sum(lengths[i] for i in row) <= 128 for row in rows)
    # small items relative to the row: a sound packing wastes little (one example per row would be ~25%)
    assert sum(lengths) / (len(rows) * 128) > 0.97
    assert pack_examples(lengths, max_length=128) == rows  # deterministic


def test_packing_efficiency_is_real_tokens_over_room():
    examples = chat_examples()
    data = PackedExamples(examples, MAX_LENGTH, pad_id=0)
    real = sum(len(e.input_ids) for e in examples)
    assert data.packing_efficiency == pytest.approx(real / (len(data) * MAX_LENGTH))
    assert len(data) < len(examples)


@pytest.mark.parametrize("lengths", [[3, 9, 2], [3, 0, 2]])
def test_examples_that_do_not_fit_a_row_are_refused(lengths):
    with pytest.raises(ValueError, match="example 1 has"):
        pack_examples(lengths, max_length=8)


# -- the batch layout --------------------------------------------------------------------------------


def test_rows_restart_positions_and_labels_never_cross_examples():
    examples = [Example([10, 11, 12], [False, False, True]), Example([20, 21]), Example([30])]
    data = PackedExamples(examples, max_length=4, pad_id=0)
    assert data.rows == [[0, 2], [1]]
    batch = data.collate([0, 1])
    assert batch["input_ids"].tolist() == [[10, 11, 12, 30], [20, 21, 0, 0]]
    assert batch["position_ids"].tolist() == [[0, 1, 2, 0], [0, 1, 0, 1]]
    # 12 is the only target of example 0; its last token does not predict 30, nor 21 the padding
    assert batch["labels"].tolist() == [
        [IGNORE_INDEX, 12, IGNORE_INDEX, IGNORE_INDEX],
        [21, IGNORE_INDEX, IGNORE_INDEX, IGNORE_INDEX],
    ]
    # any attention_mask, even all ones, would switch off transformers' packed-sequence detection
    assert "attention_mask" not in batch
    assert data.collate([1])["input_ids"].shape == (1, 2)  # padded to the longest chosen row only


def test_packed_and_padded_batches_carry_the_same_targets():
    examples = chat_examples()
    packed = PackedExamples(examples, MAX_LENGTH, pad_id=0)
    padded = PaddedExamples(examples, pad_id=0)
    p = packed.collate(range(len(packed)))
    q = padded.collate(range(len(padded)))
    count = NextTokenLoss().count
    assert int(count(p)) == int(count(q)) > 0
    assert sorted(p["labels"][p["labels"] != IGNORE_INDEX].tolist()) == sorted(
        q["labels"][q["labels"] != IGNORE_INDEX].tolist()
    )


# -- the model sees each example alone ---------------------------------------------------------------


def test_packed_logits_and_loss_equal_each_example_run_alone(model):
    examples = chat_examples()
    packed = PackedExamples(examples, MAX_LENGTH, pad_id=0)
    padded = PaddedExamples(examples, pad_id=0)
    objective = NextTokenLoss()
    with torch.no_grad():
        rows = list(range(len(packed)))
        batch = packed.collate(rows)
        logits = model(
            input_ids=batch["input_ids"], position_ids=batch["position_ids"], use_cache=False
        ).logits
        for i, got in sliced_logits(logits, packed, rows).items():
            torch.testing.assert_close(got, alone_logits(model, examples[i]), rtol=1e-5, atol=1e-5)

        # the engine's view: micro-batches of two rows, summed
        packed_sum = sum(
            float(objective.loss_sum(model, packed.collate(rows[k : k + 2]))) for k in range(0, len(rows), 2)
        )
        alone_sum = sum(float(objective.loss_sum(model, padded.collate([i]))) for i in range(len(examples)))
        padded_sum = float(objective.loss_sum(model, padded.collate(range(len(examples)))))
    assert packed_sum == pytest.approx(alone_sum, rel=1e-5)
    assert packed_sum == pytest.approx(padded_sum, rel=1e-5)


def test_an_explicit_block_diagonal_mask_gives_the_same_logits(model):
    # the same attention pattern handed over as a 4-D mask: sdpa accepts it, and agrees with the
    # pattern transformers infers from the restarting positions
    packed = PackedExamples(chat_examples(), MAX_LENGTH, pad_id=0)
    batch = packed.collate(range(len(packed)))
    with torch.no_grad():
        inferred = model(input_ids=batch["input_ids"], position_ids=batch["position_ids"], use_cache=False)
        explicit = model(
            input_ids=batch["input_ids"],
            position_ids=batch["position_ids"],
            attention_mask=block_causal_mask(batch["position_ids"]),
            use_cache=False,
        )
    torch.testing.assert_close(inferred.logits, explicit.logits, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("leak", ["plain causal row", "attention_mask given", "key/value cache on"])
def test_without_the_boundary_handling_examples_contaminate_each_other(model, leak):
    """Negative controls: each way of losing the boundaries changes the logits, so the test above can fail."""
    examples = chat_examples()
    packed = PackedExamples(examples, MAX_LENGTH, pad_id=0)
    rows = list(range(len(packed)))
    batch = packed.collate(rows)
    inputs = {"input_ids": batch["input_ids"], "position_ids": batch["position_ids"], "use_cache": False}
    if leak == "plain causal row":
        inputs["position_ids"] = torch.arange(batch["input_ids"].shape[1]).expand_as(batch["input_ids"])
    elif leak == "attention_mask given":
        inputs["attention_mask"] = torch.ones_like(batch["input_ids"])
    else:
        inputs["use_cache"] = True
    later = {i for r in rows for i in packed.rows[r][1:]}  # examples that have a neighbour before them
    assert later
    with torch.no_grad():
        logits = model(**inputs).logits
        gaps = [
            (got - alone_logits(model, examples[i])).abs().max().item()
            for i, got in sliced_logits(logits, packed, rows).items()
            if i in later
        ]
    assert min(gaps) > 1e-3


def test_packed_gradients_equal_unpacked_gradients(model):
    examples = chat_examples()
    packed = PackedExamples(examples, MAX_LENGTH, pad_id=0)
    padded = PaddedExamples(examples, pad_id=0)
    objective = NextTokenLoss()

    def gradients(batches):
        model.zero_grad(set_to_none=True)
        sum(objective.loss_sum(model, b) for b in batches).backward()
        return {name: p.grad.clone() for name, p in model.named_parameters() if p.grad is not None}

    got = gradients([packed.collate(range(len(packed)))])
    want = gradients([padded.collate([i]) for i in range(len(examples))])
    assert got.keys() == want.keys() and got
    for name, g in want.items():
        scale = g.abs().max().item()
        torch.testing.assert_close(got[name], g, rtol=1e-5, atol=1e-5 * max(scale, 1e-3), msg=name)

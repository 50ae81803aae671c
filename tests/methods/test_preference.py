"""DPO, cDPO, IPO and SimPO against their formulas on hand-computed log-probabilities, and the DPO
objective on a tiny model: reference from the batch, from the adapter switched off, and its metrics."""

from __future__ import annotations

import math

import pytest
import torch
from tests.conftest import tiny_llama

from peaufine.data.batching import Example
from peaufine.data.pairs import PairBatches, PairExample
from peaufine.methods.preference import (
    DpoLoss,
    disable_dropout,
    precompute_reference,
    preference_losses,
    sequence_logps,
)
from peaufine.recipe import DpoBlock

# policy chosen / rejected, reference chosen / rejected (summed log-probs), response lengths
PI_C, PI_R, REF_C, REF_R = -4.0, -6.0, -5.0, -5.5
LEN_C, LEN_R = 2, 4


def losses(kind: str, **kw):
    t = lambda x: torch.tensor([x], dtype=torch.float64)  # noqa: E731
    return preference_losses(kind, t(PI_C), t(PI_R), t(REF_C), t(REF_R), t(LEN_C), t(LEN_R), **kw)


def log_sigmoid(x: float) -> float:
    return -math.log1p(math.exp(-x))


def test_sigmoid_dpo_is_minus_log_sigmoid_of_beta_times_the_log_ratio_gap():
    h = (PI_C - REF_C) - (PI_R - REF_R)  # 1.0 - (-0.5) = 1.5
    loss, chosen, rejected = losses("sigmoid", beta=0.1)
    assert loss.item() == pytest.approx(-log_sigmoid(0.1 * h))
    assert chosen.item() == pytest.approx(0.1 * 1.0) and rejected.item() == pytest.approx(0.1 * -0.5)


def test_cdpo_mixes_both_labels_and_equals_dpo_without_smoothing():
    h = 1.5
    eps = 0.2
    loss = losses("cdpo", beta=0.5, label_smoothing=eps)[0].item()
    assert loss == pytest.approx(-(1 - eps) * log_sigmoid(0.5 * h) - eps * log_sigmoid(-0.5 * h))
    assert losses("cdpo", beta=0.5)[0].item() == pytest.approx(losses("sigmoid", beta=0.5)[0].item())


def test_ipo_is_squared_distance_to_one_over_two_beta():
    assert losses("ipo", beta=0.25, ipo_log_ratio="sum")[0].item() == pytest.approx((1.5 - 2.0) ** 2)


def test_ipo_by_default_averages_each_answers_log_ratio_per_token():
    # Azar et al. 2023 eq. 17 on per-token mean log-ratios, as TRL computes it
    h = (PI_C - REF_C) / LEN_C - (PI_R - REF_R) / LEN_R  # 1.0 / 2 - (-0.5) / 4 = 0.625
    loss, chosen, rejected = losses("ipo", beta=0.25)
    assert loss.item() == pytest.approx((h - 2.0) ** 2)
    # its implicit rewards are those of its margin: beta times the per-token log-ratios
    assert chosen.item() == pytest.approx(0.25 * 0.5) and rejected.item() == pytest.approx(0.25 * -0.125)


def test_ipo_summed_on_request_is_squared_distance_of_the_summed_gap():
    assert losses("ipo", beta=0.25, ipo_log_ratio="sum")[0].item() == pytest.approx((1.5 - 2.0) ** 2)


@pytest.mark.parametrize("side", ["chosen", "rejected", "both"])
def test_ipo_per_token_does_not_depend_on_answer_length_and_the_summed_form_does(side: str):
    # an answer whose every token's log-ratio comes twice: same per-token ratios, twice the length
    def doubled(form: str, double: bool) -> float:
        c, r = (
            (2.0 if side in ("chosen", "both") and double else 1.0),
            (2.0 if side in ("rejected", "both") and double else 1.0),
        )
        t = lambda x: torch.tensor([x], dtype=torch.float64)  # noqa: E731
        return preference_losses(
            "ipo",
            t(c * PI_C),
            t(r * PI_R),
            t(c * REF_C),
            t(r * REF_R),
            t(c * LEN_C),
            t(r * LEN_R),
            beta=0.1,
            **({} if form == "default" else {"ipo_log_ratio": form}),
        )[0].item()

    assert doubled("default", True) == pytest.approx(doubled("default", False), rel=1e-12)
    assert doubled("per_token", True) == pytest.approx(doubled("default", False), rel=1e-12)
    assert abs(doubled("sum", True) - doubled("sum", False)) > 0.1


def test_simpo_is_reference_free_and_length_normalised():
    expected = -log_sigmoid(2.0 * (PI_C / LEN_C - PI_R / LEN_R) - 0.5)  # 2 * (-2 + 1.5) - 0.5
    loss, chosen, rejected = preference_losses(
        "simpo",
        torch.tensor([PI_C]),
        torch.tensor([PI_R]),
        None,
        None,
        torch.tensor([LEN_C]),
        torch.tensor([LEN_R]),
        simpo_beta=2.0,
        simpo_gamma=0.5,
    )
    assert loss.item() == pytest.approx(expected, rel=1e-6)
    assert chosen.item() == pytest.approx(-4.0) and rejected.item() == pytest.approx(-3.0)


def tiny_pairs(n: int = 6, seed: int = 0) -> PairBatches:
    g = torch.Generator().manual_seed(seed)
    pairs = []
    for _ in range(n):
        prompt = torch.randint(4, 50, (3,), generator=g).tolist()
        chosen = torch.randint(4, 50, (int(torch.randint(2, 5, (1,), generator=g)),), generator=g).tolist()
        rejected = torch.randint(4, 50, (int(torch.randint(2, 5, (1,), generator=g)),), generator=g).tolist()
        pairs.append(
            PairExample(
                Example(prompt + chosen, [False] * 3 + [True] * len(chosen)),
                Example(prompt + rejected, [False] * 3 + [True] * len(rejected)),
            )
        )
    return PairBatches(pairs, pad_id=0)


def test_sequence_logps_sums_the_response_tokens_only():
    model = tiny_llama().eval()
    data = tiny_pairs(2)
    batch = data.collate([0, 1])
    logps, counts = sequence_logps(model, batch)
    ex = data.pairs[0].chosen
    with torch.no_grad():
        logits = model(torch.tensor([ex.input_ids])).logits[0].log_softmax(-1)
    expected = sum(logits[t - 1, ex.input_ids[t]].item() for t in range(3, len(ex.input_ids)))
    assert logps[0].item() == pytest.approx(expected, abs=1e-4)
    assert counts[0].item() == len(ex.input_ids) - 3


def test_dpo_at_the_reference_has_loss_log_2_and_reports_its_metrics(cpu_runtime):
    model = tiny_llama().eval()
    data = tiny_pairs()
    precompute_reference(model, [data], cpu_runtime, batch_size=4)
    objective = DpoLoss(DpoBlock(beta=0.1))
    batch = data.collate(range(len(data)))
    loss = objective.loss_sum(model, batch) / objective.count(batch)
    assert loss.item() == pytest.approx(math.log(2), abs=1e-5)
    metrics = objective.tally.drain()
    assert metrics["mean_log_ratio"] == pytest.approx(0.0, abs=1e-5)
    assert metrics["reward_margin"] == pytest.approx(0.0, abs=1e-6)
    assert {"accuracy", "logp_chosen", "logp_rejected", "reward_chosen"} <= metrics.keys()


def test_the_logged_log_ratio_is_the_pairs_mean_policy_minus_reference_log_prob(cpu_runtime):
    # not a KL (it is negative when the policy lowers both answers): named for what it is
    model = tiny_llama().eval()
    data = tiny_pairs(3)
    precompute_reference(model, [data], cpu_runtime, batch_size=4)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    for pair, weight in zip(data.pairs, (0.2, 0.3, 0.5), strict=True):
        pair.weight = weight
    batch = data.collate([0, 1, 2])
    objective = DpoLoss(DpoBlock(beta=0.1))
    objective.loss_sum(model, batch)
    metrics = objective.tally.drain()
    logps, _ = sequence_logps(model, batch)
    ratio = (logps.double() - batch["ref_logps"]).detach()
    per_pair = (ratio[:3] + ratio[3:]) / 2
    expected = (torch.tensor([0.2, 0.3, 0.5], dtype=torch.float64) * per_pair).sum().item()
    assert metrics["mean_log_ratio"] == pytest.approx(expected, rel=1e-4)
    assert "implicit_kl" not in metrics


def test_weights_scale_each_pairs_share(cpu_runtime):
    model = tiny_llama().eval()
    data = tiny_pairs(2)
    precompute_reference(model, [data], cpu_runtime, batch_size=4)
    with torch.no_grad():  # move the policy off the reference so pairs differ
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    objective = DpoLoss(DpoBlock(beta=0.5))
    single = [objective.loss_sum(model, data.collate([i])).item() for i in range(2)]
    data.pairs[0].weight, data.pairs[1].weight = 0.25, 0.75
    both = data.collate([0, 1])
    assert objective.count(both).item() == pytest.approx(1.0)
    assert objective.loss_sum(model, both).item() == pytest.approx(
        0.25 * single[0] + 0.75 * single[1], rel=1e-5
    )


def test_the_adapter_switched_off_is_the_reference(cpu_runtime):
    from peaufine.models.adapters import apply_adapter
    from peaufine.recipe import AdapterBlock

    base = tiny_llama().eval()
    data = tiny_pairs(3)
    precompute_reference(base, [data], cpu_runtime, batch_size=4)
    precomputed = data.collate([0, 1, 2])["ref_logps"]
    model = apply_adapter(base, AdapterBlock(kind="lora", r=4, target_modules=["q_proj", "v_proj"]))
    with torch.no_grad():  # a trained adapter: the policy differs from the base
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.add_(0.1)
    from peaufine.methods.preference import adapter_disabled_logps

    batch = data.collate([0, 1, 2])
    assert torch.allclose(adapter_disabled_logps(model, batch).double(), precomputed, atol=1e-4)
    assert not torch.allclose(sequence_logps(model, batch)[0].double(), precomputed, atol=1e-3)


def test_sft_weight_adds_the_chosen_answers_mean_nll(cpu_runtime):
    model = tiny_llama().eval()
    data = tiny_pairs(3)
    precompute_reference(model, [data], cpu_runtime, batch_size=4)
    batch = data.collate([0, 1, 2])
    plain = DpoLoss(DpoBlock(beta=0.1)).loss_sum(model, batch)
    with_sft = DpoLoss(DpoBlock(beta=0.1, sft_weight=0.5)).loss_sum(model, batch)
    logps, lengths = sequence_logps(model, batch)
    expected = 0.5 * (-logps[:3] / lengths[:3]).sum()
    assert (with_sft - plain).item() == pytest.approx(expected.item(), rel=1e-5)


@pytest.mark.parametrize("form", ["per_token", "sum"])
def test_the_ipo_objective_uses_the_recipes_log_ratio_form(cpu_runtime, form: str):
    model = tiny_llama().eval()
    data = tiny_pairs(4)
    precompute_reference(model, [data], cpu_runtime, batch_size=4)
    with torch.no_grad():  # move the policy off the reference so the log-ratios are not all 0
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    batch = data.collate(range(4))
    block = (
        DpoBlock(loss="ipo", beta=0.5)
        if form == "per_token"
        else DpoBlock(loss="ipo", beta=0.5, ipo_log_ratio=form)
    )
    got = DpoLoss(block).loss_sum(model, batch).item()
    logps, lengths = sequence_logps(model, batch)
    ratio = (logps.double() - batch["ref_logps"]).detach()
    if form == "per_token":
        ratio = ratio / lengths
    h = ratio[:4] - ratio[4:]
    assert got == pytest.approx(((h - 1.0) ** 2).sum().item(), rel=1e-5)


@pytest.mark.parametrize("where", ["attention", "modules"])
def test_disable_dropout_makes_train_mode_forwards_deterministic(where):
    """Dropout as a module (GPT-2's) or as a probability an attention layer applies itself in train
    mode (Llama's attention_dropout): after disable_dropout two forwards in train mode agree."""
    from transformers import GPT2Config, GPT2LMHeadModel

    if where == "attention":
        model = tiny_llama()
        model.config.attention_dropout = 0.3
        for layer in model.model.layers:
            layer.self_attn.attention_dropout = 0.3
    else:
        config = GPT2Config(vocab_size=50, n_embd=32, n_layer=1, n_head=2, n_positions=32, attn_pdrop=0.3)
        model = GPT2LMHeadModel(config)
    model.train()
    ids = torch.randint(4, 50, (2, 12), generator=torch.Generator().manual_seed(0))

    def twice() -> float:
        torch.manual_seed(1)
        first = model(input_ids=ids).logits
        return float((first - model(input_ids=ids).logits).abs().max())

    assert twice() > 1e-3  # the control: dropout is on
    assert disable_dropout(model) > 0
    assert twice() == 0.0
    assert model.training

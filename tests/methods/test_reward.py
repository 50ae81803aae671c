"""Bradley-Terry: the loss against its formula (margins, ties, centring), the accuracy it reports, and a
reward model that learns a constructed preference through the engine."""

from __future__ import annotations

import math
from types import SimpleNamespace

import pytest
import torch

from peaufine.data.batching import Example
from peaufine.data.pairs import PairBatches, PairExample
from peaufine.methods.reward import BradleyTerryLoss, bradley_terry_losses


def test_loss_is_minus_log_sigmoid_of_the_reward_gap_minus_the_margin():
    chosen, rejected = torch.tensor([2.0, 0.0]), torch.tensor([1.0, 1.0])
    no_ties = torch.tensor([False, False])
    got = bradley_terry_losses(chosen, rejected, no_ties, margin=0.5)
    expected = [math.log1p(math.exp(-(1.0 - 0.5))), math.log1p(math.exp(-(-1.0 - 0.5)))]
    assert got.tolist() == pytest.approx(expected)


def test_a_tie_is_a_label_of_one_half_least_at_equal_rewards_and_centring_adds_the_square():
    ties = torch.tensor([True, True])
    got = bradley_terry_losses(torch.tensor([1.0, 3.0]), torch.tensor([1.0, 1.0]), ties)
    assert got[0].item() == pytest.approx(math.log(2))
    assert got[1].item() > got[0].item()
    centred = bradley_terry_losses(
        torch.tensor([1.0]), torch.tensor([2.0]), torch.tensor([False]), center=0.1
    )
    plain = bradley_terry_losses(torch.tensor([1.0]), torch.tensor([2.0]), torch.tensor([False]))
    assert (centred - plain).item() == pytest.approx(0.1 * 9.0)


class FixedRewards(torch.nn.Module):
    """Rewards read from the batch's first token: lets the test choose every reward."""

    def forward(self, input_ids, attention_mask):
        return SimpleNamespace(logits=input_ids[:, :1].float())


def pairs_with_rewards(rewards: list[tuple[int, int]], weights=None, ties=None) -> PairBatches:
    pairs = []
    for k, (c, r) in enumerate(rewards):
        pairs.append(
            PairExample(
                Example([c, 1, 1]),
                Example([r, 1]),
                weight=1.0 if weights is None else weights[k],
                tie=False if ties is None else ties[k],
            )
        )
    return PairBatches(pairs, pad_id=0)


def test_objective_weights_pairs_and_reports_accuracy_without_ties():
    data = pairs_with_rewards([(3, 1), (1, 2), (2, 2)], weights=[0.5, 0.5, 1.0], ties=[False, False, True])
    objective = BradleyTerryLoss()
    batch = data.collate([0, 1, 2])
    total = objective.loss_sum(FixedRewards(), batch)
    expected = 0.5 * math.log1p(math.exp(-2)) + 0.5 * math.log1p(math.exp(1)) + math.log(2)
    assert total.item() == pytest.approx(expected, rel=1e-5)
    assert objective.count(batch).item() == pytest.approx(2.0)
    metrics = objective.tally.drain()
    assert metrics["accuracy"] == pytest.approx(0.5)  # the tie is not a decided pair
    assert metrics["reward_margin"] == pytest.approx((2 - 1) / 2)


def test_a_reward_model_learns_a_constructed_preference(cpu_runtime):
    """Chosen responses contain token 7, rejected ones never do: validation accuracy goes to > 0.9."""
    from transformers import LlamaConfig, LlamaForSequenceClassification

    from peaufine.engine.fit import fit
    from peaufine.recipe import EvalBlock, TrainBlock
    from peaufine.stages.reward import pair_accuracy

    g = torch.Generator().manual_seed(0)

    def make(n):
        pairs = []
        for _ in range(n):
            prompt = torch.randint(10, 40, (4,), generator=g).tolist()
            body = torch.randint(10, 40, (4,), generator=g).tolist()
            pos = int(torch.randint(0, 4, (1,), generator=g))
            good = [*body[:pos], 7, *body[pos:]]
            bad = [*body[:pos], 8, *body[pos:]]
            pairs.append(PairExample(Example(prompt + good), Example(prompt + bad), kind="has-7>has-8"))
        return PairBatches(pairs, pad_id=0)

    train, val = make(128), make(64)
    config = LlamaConfig(
        vocab_size=40,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_labels=1,
        pad_token_id=0,
    )
    torch.manual_seed(0)
    model = LlamaForSequenceClassification(config)
    assert pair_accuracy(model, val, cpu_runtime)["accuracy"] < 0.8
    fit(
        model,
        BradleyTerryLoss(),
        train,
        val,
        TrainBlock(max_steps=120, batch_size=16, lr=3e-3, warmup_steps=5, device="cpu"),
        EvalBlock(every=1000),
        cpu_runtime,
    )
    result = pair_accuracy(model, val, cpu_runtime)
    assert result["accuracy"] > 0.9
    assert result["by_kind"]["has-7>has-8"]["pairs"] == 64


def test_the_stages_pair_accuracy_weighs_pairs_as_the_loss_does(cpu_runtime):
    from peaufine.stages.reward import pair_accuracy

    # kind a: right at weight 0.2, wrong at 0.6; kind b: right at 0.2; a tie (never a decided pair)
    data = pairs_with_rewards(
        [(3, 1), (1, 2), (2, 1), (2, 2)], weights=[0.2, 0.6, 0.2, 1.0], ties=[False, False, False, True]
    )
    for pair, kind in zip(data.pairs, ["a", "a", "b", "a"], strict=True):
        pair.kind = kind
    result = pair_accuracy(FixedRewards(), data, cpu_runtime, batch_size=2)
    assert result["pairs"] == 3
    assert result["accuracy"] == pytest.approx((0.2 + 0.2) / 1.0)  # counting pairs gives 2/3
    assert result["mean_margin"] == pytest.approx((0.2 * 2 - 0.6 * 1 + 0.2 * 1) / 1.0)
    assert result["by_kind"]["a"] == {"accuracy": pytest.approx(0.2 / 0.8), "pairs": 2}
    assert result["by_kind"]["b"] == {"accuracy": pytest.approx(1.0), "pairs": 1}
    # the training tally on the same batch agrees
    objective = BradleyTerryLoss()
    objective.loss_sum(FixedRewards(), data.collate(range(4)))
    assert objective.tally.drain()["accuracy"] == pytest.approx(result["accuracy"])


def test_with_equal_weights_the_stages_pair_accuracy_is_the_fraction_of_pairs_right(cpu_runtime):
    from peaufine.stages.reward import pair_accuracy

    data = pairs_with_rewards([(3, 1), (1, 2), (2, 1)], weights=[0.5, 0.5, 0.5])
    assert pair_accuracy(FixedRewards(), data, cpu_runtime)["accuracy"] == pytest.approx(2 / 3)

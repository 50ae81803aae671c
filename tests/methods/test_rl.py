"""RL objectives: advantages and GAE by hand, KL estimators, alignment of log-probs under left padding,
the policy gradient at ratio 1, the clip biting on later passes, and PPO/GRPO solving a bandit."""

from __future__ import annotations

import copy
import math
from types import SimpleNamespace

import pytest
import torch

import peaufine.methods.rl as rl
from conftest import tiny_llama
from peaufine.methods.rl import (
    AdaptiveKLController,
    FixedKLController,
    GrpoLoss,
    PpoLoss,
    ValueHead,
    clipped_policy_loss,
    gae,
    group_advantages,
    kl_penalised_rewards,
    kl_per_token,
    token_logprobs,
    token_values,
    whiten,
)

VOCAB = 50


# -- advantages --------------------------------------------------------------------------------------
def test_group_advantages_by_hand():
    rewards = torch.tensor([1.0, 0.0, 0.0, 1.0, 2.0, 3.0])
    # group 1: mean 1/3, population std sqrt(2/9); group 2: mean 2, population std sqrt(2/3)
    expected_centred = [2 / 3, -1 / 3, -1 / 3, -1.0, 0.0, 1.0]
    assert group_advantages(rewards, 3, scale=False).tolist() == pytest.approx(expected_centred, abs=1e-6)
    s1, s2 = math.sqrt(2 / 9) + 1e-4, math.sqrt(2 / 3) + 1e-4
    expected = [2 / 3 / s1, -1 / 3 / s1, -1 / 3 / s1, -1 / s2, 0.0, 1 / s2]
    assert group_advantages(rewards, 3).tolist() == pytest.approx(expected, abs=1e-5)


def test_group_advantages_have_zero_mean_and_unit_std_per_group():
    rewards = torch.randn(5 * 8, generator=torch.Generator().manual_seed(0)) * 3 + 2
    groups = group_advantages(rewards, 8, eps=0.0).view(5, 8)
    assert groups.mean(dim=1).abs().max() < 1e-6
    assert torch.allclose(groups.std(dim=1, unbiased=False), torch.ones(5), atol=1e-5)


def test_a_group_of_equal_rewards_gets_exactly_zero_advantages():
    # 0.9 is not exact in binary: the group's mean and std differ from 0.9 and 0 by rounding errors,
    # which the division would turn into advantages of about 6e-4
    # (in float32 three 0.9s have a mean 6e-8 away and a std of 6e-8, not 0)
    rewards = torch.tensor([0.9, 0.9, 0.9, 0.7, 0.3, 0.3])
    advantages = group_advantages(rewards, 3)
    assert advantages[:3].tolist() == [0.0] * 3
    assert advantages[3] > 0 and advantages[4:].lt(0).all()
    with pytest.raises(ValueError, match="groups of 4"):
        group_advantages(rewards, 4)


def test_gae_by_hand():
    gamma, lam = 0.9, 0.8
    # row 0: prompt of 2, response of 3 at columns 2..4, one pad; row 1: a response of one token.
    # Values outside the mask are junk that must be ignored.
    mask = torch.tensor([[0, 0, 1, 1, 1, 0], [0, 0, 1, 0, 0, 0]], dtype=torch.bool)
    rewards = torch.tensor([[5.0, 5.0, 0.0, 0.5, 1.0, 5.0], [5.0, 5.0, 2.0, 5.0, 5.0, 5.0]])
    values = torch.tensor([[9.0, 9.0, 0.2, 0.4, 0.6, 9.0], [9.0, 9.0, 0.5, 9.0, 9.0, 9.0]])
    advantages, returns = gae(rewards, values, mask, gamma, lam)
    # t=4: delta = 1.0 + 0.9*0 - 0.6 = 0.4                      A = 0.4
    # t=3: delta = 0.5 + 0.9*0.6 - 0.4 = 0.64                   A = 0.64 + 0.72*0.4 = 0.928
    # t=2: delta = 0.0 + 0.9*0.4 - 0.2 = 0.16                   A = 0.16 + 0.72*0.928 = 0.82816
    # row 1, t=2: delta = 2.0 - 0.5                             A = 1.5
    expected_a = [[0, 0, 0.82816, 0.928, 0.4, 0], [0, 0, 1.5, 0, 0, 0]]
    expected_r = [[0, 0, 1.02816, 1.328, 1.0, 0], [0, 0, 2.0, 0, 0, 0]]
    assert advantages.tolist()[0] == pytest.approx(expected_a[0], abs=1e-6)
    assert advantages.tolist()[1] == pytest.approx(expected_a[1], abs=1e-6)
    assert returns.tolist()[0] == pytest.approx(expected_r[0], abs=1e-6)
    assert returns.tolist()[1] == pytest.approx(expected_r[1], abs=1e-6)


def test_gae_with_lambda_one_returns_the_discounted_reward_to_go():
    mask = torch.tensor([[0, 1, 1, 1, 1]], dtype=torch.bool)
    rewards = torch.tensor([[0.0, 1.0, -2.0, 0.5, 3.0]])
    values = torch.randn(1, 5)
    _, returns = gae(rewards, values, mask, gamma=0.9, lam=1.0)
    to_go = [1 - 2 * 0.9 + 0.5 * 0.81 + 3 * 0.729, -2 + 0.5 * 0.9 + 3 * 0.81, 0.5 + 3 * 0.9, 3.0]
    assert returns[0, 1:].tolist() == pytest.approx(to_go, abs=1e-5)


def test_kl_penalised_rewards_put_the_score_on_the_last_response_token():
    mask = torch.tensor([[0, 1, 1, 1, 0], [0, 1, 0, 0, 0]], dtype=torch.bool)
    logps = torch.tensor([[0.0, -1.0, -2.0, -0.5, 0.0], [0.0, -0.3, 0.0, 0.0, 0.0]])
    ref = torch.tensor([[0.0, -1.5, -1.0, -0.5, 0.0], [0.0, -0.1, 0.0, 0.0, 0.0]])
    rewards = kl_penalised_rewards(torch.tensor([10.0, -4.0]), logps, ref, mask, kl_coef=0.1)
    expected = [[0, -0.1 * 0.5, -0.1 * -1.0, 0.0 + 10.0, 0], [0, -0.1 * -0.2 - 4.0, 0, 0, 0]]
    assert rewards.tolist()[0] == pytest.approx(expected[0], abs=1e-6)
    assert rewards.tolist()[1] == pytest.approx(expected[1], abs=1e-6)


def test_whiten_normalises_over_the_mask_only():
    mask = torch.tensor([[0, 1, 1, 1], [0, 1, 1, 0]], dtype=torch.bool)
    x = torch.tensor([[100.0, 1.0, 2.0, 3.0], [-100.0, 4.0, 5.0, 100.0]])
    white = whiten(x, mask)
    assert white[~mask].tolist() == [0.0] * 3
    assert abs(float(white[mask].mean())) < 1e-6
    assert float(white[mask].std(unbiased=False)) == pytest.approx(1.0, abs=1e-5)


# -- KL ----------------------------------------------------------------------------------------------
def test_kl_estimators_are_zero_at_equality_and_k3_is_positive_and_unbiased():
    logps = torch.tensor([-1.0, -2.0, -0.1])
    ref = torch.tensor([-2.0, -2.0, -3.0])
    for estimator in ("k1", "k3"):
        assert kl_per_token(logps, logps.clone(), estimator).tolist() == [0.0, 0.0, 0.0]
    assert kl_per_token(logps, ref, "k1").tolist() == pytest.approx([1.0, 0.0, 2.9])
    k3 = kl_per_token(logps, ref, "k3")
    assert k3[0] == pytest.approx(math.exp(-1) + 1 - 1) and k3[1] == 0 and k3[2] > 0
    assert (kl_per_token(ref, logps, "k3") >= 0).all()
    # the mean of k3 over samples from p estimates KL(p || q) without bias
    gen = torch.Generator().manual_seed(0)
    p = torch.tensor([0.5, 0.2, 0.2, 0.1])
    q = torch.tensor([0.1, 0.3, 0.3, 0.3])
    samples = torch.multinomial(p, 200_000, replacement=True, generator=gen)
    estimate = kl_per_token(p.log()[samples], q.log()[samples], "k3").mean()
    assert float(estimate) == pytest.approx(float((p * (p / q).log()).sum()), abs=0.01)
    with pytest.raises(ValueError, match="k2"):
        kl_per_token(logps, ref, "k2")


def test_adaptive_kl_coefficient_rises_above_target_and_falls_below():
    control = AdaptiveKLController(init_coef=0.1, target=6.0, horizon=10_000)
    control.update(current_kl=12.0, n_samples=256)  # error 1.0, clipped to 0.2
    assert control.value == pytest.approx(0.1 * (1 + 0.2 * 256 / 10_000))
    risen = control.value
    control.update(current_kl=5.0, n_samples=256)  # error -1/6
    assert control.value == pytest.approx(risen * (1 - 256 / 6 / 10_000))
    control.update(current_kl=6.0, n_samples=256)
    assert control.value == pytest.approx(risen * (1 - 256 / 6 / 10_000))
    fixed = FixedKLController(0.1)
    fixed.update(current_kl=100.0, n_samples=256)
    assert fixed.value == 0.1


# -- log-probs and the GRPO loss on a tiny Llama -----------------------------------------------------
def rollout_batch(seed: int = 0, prompt: int = 4, response: int = 6):
    """Rows laid out as rollouts are: prompts of different lengths left-padded, responses of different
    lengths right-padded, random tokens."""
    gen = torch.Generator().manual_seed(seed)
    prompt_lengths, response_lengths = [4, 2, 3, 4], [6, 3, 5, 1]
    n = len(prompt_lengths)
    ids = torch.randint(3, VOCAB, (n, prompt + response), generator=gen)
    attention = torch.zeros(n, prompt + response, dtype=torch.long)
    response_mask = torch.zeros(n, prompt + response, dtype=torch.bool)
    for i, (p, r) in enumerate(zip(prompt_lengths, response_lengths, strict=True)):
        ids[i, : prompt - p] = 0
        ids[i, prompt + r :] = 0
        attention[i, prompt - p : prompt + r] = 1
        response_mask[i, prompt : prompt + r] = True
    return {"input_ids": ids, "attention_mask": attention, "response_mask": response_mask}


def rows(batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The keys token_logprobs takes."""
    return {k: batch[k] for k in ("input_ids", "attention_mask", "response_mask")}


def tiny_gpt2(vocab_size: int = VOCAB, seed: int = 0):
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(seed)
    return GPT2LMHeadModel(GPT2Config(vocab_size=vocab_size, n_positions=64, n_embd=32, n_layer=2, n_head=2))


# Llama's rotary positions are relative, so a shift by the padding cancels out; GPT-2's learnt absolute
# positions do not, and catch position ids that count the padding.
@pytest.mark.parametrize("build", [tiny_llama, tiny_gpt2], ids=["llama", "gpt2"])
def test_token_logprobs_under_left_padding_equal_those_of_the_unpadded_rows(build):
    model = build(VOCAB).eval()
    batch = rollout_batch()
    temperature = 0.7
    with torch.no_grad():
        padded = token_logprobs(model, **batch, temperature=temperature)
        for i in range(batch["input_ids"].shape[0]):
            real = batch["attention_mask"][i].bool()
            ids = batch["input_ids"][i][real].unsqueeze(0)
            logits = model(input_ids=ids).logits[0].float() / temperature
            by_hand = torch.log_softmax(logits[:-1], dim=-1).gather(-1, ids[0, 1:, None]).squeeze(-1)
            responded = batch["response_mask"][i][real][1:]
            assert torch.allclose(padded[i][batch["response_mask"][i]], by_hand[responded], atol=1e-5)
    assert padded[~batch["response_mask"]].abs().max() == 0


def test_grpo_gradient_at_ratio_one_is_the_plain_policy_gradient():
    model = tiny_llama(VOCAB)
    batch = rollout_batch()
    mask = batch["response_mask"]
    with torch.no_grad():
        logps = token_logprobs(model, **batch)
    advantages = torch.tensor([1.5, -0.5, 0.25, -1.0])
    batch.update(old_logps=logps, ref_logps=logps.clone(), advantages=advantages)
    objective = GrpoLoss(clip=0.2, kl_coef=0.5)

    loss = objective.loss_sum(model, batch)
    # ratio 1 everywhere and KL 0: the loss is -sum of each token's advantage
    assert float(loss.detach()) == pytest.approx(-float((advantages * mask.sum(1)).sum()), abs=1e-5)
    assert int(objective.count(batch)) == int(mask.sum()) == 15
    grads = torch.autograd.grad(loss, list(model.parameters()))
    # the REINFORCE gradient: -sum_t A * grad log pi(token t); k3's gradient vanishes at equality
    surrogate = -(advantages[:, None] * token_logprobs(model, **rows(batch))).sum()
    expected = torch.autograd.grad(surrogate, list(model.parameters()))
    for g, e in zip(grads, expected, strict=True):
        assert torch.allclose(g, e, atol=1e-6)
    stats = objective.pop_stats()
    assert stats == {
        "clip_fraction": 0.0,
        "kl_per_token": pytest.approx(0.0, abs=1e-7),
        "ratio": pytest.approx(1.0),
    }
    assert objective.pop_stats() == {}


def test_the_clip_bites_on_the_second_pass_and_clipped_tokens_get_no_policy_gradient():
    model = tiny_llama(VOCAB)
    batch = rollout_batch(seed=1)
    mask = batch["response_mask"]
    with torch.no_grad():
        old = token_logprobs(model, **batch)
    advantages = torch.tensor([1.0, -1.0, 1.0, -1.0])
    batch.update(old_logps=old, advantages=advantages)
    objective = GrpoLoss(clip=0.2, kl_coef=0.0)
    optimizer = torch.optim.SGD(model.parameters(), lr=2.0)
    fractions = []
    for _ in range(2):
        optimizer.zero_grad()
        (objective.loss_sum(model, batch) / objective.count(batch)).backward()
        optimizer.step()
        fractions.append(objective.pop_stats()["clip_fraction"])
    assert fractions[0] == 0.0  # the first pass is on-policy: every ratio is exactly 1

    # the third pass, by hand: which tokens are clipped, and what the policy term sends them
    logps = token_logprobs(model, **rows(batch))
    logps.retain_grad()
    per_token, clipped = clipped_policy_loss(logps, old, advantages, clip=0.2)
    torch.where(mask, per_token, 0.0).sum().backward()
    clipped &= mask
    assert clipped.sum() > 0 and (mask & ~clipped).sum() > 0
    ratio = (logps - old).exp().detach()
    sign = advantages[:, None].expand_as(ratio)
    # clipped where the token already moved past the clip in the direction its advantage asks
    assert ((sign > 0) & (ratio > 1.2) | (sign < 0) & (ratio < 0.8))[clipped].all()
    assert logps.grad[clipped].abs().max() == 0
    # elsewhere, d(-ratio * A)/d logp = -ratio * A
    free = mask & ~clipped
    assert torch.allclose(logps.grad[free], -(ratio * sign)[free], atol=1e-6)
    assert fractions[1] > 0.0


# -- PPO and GRPO on a bandit ------------------------------------------------------------------------
class BanditLM(torch.nn.Module):
    """A one-step language model: after the prompt token, the next-token logits are one parameter vector
    over the arms; every hidden state is the same constant vector, so a value head learns one number."""

    def __init__(self, arms: int, hidden: int = 4) -> None:
        super().__init__()
        self.arm_logits = torch.nn.Parameter(torch.zeros(arms))
        self.hidden = hidden

    def forward(self, input_ids, attention_mask=None, position_ids=None, use_cache=False, **kwargs):
        n, length = input_ids.shape
        hidden = torch.ones(n, length, self.hidden)
        return SimpleNamespace(logits=self.arm_logits.expand(n, length, -1), hidden_states=(hidden,))


ARM_REWARDS = torch.tensor([0.1, 0.5, 1.0, 0.2])


def pull_arms(policy: BanditLM, n: int, gen: torch.Generator) -> dict[str, torch.Tensor]:
    with torch.no_grad():
        arms = torch.multinomial(torch.softmax(policy.arm_logits, -1), n, replacement=True, generator=gen)
    ids = torch.stack([torch.zeros_like(arms), arms], dim=1)
    mask = torch.tensor([[False, True]]).expand(n, 2)
    return {"input_ids": ids, "attention_mask": torch.ones_like(ids), "response_mask": mask}


def run_ppo_bandit(kl_coef: float, iterations: int, samples: int, lr: float) -> tuple[BanditLM, ValueHead]:
    torch.manual_seed(0)
    gen = torch.Generator().manual_seed(0)
    policy, head = BanditLM(len(ARM_REWARDS)), ValueHead(4)
    objective = PpoLoss(clip=0.2, value_clip=0.2, value_coef=0.5, head=head)
    optimizer = torch.optim.Adam([*policy.parameters(), *head.parameters()], lr=lr)
    for _ in range(iterations):
        batch = pull_arms(policy, samples, gen)
        mask = batch["response_mask"]
        with torch.no_grad():
            old_logps = token_logprobs(policy, **batch)
            old_values = torch.where(
                mask, token_values(policy, head, batch["input_ids"], batch["attention_mask"]), 0
            )
        ref_logps = torch.where(mask, math.log(1 / len(ARM_REWARDS)), 0.0)  # a uniform reference
        scores = ARM_REWARDS[batch["input_ids"][:, 1]]
        rewards = kl_penalised_rewards(scores, old_logps, ref_logps, mask, kl_coef)
        advantages, returns = gae(rewards, old_values, mask, gamma=1.0, lam=0.95)
        batch.update(
            old_logps=old_logps, old_values=old_values, returns=returns, advantages=whiten(advantages, mask)
        )
        for _ in range(4):  # mu = 4 passes over the same rollouts
            optimizer.zero_grad()
            (objective.loss_sum(policy, batch) / objective.count(batch)).backward()
            optimizer.step()
        objective.pop_stats()
    return policy, head


def test_ppo_finds_the_best_arm_and_its_value():
    policy, head = run_ppo_bandit(kl_coef=0.0, iterations=60, samples=64, lr=0.05)
    probs = torch.softmax(policy.arm_logits, -1).detach()
    assert probs[2] > 0.9
    value = float(head(torch.ones(1, 4)).detach())
    assert value == pytest.approx(float((probs * ARM_REWARDS).sum()), abs=0.1)


def test_ppo_with_a_kl_leash_finds_the_regularised_optimum():
    # max E[r] - beta KL(pi || uniform) is solved by pi* proportional to exp(r / beta)
    beta = 0.5
    policy, _ = run_ppo_bandit(kl_coef=beta, iterations=150, samples=256, lr=0.02)
    optimum = torch.softmax(ARM_REWARDS / beta, -1)
    assert torch.allclose(torch.softmax(policy.arm_logits, -1).detach(), optimum, atol=0.05)


def test_grpo_finds_the_best_arm():
    gen = torch.Generator().manual_seed(0)
    policy = BanditLM(len(ARM_REWARDS))
    objective = GrpoLoss(clip=0.2, kl_coef=0.0)
    optimizer = torch.optim.Adam(policy.parameters(), lr=0.05)
    for _ in range(40):
        batch = pull_arms(policy, 16, gen)  # one prompt, a group of 16
        with torch.no_grad():
            batch["old_logps"] = token_logprobs(policy, **batch)
        batch["advantages"] = group_advantages(ARM_REWARDS[batch["input_ids"][:, 1]], 16)
        for _ in range(4):
            optimizer.zero_grad()
            (objective.loss_sum(policy, batch) / objective.count(batch)).backward()
            optimizer.step()
    assert torch.softmax(policy.arm_logits, -1)[2] > 0.9


def test_ppo_value_loss_is_clipped_around_the_old_values():
    policy, head = BanditLM(4), ValueHead(4)
    with torch.no_grad():
        head.linear.bias.fill_(0.5)  # V = 0.5 everywhere
    batch = pull_arms(policy, 3, torch.Generator().manual_seed(0))
    mask = batch["response_mask"]
    values = token_values(policy, head, batch["input_ids"], batch["attention_mask"])
    assert values[:, 0].tolist() == [0.0] * 3 and values[:, 1].tolist() == [0.5] * 3
    zeros = torch.zeros(3, 2)
    batch.update(
        old_logps=token_logprobs(policy, **batch).detach(),
        old_values=zeros,
        returns=torch.where(mask, 1.0, 0.0),
        advantages=zeros,
    )
    objective = PpoLoss(clip=0.2, value_clip=0.2, value_coef=0.1, head=head)
    loss = objective.loss_sum(policy, batch)
    # V_clipped = 0 + clip(0.5, -0.2, 0.2) = 0.2: max((0.5 - 1)^2, (0.2 - 1)^2) / 2 = 0.32 per token
    assert float(loss.detach()) == pytest.approx(3 * 0.1 * 0.32)
    stats = objective.pop_stats()
    assert stats["value_loss"] == pytest.approx(0.32) and stats["value_clip_fraction"] == 1.0
    # the clipped branch is constant in V: no gradient reaches the head
    loss.backward()
    assert head.linear.bias.grad.abs().max() == 0


def test_on_policy_grpo_uses_its_own_forward_as_the_old_policy_and_tallies_the_rollout_statistics():
    """One pass of one mini-batch: without old_logps the loss, its gradients and its statistics are
    those it has with old log-probs from a separate forward, and it reports the rollouts' entropy and
    KL per answer as the stage computed them from that forward."""
    model = tiny_llama(VOCAB)
    batch = rollout_batch(seed=2)
    mask = batch["response_mask"]
    with torch.no_grad():
        old = token_logprobs(model, **rows(batch))
    ref = old - 0.1 * mask * torch.linspace(0.5, 1.5, mask.shape[1])  # a reference a little apart
    batch.update(ref_logps=ref, advantages=torch.tensor([1.0, -0.5, 0.25, -0.75]))
    given = GrpoLoss(clip=0.2, kl_coef=0.3)
    own = GrpoLoss(clip=0.2, kl_coef=0.3)
    with_old = given.loss_sum(model, {**batch, "old_logps": old})
    expected = torch.autograd.grad(with_old, list(model.parameters()))
    without_old = own.loss_sum(model, batch)
    grads = torch.autograd.grad(without_old, list(model.parameters()))
    assert float(without_old.detach()) == pytest.approx(float(with_old.detach()), rel=1e-6)
    for g, e in zip(grads, expected, strict=True):
        assert torch.allclose(g, e, atol=1e-6)
    stats, reference_stats = own.pop_stats(), given.pop_stats()
    assert stats.pop("kl") == pytest.approx(float(((old - ref) * mask).sum(-1).mean()), rel=1e-5)
    assert stats.pop("entropy") == pytest.approx(float(-(old * mask).sum() / mask.sum()), rel=1e-5)
    assert stats == pytest.approx(reference_stats)  # clip fraction 0, ratio 1, the same kl_per_token


@pytest.mark.parametrize("algorithm", ["grpo", "ppo"])
def test_the_rollouts_old_and_reference_figures_are_those_of_the_training_forward_under_autocast(algorithm):
    """Under the training forward's autocast (bf16 on the CPU), the old log-probs, the reference's (the
    policy itself here) and PPO's old values that rollout_batch computes are exactly what the loss's
    own forward computes at the first update; without it (the control) they are not."""
    from peaufine.methods.rollout import Rollouts

    model = tiny_llama(VOCAB)
    batch = rollout_batch(seed=3)
    rollouts = Rollouts(**batch, prompt_index=torch.arange(4), completions=[""] * 4, prompt_length=4)
    head = None
    if algorithm == "ppo":
        head = ValueHead(32)
        torch.nn.init.normal_(head.linear.weight, std=1.0, generator=torch.Generator().manual_seed(0))
    config = SimpleNamespace(passes=2, mini_batches=1, temperature=0.7, group_size=2, scale_rewards=True)
    config.gamma, config.lam = 1.0, 0.95

    def autocast():
        return torch.autocast("cpu", dtype=torch.bfloat16)

    def off(batch: dict[str, torch.Tensor]) -> dict[str, float]:
        """How far the figures of `batch` are from those of a training forward under autocast."""
        mask = batch["response_mask"]
        with torch.no_grad(), autocast():
            logps, hidden = rl.token_logprobs_and_hidden(model, **rows(batch), temperature=0.7)
            values = rl.values_of_tokens(head, hidden) if head is not None else None
        far = {"old": float((logps - batch["old_logps"]).abs().max())}
        if "ref_logps" in batch:
            far["reference"] = float((logps - batch["ref_logps"]).abs().max())
        if values is not None:
            far["values"] = float(torch.where(mask, values - batch["old_values"], 0.0).abs().max())
        return far

    reference = copy.deepcopy(model).eval().requires_grad_(False)  # the policy as it starts
    args = (rollouts, [1.0, 0.0, 0.5, 0.25], model, reference, config, 0.1, head)
    same, _ = rl.rollout_batch(*args, autocast=autocast)
    apart, _ = rl.rollout_batch(*args)
    assert all(v == 0.0 for v in off(same).values()), off(same)
    assert all(v > 1e-3 for v in off(apart).values()), off(apart)

"""Golden numbers (derived by hand in each docstring), differential tests against naive loops, invariants."""

import math

import pytest
import torch
from torch.testing import assert_close

from lit_rl.objectives import (
    aggregate,
    clipped_policy_loss,
    grpo_advantages,
    kl_penalty,
    policy_gradient_loss,
    reinforce_advantages,
    remax_advantages,
    rloo_advantages,
    zero_std_groups,
)

LOSS = torch.tensor([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]])
MASK = torch.tensor([[1, 1, 0], [1, 0, 0]])


@pytest.mark.parametrize("mode, expected", [
    ("token_mean", 7 / 3),              # (1 + 2 + 4) / 3 tokens
    ("seq_mean_token_mean", 2.75),      # ((1 + 2) / 2 + 4 / 1) / 2 = (1.5 + 4) / 2
    ("seq_mean_token_sum", 3.5),        # ((1 + 2) + 4) / 2 sequences
    ("seq_mean_token_sum_norm", 0.875),  # 7 / (2 sequences * C = 4)
])
def test_aggregate_golden(mode, expected):
    assert aggregate(LOSS, MASK, mode, max_len=4).item() == pytest.approx(expected, abs=1e-6)


def test_aggregate_ignores_padding_values():
    """Whatever sits under mask = 0 does not change the result."""
    noisy = LOSS.clone()
    noisy[MASK == 0] = 1e6
    for mode in ("token_mean", "seq_mean_token_mean", "seq_mean_token_sum", "seq_mean_token_sum_norm"):
        assert aggregate(noisy, MASK, mode, max_len=4) == aggregate(LOSS, MASK, mode, max_len=4)


@pytest.mark.parametrize("mode", ["token_mean", "seq_mean_token_mean", "seq_mean_token_sum", "seq_mean_token_sum_norm"])
def test_aggregate_micro_batches_sum_to_full_batch(mode):
    """With the global normalisers, 8 micro-batches of 1 add up to the batch of 8."""
    g = torch.Generator().manual_seed(0)
    loss = torch.randn(8, 5, generator=g)
    mask = (torch.rand(8, 5, generator=g) > 0.3).long()
    mask[:, 0] = 1
    full = aggregate(loss, mask, mode, max_len=5)
    parts = sum(aggregate(loss[i:i + 1], mask[i:i + 1], mode, num_seqs=8, num_tokens=mask.sum(), max_len=5)
                for i in range(8))
    assert_close(parts, full, rtol=1e-6, atol=1e-6)


def test_aggregate_errors():
    with pytest.raises(ValueError, match="max_len"):
        aggregate(LOSS, MASK, "seq_mean_token_sum_norm")
    with pytest.raises(ValueError, match="unknown aggregation"):
        aggregate(LOSS, MASK, "mean")


def test_kl_estimators_golden():
    """logps = [0, -1], ref = [-1, -1]: d = ref - logps = [-1, 0].
    k1 = -d = [1, 0]; k2 = d^2/2 = [0.5, 0]; k3 = exp(d) - d - 1 = [e^-1, 0] = [0.367879..., 0]."""
    logps, ref = torch.tensor([0.0, -1.0]), torch.tensor([-1.0, -1.0])
    assert_close(kl_penalty(logps, ref, "k1"), torch.tensor([1.0, 0.0]))
    assert_close(kl_penalty(logps, ref, "k2"), torch.tensor([0.5, 0.0]))
    assert_close(kl_penalty(logps, ref, "k3"), torch.tensor([math.exp(-1), 0.0]))
    with pytest.raises(ValueError, match="unknown KL estimator"):
        kl_penalty(logps, ref, "k4")


def test_kl_estimators_are_unbiased_values():
    """Over samples y ~ p, mean k1 and mean k3 estimate KL(p || q) = sum p log(p/q)."""
    p, q = torch.tensor([0.7, 0.2, 0.1]), torch.tensor([0.3, 0.3, 0.4])
    exact = (p * (p / q).log()).sum()
    y = torch.multinomial(p, 400_000, replacement=True, generator=torch.Generator().manual_seed(0))
    logps, ref = p.log()[y], q.log()[y]
    for estimator in ("k1", "k3"):
        assert kl_penalty(logps, ref, estimator).mean().item() == pytest.approx(exact.item(), abs=5e-3)


def test_reinforce_advantages():
    """r = [1, 0, 0.5], b = 0.5 -> [0.5, -0.5, 0]."""
    assert_close(reinforce_advantages(torch.tensor([1.0, 0.0, 0.5]), 0.5), torch.tensor([0.5, -0.5, 0.0]))


def test_remax_advantages_golden():
    """G = 2, rewards [1, 0.1 | 0, 1], greedy [0.1, 1] -> [0.9, 0 | -1, 0]; clip 0.5 -> [0.5, 0 | -0.5, 0]."""
    rewards, greedy = torch.tensor([1.0, 0.1, 0.0, 1.0]), torch.tensor([0.1, 1.0])
    assert_close(remax_advantages(rewards, greedy), torch.tensor([0.9, 0.0, -1.0, 0.0]))
    assert_close(remax_advantages(rewards, greedy, clip=0.5), torch.tensor([0.5, 0.0, -0.5, 0.0]))


def test_rloo_golden():
    """G = 3, rewards [1, 0, 0 | 1, 1, 1]: baselines (0+0)/2 = 0, (1+0)/2 = 0.5, 0.5 -> A = [1, -0.5, -0.5];
    the second group is all equal -> A = 0."""
    assert_close(rloo_advantages(torch.tensor([1.0, 0, 0, 1, 1, 1]), 3), torch.tensor([1.0, -0.5, -0.5, 0, 0, 0]))


def test_grpo_golden():
    """G = 3, rewards [1, 0, 0]: mean 1/3, centred [2/3, -1/3, -1/3], Bessel var (4/9 + 1/9 + 1/9) / 2 = 1/3,
    std = 1/sqrt(3) -> A = [2/sqrt(3), -1/sqrt(3), -1/sqrt(3)] = [1.1547, -0.5774, -0.5774] (eps = 0)."""
    s = 1 / math.sqrt(3)
    assert_close(grpo_advantages(torch.tensor([1.0, 0, 0]), 3, "group", eps=0.0), torch.tensor([2 * s, -s, -s]))
    assert_close(grpo_advantages(torch.tensor([1.0, 0, 0]), 3, "none"), torch.tensor([2 / 3, -1 / 3, -1 / 3]))


def _naive_rloo(r, G):
    out = []
    for i in range(len(r)):
        group = range(i // G * G, i // G * G + G)
        others = [r[j] for j in group if j != i]
        out.append(r[i] - sum(others) / len(others))
    return torch.tensor(out)


def _naive_grpo(r, G, scale, eps):
    out, all_std = [], torch.tensor(r).std().item()
    for i in range(len(r)):
        group = [r[j] for j in range(i // G * G, i // G * G + G)]
        mean = sum(group) / G
        std = math.sqrt(sum((x - mean) ** 2 for x in group) / (G - 1))
        out.append((r[i] - mean) / {"group": std + eps, "batch": all_std + eps, "none": 1.0}[scale])
    return torch.tensor(out)


@pytest.mark.parametrize("G", [2, 3, 8])
def test_group_advantages_match_naive_loops(G):
    r = torch.rand(5 * G, generator=torch.Generator().manual_seed(G)).tolist()
    rewards = torch.tensor(r)
    assert_close(rloo_advantages(rewards, G), _naive_rloo(r, G), rtol=1e-5, atol=1e-6)
    centred = rewards.view(-1, G) - rewards.view(-1, G).mean(-1, keepdim=True)
    assert_close(rloo_advantages(rewards, G), (G / (G - 1) * centred).reshape(-1), rtol=1e-5, atol=1e-6)
    for scale in ("group", "batch", "none"):
        assert_close(grpo_advantages(rewards, G, scale, eps=1e-4), _naive_grpo(r, G, scale, 1e-4), rtol=1e-5, atol=1e-6)


def test_equal_rewards_give_zero_advantage():
    rewards = torch.tensor([0.3] * 4 + [1.0] * 4)
    assert (rloo_advantages(rewards, 4) == 0).all()
    for scale in ("group", "none"):
        assert (grpo_advantages(rewards, 4, scale) == 0).all()
    assert (remax_advantages(rewards, torch.tensor([0.3, 1.0])) == 0).all()
    assert zero_std_groups(torch.tensor([1.0, 1, 0, 1]), 2).tolist() == [True, False]


def test_group_size_errors():
    with pytest.raises(ValueError, match="group_size >= 2"):
        rloo_advantages(torch.tensor([1.0, 0.0]), 1)
    with pytest.raises(ValueError, match="group_size >= 2"):
        grpo_advantages(torch.tensor([1.0, 0.0]), 1)
    with pytest.raises(ValueError, match="do not split"):
        rloo_advantages(torch.tensor([1.0, 0.0, 1.0]), 2)


def test_policy_gradient_loss_golden():
    """-A * l: A = [2, -1] over logps [[-1, -2], [-0.5, -3]] -> [[2, 4], [-0.5, -3]]."""
    logps = torch.tensor([[-1.0, -2.0], [-0.5, -3.0]])
    assert_close(policy_gradient_loss(logps, torch.tensor([2.0, -1.0])), torch.tensor([[2.0, 4.0], [-0.5, -3.0]]))


def test_clipped_loss_golden():
    """Token-by-token (loss = max(-A rho, -A clip(rho))):
    1. A = +1, rho = 1.5, eps_high 0.2: max(-1.5, -1.2) = -1.2, clipped.
    2. A = -1, rho = 0.5, eps_low 0.2: max(0.5, 0.8) = 0.8, clipped.
    3. A = -1, rho = 4: max(4, 1.2) = 4, not clipped; dual clip c = 3 caps it at -c A = 3.
    4. A = +1, rho = 1.1: inside the range, -1.1, not clipped."""
    rho = torch.tensor([[1.5, 0.5, 4.0, 1.1]])
    adv = torch.tensor([[1.0, -1.0, -1.0, 1.0]])
    old = torch.zeros_like(rho)
    loss, clipped = clipped_policy_loss(rho.log(), old, adv)
    assert_close(loss, torch.tensor([[-1.2, 0.8, 4.0, -1.1]]))
    assert clipped.tolist() == [[True, True, False, False]]
    loss, clipped = clipped_policy_loss(rho.log(), old, adv, dual_clip=3.0)
    assert_close(loss, torch.tensor([[-1.2, 0.8, 3.0, -1.1]]))
    assert clipped.tolist() == [[True, True, True, False]]
    loss, _ = clipped_policy_loss(rho.log(), old, adv, eps_high=0.28)         # clip-higher (DAPO)
    assert_close(loss[0, 0], torch.tensor(-1.28))
    with pytest.raises(ValueError, match="dual_clip"):
        clipped_policy_loss(rho.log(), old, adv, dual_clip=0.5)


def test_clipped_loss_on_policy_gradient_equals_policy_gradient():
    """At rho = 1 the clipped surrogate's gradient is the REINFORCE gradient -A grad l."""
    logps = torch.randn(3, 4, generator=torch.Generator().manual_seed(1)).requires_grad_()
    adv = torch.tensor([1.0, -2.0, 0.5])
    clipped, _ = clipped_policy_loss(logps, logps.detach(), adv)
    (g_clip,) = torch.autograd.grad(clipped.sum(), logps)
    (g_pg,) = torch.autograd.grad(policy_gradient_loss(logps, adv).sum(), logps)
    assert_close(g_clip, g_pg)

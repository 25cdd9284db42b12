"""ERPD and PPO objectives: golden numbers derived by hand in each docstring, naive-loop differentials,
invariants (padding, whitening, masking) and bad input."""

import math

import pytest
import torch
from torch.testing import assert_close

from lit_rl.modules.heads import entropy_with_grad
from lit_rl.logprobs import token_entropy
from lit_rl.objectives import (
    ce_loss,
    clipped_value_loss,
    combine_signals,
    deviation_ratio,
    distillation_signal,
    gae,
    kl_penalty,
    implicit_reward,
    length_adaptive_lambda,
    mask_outliers,
    mse_loss,
    outcome_token_rewards,
    policy_gradient_loss,
    sample_kl,
    sapo_loss,
    whiten,
)
from lit_rl.objectives.erpd import log_ratio_signal, signal_spread

TIGHT = {"rtol": 1e-6, "atol": 1e-6}


def test_sapo_golden():
    """f(rho) = sigmoid(tau (rho - 1)) * 4 / tau, loss -f(rho) A:
    1. A = +1, rho = 1, tau_pos = 1: f = sigmoid(0) * 4 = 2 -> -2.
    2. A = -1, rho = 1, tau_neg = 1.05: f = 0.5 * 4 / 1.05 = 1.9047619 -> +1.9047619.
    3. A = +2, rho = 2, tau_pos = 1: f = sigmoid(1) * 4 = 0.7310586 * 4 = 2.9242344 -> -5.8484688.
    4. A = -1, rho = 0.5, tau_neg = 1.05: f = sigmoid(-0.525) * 4 / 1.05 = 0.3716863 * 3.8095238 = 1.4159478 -> +1.4159478."""
    rho = torch.tensor([[1.0, 1.0, 2.0, 0.5]])
    adv = torch.tensor([[1.0, -1.0, 2.0, -1.0]])
    loss = sapo_loss(rho.log(), torch.zeros_like(rho), adv)
    s = 1 / (1 + math.exp(0.525))
    assert_close(loss, torch.tensor([[-2.0, 2 / 1.05, -2 * 4 / (1 + math.exp(-1)), s * 4 / 1.05]]), **TIGHT)


def test_sapo_on_policy_gradient_is_reinforce_and_decays_off_policy():
    """f'(1) = 1: at rho = 1 the gradient is -A grad l; far from 1 it shrinks smoothly but never to exactly 0."""
    logps = torch.randn(3, 4, generator=torch.Generator().manual_seed(0)).requires_grad_()
    adv = torch.tensor([1.0, -2.0, 0.5])
    (g_sapo,) = torch.autograd.grad(sapo_loss(logps, logps.detach(), adv).sum(), logps)
    (g_pg,) = torch.autograd.grad(policy_gradient_loss(logps, adv).sum(), logps)
    assert_close(g_sapo, g_pg, **TIGHT)
    far = torch.full((1, 1), math.log(3.0), requires_grad=True)       # rho = 3, A = 1: 4 s (1 - s) rho, s = sigmoid(2)
    (g,) = torch.autograd.grad(sapo_loss(far, torch.zeros(1, 1), torch.ones(1)).sum(), far)
    s = 1 / (1 + math.exp(-2))
    assert g.item() == pytest.approx(-4 * s * (1 - s) * 3, abs=1e-6) and g.item() < 0


def test_sapo_matches_a_naive_loop():
    g = torch.Generator().manual_seed(3)
    logps, old = -torch.rand(4, 5, generator=g) * 2, -torch.rand(4, 5, generator=g) * 2
    adv = torch.randn(4, 5, generator=g)
    expected = torch.empty(4, 5)
    for i in range(4):
        for t in range(5):
            a, rho = adv[i, t].item(), math.exp(logps[i, t].item() - old[i, t].item())
            tau = 1.0 if a > 0 else 1.05
            expected[i, t] = -4 / tau / (1 + math.exp(-tau * (rho - 1))) * a
    assert_close(sapo_loss(logps, old, adv), expected, rtol=1e-5, atol=1e-6)


def test_ce_golden():
    """logps [-1, -2, pad], old [-1.5, -1, pad]: sum of log-ratios 0.5 - 1 = -0.5; beta 0.1 -> R = -0.05
    (mean: -0.25 * 0.1 = -0.025). BCE with logits: label 1 -> softplus(-R) = log(1 + e^0.05) = 0.7184596;
    label 0 -> softplus(R) = log(1 + e^-0.05) = 0.6684596; mean, label 1 -> log(1 + e^0.025) = 0.7057253."""
    logps = torch.tensor([[-1.0, -2.0, 7.0], [-1.0, -2.0, -9.0]])     # padding values must not matter
    old = torch.tensor([[-1.5, -1.0, 3.0], [-1.5, -1.0, 0.0]])
    mask = torch.tensor([[1, 1, 0], [1, 1, 0]])
    assert_close(implicit_reward(logps, old, mask, 0.1), torch.tensor([-0.05, -0.05]), **TIGHT)
    assert_close(ce_loss(logps, old, mask, torch.tensor([True, False]), beta=0.1),
                 torch.tensor([0.7184596480, 0.6684596480]), **TIGHT)
    assert_close(ce_loss(logps, old, mask, torch.tensor([1.0, 1.0]), beta=0.1, reduce="mean"),
                 torch.tensor([0.7057253035] * 2), **TIGHT)


def test_ce_is_stable_for_extreme_rewards_and_pushes_the_right_way():
    logps = torch.tensor([[500.0]], requires_grad=True)
    loss = ce_loss(logps, torch.zeros(1, 1), torch.ones(1, 1), torch.tensor([0.0]), beta=10.0)  # R = 5000
    assert loss.item() == pytest.approx(5000.0) and torch.isfinite(loss).all()
    (grad,) = torch.autograd.grad(loss.sum(), logps)
    assert grad.item() == pytest.approx(10.0)                           # lowers the wrong sample's log-prob
    with pytest.raises(ValueError, match="beta"):
        ce_loss(logps, logps, torch.ones(1, 1), torch.ones(1), beta=0.0)
    with pytest.raises(ValueError, match="reduce"):
        implicit_reward(logps, logps, torch.ones(1, 1), 0.1, "max")


def test_mse_golden():
    """p = [0.5, 0.9]: R = 1 -> (0.5 - 1)^2 = 0.25, (0.9 - 1)^2 = 0.01; R = 0 with w = 2 -> 2 * 0.25 = 0.5,
    2 * 0.81 = 1.62."""
    logps = torch.tensor([[0.5, 0.9], [0.5, 0.9]]).log()
    assert_close(mse_loss(logps, torch.tensor([1.0, 0.0]), negative_weight=2.0),
                 torch.tensor([[0.25, 0.01], [0.5, 1.62]]), **TIGHT)
    with pytest.raises(ValueError, match="negative_weight"):
        mse_loss(logps, torch.tensor([1.0, 0.0]), negative_weight=-1.0)


def test_outcome_rewards_sit_on_the_last_valid_token():
    """rewards [2, 3], mask [[1, 1, 0], [1, 0, 0]] -> [[0, 2, 0], [3, 0, 0]]."""
    mask = torch.tensor([[1, 1, 0], [1, 0, 0]])
    assert_close(outcome_token_rewards(torch.tensor([2.0, 3.0]), mask), torch.tensor([[0.0, 2.0, 0.0], [3.0, 0.0, 0.0]]))


def test_gae_golden():
    """R = 1 on the last token, V = [0.2, 0.5, 0.7].
    gamma = lambda = 1: A = R - V = [0.8, 0.5, 0.3], returns [1, 1, 1].
    lambda = 0.5: deltas [0.5 - 0.2, 0.7 - 0.5, 1 - 0.7] = [0.3, 0.2, 0.3]; A_2 = 0.3, A_1 = 0.2 + 0.5 * 0.3 = 0.35,
    A_0 = 0.3 + 0.5 * 0.35 = 0.475; returns A + V = [0.675, 0.85, 1.0]."""
    mask = torch.ones(1, 3)
    rewards = outcome_token_rewards(torch.tensor([1.0]), mask)
    values = torch.tensor([[0.2, 0.5, 0.7]])
    adv, ret = gae(rewards, values, mask)
    assert_close(adv, torch.tensor([[0.8, 0.5, 0.3]]), **TIGHT)
    assert_close(ret, torch.ones(1, 3), **TIGHT)
    adv, ret = gae(rewards, values, mask, lam=0.5)
    assert_close(adv, torch.tensor([[0.475, 0.35, 0.3]]), **TIGHT)
    assert_close(ret, torch.tensor([[0.675, 0.85, 1.0]]), **TIGHT)


def _naive_gae(r, v, m, gamma, lam):
    out = torch.zeros_like(v)
    for i in range(v.shape[0]):
        steps = [t for t in range(v.shape[1]) if m[i, t]]
        for pos, t in enumerate(steps):
            total = 0.0
            for j, u in enumerate(steps[pos:]):
                nxt = v[i, steps[pos + j + 1]] if pos + j + 1 < len(steps) else 0.0
                total += (gamma * lam[i]) ** j * (r[i, u] + gamma * nxt - v[i, u])
            out[i, t] = total
    return out


def test_gae_matches_a_naive_loop_and_ignores_padding():
    g = torch.Generator().manual_seed(0)
    mask = torch.tensor([[1, 1, 1, 1, 0, 0], [1, 1, 0, 0, 0, 0], [1, 1, 1, 1, 1, 1]])
    values = torch.randn(3, 6, generator=g)
    rewards = outcome_token_rewards(torch.tensor([1.0, 0.0, 0.5]), mask)
    lam = torch.tensor([0.9, 0.5, 1.0])
    adv, _ = gae(rewards, values, mask, gamma=0.95, lam=lam)
    assert_close(adv, _naive_gae(rewards, values, mask, 0.95, lam), rtol=1e-5, atol=1e-6)
    padded = torch.cat([values, torch.full((3, 4), 99.0)], 1)         # more padding, junk values under it
    mask_p = torch.cat([mask, torch.zeros(3, 4, dtype=torch.long)], 1)
    adv_p, _ = gae(outcome_token_rewards(torch.tensor([1.0, 0.0, 0.5]), mask_p), padded, mask_p, 0.95, lam)
    assert_close(adv_p[:, :6], adv, **TIGHT)
    assert (adv_p[:, 6:] == 0).all()


def test_length_adaptive_lambda_golden():
    """alpha 0.05: length 40 -> 1 - 1/2 = 0.5; 200 -> 1 - 1/10 = 0.9; 10 -> 1 - 2 = -1, clamped to 0."""
    assert_close(length_adaptive_lambda(torch.tensor([40, 200, 10])), torch.tensor([0.5, 0.9, 0.0]), **TIGHT)
    with pytest.raises(ValueError, match="alpha"):
        length_adaptive_lambda(torch.tensor([4]), alpha=0.0)


def test_clipped_value_loss_golden():
    """c = 0.2. V = 1, V_old = 0.5, R = 2: (1 - 2)^2 = 1; clipped V = 0.5 + 0.2 = 0.7, (0.7 - 2)^2 = 1.69;
    0.5 * max = 0.845. V = 0.6, V_old = 0.5, R = 0 (inside the range): 0.5 * 0.36 = 0.18. Unclipped: 0.5 and 0.18."""
    values, old, returns = torch.tensor([1.0, 0.6]), torch.tensor([0.5, 0.5]), torch.tensor([2.0, 0.0])
    assert_close(clipped_value_loss(values, old, returns, 0.2), torch.tensor([0.845, 0.18]), **TIGHT)
    assert_close(clipped_value_loss(values, old, returns, None), torch.tensor([0.5, 0.18]), **TIGHT)
    with pytest.raises(ValueError, match="value clip"):
        clipped_value_loss(values, old, returns, -1.0)


def test_whiten_gives_zero_mean_unit_std_over_valid_tokens_only():
    g = torch.Generator().manual_seed(1)
    values = torch.randn(4, 7, generator=g) * 3 + 5
    mask = (torch.rand(4, 7, generator=g) > 0.3).long()
    out = whiten(values, mask)
    valid = out[mask.bool()]
    assert valid.mean().abs().item() < 1e-6
    assert valid.std(unbiased=False).item() == pytest.approx(1.0, abs=1e-6)
    assert (out[~mask.bool()] == 0).all()
    noisy = values.masked_fill(~mask.bool(), 1e6)                      # what sits under padding does not matter
    assert_close(whiten(noisy, mask), out, **TIGHT)


def test_mask_outliers_golden():
    """signal [[1, -2], [3, -4]], only row 0 selected: min -> [[0, -2], [3, -4]]; max -> [[1, 0], [3, -4]];
    all rows, min -> [[0, -2], [0, -4]]."""
    signal, rows = torch.tensor([[1.0, -2.0], [3.0, -4.0]]), torch.tensor([True, False])
    assert_close(mask_outliers(signal, "min", rows), torch.tensor([[0.0, -2.0], [3.0, -4.0]]))
    assert_close(mask_outliers(signal, "max", rows), torch.tensor([[1.0, 0.0], [3.0, -4.0]]))
    assert_close(mask_outliers(signal, "min"), torch.tensor([[0.0, -2.0], [0.0, -4.0]]))
    assert mask_outliers(signal, "keep", rows) is signal
    with pytest.raises(ValueError, match="outliers"):
        mask_outliers(signal, "abs")


def test_distillation_signal_golden_and_invariants():
    """teacher [0, -1, pad], den [-1, -1, pad]: log-ratio [1, 0]; mean 0.5, population std 0.5 -> [1, -1, 0].
    A constant shift of the denominator is removed by whitening; so is junk under padding."""
    teacher, den = torch.tensor([[0.0, -1.0, 5.0]]), torch.tensor([[-1.0, -1.0, -5.0]])
    mask = torch.tensor([[1, 1, 0]])
    assert_close(distillation_signal(teacher, den, mask), torch.tensor([[1.0, -1.0, 0.0]]), **TIGHT)
    assert_close(distillation_signal(teacher, den - 3.0, mask), torch.tensor([[1.0, -1.0, 0.0]]), **TIGHT)
    # min(0, .) on a correct row leaves [0, 0] there; with the other row [2, -2] -> [0, 0, 2, -2] whitened
    two = distillation_signal(torch.tensor([[0.0, -1.0], [1.0, -3.0]]), torch.tensor([[-1.0, -1.0], [-1.0, -1.0]]),
                              torch.ones(2, 2), "min", rows=torch.tensor([True, False]))
    assert_close(two, torch.tensor([[0.0, 0.0], [2.0, -2.0]]) / math.sqrt(2.0), **TIGHT)


def test_combine_signals():
    """Two identical whitened signals with weights 1, 1 give the same signal back; [s, -s] gives zero."""
    mask = torch.ones(1, 4)
    s = whiten(torch.tensor([[1.0, 2.0, 3.0, 6.0]]), mask)
    assert_close(combine_signals([s, s], [1.0, 1.0], mask), s, **TIGHT)
    assert_close(combine_signals([s, -s], [1.0, 1.0], mask), torch.zeros(1, 4), **TIGHT)
    with pytest.raises(ValueError, match="one weight per signal"):
        combine_signals([s], [1.0, 2.0], mask)


def test_deviation_ratio_and_sample_kl_golden():
    """student - old = [0.1, -0.2, pad], teacher - old = [0.5, 0.5, pad]: (0.1 + 0.2) / (0.5 + 0.5) = 0.3.
    sample KL, d = base - logps, k1 = -d, k3 = exp(d) - d - 1:
    1. logps [-1, -2], base [-1.5, -1.5]: d = [-0.5, 0.5]; k1 mean 0; k3 [0.1065307, 0.1487213] -> 0.1276260.
    2. logps [-1, -1], base [-1.5, -1.75]: d = [-0.5, -0.75]; k1 0.625; k3 [0.1065307, 0.2223666] -> 0.1644486.
    3. logps [-2, -2], base [-1, -1.5]: d = [1, 0.5]; k1 -0.75 (below zero); k3 [0.7182818, 0.1487213] -> 0.4335015."""
    old = torch.tensor([[-1.0, -1.0, 0.0]])
    mask = torch.tensor([[1, 1, 0]])
    ratio = deviation_ratio(old + torch.tensor([[0.1, -0.2, 9.0]]), old, old + torch.tensor([[0.5, 0.5, 9.0]]), mask)
    assert ratio.item() == pytest.approx(0.3, abs=1e-6)
    cases = [(([[-1.0, -2.0, 4.0]], [[-1.5, -1.5, 0.0]], mask), 0.0, 0.1276260),
             (([[-1.0, -1.0]], [[-1.5, -1.75]], torch.ones(1, 2)), 0.625, 0.1644486),
             (([[-2.0, -2.0]], [[-1.0, -1.5]], torch.ones(1, 2)), -0.75, 0.4335015)]
    for (logps, base, m), k1, k3 in cases:
        logps, base = torch.tensor(logps), torch.tensor(base)
        assert sample_kl(logps, base, m, "k1").item() == pytest.approx(k1, abs=1e-7)
        assert sample_kl(logps, base, m).item() == pytest.approx(k3, abs=1e-6)     # k3 is the default


def test_sample_kl_k3_is_never_negative_even_where_float32_rounds_below_zero():
    """d = 2^-24 (base one float32 step above logps = -1): exp(d) rounds to 1, so exp(d) - d - 1 = -d < 0 per
    token; the mean sample_kl reports is clamped at 0."""
    logps = torch.full((1, 3), -1.0)
    base = torch.nextafter(logps, torch.zeros(()))                      # -1 + 2^-24
    assert (kl_penalty(logps, base, "k3") < 0).all()                    # the rounding this guards against
    assert sample_kl(logps, base, torch.ones(1, 3)).item() == 0.0
    g = torch.Generator().manual_seed(0)
    logps, base = -torch.rand(64, 9, generator=g) * 3, -torch.rand(64, 9, generator=g) * 3
    for rows in (slice(0, 1), slice(0, 4), slice(None)):               # tiny samples: k1 may go negative, k3 not
        assert sample_kl(logps[rows], base[rows], torch.ones_like(logps[rows])).item() >= 0.0


def test_log_ratio_signal_and_its_spread():
    """teacher - den = [1, 3, pad]: spread 2; a constant log-ratio has spread 0 and whitens to zero; no valid
    token: spread 0. distillation_signal is the whitened log_ratio_signal."""
    teacher, den, mask = torch.tensor([[0.0, 1.0, 7.0]]), torch.tensor([[-1.0, -2.0, 0.0]]), torch.tensor([[1, 1, 0]])
    raw = log_ratio_signal(teacher, den, mask)
    assert_close(raw, torch.tensor([[1.0, 3.0, 0.0]]), **TIGHT)
    assert signal_spread(raw, mask).item() == pytest.approx(2.0)
    assert_close(distillation_signal(teacher, den, mask), whiten(raw, mask), **TIGHT)
    constant = log_ratio_signal(teacher, teacher - 0.3, mask)
    assert signal_spread(constant, mask).item() == pytest.approx(0.0, abs=1e-7)
    assert signal_spread(raw, torch.zeros_like(mask)).item() == 0.0
    assert (distillation_signal(teacher, teacher, mask) == 0).all()     # pi_den = pi_e: nothing to distil


def test_entropy_with_grad_matches_the_no_grad_entropy_and_a_naive_gradient():
    g = torch.Generator().manual_seed(2)
    logits = torch.randn(2, 5, 11, generator=g, requires_grad=True)
    ours = entropy_with_grad(logits, 0.7, chunk_rows=3)
    assert_close(ours, token_entropy(logits.detach(), 0.7), rtol=1e-5, atol=1e-6)
    naive = -(torch.softmax(logits / 0.7, -1) * torch.log_softmax(logits / 0.7, -1)).sum(-1)
    (g_ours,) = torch.autograd.grad(ours.sum(), logits)
    (g_naive,) = torch.autograd.grad(naive.sum(), logits)
    assert_close(g_ours, g_naive, rtol=1e-5, atol=1e-6)


def test_gae_keeps_float64_values_in_float64():
    """``gamma * lambda`` in float32 is 0.940500021, not 0.9405: float64 values must stay float64 throughout."""
    values = torch.tensor([[0.5, -0.25, 0.125]], dtype=torch.float64)
    rewards, mask = torch.tensor([[0.0, 0.0, 1.0]], dtype=torch.float64), torch.ones(1, 3)
    advantages, returns = gae(rewards, values, mask, gamma=0.99, lam=0.95)
    expected, next_value, next_adv = [0.0] * 3, 0.0, 0.0
    for t in reversed(range(3)):                                        # the recursion in Python floats
        delta = rewards[0, t].item() + 0.99 * next_value - values[0, t].item()
        expected[t] = next_adv = delta + 0.99 * 0.95 * next_adv
        next_value = values[0, t].item()
    assert advantages.dtype == returns.dtype == torch.float64
    assert_close(advantages[0], torch.tensor(expected, dtype=torch.float64), rtol=0, atol=1e-15)

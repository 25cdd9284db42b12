"""Importance weights (truncated, token-masked, sequence-rejected), their statistics and the engine/trainer log-prob
gap: golden numbers derived by hand."""

import math

import pytest
import torch
from torch.testing import assert_close

from lit_rl.objectives import (ImportanceSampling, importance_weight_stats, logp_diff, masked_importance_weights,
                               sequence_rejected_importance_weights, truncated_importance_weights)

OLD = torch.tensor([[-1.0, -2.0, -0.5], [-0.2, -3.0, -1.0]])
BEHAVIOUR = torch.tensor([[-1.0, -2.5, -0.1], [-0.3, -1.0, -4.0]])
MASK = torch.tensor([[1.0, 1.0, 0.0], [1.0, 1.0, 1.0]])


def test_truncated_importance_weights_golden():
    """log ratios old - behaviour: [0, 0.5, -0.4], [0.1, -2.0, 3.0]; exp, capped at 1.5, masked:
    [1, min(e^0.5 = 1.6487, 1.5) = 1.5, 0 (masked)], [e^0.1 = 1.10517, e^-2 = 0.135335, min(e^3, 1.5) = 1.5]."""
    weights = truncated_importance_weights(OLD, BEHAVIOUR, MASK, cap=1.5)
    expected = torch.tensor([[1.0, 1.5, 0.0], [1.1051709, 0.1353353, 1.5]])
    assert_close(weights, expected, rtol=0, atol=1e-6)


def test_weights_are_one_on_policy_and_carry_no_gradient():
    logps = torch.randn(4, 5, requires_grad=True)
    weights = truncated_importance_weights(logps, logps.detach(), torch.ones(4, 5), cap=2.0)
    assert torch.equal(weights, torch.ones(4, 5)) and not weights.requires_grad


def test_huge_log_ratios_do_not_overflow():
    weights = truncated_importance_weights(torch.tensor([[0.0, -1e4]]), torch.tensor([[-1e4, 0.0]]),
                                           torch.ones(1, 2), cap=3.0)
    assert_close(weights, torch.tensor([[3.0, math.exp(-20.0)]]))


def test_cap_must_be_positive():
    with pytest.raises(ValueError, match="cap must be > 0"):
        truncated_importance_weights(OLD, BEHAVIOUR, MASK, cap=0.0)


def test_logp_diff_golden():
    """|old - behaviour| on the mask: [0, 0.5, -], [0.1, 2.0, 3.0] -> mean 5.6 / 5 = 1.12, max 3.0."""
    mean, largest = logp_diff(OLD, BEHAVIOUR, MASK)
    assert_close(mean, torch.tensor(1.12), rtol=0, atol=1e-6)
    assert_close(largest, torch.tensor(3.0))


# The ratios of OLD and BEHAVIOUR, rho = exp(old - behaviour), from the log ratios [0, 0.5, -0.4], [0.1, -2, 3]:
# [1, e^0.5 = 1.6487213, e^-0.4 = 0.6703200 (off the mask)], [e^0.1 = 1.1051709, e^-2 = 0.1353353, e^3 = 20.085537].


def test_masked_importance_weights_golden():
    """Kept where 0.5 <= rho <= 1.6, weighted by rho itself: row 0 keeps 1 and drops 1.6487 (above 1.6; the third
    token is off the mask); row 1 keeps 1.1051709 and drops 0.1353 (below 0.5) and 20.09 (above 1.6)."""
    weights = masked_importance_weights(OLD, BEHAVIOUR, MASK, low=0.5, high=1.6)
    assert_close(weights, torch.tensor([[1.0, 0.0, 0.0], [1.1051709, 0.0, 0.0]]), rtol=0, atol=1e-6)


def test_sequence_rejection_golden():
    """Geometric-mean ratios over the mask: row 0 exp((0 + 0.5) / 2) = e^0.25 = 1.2840, row 1
    exp((0.1 - 2 + 3) / 3) = e^(1.1/3) = 1.4430. With [0.5, 1.4] row 1 is rejected whole and row 0 keeps its
    truncated weights [1, min(1.6487, 1.5), 0]; with [1.3, 2] row 0 (1.2840 < 1.3) is rejected and row 1 keeps
    [1.1051709, 0.1353353, min(20.09, 1.5)]."""
    upper = sequence_rejected_importance_weights(OLD, BEHAVIOUR, MASK, low=0.5, high=1.4, cap=1.5)
    assert_close(upper, torch.tensor([[1.0, 1.5, 0.0], [0.0, 0.0, 0.0]]), rtol=0, atol=1e-6)
    lower = sequence_rejected_importance_weights(OLD, BEHAVIOUR, MASK, low=1.3, high=2.0, cap=1.5)
    assert_close(lower, torch.tensor([[0.0, 0.0, 0.0], [1.1051709, 0.1353353, 1.5]]), rtol=0, atol=1e-6)


def test_weight_statistics_golden():
    """Over the 5 tokens on the mask. Truncated at 1.5: weights 1, 1.5, 1.1051709, 0.1353353, 1.5 -> mean
    5.2405062 / 5 = 1.0481012, max 1.5, none dropped, 2 truncated (ratios 1.6487 and 20.09) -> 0.4. Masked to
    [0.5, 1.6]: weights 1, 0, 1.1051709, 0, 0 -> mean 0.4210342, max 1.1051709, 3 of 5 dropped, none truncated.
    Sequences rejected outside [0.5, 1.4], cap 1.5: weights 1, 1.5, 0, 0, 0 -> mean 0.5, max 1.5, 3 dropped, and
    of the kept tokens one ratio (1.6487) above the cap -> 0.2 (row 1's 20.09 was dropped, not truncated)."""
    cases = [(ImportanceSampling("truncate", cap=1.5), [1.0481012, 1.5, 0.0, 0.4]),
             (ImportanceSampling("mask", low=0.5, high=1.6), [0.4210342, 1.1051709, 0.6, 0.0]),
             (ImportanceSampling("reject_sequence", cap=1.5, low=0.5, high=1.4), [0.5, 1.5, 0.6, 0.2])]
    for setting, (mean, largest, masked, clipped) in cases:
        weights = setting.weights(OLD, BEHAVIOUR, MASK)
        stats = setting.stats(weights, OLD, BEHAVIOUR, MASK)
        got = [stats[k] for k in ("weight_mean", "weight_max", "masked_frac", "clipped_frac")]
        assert_close(torch.stack(got), torch.tensor([mean, largest, masked, clipped]), rtol=0, atol=1e-6), setting


def test_every_mode_is_one_on_policy_and_detached():
    """Trainer and engine agree (ratio 1 everywhere): every mode weighs each token 1 and drops nothing."""
    logps = torch.randn(3, 4, requires_grad=True)
    mask = torch.ones(3, 4)
    for mode in ("truncate", "mask", "reject_sequence"):
        setting = ImportanceSampling(mode)
        weights = setting.weights(logps, logps.detach(), mask)
        assert torch.equal(weights, mask) and not weights.requires_grad
        assert importance_weight_stats(weights, logps, logps.detach(), mask, 1.0)["masked_frac"] == 0


@pytest.mark.parametrize("kwargs, message", [({"mode": "clip"}, "mode must be"), ({"cap": 0.0}, "cap must be > 0"),
                                             ({"low": 1.5}, "0 < low <= 1 <= high"),
                                             ({"high": 0.9}, "0 < low <= 1 <= high"),
                                             ({"low": 0.0}, "0 < low <= 1 <= high")])
def test_bad_settings_are_named(kwargs, message):
    with pytest.raises(ValueError, match=message):
        ImportanceSampling(**kwargs)

"""Truncated importance weights and the engine/trainer log-prob gap: golden numbers derived by hand."""

import math

import pytest
import torch
from torch.testing import assert_close

from lit_rl.objectives import logp_diff, truncated_importance_weights

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

"""ERPD stage-1 teacher losses beyond the PPO clip: SAPO's soft gate, the implicit-reward cross-entropy (CE)
and the probability MSE. Per-token losses are ``[B, T]`` for :func:`aggregate`; CE is one loss per sequence."""

from typing import Literal

import torch
from torch import Tensor
from torch.nn.functional import binary_cross_entropy_with_logits

from lit_rl.objectives.losses import LOG_RATIO_CLAMP, _per_token

Reduce = Literal["sum", "mean"]


def sapo_loss(logps: Tensor, old_logps: Tensor, advantages: Tensor, tau_pos: float = 1.0,
              tau_neg: float = 1.05) -> Tensor:
    """SAPO (Gao et al. 2025; ERPD sec. 3.1 and 4.1): the PPO clip replaced by a soft gate.

    ``rho = exp(clamp(l - l_old))``; ``f(rho) = sigmoid(tau (rho - 1)) * 4 / tau`` with ``tau = tau_pos`` where
    ``A > 0`` and ``tau_neg`` elsewhere; loss ``-f(rho) A``. ``f'(1) = 1``, so on-policy its gradient is
    REINFORCE's; far from ``rho = 1`` the gradient decays smoothly instead of dropping to zero.
    """
    if tau_pos <= 0 or tau_neg <= 0:
        raise ValueError(f"SAPO temperatures must be > 0 (got tau_pos={tau_pos}, tau_neg={tau_neg})")
    adv = _per_token(advantages, logps)                                 # [B, T]
    ratio = torch.exp((logps - old_logps).clamp(-LOG_RATIO_CLAMP, LOG_RATIO_CLAMP))  # [B, T]
    tau = torch.where(adv > 0, torch.full_like(adv, tau_pos), torch.full_like(adv, tau_neg))  # [B, T]
    gate = torch.sigmoid(tau * (ratio - 1.0)) * 4.0 / tau               # [B, T]
    return -gate * adv                                                  # [B, T]


def implicit_reward(logps: Tensor, old_logps: Tensor, mask: Tensor, beta: float, reduce: Reduce = "sum") -> Tensor:
    """The implicit reward of a sequence (ERPD eq. 3; Yuan et al. 2025a): ``beta * sum_t m (l_t - l_old_t)``,
    or ``beta`` times the mean over the sequence's valid tokens when ``reduce = "mean"``. ``[B, T] -> [B]``."""
    log_ratio = ((logps - old_logps) * mask).sum(-1)                    # [B]
    if reduce == "mean":
        log_ratio = log_ratio / mask.sum(-1).clamp(min=1)
    elif reduce != "sum":
        raise ValueError(f"unknown CE reduce {reduce!r}; choose 'sum' or 'mean'")
    return beta * log_ratio                                             # [B]


def ce_loss(logps: Tensor, old_logps: Tensor, mask: Tensor, labels: Tensor, beta: float = 0.01,
            reduce: Reduce = "sum") -> Tensor:
    """CE teacher loss (ERPD eq. 2-3): binary cross-entropy of the implicit reward against the label.

    ``loss_i = -[y_i log sigmoid(R_i) + (1 - y_i) log(1 - sigmoid(R_i))]`` with ``R`` from
    :func:`implicit_reward` and ``y = 1`` for a correct trajectory; computed from logits (stable for any R).
    (Eq. 2 as printed drops the minus sign of the negative log-likelihood.) Returns ``[B]``.
    """
    if beta <= 0:
        raise ValueError(f"CE beta must be > 0 (got {beta})")
    rewards = implicit_reward(logps, old_logps, mask, beta, reduce)     # [B]
    return binary_cross_entropy_with_logits(rewards, labels.to(rewards.dtype), reduction="none")  # [B]


def mse_loss(logps: Tensor, outcomes: Tensor, negative_weight: float = 1.0) -> Tensor:
    """MSE teacher loss (ERPD eq. 10): per token ``(pi_theta(y_t | s_t) - R)^2`` with the token
    *probability* ``exp(l_t)`` and the trajectory's outcome ``R`` in {0, 1} (``outcomes [B]``).

    ``negative_weight`` scales the tokens of ``R = 0`` trajectories (``w`` of ERPD Table 9; 1 = eq. 10).
    """
    if negative_weight < 0:
        raise ValueError(f"MSE negative_weight must be >= 0 (got {negative_weight})")
    target = _per_token(outcomes.to(logps.dtype), logps)                # [B, T]
    weight = torch.where(target > 0, torch.ones_like(target), torch.full_like(target, negative_weight))  # [B, T]
    return weight * (logps.exp() - target).square()                     # [B, T]

"""Off-policy REINFORCE on stored samples: TOPR (Le Roux et al. 2025; Countdown study eq. 4)."""

import torch
from torch import Tensor


def topr_loss(
    logps: Tensor,
    behaviour_logps: Tensor,
    rewards: Tensor,
    mask: Tensor,
    threshold: float = 0.0,
    baseline: float = 0.0,
    per_token: bool = False,
) -> tuple[Tensor, Tensor]:
    """Tapered off-policy REINFORCE, per token: ``-sg(alpha) * (R - c) * l_t``.

    Summed over tokens this is the sequence loss ``-sg(alpha) (R - c) L(y)`` of eq. 4, with ``alpha = 1`` for
    positive samples (``R >= threshold``) and ``alpha = clamp(pi(y) / mu(y), 0, 1)`` for the others: good
    samples are learnt at full speed, bad ones unlearnt only as fast as the policy still produces them.
    The log-ratio is clamped at 0 before ``exp``. ``per_token`` tapers each token by its own ratio instead.
    Threshold: the TOPR paper (rewards in {-1, +1}) uses 0; the Countdown study (rewards >= 0) uses 1.

    Args: logps, behaviour_logps, mask ``[B, T]``; rewards ``[B]``.
    Returns ``(loss [B, T], truncated [B, T] bool)``: tokens of tapered samples whose ratio exceeded 1.
    """
    positive = (rewards >= threshold)[:, None]                          # [B, 1]
    log_ratio = (logps.detach() - behaviour_logps) * mask               # [B, T]
    if not per_token:
        log_ratio = log_ratio.sum(-1, keepdim=True)                     # [B, 1]: log pi(y)/mu(y)
    alpha = torch.where(positive, 1.0, log_ratio.clamp(max=0.0).exp())  # [B, T] or [B, 1]
    loss = -alpha * (rewards - baseline)[:, None] * logps               # [B, T]
    truncated = (~positive & (log_ratio > 0)).expand_as(logps)          # [B, T]
    return loss, truncated

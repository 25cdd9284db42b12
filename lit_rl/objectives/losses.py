"""Per-token policy losses. Each returns a ``[B, T]`` loss to be reduced by :func:`aggregate`."""

import torch
from torch import Tensor

LOG_RATIO_CLAMP = 20.0


def _per_token(advantages: Tensor, like: Tensor) -> Tensor:
    """Broadcast sequence-level advantages ``[B]`` over tokens; per-token ``[B, T]`` pass through."""
    return advantages[:, None].expand_as(like) if advantages.dim() == 1 else advantages


def policy_gradient_loss(logps: Tensor, advantages: Tensor) -> Tensor:
    """On-policy REINFORCE surrogate, per token: ``-A * l_t`` (its gradient is ``-A * grad l_t``)."""
    return -_per_token(advantages, logps) * logps                       # [B, T]


def clipped_policy_loss(
    logps: Tensor,
    old_logps: Tensor,
    advantages: Tensor,
    eps_low: float = 0.2,
    eps_high: float = 0.2,
    dual_clip: float | None = None,
) -> tuple[Tensor, Tensor]:
    """PPO / GRPO clipped surrogate (Schulman et al. 2017 eq. 7; clip-higher: DAPO, Yu et al. 2025).

    ``rho = exp(clamp(l - l_old))``; loss ``-min(rho A, clip(rho, 1 - eps_low, 1 + eps_high) A)``.
    ``dual_clip = c`` (Ye et al. 2020) caps the loss of ``A < 0`` tokens at ``-c A``.
    Returns ``(loss [B, T], clipped [B, T] bool)``: where the clipped branch was taken.
    """
    adv = _per_token(advantages, logps)                                 # [B, T]
    ratio = torch.exp((logps - old_logps).clamp(-LOG_RATIO_CLAMP, LOG_RATIO_CLAMP))  # [B, T]
    unclipped = -adv * ratio                                            # [B, T]
    clipped = -adv * ratio.clamp(1.0 - eps_low, 1.0 + eps_high)         # [B, T]
    loss = torch.maximum(unclipped, clipped)                            # [B, T]
    was_clipped = clipped > unclipped
    if dual_clip is not None:
        if dual_clip <= 1.0:
            raise ValueError(f"dual_clip must be > 1 (got {dual_clip})")
        capped = torch.minimum(loss, -dual_clip * adv)
        was_clipped = was_clipped | ((adv < 0) & (capped < loss))
        loss = torch.where(adv < 0, capped, loss)
    return loss, was_clipped


def sft_loss(logps: Tensor) -> Tensor:
    """Supervised warm start (Off-Policy Finetuning for LLM Math Reasoning eq. 1): per-token negative log-likelihood."""
    return -logps                                                       # [B, T]

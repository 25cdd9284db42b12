"""PPO's critic side (Schulman et al. 2017; GAE: Schulman et al. 2016): outcome rewards on the last token,
generalised advantage estimation, the length-adaptive lambda of VAPO, and the clipped value loss."""

import torch
from torch import Tensor


def outcome_token_rewards(rewards: Tensor, mask: Tensor) -> Tensor:
    """Place each sequence's reward ``[B]`` on its last valid token: ``[B, T]``, zero elsewhere."""
    last = (mask.cumsum(-1) == mask.sum(-1, keepdim=True)) & mask.bool()  # [B, T]
    return rewards[:, None].to(torch.float32) * last                   # [B, T]


def length_adaptive_lambda(lengths: Tensor, alpha: float = 0.05) -> Tensor:
    """VAPO's length-adaptive GAE lambda (Yue et al. 2025, eq. 7), cited by ERPD sec. 4.1:
    ``lambda = 1 - 1 / (alpha * length)``, clamped to [0, 1]. ``[B] -> [B]``.

    ERPD prints ``lambda = 1 / (0.05 * length)``, which exceeds 1 for lengths under 20 tokens and falls
    towards 0 for long answers, the opposite of what the cited work intends; lit-rl follows VAPO."""
    if alpha <= 0:
        raise ValueError(f"adaptive lambda alpha must be > 0 (got {alpha})")
    return (1.0 - 1.0 / (alpha * lengths.float().clamp(min=1))).clamp(0.0, 1.0)  # [B]


def gae(token_rewards: Tensor, values: Tensor, mask: Tensor, gamma: float = 1.0,
        lam: float | Tensor = 1.0) -> tuple[Tensor, Tensor]:
    """Generalised advantage estimation (Schulman et al. 2016, eq. 16) over each sequence's valid tokens.

    ``delta_t = r_t + gamma V_{t+1} - V_t`` (``V`` past the last token is 0);
    ``A_t = delta_t + gamma lambda A_{t+1}``; returns ``A + V`` (the value targets). ``lam`` is a float or one
    value per sequence ``[B]``. With ``gamma = lambda = 1`` and the outcome on the last token, ``A_t = R - V_t``.
    Returns ``(advantages [B, T], returns [B, T])``, detached and zero on padding.
    """
    token_rewards, values, mask = token_rewards.detach(), values.detach(), mask.to(torch.float32)
    lam = torch.as_tensor(lam, dtype=torch.float32, device=values.device).expand(values.shape[0])  # [B]
    advantages = torch.zeros_like(values)                               # [B, T]
    next_value = torch.zeros_like(values[:, 0])                         # [B]
    next_adv = torch.zeros_like(values[:, 0])                           # [B]
    for t in reversed(range(values.shape[1])):
        m = mask[:, t]                                                  # [B]
        delta = token_rewards[:, t] + gamma * next_value - values[:, t]
        adv = (delta + gamma * lam * next_adv) * m                      # [B]
        advantages[:, t] = adv
        next_value = torch.where(m > 0, values[:, t], next_value)       # padding passes the future through
        next_adv = torch.where(m > 0, adv, next_adv)
    return advantages, (advantages + values) * mask                     # [B, T], [B, T]


def clipped_value_loss(values: Tensor, old_values: Tensor, returns: Tensor, clip: float | None = 0.2) -> Tensor:
    """PPO's clipped value loss (Schulman et al. 2017; as in OpenAI baselines), per token:
    ``0.5 * max((V - R)^2, (V_old + clip(V - V_old, -c, c) - R)^2)``; ``clip = None``: ``0.5 (V - R)^2``."""
    unclipped = (values - returns).square()                             # [B, T]
    if clip is None:
        return 0.5 * unclipped
    if clip <= 0:
        raise ValueError(f"value clip must be > 0 or null (got {clip})")
    clipped = (old_values + (values - old_values).clamp(-clip, clip) - returns).square()  # [B, T]
    return 0.5 * torch.maximum(unclipped, clipped)                      # [B, T]

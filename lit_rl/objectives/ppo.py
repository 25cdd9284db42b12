"""PPO's critic side (Schulman et al. 2017; GAE: Schulman et al. 2016): outcome rewards on the last token,
generalised advantage estimation, the length-adaptive lambda of VAPO, and the clipped value loss."""

import torch
from torch import Tensor

from lit_rl.objectives.erpd import whiten
from lit_rl.objectives.losses import clipped_policy_loss


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
    Positions outside ``mask`` (padding, and an environment's tokens inside a multi-turn episode) pass the future
    through, so GAE runs over the trained tokens as if they were contiguous (``V_{t+1}`` of a model turn's last
    token is the value at the next turn's first), as veRL's multi-turn GAE does.
    Returns ``(advantages [B, T], returns [B, T])``, detached and zero off the mask.
    """
    token_rewards, values, mask = token_rewards.detach(), values.detach(), mask.to(values.dtype)
    lam = torch.as_tensor(lam, dtype=values.dtype, device=values.device).expand(values.shape[0])  # [B], values' dtype
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


def ppo_returns(rewards: Tensor, values: Tensor, mask: Tensor, gamma: float = 1.0,
                critic_lambda: float = 1.0) -> Tensor:
    """PPO's value targets ``[B, T]`` from outcome rewards ``[B]`` and values ``[B, T]``: GAE with the critic's
    lambda plus the values (``critic_lambda = 1``: the Monte Carlo return)."""
    return gae(outcome_token_rewards(rewards, mask), values, mask, gamma, critic_lambda)[1]   # [B, T]


def ppo_advantages(rewards: Tensor, values: Tensor, mask: Tensor, gamma: float = 1.0, lam: float = 1.0,
                   adaptive_lambda_alpha: float | None = None, whiten_advantages: bool = True) -> Tensor:
    """PPO's per-token advantages ``[B, T]`` from outcome rewards ``[B]`` and values ``[B, T]``: GAE with the
    policy's lambda (``lam``, or VAPO's length-adaptive one when ``adaptive_lambda_alpha`` is set), whitened over
    the valid tokens if asked."""
    policy_lam = lam if adaptive_lambda_alpha is None else length_adaptive_lambda(mask.sum(-1), adaptive_lambda_alpha)
    advantages, _ = gae(outcome_token_rewards(rewards, mask), values, mask, gamma, policy_lam)   # [B, T]
    return whiten(advantages, mask) if whiten_advantages else advantages


def ppo_loss(logps: Tensor, old_logps: Tensor, advantages: Tensor, values: Tensor, old_values: Tensor,
             returns: Tensor, eps_low: float = 0.2, eps_high: float = 0.2, vf_coef: float = 0.5,
             value_clip: float | None = 0.2) -> tuple[Tensor, Tensor]:
    """PPO's per-token objective (Schulman et al. 2017, eq. 9 without the entropy term): the clipped surrogate
    plus ``vf_coef`` times the clipped value loss. Returns ``(loss [B, T], clipped [B, T] bool)``."""
    loss, clipped = clipped_policy_loss(logps, old_logps, advantages, eps_low, eps_high)   # [B, T]
    return loss + vf_coef * clipped_value_loss(values, old_values, returns, value_clip), clipped

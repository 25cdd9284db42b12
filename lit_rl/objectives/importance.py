"""Correcting for a rollout engine whose log-probs differ from the trainer's (vLLM vs the training model)."""

import math

import torch
from torch import Tensor


def truncated_importance_weights(old_logps: Tensor, behaviour_logps: Tensor, mask: Tensor, cap: float) -> Tensor:
    """Per-token weights ``w_t = min(pi_old(y_t) / pi_behaviour(y_t), C)``, detached, 0 off the mask.

    Truncated importance sampling (Ionides 2008; applied to vLLM-vs-trainer mismatch by Yao et al. 2025,
    "Your efficient RL framework secretly brings you off-policy RL training"): the engine sampled from
    ``pi_behaviour`` (its own numerics, possibly stale weights), the loss is written for ``pi_old`` (the
    trainer's log-probs of the same tokens), so each token's loss is multiplied by ``w_t``. Truncating at
    ``C`` bounds the variance; the ratio is formed in log space and the log clamped at ``log C``.
    ``old_logps``, ``behaviour_logps``, ``mask``: ``[B, T]``.
    """
    if cap <= 0:
        raise ValueError(f"importance sampling cap must be > 0 (got {cap})")
    log_ratio = (old_logps - behaviour_logps).detach().clamp(-20.0, math.log(cap))   # [B, T]
    return torch.exp(log_ratio) * mask                                                # [B, T]


def logp_diff(old_logps: Tensor, behaviour_logps: Tensor, mask: Tensor) -> tuple[Tensor, Tensor]:
    """Token-mean and max of ``|l_old - l_behaviour|`` over the mask: how far the engine's log-probs are from
    the trainer's on the same tokens (0 when both run the same weights with the same numerics)."""
    diff = (old_logps - behaviour_logps).abs() * mask                                 # [B, T]
    return diff.sum() / mask.sum().clamp(min=1), diff.max()

"""Correcting for a behaviour policy that is not the trainer's: the engine's numerics (vLLM vs the training model)
and, with ``max_staleness > 0``, the older weights that sampled a rollout generated ahead of training.

Every weight here is formed from ``rho_t = pi_old(y_t) / pi_behaviour(y_t)`` of the sampled tokens, in log space,
detached, and 0 off the mask; ``old_logps``, ``behaviour_logps``, ``mask``: ``[B, T]``. Three ways to bound it
(:class:`ImportanceSampling` picks one): truncate it, drop the tokens where it is extreme, or drop whole sequences
whose tokens are on average too far off.
"""

import math
from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor

LOG_RATIO_BOUND = 20.0                                                  # exp(+-20): no overflow, no exact zero


def log_ratios(old_logps: Tensor, behaviour_logps: Tensor) -> Tensor:
    """``log rho_t = l_old - l_behaviour``, detached and bounded to ``[-20, 20]`` (``[B, T]``)."""
    return (old_logps - behaviour_logps).detach().clamp(-LOG_RATIO_BOUND, LOG_RATIO_BOUND)


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


def masked_importance_weights(old_logps: Tensor, behaviour_logps: Tensor, mask: Tensor, low: float,
                              high: float) -> Tensor:
    """Per-token weights ``w_t = rho_t`` where ``low <= rho_t <= high``, else 0 (and 0 off the mask).

    Masked importance sampling, as prime-rl's token masking (its defaults: ``low = 1/8``, ``high = 8``) and veRL's
    token-level rejection (``rollout_rs: token``) do it: a token whose ratio is extreme is not trained on at all
    rather than trained on with a truncated weight, so a few tokens the behaviour policy found far likelier or far
    less likely than the trainer does (a stale policy's, or a numerics outlier's) cannot dominate the step. The
    comparison is made on ``log rho_t`` against ``log low`` and ``log high``.
    """
    log_ratio = log_ratios(old_logps, behaviour_logps)                                # [B, T]
    keep = (log_ratio >= math.log(low)) & (log_ratio <= math.log(high))               # [B, T]
    return torch.exp(log_ratio) * keep * mask                                         # [B, T]


def sequence_rejected_importance_weights(old_logps: Tensor, behaviour_logps: Tensor, mask: Tensor, low: float,
                                         high: float, cap: float) -> Tensor:
    """Per-token weights ``w_t = min(rho_t, C)`` for the sequences whose geometric-mean ratio
    ``g = exp(sum_t m_t log rho_t / sum_t m_t)`` lies in ``[low, high]``; every token of any other sequence gets 0.

    Sequence-level rejection sampling on the geometric mean, as veRL's ``rollout_rs: geometric`` (Liu, Li et al.
    2025, "When speed kills stability"): the mean log-ratio does not grow with the length as a product of ratios
    does, so one threshold fits short and long completions; a sample is kept or dropped whole, as it was sampled.
    The kept tokens are weighted as :func:`truncated_importance_weights` weights them.
    """
    log_ratio = log_ratios(old_logps, behaviour_logps) * mask                         # [B, T]
    mean_log = log_ratio.sum(-1) / mask.sum(-1).clamp(min=1)                          # [B]: log g
    keep = (mean_log >= math.log(low)) & (mean_log <= math.log(high))                 # [B]
    return truncated_importance_weights(old_logps, behaviour_logps, mask, cap) * keep[:, None]   # [B, T]


def logp_diff(old_logps: Tensor, behaviour_logps: Tensor, mask: Tensor) -> tuple[Tensor, Tensor]:
    """Token-mean and max of ``|l_old - l_behaviour|`` over the mask: how far the engine's log-probs are from
    the trainer's on the same tokens (0 when both run the same weights with the same numerics)."""
    diff = (old_logps - behaviour_logps).abs() * mask                                 # [B, T]
    return diff.sum() / mask.sum().clamp(min=1), diff.max()


@dataclass(frozen=True)
class ImportanceSampling:
    """How each token's policy loss is weighted by ``rho_t = pi_old / pi_behaviour`` (``importance_sampling`` of
    every RL module; needs an engine that returns its log-probs).

    ``truncate``: ``min(rho_t, cap)`` (:func:`truncated_importance_weights`; ``importance_sampling_cap: C`` is this
    mode). ``mask``: ``rho_t``, or 0 where ``rho_t`` is outside ``[low, high]`` (:func:`masked_importance_weights`).
    ``reject_sequence``: ``min(rho_t, cap)``, or 0 for every token of a sequence whose geometric-mean ratio is
    outside ``[low, high]`` (:func:`sequence_rejected_importance_weights`). A dropped token keeps its place in the
    loss's normaliser (its weight is 0, as a truncated weight near 0 would be), so a batch with many drops takes a
    smaller step; veRL removes rejected tokens from the normaliser instead.
    """

    mode: Literal["truncate", "mask", "reject_sequence"] = "truncate"
    cap: float = 2.0
    """``truncate`` and ``reject_sequence``: the largest weight a token gets."""
    low: float = 0.125
    """``mask`` and ``reject_sequence``: the smallest ratio kept (per token; per sequence, of the geometric mean)."""
    high: float = 8.0
    """``mask`` and ``reject_sequence``: the largest ratio kept (prime-rl's token mask: 1/8 and 8; a geometric-mean
    rejection of engine numerics alone wants far tighter bounds, veRL suggests about 0.999 and 1.001)."""

    def __post_init__(self) -> None:
        if self.mode not in ("truncate", "mask", "reject_sequence"):
            raise ValueError(f"importance_sampling.mode must be truncate, mask or reject_sequence (got {self.mode!r})")
        if not self.cap > 0:
            raise ValueError(f"importance_sampling.cap must be > 0 (got {self.cap})")
        if not 0 < self.low <= 1 <= self.high:
            raise ValueError(f"importance_sampling needs 0 < low <= 1 <= high, so that a token the trainer and the "
                             f"engine agree on (ratio 1) is kept (got low={self.low}, high={self.high})")

    def weights(self, old_logps: Tensor, behaviour_logps: Tensor, mask: Tensor) -> Tensor:
        """The per-token weights ``[B, T]`` of this mode."""
        if self.mode == "truncate":
            return truncated_importance_weights(old_logps, behaviour_logps, mask, self.cap)
        if self.mode == "mask":
            return masked_importance_weights(old_logps, behaviour_logps, mask, self.low, self.high)
        return sequence_rejected_importance_weights(old_logps, behaviour_logps, mask, self.low, self.high, self.cap)

    def stats(self, weights: Tensor, old_logps: Tensor, behaviour_logps: Tensor, mask: Tensor) -> dict[str, Tensor]:
        """:func:`importance_weight_stats` of ``weights``, made by this mode (``mask`` truncates nothing)."""
        cap = None if self.mode == "mask" else self.cap
        return importance_weight_stats(weights, old_logps, behaviour_logps, mask, cap)


def importance_weight_stats(weights: Tensor, old_logps: Tensor, behaviour_logps: Tensor, mask: Tensor,
                            cap: float | None) -> dict[str, Tensor]:
    """Over the tokens on the mask: the weights' mean and max, the share of tokens dropped (weight 0:
    ``masked_frac``) and the share kept with a ratio above ``cap`` (truncated: ``clipped_frac``; 0 when
    ``cap`` is None)."""
    on = mask.bool()                                                                  # [B, T]
    tokens = on.sum().clamp(min=1)
    dropped = (weights == 0) & on                                                     # [B, T]
    clipped = torch.zeros_like(dropped)
    if cap is not None:
        clipped = (log_ratios(old_logps, behaviour_logps) > math.log(cap)) & on & ~dropped
    return {"weight_mean": weights[on].sum() / tokens,
            "weight_max": weights[on].max() if on.any() else weights.new_zeros(()),
            "masked_frac": dropped.sum() / tokens, "clipped_frac": clipped.sum() / tokens}

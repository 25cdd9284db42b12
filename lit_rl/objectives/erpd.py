"""ERPD stage 2 (Chen et al. 2026, "Extreme Region Policy Distillation", arXiv:2605.25582, sec. 3.3-3.4, 4.5):
the fixed token signal distilled into ``pi_old``, and the quantities the paper reads off a run."""

from typing import Literal

import torch
from torch import Tensor

from lit_rl.objectives.kl import KLEstimator, kl_penalty

Outliers = Literal["keep", "min", "max"]


def mask_outliers(signal: Tensor, mode: Outliers = "keep", rows: Tensor | None = None) -> Tensor:
    """ERPD Table 12: keep only ``min(0, s)`` (the negative log-ratios, the "outliers" of positive samples) or
    ``max(0, s)`` on the rows selected by ``rows [B]`` (bool; ``None``: all rows). ``[B, T] -> [B, T]``."""
    if mode == "keep":
        return signal
    if mode == "min":
        masked = signal.clamp(max=0.0)
    elif mode == "max":
        masked = signal.clamp(min=0.0)
    else:
        raise ValueError(f"unknown outliers mode {mode!r}; choose 'keep', 'min' or 'max'")
    return masked if rows is None else torch.where(rows[:, None], masked, signal)  # [B, T]


def whiten(values: Tensor, mask: Tensor, eps: float = 1e-8) -> Tensor:
    """``(v - mean) / (std + eps)`` with mean and (population) std over all valid tokens of the batch; zero on
    padding. ``[B, T] -> [B, T]``."""
    m = mask.to(values.dtype)
    count = m.sum().clamp(min=1)
    mean = (values * m).sum() / count
    std = (((values - mean) * m).square().sum() / count).sqrt()
    return (values - mean) / (std + eps) * m                            # [B, T]


def log_ratio_signal(teacher_logps: Tensor, den_logps: Tensor, mask: Tensor, outliers: Outliers = "keep",
                     rows: Tensor | None = None) -> Tensor:
    """Stage 2's signal before whitening: ``log pi_e - log pi_den`` on the valid tokens, outliers masked
    (optional). ``[B, T] -> [B, T]``, detached, zero on padding."""
    signal = ((teacher_logps - den_logps) * mask).detach()              # [B, T]
    return mask_outliers(signal, outliers, rows) * mask                 # [B, T]


def distillation_signal(teacher_logps: Tensor, den_logps: Tensor, mask: Tensor, outliers: Outliers = "keep",
                        rows: Tensor | None = None) -> Tensor:
    """The fixed token signal of stage 2 (sec. 3.3, 3.4): ``A^ = log pi_e - log pi_den``, outliers masked
    (optional), then whitened over the valid tokens. ``pi_den`` is ``pi_old`` (strategy 1), the unlearned
    ``pi_un`` (strategy 2) or an earlier student (strategy 3). ``[B, T] -> [B, T]``, detached."""
    return whiten(log_ratio_signal(teacher_logps, den_logps, mask, outliers, rows), mask)   # [B, T]


def signal_spread(signal: Tensor, mask: Tensor) -> Tensor:
    """``max - min`` of ``signal`` over the valid tokens (0 when there are none). A spread of zero means the
    whitened signal is zero on every valid token; a spread at rounding level means it is rounding noise
    blown up to unit variance. ``[B, T] -> []``."""
    valid = signal[mask.bool()]                                         # [N]
    return valid.max() - valid.min() if valid.numel() else signal.new_zeros(())


def combine_signals(signals: list[Tensor], weights: list[float], mask: Tensor) -> Tensor:
    """Simultaneous teacher ensemble (sec. 4.5, Table 8): the weighted sum of whitened signals, whitened again
    so the combined signal has the scale of a single one. ``K x [B, T] -> [B, T]``."""
    if len(signals) != len(weights) or not signals:
        raise ValueError(f"need one weight per signal (got {len(signals)} signals, {len(weights)} weights)")
    total = sum(w * s for w, s in zip(weights, signals))                # [B, T]
    return whiten(total, mask)


def deviation_ratio(student_logps: Tensor, old_logps: Tensor, teacher_logps: Tensor, mask: Tensor) -> Tensor:
    """ERPD Fig. 7's ratio ``|l_student - l_old| / |l_teacher - l_old|``, each side averaged over the same valid
    tokens (so the ratio of token sums): 0 = the student did not move, 1 = it moved as far as the teacher."""
    m = mask.to(student_logps.dtype)
    return ((student_logps - old_logps).abs() * m).sum() / ((teacher_logps - old_logps).abs() * m).sum().clamp(min=1e-12)


def sample_kl(logps: Tensor, base_logps: Tensor, mask: Tensor, estimator: KLEstimator = "k3") -> Tensor:
    """``KL[pi || pi_base]`` estimated on samples drawn from the current policy ``pi``: the token mean of a
    per-token estimator (:func:`~lit_rl.objectives.kl.kl_penalty`). ``k3 = r - log r - 1`` with
    ``r = pi_base / pi`` (the default) is unbiased and never negative; ERPD sec. 4.1 reads ``k1 = log pi -
    log pi_base``, also unbiased but negative on small samples. ``d = log pi_base - log pi`` is clamped to +-20 as
    in ``kl_penalty``; k2 and k3 are clamped at 0 per token: in float32
    ``exp(d) - d - 1`` rounds below zero for ``|d|`` under ~1e-7. ``[B, T] -> []``."""
    m = mask.to(logps.dtype)
    per_token = kl_penalty(logps, base_logps, estimator)                # [B, T]
    per_token = per_token if estimator == "k1" else per_token.clamp(min=0.0)
    return (per_token * m).sum() / m.sum().clamp(min=1)
